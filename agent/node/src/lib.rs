//! What the node itself says, read from the files and sockets of the host (no API server, no
//! aya, no async runtime): which pod a process belongs to, and which of the node's own timeouts
//! forget idle TCP connections.
//!
//! - `cgroup`: a process's `/proc/PID/cgroup` into pod UID, QoS class, container ID, runtime;
//! - `directory`: the sources of pod names behind one trait, and what they share;
//! - `kubelet`: the kubelet's log directories (`/var/log/pods`, `/var/log/containers`) into
//!   namespace, pod and container names;
//! - `workload`: the controller that owns a pod, from its name and labels;
//! - `timeouts`: the idle timeouts of the calling thread's network namespace (conntrack
//!   sysctls, nftables `ct timeout` policies, IPVS, TCP keepalive).

pub mod cgroup;
pub mod directory;
pub mod kubelet;
pub mod timeouts;
pub mod workload;
