//! conntrack's TCP timeouts and the TCP keepalive defaults of the calling thread's network
//! namespace, read from `/proc/sys`.
//!
//! `/proc/sys/net` shows the network namespace of the thread that *opens* the file, as of the
//! open (checked on Linux 6.18: a thread that `setns`-ed into a namespace reads that
//! namespace's `nf_conntrack_tcp_timeout_established` through plain `/proc/sys`, while the
//! process's other threads read their own). So these readers open every file afresh, and must
//! run on the thread that entered the namespace, after `setns`; a descriptor opened before
//! keeps showing the namespace it was opened in. (Unlike `/proc/net`, which is
//! `/proc/self/net`, the namespace of the process's main thread: see `ipvs`.)
//!
//! The conntrack sysctls exist in every namespace once `nf_conntrack` is loaded on the node;
//! when they are missing there is no conntrack to cut anything, which is an answer, not an
//! error. Their presence does not prove conntrack tracks anything in the namespace (its hooks
//! are registered only when a rule there needs them): `nf_conntrack_count` hints at that.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use idlecut_api::{
    host::{ConntrackTcpTracking, HostTimeout, KeepaliveDefaults},
    vocabulary::{TcpTimeoutState, TimeoutSource},
};

use super::TimeoutError;

/// Where the sysctls are: the readers take it as a parameter so that tests can point them at a
/// tree of their own.
pub const PROC_SYS: &str = "/proc/sys";

/// conntrack's sysctls, relative to the root.
const NETFILTER: &str = "net/netfilter";
/// The TCP keepalive sysctls, relative to the root.
const IPV4: &str = "net/ipv4";

/// The TCP timeout sysctls an established-then-idle flow meets, with the state each counts
/// down in. `established` comes first: without it there is no conntrack.
const CONNTRACK_TCP_TIMEOUTS: [(&str, TcpTimeoutState); 4] = [
    (
        "nf_conntrack_tcp_timeout_established",
        TcpTimeoutState::Established,
    ),
    (
        "nf_conntrack_tcp_timeout_close_wait",
        TcpTimeoutState::CloseWait,
    ),
    (
        "nf_conntrack_tcp_timeout_unacknowledged",
        TcpTimeoutState::Unacknowledged,
    ),
    (
        "nf_conntrack_tcp_timeout_max_retrans",
        TcpTimeoutState::Retransmitting,
    ),
];

/// The kernel's own defaults of those timeouts (seconds), for telling which states an
/// nftables policy set when there are no sysctls to compare with.
pub const KERNEL_DEFAULTS: [(TcpTimeoutState, u64); 4] = [
    (TcpTimeoutState::Established, 5 * 24 * 3600),
    (TcpTimeoutState::CloseWait, 60),
    (TcpTimeoutState::Unacknowledged, 300),
    (TcpTimeoutState::Retransmitting, 300),
];

/// What conntrack's sysctls say about TCP in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConntrackSysctls {
    /// `(sysctl name, state, seconds)` for each TCP timeout sysctl that is there;
    /// `established` is always first.
    pub timeouts: Vec<(&'static str, TcpTimeoutState, u64)>,
    /// How conntrack treats segments of flows it does not know.
    pub tracking: ConntrackTcpTracking,
}

impl ConntrackSysctls {
    /// The seconds of one state's timeout, when its sysctl is there.
    pub fn seconds(&self, state: TcpTimeoutState) -> Option<u64> {
        self.timeouts
            .iter()
            .find(|(_, s, _)| *s == state)
            .map(|(_, _, seconds)| *seconds)
    }

    /// The timeouts as the API reports them: they apply to every tracked flow no policy
    /// overrides, so `applies_to` is None.
    pub fn host_timeouts(&self) -> Vec<HostTimeout> {
        self.timeouts
            .iter()
            .map(|&(name, state, seconds)| HostTimeout {
                source: TimeoutSource::Conntrack,
                name: name.to_owned(),
                state,
                seconds,
                applies_to: None,
            })
            .collect()
    }
}

/// Reads conntrack's TCP sysctls under `root` (normally [`PROC_SYS`]): None when
/// `nf_conntrack_tcp_timeout_established` is not there (no conntrack in this namespace).
pub fn read_conntrack(root: &Path) -> Result<Option<ConntrackSysctls>, TimeoutError> {
    const WHAT: &str = "conntrack sysctls";
    let dir = root.join(NETFILTER);
    let mut timeouts = Vec::with_capacity(CONNTRACK_TCP_TIMEOUTS.len());
    for (name, state) in CONNTRACK_TCP_TIMEOUTS {
        match read_number(WHAT, &dir.join(name))? {
            Some(seconds) => timeouts.push((name, state, seconds)),
            None if state == TcpTimeoutState::Established => return Ok(None),
            None => {}
        }
    }
    let flag = |name: &str| -> Result<Option<bool>, TimeoutError> {
        Ok(read_number(WHAT, &dir.join(name))?.map(|value| value != 0))
    };
    let tracking = ConntrackTcpTracking {
        loose: flag("nf_conntrack_tcp_loose")?,
        be_liberal: flag("nf_conntrack_tcp_be_liberal")?,
        entries: read_number(WHAT, &dir.join("nf_conntrack_count"))?,
    };
    Ok(Some(ConntrackSysctls { timeouts, tracking }))
}

/// Reads the TCP keepalive defaults under `root` (normally [`PROC_SYS`]): None when they are
/// not all there (a tree without IPv4, only in tests).
pub fn read_keepalive(root: &Path) -> Result<Option<KeepaliveDefaults>, TimeoutError> {
    const WHAT: &str = "keepalive sysctls";
    let dir = root.join(IPV4);
    let read = |name: &str| read_number(WHAT, &dir.join(name));
    let (Some(time_seconds), Some(interval_seconds), Some(probes)) = (
        read("tcp_keepalive_time")?,
        read("tcp_keepalive_intvl")?,
        read("tcp_keepalive_probes")?,
    ) else {
        return Ok(None);
    };
    Ok(Some(KeepaliveDefaults {
        time_seconds,
        interval_seconds,
        probes,
    }))
}

/// One sysctl's number: None when the file is not there; permission apart so that the caller
/// can say once that the agent may not read there.
fn read_number(what: &'static str, path: &Path) -> Result<Option<u64>, TimeoutError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            return Err(TimeoutError::PermissionDenied { what });
        }
        Err(source) => {
            return Err(TimeoutError::Io {
                what: path.display().to_string(),
                source,
            });
        }
    };
    let trimmed = text.trim();
    trimmed
        .parse()
        .map(Some)
        .map_err(|_| TimeoutError::NotANumber {
            path: PathBuf::from(path),
            text: trimmed.chars().take(40).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysctl tree of its own under the system's temporary directory, removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("idlecut-sysctl-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join(NETFILTER)).unwrap();
            fs::create_dir_all(root.join(IPV4)).unwrap();
            Self(root)
        }

        fn set(&self, path: &str, value: &str) -> &Self {
            fs::write(self.0.join(path), value).unwrap();
            self
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn conntrack_timeouts_and_tracking_are_read() {
        let tree = Tree::new("full");
        tree.set(
            "net/netfilter/nf_conntrack_tcp_timeout_established",
            "3600\n",
        )
        .set("net/netfilter/nf_conntrack_tcp_timeout_close_wait", "60\n")
        .set(
            "net/netfilter/nf_conntrack_tcp_timeout_unacknowledged",
            "300\n",
        )
        .set(
            "net/netfilter/nf_conntrack_tcp_timeout_max_retrans",
            "300\n",
        )
        .set("net/netfilter/nf_conntrack_tcp_loose", "1\n")
        .set("net/netfilter/nf_conntrack_tcp_be_liberal", "0\n")
        .set("net/netfilter/nf_conntrack_count", "12\n");
        let read = read_conntrack(&tree.0).unwrap().unwrap();
        assert_eq!(read.seconds(TcpTimeoutState::Established), Some(3600));
        assert_eq!(read.seconds(TcpTimeoutState::Retransmitting), Some(300));
        assert_eq!(
            read.tracking,
            ConntrackTcpTracking {
                loose: Some(true),
                be_liberal: Some(false),
                entries: Some(12),
            }
        );
        let timeouts = read.host_timeouts();
        assert_eq!(timeouts.len(), 4);
        assert_eq!(timeouts[0].name, "nf_conntrack_tcp_timeout_established");
        assert_eq!(timeouts[0].source, TimeoutSource::Conntrack);
        assert_eq!(timeouts[0].seconds, 3600);
        assert_eq!(timeouts[3].state, TcpTimeoutState::Retransmitting);
    }

    #[test]
    fn missing_conntrack_is_no_conntrack_and_missing_extras_are_skipped() {
        let tree = Tree::new("partial");
        assert_eq!(read_conntrack(&tree.0).unwrap(), None);
        assert_eq!(read_conntrack(&tree.0.join("nowhere")).unwrap(), None);
        tree.set("net/netfilter/nf_conntrack_tcp_timeout_established", "7");
        let read = read_conntrack(&tree.0).unwrap().unwrap();
        assert_eq!(
            read.timeouts,
            vec![(
                "nf_conntrack_tcp_timeout_established",
                TcpTimeoutState::Established,
                7
            )]
        );
        assert_eq!(read.tracking, ConntrackTcpTracking::default());
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let tree = Tree::new("garbage");
        tree.set(
            "net/netfilter/nf_conntrack_tcp_timeout_established",
            "lots\n",
        );
        let error = read_conntrack(&tree.0).unwrap_err();
        assert!(matches!(error, TimeoutError::NotANumber { ref text, .. } if text == "lots"));
        assert!(
            error
                .to_string()
                .contains("nf_conntrack_tcp_timeout_established")
        );
    }

    #[test]
    fn keepalive_defaults_are_read() {
        let tree = Tree::new("keepalive");
        assert_eq!(read_keepalive(&tree.0).unwrap(), None);
        tree.set("net/ipv4/tcp_keepalive_time", "7200\n")
            .set("net/ipv4/tcp_keepalive_intvl", "75\n")
            .set("net/ipv4/tcp_keepalive_probes", "9\n");
        assert_eq!(
            read_keepalive(&tree.0).unwrap(),
            Some(KeepaliveDefaults {
                time_seconds: 7200,
                interval_seconds: 75,
                probes: 9,
            })
        );
    }

    #[test]
    fn the_real_tree_reads_without_error() {
        // Whatever this machine has: keepalive is always there, conntrack may not be.
        assert!(read_keepalive(Path::new(PROC_SYS)).unwrap().is_some());
        read_conntrack(Path::new(PROC_SYS)).unwrap();
    }
}
