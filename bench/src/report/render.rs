//! The summary as text: the rows as a fixed-width table, the kernel cost per hook kind, class
//! and tracepoint as a Markdown table, numbers to three significant digits.

use super::Row;
use crate::{
    kernel_cost::{Class, KernelCost, Load},
    stats::ratio,
};

/// Kernel cost per hook kind, class, load and tracepoint, as a Markdown table (what
/// docs/performance.md shows under "Kernel cost per event").
pub fn kernel_detail(k: &KernelCost) -> String {
    let mut out = String::from(
        "| hooks | class | load | tracepoint | idlecut ns/run | do-nothing ns/run | ratio median [min-max] | runs per phase |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for s in &k.summary {
        let class = match s.class {
            Class::NonMail => "non-mail",
            Class::Mail => "mail",
        };
        let load = match s.load {
            Load::Traffic => "traffic",
            Load::Churn => "churn",
        };
        let ratio = if s.ratio.is_measured() {
            format!(
                "{} [{}-{}]",
                number(s.ratio.median),
                number(s.ratio.min),
                number(s.ratio.max)
            )
        } else {
            "not exercised".to_owned()
        };
        out.push_str(&format!(
            "| {} | {class} | {load} | {} | {} | {} | {ratio} | {} |\n",
            s.hooks.label(),
            s.tracepoint,
            number(s.idlecut_ns_per_run.median),
            number(s.baseline_ns_per_run.median),
            number(s.runs_per_phase.median),
        ));
    }
    out
}

/// A fixed-width text table of the rows.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "section",
        "measure",
        "idlecut",
        "baseline",
        "ratio (median [min-max])",
        "target",
        "met",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.section.to_owned(),
                r.measure.clone(),
                format!("{} {}", number(r.idlecut), r.unit),
                format!("{} {} ({})", number(r.baseline), r.unit, r.baseline_is),
                r.ratio.map_or_else(
                    || number(ratio(r.idlecut, r.baseline)),
                    |s| format!("{} [{}-{}]", number(s.median), number(s.min), number(s.max)),
                ),
                r.target.clone(),
                match r.met {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                    None => "-".to_owned(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&header.map(str::to_owned));
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// Three significant digits, without scientific notation for the values we print.
fn number(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_owned();
    }
    let magnitude = x.abs();
    if magnitude >= 100.0 {
        format!("{x:.0}")
    } else if magnitude >= 10.0 {
        format!("{x:.1}")
    } else if magnitude >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{report::row, stats::Spread};

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(number(1234.5), "1234");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(1.2345), "1.23");
        assert_eq!(number(0.012345), "0.012");
        assert_eq!(number(f64::NAN), "n/a");
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let rows = vec![
            row("a", "one", "ns", 1.0, (2.0, "b"), None).target("<= 1x", true),
            row(
                "a",
                "a longer one",
                "ns",
                10.0,
                (2.0, "b"),
                Some(Spread::of(&[5.0])),
            )
            .note(""),
        ];
        let text = table(&rows);
        let lengths: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert!(lengths.windows(2).all(|w| w[0] == w[1]), "{text}");
        assert!(text.contains("| yes"), "{text}");
    }
}
