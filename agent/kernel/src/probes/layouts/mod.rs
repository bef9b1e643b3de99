//! Kernel-version differences, in one place: where the fields the kernel programs read sit in
//! this kernel's tracepoint records (from tracefs) and structures (from BTF). Everything is read
//! at start-up, so one binary runs across kernel versions.

pub mod btf;
pub mod tracefs;
