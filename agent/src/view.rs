//! The per-connection view: `GET /api/v1/connections` and `idlecut connections`.
//!
//! One row per connection the agent follows, and per connection that ended in the last few
//! minutes: addresses, service, role, path, network namespace, owner, age, idle time,
//! keepalive, retransmissions, and how it ended. Bounded: at most `limit` rows (default
//! [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]); `total` says how many matched.

use std::{collections::HashMap, fmt::Write as _, time::Duration};

pub use idlecut_api::connections::{ConnectionRow, ConnectionsResponse};

use crate::{
    config::parse_duration,
    duration_text::compact,
    events::Nanos,
    listing,
    model::{ConnectionInfo, ConnectionModel},
    paths::PathTable,
    probes::KernelState,
    vocabulary::{ConnectionState, Role},
};

pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

/// Which rows to return.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub service: Option<String>,
    pub role: Option<Role>,
    pub path: Option<String>,
    /// Only open connections idle for at least this long.
    pub min_idle: Option<Duration>,
    pub limit: usize,
}

impl Filter {
    /// From the query string of `/api/v1/connections`.
    pub fn from_query(query: &HashMap<String, String>) -> Result<Self, String> {
        let mut filter = Self {
            limit: DEFAULT_LIMIT,
            ..Self::default()
        };
        for (key, value) in query {
            match key.as_str() {
                "service" => filter.service = Some(value.clone()),
                "role" => {
                    filter.role = Some(value.parse().map_err(|err| format!("role={err}"))?);
                }
                "path" => filter.path = Some(value.clone()),
                "min_idle" => {
                    filter.min_idle =
                        Some(parse_duration(value).map_err(|err| format!("min_idle: {err}"))?);
                }
                "limit" => {
                    filter.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| (1..=MAX_LIMIT).contains(&n))
                        .ok_or_else(|| format!("limit=`{value}`: expected 1 to {MAX_LIMIT}"))?;
                }
                other => {
                    return Err(format!(
                        "unknown parameter `{other}`: expected service, role, path, min_idle, limit"
                    ));
                }
            }
        }
        Ok(filter)
    }

    fn matches(&self, row: &ConnectionRow) -> bool {
        self.service.as_ref().is_none_or(|s| *s == row.service)
            && self.role.is_none_or(|role| role == row.role)
            && self.path.as_ref().is_none_or(|p| *p == row.path)
            && self.min_idle.is_none_or(|min| {
                row.state == ConnectionState::Open
                    && row
                        .idle_seconds
                        .is_some_and(|idle| idle >= min.as_secs_f64())
            })
    }
}

/// Every row of the view at kernel time `now`, in display order: each open connection with
/// its idle clocks read from the kernel (its state, or its seed while not adopted), else from
/// the last scan, then the connections that ended recently.
pub fn rows(
    model: &ConnectionModel,
    paths: &PathTable,
    kernel: &KernelState,
    now: Nanos,
) -> Vec<ConnectionRow> {
    let seconds = |ns: Nanos| Duration::from_nanos(ns).as_secs_f64();
    let mut rows: Vec<ConnectionRow> = Vec::new();
    for info in model.connections() {
        let clocks = kernel
            .idle_clocks(info.socket, info.cookie)
            .or(info.scanned_clocks);
        let idle = clocks.map(|(received, sent)| seconds(now.saturating_sub(received.max(sent))));
        let mut row = row_of(&info, paths, ConnectionState::Open);
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
    let (total, connections) = listing::select(rows, |row| filter.matches(row), filter.limit);
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
        state,
        age_seconds: None,
        idle_seconds: None,
        keepalive: info.keepalive.map(|k| k.setting),
        keepalive_interval_seconds: info
            .keepalive
            .and_then(|k| k.interval_ms)
            .map(|ms| Duration::from_millis(ms).as_secs_f64()),
        retransmits: info.retransmits,
        end: None,
        closed_seconds_ago: None,
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
        "CGROUP",
    ];
    let rows: Vec<[String; 14]> = response
        .connections
        .iter()
        .map(|row| {
            let keepalive = match (&row.keepalive, row.keepalive_interval_seconds) {
                (Some(setting), Some(interval)) => format!("{setting}({})", compact(interval)),
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
                row.cgroup.clone().unwrap_or_else(|| "-".to_owned()),
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
    use crate::vocabulary::KeepaliveSetting;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn filters_parse_and_reject_bad_values() {
        let filter = Filter::from_query(&query(&[
            ("service", "imap"),
            ("min_idle", "2m"),
            ("limit", "5"),
        ]))
        .unwrap();
        assert_eq!(filter.service.as_deref(), Some("imap"));
        assert_eq!(filter.min_idle, Some(Duration::from_secs(120)));
        assert_eq!(filter.limit, 5);
        assert_eq!(
            Filter::from_query(&query(&[])).unwrap().limit,
            DEFAULT_LIMIT
        );
        for bad in [
            ("role", "peer"),
            ("min_idle", "2"),
            ("limit", "0"),
            ("limit", "99999"),
            ("sort", "x"),
        ] {
            assert!(Filter::from_query(&query(&[bad])).is_err(), "{bad:?}");
        }
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
            state,
            age_seconds: None,
            idle_seconds: idle,
            keepalive: Some(KeepaliveSetting::Below2h),
            keepalive_interval_seconds: Some(60.0),
            retransmits: 0,
            end: None,
            closed_seconds_ago: None,
        }
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
