//! What the per-connection view and the log of recent cuts share: a bounded selection of the
//! rows a filter matches (for the API), and aligned columns (for `idlecut connections` and
//! `idlecut cuts`).

use std::fmt::Write as _;

/// The rows `matches` accepts, at most `limit` of them, and how many it accepted in all.
pub fn select<R: Clone>(rows: &[R], matches: impl Fn(&R) -> bool, limit: usize) -> (usize, Vec<R>) {
    let mut total = 0;
    let mut selected = Vec::new();
    for row in rows.iter().filter(|row| matches(row)) {
        total += 1;
        if selected.len() < limit {
            selected.push(row.clone());
        }
    }
    (total, selected)
}

/// `headers` and `rows` in columns as wide as their widest cell, two spaces apart, the way
/// `ss` prints sockets; the last column is not padded.
pub fn columns<const N: usize>(headers: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_selection_counts_all_it_matches() {
        let rows = [
            ["a".to_owned(), "long cell".to_owned(), "x".to_owned()],
            ["bbbb".to_owned(), "c".to_owned(), "last".to_owned()],
        ];
        assert_eq!(
            columns(["H1", "H2", "H3"], &rows),
            "H1    H2         H3\na     long cell  x\nbbbb  c          last\n"
        );
        let (total, first) = select(&[1, 2, 3, 4], |n| n % 2 == 0, 1);
        assert_eq!((total, first), (2, vec![2]));
    }
}
