//! Per-path inference: where each path cuts idle connections, how, and whether that breaks
//! RFC 5382 REQ-5 (an idle connection must survive at least 2h04m = 7440 s).
//!
//! For each path it keeps the recent survived idle gaps and the recent idle gaps that ended in a
//! cut, and places the cut-off between them: above the longest survived gap, at or below the
//! shortest cut gap. One outlier (a survived gap longer than the real cut-off, a cut for another
//! reason) must not decide, so the split is the threshold that misclassifies the fewest samples.
//! Deaths of active connections that cluster at one age point to a limit on connection age
//! (RFC 5383 section 4.1).

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
};

pub use idlecut_api::paths::{CutCounts, ForgedReset, PathReport, ResetOrigins, Verdict};

use crate::{
    duration_text::with_seconds,
    events::Nanos,
    model::{ResetVerdict, Update},
    paths::PathKey,
    vocabulary::{Direction, ResetOrigin, Role, Signature},
};

/// Recent samples kept per path: bounded memory, and estimates that follow a middlebox whose
/// configuration changes.
const MAX_SURVIVED_SAMPLES: usize = 512;
const MAX_CUT_SAMPLES: usize = 128;
const MAX_DEATH_SAMPLES: usize = 64;
/// Survived gaps considered for an application keepalive interval, and how many of them must
/// sit within the spread of their median for the exchange to count as periodic.
const KEEPALIVE_SAMPLES: usize = 32;
const KEEPALIVE_MIN_SAMPLES: usize = 4;
const KEEPALIVE_MIN_SHARE: f64 = 0.75;
/// Deaths within this relative spread of each other are "at the same age".
const AGE_CLUSTER_SPREAD: f64 = 0.10;
/// ... or within this many seconds, for short (test-scale) ages.
const AGE_CLUSTER_SLACK_SECONDS: f64 = 1.0;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// RFC 5382 REQ-5: 7440 s unless configured otherwise.
    pub req5_threshold_seconds: f64,
    /// Cuts below the threshold needed before a path is said to violate REQ-5.
    pub min_cuts: usize,
}

/// The cut-off interval: the path cuts idle connections after more than `lower` and at most
/// `upper` seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cutoff {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
}

#[derive(Debug, Default)]
struct PathStats {
    open_connections: i64,
    survived: VecDeque<f64>,
    survived_total: u64,
    longest_survived: Option<f64>,
    cuts: VecDeque<f64>,
    cut_counts: CutCounts,
    cuts_below_req5: u64,
    deaths_while_active: VecDeque<f64>,
    cutoff: Cutoff,
    duration_limit: Option<f64>,
    keepalive_interval: Option<f64>,
    resets_received: ResetOrigins,
    last_forged_reset: Option<ResetVerdict>,
}

/// The inference for every path. Owned by the pipeline task; reports are read by HTTP.
#[derive(Debug)]
pub struct Inference {
    settings: Settings,
    paths: HashMap<PathKey, PathStats>,
}

impl Inference {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            paths: HashMap::new(),
        }
    }

    /// Takes in one update of the connection model, for the path it belongs to. Returns whether
    /// the path's estimates (cut-off, verdict, duration limit) may have changed.
    pub fn record(&mut self, key: &PathKey, update: &Update) -> bool {
        let settings = self.settings;
        let stats = self.paths.entry(key.clone()).or_default();
        match update {
            Update::Opened(_) | Update::Discovered(_) => {
                stats.open_connections += 1;
                false
            }
            Update::Closed { .. } => {
                stats.open_connections -= 1;
                false
            }
            Update::IdleGapSurvived(_, gap) => {
                let gap = seconds(*gap);
                push_bounded(&mut stats.survived, gap, MAX_SURVIVED_SAMPLES);
                stats.survived_total += 1;
                stats.longest_survived = Some(stats.longest_survived.map_or(gap, |l| l.max(gap)));
                stats.cutoff = cutoff(&stats.survived, &stats.cuts);
                stats.keepalive_interval = keepalive_interval(&stats.survived);
                true
            }
            Update::Cut { gap, signature, .. } => {
                let gap = seconds(*gap);
                push_bounded(&mut stats.cuts, gap, MAX_CUT_SAMPLES);
                stats.cut_counts.add(*signature);
                if gap < settings.req5_threshold_seconds {
                    stats.cuts_below_req5 += 1;
                }
                stats.cutoff = cutoff(&stats.survived, &stats.cuts);
                true
            }
            Update::Reset(_, Direction::Received, verdict) => {
                stats.resets_received.add(verdict.origin);
                if verdict.origin == ResetOrigin::Path {
                    stats.last_forged_reset = Some(*verdict);
                }
                true
            }
            Update::DiedWhileActive { age, .. } => {
                push_bounded(
                    &mut stats.deaths_while_active,
                    seconds(*age),
                    MAX_DEATH_SAMPLES,
                );
                stats.duration_limit =
                    duration_limit(&stats.deaths_while_active, settings.min_cuts);
                true
            }
            _ => false,
        }
    }

    pub fn report(&self, key: &PathKey) -> Option<PathReport> {
        self.paths
            .get(key)
            .map(|stats| self.make_report(key, stats))
    }

    /// Every path, ordered by service, role and path.
    pub fn reports(&self) -> Vec<PathReport> {
        let mut reports: Vec<PathReport> = self
            .paths
            .iter()
            .map(|(key, stats)| self.make_report(key, stats))
            .collect();
        reports.sort_by(|a, b| (&a.service, a.role, &a.path).cmp(&(&b.service, b.role, &b.path)));
        reports
    }

    fn make_report(&self, key: &PathKey, stats: &PathStats) -> PathReport {
        let verdict = verdict(stats, self.settings);
        PathReport {
            service: key.service.clone(),
            role: key.role,
            path: key.path.clone(),
            open_connections: stats.open_connections,
            survived_gaps: stats.survived_total,
            longest_survived_gap_seconds: stats.longest_survived,
            cuts: stats.cut_counts.clone(),
            cuts_below_req5: stats.cuts_below_req5,
            cutoff_lower_seconds: stats.cutoff.lower,
            cutoff_upper_seconds: stats.cutoff.upper,
            verdict,
            duration_limit_seconds: stats.duration_limit,
            keepalive_interval_seconds: stats.keepalive_interval,
            resets_received: stats.resets_received.clone(),
            forged_reset: stats.last_forged_reset.map(|verdict| ForgedReset {
                hops_from_host: verdict.sender_hops(),
                peer_hops: verdict.peer_hops(),
                ttl_difference: verdict.ttl_difference(),
            }),
            explanation: explain(key, stats, verdict, self.settings),
            // Scheduled checks are added at read time (`scheduled::compare`).
            active_checks: Vec::new(),
        }
    }
}

fn push_bounded(samples: &mut VecDeque<f64>, value: f64, max: usize) {
    if samples.len() == max {
        samples.pop_front();
    }
    samples.push_back(value);
}

fn seconds(ns: Nanos) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "sub-microsecond precision is irrelevant"
    )]
    let seconds = ns as f64 / 1e9;
    seconds
}

/// Places the cut-off between survived and cut gaps: the split that misclassifies the fewest
/// samples (survived gaps at or above it, cut gaps below it), the lowest such split on ties.
/// `lower` is the longest survived gap below the split, `upper` the shortest cut gap at or
/// above it. Without cuts, `lower` is the longest survived gap and `upper` is unknown.
pub fn cutoff(survived: &VecDeque<f64>, cuts: &VecDeque<f64>) -> Cutoff {
    if cuts.is_empty() {
        return Cutoff {
            lower: survived.iter().copied().reduce(f64::max),
            upper: None,
        };
    }
    // (value, is_cut), sorted; at equal values survived first, so a split never separates
    // a survived gap from an equal cut gap in the cut's favour.
    let mut samples: Vec<(f64, bool)> = survived
        .iter()
        .map(|&gap| (gap, false))
        .chain(cuts.iter().map(|&gap| (gap, true)))
        .collect();
    samples.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    // Split at index i: samples[..i] are "below" (should be survived), samples[i..] "above".
    let mut errors: usize = survived.len(); // i = 0: every survived gap is above the split
    let mut best = (errors, 0);
    for (i, &(_, is_cut)) in samples.iter().enumerate() {
        if is_cut {
            errors += 1;
        } else {
            errors -= 1;
        }
        // Only split where the value changes, and never above the last cut.
        let next = samples.get(i + 1);
        let value_changes = next.is_none_or(|n| n.0 > samples[i].0);
        if value_changes && errors < best.0 && next.is_some() {
            best = (errors, i + 1);
        }
    }
    let split = best.1;
    let lower = samples[..split]
        .iter()
        .filter(|(_, is_cut)| !is_cut)
        .map(|&(gap, _)| gap)
        .reduce(f64::max);
    let upper = samples[split..]
        .iter()
        .filter(|(_, is_cut)| *is_cut)
        .map(|&(gap, _)| gap)
        .reduce(f64::min);
    Cutoff { lower, upper }
}

/// The age at which active connections die on this path, if at least `min_deaths` of the
/// recent deaths cluster at one age (within 10 %, or a second).
pub fn duration_limit(deaths: &VecDeque<f64>, min_deaths: usize) -> Option<f64> {
    let mut ages: Vec<f64> = deaths.iter().copied().collect();
    ages.sort_by(f64::total_cmp);
    let mut best: Option<(usize, f64)> = None;
    let mut start = 0;
    for end in 0..ages.len() {
        while ages[end] - ages[start]
            > (ages[start] * AGE_CLUSTER_SPREAD).max(AGE_CLUSTER_SLACK_SECONDS)
        {
            start += 1;
        }
        let size = end - start + 1;
        if best.is_none_or(|(best_size, _)| size > best_size) {
            best = Some((size, ages[start]));
        }
    }
    best.filter(|&(size, _)| size >= min_deaths.max(1))
        .map(|(_, age)| age)
}

/// The interval of a periodic exchange after idle: the median of the recent survived gaps when
/// at least three quarters of them sit within 10 % (or half a second) of it.
pub fn keepalive_interval(survived: &VecDeque<f64>) -> Option<f64> {
    let recent: Vec<f64> = survived
        .iter()
        .rev()
        .take(KEEPALIVE_SAMPLES)
        .copied()
        .collect();
    if recent.len() < KEEPALIVE_MIN_SAMPLES {
        return None;
    }
    let mut sorted = recent.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let tolerance = (median * 0.10).max(0.5);
    let close = recent
        .iter()
        .filter(|&&gap| (gap - median).abs() <= tolerance)
        .count();
    #[expect(clippy::cast_precision_loss, reason = "at most 32 samples")]
    let share = close as f64 / recent.len() as f64;
    (share >= KEEPALIVE_MIN_SHARE).then_some(median)
}

fn verdict(stats: &PathStats, settings: Settings) -> Verdict {
    if stats.cuts_below_req5 >= settings.min_cuts as u64 {
        Verdict::ViolatesReq5
    } else if stats
        .longest_survived
        .is_some_and(|gap| gap >= settings.req5_threshold_seconds)
    {
        Verdict::Ok
    } else {
        Verdict::Unknown
    }
}

/// One sentence, for a person, that says why the verdict is what it is.
fn explain(key: &PathKey, stats: &PathStats, verdict: Verdict, settings: Settings) -> String {
    let who = format!(
        "The path {} {} ({} {})",
        match key.role {
            Role::Client => "to",
            Role::Server => "from",
        },
        key.path,
        key.service,
        key.role.as_str()
    );
    let threshold = with_seconds(settings.req5_threshold_seconds);
    let counts = &stats.cut_counts;
    let mut signatures = String::new();
    for signature in Signature::ALL {
        let count = counts.get(signature);
        if count > 0 {
            if !signatures.is_empty() {
                signatures.push_str(", ");
            }
            let _ = write!(signatures, "{signature}: {count}");
        }
    }
    let interval = interval_words(stats.cutoff);
    let mut sentence = match verdict {
        Verdict::ViolatesReq5 => format!(
            "{who} cut {} idle connection{} ({signatures}); its cut-off lies {interval} of \
             silence, below the {threshold} that RFC 5382 REQ-5 requires.",
            counts.total(),
            plural(counts.total()),
        ),
        Verdict::Ok => format!(
            "{who} kept connections idle for up to {} without cutting them, at least the \
             {threshold} that RFC 5382 REQ-5 requires.",
            with_seconds(stats.longest_survived.unwrap_or_default()),
        ),
        Verdict::Unknown => match (counts.total(), stats.longest_survived) {
            (0, Some(longest)) => format!(
                "{who} has cut no idle connection yet; the longest silence survived is {}, short \
                 of the {threshold} that would show RFC 5382 REQ-5 compliance.",
                with_seconds(longest)
            ),
            (0, None) => format!("{who} has seen no idle gap long enough to judge yet."),
            (cuts, _) => format!(
                "{who} cut {cuts} idle connection{} ({signatures}), cut-off {interval}; {} \
                 below {threshold} are needed to conclude it violates RFC 5382 REQ-5.",
                plural(cuts),
                settings.min_cuts
            ),
        },
    };
    if let Some(interval) = stats.keepalive_interval {
        let _ = write!(
            sentence,
            " Its connections exchange keepalives after about {} of silence.",
            with_seconds(interval)
        );
    }
    let resets = &stats.resets_received;
    if resets.path > 0 {
        let _ = write!(
            sentence,
            " {} of the {} resets it received came from the path, not from the peer",
            resets.path,
            resets.path + resets.peer + resets.unknown,
        );
        match stats
            .last_forged_reset
            .and_then(|v| Some((v.sender_hops()?, v.peer_hops()?)))
        {
            Some((forger, peer)) => {
                let _ = write!(
                    sentence,
                    ": reset by the path, about {forger} hop{} from this host (the peer is {peer}).",
                    plural(u64::from(forger))
                );
            }
            None => sentence.push('.'),
        }
    } else if resets.peer > 0 {
        let _ = write!(
            sentence,
            " The resets it received came from the peer itself (the TTL of its segments)."
        );
    }
    if let Some(limit) = stats.duration_limit {
        let _ = write!(
            sentence,
            " Active connections also die at an age of about {}: the path may limit connection \
             lifetime (RFC 5383 section 4.1).",
            with_seconds(limit)
        );
    }
    sentence
}

/// A cut-off interval in words: "between 2 s and 4.5 s", "above 2 s", "at or below 4.5 s".
pub fn interval_words(cutoff: Cutoff) -> String {
    match (cutoff.lower, cutoff.upper) {
        (Some(lower), Some(upper)) => format!(
            "between {} and {}",
            with_seconds(lower),
            with_seconds(upper)
        ),
        (None, Some(upper)) => format!("at or below {}", with_seconds(upper)),
        (Some(lower), None) => format!("above {}", with_seconds(lower)),
        (None, None) => "unknown".to_owned(),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{CutContext, Identity};

    const S: Nanos = 1_000_000_000;

    fn deque(values: &[f64]) -> VecDeque<f64> {
        values.iter().copied().collect()
    }

    #[test]
    fn cutoff_lies_between_survived_and_cut_gaps() {
        let c = cutoff(
            &deque(&[60.0, 120.0, 300.0]),
            &deque(&[360.0, 400.0, 351.0]),
        );
        assert_eq!(
            c,
            Cutoff {
                lower: Some(300.0),
                upper: Some(351.0)
            }
        );
    }

    #[test]
    fn one_outlier_on_either_side_does_not_decide() {
        // A survived gap above the real cut-off (say, keepalives the agent did not see).
        let c = cutoff(
            &deque(&[60.0, 200.0, 900.0]),
            &deque(&[350.0, 360.0, 400.0]),
        );
        assert_eq!(
            c,
            Cutoff {
                lower: Some(200.0),
                upper: Some(350.0)
            }
        );
        // A cut far below it (a server restart that happened to follow a short gap).
        let c = cutoff(&deque(&[60.0, 200.0, 300.0]), &deque(&[5.0, 360.0, 400.0]));
        assert_eq!(
            c,
            Cutoff {
                lower: Some(300.0),
                upper: Some(360.0)
            }
        );
    }

    #[test]
    fn without_cuts_only_a_lower_bound_is_known() {
        assert_eq!(
            cutoff(&deque(&[60.0, 7500.0]), &deque(&[])),
            Cutoff {
                lower: Some(7500.0),
                upper: None
            }
        );
        assert_eq!(cutoff(&deque(&[]), &deque(&[])), Cutoff::default());
    }

    #[test]
    fn without_survived_gaps_only_an_upper_bound_is_known() {
        assert_eq!(
            cutoff(&deque(&[]), &deque(&[240.0, 250.0])),
            Cutoff {
                lower: None,
                upper: Some(240.0)
            }
        );
    }

    #[test]
    fn deaths_at_one_age_reveal_a_duration_limit() {
        assert_eq!(
            duration_limit(&deque(&[3600.0, 3610.0, 3605.0]), 2),
            Some(3600.0)
        );
        assert_eq!(duration_limit(&deque(&[100.0, 3600.0, 9000.0]), 2), None);
        assert_eq!(duration_limit(&deque(&[5.2, 5.6, 30.0]), 2), Some(5.2));
        assert_eq!(duration_limit(&deque(&[3600.0]), 2), None);
    }

    fn key() -> PathKey {
        PathKey {
            service: Arc::from("imap"),
            role: Role::Client,
            path: Arc::from("192.0.2.0/24"),
        }
    }

    fn identity() -> Identity {
        Identity {
            service: Arc::from("imap"),
            role: Role::Client,
            remote: "192.0.2.7".parse().unwrap(),
        }
    }

    fn inference() -> Inference {
        Inference::new(Settings {
            req5_threshold_seconds: 7440.0,
            min_cuts: 2,
        })
    }

    fn cut(gap: Nanos, signature: Signature) -> Update {
        Update::Cut {
            identity: identity(),
            gap: gap * S,
            signature,
            context: CutContext::default(),
        }
    }

    #[test]
    fn resets_forged_by_the_path_are_told_apart_from_the_peers() {
        let mut inference = inference();
        let reset = |peer, reset| {
            Update::Reset(
                identity(),
                Direction::Received,
                ResetVerdict::received(crate::events::ResetTtls {
                    peer: Some(peer),
                    reset: Some(reset),
                }),
            )
        };
        inference.record(&key(), &reset(61, 61));
        let report = inference.report(&key()).unwrap();
        assert_eq!(report.resets_received.peer, 1);
        assert_eq!(report.forged_reset, None);
        assert!(
            report.explanation.contains("came from the peer itself"),
            "{}",
            report.explanation
        );
        inference.record(&key(), &reset(63, 64));
        let report = inference.report(&key()).unwrap();
        assert_eq!(
            (report.resets_received.path, report.resets_received.peer),
            (1, 1)
        );
        assert_eq!(
            report.forged_reset,
            Some(ForgedReset {
                hops_from_host: Some(1),
                peer_hops: Some(2),
                ttl_difference: Some(1),
            })
        );
        assert!(
            report
                .explanation
                .contains("1 of the 2 resets it received came from the path, not from the peer: reset by the path, about 1 hop from this host (the peer is 2)."),
            "{}",
            report.explanation
        );
    }

    #[test]
    fn two_cuts_below_two_hours_four_minutes_violate_req5() {
        let mut inference = inference();
        inference.record(&key(), &Update::IdleGapSurvived(identity(), 300 * S));
        inference.record(&key(), &cut(350, Signature::Reset));
        let report = inference.report(&key()).unwrap();
        assert_eq!(report.verdict, Verdict::Unknown);
        assert!(
            report
                .explanation
                .contains("2 below 2h4m (7440 s) are needed"),
            "{}",
            report.explanation
        );
        inference.record(&key(), &cut(352, Signature::Blackhole));
        let report = inference.report(&key()).unwrap();
        assert_eq!(report.verdict, Verdict::ViolatesReq5);
        assert_eq!(
            report.cuts,
            CutCounts {
                reset: 1,
                blackhole: 1,
                icmp: 0
            }
        );
        assert_eq!(
            (report.cutoff_lower_seconds, report.cutoff_upper_seconds),
            (Some(300.0), Some(350.0))
        );
        assert_eq!(
            report.explanation,
            "The path to 192.0.2.0/24 (imap client) cut 2 idle connections (reset: 1, \
             blackhole: 1); its cut-off lies between 5m (300 s) and 5m50s (350 s) of silence, \
             below the 2h4m (7440 s) that RFC 5382 REQ-5 requires."
        );
    }

    #[test]
    fn a_survived_gap_of_two_hours_four_minutes_is_ok() {
        let mut inference = inference();
        inference.record(&key(), &Update::IdleGapSurvived(identity(), 7500 * S));
        let report = inference.report(&key()).unwrap();
        assert_eq!(report.verdict, Verdict::Ok);
        assert_eq!(report.cutoff_upper_seconds, None);
        assert!(
            report.explanation.contains("up to 2h5m (7500 s)"),
            "{}",
            report.explanation
        );
    }

    #[test]
    fn cuts_above_the_threshold_do_not_violate() {
        let mut inference = inference();
        inference.record(&key(), &cut(8000, Signature::Blackhole));
        inference.record(&key(), &cut(9000, Signature::Blackhole));
        assert_eq!(inference.report(&key()).unwrap().verdict, Verdict::Unknown);
    }

    #[test]
    fn open_connections_follow_opens_and_closes() {
        let mut inference = inference();
        inference.record(&key(), &Update::Opened(identity()));
        inference.record(&key(), &Update::Opened(identity()));
        inference.record(
            &key(),
            &Update::Closed {
                identity: identity(),
                end: crate::vocabulary::End::Fin,
                duration: None,
                keepalive: None,
            },
        );
        assert_eq!(inference.report(&key()).unwrap().open_connections, 1);
    }

    #[test]
    fn periodic_survived_gaps_reveal_an_application_keepalive() {
        assert_eq!(
            keepalive_interval(&deque(&[120.0, 119.5, 120.2, 120.1])),
            Some(120.1)
        );
        assert_eq!(
            keepalive_interval(&deque(&[120.0, 119.5, 120.2])),
            None,
            "too few"
        );
        assert_eq!(
            keepalive_interval(&deque(&[10.0, 60.0, 300.0, 1200.0])),
            None,
            "not periodic"
        );
        // One odd gap among periodic ones does not hide the period.
        assert_eq!(
            keepalive_interval(&deque(&[2.0, 2.1, 1.9, 2.0, 30.0])),
            Some(2.0)
        );
    }
}
