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
    cluster::{self, Spread},
    duration_text::with_seconds,
    events::Nanos,
    model::{Cadence, PmtuClues, ResetVerdict, Update, cadence},
    node::NodeTimeouts,
    paths::PathKey,
};
use idlecut_api::vocabulary::{Direction, ResetOrigin, Role, Signature};

/// Recent samples kept per path: bounded memory, and estimates that follow a middlebox whose
/// configuration changes.
const MAX_SURVIVED_SAMPLES: usize = 512;
const MAX_CUT_SAMPLES: usize = 128;
const MAX_DEATH_SAMPLES: usize = 64;
/// The cadences of the path's recent connections kept, one per connection (see
/// `model::cadence`), for its application keepalive interval.
const MAX_CADENCES: usize = 64;
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

/// The path's application keepalive: the interval most of its recent connections' cadences
/// agree on, and how many connections show it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DominantCadence {
    pub interval: f64,
    pub connections: usize,
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
    /// The latest cadence of each recent connection that showed one, the latest changed last.
    cadences: VecDeque<Cadence>,
    keepalive: Option<DominantCadence>,
    resets_received: ResetOrigins,
    last_forged_reset: Option<ResetVerdict>,
    /// The segments the latest PMTU black hole lost.
    last_pmtu: Option<PmtuClues>,
    /// Stalls the kernel's MTU probing ended by lowering the MSS, and the latest (from, to).
    mss_lowered: u64,
    last_mss_lowered: Option<(u16, u16)>,
}

/// The inference for every path. Owned by the pipeline task; reports are read by HTTP.
#[derive(Debug)]
pub struct Inference {
    settings: Settings,
    paths: HashMap<PathKey, PathStats>,
    /// The node's own idle timeouts, as the latest scan read them.
    node: NodeTimeouts,
}

impl Inference {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            paths: HashMap::new(),
            node: NodeTimeouts::default(),
        }
    }

    /// Takes the node's idle timeouts the latest scan read, for the next reports.
    pub fn set_node_timeouts(&mut self, node: NodeTimeouts) {
        self.node = node;
    }

    pub fn node_timeouts(&self) -> &NodeTimeouts {
        &self.node
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The cut-off interval of a path, when it has one.
    pub fn cutoff_of(&self, key: &PathKey) -> Option<Cutoff> {
        self.paths.get(key).map(|stats| stats.cutoff)
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
                true
            }
            Update::CadenceChanged { from, to, .. } => {
                // The connection's earlier cadence gives way to its new one: one per connection.
                if let Some(from) = from
                    && let Some(at) = stats.cadences.iter().rposition(|c| c == from)
                {
                    stats.cadences.remove(at);
                }
                push_bounded(&mut stats.cadences, *to, MAX_CADENCES);
                stats.keepalive = dominant_cadence(&stats.cadences);
                true
            }
            Update::Cut {
                signature: Signature::Pmtu,
                context,
                ..
            } => {
                // Not an idle cut: counted, explained, and kept out of the cut-off and verdict.
                stats.cut_counts.add(Signature::Pmtu);
                stats.last_pmtu = context.pmtu.or(stats.last_pmtu);
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
            Update::MssLowered { from, to, .. } => {
                stats.mss_lowered += 1;
                stats.last_mss_lowered = Some((*from, *to));
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
        let node = self.node.judge(stats.cutoff.lower, stats.cutoff.upper);
        let mut explanation = explain(key, stats, verdict, self.settings);
        if let Some(sentence) = &node.sentence {
            explanation.push(' ');
            explanation.push_str(sentence);
        }
        PathReport {
            service: key.service.clone(),
            role: key.role,
            path: key.path.clone(),
            open_connections: stats.open_connections,
            survived_gaps: stats.survived_total,
            longest_survived_gap_seconds: stats.longest_survived,
            cuts: stats.cut_counts.clone(),
            mss_lowered: stats.mss_lowered,
            cuts_below_req5: stats.cuts_below_req5,
            cutoff_lower_seconds: stats.cutoff.lower,
            cutoff_upper_seconds: stats.cutoff.upper,
            verdict,
            duration_limit_seconds: stats.duration_limit,
            keepalive_interval_seconds: stats.keepalive.map(|keepalive| keepalive.interval),
            resets_received: stats.resets_received.clone(),
            forged_reset: stats.last_forged_reset.map(|verdict| ForgedReset {
                hops_from_host: verdict.sender_hops(),
                peer_hops: verdict.peer_hops(),
                ttl_difference: verdict.ttl_difference(),
            }),
            explanation,
            // Scheduled checks are added at read time (`scheduled::compare`).
            active_checks: Vec::new(),
            cutter: node.cutter,
            node_timeouts: node.inside,
        }
    }
}

fn push_bounded<T>(samples: &mut VecDeque<T>, value: T, max: usize) {
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
    let spread = Spread {
        share: AGE_CLUSTER_SPREAD,
        slack: AGE_CLUSTER_SLACK_SECONDS,
    };
    cluster::best(&ages, |&age| age, spread, <[f64]>::len)
        .filter(|group| group.len() >= min_deaths.max(1))
        .map(|group| ages[group.start])
}

/// The path's application keepalive, from the cadences of its recent connections (one each):
/// the group of near-equal ones (as near as the gaps of one cadence) that the most connections
/// show, on ties the one they show most clearly (the most gaps), and its median. Connections
/// without a cadence do not count: an IMAP client's short sessions say nothing about the
/// keepalive of its IDLE connection.
pub fn dominant_cadence(cadences: &VecDeque<Cadence>) -> Option<DominantCadence> {
    let mut sorted: Vec<Cadence> = cadences.iter().copied().collect();
    sorted.sort_by_key(|c| c.interval);
    let group = cluster::best(
        &sorted,
        |c| seconds(c.interval),
        cadence::NEAR,
        |group| {
            let gaps: u32 = group.iter().map(|c| u32::from(c.gaps)).sum();
            (group.len(), gaps)
        },
    )?;
    let intervals: Vec<f64> = sorted[group].iter().map(|c| seconds(c.interval)).collect();
    Some(DominantCadence {
        interval: cluster::median(&intervals)?,
        connections: intervals.len(),
    })
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
    for signature in Signature::ALL.into_iter().filter(|s| s.is_idle_cut()) {
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
            counts.idle_cuts(),
            plural(counts.idle_cuts()),
        ),
        Verdict::Ok => format!(
            "{who} kept connections idle for up to {} without cutting them, at least the \
             {threshold} that RFC 5382 REQ-5 requires.",
            with_seconds(stats.longest_survived.unwrap_or_default()),
        ),
        Verdict::Unknown => match (counts.idle_cuts(), stats.longest_survived) {
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
    if let Some(keepalive) = stats.keepalive {
        let connections = keepalive.connections as u64;
        let _ = write!(
            sentence,
            " {connections} of its connections exchange{} keepalives after about {} of silence.",
            if connections == 1 { "s" } else { "" },
            with_seconds(keepalive.interval)
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
    if counts.pmtu > 0 {
        let size = stats
            .last_pmtu
            .map(|clues| format!(" of {} bytes (MSS {})", clues.largest, clues.mss))
            .unwrap_or_default();
        let _ = write!(
            sentence,
            " {} connection{} died in a PMTU black hole, not for being idle: segments{size} were \
             lost again and again while the peer acknowledged later, smaller ones. The path's MTU \
             is too small for them and the ICMP errors that would say so (\"fragmentation \
             needed\", \"packet too big\") do not arrive; they are left out of the cut-off.",
            counts.pmtu,
            plural(counts.pmtu)
        );
    }
    if let Some((from, to)) = stats.last_mss_lowered {
        let _ = write!(
            sentence,
            " {} stall{} ended only once the kernel's MTU probing lowered the MSS (from {from} \
             to {to} bytes): the path's MTU is smaller than the route says and its ICMP errors \
             do not arrive.",
            stats.mss_lowered,
            plural(stats.mss_lowered)
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
    fn pmtu_black_holes_are_counted_and_explained_but_are_no_idle_cuts() {
        let mut inference = inference();
        let clues = crate::model::PmtuClues::new(crate::events::RetransmittedSegment {
            bytes: 1448,
            mss: 1448,
            peer_sacked: true,
        });
        for _ in 0..3 {
            inference.record(
                &key(),
                &Update::Cut {
                    identity: identity(),
                    gap: 0,
                    signature: Signature::Pmtu,
                    context: CutContext {
                        pmtu: Some(clues),
                        ..CutContext::default()
                    },
                },
            );
        }
        inference.record(&key(), &Update::IdleGapSurvived(identity(), 30 * S));
        let report = inference.report(&key()).unwrap();
        assert_eq!(report.cuts.pmtu, 3);
        assert_eq!(report.cuts.idle_cuts(), 0);
        assert_eq!(report.cuts_below_req5, 0);
        assert_eq!(report.verdict, Verdict::Unknown);
        assert_eq!(report.cutoff_upper_seconds, None, "{report:#?}");
        assert!(
            report.explanation.contains(
                "3 connections died in a PMTU black hole, not for being idle: segments of 1448 \
                 bytes (MSS 1448)"
            ),
            "{}",
            report.explanation
        );
        assert!(
            report
                .explanation
                .contains("has cut no idle connection yet")
        );
    }

    #[test]
    fn stalls_ended_by_a_lower_mss_are_told() {
        let mut inference = inference();
        for _ in 0..2 {
            inference.record(
                &key(),
                &Update::MssLowered {
                    identity: identity(),
                    from: 1448,
                    to: 1024,
                },
            );
        }
        let report = inference.report(&key()).unwrap();
        assert_eq!(report.mss_lowered, 2);
        assert_eq!(report.cuts.idle_cuts() + report.cuts.pmtu, 0);
        assert!(
            report
                .explanation
                .contains("2 stalls ended only once the kernel's MTU probing lowered the MSS (from 1448 to 1024 bytes)"),
            "{}",
            report.explanation
        );
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
                icmp: 0,
                pmtu: 0
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
                end: idlecut_api::vocabulary::End::Fin,
                duration: None,
                keepalive: None,
            },
        );
        assert_eq!(inference.report(&key()).unwrap().open_connections, 1);
    }

    /// Drives client connections to 192.0.2.7:143 through the connection model, each with its
    /// survived gaps (in seconds; the peer ends each), one gap of each in turn, then closes
    /// them with a FIN exchange; records every update of the model for the path.
    fn drive(inference: &mut Inference, connections: &[&[f64]]) {
        use crate::{
            events::{Endpoints, Event, Side, TcpState},
            model::ConnectionModel,
            settings::parse_ports,
        };
        let mut model = ConnectionModel::new(parse_ports("143=imap").unwrap());
        let mut out = Vec::new();
        let socket = |i: usize| 0xffff_0000_0000_1000 + i as u64;
        let endpoints = |i: usize| Endpoints {
            local: format!("10.0.1.2:{}", 40_000 + i).parse().unwrap(),
            remote: "192.0.2.7:143".parse().unwrap(),
        };
        let mut at = S;
        for i in 0..connections.len() {
            model.apply(
                Event::Open {
                    at,
                    socket: socket(i),
                    endpoints: endpoints(i),
                    netns: 1,
                    initiated_by: Some(Side::Local),
                },
                &mut out,
            );
        }
        let longest = connections.iter().map(|gaps| gaps.len()).max().unwrap_or(0);
        for turn in 0..longest {
            for (i, gaps) in connections.iter().enumerate() {
                let Some(&gap) = gaps.get(turn) else {
                    continue;
                };
                let gap = (gap * 1e9).round() as Nanos;
                at += gap;
                let first = Side::Remote;
                let socket = socket(i);
                model.apply(
                    Event::IdleGapEnd {
                        at,
                        socket,
                        gap,
                        first,
                    },
                    &mut out,
                );
                at += crate::model::CLOSE_GRACE_NS;
                model.expire(at, &mut out);
            }
        }
        for i in 0..connections.len() {
            at += S;
            model.apply(
                Event::Close {
                    at,
                    socket: socket(i),
                    endpoints: endpoints(i),
                    netns: 1,
                    old_state: TcpState::TimeWait,
                    opened_at: Some(S),
                    retransmits: 0,
                    first_fin: Some(Side::Local),
                    stalled_for: None,
                    awaiting_answer: false,
                },
                &mut out,
            );
        }
        model.expire(u64::MAX, &mut out);
        for update in &out {
            inference.record(&key(), update);
        }
    }

    /// An IMAP connection in IDLE, Dovecot's "Still here" every 3 s, with odd gaps of 0.2 s,
    /// 1 s and 7 s mixed in.
    const IDLE_EVERY_3S: &[f64] = &[0.2, 3.0, 3.0, 1.0, 3.0, 3.0, 7.0, 3.0, 3.0, 3.0];
    /// A client's NOOP every 20 s among commands: four of its seven gaps.
    const NOOP_EVERY_20S: &[f64] = &[20.0, 5.0, 20.5, 19.8, 1.0, 20.0, 0.5];

    #[test]
    fn the_keepalive_interval_is_the_cadence_of_its_connections_not_the_mix_of_its_gaps() {
        // The rule this replaced (three quarters of the path's recent survived gaps within
        // 10 % of their median) finds nothing here: the gaps of the short sessions and the
        // commands outnumber the keepalives.
        let mut inference = inference();
        drive(
            &mut inference,
            &[
                IDLE_EVERY_3S,
                &[12.0, 1.5, 40.0, 5.0, 0.3],
                &[2.0, 9.0, 30.0, 1.1],
                NOOP_EVERY_20S,
            ],
        );
        let report = inference.report(&key()).unwrap();
        assert_eq!(report.open_connections, 0, "closed: the cadences stay");
        // One connection each for 3 s and 20 s: the IDLE cadence shows in more of its gaps.
        assert_eq!(report.keepalive_interval_seconds, Some(3.0), "{report:#?}");
        assert!(
            report.explanation.ends_with(
                " 1 of its connections exchanges keepalives after about 3 s of silence."
            ),
            "{}",
            report.explanation
        );
        // Two more connections with the 20 s cadence: now most connections show that one.
        drive(&mut inference, &[NOOP_EVERY_20S, &[19.9, 20.0, 20.2, 20.0]]);
        let report = inference.report(&key()).unwrap();
        assert_eq!(report.keepalive_interval_seconds, Some(20.0));
        assert!(
            report.explanation.ends_with(
                " 3 of its connections exchange keepalives after about 20 s of silence."
            ),
            "{}",
            report.explanation
        );
    }

    #[test]
    fn a_connection_whose_cadence_changes_counts_once() {
        let mut inference = inference();
        let cadence = |seconds: Nanos, gaps| Cadence {
            interval: seconds * S,
            gaps,
        };
        let changed = |from, to| Update::CadenceChanged {
            identity: identity(),
            from,
            to,
        };
        // Two connections at 20 s, then one at 3 s that turns to 20 s too.
        inference.record(&key(), &changed(None, cadence(20, 4)));
        inference.record(&key(), &changed(None, cadence(20, 4)));
        inference.record(&key(), &changed(None, cadence(3, 8)));
        inference.record(&key(), &changed(Some(cadence(3, 8)), cadence(3, 6)));
        let report = inference.report(&key()).unwrap();
        assert_eq!(report.keepalive_interval_seconds, Some(20.0));
        inference.record(&key(), &changed(Some(cadence(3, 6)), cadence(20, 4)));
        assert_eq!(
            inference.paths[&key()].keepalive,
            Some(DominantCadence {
                interval: 20.0,
                connections: 3
            })
        );
        // Nothing but connections without a cadence: no keepalive interval.
        let mut inference = self::inference();
        drive(
            &mut inference,
            &[&[12.0, 1.5, 40.0, 5.0, 0.3], &[3.0, 3.0, 3.0]],
        );
        let report = inference.report(&key()).unwrap();
        assert_eq!(report.survived_gaps, 8);
        assert_eq!(report.keepalive_interval_seconds, None);
    }
}
