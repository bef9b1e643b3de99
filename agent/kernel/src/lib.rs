//! idlecut's kernel side in user space, and the only crate that knows the kernel's ABI: it
//! loads and attaches the eBPF programs (`probes`), turns what they report into
//! `idlecut-core`'s typed events (a TCP state is a `TcpState` from here on, never a byte), and
//! reads the kernel's socket tables in every network namespace (`discovery`).

pub mod clock;
pub mod discovery;
pub mod probes;
pub mod settings;
