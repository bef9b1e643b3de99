//! The idle timeouts of a host's (or a pod's) network namespace, as the HTTP API reports them
//! next to the cut-offs the agent measured: when a path cuts idle connections after N seconds
//! and the node itself forgets flows after N seconds, the node is the cutter.
//!
//! The agent reads them from the namespace itself (sysctls, nftables and IPVS over netlink);
//! these types only carry what it found.

use serde::{Deserialize, Serialize};

use crate::vocabulary::{TcpTimeoutState, TimeoutSource};

/// One setting of a network namespace after which it forgets an idle TCP flow (or a TCP flow in
/// another state, as `state` says): a NAT or a stateful firewall that forgets a flow cuts it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostTimeout {
    /// Which part of the stack holds it.
    pub source: TimeoutSource,
    /// The setting's name, to find it again: the sysctl's name
    /// (`nf_conntrack_tcp_timeout_established`), an nftables policy as
    /// `family/table/policy` (`inet/filter/mailshort`), or `ipvs tcp` / `ipvs tcpfin`.
    pub name: String,
    /// The TCP state it counts down in.
    pub state: TcpTimeoutState,
    /// How long the flow may stay in that state without a segment.
    pub seconds: u64,
    /// Which flows it applies to, when that is known: for an nftables policy, what the rules
    /// that set it match (`tcp dport 143`, `tcp dport { 143, 993 } or tcp sport 25 and other
    /// conditions`; `all tcp` for a rule without conditions; `no rule applies it` for a policy
    /// no rule uses). None when not known, and for the namespace-wide settings (conntrack's
    /// sysctls apply to every tracked flow no policy overrides, IPVS's to every virtual
    /// service).
    pub applies_to: Option<String>,
}

/// The namespace's TCP keepalive defaults (`net.ipv4.tcp_keepalive_time`, `_intvl`,
/// `_probes`): not a cutter, but what a socket that turns `SO_KEEPALIVE` on without setting its
/// own timers probes at, so the operator can tell whether such sockets would keep a path's
/// state alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeepaliveDefaults {
    /// Idle time before the first probe.
    pub time_seconds: u64,
    /// Time between unanswered probes.
    pub interval_seconds: u64,
    /// Unanswered probes before the connection is given up.
    pub probes: u64,
}

/// How conntrack treats a TCP segment of a flow it does not know (or no longer knows), which
/// decides how a flow it forgot while idle dies: picked up again mid-stream (possibly with a new
/// NAT mapping, which the peer answers with a RST) or marked INVALID (and usually dropped: a
/// blackhole).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConntrackTcpTracking {
    /// `nf_conntrack_tcp_loose`: a segment of an unknown flow starts tracking it (as
    /// established) instead of being INVALID. None when the sysctl is not there.
    pub loose: Option<bool>,
    /// `nf_conntrack_tcp_be_liberal`: segments outside the tracked window are not INVALID.
    pub be_liberal: Option<bool>,
    /// `nf_conntrack_count`: flows tracked in the namespace now. Zero suggests conntrack is
    /// loaded but nothing in the namespace uses it (its hooks are registered per namespace,
    /// only when a rule needs them), so its timeouts cut nothing there.
    pub entries: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_timeout_round_trips_through_json_with_words_as_text() {
        let timeout = HostTimeout {
            source: TimeoutSource::Nftables,
            name: "inet/filter/mailshort".to_owned(),
            state: TcpTimeoutState::Established,
            seconds: 5,
            applies_to: Some("tcp dport 143".to_owned()),
        };
        let json = serde_json::to_string(&timeout).unwrap();
        assert_eq!(
            json,
            r#"{"source":"nftables","name":"inet/filter/mailshort","state":"established","seconds":5,"applies_to":"tcp dport 143"}"#
        );
        assert_eq!(serde_json::from_str::<HostTimeout>(&json).unwrap(), timeout);
        assert!(
            serde_json::from_str::<HostTimeout>(&json.replace("nftables", "iptables")).is_err()
        );
    }

    #[test]
    fn keepalive_defaults_and_tracking_round_trip() {
        let keepalive = KeepaliveDefaults {
            time_seconds: 7200,
            interval_seconds: 75,
            probes: 9,
        };
        let json = serde_json::to_string(&keepalive).unwrap();
        assert_eq!(
            serde_json::from_str::<KeepaliveDefaults>(&json).unwrap(),
            keepalive
        );
        let tracking = ConntrackTcpTracking {
            loose: Some(true),
            be_liberal: Some(false),
            entries: None,
        };
        let json = serde_json::to_string(&tracking).unwrap();
        assert_eq!(json, r#"{"loose":true,"be_liberal":false,"entries":null}"#);
        assert_eq!(
            serde_json::from_str::<ConntrackTcpTracking>(&json).unwrap(),
            tracking
        );
    }
}
