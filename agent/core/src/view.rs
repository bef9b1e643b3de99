//! The per-connection view: `GET /api/v1/connections` and `idlecut connections`.
//!
//! One row per connection the agent follows, and per connection that ended in the last few
//! minutes: addresses, service, role, path, network namespace, owner, age, idle time,
//! keepalive, retransmissions, and how it ended. Bounded: at most `limit` rows (default
//! [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]); `total` says how many matched.

use std::{fmt::Write as _, time::Duration};

pub use idlecut_api::connections::{ConnectionRow, ConnectionsResponse};

use crate::{
    duration_text::compact,
    events::{IdleClocks, Nanos},
    inference::Cutoff,
    listing::{self, Filter, Listing, Parameter},
    model::{ConnectionInfo, ConnectionModel},
    paths::{PathKey, PathTable},
};
use idlecut_api::{
    pods::Pod,
    vocabulary::{ConnectionState, KeepaliveOutlook, Role},
};

pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

/// `/api/v1/connections` and what its query string takes.
pub const LISTING: Listing = Listing {
    endpoint: "/api/v1/connections",
    parameters: &[
        Parameter::Service,
        Parameter::Role,
        Parameter::Path,
        Parameter::Namespace,
        Parameter::Pod,
        Parameter::Workload,
        Parameter::MinIdle,
        Parameter::Limit,
    ],
    default_limit: DEFAULT_LIMIT,
};

impl listing::Row for ConnectionRow {
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
    fn open_idle_seconds(&self) -> Option<f64> {
        self.idle_seconds
            .filter(|_| self.state == ConnectionState::Open)
    }
}

/// Every row of the view at kernel time `now`, in display order: each open connection with
/// its idle clocks read from the kernel through `idle_clocks` (its state, or its seed while not
/// adopted: by socket, then by cookie), else from
/// the last scan, then the connections that ended recently.
pub fn rows(
    model: &ConnectionModel,
    paths: &PathTable,
    idle_clocks: impl Fn(Option<u64>, Option<u64>) -> Option<IdleClocks>,
    cutoff_of: impl Fn(&PathKey) -> Option<Cutoff>,
    now: Nanos,
) -> Vec<ConnectionRow> {
    let seconds = |ns: Nanos| Duration::from_nanos(ns).as_secs_f64();
    let mut rows: Vec<ConnectionRow> = Vec::new();
    for info in model.connections() {
        let clocks = idle_clocks(info.socket, info.cookie).or(info.scanned_clocks);
        let idle = clocks.map(|(received, sent)| seconds(now.saturating_sub(received.max(sent))));
        let mut row = row_of(&info, paths, ConnectionState::Open);
        row.keepalive_outlook = row
            .keepalive_interval_seconds
            .zip(cutoff_of(&paths.path_of(&info.identity)))
            .and_then(|(interval, cutoff)| keepalive_outlook(interval, cutoff));
        row.age_seconds = info.opened_at.map(|at| seconds(now.saturating_sub(at)));
        row.idle_seconds = idle;
        rows.push(row);
    }
    for closed in model.recently_closed() {
        let mut row = row_of(&closed.info, paths, ConnectionState::Closed);
        row.end = Some(closed.end);
        row.closed_seconds_ago = Some(seconds(now.saturating_sub(closed.closed_at)));
        row.age_seconds = closed
            .info
            .opened_at
            .map(|at| seconds(closed.closed_at.saturating_sub(at)));
        rows.push(row);
    }
    // By their text: closed rows first, as the table has always shown them.
    let order = |row: &ConnectionRow| {
        (
            row.state.as_str(),
            row.service.clone(),
            row.role.as_str(),
            row.remote.clone(),
            row.local.clone(),
        )
    };
    rows.sort_by_cached_key(order);
    rows
}

/// The rows `filter` asks for, at most its limit of them.
pub fn select(rows: &[ConnectionRow], filter: &Filter) -> ConnectionsResponse {
    let (total, connections) = listing::select(rows, filter);
    ConnectionsResponse {
        total,
        limit: filter.limit,
        truncated: total > filter.limit,
        connections,
    }
}

fn row_of(info: &ConnectionInfo, paths: &PathTable, state: ConnectionState) -> ConnectionRow {
    let key = paths.path_of(&info.identity);
    ConnectionRow {
        local: info.endpoints.local.to_string(),
        remote: info.endpoints.remote.to_string(),
        service: key.service.to_string(),
        role: key.role,
        path: key.path.to_string(),
        netns: (info.netns != 0).then_some(info.netns),
        pid: info.owner.as_ref().map(|o| o.pid),
        cgroup: info.owner.as_ref().and_then(|o| o.cgroup.clone()),
        pod: info.owner.as_ref().and_then(|o| o.pod.clone()),
        host: info.owner.as_ref().map(|o| o.pod.is_none()),
        state,
        age_seconds: None,
        idle_seconds: None,
        keepalive: info.keepalive.map(|k| k.setting),
        keepalive_interval_seconds: info
            .keepalive
            .and_then(|k| k.interval_ms)
            .map(|ms| Duration::from_millis(ms).as_secs_f64()),
        keepalive_outlook: None,
        cadence_seconds: info
            .cadence
            .map(|cadence| Duration::from_nanos(cadence.interval).as_secs_f64()),
        retransmits: info.retransmits,
        icmp_error: info.soft_error.map(crate::model::icmp_errno_name),
        end: None,
        closed_seconds_ago: None,
    }
}

/// Whether a connection whose keepalive probes after `interval` seconds of silence outlives a
/// path that cuts after more than `lower` and at most `upper`: a probe before `lower` resets
/// every idle timer on the path; one after `upper` comes too late.
pub fn keepalive_outlook(interval: f64, cutoff: Cutoff) -> Option<KeepaliveOutlook> {
    if cutoff.lower.is_some_and(|lower| interval < lower) {
        Some(KeepaliveOutlook::Survives)
    } else if cutoff.upper.is_some_and(|upper| interval > upper) {
        Some(KeepaliveOutlook::WillBeCut)
    } else {
        None
    }
}

/// The view as a table, the way `ss` prints sockets.
pub fn render_table(response: &ConnectionsResponse) -> String {
    let headers = [
        "STATE",
        "SERVICE",
        "ROLE",
        "LOCAL",
        "REMOTE",
        "PATH",
        "NETNS",
        "AGE",
        "IDLE",
        "KEEPALIVE",
        "RETRANS",
        "END",
        "PID",
        "POD",
        "WORKLOAD",
    ];
    let rows: Vec<[String; 15]> = response
        .connections
        .iter()
        .map(|row| {
            let keepalive = match (&row.keepalive, row.keepalive_interval_seconds) {
                (Some(setting), Some(interval)) => match row.keepalive_outlook {
                    Some(outlook) => format!("{setting}({}):{outlook}", compact(interval)),
                    None => format!("{setting}({})", compact(interval)),
                },
                (Some(setting), None) => setting.to_string(),
                (None, _) => "-".to_owned(),
            };
            [
                row.state.to_string(),
                row.service.clone(),
                row.role.to_string(),
                row.local.clone(),
                row.remote.clone(),
                row.path.clone(),
                row.netns.map_or("-".to_owned(), |n| n.to_string()),
                row.age_seconds.map_or("?".to_owned(), compact),
                row.idle_seconds.map_or("-".to_owned(), compact),
                keepalive,
                row.retransmits.to_string(),
                row.end.map_or("-".to_owned(), |end| end.to_string()),
                row.pid.map_or("-".to_owned(), |p| p.to_string()),
                listing::owner_cell(row.pod.as_ref(), row.host),
                listing::workload_cell(row.pod.as_ref()),
            ]
        })
        .collect();
    let mut out = listing::columns(headers, &rows);
    if response.truncated {
        let _ = writeln!(
            out,
            "({} of {} connections shown; raise --limit, at most {MAX_LIMIT})",
            response.connections.len(),
            response.total
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{listing::Watched, settings::parse_ports};
    use idlecut_api::vocabulary::KeepaliveSetting;

    fn query(pairs: &[(&str, &str)]) -> Result<Filter, String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let watched = Watched::new(
            &parse_ports("143=imap,587=submission").unwrap(),
            crate::paths::Prefixes { ipv4: 24, ipv6: 48 },
        );
        Filter::from_query(&LISTING, &pairs, &watched, MAX_LIMIT)
    }

    #[test]
    fn filters_parse_and_reject_bad_values() {
        let filter = query(&[("service", "imap"), ("min_idle", "2m"), ("limit", "5")]).unwrap();
        assert_eq!(filter.service.as_deref(), Some("imap"));
        assert_eq!(filter.min_idle, Some(Duration::from_secs(120)));
        assert_eq!(filter.limit, 5);
        assert_eq!(query(&[]).unwrap().limit, DEFAULT_LIMIT);
        for (bad, expected) in [
            (("role", "peer"), "role="),
            (("min_idle", "2"), "min_idle"),
            (("limit", "0"), "expected 1 to 10000"),
            (("limit", "99999"), "expected 1 to 10000"),
            (("sort", "x"), "unknown parameter `sort`"),
            (("origin", "path"), "unknown parameter `origin`"),
            (("service", "imapp"), "service=`imapp`"),
            (("path", "10.0.2.0/16"), "path=`10.0.2.0/16`"),
        ] {
            let err = query(&[bad]).expect_err(&format!("{bad:?}"));
            assert!(err.contains(expected), "{bad:?}: {err}");
        }
        let err = query(&[("limit", "5"), ("limit", "10000")]).expect_err("limit twice");
        assert!(err.contains("`limit`"), "{err}");
    }

    fn row(state: ConnectionState, idle: Option<f64>) -> ConnectionRow {
        ConnectionRow {
            local: "10.0.1.2:40000".into(),
            remote: "10.0.2.2:143".into(),
            service: "imap".into(),
            role: Role::Client,
            path: "10.0.2.0/24".into(),
            netns: Some(4026531840),
            pid: Some(42),
            cgroup: Some("/system.slice/thunderbird.service".into()),
            pod: None,
            host: Some(true),
            state,
            age_seconds: None,
            idle_seconds: idle,
            keepalive: Some(KeepaliveSetting::Below2h),
            keepalive_interval_seconds: Some(60.0),
            keepalive_outlook: None,
            cadence_seconds: None,
            retransmits: 0,
            icmp_error: None,
            end: None,
            closed_seconds_ago: None,
        }
    }

    #[test]
    fn a_row_shows_the_cadence_its_connection_showed() {
        use crate::{
            events::{Endpoints, Event, Side},
            settings::parse_ports,
        };
        const S: Nanos = 1_000_000_000;
        let mut model = ConnectionModel::new(parse_ports("143=imap").unwrap());
        let mut out = Vec::new();
        let socket = 7;
        let endpoints = Endpoints {
            local: "10.0.1.2:40000".parse().unwrap(),
            remote: "10.0.2.2:143".parse().unwrap(),
        };
        let initiated_by = Some(Side::Local);
        let (at, netns) = (S, 1);
        model.apply(
            Event::Open {
                at,
                socket,
                endpoints,
                netns,
                initiated_by,
            },
            &mut out,
        );
        let paths = PathTable::new(crate::paths::Prefixes { ipv4: 24, ipv6: 48 }, 10);
        let rows_at =
            |model: &ConnectionModel, now| rows(model, &paths, |_, _| None, |_| None, now);
        let mut at = S;
        // Dovecot's "Still here" every 3 s (the peer ends each gap), after an odd one.
        for gap in [1.7, 3.0, 3.0, 3.0] {
            assert_eq!(rows_at(&model, at)[0].cadence_seconds, None);
            let gap = Duration::from_secs_f64(gap).as_nanos() as Nanos;
            at += gap;
            let first = Side::Remote;
            model.apply(
                Event::IdleGapEnd {
                    at,
                    socket,
                    gap,
                    first,
                },
                &mut out,
            );
            at += S / 2;
            model.expire(at, &mut out);
        }
        let open = rows_at(&model, at);
        assert_eq!(open[0].state, ConnectionState::Open);
        assert_eq!(open[0].cadence_seconds, None, "three gaps of 3 s");
        let gap = 3 * S;
        at += gap;
        model.apply(
            Event::IdleGapEnd {
                at,
                socket,
                gap,
                first: Side::Remote,
            },
            &mut out,
        );
        model.expire(at + S / 2, &mut out);
        assert_eq!(rows_at(&model, at + S)[0].cadence_seconds, Some(3.0));
    }

    #[test]
    fn a_keepalive_before_the_cutoff_survives_and_one_after_is_cut() {
        let cutoff = Cutoff {
            lower: Some(240.0),
            upper: Some(350.0),
        };
        assert_eq!(
            keepalive_outlook(60.0, cutoff),
            Some(KeepaliveOutlook::Survives)
        );
        assert_eq!(
            keepalive_outlook(7200.0, cutoff),
            Some(KeepaliveOutlook::WillBeCut)
        );
        assert_eq!(
            keepalive_outlook(300.0, cutoff),
            None,
            "inside the interval: cannot tell"
        );
        let uncut = Cutoff {
            lower: Some(240.0),
            upper: None,
        };
        assert_eq!(keepalive_outlook(7200.0, uncut), None);
        assert_eq!(
            keepalive_outlook(60.0, uncut),
            Some(KeepaliveOutlook::Survives)
        );
    }

    #[test]
    fn pod_filters_match_the_namespace_and_the_pod_by_name_or_uid() {
        let pod = Pod {
            namespace: Some("mail".into()),
            pod: Some("dovecot-0".into()),
            uid: "3f5a2c1e-8b7d-4e0f-9a6b-1c2d3e4f5a6b".into(),
            container: Some("imap".into()),
            qos: None,
            workload: Some(idlecut_api::pods::Workload {
                kind: idlecut_api::vocabulary::WorkloadKind::StatefulSet,
                name: "dovecot".into(),
            }),
            labels: Default::default(),
        };
        let mut in_pod = row(ConnectionState::Open, Some(1.0));
        in_pod.pod = Some(pod.clone());
        in_pod.host = Some(false);
        let on_host = row(ConnectionState::Open, Some(1.0));
        let filter = |pairs: &[(&str, &str)]| query(pairs).unwrap();
        for query in [
            &[("namespace", "mail")][..],
            &[("pod", "dovecot-0")],
            &[("pod", pod.uid.as_str())],
            &[("namespace", "mail"), ("pod", "dovecot-0")],
            &[("workload", "statefulset/dovecot")],
            &[("workload", "dovecot")],
        ] {
            assert!(filter(query).matches(&in_pod), "{query:?}");
            assert!(!filter(query).matches(&on_host), "{query:?}");
        }
        assert!(!filter(&[("namespace", "kube-system")]).matches(&in_pod));
        assert!(!filter(&[("workload", "deployment/dovecot")]).matches(&in_pod));
        assert!(!filter(&[("workload", "postfix")]).matches(&in_pod));
        let bad = query(&[("workload", "sts/dovecot")]).unwrap_err();
        assert!(
            bad.starts_with("workload=") && bad.contains("statefulset"),
            "{bad}"
        );
        assert!(query(&[("workload", "deployment/")]).is_err());
        assert!(filter(&[]).matches(&on_host));
        assert_eq!(
            crate::listing::owner_cell(in_pod.pod.as_ref(), in_pod.host),
            "mail/dovecot-0/imap"
        );
        assert_eq!(crate::listing::owner_cell(None, Some(true)), "host");
        assert_eq!(crate::listing::owner_cell(None, None), "-");
        assert_eq!(
            crate::listing::workload_cell(in_pod.pod.as_ref()),
            "statefulset/dovecot"
        );
        assert_eq!(crate::listing::workload_cell(None), "-");
    }

    #[test]
    fn min_idle_keeps_open_connections_idle_long_enough() {
        let filter = Filter {
            min_idle: Some(Duration::from_secs(60)),
            limit: 10,
            ..Filter::default()
        };
        assert!(filter.matches(&row(ConnectionState::Open, Some(61.0))));
        assert!(!filter.matches(&row(ConnectionState::Open, Some(59.0))));
        assert!(!filter.matches(&row(ConnectionState::Open, None)));
        assert!(!filter.matches(&row(ConnectionState::Closed, Some(100.0))));
    }

    #[test]
    fn a_selection_counts_every_match_and_keeps_at_most_the_limit() {
        let rows = [
            row(ConnectionState::Closed, None),
            row(ConnectionState::Open, Some(30.0)),
            row(ConnectionState::Open, Some(90.0)),
            row(ConnectionState::Open, Some(120.0)),
        ];
        let filter = Filter {
            min_idle: Some(Duration::from_secs(60)),
            limit: 1,
            ..Filter::default()
        };
        let response = select(&rows, &filter);
        assert_eq!((response.total, response.limit), (2, 1));
        assert!(response.truncated);
        assert_eq!(response.connections, vec![rows[2].clone()]);
    }

    #[test]
    fn the_table_has_a_header_and_one_line_per_connection() {
        let response = ConnectionsResponse {
            total: 2,
            limit: 1,
            truncated: true,
            connections: vec![row(ConnectionState::Open, Some(125.0))],
        };
        let table = render_table(&response);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("STATE"), "{table}");
        assert!(
            lines[1].contains("10.0.2.2:143") && lines[1].contains("2m5s"),
            "{table}"
        );
        assert!(lines[1].contains("below_2h(1m)"), "{table}");
        assert!(lines[1].contains("?"), "unknown age: {table}");
        assert!(lines[2].contains("1 of 2"), "{table}");
    }
}
