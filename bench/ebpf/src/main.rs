//! Baselines for idlecut's kernel cost: one do-nothing program per tracepoint idlecut uses and
//! per hook kind, classic and BTF tracepoint (what any program attached there costs, the floor
//! idlecut is compared against), and a program that increments a hash map entry keyed by PID,
//! like the "simple map" probe of Cloudflare ebpf_exporter's benchmark, on both kinds.
//!
//! Built for the BPF target by the bench's build.rs and embedded in `idlecut-bench`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Only the bench's build.rs builds this crate's binary, and only for the BPF target.
    eprintln!("idlecut-bench-probes is built for the BPF target and embedded in idlecut-bench");
}
