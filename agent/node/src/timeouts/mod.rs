//! The idle timeouts of the calling thread's network namespace: after how long each part of
//! the namespace's stack forgets an idle TCP flow, so that a cut-off the agent measured can be
//! matched with the setting that explains it (RFC 5382 REQ-5 asks for at least 2 h 4 min).
//!
//! - `sysctl`: conntrack's TCP timeouts and pick-up rules, the TCP keepalive defaults (files
//!   under `/proc/sys`; no privilege needed beyond being in the namespace);
//! - `nftables`: the `ct timeout` policies and the rules that apply them (netlink, needs
//!   CAP_NET_ADMIN in the namespace);
//! - `ipvs`: IPVS's own timeouts (generic netlink, needs CAP_NET_ADMIN; where IPVS is loaded).
//!
//! Everything here reads the namespace of the *calling thread*, as of the call: the scan thread
//! enters a namespace (`setns(CLONE_NEWNET)`) and then calls [`read_current_namespace`], which
//! opens its files and sockets afresh. Plain blocking code, no async runtime.

use std::{io, path::PathBuf};

use idlecut_api::{
    host::{ConntrackTcpTracking, HostTimeout, KeepaliveDefaults},
    vocabulary::{TcpTimeoutState, TimeoutSource},
};

pub mod ipvs;
mod netlink;
mod nft_rules;
mod nft_sets;
pub mod nftables;
pub mod sysctl;

/// Which sources [`read_current_namespace`] reads besides the sysctls (always read: cheap, and
/// allowed to anyone in the namespace). nftables and IPVS cost a netlink exchange each and
/// CAP_NET_ADMIN in the namespace, so they are off unless asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    /// Read the nftables `ct timeout` policies and the rules that apply them.
    pub nftables: bool,
    /// Read IPVS's timeouts (where IPVS is loaded).
    pub ipvs: bool,
    /// Where the sysctls are: `/proc/sys` (tests point it elsewhere).
    pub proc_sys: PathBuf,
    /// Where procfs is: `/proc` (IPVS's presence is `thread-self/net/ip_vs` under it).
    pub proc: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            nftables: false,
            ipvs: false,
            proc_sys: PathBuf::from(sysctl::PROC_SYS),
            proc: PathBuf::from("/proc"),
        }
    }
}

/// Why one source's timeouts could not be read. Permission is its own variant so that the agent
/// can say once that it lacks CAP_NET_ADMIN (or may not read) in a namespace, rather than log
/// the same failure at every scan. Every variant names `what` was being read, for the log.
#[derive(Debug, thiserror::Error)]
pub enum TimeoutError {
    /// The kernel refused (EPERM/EACCES): reading `what` needs CAP_NET_ADMIN in the namespace
    /// (netlink), or the file is not readable to the agent.
    #[error("{what}: permission denied (netlink needs CAP_NET_ADMIN in the network namespace)")]
    PermissionDenied {
        /// What was being read (`nftables ct timeout policies`, `IPVS config`, ...).
        what: &'static str,
    },
    /// The kernel answered a request with another error.
    #[error("{what}: the kernel answered {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// What was being read.
        what: &'static str,
        /// The kernel's errno (positive).
        errno: i32,
    },
    /// A file or socket operation failed (including the kernel not answering in time).
    #[error("{what}: {source}")]
    Io {
        /// What was being read: a file's path, or what the socket asked for.
        what: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The kernel's answer did not parse (short, or not laid out as expected).
    #[error("{what}: malformed netlink answer: {detail}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// What was wrong with the bytes.
        detail: String,
    },
    /// A sysctl file held something else than a number.
    #[error("{}: `{text}` is not a number", path.display())]
    NotANumber {
        /// The file.
        path: PathBuf,
        /// Its text (at most 40 characters of it).
        text: String,
    },
    /// The ruleset changed during every attempt to read it.
    #[error("{what}: the ruleset kept changing while it was read")]
    Interrupted {
        /// What was being read.
        what: &'static str,
    },
}

impl TimeoutError {
    /// Whether the agent lacks the privilege to read there (see
    /// [`TimeoutError::PermissionDenied`]).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Self::PermissionDenied { .. })
    }
}

/// One source that failed, and why: the others were still read.
#[derive(Debug)]
pub struct SourceError {
    /// The source that failed.
    pub source: TimeoutSource,
    /// Why.
    pub error: TimeoutError,
}

/// What [`read_current_namespace`] found in one network namespace.
#[derive(Debug, Default)]
pub struct NamespaceTimeouts {
    /// Every timeout that forgets TCP flows: conntrack's sysctls, the nftables policies, IPVS.
    pub timeouts: Vec<HostTimeout>,
    /// The TCP keepalive defaults (not a cutter; what keepalive sockets probe at).
    pub keepalive: Option<KeepaliveDefaults>,
    /// How conntrack treats flows it forgot; None without conntrack.
    pub conntrack: Option<ConntrackTcpTracking>,
    /// The sources that failed, each once.
    pub errors: Vec<SourceError>,
}

impl NamespaceTimeouts {
    /// The timeouts of idle established connections, shortest first: what cuts them first.
    pub fn established(&self) -> impl Iterator<Item = &HostTimeout> {
        let mut established: Vec<&HostTimeout> = self
            .timeouts
            .iter()
            .filter(|t| t.state == TcpTimeoutState::Established)
            .collect();
        established.sort_by_key(|t| t.seconds);
        established.into_iter()
    }
}

/// Reads the timeouts of the calling thread's network namespace from `sources`. Never fails as
/// a whole: a source that fails is in `errors` and the others are still read.
pub fn read_current_namespace(sources: &Sources) -> NamespaceTimeouts {
    let mut found = NamespaceTimeouts::default();
    let conntrack = match sysctl::read_conntrack(&sources.proc_sys) {
        Ok(conntrack) => conntrack,
        Err(error) => {
            found.fail(TimeoutSource::Conntrack, error);
            None
        }
    };
    if let Some(conntrack) = &conntrack {
        found.timeouts.extend(conntrack.host_timeouts());
        found.conntrack = Some(conntrack.tracking);
    }
    match sysctl::read_keepalive(&sources.proc_sys) {
        Ok(keepalive) => found.keepalive = keepalive,
        Err(error) => found.fail(TimeoutSource::Keepalive, error),
    }
    if sources.nftables {
        match nftables::read_ct_timeout_policies() {
            Ok(nft) => {
                // A state the policy did not set holds the namespace's default of when it was
                // made: report only those that differ from today's.
                let default = |state| {
                    conntrack
                        .as_ref()
                        .and_then(|c| c.seconds(state))
                        .or_else(|| kernel_default(state))
                };
                for policy in &nft.policies {
                    found.timeouts.extend(policy_timeouts(policy, default));
                }
                if let Some(error) = nft.rules_error {
                    found.fail(TimeoutSource::Nftables, error);
                }
            }
            Err(error) => found.fail(TimeoutSource::Nftables, error),
        }
    }
    if sources.ipvs {
        match ipvs::read_ipvs_timeouts(&sources.proc) {
            Ok(Some(ipvs)) => found.timeouts.extend(ipvs_timeouts(&ipvs)),
            Ok(None) => {}
            Err(error) => found.fail(TimeoutSource::Ipvs, error),
        }
    }
    found
}

impl NamespaceTimeouts {
    fn fail(&mut self, source: TimeoutSource, error: TimeoutError) {
        self.errors.push(SourceError { source, error });
    }
}

/// The kernel's compiled-in default of a state's conntrack timeout.
fn kernel_default(state: TcpTimeoutState) -> Option<u64> {
    sysctl::KERNEL_DEFAULTS
        .iter()
        .find(|(s, _)| *s == state)
        .map(|(_, seconds)| *seconds)
}

/// A policy's timeouts as the API reports them: `established` always, the other states when
/// they differ from `default` (so were set by the policy).
fn policy_timeouts(
    policy: &nftables::CtTimeoutPolicy,
    default: impl Fn(TcpTimeoutState) -> Option<u64>,
) -> Vec<HostTimeout> {
    let name = policy.qualified_name();
    let applies_to = policy.applies_to();
    policy
        .timeouts
        .iter()
        .filter(|&&(state, seconds)| {
            state == TcpTimeoutState::Established || default(state) != Some(seconds)
        })
        .map(|&(state, seconds)| HostTimeout {
            source: TimeoutSource::Nftables,
            name: name.clone(),
            state,
            seconds,
            applies_to: applies_to.clone(),
        })
        .collect()
}

/// IPVS's TCP timeouts as the API reports them (its UDP one cuts no TCP).
fn ipvs_timeouts(ipvs: &ipvs::IpvsTimeouts) -> Vec<HostTimeout> {
    [
        ("ipvs tcp", TcpTimeoutState::Established, ipvs.tcp),
        ("ipvs tcpfin", TcpTimeoutState::FinWait, ipvs.tcp_fin),
    ]
    .into_iter()
    .filter_map(|(name, state, seconds)| {
        Some(HostTimeout {
            source: TimeoutSource::Ipvs,
            name: name.to_owned(),
            state,
            seconds: seconds?,
            applies_to: None,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nftables::{CtTimeoutPolicy, RuleUse};

    #[test]
    fn a_policy_reports_established_and_the_states_it_changed() {
        let policy = CtTimeoutPolicy {
            family: "inet".to_owned(),
            table: "t".to_owned(),
            name: "mailshort".to_owned(),
            l3proto: Some(2),
            timeouts: vec![
                (TcpTimeoutState::Established, 5),
                (TcpTimeoutState::CloseWait, 5),
                (TcpTimeoutState::Retransmitting, 300),
                (TcpTimeoutState::Unacknowledged, 300),
            ],
            rules: RuleUse::Matches(vec!["tcp dport 143".to_owned()]),
        };
        let timeouts = policy_timeouts(&policy, kernel_default);
        assert_eq!(
            timeouts,
            vec![
                HostTimeout {
                    source: TimeoutSource::Nftables,
                    name: "inet/t/mailshort".to_owned(),
                    state: TcpTimeoutState::Established,
                    seconds: 5,
                    applies_to: Some("tcp dport 143".to_owned()),
                },
                HostTimeout {
                    source: TimeoutSource::Nftables,
                    name: "inet/t/mailshort".to_owned(),
                    state: TcpTimeoutState::CloseWait,
                    seconds: 5,
                    applies_to: Some("tcp dport 143".to_owned()),
                },
            ]
        );
        let unused = CtTimeoutPolicy {
            rules: RuleUse::Unused,
            ..policy.clone()
        };
        assert_eq!(
            policy_timeouts(&unused, kernel_default)[0]
                .applies_to
                .as_deref(),
            Some("no rule applies it")
        );
        let unread = CtTimeoutPolicy {
            rules: RuleUse::NotRead,
            ..policy
        };
        assert_eq!(policy_timeouts(&unread, kernel_default)[0].applies_to, None);
    }

    #[test]
    fn ipvs_reports_its_tcp_timeouts() {
        let timeouts = ipvs_timeouts(&ipvs::IpvsTimeouts {
            tcp: Some(900),
            tcp_fin: None,
            udp: Some(300),
        });
        assert_eq!(timeouts.len(), 1);
        assert_eq!(timeouts[0].name, "ipvs tcp");
        assert_eq!(timeouts[0].seconds, 900);
        assert_eq!(timeouts[0].state, TcpTimeoutState::Established);
    }

    #[test]
    fn a_namespace_without_conntrack_still_has_keepalive_and_errors_are_per_source() {
        let root =
            std::env::temp_dir().join(format!("idlecut-timeouts-mod-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("net/ipv4")).unwrap();
        std::fs::create_dir_all(root.join("net/netfilter")).unwrap();
        for (name, value) in [
            ("tcp_keepalive_time", "600"),
            ("tcp_keepalive_intvl", "60"),
            ("tcp_keepalive_probes", "5"),
        ] {
            std::fs::write(root.join("net/ipv4").join(name), value).unwrap();
        }
        let sources = Sources {
            proc_sys: root.clone(),
            proc: root.join("no-proc"),
            ipvs: true,
            ..Sources::default()
        };
        let found = read_current_namespace(&sources);
        assert!(found.timeouts.is_empty());
        assert_eq!(found.conntrack, None);
        assert_eq!(found.keepalive.map(|k| k.time_seconds), Some(600));
        assert!(found.errors.is_empty(), "{:?}", found.errors);

        std::fs::write(
            root.join("net/netfilter/nf_conntrack_tcp_timeout_established"),
            "forever",
        )
        .unwrap();
        let found = read_current_namespace(&sources);
        assert_eq!(found.errors.len(), 1);
        assert_eq!(found.errors[0].source, TimeoutSource::Conntrack);
        assert_eq!(found.keepalive.map(|k| k.probes), Some(5));

        std::fs::write(
            root.join("net/netfilter/nf_conntrack_tcp_timeout_established"),
            "300",
        )
        .unwrap();
        let found = read_current_namespace(&sources);
        assert!(found.errors.is_empty());
        assert_eq!(
            found.established().map(|t| t.seconds).collect::<Vec<_>>(),
            vec![300]
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn permission_is_told_apart() {
        assert!(TimeoutError::PermissionDenied { what: "x" }.is_permission_denied());
        let kernel = TimeoutError::Kernel {
            what: "x",
            errno: libc::ENOENT,
        };
        assert!(!kernel.is_permission_denied());
        assert!(
            kernel
                .to_string()
                .starts_with("x: the kernel answered No such file")
        );
    }
}
