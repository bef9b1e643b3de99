//! `GET /api/v1/connections`: one row per connection the agent follows or saw end recently.

use serde::{Deserialize, Serialize};

use crate::{
    pods::Pod,
    vocabulary::{ConnectionState, End, KeepaliveOutlook, KeepaliveSetting, Role},
};

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
    /// The Kubernetes pod of the owning process; None for a process of the host (`host`) or
    /// an unknown owner.
    #[serde(default)]
    pub pod: Option<Pod>,
    /// Whether the owning process is the host's own, outside any pod; None when no scan has
    /// seen the owner.
    #[serde(default)]
    pub host: Option<bool>,
    pub state: ConnectionState,
    /// None when the connection was already open when the agent found it.
    pub age_seconds: Option<f64>,
    /// Since the last segment in either direction.
    pub idle_seconds: Option<f64>,
    /// None until a scan has seen it.
    pub keepalive: Option<KeepaliveSetting>,
    pub keepalive_interval_seconds: Option<f64>,
    /// For an open connection with TCP keepalive on: whether its keepalive comes before its
    /// path cuts idle connections (`survives`) or not (`will_be_cut`); None while the path's
    /// cut-off is not known or the interval falls inside it.
    #[serde(default)]
    pub keepalive_outlook: Option<KeepaliveOutlook>,
    /// The connection's own application keepalive cadence, such as the interval of an IMAP
    /// server's `* OK Still here` during IDLE: the median of the largest group of near-equal
    /// gaps among its last 8 survived idle gaps, once 4 are. What its path's
    /// `keepalive_interval_seconds` is made of. None until its gaps showed one.
    #[serde(default)]
    pub cadence_seconds: Option<f64>,
    pub retransmits: u32,
    /// The ICMP error TCP is retransmitting through (the socket's soft error since the peer
    /// last acknowledged anything: EHOSTUNREACH, ENETUNREACH, EACCES...), while one is.
    #[serde(default)]
    pub icmp_error: Option<String>,
    /// For closed connections: how they ended.
    pub end: Option<End>,
    pub closed_seconds_ago: Option<f64>,
}
