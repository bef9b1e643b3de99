//! `GET /api/v1/connections`: one row per connection the agent follows or saw end recently.

use serde::{Deserialize, Serialize};

use crate::vocabulary::{ConnectionState, End, KeepaliveSetting, Role};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionsResponse {
    /// Rows that matched the filter (all of them, not only those returned).
    pub total: usize,
    pub limit: usize,
    pub truncated: bool,
    pub connections: Vec<ConnectionRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionRow {
    pub local: String,
    pub remote: String,
    pub service: String,
    pub role: Role,
    pub path: String,
    /// Inode of the network namespace (as `ls -iL /proc/PID/ns/net` shows), when known.
    pub netns: Option<u32>,
    pub pid: Option<u32>,
    pub cgroup: Option<String>,
    pub state: ConnectionState,
    /// None when the connection was already open when the agent found it.
    pub age_seconds: Option<f64>,
    /// Since the last segment in either direction.
    pub idle_seconds: Option<f64>,
    /// None until a scan has seen it.
    pub keepalive: Option<KeepaliveSetting>,
    pub keepalive_interval_seconds: Option<f64>,
    pub retransmits: u32,
    /// For closed connections: how they ended.
    pub end: Option<End>,
    pub closed_seconds_ago: Option<f64>,
}
