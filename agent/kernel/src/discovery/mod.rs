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
//! - `processes`: the `/proc` walk from a socket to the process that holds it, and its pod;
//! - `capabilities`: whether the agent may look into other users' namespaces.
//!
//! In each namespace it also reads what on this host would forget an idle flow
//! (`idlecut_node::timeouts`: conntrack, and where allowed nftables and IPVS), and it names
//! the pods of the owners (`idlecut_node::cgroup` and `kubelet`).

mod capabilities;
mod namespaces;
mod processes;
mod sock_diag;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use idlecut_core::{
    scan::{NetnsTimeouts, Scan},
    settings::PortMap,
};
use idlecut_node::{directory::PodDirectory, timeouts};
use tracing::warn;

pub use self::capabilities::has_sys_ptrace;

/// What a scan reads, and what it keeps from one scan to the next (the kubelet's names, the
/// problems already reported). Moved to the scan's thread and back.
pub struct Discovery {
    pub ports: PortMap,
    /// Where pod names come from, the richest first (the runtime's CRI socket, the kubelet's
    /// log directories); none: pods are known by their UID only.
    pub directories: Vec<Box<dyn PodDirectory>>,
    /// Which sources of idle timeouts to read in each namespace.
    pub timeouts: timeouts::Sources,
    /// A path to the node's own network namespace (`/proc/1/ns/net`: PID 1's, the host's).
    pub node_netns: PathBuf,
    /// Timeout sources whose failure was already reported (once each, not at every scan).
    reported: HashSet<String>,
}

impl Discovery {
    pub fn new(
        ports: PortMap,
        directories: Vec<Box<dyn PodDirectory>>,
        timeouts: timeouts::Sources,
        node_netns: PathBuf,
    ) -> Self {
        Self {
            ports,
            directories,
            timeouts,
            node_netns,
            reported: HashSet::new(),
        }
    }

    /// Scans every namespace for connections on the watched ports. Blocking; call it from a
    /// thread of its own (see the module documentation).
    pub fn scan(&mut self) -> Scan {
        let mut scan = scan_namespaces(&self.ports, &self.timeouts, &mut self.reported);
        scan.node_netns = namespaces::inode_of(&self.node_netns);
        let wanted: HashSet<u32> = scan
            .connections
            .iter()
            .map(|c| c.inode)
            .filter(|&i| i != 0)
            .collect();
        scan.owners = processes::owners(&wanted, &mut self.directories);
        for directory in &mut self.directories {
            if let Some(problem) = directory.take_new_problem() {
                warn!(
                    problem,
                    source = directory.source(),
                    "pods this source would name are known by less: {}",
                    directory.remedy()
                );
            }
        }
        scan
    }
}

/// The connections and idle timeouts of every namespace.
fn scan_namespaces(
    ports: &PortMap,
    sources: &timeouts::Sources,
    reported: &mut HashSet<String>,
) -> Scan {
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
                scan.timeouts
                    .insert(ns.inode, read_timeouts(sources, reported));
            }
            Err(err) => scan.failures.push((ns, err.to_string())),
        }
    }
    if inside != home_inode
        && let Ok(home) = home
    {
        let _ = namespaces::enter_file(&home);
    }
    scan
}

/// The idle timeouts of the namespace the calling thread is in; a source that fails is
/// reported once (nftables and IPVS need CAP_NET_ADMIN).
fn read_timeouts(sources: &timeouts::Sources, reported: &mut HashSet<String>) -> NetnsTimeouts {
    let found = timeouts::read_current_namespace(sources);
    for failure in &found.errors {
        let error = failure.error.to_string();
        if reported.insert(format!("{}: {error}", failure.source)) {
            warn!(
                source = %failure.source,
                error,
                "cannot read some of this host's idle timeouts (reading nftables and IPVS needs \
                 CAP_NET_ADMIN; see README, \"On Kubernetes\")"
            );
        }
    }
    NetnsTimeouts {
        timeouts: found.timeouts,
        keepalive: found.keepalive,
    }
}
