//! The log of recent cuts: `GET /api/v1/cuts` and `idlecut cuts`.
//!
//! The histograms say how often and after how long a path cuts; an SRE paged by them wants to
//! see one: which connection, which process, when, and (for a RST) who sent it. The pipeline
//! records every cut here, with the path it was counted under, in a bounded ring
//! (`--recent-cuts`): the oldest goes when it is full. Rows are made when a snapshot is taken.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    time::{Duration, SystemTime},
};

pub use idlecut_api::cuts::{CutRow, CutsResponse};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{
    duration_text::compact,
    events::Nanos,
    listing::{self, Filter, Listing, Parameter},
    model::{CutContext, Update},
    paths::PathKey,
};
use idlecut_api::{
    pods::Pod,
    vocabulary::{ResetOrigin, Role, Signature},
};

pub const DEFAULT_LIMIT: usize = 100;

/// A cut as the log keeps it.
#[derive(Clone, Debug)]
struct Recorded {
    path: PathKey,
    gap: Nanos,
    signature: Signature,
    context: CutContext,
}

/// The last `capacity` cuts, oldest first.
#[derive(Debug)]
pub struct RecentCuts {
    capacity: usize,
    cuts: VecDeque<Recorded>,
}

impl RecentCuts {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            cuts: VecDeque::new(),
        }
    }

    /// Keeps the update if it is a cut, counted under `path`.
    pub fn record(&mut self, path: &PathKey, update: &Update) {
        let Update::Cut {
            gap,
            signature,
            context,
            ..
        } = update
        else {
            return;
        };
        if self.capacity == 0 {
            return;
        }
        // Cuts are settled out of time order (a received RST at once, others after their grace
        // period, a lost close at the next scan): keep the log in the order they happened.
        let mut position = self
            .cuts
            .iter()
            .rposition(|kept| kept.context.at <= context.at)
            .map_or(0, |index| index + 1);
        if self.cuts.len() == self.capacity {
            if position == 0 {
                // Older than every cut kept: it would be the next to go.
                return;
            }
            self.cuts.pop_front();
            position -= 1;
        }
        self.cuts.insert(
            position,
            Recorded {
                path: path.clone(),
                gap: *gap,
                signature: *signature,
                context: context.clone(),
            },
        );
    }

    /// Every cut kept, newest first, as of kernel time `now` and wall-clock time `wall_now`.
    pub fn rows(&self, now: Nanos, wall_now: SystemTime) -> Vec<CutRow> {
        self.cuts
            .iter()
            .rev()
            .map(|cut| {
                let ago = Duration::from_nanos(now.saturating_sub(cut.context.at));
                let owner = cut.context.owner.as_deref();
                let reset = cut.context.reset;
                CutRow {
                    time: rfc3339(wall_now.checked_sub(ago).unwrap_or(wall_now)),
                    seconds_ago: ago.as_secs_f64(),
                    service: cut.path.service.to_string(),
                    role: cut.path.role,
                    path: cut.path.path.to_string(),
                    local: cut
                        .context
                        .endpoints
                        .map_or_else(String::new, |e| e.local.to_string()),
                    remote: cut
                        .context
                        .endpoints
                        .map_or_else(String::new, |e| e.remote.to_string()),
                    netns: (cut.context.netns != 0).then_some(cut.context.netns),
                    idle_before_cut_seconds: Duration::from_nanos(cut.gap).as_secs_f64(),
                    signature: cut.signature,
                    lost_segment_bytes: cut.context.pmtu.map(|clues| clues.largest),
                    mss: cut.context.pmtu.map(|clues| clues.mss),
                    origin: reset.map(|verdict| verdict.origin),
                    reset_hops_from_host: reset
                        .filter(|verdict| verdict.origin == ResetOrigin::Path)
                        .and_then(|verdict| verdict.sender_hops()),
                    pid: owner.map(|owner| owner.pid),
                    cgroup: owner.and_then(|owner| owner.cgroup.clone()),
                    pod: owner.and_then(|owner| owner.pod.clone()),
                    host: owner.map(|owner| owner.pod.is_none()),
                }
            })
            .collect()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// RFC 3339 in UTC, to the millisecond (the kernel's clock is finer, the agent's reading of
/// it is not).
fn rfc3339(time: SystemTime) -> String {
    let time = OffsetDateTime::from(time);
    time.replace_millisecond(time.millisecond())
        .unwrap_or(time)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// `/api/v1/cuts` and what its query string takes; its limit goes up to the log's capacity.
pub const LISTING: Listing = Listing {
    endpoint: "/api/v1/cuts",
    parameters: &[
        Parameter::Service,
        Parameter::Role,
        Parameter::Path,
        Parameter::Namespace,
        Parameter::Pod,
        Parameter::Workload,
        Parameter::Signature,
        Parameter::Origin,
        Parameter::Limit,
    ],
    default_limit: DEFAULT_LIMIT,
};

impl listing::Row for CutRow {
    fn service(&self) -> &str {
        &self.service
    }
    fn role(&self) -> Role {
        self.role
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn pod(&self) -> Option<&Pod> {
        self.pod.as_ref()
    }
    fn signature(&self) -> Option<Signature> {
        Some(self.signature)
    }
    fn origin(&self) -> Option<ResetOrigin> {
        self.origin
    }
}

/// The cuts `filter` asks for, newest first, at most its limit of them.
pub fn select(rows: &[CutRow], filter: &Filter, capacity: usize) -> CutsResponse {
    let (total, cuts) = listing::select(rows, filter);
    CutsResponse {
        total,
        limit: filter.limit,
        truncated: total > filter.limit,
        capacity,
        cuts,
    }
}

/// The cuts as a table, newest first.
pub fn render_table(response: &CutsResponse) -> String {
    let headers = [
        "TIME",
        "SERVICE",
        "ROLE",
        "LOCAL",
        "REMOTE",
        "PATH",
        "IDLE",
        "SIGNATURE",
        "ORIGIN",
        "PID",
        "POD",
        "WORKLOAD",
    ];
    let rows: Vec<[String; 12]> = response
        .cuts
        .iter()
        .map(|row| {
            let origin = match (row.origin, row.reset_hops_from_host) {
                (Some(origin), Some(hops)) => format!("{origin}({hops} hop)"),
                (Some(origin), None) => origin.to_string(),
                (None, _) => "-".to_owned(),
            };
            [
                row.time.clone(),
                row.service.clone(),
                row.role.to_string(),
                row.local.clone(),
                row.remote.clone(),
                row.path.clone(),
                compact(row.idle_before_cut_seconds),
                // A PMTU black hole names the size its path could not carry.
                match row.lost_segment_bytes {
                    Some(bytes) => format!("{}({bytes}B lost)", row.signature),
                    None => row.signature.to_string(),
                },
                origin,
                row.pid
                    .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
                listing::owner_cell(row.pod.as_ref(), row.host),
                listing::workload_cell(row.pod.as_ref()),
            ]
        })
        .collect();
    let mut out = listing::columns(headers, &rows);
    if response.truncated {
        let _ = writeln!(
            out,
            "({} of {} cuts shown; raise --limit)",
            response.cuts.len(),
            response.total
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        events::{Endpoints, ResetTtls},
        listing::Watched,
        model::{Identity, ResetVerdict},
        scan::Owner,
        settings::parse_ports,
    };

    const SECOND: Nanos = 1_000_000_000;

    fn key(path: &str) -> PathKey {
        PathKey {
            service: Arc::from("imap"),
            role: Role::Client,
            path: Arc::from(path),
        }
    }

    fn cut(at: Nanos, signature: Signature, reset: Option<ResetVerdict>) -> Update {
        Update::Cut {
            identity: Identity {
                service: Arc::from("imap"),
                role: Role::Client,
                remote: "192.0.2.7".parse().unwrap(),
            },
            gap: 350 * SECOND,
            signature,
            context: CutContext {
                at,
                endpoints: Some(Endpoints {
                    local: "10.0.0.2:40000".parse().unwrap(),
                    remote: "192.0.2.7:143".parse().unwrap(),
                }),
                netns: 4026531840,
                owner: Some(Arc::new(Owner {
                    pid: 4242,
                    cgroup: Some("/system.slice/mail.service".into()),
                    pod: None,
                })),
                reset,
                pmtu: None,
            },
        }
    }

    #[test]
    fn the_log_keeps_the_last_cuts_newest_first() {
        let mut log = RecentCuts::new(2);
        let forged = ResetVerdict::received(ResetTtls {
            peer: Some(63),
            reset: Some(64),
        });
        log.record(
            &key("192.0.2.0/24"),
            &cut(SECOND, Signature::Blackhole, None),
        );
        log.record(&key("192.0.2.0/24"), &Update::Opened(identity()));
        log.record(
            &key("192.0.2.0/24"),
            &cut(2 * SECOND, Signature::Icmp, None),
        );
        log.record(
            &key("192.0.2.0/24"),
            &cut(3 * SECOND, Signature::Reset, Some(forged)),
        );
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_500_000);
        let rows = log.rows(5 * SECOND, wall);
        assert_eq!(rows.len(), 2, "the oldest went");
        assert_eq!(rows[0].signature, Signature::Reset);
        assert_eq!(rows[0].origin, Some(ResetOrigin::Path));
        assert_eq!(rows[0].reset_hops_from_host, Some(1));
        assert_eq!(rows[0].seconds_ago, 2.0);
        assert_eq!(rows[0].time, "2025-11-30T10:53:18Z");
        assert_eq!(rows[0].pid, Some(4242));
        assert_eq!(rows[0].remote, "192.0.2.7:143");
        assert_eq!(rows[0].idle_before_cut_seconds, 350.0);
        assert_eq!(rows[1].signature, Signature::Icmp);
        assert_eq!(rows[1].origin, None);

        let watched = Watched::new(
            &parse_ports("143=imap").unwrap(),
            crate::paths::Prefixes { ipv4: 24, ipv6: 48 },
        );
        let query = |pairs: &[(&str, &str)]| {
            let query: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Filter::from_query(&LISTING, &query, &watched, log.capacity())
        };
        let only_path = query(&[("origin", "path")]).unwrap();
        let response = select(&rows, &only_path, log.capacity());
        assert_eq!((response.total, response.cuts.len()), (1, 1));
        let one = query(&[("limit", "1")]).unwrap();
        let response = select(&rows, &one, log.capacity());
        assert!(response.truncated);
        assert!(render_table(&response).contains("path(1 hop)"));
        assert!(query(&[("limit", "3")]).is_err(), "more than the log holds");
        assert!(query(&[("origin", "nobody")]).is_err());
        assert!(query(&[("pid", "1")]).is_err());
        assert!(
            query(&[("min_idle", "1m")]).is_err(),
            "the view's, not the log's"
        );
        let only_path = query(&[("path", "192.0.2.0/24")]).unwrap();
        assert_eq!(select(&rows, &only_path, log.capacity()).total, 2);
        for (bad, expected) in [
            (&[("origin", "path"), ("origin", "peer")][..], "`origin`"),
            (&[("limit", "1"), ("limit", "2")], "`limit`"),
            (&[("service", "imaps")], "service=`imaps`"),
            (&[("path", "192.0.2.7")], "expected 192.0.2.0/24"),
        ] {
            let err = query(bad).expect_err(&format!("{bad:?}"));
            assert!(err.contains(expected), "{bad:?}: {err}");
        }
    }

    #[test]
    fn cuts_settled_out_of_order_are_kept_in_the_order_they_happened() {
        let mut log = RecentCuts::new(3);
        for at in [5, 2, 7, 3, 1] {
            log.record(
                &key("192.0.2.0/24"),
                &cut(at * SECOND, Signature::Blackhole, None),
            );
        }
        let rows = log.rows(10 * SECOND, SystemTime::UNIX_EPOCH);
        let ago: Vec<f64> = rows.iter().map(|row| row.seconds_ago).collect();
        assert_eq!(ago, vec![3.0, 5.0, 7.0], "the three newest, newest first");
    }

    #[test]
    fn a_log_of_no_cuts_keeps_none() {
        let mut log = RecentCuts::new(0);
        log.record(&key("other"), &cut(SECOND, Signature::Reset, None));
        assert!(log.rows(2 * SECOND, SystemTime::now()).is_empty());
    }

    fn identity() -> Identity {
        Identity {
            service: Arc::from("imap"),
            role: Role::Client,
            remote: "192.0.2.7".parse().unwrap(),
        }
    }
}
