//! Durations as people read them, in one place: the explanations of `/api/v1/paths` and the
//! `idlecut connections` table.

use std::fmt::Write as _;

/// 7440.0 -> "2h4m", 350.0 -> "5m50s", 300.0 -> "5m", 2.46 -> "2.5s". Hours drop the seconds.
pub fn compact(seconds: f64) -> String {
    if seconds < 60.0 {
        return format!("{}s", tenths(seconds));
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "positive, rounded"
    )]
    let total = seconds.round() as u64;
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    let mut text = String::new();
    if h > 0 {
        let _ = write!(text, "{h}h");
        if m > 0 {
            let _ = write!(text, "{m}m");
        }
    } else {
        let _ = write!(text, "{m}m");
        if s > 0 {
            let _ = write!(text, "{s}s");
        }
    }
    text
}

/// Like [`compact`], with the exact seconds: "2h4m (7440 s)", "5m50s (350 s)", "2.5 s".
pub fn with_seconds(seconds: f64) -> String {
    if seconds < 60.0 {
        return format!("{} s", tenths(seconds));
    }
    format!("{} ({} s)", compact(seconds), seconds.round())
}

/// Rounded to a tenth, without a trailing ".0".
fn tenths(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_durations() {
        assert_eq!(compact(7440.0), "2h4m");
        assert_eq!(compact(3600.0), "1h");
        assert_eq!(compact(350.0), "5m50s");
        assert_eq!(compact(300.0), "5m");
        assert_eq!(compact(2.46), "2.5s");
        assert_eq!(compact(2.0), "2s");
    }

    #[test]
    fn durations_with_seconds() {
        assert_eq!(with_seconds(7440.0), "2h4m (7440 s)");
        assert_eq!(with_seconds(7500.0), "2h5m (7500 s)");
        assert_eq!(with_seconds(3600.0), "1h (3600 s)");
        assert_eq!(with_seconds(350.0), "5m50s (350 s)");
        assert_eq!(with_seconds(2.46), "2.5 s");
    }
}
