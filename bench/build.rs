//! Builds the baseline kernel programs (crate `idlecut-bench-ebpf`, BPF target, the nightly
//! pinned in agent-ebpf/rust-toolchain.toml) so that the bench embeds them.
fn main() -> anyhow::Result<()> {
    idlecut_build_support::build_ebpf("idlecut-bench-ebpf", "ebpf", "idlecut-bench-probes")
}
