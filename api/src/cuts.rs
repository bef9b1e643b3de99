//! `GET /api/v1/cuts`: the last cuts, newest first, each with the connection it ended, so that
//! an alert leads to a connection, a process and a time.

use serde::{Deserialize, Serialize};

use crate::{
    pods::Pod,
    vocabulary::{ResetOrigin, Role, Signature},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CutsResponse {
    /// Cuts in the log that matched the filter (all of them, not only those returned).
    pub total: usize,
    pub limit: usize,
    pub truncated: bool,
    /// How many cuts the log keeps (`--recent-cuts`); older ones are gone.
    pub capacity: usize,
    pub cuts: Vec<CutRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CutRow {
    /// When the agent learned of the cut, RFC 3339 (UTC).
    pub time: String,
    pub seconds_ago: f64,
    pub service: String,
    pub role: Role,
    pub path: String,
    pub local: String,
    pub remote: String,
    /// Inode of the network namespace, when known.
    pub netns: Option<u32>,
    pub idle_before_cut_seconds: f64,
    pub signature: Signature,
    /// For a PMTU black hole: the payload bytes of the segments that never got through (the
    /// path's MTU is too small for them) and the MSS they were sent with.
    #[serde(default)]
    pub lost_segment_bytes: Option<u16>,
    #[serde(default)]
    pub mss: Option<u16>,
    /// For a cut by a RST: who sent it.
    pub origin: Option<ResetOrigin>,
    /// For a RST the path forged: about how many hops from this host the forger sits.
    pub reset_hops_from_host: Option<u8>,
    /// The process that held the connection and its cgroup, when a scan saw it.
    pub pid: Option<u32>,
    pub cgroup: Option<String>,
    /// The Kubernetes pod of that process; None for a process of the host or an unknown one.
    #[serde(default)]
    pub pod: Option<Pod>,
    /// Whether that process is the host's own, outside any pod; None when unknown.
    #[serde(default)]
    pub host: Option<bool>,
}
