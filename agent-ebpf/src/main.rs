//! idlecut's kernel programs: one per TCP tracepoint, each small and boring.
//!
//! Every program filters on the ports first (a bitmap lookup in read-only data), so segments
//! of non-mail traffic cost two field reads and two bit tests. Field offsets are globals that
//! the agent fills from tracefs at load time. The programs only emit facts; classification and
//! aggregation happen in user space.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Only the agent's build.rs builds this crate's binary, and only for the BPF target.
    eprintln!("idlecut-probes is built for the BPF target and embedded in the `idlecut` binary");
}
