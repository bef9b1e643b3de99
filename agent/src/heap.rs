//! The allocator's settings (glibc malloc), so that memory the agent frees goes back to the
//! system.
//!
//! By default glibc gives a block a mapping of its own only above a threshold that rises to the
//! largest such block freed so far (up to 32 MiB). Once the connection table has grown a few
//! times, its next growth, a scan's results and each /metrics body come from the heap arenas
//! instead, where what is freed stays resident: with 100,000 connections that doubled the
//! agent's memory. A fixed threshold keeps every large buffer in a mapping of its own, unmapped
//! when freed. And glibc makes up to eight arenas per CPU, each keeping its own free memory; the
//! agent's work runs on two runtime threads, two arenas are enough.

/// Blocks from this size on get a mapping of their own (glibc's initial default, kept fixed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 2;

/// Applies the settings; call it first thing, before any thread starts. A setting glibc refuses
/// leaves its default, which costs memory, never correctness.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no thread allocates concurrently yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}
