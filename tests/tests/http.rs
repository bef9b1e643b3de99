//! The agent's HTTP side against real clients: shutdown with a slow client, descriptor
//! exhaustion, bodies of the answers hyper and the router give on their own, a taken address;
//! then TLS and authentication (see the second half).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use idlecut_integration_tests::{
    Agent, agent_binary, http_get, require_root,
    web::{Launch, raw_exchange},
};

#[test]
fn a_half_sent_request_does_not_hold_up_shutdown() {
    if !require_root() {
        return;
    }
    let mut agent = Agent::start(&[]);
    // The head never ends, as `printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n'` held open.
    let mut slow = TcpStream::connect(agent.addr).expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    // And one keep-alive connection that has been served and waits for more.
    let mut idle = TcpStream::connect(agent.addr).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut answer = [0u8; 256];
    let n = idle.read(&mut answer).expect("answer");
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
    thread::sleep(Duration::from_millis(300));

    let (code, took) = agent
        .terminate(Duration::from_secs(8))
        .expect("the agent did not exit within 8 s of SIGTERM with a slow client connected");
    eprintln!("exit {code:?} after {took:?}");
    assert_eq!(code, Some(0), "exit code; log:\n{}", agent.log_text());
    assert!(
        took < Duration::from_secs(6),
        "exited after {took:?}: past the 5 s shutdown deadline"
    );
}

#[test]
fn a_client_that_never_finishes_its_request_is_closed() {
    if !require_root() {
        return;
    }
    let agent = Agent::start(&[]);
    let mut slow = TcpStream::connect(agent.addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    eprintln!("closed after {waited:?}: {read:?}");
    assert!(
        read.is_ok() && waited < Duration::from_secs(15),
        "the half-sent request was still open after {waited:?}: {read:?}"
    );
    assert!(
        waited >= Duration::from_secs(5),
        "closed after {waited:?}, sooner than a slow client deserves"
    );
}

/// Issue 11, item 2: systemd's default soft limit of 1024 and 1,100 idle connections starved
/// /healthz, /metrics and the kernel counter reads.
#[test]
fn eleven_hundred_idle_connections_leave_room_for_healthz_and_the_agents_own_work() {
    if !require_root() {
        return;
    }
    // The hard limit too: the agent cannot raise its way out, it must ration.
    let agent = Launch::new(&[]).open_files(1024, 1024).start();
    let limit = agent.limit("Max open files");
    assert!(limit.contains("1024"), "{limit}");
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match TcpStream::connect_timeout(&agent.addr, Duration::from_secs(2)) {
            Ok(stream) => idle.push(stream),
            Err(err) => panic!("connection {} refused: {err}", idle.len()),
        }
    }
    thread::sleep(Duration::from_millis(500));
    let descriptors = agent.open_descriptors();
    eprintln!("agent descriptors with 1100 idle clients: {descriptors}");
    assert!(
        descriptors < 1024 - 200,
        "{descriptors} descriptors open: the reserve for the agent's own work is gone"
    );
    let started = Instant::now();
    let (status, body) = http_get(agent.addr, "/healthz").expect("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(agent.addr, "/metrics").expect("/metrics");
    assert_eq!(status, 200, "{body}");
    eprintln!("/healthz and /metrics answered in {:?}", started.elapsed());
    // A scan (every 2 s in tests) runs meanwhile and must not fail for lack of descriptors.
    thread::sleep(Duration::from_secs(3));
    let log = agent.log_text();
    assert!(
        !log.contains("Too many open files") && !log.contains("os error 24"),
        "the agent ran out of descriptors:\n{log}"
    );
    drop(idle);
}

#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
    if !require_root() {
        return;
    }
    let agent = Launch::new(&[]).open_files(1024, 8192).start();
    let limit = agent.limit("Max open files");
    let fields: Vec<&str> = limit.split_whitespace().collect();
    assert_eq!(fields[3..5], ["8192", "8192"], "{limit}");
}

#[test]
fn answers_without_a_handler_say_what_was_wrong() {
    if !require_root() {
        return;
    }
    let agent = Agent::start(&[]);
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    let big_header = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(500_000)
    );
    for (request, status, says) in [
        (
            "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_owned(),
            404,
            "/metrics",
        ),
        (
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_owned(),
            405,
            "GET",
        ),
        (long_target, 414, "too long"),
        (big_header, 431, "too large"),
        ("NOT HTTP AT ALL\r\n\r\n".to_owned(), 400, "HTTP"),
    ] {
        let (got, head, body) =
            raw_exchange(agent.addr, request.as_bytes(), Duration::from_secs(5));
        eprintln!("{head}\n\n{body}");
        assert_eq!(got, status, "{}...: {head}", &request[..20]);
        assert!(body.contains(says), "{status} body {body:?}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
    }
}

/// Issue 11, item 6: a taken `--listen` address exited 1 and printed the error twice, in
/// plain text even with `--log-format json`.
#[test]
fn a_taken_address_exits_2_with_one_json_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = Command::new(agent_binary())
        .args(["--listen", &addr, "--log-format", "json"])
        .env("IDLECUT_LOG", "warn")
        .output()
        .expect("running idlecut");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let mentions: Vec<&str> = stderr.lines().filter(|line| line.contains(&addr)).collect();
    assert_eq!(
        mentions.len(),
        1,
        "the error is not printed exactly once:\n{stderr}"
    );
    let line: serde_json::Value = serde_json::from_str(mentions[0])
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", mentions[0]));
    assert_eq!(line["level"], "ERROR", "{line}");
    let message = line["fields"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("--listen") && message.contains("in use"),
        "{message}"
    );
}
