//! `idlecut check` against real servers: Dovecot (IMAP, 143) and Postfix (Submission, 587) in
//! the server namespace, the check run from the client namespace, the router playing the
//! middlebox of each scenario: none, one whose conntrack forgets idle flows (silently, with a
//! RST, with an ICMP error), a firewall that drops or rejects SYNs, a NAT that redirects
//! Submission to another server, a relay that strips STARTTLS. Times are scaled down: the
//! router forgets idle flows after seconds, and --max-idle is seconds too.
//!
//! The last test runs the same check from the agent, on its schedule (`[[check]]`), and
//! compares it with what the agent saw passively on the same path.
//!
//! Every test here makes traffic on mail ports that any agent on the host counts, and the
//! last one loads the BPF programs: run them under the BPF lock.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    thread,
    time::{Duration, Instant, SystemTime},
};

use idlecut_integration_tests::{
    Agent, Netns, Scrape, Topology,
    mail::{self, Certificate, CheckRun, Server, StripStarttls, TempDir},
    require_root,
};
use serde_json::Value;

/// The router's idle timeout in the cutting scenarios; off the first round's grid (2.5 s
/// steps up to --max-idle 20s) so that no probe sits right on it.
const CUT_AFTER_S: f64 = 6.0;
/// Timer granularity allowed around it (conntrack's clock, the last ACK's delay).
const SLACK_S: f64 = 0.3;
/// Short timeouts: every server here answers in milliseconds.
const FAST: [&str; 4] = ["--connect-timeout", "2s", "--answer-timeout", "2s"];

/// A topology with Dovecot and Postfix on the server, both with the same certificate.
struct Site {
    net: Topology,
    certs: TempDir,
    cert: Certificate,
    _imap: Server,
    _submission: Server,
}

impl Site {
    fn new() -> Self {
        Self::with_postfix("")
    }

    /// With `postfix_extra` lines in Postfix's main.cf.
    fn with_postfix(postfix_extra: &str) -> Self {
        let net = Topology::new();
        let certs = TempDir::new("certs");
        let cert = Certificate::generate(&certs, "mail.test");
        let (v4, v6) = (net.server_v4(), net.server_v6());
        let addresses = [v4.as_str(), v6.as_str()];
        let imap = mail::dovecot(&net.server, &addresses, &cert);
        let submission = mail::postfix(&net.server, &addresses, "mail.test", &cert, postfix_extra);
        Self {
            net,
            certs,
            cert,
            _imap: imap,
            _submission: submission,
        }
    }

    /// `idlecut check SERVER ARGS` from the client, with the short timeouts and the pinned
    /// certificate.
    fn check(&self, args: &[&str]) -> CheckRun {
        self.check_target(&self.net.server_v4(), args)
    }

    /// A credentials file for `idlecut check --credentials`: user `checker`, `password`.
    fn credentials(&self, password: &str) -> String {
        let path = self.certs.join(&format!("credentials-{password}"));
        std::fs::write(&path, format!("checker\n{password}\n")).expect("credentials file");
        path.to_str().expect("UTF-8 path").to_owned()
    }

    fn check_target(&self, target: &str, args: &[&str]) -> CheckRun {
        let mut all = vec![target, "--expect-cert", &self.cert.sha256];
        all.extend(FAST);
        all.extend(args);
        let run = mail::run_check(&self.net.client, &all);
        eprintln!(
            "idlecut check {}:\n{}\n{}",
            all.join(" "),
            run.stdout,
            run.stderr
        );
        run
    }
}

/// The row of `check` on `port` in a --json report.
fn row<'a>(report: &'a Value, port: u16, check: &str) -> &'a Value {
    report["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["port"] == port)
        .and_then(|p| {
            p["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .find(|r| r["check"] == check)
        })
        .unwrap_or_else(|| panic!("no {check} row for port {port} in {report:#}"))
}

fn status(report: &Value, port: u16, check: &str) -> String {
    row(report, port, check)["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn detail(report: &Value, port: u16, check: &str) -> String {
    row(report, port, check)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn port_report(report: &Value, port: u16) -> &Value {
    report["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["port"] == port)
        .unwrap_or_else(|| panic!("no port {port} in {report:#}"))
}

#[test]
fn a_compliant_path_passes_every_check() {
    if !require_root() {
        return;
    }
    let site = Site::new();
    let run = site.check(&[
        "--max-idle",
        "4s",
        "--precision",
        "1s",
        "--capability",
        "imap:IDLE",
        "--capability",
        "smtp:PIPELINING",
        "--json",
    ]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["result"], "pass", "{report:#}");
    for port in [143, 587] {
        for check in [
            "reachability",
            "identity",
            "extensions",
            "idle_cutoff",
            "keepalive",
        ] {
            assert_eq!(status(&report, port, check), "pass", "{check} on {port}");
        }
        let port = port_report(&report, port);
        assert_eq!(port["certificate"]["sha256"], site.cert.sha256.as_str());
        assert!(port["idle"]["cutoff_upper_seconds"].is_null(), "{port:#}");
        assert!(
            port["idle"]["cutoff_lower_seconds"].as_f64() >= Some(3.9),
            "{port:#}"
        );
        assert!(
            port["capabilities"]
                .as_array()
                .expect("capabilities")
                .contains(&Value::from("STARTTLS"))
        );
    }
    assert_eq!(port_report(&report, 143)["protocol"], "imap");
    assert_eq!(port_report(&report, 587)["protocol"], "smtp");
    // A wrong password: the idle sessions cannot log in, and the row says so.
    let credentials = site.credentials("wrong");
    let target = format!("{}:143", site.net.server_v4());
    let run = site.check_target(
        &target,
        &["--credentials", &credentials, "--max-idle", "2s", "--json"],
    );
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(status(&report, 143, "idle_cutoff"), "could_not_tell");
    let why = detail(&report, 143, "idle_cutoff");
    assert!(why.contains("LOGIN as checker failed"), "{why}");
    // The same over IPv6 (the SMTP session greets with an IPv6 address literal).
    let target = format!("[{}]", site.net.server_v6());
    let run = site.check_target(&target, &["--max-idle", "0s", "--json"]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    for port in [143, 587] {
        for check in ["reachability", "identity", "extensions"] {
            assert_eq!(status(&report, port, check), "pass", "{check} on [{port}]");
        }
    }
    drop(site.certs);
}

/// A site whose router forgets idle flows after `CUT_AFTER_S` and does `rule` with the
/// segments of a flow it forgot.
fn cutting_site(rule: &str) -> Site {
    let site = Site::new();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a whole, small number of seconds"
    )]
    site.net.router_conntrack(CUT_AFTER_S as u32, false);
    site.net.router_rules(rule);
    site
}

/// The cutting scenario `rule` on both ports, in JSON: the interval holds the router's
/// timeout, the signature is `signature`, the verdict and the keepalive advice hold.
fn cutting_scenario(rule: &str, signature: &str) {
    let site = cutting_site(rule);
    let run = site.check(&["--max-idle", "20s", "--precision", "1s", "--json"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    for port in [143_u16, 587] {
        assert_eq!(status(&report, port, "reachability"), "pass");
        assert_eq!(status(&report, port, "extensions"), "pass");
        assert_eq!(
            status(&report, port, "idle_cutoff"),
            "fail",
            "{}",
            detail(&report, port, "idle_cutoff")
        );
        let idle = &port_report(&report, port)["idle"];
        let lower = idle["cutoff_lower_seconds"].as_f64().expect("lower bound");
        let upper = idle["cutoff_upper_seconds"].as_f64().expect("upper bound");
        assert!(
            lower - SLACK_S < CUT_AFTER_S && CUT_AFTER_S <= upper + SLACK_S,
            "({lower}, {upper}] does not hold {CUT_AFTER_S} s on {port} ({rule})"
        );
        assert!(upper - lower <= 1.0 + 1e-6, "({lower}, {upper}]: precision");
        assert_eq!(idle["signature"], signature, "{idle:#}");
        assert_eq!(idle["verdict"], "violates_req5");
        assert!(
            idle["explanation"].as_str().is_some_and(
                |e| e.contains("below the 2h4m (7440 s) that RFC 5382 REQ-5 requires")
            ),
            "{idle:#}"
        );
        assert!(idle["connections"].as_u64() <= Some(32));
        // The recommended keepalive keeps a connection open past the cut-off.
        assert!(idle["recommended_keepalive_seconds"].as_f64() < Some(CUT_AFTER_S));
        assert_eq!(
            status(&report, port, "keepalive"),
            "pass",
            "{}",
            detail(&report, port, "keepalive")
        );
    }
}

/// The same for a person: the table names the cut-off, its signature and the verdict, and
/// progress goes to stderr while the search runs.
fn cutting_table() {
    let site = cutting_site("ct state invalid drop");
    let target = format!("{}:143", site.net.server_v4());
    let run = site.check_target(&target, &["--max-idle", "20s", "--precision", "1s"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    for expected in [
        "idle cut-off  FAIL",
        "(blackhole)",
        "violates_req5",
        "keepalive     pass",
        "4 passed, 1 failed, 0 could not tell",
    ] {
        assert!(
            run.stdout.contains(expected),
            "{expected:?} in\n{}",
            run.stdout
        );
    }
    assert!(
        run.stderr.contains("idle round 1"),
        "progress: {}",
        run.stderr
    );
}

/// IMAP sessions that log in first (a server allows them longer silences) find the same
/// cut-off, over TLS.
fn cutting_logged_in() {
    let site = cutting_site("ct state invalid reject with tcp reset");
    let credentials = site.credentials(mail::IMAP_PASSWORD);
    let target = format!("{}:143", site.net.server_v4());
    let run = site.check_target(
        &target,
        &[
            "--credentials",
            &credentials,
            "--max-idle",
            "20s",
            "--precision",
            "1s",
            "--json",
        ],
    );
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    let idle = &port_report(&report, 143)["idle"];
    assert_eq!(idle["session"], "logged_in", "{idle:#}");
    assert_eq!(idle["signature"], "reset", "{idle:#}");
    let lower = idle["cutoff_lower_seconds"].as_f64().expect("lower bound");
    let upper = idle["cutoff_upper_seconds"].as_f64().expect("upper bound");
    assert!(
        lower - SLACK_S < CUT_AFTER_S && CUT_AFTER_S <= upper + SLACK_S,
        "({lower}, {upper}] does not hold {CUT_AFTER_S} s"
    );
    assert!(run.stderr.contains("log in as checker"), "{}", run.stderr);
}

#[test]
fn idle_cutoffs_are_found_with_their_signature() {
    if !require_root() {
        return;
    }
    // Five middleboxes at once: the search takes as long as its longest silence, not CPU.
    let scenarios: [fn(); 5] = [
        || cutting_scenario("ct state invalid drop", "blackhole"),
        || cutting_scenario("ct state invalid reject with tcp reset", "reset"),
        || {
            cutting_scenario(
                "ct state invalid reject with icmpx type host-unreachable",
                "icmp",
            );
        },
        cutting_table,
        cutting_logged_in,
    ];
    let runs: Vec<_> = scenarios.into_iter().map(thread::spawn).collect();
    for run in runs {
        if let Err(panic) = run.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn refused_dropped_and_unreachable_ports_are_told_apart() {
    if !require_root() {
        return;
    }
    let site = Site::new();
    site.net.router_rules(
        "tcp dport 587 ct state new drop\n  \
         tcp dport 143 reject with icmpx type admin-prohibited\n  \
         tcp dport 110 reject with icmpx type port-unreachable",
    );
    // Nothing listens on 25: the server's own RST refuses it.
    let run = site.check(&[
        "--port",
        "25",
        "--port",
        "110",
        "--max-idle",
        "0s",
        "--json",
    ]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    for (port, words) in [
        (
            143,
            "an ICMP error answered the SYN: ICMP type 3 code 13 (communication administratively prohibited)",
        ),
        (587, "no answer to the SYN within 2 s"),
        (25, "refused: a RST answered the SYN"),
        (
            110,
            "an ICMP error answered the SYN: ICMP type 3 code 3 (port unreachable)",
        ),
    ] {
        assert_eq!(status(&report, port, "reachability"), "fail");
        let detail = detail(&report, port, "reachability");
        assert!(detail.contains(words), "{port}: {detail}");
    }
}

#[test]
fn a_router_that_redirects_submission_to_another_server_is_interception() {
    if !require_root() {
        return;
    }
    let site = Site::new();
    // The other server: another address on the server's link, another Postfix and certificate
    // (for the same name: only the fingerprint tells them apart).
    let k = site.net.k;
    let other = format!("10.{k}.2.3");
    site.net.server.exec(
        "ip",
        &["addr", "add", &format!("{other}/24"), "dev", "eth0"],
    );
    let other_certs = TempDir::new("certs");
    let other_cert = Certificate::generate(&other_certs, "mail.test");
    let _other = mail::postfix(
        &site.net.server,
        &[&other],
        "smtp.hotel.test",
        &other_cert,
        "",
    );
    // A first run, before the redirect, records the real server's certificates.
    let known = site.certs.join("known-certs.json");
    let known = known.to_str().expect("UTF-8 path");
    let server = site.net.server_v4();
    let tofu = [
        server.as_str(),
        "--known-certs",
        known,
        "--max-idle",
        "0s",
        "--json",
    ];
    let run = mail::run_check(&site.net.client, &tofu);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    for port in [143, 587] {
        let why = detail(&report, port, "identity");
        assert!(why.contains("recorded in"), "{why}");
    }
    let recorded = std::fs::read_to_string(known).expect("the record");
    assert!(recorded.contains(&site.cert.sha256), "{recorded}");
    site.net.router.nft(&format!(
        "table ip nat {{\n chain prerouting {{\n  type nat hook prerouting priority dstnat; policy accept;\n  ip daddr {} tcp dport 587 dnat to {other}\n }}\n}}\n",
        site.net.server_v4()
    ));
    let run = site.check(&["--max-idle", "0s", "--json"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(status(&report, 143, "identity"), "pass");
    assert_eq!(status(&report, 587, "identity"), "fail");
    let why = detail(&report, 587, "identity");
    assert!(why.contains("interception"), "{why}");
    assert!(why.contains(&other_cert.sha256), "{why}");
    // The record of the first run catches it too, without --expect-cert.
    let run = mail::run_check(&site.net.client, &tofu);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(status(&report, 143, "identity"), "pass");
    let why = detail(&report, 587, "identity");
    assert!(
        why.contains("not the one recorded on an earlier run") && why.contains("interception"),
        "{why}"
    );
    // Without a pinned certificate, the greeting can give it away too.
    let run = mail::run_check(
        &site.net.client,
        &[
            &format!("{}:587", site.net.server_v4()),
            "--expect-greeting",
            "mail.test",
            "--max-idle",
            "0s",
            "--json",
        ],
    );
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["ports"].as_array().map(Vec::len), Some(1));
    let why = detail(&report, 587, "identity");
    assert!(
        why.contains("the greeting lacks \"mail.test\"") && why.contains("interception"),
        "{why}"
    );
}

#[test]
fn a_relay_that_strips_starttls_is_caught() {
    if !require_root() {
        return;
    }
    let site = Site::new();
    let server = site.net.server_v4();
    let _imap_relay =
        StripStarttls::start(&site.net.router, "0.0.0.0:10143", &format!("{server}:143"));
    let _submission_relay =
        StripStarttls::start(&site.net.router, "0.0.0.0:10587", &format!("{server}:587"));
    site.net.router.nft(&format!(
        "table ip nat {{\n chain prerouting {{\n  type nat hook prerouting priority dstnat; policy accept;\n  ip daddr {server} tcp dport 143 redirect to :10143\n  ip daddr {server} tcp dport 587 redirect to :10587\n }}\n}}\n"
    ));
    let run = site.check(&["--max-idle", "0s", "--json"]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    for port in [143, 587] {
        assert_eq!(status(&report, port, "reachability"), "pass");
        // The relay passes TLS through: the certificate is still the server's.
        assert_eq!(status(&report, port, "identity"), "pass");
        assert_eq!(status(&report, port, "extensions"), "fail");
        let detail = detail(&report, port, "extensions");
        assert!(
            detail.contains("STARTTLS is missing") && detail.contains("strips it"),
            "{port}: {detail}"
        );
    }
}

#[test]
fn a_server_that_ends_silent_sessions_itself_is_not_blamed_on_the_path() {
    if !require_root() {
        return;
    }
    // Postfix hangs up on a client silent for 3 s (421 ... timeout exceeded): that silence is
    // the longest this server lets anyone test, and the path is not at fault.
    let site = Site::with_postfix("smtpd_timeout = 3s");
    let target = format!("{}:587", site.net.server_v4());
    let run = site.check_target(
        &target,
        &["--max-idle", "8s", "--precision", "1s", "--json"],
    );
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["result"], "could_not_tell");
    assert_eq!(status(&report, 587, "idle_cutoff"), "could_not_tell");
    let why = detail(&report, 587, "idle_cutoff");
    assert!(
        why.contains("the server itself ends sessions silent for about"),
        "{why}"
    );
    let idle = &port_report(&report, 587)["idle"];
    let limit = idle["server_idle_limit_seconds"].as_f64().expect("limit");
    assert!((2.5..4.0).contains(&limit), "{idle:#}");
    assert!(idle["cutoff_upper_seconds"].is_null(), "{idle:#}");
    assert_eq!(status(&report, 587, "keepalive"), "could_not_tell");
}

/// An IMAP session from `ns`: greeted, silent for `silence`, then NOOP. Whether the NOOP was
/// answered (else the path cut the session).
fn imap_session_answers_after(ns: &Netns, server: &str, silence: Duration) -> bool {
    let server = format!("{server}:143");
    let stream = ns.run(move || TcpStream::connect(&server).expect("connecting to Dovecot"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("the greeting");
    assert!(line.starts_with("* OK"), "greeting: {line}");
    thread::sleep(silence);
    let mut writer = stream;
    if writer.write_all(b"a NOOP\r\n").is_err() {
        return false;
    }
    line.clear();
    reader
        .read_line(&mut line)
        .is_ok_and(|_| line.starts_with("a OK"))
}

/// Waits up to `patience` for `done` to hold for a scrape of the agent, and returns it.
fn wait_for_scrape(
    agent: &Agent,
    patience: Duration,
    what: &str,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + patience;
    loop {
        let scrape = agent.scrape();
        if done(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last scrape:\n{}\nagent log:\n{}",
            scrape.text,
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// The metric names the dashboard's panels about scheduled checks query.
fn dashboard_check_metrics() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dashboards/grafana/idlecut-overview.json"
    );
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let mut names: Vec<String> = text
        .match_indices("idlecut_check_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_agent_runs_a_scheduled_check_and_compares_it_with_the_passive_estimate() {
    if !require_root() {
        return;
    }
    // The router forgets idle flows after 6 s and answers what comes later with a RST (an
    // AWS NAT Gateway, scaled down). The agent runs in this host's namespace, joined to the
    // router as a second client: its check crosses the same middlebox as the client's
    // sessions, on the same path (imap, client, the server's /24).
    let net = Topology::new();
    let certs = TempDir::new("certs");
    let cert = Certificate::generate(&certs, "mail.test");
    let server = net.server_v4();
    let _imap = mail::dovecot(&net.server, &[&server], &cert);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a whole, small number of seconds"
    )]
    net.router_conntrack(CUT_AFTER_S as u32, false);
    net.router_rules("ct state invalid reject with tcp reset");
    let _host = net.attach_host();
    let target = format!("{server}:143");
    let config = certs.join("idlecut.toml");
    std::fs::write(
        &config,
        format!(
            "[[check]]\ntarget = \"{target}\"\nevery = \"1m\"\nmax_idle = \"20s\"\n\
             precision = \"1s\"\nexpect_cert = \"{}\"\nconnect_timeout = \"2s\"\n\
             answer_timeout = \"2s\"\n",
            cert.sha256
        ),
    )
    .expect("config file");
    let config = config.to_str().expect("UTF-8 path");
    let mut agent = Agent::start(&["--config", config, "--min-idle-gap", "1s"]);
    let started = SystemTime::now();

    // Meanwhile, the client's own IMAP sessions: two silences the path lets through, two it
    // cuts. These are what the agent sees passively.
    thread::scope(|scope| {
        let sessions: Vec<_> = [2, 2, 9, 9]
            .into_iter()
            .map(|seconds| {
                let (client, server) = (&net.client, &server);
                scope.spawn(move || {
                    let silence = Duration::from_secs(seconds);
                    (seconds, imap_session_answers_after(client, server, silence))
                })
            })
            .collect();
        for session in sessions {
            let (seconds, answered) = session.join().expect("a session");
            assert_eq!(answered, seconds < 6, "a session silent for {seconds} s");
        }
    });

    // The check's first run starts 5 s after the agent, and its search lasts about 30 s.
    let labels = [("target", target.as_str())];
    let scrape = wait_for_scrape(
        &agent,
        Duration::from_secs(120),
        "the scheduled check's first run",
        |scrape| scrape.value("idlecut_check_runs_total", &[labels[0], ("result", "fail")]) == 1.0,
    );
    eprintln!(
        "check metrics:\n{}",
        scrape
            .text
            .lines()
            .filter(|line| line.starts_with("idlecut_check_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let port = [labels[0], ("port", "143")];
    let status = |check: &str| {
        scrape.value(
            "idlecut_check_status",
            &[port[0], port[1], ("check", check)],
        )
    };
    assert_eq!(status("reachability"), 1.0, "{}", scrape.text);
    assert_eq!(status("identity"), 1.0, "the pinned certificate");
    assert_eq!(status("extensions"), 1.0);
    assert_eq!(status("idle_cutoff"), 0.0, "the path cuts after 6 s");
    assert_eq!(
        status("keepalive"),
        1.0,
        "keepalive at the advice keeps it open"
    );
    let lower = scrape.value("idlecut_check_cutoff_lower_seconds", &port);
    let upper = scrape.value("idlecut_check_cutoff_upper_seconds", &port);
    assert!(
        lower - SLACK_S < CUT_AFTER_S
            && CUT_AFTER_S <= upper + SLACK_S
            && upper - lower <= 1.0 + 1e-6,
        "({lower}, {upper}] does not hold the router's {CUT_AFTER_S} s to 1 s"
    );
    for result in ["pass", "could_not_tell", "error"] {
        assert_eq!(
            scrape.value("idlecut_check_runs_total", &[labels[0], ("result", result)]),
            0.0,
            "{result}"
        );
    }
    let ended = scrape.value("idlecut_check_last_run_timestamp_seconds", &labels);
    let since_start = started
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        ended > since_start && ended < since_start + 120.0,
        "last run at {ended}"
    );
    let took = scrape.value("idlecut_check_duration_seconds", &labels);
    assert!((CUT_AFTER_S..120.0).contains(&took), "took {took} s");
    // The dashboard's check panels query series the agent exports.
    let names = dashboard_check_metrics();
    assert!(names.len() >= 3, "{names:?}");
    for name in names {
        assert!(
            scrape
                .text
                .lines()
                .any(|line| line.starts_with(&format!("{name}{{"))),
            "the dashboard queries {name}, which the agent does not export"
        );
    }

    // The passive view of the same path is made of the client's four sessions only: the
    // check's own connections are left out, so that it cannot confirm itself.
    let path = net.server_path_v4();
    let report = agent.wait_for_path("imap", "client", &path, "the check's comparison", |r| {
        r["active_checks"][0]["agreement"] == "confirms"
    });
    eprintln!("path report: {report:#}");
    let scrape = agent.scrape();
    let client_path = [
        ("service", "imap"),
        ("role", "client"),
        ("path", path.as_str()),
    ];
    assert_eq!(
        scrape.value("idlecut_connections_opened_total", &client_path),
        4.0,
        "{}",
        scrape.text
    );
    assert_eq!(
        report["cuts"]["reset"], 2,
        "the two sessions silent for 9 s"
    );
    assert_eq!(report["survived_gaps"], 2, "{report:#}");
    let passive_lower = report["cutoff_lower_seconds"]
        .as_f64()
        .expect("passive lower");
    let passive_upper = report["cutoff_upper_seconds"]
        .as_f64()
        .expect("passive upper");
    assert!(
        passive_lower - SLACK_S < CUT_AFTER_S && CUT_AFTER_S <= passive_upper + SLACK_S,
        "passive ({passive_lower}, {passive_upper}]"
    );
    assert_eq!(report["verdict"], "violates_req5");
    let active = &report["active_checks"][0];
    assert_eq!(active["target"], target.as_str());
    assert_eq!(active["port"], 143);
    assert_eq!(active["address"], server.as_str());
    assert_eq!(active["status"], "fail");
    assert_eq!(active["signature"], "reset");
    assert_eq!(active["verdict"], "violates_req5");
    assert_eq!(active["cutoff_lower_seconds"].as_f64(), Some(lower));
    assert_eq!(active["cutoff_upper_seconds"].as_f64(), Some(upper));
    let sentence = active["explanation"].as_str().expect("explanation");
    assert!(
        sentence.starts_with(&format!(
            "The scheduled check of {target} (port 143) found the cut-off between"
        )) && sentence.contains("(reset), which confirms the passive estimate (between"),
        "{sentence}"
    );
    assert!(
        report["explanation"]
            .as_str()
            .is_some_and(|e| e.ends_with(sentence)),
        "{report:#}"
    );
    // Only the checked path carries it.
    for other in agent.paths() {
        if other["path"] != path.as_str() || other["role"] != "client" {
            assert_eq!(
                other["active_checks"],
                Value::Array(Vec::new()),
                "{other:#}"
            );
        }
    }
    // The scheduler stops with the agent, at once.
    assert!(
        agent.stops_within(Duration::from_secs(5)),
        "the agent did not stop within 5 s:\n{}",
        agent.log_text()
    );
}
