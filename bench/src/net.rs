//! Network plumbing for the workloads: threads inside a network namespace, listeners with a
//! real backlog, connections from a chosen source address, descriptor limits (aborts are the
//! integration tests' `abort`).
//!
//! All traffic stays on the loopback of namespaces the bench creates (or between them).

use std::{
    io::{self, Read as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::atomic::{AtomicU32, Ordering},
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use idlecut_integration_tests::{Netns, enter_netns};
use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
use socket2::{Domain, Protocol, Socket, Type};

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

/// A fresh network namespace (loopback up), deleted on drop, named after this process so that
/// parallel runs do not collide.
pub fn netns(purpose: &str) -> Netns {
    let n = NEXT_NETNS.fetch_add(1, Ordering::Relaxed);
    Netns::new(format!("icb{}-{n}-{purpose}", std::process::id()))
}

/// Runs `f` on a new thread inside the namespace.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> JoinHandle<anyhow::Result<T>> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        enter_netns(&ns)?;
        f()
    })
}

/// Joins a workload thread, turning a panic into an error.
pub fn join<T>(handle: JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("a workload thread panicked"))?
}

/// A listener with `backlog` pending connections (std's is fixed at 128), SO_REUSEADDR, and
/// an accept timeout so that acceptor loops can notice when to stop.
pub fn listener(addr: SocketAddrV4, backlog: i32) -> anyhow::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&SocketAddr::V4(addr).into())
        .with_context(|| format!("bind {addr}"))?;
    socket.listen(backlog)?;
    // accept() honours SO_RCVTIMEO on Linux.
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(socket.into())
}

/// A connection to `to` from source address `from` (any port), Nagle off.
pub fn connect_from(from: Ipv4Addr, to: SocketAddrV4) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    // Pick the port at connect time, per 4-tuple, so that sources do not run out of ports.
    setsockopt(&socket, IpBindAddressNoPort, &true)?;
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(from, 0)).into())?;
    socket.connect(&SocketAddr::V4(to).into())?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

/// Reads until the peer's FIN (or an error, or `timeout`); drops the stream.
pub fn drain_to_eof(mut stream: TcpStream, timeout: Duration) {
    let _ = stream.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 256];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

/// Pins the calling thread to one CPU (modulo the CPUs there are), so that a measurement does
/// not depend on where the scheduler happens to put its threads.
pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    let cpus = thread::available_parallelism().map_or(1, usize::from);
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("sched_setaffinity");
    }
    Ok(())
}

/// The `i`-th of `n` source addresses on the loopback, one per /24: 127.100.0.2, 127.100.1.2...
/// (the whole of 127.0.0.0/8 is local).
pub fn source_in_own_prefix(i: u32) -> Ipv4Addr {
    let third = i % 250;
    let second = 100 + i / 250;
    Ipv4Addr::new(127, u8::try_from(second).unwrap_or(255), third as u8, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_sit_in_distinct_prefixes() {
        assert_eq!(source_in_own_prefix(0), Ipv4Addr::new(127, 100, 0, 2));
        assert_eq!(source_in_own_prefix(249), Ipv4Addr::new(127, 100, 249, 2));
        assert_eq!(source_in_own_prefix(250), Ipv4Addr::new(127, 101, 0, 2));
        assert_eq!(source_in_own_prefix(498), Ipv4Addr::new(127, 101, 248, 2));
    }
}
