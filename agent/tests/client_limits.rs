//! `idlecut cuts` and `idlecut connections` against a misbehaving endpoint on a loopback port
//! (no agent, no kernel): each fails with an error that names the endpoint and the limit, a
//! non-zero exit status, in bounded time and memory, instead of reading whatever it is sent.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

/// The most the client accepts of a body (`idlecut_web::client::ANSWER_LIMITS`, in the README).
const LIMIT: usize = 128 << 20;

/// A server that answers one request with `head`, then a body of `body` bytes (JSON
/// whitespace), or fewer if the client hangs up first; its thread returns what it wrote.
fn misbehaving(head: &'static [u8], body: usize) -> (SocketAddr, thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let addr = listener.local_addr().expect("its address");
    let server = thread::spawn(move || {
        let (mut connection, _) = listener.accept().expect("the command's connection");
        let mut request = Vec::new();
        let mut byte = [0u8];
        while !request.ends_with(b"\r\n\r\n") && matches!(connection.read(&mut byte), Ok(1)) {
            request.push(byte[0]);
        }
        let piece = [b' '; 64 << 10];
        let mut written = 0;
        if connection.write_all(head).is_err() {
            return 0;
        }
        while written < body && connection.write_all(&piece).is_ok() {
            written += piece.len();
        }
        written
    });
    (addr, server)
}

/// Runs `idlecut ARGS --agent ADDR`; its output and how long it took.
fn run(args: &[&str], addr: SocketAddr) -> (Output, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_idlecut"))
        .args(args)
        .args(["--agent", &addr.to_string()])
        .env_remove("IDLECUT_CA_FILE")
        .env_remove("IDLECUT_BEARER_TOKEN")
        .env_remove("IDLECUT_BEARER_TOKEN_FILE")
        .env_remove("IDLECUT_BASIC_AUTH_USER")
        .output()
        .expect("running idlecut");
    (output, started.elapsed())
}

/// The largest resident set of any child this process waited for, in bytes.
fn children_max_rss() -> usize {
    // SAFETY: getrusage only writes the struct it is given, which lives for the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    let status = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(status, 0, "getrusage: {}", std::io::Error::last_os_error());
    usize::try_from(usage.ru_maxrss).expect("a size") * 1024
}

fn assert_refused(output: &Output, took: Duration, endpoint: &str, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    assert!(stderr.starts_with("idlecut: error: "), "{stderr}");
    assert!(
        stderr.contains(endpoint),
        "does not name {endpoint}: {stderr}"
    );
    assert!(
        stderr.contains(expected),
        "does not say {expected:?}: {stderr}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}: {stderr}");
    // What the client holds is bounded by what it accepts (a few hundred MB read whole
    // would show here, twice over: the old client held 824 MB for a 400 MB answer).
    let rss = children_max_rss();
    assert!(
        rss < LIMIT + (160 << 20),
        "idlecut's resident set reached {rss} bytes"
    );
}

#[test]
fn idlecut_cuts_stops_reading_an_endless_answer_at_the_limit() {
    let (addr, server) = misbehaving(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n",
        512 << 20,
    );
    let (output, took) = run(&["cuts"], addr);
    let written = server.join().expect("the server thread");
    assert_refused(
        &output,
        took,
        "/api/v1/cuts",
        "is over 128 MiB, the most this client accepts",
    );
    assert!(
        written < LIMIT + (64 << 20),
        "the server wrote {written} bytes before idlecut hung up"
    );
}

#[test]
fn idlecut_connections_refuses_an_announced_answer_over_the_limit() {
    let (addr, server) = misbehaving(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 419430400\r\n\r\n",
        400 << 20,
    );
    let (output, took) = run(&["connections"], addr);
    let written = server.join().expect("the server thread");
    assert_refused(
        &output,
        took,
        "/api/v1/connections",
        "announced an answer of 419430400 bytes to /api/v1/connections, over 128 MiB",
    );
    assert!(
        written < LIMIT,
        "the server wrote {written} bytes before idlecut hung up"
    );
}
