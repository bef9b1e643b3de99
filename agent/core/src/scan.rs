//! What a scan of the kernel's socket tables found, as plain values: the connections of every
//! network namespace, who owns them, and which namespaces were read whole. `idlecut-kernel`'s
//! discovery produces a `Scan`; the connection model reconciles it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use idlecut_api::{
    host::{HostTimeout, KeepaliveDefaults},
    pods::Pod,
};

use crate::events::{Endpoints, TcpState};

/// A connection in the kernel's socket table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    pub netns: u32,
    pub endpoints: Endpoints,
    pub state: TcpState,
    /// The socket cookie, which the kernel programs also read to adopt the connection.
    pub cookie: u64,
    pub inode: u32,
    pub keepalive: KeepaliveObservation,
    /// Milliseconds since this host last sent data, since data arrived, since an ACK arrived.
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    pub last_ack_recv_ms: u32,
}

impl Scanned {
    /// Milliseconds since the peer was last heard from (any segment).
    pub fn last_received_ms(&self) -> u32 {
        self.last_data_recv_ms.min(self.last_ack_recv_ms)
    }
}

/// What one look at a connection says about TCP keepalive.
///
/// sock_diag reports the socket's pending timer. On an established connection with nothing in
/// flight the only timer is the keepalive timer, pending exactly when SO_KEEPALIVE is on, and it
/// expires one keepalive time after the last segment received. So `expires + time since the
/// last ACK` is the keepalive time, whether it came from TCP_KEEPIDLE or from the namespace's
/// `tcp_keepalive_time`. With data in flight the retransmission timer hides it: unknown.
/// (Observing setsockopt instead would miss sockets configured before the agent started,
/// options inherited from a listener and the sysctl default, and would need each file
/// descriptor mapped to its socket.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepaliveObservation {
    Off,
    On { interval_ms: u64 },
    Unknown,
}

/// One pass over every namespace.
#[derive(Debug, Default)]
pub struct Scan {
    pub connections: Vec<Scanned>,
    /// Socket inode -> owning process and its cgroup, for the watched connections found.
    pub owners: HashMap<u32, Arc<Owner>>,
    /// Namespaces that could not be read, with why.
    pub failures: Vec<(Netns, String)>,
    pub namespaces: usize,
    /// Process namespaces that could not be looked at (permission denied).
    pub unreadable: usize,
    /// Inodes of the namespaces read completely: a connection of one of them that the scan
    /// did not find had ended.
    pub complete: HashSet<u32>,
    /// The idle timeouts of each namespace read (by inode): what on this host forgets idle
    /// flows, and its TCP keepalive defaults.
    pub timeouts: BTreeMap<u32, NetnsTimeouts>,
    /// Inode of the node's own network namespace (`--node-netns`), when it could be read.
    pub node_netns: Option<u32>,
}

/// What would cut an idle connection in one network namespace of this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetnsTimeouts {
    /// Timeouts of established flows (conntrack, nftables `ct timeout` policies, IPVS).
    pub timeouts: Vec<HostTimeout>,
    /// The namespace's `tcp_keepalive_time`, `_intvl` and `_probes`.
    pub keepalive: Option<KeepaliveDefaults>,
}

/// The process that holds a socket, and its cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub cgroup: Option<String>,
    /// The Kubernetes pod the process runs in; None for a process of the host itself (or when
    /// its cgroup could not be read: then `cgroup` is None too).
    pub pod: Option<Pod>,
}

/// A network namespace and a path that enters it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    pub inode: u32,
    pub path: PathBuf,
}
