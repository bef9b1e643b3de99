//! Connections that were already open: the kernel's socket table, read over netlink sock_diag
//! (inet_diag) in every network namespace of the host, with the idle clocks and keepalive timer
//! of each connection and, where it can be found, the process that owns it.
//!
//! Runs on a thread of its own: entering a namespace (`setns`) changes the calling thread, which
//! must never be one that tokio reuses.
//!
//! - `namespaces`: finding the host's network namespaces and entering one;
//! - `sock_diag`: the socket table of one namespace (the rust-netlink crates
//!   `netlink-packet-sock-diag` and `netlink-sys`; see there why);
//! - `processes`: the `/proc` walk from a socket to the process that holds it;
//! - `capabilities`: whether the agent may look into other users' namespaces.

mod capabilities;
mod namespaces;
mod processes;
mod sock_diag;

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
};

pub use self::{capabilities::has_sys_ptrace, namespaces::Netns, processes::Owner};
use crate::{config::PortMap, events::Endpoints};

/// A connection in the kernel's socket table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    pub netns: u32,
    pub endpoints: Endpoints,
    pub state: u8,
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
}

/// Scans every namespace for connections on the watched ports. Blocking; call it from a thread
/// of its own (see the module documentation).
pub fn scan(ports: &PortMap) -> Scan {
    let (all, unreadable) = namespaces::namespaces();
    let mut scan = Scan {
        namespaces: all.len(),
        unreadable,
        ..Scan::default()
    };
    // Enter each other namespace on this thread in turn, then come back. The one the thread
    // is in (the agent's own, listed first) is read without `setns`, which needs
    // CAP_SYS_ADMIN even to enter the namespace one is already in.
    let home = namespaces::current();
    let home_inode = namespaces::inode_of(Path::new("/proc/thread-self/ns/net"));
    let mut inside = home_inode;
    for ns in all {
        let entered = if inside == Some(ns.inode) {
            Ok(())
        } else {
            namespaces::enter(&ns.path).inspect(|()| inside = Some(ns.inode))
        };
        match entered.and_then(|()| sock_diag::dump_tcp(ns.inode, ports)) {
            Ok(found) => {
                scan.complete.insert(ns.inode);
                scan.connections.extend(found);
            }
            Err(err) => scan.failures.push((ns, err.to_string())),
        }
    }
    if inside != home_inode
        && let Ok(home) = home
    {
        let _ = namespaces::enter_file(&home);
    }
    let wanted: HashSet<u32> = scan
        .connections
        .iter()
        .map(|c| c.inode)
        .filter(|&i| i != 0)
        .collect();
    scan.owners = processes::owners(&wanted);
    scan
}
