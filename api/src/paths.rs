//! `GET /api/v1/paths`: one report per path, with its cut-off and verdict.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    host::HostTimeout,
    vocabulary::{CheckAgreement, CheckStatus, CutterLocation, ResetOrigin, Role, Signature},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    ViolatesReq5,
    Ok,
    Unknown,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CutCounts {
    pub reset: u64,
    pub blackhole: u64,
    pub icmp: u64,
    /// Connections lost in a PMTU black hole: not idle cuts, counted apart.
    #[serde(default)]
    pub pmtu: u64,
}

impl CutCounts {
    pub fn get(&self, signature: Signature) -> u64 {
        match signature {
            Signature::Reset => self.reset,
            Signature::Blackhole => self.blackhole,
            Signature::Icmp => self.icmp,
            Signature::Pmtu => self.pmtu,
        }
    }

    pub fn add(&mut self, signature: Signature) {
        let count = match signature {
            Signature::Reset => &mut self.reset,
            Signature::Blackhole => &mut self.blackhole,
            Signature::Icmp => &mut self.icmp,
            Signature::Pmtu => &mut self.pmtu,
        };
        *count += 1;
    }

    /// The cuts after an idle gap (every signature but `pmtu`).
    pub fn idle_cuts(&self) -> u64 {
        Signature::ALL
            .into_iter()
            .filter(|s| s.is_idle_cut())
            .map(|s| self.get(s))
            .sum()
    }
}

/// Resets received on a path's connections, by who sent them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResetOrigins {
    pub peer: u64,
    pub path: u64,
    pub unknown: u64,
}

impl ResetOrigins {
    pub fn add(&mut self, origin: ResetOrigin) {
        match origin {
            ResetOrigin::Peer => self.peer += 1,
            ResetOrigin::Path => self.path += 1,
            ResetOrigin::Unknown => self.unknown += 1,
            ResetOrigin::Local => {}
        }
    }
}

/// The last reset a path forged, as its TTL tells.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForgedReset {
    /// About how many hops from this host the forger sits (1: the next router).
    pub hops_from_host: Option<u8>,
    /// About how many hops away the peer is.
    pub peer_hops: Option<u8>,
    /// The RST's TTL (IPv6 hop limit) less that of the peer's segments.
    pub ttl_difference: Option<i16>,
}

/// What `/api/v1/paths` says about one path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathReport {
    pub service: Arc<str>,
    pub role: Role,
    pub path: Arc<str>,
    pub open_connections: i64,
    pub survived_gaps: u64,
    pub longest_survived_gap_seconds: Option<f64>,
    pub cuts: CutCounts,
    /// Stalls that ended only once the kernel's MTU probing lowered the connection's MSS:
    /// survived black holes of the path's MTU.
    #[serde(default)]
    pub mss_lowered: u64,
    pub cuts_below_req5: u64,
    pub cutoff_lower_seconds: Option<f64>,
    pub cutoff_upper_seconds: Option<f64>,
    pub verdict: Verdict,
    pub duration_limit_seconds: Option<f64>,
    /// The interval of the application's own keepalives, when the survived gaps are clearly
    /// periodic (Dovecot's "* OK Still here" every 2 minutes, an IDLE refresh...).
    pub keepalive_interval_seconds: Option<f64>,
    /// Resets received, by origin (`peer`: same TTL as the peer's segments; `path`: forged by
    /// a middlebox; `unknown`).
    pub resets_received: ResetOrigins,
    /// The last reset that came from the path, if one did.
    pub forged_reset: Option<ForgedReset>,
    pub explanation: String,
    /// What the agent's scheduled checks (`[[check]]`) of a server on this path found at
    /// their last run, and whether it agrees with the passive estimate above. Empty when no
    /// check covers the path.
    #[serde(default)]
    pub active_checks: Vec<ActiveCheck>,
    /// Where the cutter sits, as this node's own idle timeouts tell: `node` when one lies inside
    /// the cut-off interval, `beyond_node` when all are above it; None when the interval is not
    /// known yet or the node's timeouts cannot tell.
    #[serde(default)]
    pub cutter: Option<CutterLocation>,
    /// The node's timeouts inside the cut-off interval, shortest first: the likely cutters.
    #[serde(default)]
    pub node_timeouts: Vec<NodeTimeout>,
}

/// One of this node's idle timeouts, with the network namespace it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTimeout {
    /// Inode of the network namespace (as `ls -iL /proc/PID/ns/net` shows).
    pub netns: u32,
    #[serde(flatten)]
    pub timeout: HostTimeout,
}

/// A scheduled check's last idle cut-off search, next to the passive estimate of its path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveCheck {
    /// The check's target as configured (its `target` label in the metrics).
    pub target: String,
    pub port: u16,
    /// The address the check connected to.
    pub address: String,
    /// When its last run finished, in seconds since the Unix epoch.
    pub checked_at_unix_seconds: f64,
    /// The idle cut-off row of that run: `fail` when the path cut a silence within
    /// `max_idle`, `pass` when none was cut.
    pub status: CheckStatus,
    pub max_idle_seconds: f64,
    pub cutoff_lower_seconds: Option<f64>,
    pub cutoff_upper_seconds: Option<f64>,
    pub signature: Option<Signature>,
    pub verdict: Verdict,
    /// Whether this agrees with the passive cut-off interval of the path.
    pub agreement: CheckAgreement,
    /// The same in a sentence (also appended to the path's `explanation`).
    pub explanation: String,
}
