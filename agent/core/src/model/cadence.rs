//! A connection's cadence: the interval of an exchange it repeats after the same silence, such
//! as an IMAP server's `* OK Still here` every `imap_idle_notify_interval` during IDLE, or a
//! client's NOOP every few minutes. It belongs to the connection: the survived gaps of a path
//! mix one connection's IDLE cadence with the logins, NOOPs and short waits of the others (and
//! of the same one), so the path's keepalive interval is made of its connections' cadences
//! (`inference`), never of its gaps.
//!
//! A connection keeps its last [`WINDOW`] survived gaps. Its cadence is their largest group of
//! near-equal gaps ([`NEAR`]: the longest at most 20 % above the shortest, or 100 ms), once at
//! least [`MIN_GAPS`] of them are: the odd gaps around it (an IDLE's first keepalive, which
//! Dovecot aligns to the clock, comes early; DONE, a NOOP or a short wait ends another one
//! early) do not hide it. Its interval is the group's median. Once found, a cadence stays until
//! another is: a connection that left IDLE for a while still showed it.

use crate::{
    cluster::{self, Spread},
    events::Nanos,
};

/// Survived gaps a connection keeps for this.
pub const WINDOW: usize = 8;
/// Near-equal gaps among them that make a cadence.
pub const MIN_GAPS: usize = 4;
/// Near-equal, in seconds: a keepalive timer's own jitter, a delayed ACK (tens of
/// milliseconds, up to 200) that moves where a gap starts.
pub const NEAR: Spread = Spread {
    share: 0.20,
    slack: 0.1,
};

const NANOS_PER_MS: Nanos = 1_000_000;

/// A cadence as found: its interval, and how many of the connection's last [`WINDOW`]
/// survived gaps showed it (how clearly it shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    pub interval: Nanos,
    pub gaps: u8,
}

/// What a connection keeps to find its cadence: 40 bytes (see `the_cost_of_a_connection` in
/// `table`), milliseconds being precise enough for gaps of 100 ms and more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CadenceDetector {
    /// The last survived gaps, in milliseconds; `recent[next]` is the oldest once all are set.
    recent: [u32; WINDOW],
    next: u8,
    filled: u8,
    /// The cadence found last: its group's size (0 while none) and median, in milliseconds.
    found_gaps: u8,
    found_ms: u32,
}

impl CadenceDetector {
    /// The cadence found last, if one was.
    pub fn cadence(&self) -> Option<Cadence> {
        (self.found_gaps > 0).then(|| Cadence {
            interval: Nanos::from(self.found_ms) * NANOS_PER_MS,
            gaps: self.found_gaps,
        })
    }

    /// Takes in one survived gap; returns the cadence before and after, when it changed.
    pub fn push(&mut self, gap: Nanos) -> Option<(Option<Cadence>, Cadence)> {
        self.recent[usize::from(self.next)] = u32::try_from(gap / NANOS_PER_MS).unwrap_or(u32::MAX);
        self.next = (self.next + 1) % WINDOW as u8;
        self.filled = (self.filled + 1).min(WINDOW as u8);
        let mut sorted = self.recent;
        let sorted = &mut sorted[..usize::from(self.filled)];
        sorted.sort_unstable();
        let seconds = |ms: &u32| f64::from(*ms) / 1000.0;
        let group = cluster::best(sorted, seconds, NEAR, <[u32]>::len)?;
        if group.len() < MIN_GAPS {
            return None;
        }
        let group: Vec<f64> = sorted[group].iter().map(|&ms| f64::from(ms)).collect();
        let median_ms = cluster::median(&group)?.round();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "the median of u32 values, rounded"
        )]
        let found_ms = median_ms as u32;
        #[expect(clippy::cast_possible_truncation, reason = "at most WINDOW")]
        let found_gaps = group.len() as u8;
        let before = self.cadence();
        self.found_ms = found_ms;
        self.found_gaps = found_gaps;
        let after = self.cadence()?;
        (before != Some(after)).then_some((before, after))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The cadence of a connection after these survived gaps (in seconds), in seconds, with
    /// how many of its last gaps show it.
    fn cadence_after(gaps: &[f64]) -> Option<(f64, u8)> {
        let mut detector = CadenceDetector::default();
        for &gap in gaps {
            detector.push(seconds(gap));
        }
        detector
            .cadence()
            .map(|c| (Duration::from_nanos(c.interval).as_secs_f64(), c.gaps))
    }

    fn seconds(value: f64) -> Nanos {
        (value * 1e9).round() as Nanos
    }

    // Each sequence below, given to the rule this replaces (three quarters of the path's recent
    // survived gaps within 10 % of their median), gives no keepalive interval at all, unless
    // said otherwise.

    #[test]
    fn a_cadence_shows_through_the_odd_gaps_around_it() {
        // A keepalive every 3 s, with odd gaps of 0.2 s, 1 s and 7 s mixed in.
        assert_eq!(
            cadence_after(&[0.2, 3.0, 3.0, 1.0, 3.0, 3.0, 7.0, 3.0, 3.0, 3.0]),
            Some((3.0, 6))
        );
        // An IMAP session as a router cutting after 5 s lets it through: waits of 1.2, 2 and
        // 4.2 s between commands, then IDLE, whose first "Still here" comes early (Dovecot
        // aligns it to the clock), then one every 3 s, then DONE 2.1 s after the last.
        assert_eq!(
            cadence_after(&[1.2, 2.0, 4.2, 1.7, 3.0, 3.0, 3.0, 3.0, 2.1]),
            Some((3.0, 4))
        );
    }

    #[test]
    fn the_cadence_is_found_at_its_fourth_gap_and_reported_as_changes() {
        let mut detector = CadenceDetector::default();
        let changes: Vec<_> = [0.2, 3.0, 3.0, 1.0, 3.0, 3.0, 3.0]
            .into_iter()
            .map(|gap| detector.push(seconds(gap)))
            .collect();
        let three = |gaps| Cadence {
            interval: 3_000_000_000,
            gaps,
        };
        assert_eq!(
            changes,
            [
                None,
                None,
                None,
                None,
                None,
                Some((None, three(4))),
                Some((Some(three(4)), three(5))),
            ]
        );
    }

    #[test]
    fn jitter_within_ten_percent_is_one_cadence() {
        // 3 s, give or take 0.25 s, among odd gaps; the median of the group is its interval.
        assert_eq!(
            cadence_after(&[1.2, 3.0, 2.8, 3.2, 0.2, 2.9, 3.25, 2.75, 7.0, 3.1]),
            Some((3.0, 6))
        );
        // Gaps spread from 2 s to 4 s by a quarter of a second: no four of them within 20 %
        // of each other. (The rule this replaces agrees.)
        assert_eq!(
            cadence_after(&[2.0, 4.0, 2.5, 3.5, 3.0, 2.25, 3.25, 2.75]),
            None
        );
    }

    #[test]
    fn too_few_near_equal_gaps_make_no_cadence() {
        // (The rule this replaces agrees on both.)
        assert_eq!(cadence_after(&[3.0, 3.0, 3.0]), None);
        assert_eq!(cadence_after(&[0.2, 3.0, 3.0, 3.0, 7.0]), None);
        // Four, but not among the last eight gaps.
        assert_eq!(
            cadence_after(&[3.0, 3.0, 3.0, 0.2, 7.0, 1.0, 12.0, 0.5, 9.0, 3.0]),
            None
        );
    }

    #[test]
    fn a_cadence_found_stays_until_another_is_found() {
        let mut gaps = vec![3.0; 5];
        // Out of IDLE for a while: commands at odd intervals.
        gaps.extend([0.2, 7.0, 1.0, 12.0, 0.5, 9.0, 30.0, 2.0]);
        // Found with five, last seen with four of the last eight gaps.
        assert_eq!(cadence_after(&gaps), Some((3.0, 4)));
        // Then a client's NOOP every 20 s.
        gaps.extend([20.0, 20.1, 19.9, 20.0]);
        assert_eq!(cadence_after(&gaps), Some((20.0, 4)));
    }

    #[test]
    fn what_a_connection_keeps_for_it() {
        assert_eq!(size_of::<CadenceDetector>(), 40);
    }
}
