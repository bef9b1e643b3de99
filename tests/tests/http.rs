//! The agent's HTTP side against real clients: shutdown with a slow client, descriptor
//! exhaustion, bodies of the answers hyper and the router give on their own, a taken address;
//! then TLS and authentication (see the second half).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use idlecut_integration_tests::{
    Agent, agent_binary, http_get, require_root,
    web::{Launch, TestPki, WebClient, raw_exchange},
};
use rcgen::ExtendedKeyUsagePurpose;

#[test]
fn a_half_sent_request_does_not_hold_up_shutdown() {
    require_root();
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
fn clients_that_never_finish_a_request_or_idle_after_one_are_closed() {
    require_root();
    let agent = Agent::start(&[]);
    // One client sends half a request; another was served and keeps its connection open
    // without asking more (idle keep-alive). Both must be closed, in 10 s (the header timeout).
    let mut slow = TcpStream::connect(agent.addr).expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    let mut idle = TcpStream::connect(agent.addr).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let started = Instant::now();
    for (what, mut stream) in [("half-sent request", slow), ("idle keep-alive", idle)] {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        let waited = started.elapsed();
        eprintln!("{what} closed after {waited:?}: {read:?}");
        assert!(
            read.is_ok() && waited < Duration::from_secs(15),
            "the {what} was still open after {waited:?}: {read:?}"
        );
        assert!(
            waited >= Duration::from_secs(5),
            "{what} closed after {waited:?}, sooner than a slow client deserves"
        );
    }
}

/// Issue 11, item 2: systemd's default soft limit of 1024 and 1,100 idle connections starved
/// /healthz, /metrics and the kernel counter reads.
#[test]
fn eleven_hundred_idle_connections_leave_room_for_healthz_and_the_agents_own_work() {
    require_root();
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
    require_root();
    let agent = Launch::new(&[]).open_files(1024, 8192).start();
    let limit = agent.limit("Max open files");
    let fields: Vec<&str> = limit.split_whitespace().collect();
    assert_eq!(fields[3..5], ["8192", "8192"], "{limit}");
}

#[test]
fn answers_without_a_handler_say_what_was_wrong() {
    require_root();
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

// TLS and authentication (issue 14).

const TOKEN: &str = "4f1c0ffee-idlecut-test-token";
const PASSWORD: &str = "correct horse battery staple";

/// The endpoints that need credentials once they are configured (an unknown path too: it must
/// not tell what exists).
const PROTECTED: [&str; 7] = [
    "/metrics",
    "/api/v1/paths",
    "/api/v1/connections",
    "/api/v1/connections?limit=1",
    "/api/v1/cuts",
    "/api/v1/cuts?origin=path",
    "/nowhere",
];

/// A web config with TLS, a bearer token and a basic-auth user (bcrypt, cost 4 for speed).
fn tls_token_and_basic(pki: &TestPki) -> PathBuf {
    pki.write("token", &format!("{TOKEN}\n"));
    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
    pki.write(
        "web.toml",
        &format!(
            "bearer_token_file = \"token\"\n\
             [tls_server_config]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\n\
             [basic_auth_users]\nprometheus = \"{hash}\"\n"
        ),
    )
}

#[test]
fn every_endpoint_but_healthz_needs_credentials() {
    require_root();
    let pki = TestPki::new("web-auth");
    let config = tls_token_and_basic(&pki);
    let good = pki.client().bearer(TOKEN);
    let agent = Launch::new(&["--web-config", config.to_str().expect("utf-8")])
        .client(good.clone())
        .start();
    let anonymous = pki.client();
    // (what, client, whether it is a basic-auth guess, which may be throttled)
    let wrong = [
        ("no credentials", anonymous.clone(), false),
        (
            "a wrong token",
            pki.client().bearer("4f1c0ffee-idlecut-test-tokem"),
            false,
        ),
        ("an empty token", pki.client().bearer(""), false),
        (
            "a wrong password",
            pki.client().basic("prometheus", "correct horse"),
            true,
        ),
        (
            "an unknown user",
            pki.client().basic("grafana", PASSWORD),
            true,
        ),
        (
            "the token as a password",
            pki.client().basic("prometheus", TOKEN),
            true,
        ),
    ];
    let mut bodies = std::collections::BTreeSet::new();
    let mut throttled = 0;
    for path in PROTECTED {
        // The good credentials first: a password once verified is remembered, and gets in
        // even while this address is throttled for its wrong guesses below.
        let expected = if path == "/nowhere" { 404 } else { 200 };
        for (what, client) in [
            ("the token", good.clone()),
            ("the password", pki.client().basic("prometheus", PASSWORD)),
        ] {
            let (status, body) = client.get(agent.addr, path).expect("GET");
            assert_eq!(status, expected, "{path} with {what}: {body}");
        }
        for (what, client, guess) in &wrong {
            let (status, body) = client.get(agent.addr, path).expect("GET");
            if *guess && status == 429 {
                // A guess soon after another from this address: not checked at all.
                assert!(body.contains("retry in"), "{path} with {what}: {body}");
                throttled += 1;
                continue;
            }
            assert_eq!(status, 401, "{path} with {what}: {body}");
            bodies.insert(body);
        }
    }
    assert!(
        throttled > 0,
        "quick wrong passwords from one address are throttled"
    );
    assert_eq!(bodies.len(), 1, "401 answers differ: {bodies:?}");
    eprintln!("401 body: {bodies:?}");
    let (status, body) = anonymous.get(agent.addr, "/healthz").expect("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // Plain HTTP to the TLS port gets no answer.
    let plain = WebClient::plain().bearer(TOKEN).get(agent.addr, "/metrics");
    assert!(
        plain.as_ref().map_or(true, |(status, _)| *status == 0),
        "plain HTTP was answered: {plain:?}"
    );
    // The harness scrapes through `good`.
    assert!(agent.scrape().text.contains("idlecut_build_info"));
}

#[test]
fn client_certificates_from_another_ca_are_refused() {
    require_root();
    let pki = TestPki::new("web-mtls");
    let ca = pki.path("ca.pem");
    let with = |name: &str| {
        WebClient::tls(
            &ca,
            "idlecut.test",
            Some((
                &pki.path(&format!("{name}.pem")),
                &pki.path(&format!("{name}.key")),
            )),
        )
    };
    // Required: the handshake itself refuses.
    let config = pki.write(
        "web.toml",
        "[tls_server_config]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\nclient_ca_file = \"ca.pem\"\n",
    );
    let agent = Launch::new(&["--web-config", config.to_str().expect("utf-8")])
        .client(with("client"))
        .start();
    let (status, _) = with("client").get(agent.addr, "/metrics").expect("GET");
    assert_eq!(status, 200);
    for (what, client) in [
        ("another CA's certificate", with("other-client")),
        ("no certificate", pki.client()),
    ] {
        let refused = client.get(agent.addr, "/metrics");
        assert!(refused.is_err(), "{what}: {refused:?}");
        eprintln!(
            "{what}: {}",
            refused.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
    drop(agent);

    // Optional: /healthz without one, 401 for the rest; another CA's is still refused.
    pki.write(
        "web.toml",
        "[tls_server_config]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\nclient_ca_file = \"ca.pem\"\nclient_auth_type = \"VerifyClientCertIfGiven\"\n",
    );
    let agent = Launch::new(&["--web-config", config.to_str().expect("utf-8")])
        .client(with("client"))
        .start();
    let anonymous = pki.client();
    assert_eq!(anonymous.get(agent.addr, "/healthz").expect("GET").0, 200);
    assert_eq!(anonymous.get(agent.addr, "/metrics").expect("GET").0, 401);
    assert_eq!(
        with("client")
            .get(agent.addr, "/api/v1/paths")
            .expect("GET")
            .0,
        200
    );
    assert!(with("other-client").get(agent.addr, "/healthz").is_err());
}

#[test]
fn replaced_certificate_files_are_used_without_a_restart() {
    require_root();
    let pki = TestPki::new("web-reload");
    let config = tls_token_and_basic(&pki);
    let client = pki.client().bearer(TOKEN);
    let agent = Launch::new(&["--web-config", config.to_str().expect("utf-8")])
        .client(client.clone())
        .start();
    let first = client.server_certificate(agent.addr).expect("handshake");
    assert_eq!(
        first,
        std::fs::read(pki.path("server.pem"))
            .map(|pem| pem_der(&pem))
            .expect("server.pem")
    );
    // A renewal, as cert-manager or certbot would write it.
    let renewed = pki.issue(
        "server",
        &["idlecut.test", "127.0.0.1", "renewed.idlecut.test"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    assert_ne!(first, renewed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = client.server_certificate(agent.addr).expect("handshake");
        if served == renewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served within 10 s:\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(200));
    }
    // So is a new token.
    pki.write("token", "a-new-token\n");
    thread::sleep(Duration::from_millis(1500));
    let renewed_token = pki.client().bearer("a-new-token");
    let deadline = Instant::now() + Duration::from_secs(5);
    while renewed_token.get(agent.addr, "/metrics").expect("GET").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the new token was not accepted:\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(200));
    }
    // A broken replacement is refused, and the last good one stays.
    pki.write("server.key", "not a key\n");
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        client.server_certificate(agent.addr).expect("handshake"),
        renewed
    );
    assert_eq!(
        renewed_token.get(agent.addr, "/metrics").expect("GET").0,
        200
    );
    let log = agent.log_text();
    assert!(log.contains("keeping the previous web settings"), "{log}");
}

/// The DER of the first certificate of a PEM file.
fn pem_der(pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    CertificateDer::from_pem_slice(pem)
        .expect("a PEM certificate")
        .to_vec()
}

#[test]
fn bad_web_configs_stop_the_start_with_exit_2_and_say_why() {
    let pki = TestPki::new("web-bad");
    pki.write("empty-token", "\n");
    let tls = |cert: &str, key: &str| {
        format!("[tls_server_config]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n")
    };
    for (name, config, says) in [
        (
            "missing-cert",
            tls("nowhere.pem", "server.key"),
            "nowhere.pem",
        ),
        (
            "missing-key",
            tls("server.pem", "nowhere.key"),
            "nowhere.key",
        ),
        (
            "foreign-key",
            tls("server.pem", "client.key"),
            "does not belong to the certificate",
        ),
        (
            "key-as-cert",
            tls("server.key", "server.key"),
            "no PEM certificate",
        ),
        (
            "bad-hash",
            "[basic_auth_users]\nprometheus = \"$2y$10$tooshort\"\n".to_owned(),
            "not a bcrypt hash",
        ),
        (
            "bang-hash",
            format!(
                "[basic_auth_users]\nprometheus = \"$2y$10${}\"\n",
                "!".repeat(53)
            ),
            "`prometheus`",
        ),
        (
            "cost-99",
            "[basic_auth_users]\nprometheus = \"$2y$99$3KnqDgvXhi7MvHLRWTbUeuQsz8Ypk9nlJIvX3gW.xKGBhbT3.ZU1a\"\n"
                .to_owned(),
            "of cost 99, outside 4..=17",
        ),
        (
            "empty-token",
            "bearer_token_file = \"empty-token\"\n".to_owned(),
            "is empty",
        ),
        (
            "missing-token",
            "bearer_token_file = \"no-token\"\n".to_owned(),
            // Not the path: an operator may have written the token itself there.
            "bearer_token_file: cannot read the file it names",
        ),
        (
            "typo",
            "bearer_token_flie = \"token\"\n".to_owned(),
            "unknown field `bearer_token_flie`",
        ),
        (
            "ca-without-file",
            format!(
                "{}client_auth_type = \"VerifyClientCertIfGiven\"\n",
                tls("server.pem", "server.key")
            ),
            "needs client_ca_file",
        ),
    ] {
        let config = pki.write(&format!("{name}.toml"), &config);
        let output = Command::new(agent_binary())
            .args([
                "--listen",
                "127.0.0.1:1",
                "--web-config",
                config.to_str().expect("utf-8"),
            ])
            .output()
            .expect("running idlecut");
        let stderr = String::from_utf8_lossy(&output.stderr);
        eprintln!("{name}: {}", stderr.trim());
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains(says), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{name}.toml")),
            "{name} does not name the file: {stderr}"
        );
    }
}

#[test]
fn without_authentication_the_api_follows_unauthenticated_api() {
    require_root();
    // Default: loopback clients (the tests) get the API; `nowhere` closes it, /metrics stays.
    let agent = Agent::start(&[]);
    assert_eq!(
        http_get(agent.addr, "/api/v1/connections").expect("GET").0,
        200
    );
    drop(agent);
    let pki = TestPki::new("web-api");
    let config = pki.write("web.toml", "unauthenticated_api = \"nowhere\"\n");
    let agent = Agent::start(&["--web-config", config.to_str().expect("utf-8")]);
    for path in ["/api/v1/connections", "/api/v1/paths"] {
        let (status, body) = http_get(agent.addr, path).expect("GET");
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("unauthenticated_api"), "{body}");
    }
    assert_eq!(http_get(agent.addr, "/metrics").expect("GET").0, 200);
}

#[test]
fn idlecut_connections_talks_tls_with_credentials_from_the_environment() {
    require_root();
    let pki = TestPki::new("web-cli");
    let config = tls_token_and_basic(&pki);
    let agent = Launch::new(&["--web-config", config.to_str().expect("utf-8")])
        .client(pki.client().bearer(TOKEN))
        .start();
    let url = format!("https://{}", agent.addr);
    let run = |env: &[(&str, &str)]| {
        let mut command = Command::new(agent_binary());
        command
            .args([
                "connections",
                "--agent",
                &url,
                "--tls-server-name",
                "idlecut.test",
            ])
            .env("IDLECUT_CA_FILE", pki.path("ca.pem"));
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("running idlecut connections");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let token_file = pki.path("token");
    for env in [
        &[(
            "IDLECUT_BEARER_TOKEN_FILE",
            token_file.to_str().expect("utf-8"),
        )][..],
        &[("IDLECUT_BEARER_TOKEN", TOKEN)][..],
        &[
            ("IDLECUT_BASIC_AUTH_USER", "prometheus"),
            ("IDLECUT_BASIC_AUTH_PASSWORD", PASSWORD),
        ][..],
    ] {
        let (code, stdout, stderr) = run(env);
        assert_eq!(code, Some(0), "{env:?}: {stderr}");
        assert!(stdout.contains("REMOTE"), "{stdout}");
    }
    let (code, _, stderr) = run(&[("IDLECUT_BEARER_TOKEN", "wrong")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    eprintln!("wrong token: {}", stderr.trim());
}
