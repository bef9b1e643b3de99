//! `GET /api/v1/paths`: one report per path, with its cut-off and verdict.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::vocabulary::{Role, Signature};

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
}

impl CutCounts {
    pub fn get(&self, signature: Signature) -> u64 {
        match signature {
            Signature::Reset => self.reset,
            Signature::Blackhole => self.blackhole,
            Signature::Icmp => self.icmp,
        }
    }

    pub fn add(&mut self, signature: Signature) {
        let count = match signature {
            Signature::Reset => &mut self.reset,
            Signature::Blackhole => &mut self.blackhole,
            Signature::Icmp => &mut self.icmp,
        };
        *count += 1;
    }

    pub fn total(&self) -> u64 {
        Signature::ALL.into_iter().map(|s| self.get(s)).sum()
    }
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
    pub cuts_below_req5: u64,
    pub cutoff_lower_seconds: Option<f64>,
    pub cutoff_upper_seconds: Option<f64>,
    pub verdict: Verdict,
    pub duration_limit_seconds: Option<f64>,
    /// The interval of the application's own keepalives, when the survived gaps are clearly
    /// periodic (Dovecot's "* OK Still here" every 2 minutes, an IDLE refresh...).
    pub keepalive_interval_seconds: Option<f64>,
    pub explanation: String,
}
