//! The idle cut-off search: connections greeted by the server, left silent for different
//! times, then asked NOOP. One that still answers narrows the cut-off from below, one that was
//! cut (RST, black hole, ICMP error) narrows it from above. Each round spreads its connections
//! over the interval still unknown and ends at the first cut, since longer silences would only
//! be cut too; the next round refines. Then one connection with TCP keepalive at the
//! recommended interval stays silent past the cut-off, to show that the advice works.
//!
//! The samples go through the agent's own inference, so the interval, the verdict and its
//! explanation are those `/api/v1/paths` would give for the same evidence.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::task::JoinSet;

use super::{
    args::Progress,
    probe::{IdleSettings, Outcome, Probe, describe, probe},
    report::{IdleReport, Row},
};
use idlecut_api::vocabulary::{CheckName, CheckStatus, IdleSession, MailProtocol, Role, Signature};
use idlecut_core::{
    duration_text::with_seconds,
    inference::{Inference, Settings, Verdict},
    model::{CutContext, Identity, Update},
    paths::PathKey,
};

/// Share of the cut-off's lower bound recommended as keepalive interval: room for a middlebox
/// whose timer runs a little fast, or starts at a packet before the last one seen here.
const KEEPALIVE_SHARE: f64 = 0.8;

/// The longest interval Linux takes for TCP keepalive (`TCP_KEEPIDLE` and `TCP_KEEPINTVL`, its
/// `MAX_TCP_KEEPIDLE`): more is refused with EINVAL, and a path that cuts only after more than
/// 11 hours is as well kept open by a probe every 9.
const MAX_KEEPALIVE_SECONDS: f64 = 32_767.0;

/// The keepalive interval to recommend for a path whose cut-off is above `lower` seconds, in
/// whole seconds (None below one second): [`KEEPALIVE_SHARE`] of it, at most what TCP takes.
fn recommended_keepalive(lower: f64) -> Option<f64> {
    let seconds = (lower * KEEPALIVE_SHARE).floor().min(MAX_KEEPALIVE_SECONDS);
    (seconds >= 1.0).then_some(seconds)
}

/// The silences to try next, in seconds. With the cut-off's upper bound unknown, the whole
/// range up to `cap` (the longest testable silence) is spread evenly, `cap` included; once a
/// cut is known, the points divide (lower, upper) evenly, no more of them than `precision`
/// needs.
pub fn plan(lower: f64, upper: Option<f64>, cap: f64, precision: f64, max: usize) -> Vec<f64> {
    if max == 0 {
        return Vec::new();
    }
    let needed = |width: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "positive, small: bounded by `max` right after"
        )]
        let n = (width / precision.max(1e-3)).ceil() as usize;
        n
    };
    match upper {
        None if lower < cap => {
            let width = cap - lower;
            let n = needed(width).clamp(1, max);
            (1..=n)
                .map(|i| lower + width * i as f64 / n as f64)
                .collect()
        }
        None => Vec::new(),
        Some(upper) => {
            let width = upper - lower;
            if width <= precision {
                return Vec::new();
            }
            let n = needed(width).saturating_sub(1).clamp(1, max);
            (1..=n)
                .map(|i| lower + width * i as f64 / (n + 1) as f64)
                .collect()
        }
    }
}

/// Runs the search against `addr`, then the keepalive confirmation. Returns the report and
/// its two rows.
pub async fn search(
    addr: SocketAddr,
    protocol: MailProtocol,
    settings: &IdleSettings,
    progress: &Progress,
) -> (IdleReport, Row, Row) {
    let settings = Arc::new(settings.clone());
    let service = if addr.port() == 25 {
        "smtp"
    } else {
        protocol.service()
    };
    let key = PathKey {
        service: Arc::from(service),
        role: Role::Client,
        path: Arc::from(addr.ip().to_string()),
    };
    let identity = Identity {
        service: key.service.clone(),
        role: Role::Client,
        remote: addr.ip(),
    };
    // One cut is enough here: the search chose the silence, so the cut is not an accident.
    let mut inference = Inference::new(Settings {
        req5_threshold_seconds: settings.req5_threshold.as_secs_f64(),
        min_cuts: 1,
    });
    let max_idle = settings.max_idle.as_secs_f64();
    let precision = settings.precision.as_secs_f64();
    let session = match &settings.credentials {
        Some(credentials) if protocol == MailProtocol::Imap => {
            progress.note(&format!(
                "idle connections log in as {} first",
                credentials.user
            ));
            IdleSession::LoggedIn
        }
        _ => IdleSession::Greeted,
    };
    let mut cap = max_idle;
    let mut server_limit: Option<f64> = None;
    let mut probes: Vec<Probe> = Vec::new();
    // Connections opened, those of probes dropped at a round's first cut included.
    let mut opened = 0;
    let mut round = 0;
    loop {
        let (lower, upper) = bounds(&inference, &key);
        let remaining = settings.budget.saturating_sub(opened);
        let times = plan(
            lower,
            upper,
            cap,
            precision,
            settings.parallel.min(remaining),
        );
        if times.is_empty() || remaining == 0 {
            break;
        }
        round += 1;
        opened += times.len();
        progress.note(&format!(
            "idle round {round}: {} connection{} silent for {} (longest {}); this takes {}",
            times.len(),
            if times.len() == 1 { "" } else { "s" },
            times
                .iter()
                .map(|t| idlecut_core::duration_text::compact(*t))
                .collect::<Vec<_>>()
                .join(", "),
            idlecut_core::duration_text::compact(times.last().copied().unwrap_or_default()),
            if upper.is_none() {
                "as long as the longest, or until the first cut"
            } else {
                "at most as long as the longest"
            }
        ));
        let results = run_round(addr, &settings, &times).await;
        let mut inconclusive = 0;
        for probe in &results {
            let gap = seconds_to_nanos(probe.idle_seconds);
            match &probe.outcome {
                Outcome::Survived => {
                    inference.record(&key, &Update::IdleGapSurvived(identity.clone(), gap));
                }
                Outcome::Cut { signature } => {
                    inference.record(
                        &key,
                        &Update::Cut {
                            identity: identity.clone(),
                            gap,
                            signature: *signature,
                            context: CutContext::default(),
                        },
                    );
                }
                Outcome::ServerSpoke { .. } => {
                    inference.record(&key, &Update::IdleGapSurvived(identity.clone(), gap));
                    // Just under the server's limit is the longest silence left to try.
                    let limit = probe.idle_seconds;
                    server_limit = Some(server_limit.map_or(limit, |l: f64| l.min(limit)));
                    cap = cap.min((limit - precision).max(limit * 0.9));
                }
                Outcome::Inconclusive { .. } => inconclusive += 1,
            }
            progress.note(&format!(
                "  silent {}: {}",
                idlecut_core::duration_text::compact(probe.idle_seconds),
                describe(&probe.outcome)
            ));
        }
        let learned_nothing = inconclusive == results.len();
        probes.extend(results);
        if learned_nothing {
            // Another round would fail the same way.
            break;
        }
    }
    probes.sort_by(|a, b| a.idle_seconds.total_cmp(&b.idle_seconds));
    let report = inference.report(&key);
    let (lower, upper) = bounds(&inference, &key);
    let cuts = report.as_ref().map(|r| r.cuts.clone()).unwrap_or_default();
    let signature = [
        (cuts.reset, Signature::Reset),
        (cuts.blackhole, Signature::Blackhole),
        (cuts.icmp, Signature::Icmp),
    ]
    .into_iter()
    .filter(|(count, _)| *count > 0)
    .max_by_key(|(count, _)| *count)
    .map(|(_, signature)| signature);
    let recommended = upper.and(recommended_keepalive(lower));
    let idle = IdleReport {
        cutoff_lower_seconds: (lower > 0.0).then_some(lower),
        cutoff_upper_seconds: upper,
        signature,
        verdict: report.as_ref().map_or(Verdict::Unknown, |r| r.verdict),
        explanation: report.map(|r| r.explanation).unwrap_or_default(),
        recommended_keepalive_seconds: recommended,
        server_idle_limit_seconds: server_limit,
        session,
        connections: opened,
        probes,
    };
    let idle_row = idle_row(&idle, max_idle, precision);
    let keepalive_row = keepalive_row(addr, &settings, &idle, progress).await;
    (idle, idle_row, keepalive_row)
}

/// (lower, upper) of the cut-off so far: lower 0 when nothing survived yet.
fn bounds(inference: &Inference, key: &PathKey) -> (f64, Option<f64>) {
    inference.report(key).map_or((0.0, None), |report| {
        (
            report.cutoff_lower_seconds.unwrap_or(0.0),
            report.cutoff_upper_seconds,
        )
    })
}

/// Runs one probe per silence in parallel. The first cut ends the round: probes meant to stay
/// silent longer would only be cut too, so they are dropped (their connections closed). So
/// does the server ending a silence itself.
async fn run_round(addr: SocketAddr, settings: &Arc<IdleSettings>, times: &[f64]) -> Vec<Probe> {
    let mut probes = Vec::new();
    let mut tasks = JoinSet::new();
    let mut handles = Vec::new();
    for &seconds in times {
        let settings = settings.clone();
        let handle = tasks.spawn(async move {
            probe(addr, &settings, Duration::from_secs_f64(seconds), None).await
        });
        handles.push((seconds, handle));
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok(probe) = joined else { continue };
        // A cut, or the server hanging up on its own idle timeout, ends every longer silence.
        if matches!(
            probe.outcome,
            Outcome::Cut { .. } | Outcome::ServerSpoke { .. }
        ) {
            for (seconds, handle) in &handles {
                if *seconds > probe.idle_seconds {
                    handle.abort();
                }
            }
        }
        probes.push(probe);
    }
    probes.sort_by(|a, b| a.idle_seconds.total_cmp(&b.idle_seconds));
    probes
}

fn idle_row(idle: &IdleReport, max_idle: f64, precision: f64) -> Row {
    let verdict = format!(
        "verdict {}: {}",
        verdict_word(idle.verdict),
        idle.explanation
    );
    match (idle.cutoff_upper_seconds, idle.signature) {
        (Some(upper), Some(signature)) => {
            let lower = idle.cutoff_lower_seconds.unwrap_or(0.0);
            let coarse = if upper - lower > precision {
                "; the connection budget ran out before --precision was reached"
            } else {
                ""
            };
            Row::new(
                CheckName::IdleCutoff,
                CheckStatus::Fail,
                format!("cut {}{coarse}; {verdict}", signature_words(signature)),
            )
        }
        _ if idle
            .cutoff_lower_seconds
            .is_some_and(|lower| lower >= max_idle * 0.999) =>
        {
            Row::new(
                CheckName::IdleCutoff,
                CheckStatus::Pass,
                format!(
                    "connections silent for {} still answered; {verdict}",
                    with_seconds(max_idle)
                ),
            )
        }
        _ => {
            let tried = idle.cutoff_lower_seconds.map_or_else(
                || {
                    let first = idle.probes.iter().find_map(|probe| match &probe.outcome {
                        Outcome::Inconclusive { reason } => Some(reason.as_str()),
                        _ => None,
                    });
                    format!(
                        "no idle connection gave an answer either way{}",
                        first.map_or_else(String::new, |reason| format!(" ({reason})"))
                    )
                },
                |lower| {
                    format!(
                        "no cut, but the longest silence that could be tried was {}, short of \
                         --max-idle {}",
                        with_seconds(lower),
                        with_seconds(max_idle)
                    )
                },
            );
            let server = idle
                .server_idle_limit_seconds
                .map_or_else(String::new, |limit| {
                    format!(
                        ": the server itself ends sessions silent for about {} (a server with \
                     longer timeouts can test longer silences)",
                        with_seconds(limit)
                    )
                });
            Row::new(
                CheckName::IdleCutoff,
                CheckStatus::CouldNotTell,
                format!("{tried}{server}."),
            )
        }
    }
}

/// How a path cuts, as the end of "cut ...".
fn signature_words(signature: Signature) -> &'static str {
    match signature {
        Signature::Reset => "with a RST (reset)",
        Signature::Blackhole => "silently: later segments go unanswered (blackhole)",
        Signature::Icmp => "with ICMP unreachable errors (icmp)",
        // A check's own lines are short: it never meets one, but the words stay true.
        Signature::Pmtu => "by dropping full-size segments, not for idleness (pmtu)",
    }
}

/// The verdict as `/api/v1/paths` spells it.
fn verdict_word(verdict: Verdict) -> String {
    serde_json::to_value(verdict)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Confirms the recommended keepalive: one connection with TCP keepalive at that interval,
/// silent well past the cut-off, must still answer NOOP.
async fn keepalive_row(
    addr: SocketAddr,
    settings: &Arc<IdleSettings>,
    idle: &IdleReport,
    progress: &Progress,
) -> Row {
    let (Some(interval), Some(upper)) = (
        idle.recommended_keepalive_seconds,
        idle.cutoff_upper_seconds,
    ) else {
        let (status, detail) = if idle.cutoff_upper_seconds.is_some() {
            (
                CheckStatus::CouldNotTell,
                "no keepalive interval to try: the path cuts even the shortest silence tried",
            )
        } else if idle
            .cutoff_lower_seconds
            .is_some_and(|lower| lower >= settings.max_idle.as_secs_f64() * 0.999)
        {
            (
                CheckStatus::Pass,
                "no keepalive needed: no cut within --max-idle",
            )
        } else {
            (
                CheckStatus::CouldNotTell,
                "no cut-off found to recommend a keepalive for",
            )
        };
        return Row::new(CheckName::Keepalive, status, detail);
    };
    let silence = upper + (upper * 0.5).max(settings.precision.as_secs_f64());
    if idle
        .server_idle_limit_seconds
        .is_some_and(|limit| limit <= silence)
    {
        return Row::new(
            CheckName::Keepalive,
            CheckStatus::CouldNotTell,
            format!(
                "recommended: TCP keepalive or NOOP every {}; not confirmed, since the server \
                 ends silences shorter than the {} it would take",
                with_seconds(interval),
                with_seconds(silence)
            ),
        );
    }
    progress.note(&format!(
        "keepalive: one connection with TCP keepalive every {}, silent for {}",
        idlecut_core::duration_text::compact(interval),
        idlecut_core::duration_text::compact(silence)
    ));
    let result = probe(
        addr,
        settings,
        Duration::from_secs_f64(silence),
        Some(Duration::from_secs_f64(interval)),
    )
    .await;
    let what = format!(
        "recommended: TCP keepalive or NOOP every {} ({KEEPALIVE_SHARE} of the cut-off's lower \
         bound); with TCP keepalive at that interval, a connection silent for {} (past the \
         cut-off)",
        with_seconds(interval),
        with_seconds(silence)
    );
    match result.outcome {
        Outcome::Survived => Row::new(
            CheckName::Keepalive,
            CheckStatus::Pass,
            format!("{what} still answered NOOP."),
        ),
        Outcome::Cut { signature } => Row::new(
            CheckName::Keepalive,
            CheckStatus::Fail,
            format!(
                "{what} was cut anyway after {}, {}: the path ignores TCP keepalive probes, \
                 so use NOOP every {} instead",
                with_seconds(result.idle_seconds),
                signature_words(signature),
                with_seconds(interval)
            ),
        ),
        other => Row::new(
            CheckName::Keepalive,
            CheckStatus::CouldNotTell,
            format!("{what}: {}", describe(&other)),
        ),
    }
}

fn seconds_to_nanos(seconds: f64) -> u64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive number of seconds well within u64 nanoseconds"
    )]
    let nanos = (seconds.max(0.0) * 1e9) as u64;
    nanos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn the_recommended_keepalive_is_one_tcp_takes() {
        // 0.8 of the lower bound, in whole seconds.
        assert_eq!(recommended_keepalive(300.0), Some(240.0));
        assert_eq!(recommended_keepalive(1.0), None);
        // A path that cuts after 15 hours: TCP refuses more than 32767 s (EINVAL), which the
        // confirmation would have asked for.
        assert_eq!(recommended_keepalive(54_000.0), Some(32_767.0));
    }

    #[test]
    fn the_first_round_spreads_over_the_whole_range() {
        let times = plan(0.0, None, 20.0, 1.0, 8);
        assert!(
            close(&times, &[2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 17.5, 20.0]),
            "{times:?}"
        );
    }

    #[test]
    fn later_rounds_divide_the_interval_left() {
        let times = plan(5.0, Some(7.5), 20.0, 1.0, 8);
        // Width 2.5 at precision 1 needs 2 points (3 parts of 0.83 s).
        assert!(
            close(&times, &[5.0 + 2.5 / 3.0, 5.0 + 5.0 / 3.0]),
            "{times:?}"
        );
        assert!(
            plan(5.0, Some(5.8), 20.0, 1.0, 8).is_empty(),
            "precise enough"
        );
        assert!(plan(20.0, None, 20.0, 1.0, 8).is_empty(), "all survived");
        assert_eq!(
            plan(0.0, None, 20.0, 10.0, 8).len(),
            2,
            "no more than needed"
        );
    }

    #[test]
    fn a_simulated_path_converges_within_the_budget() {
        // A path that cuts after 6.2 s: rounds as `search` runs them.
        let mut survived = std::collections::VecDeque::new();
        let mut cuts = std::collections::VecDeque::new();
        let mut used = 0;
        loop {
            let c = idlecut_core::inference::cutoff(&survived, &cuts);
            let times = plan(c.lower.unwrap_or(0.0), c.upper, 7500.0, 60.0, 8);
            if times.is_empty() {
                break;
            }
            used += times.len();
            for t in times {
                if t < 6.2 {
                    survived.push_back(t)
                } else {
                    cuts.push_back(t)
                }
            }
        }
        let c = idlecut_core::inference::cutoff(&survived, &cuts);
        assert!(c.upper.unwrap() - c.lower.unwrap_or(0.0) <= 60.0);
        assert!(c.upper.unwrap() >= 6.2 && c.lower.unwrap_or(0.0) < 6.2);
        assert!(used <= 32, "{used} connections");
    }
}
