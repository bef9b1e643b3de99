//! Traffic generators, each bounded by a deadline: small request/response exchanges on open
//! connections (an IMAP client and server chatting), connection churn, bulk transfer,
//! ping-pong.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use idlecut_integration_tests::abort;

use crate::net::{connect_from, drain_to_eof};

const REQUEST: &[u8] = b"a1 NOOP\r\n";
const ANSWER: &[u8] = b"a1 OK NOOP completed\r\n";
const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub type Pair = (TcpStream, TcpStream);

/// Opens `n` connections to the listener's port on 127.0.0.1 (from inside its namespace).
pub fn open_pairs(listener: &TcpListener, n: usize) -> anyhow::Result<Vec<Pair>> {
    let port = listener.local_addr()?.port();
    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        let client =
            connect_from(Ipv4Addr::LOCALHOST, to).with_context(|| format!("connecting to {to}"))?;
        let (server, _) = accept_patiently(listener, IO_TIMEOUT)?;
        for stream in [&client, &server] {
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.set_nodelay(true)?;
        }
        pairs.push((client, server));
    }
    Ok(pairs)
}

/// One request and one answer on each connection in turn, until the deadline. Returns the
/// connections and the number of exchanges.
pub fn chatter(mut pairs: Vec<Pair>, deadline: Instant) -> anyhow::Result<(Vec<Pair>, u64)> {
    let mut buf = [0u8; 64];
    let mut exchanges = 0;
    while Instant::now() < deadline {
        for (client, server) in &mut pairs {
            client.write_all(REQUEST)?;
            server.read_exact(&mut buf[..REQUEST.len()])?;
            server.write_all(ANSWER)?;
            client.read_exact(&mut buf[..ANSWER.len()])?;
            exchanges += 1;
        }
    }
    Ok((pairs, exchanges))
}

/// Opens a connection, exchanges one message, closes it, until the deadline: every
/// `abort_every`-th connection ends with a RST from the client, the others with FINs; at
/// `rate` connections a second, or as fast as it can. Must run inside the listener's namespace.
/// Returns the number of connections.
pub fn churn(
    listener: &TcpListener,
    abort_every: u64,
    rate: Option<u32>,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, listener.local_addr()?.port());
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let mut n = 0u64;
    while Instant::now() < deadline {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(n as f64 / f64::from(rate));
            if let Some(ahead) = due.checked_duration_since(Instant::now()) {
                thread::sleep(ahead);
            }
        }
        let mut client = connect_from(Ipv4Addr::LOCALHOST, to)?;
        let (mut server, _) = accept_patiently(listener, IO_TIMEOUT)?;
        server.set_read_timeout(Some(IO_TIMEOUT))?;
        client.write_all(REQUEST)?;
        server
            .read_exact(&mut buf[..REQUEST.len()])
            .context("the server reading the client's request")?;
        n += 1;
        if n.is_multiple_of(abort_every) {
            abort(client);
            // The RST arrives; the read reports it.
            let _ = server.read(&mut buf);
        } else {
            drop(client);
            drain_to_eof(server, IO_TIMEOUT);
        }
    }
    Ok(n)
}

/// Writes 64 KiB chunks to a new connection until the deadline (inside the listener's
/// namespace); returns the bytes written and for how long.
pub fn bulk_send(to: SocketAddrV4, deadline: Instant) -> anyhow::Result<(u64, Duration)> {
    let chunk = vec![0x5au8; 64 * 1024];
    let mut stream = connect_from(Ipv4Addr::LOCALHOST, to)?;
    let started = Instant::now();
    let mut sent = 0u64;
    while Instant::now() < deadline {
        stream.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    Ok((sent, started.elapsed()))
}

/// Accepts one connection and reads it to the end; returns the bytes read.
pub fn bulk_receive(listener: &TcpListener) -> anyhow::Result<u64> {
    let (mut stream, _) = accept_patiently(listener, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    loop {
        match stream.read(&mut buf)? {
            0 => return Ok(received),
            n => received += n as u64,
        }
    }
}

/// Ping-pong of 64-byte messages on a new connection until the deadline (inside the
/// listener's namespace); returns the round trips and for how long.
pub fn ping_pong(to: SocketAddrV4, deadline: Instant) -> anyhow::Result<(u64, Duration)> {
    let mut stream = connect_from(Ipv4Addr::LOCALHOST, to)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0x42u8; 64];
    let started = Instant::now();
    let mut round_trips = 0u64;
    while Instant::now() < deadline {
        stream.write_all(&buf)?;
        stream.read_exact(&mut buf)?;
        round_trips += 1;
    }
    Ok((round_trips, started.elapsed()))
}

/// Answers the ping-pong of one connection until it closes.
pub fn pong(listener: &TcpListener) -> anyhow::Result<()> {
    let (mut stream, _) = accept_patiently(listener, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; 64];
    loop {
        match stream.read_exact(&mut buf) {
            Ok(()) => stream.write_all(&buf)?,
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
}

/// accept() through the listener's short accept timeout, for up to `timeout`.
pub fn accept_patiently(
    listener: &TcpListener,
    timeout: Duration,
) -> anyhow::Result<(TcpStream, std::net::SocketAddr)> {
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok(accepted) => return Ok(accepted),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && Instant::now() < deadline => {}
            Err(err) => return Err(err).context("accepting"),
        }
    }
}
