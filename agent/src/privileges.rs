//! Least privilege after start-up: once the kernel programs are loaded and attached, the agent
//! keeps only what its running work needs.
//!
//! - `CAP_BPF`, `CAP_PERFMON` (and `CAP_SYS_RESOURCE` on old kernels) load programs and create
//!   maps. Afterwards the agent only uses the descriptors it already holds (ring buffer, map
//!   lookups and updates, program info), which need no capability: they are dropped.
//! - `CAP_SYS_ADMIN` stays: the periodic scan enters other network namespaces (`setns`).
//! - `CAP_SYS_PTRACE` stays: the scan looks at other users' processes' namespaces and sockets.
//! - `CAP_NET_ADMIN` stays only when the operator asked the scan to read nftables or IPVS
//!   timeouts (`--node-timeouts`), which netlink gives to it alone; otherwise it goes too.
//!
//! Capabilities belong to threads: this runs before the runtime starts its threads, which
//! then inherit the reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

/// What the agent needs once its programs are attached.
const KEPT: [Capability; 2] = [Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE];

/// Drops every capability but [`KEPT`] (and `CAP_NET_ADMIN` when `net_admin`: the scan reads
/// nftables or IPVS) from this thread's effective, permitted, inheritable and ambient sets;
/// returns the capabilities kept (those of them it had).
pub fn drop_after_load(net_admin: bool) -> anyhow::Result<Vec<Capability>> {
    let permitted = caps::read(None, CapSet::Permitted)
        .map_err(|err| anyhow::anyhow!("reading the agent's capabilities: {err}"))?;
    let kept: CapsHashSet = KEPT
        .into_iter()
        .chain(net_admin.then_some(Capability::CAP_NET_ADMIN))
        .filter(|cap| permitted.contains(cap))
        .collect();
    let fail = |what: &str, err: caps::errors::CapsError| {
        anyhow::anyhow!("dropping capabilities ({what}): {err}")
    };
    caps::clear(None, CapSet::Ambient).map_err(|err| fail("ambient", err))?;
    caps::clear(None, CapSet::Inheritable).map_err(|err| fail("inheritable", err))?;
    // Effective first: it must stay a subset of permitted.
    caps::set(None, CapSet::Effective, &kept).map_err(|err| fail("effective", err))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|err| fail("permitted", err))?;
    let mut kept: Vec<Capability> = kept.into_iter().collect();
    kept.sort_by_key(|cap| cap.index());
    Ok(kept)
}
