//! Builds the kernel programs (crate `idlecut-ebpf`, BPF target, pinned nightly) so that the
//! agent can embed them: one binary to deploy.
fn main() -> anyhow::Result<()> {
    idlecut_build_support::build_ebpf("idlecut-ebpf", "../../agent-ebpf", "idlecut-probes")
}
