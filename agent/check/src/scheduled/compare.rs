//! The active and the passive view of a path side by side: `/api/v1/paths` shows, for each
//! path a scheduled check covers, what the check's last run found and whether it confirms or
//! contradicts the cut-off the agent inferred from the path's own connections.
//!
//! Pure functions of the two snapshots (the pipeline's path reports, the scheduler's results),
//! called by the HTTP side when it answers: neither owner knows about the other.

use std::sync::Arc;

use idlecut_api::vocabulary::{CheckAgreement, CheckStatus};
use idlecut_core::{
    duration_text::with_seconds,
    inference::{Cutoff, PathReport, Verdict, interval_words},
    paths::{OTHER, PathKey},
};

use idlecut_api::paths::ActiveCheck;

use super::{CheckResults, PortResult};

/// Slack between two intervals before they are said to disagree: timers on either side (the
/// middlebox's, the kernel's last-segment time, the check's sleep) are not exact, so 5 % of
/// the bound, at least a second.
fn slack(bound: f64) -> f64 {
    (bound * 0.05).max(1.0)
}

/// The path reports with the checks that cover each path (same service, client role, and the
/// path the path table puts the checked address in), their findings also in the explanation.
pub fn annotate(paths: &[PathReport], results: &CheckResults) -> Vec<PathReport> {
    let key_of = |report: &PathReport| PathKey {
        service: report.service.clone(),
        role: report.role,
        path: report.path.clone(),
    };
    let keys: Vec<PathKey> = paths.iter().map(key_of).collect();
    let covered: Vec<Option<PathKey>> = results
        .ports
        .iter()
        .map(|result| {
            result
                .path
                .as_ref()
                .map(|path| as_the_table_names(path, &keys))
        })
        .collect();
    paths
        .iter()
        .map(|report| {
            let mut report = report.clone();
            let key = key_of(&report);
            for (result, _) in results
                .ports
                .iter()
                .zip(&covered)
                .filter(|(_, covered)| covered.as_ref() == Some(&key))
            {
                let active = judge(&report, result);
                report.explanation.push(' ');
                report.explanation.push_str(&active.explanation);
                report.active_checks.push(active);
            }
            report
        })
        .collect()
}

/// The path the path table puts a checked address in, given the paths it reports (`known`),
/// from the path `own` its prefix names: that path when it has a label of its own (every path
/// with a label has a report, and a label is never taken back), else `other` when that
/// service's client connections already go there (the table is full: past `--max-paths` it
/// names every address without a label `other`). A path the table has not named yet stays
/// `own`, and matches no report: with room left, the first connection to its prefix gets
/// that label.
fn as_the_table_names(own: &PathKey, known: &[PathKey]) -> PathKey {
    let other = PathKey {
        path: Arc::from(OTHER),
        ..own.clone()
    };
    if !known.contains(own) && known.contains(&other) {
        other
    } else {
        own.clone()
    }
}

/// Whether the cut-off intervals (lower, upper] of the two sides agree: they overlap, within
/// the slack; `Unknown` when either side has no bound at all.
pub fn agreement(passive: Cutoff, active: Cutoff) -> CheckAgreement {
    let unknown = |c: Cutoff| c.lower.is_none() && c.upper.is_none();
    if unknown(passive) || unknown(active) {
        return CheckAgreement::Unknown;
    }
    // One side saw a silence survive that the other saw cut (or longer).
    let apart = |survived: Option<f64>, cut: Option<f64>| match (survived, cut) {
        (Some(survived), Some(cut)) => survived > cut + slack(cut),
        _ => false,
    };
    if apart(active.lower, passive.upper) || apart(passive.lower, active.upper) {
        CheckAgreement::Contradicts
    } else {
        CheckAgreement::Confirms
    }
}

/// What one check's last run says about the path of `passive`.
pub fn judge(passive: &PathReport, result: &PortResult) -> ActiveCheck {
    let idle = result.idle.as_ref();
    let active = Cutoff {
        lower: idle.and_then(|idle| idle.cutoff_lower_seconds),
        upper: idle.and_then(|idle| idle.cutoff_upper_seconds),
    };
    let passive_cutoff = Cutoff {
        lower: passive.cutoff_lower_seconds,
        upper: passive.cutoff_upper_seconds,
    };
    let agreement = agreement(passive_cutoff, active);
    let who = format!(
        "The scheduled check of {} (port {})",
        result.target, result.port
    );
    let found = match (idle, active.upper) {
        (None, _) => "ran no idle search (the port did not answer, or max_idle is 0s)".to_owned(),
        (Some(idle), Some(_)) => format!(
            "found the cut-off {}{}",
            interval_words(active),
            idle.signature
                .map(|signature| format!(" ({signature})"))
                .unwrap_or_default()
        ),
        (Some(_), None) => match active.lower {
            Some(lower) => format!(
                "saw no cut: connections silent for {} still answered",
                with_seconds(lower)
            ),
            None => "could not measure a cut-off".to_owned(),
        },
    };
    let passive_words = interval_words(passive_cutoff);
    let explanation = match agreement {
        CheckAgreement::Confirms => {
            format!("{who} {found}, which confirms the passive estimate ({passive_words}).")
        }
        CheckAgreement::Contradicts => format!(
            "{who} {found}, which contradicts the passive estimate ({passive_words}): the path \
             may have changed since one of them, or they do not cross the same middlebox."
        ),
        CheckAgreement::Unknown if idle.is_some() && active != Cutoff::default() => format!(
            "{who} {found}; the path's own connections give no estimate to compare it with yet."
        ),
        CheckAgreement::Unknown => format!("{who} {found}."),
    };
    ActiveCheck {
        target: result.target.to_string(),
        port: result.port,
        address: result.address.to_string(),
        checked_at_unix_seconds: result.ended_unix_seconds,
        status: result.idle_status.unwrap_or(CheckStatus::CouldNotTell),
        max_idle_seconds: result.max_idle_seconds,
        cutoff_lower_seconds: active.lower,
        cutoff_upper_seconds: active.upper,
        signature: idle.and_then(|idle| idle.signature),
        verdict: idle.map_or(Verdict::Unknown, |idle| idle.verdict),
        agreement,
        explanation,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use idlecut_api::paths::ResetOrigins;

    use super::*;
    use crate::IdleReport;
    use idlecut_api::vocabulary::{IdleSession, Role, Signature};
    use idlecut_core::inference::CutCounts;

    fn cutoff(lower: Option<f64>, upper: Option<f64>) -> Cutoff {
        Cutoff { lower, upper }
    }

    #[test]
    fn overlapping_intervals_confirm_and_disjoint_ones_contradict() {
        use CheckAgreement::*;
        // The router's 6 s, seen both ways.
        let passive = cutoff(Some(5.2), Some(6.4));
        assert_eq!(agreement(passive, cutoff(Some(5.6), Some(6.1))), Confirms);
        // Touching within the timers' slack still agrees.
        assert_eq!(agreement(passive, cutoff(Some(7.0), Some(7.5))), Confirms);
        // A check that certified the path (no cut within 2h5m) against passive cuts at 350 s.
        let certified = cutoff(Some(7500.0), None);
        assert_eq!(
            agreement(cutoff(Some(240.0), Some(350.0)), certified),
            Contradicts
        );
        // A path that survived 3 h passively, but the check was cut at 6 s.
        assert_eq!(
            agreement(cutoff(Some(10_800.0), None), cutoff(Some(5.0), Some(6.0))),
            Contradicts
        );
        // Passive only knows survivals below the check's cut: consistent.
        assert_eq!(
            agreement(cutoff(Some(3.0), None), cutoff(Some(5.0), Some(6.0))),
            Confirms
        );
        // Cut at most after 4 s passively, the check saw 5 s go through: beyond the slack?
        // 5 > 4 + 1 is false: within it.
        assert_eq!(
            agreement(cutoff(None, Some(4.0)), cutoff(Some(5.0), None)),
            Confirms
        );
        assert_eq!(
            agreement(cutoff(None, Some(4.0)), cutoff(Some(5.5), None)),
            Contradicts
        );
        // Nothing on one side.
        assert_eq!(
            agreement(cutoff(None, None), cutoff(Some(5.0), Some(6.0))),
            Unknown
        );
        assert_eq!(agreement(passive, cutoff(None, None)), Unknown);
    }

    fn passive(lower: Option<f64>, upper: Option<f64>) -> PathReport {
        PathReport {
            service: Arc::from("imap"),
            role: Role::Client,
            path: Arc::from("192.0.2.0/24"),
            open_connections: 0,
            survived_gaps: 3,
            longest_survived_gap_seconds: lower,
            cuts: CutCounts {
                reset: 2,
                ..CutCounts::default()
            },
            mss_lowered: 0,
            cuts_below_req5: 2,
            cutoff_lower_seconds: lower,
            cutoff_upper_seconds: upper,
            verdict: Verdict::ViolatesReq5,
            duration_limit_seconds: None,
            keepalive_interval_seconds: None,
            resets_received: ResetOrigins::default(),
            forged_reset: None,
            explanation: "The path to 192.0.2.0/24 (imap client) cut 2 idle connections.".into(),
            active_checks: Vec::new(),
            cutter: None,
            node_timeouts: Vec::new(),
        }
    }

    fn result(path: &str, lower: Option<f64>, upper: Option<f64>) -> PortResult {
        PortResult {
            target: Arc::from("192.0.2.7:143"),
            port: 143,
            address: "192.0.2.7".parse().unwrap(),
            path: Some(PathKey {
                service: Arc::from("imap"),
                role: Role::Client,
                path: Arc::from(path),
            }),
            ended_unix_seconds: 1_700_000_000.0,
            max_idle_seconds: 20.0,
            idle_status: Some(if upper.is_some() {
                CheckStatus::Fail
            } else {
                CheckStatus::Pass
            }),
            idle: Some(IdleReport {
                cutoff_lower_seconds: lower,
                cutoff_upper_seconds: upper,
                signature: upper.map(|_| Signature::Reset),
                verdict: if upper.is_some() {
                    Verdict::ViolatesReq5
                } else {
                    Verdict::Unknown
                },
                explanation: String::new(),
                recommended_keepalive_seconds: None,
                server_idle_limit_seconds: None,
                session: IdleSession::Greeted,
                connections: 10,
                probes: Vec::new(),
            }),
        }
    }

    #[test]
    fn a_check_shows_on_its_path_only_with_words_in_the_explanation() {
        let paths = [passive(Some(5.2), Some(6.4)), {
            let mut other = passive(Some(5.2), Some(6.4));
            other.path = Arc::from("198.51.100.0/24");
            other
        }];
        let results = CheckResults {
            ports: vec![result("192.0.2.0/24", Some(5.5), Some(6.1))],
        };
        let annotated = annotate(&paths, &results);
        assert!(annotated[1].active_checks.is_empty(), "another prefix");
        let [active] = annotated[0].active_checks.as_slice() else {
            panic!("{annotated:#?}")
        };
        assert_eq!(active.agreement, CheckAgreement::Confirms);
        assert_eq!(active.status, CheckStatus::Fail);
        assert_eq!(active.signature, Some(Signature::Reset));
        assert_eq!(
            active.explanation,
            "The scheduled check of 192.0.2.7:143 (port 143) found the cut-off between 5.5 s and \
             6.1 s (reset), which confirms the passive estimate (between 5.2 s and 6.4 s)."
        );
        assert!(
            annotated[0]
                .explanation
                .ends_with(&format!(" {}", active.explanation))
        );
    }

    #[test]
    fn past_the_cap_a_check_shows_on_the_path_its_address_is_counted_in() {
        let labelled = passive(Some(5.2), Some(6.4));
        let mut other = passive(Some(100.0), None);
        other.path = Arc::from(OTHER);
        // 198.51.100.0/24 got no label of its own: the table was full, its connections are
        // counted in `other`, and so is the check of an address in it.
        let mut beyond = result("198.51.100.0/24", Some(5.5), Some(6.1));
        beyond.address = "198.51.100.7".parse().unwrap();
        let results = CheckResults {
            ports: vec![beyond, result("192.0.2.0/24", Some(5.5), Some(6.1))],
        };
        let annotated = annotate(&[labelled.clone(), other.clone()], &results);
        assert_eq!(annotated[0].active_checks.len(), 1, "{annotated:#?}");
        assert_eq!(annotated[1].active_checks.len(), 1, "{annotated:#?}");
        assert_eq!(annotated[1].active_checks[0].address, "198.51.100.7");
        assert_eq!(
            annotated[1].active_checks[0].agreement,
            CheckAgreement::Contradicts
        );
        // With room left there is no `other`: a prefix without connections yet shows nowhere.
        let annotated = annotate(&[labelled], &results);
        assert_eq!(annotated[0].active_checks.len(), 1, "{annotated:#?}");
    }

    #[test]
    fn a_certified_path_contradicts_a_passive_violation_and_nothing_compares_with_nothing() {
        let mut certifying = result("192.0.2.0/24", Some(7500.0), None);
        certifying.max_idle_seconds = 7500.0;
        let active = judge(&passive(Some(240.0), Some(350.0)), &certifying);
        assert_eq!(active.agreement, CheckAgreement::Contradicts);
        assert!(
            active.explanation.contains(
                "saw no cut: connections silent for 2h5m (7500 s) still answered, which \
                 contradicts the passive estimate (between 4m (240 s) and 5m50s (350 s))"
            ),
            "{}",
            active.explanation
        );
        let active = judge(
            &passive(None, None),
            &result("192.0.2.0/24", Some(5.5), Some(6.1)),
        );
        assert_eq!(active.agreement, CheckAgreement::Unknown);
        assert!(
            active
                .explanation
                .contains("no estimate to compare it with yet")
        );
        let mut unreachable = result("192.0.2.0/24", None, None);
        unreachable.idle = None;
        unreachable.idle_status = None;
        let active = judge(&passive(Some(5.2), Some(6.4)), &unreachable);
        assert_eq!(
            (active.agreement, active.status),
            (CheckAgreement::Unknown, CheckStatus::CouldNotTell)
        );
        assert!(
            active.explanation.contains("ran no idle search"),
            "{}",
            active.explanation
        );
    }
}
