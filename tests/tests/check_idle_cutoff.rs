//! `idlecut check` finds where a path cuts idle sessions: Dovecot (IMAP, 143) and Postfix
//! (Submission, 587) in the server namespace, the check run from the client namespace, the
//! router playing a middlebox whose conntrack forgets idle flows (silently, with a RST, with an
//! ICMP error). Times are scaled down: the router forgets idle flows after seconds, and
//! --max-idle is seconds too.
//!
//! The last test runs the same check from the agent, on its schedule (`[[check]]`), and
//! compares it with what the agent saw passively on the same path.
//!
//! Every test here makes traffic on mail ports that any agent on the host counts, and the
//! last one loads the BPF programs: run them under the BPF lock.

mod check_site;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpStream,
    thread,
    time::{Duration, Instant, SystemTime},
};

use check_site::{Site, detail, port_report, status};
use idlecut_integration_tests::{
    Agent, Netns, Scrape, Topology,
    mail::{self, Certificate, TempDir},
    require_root,
};
use serde_json::Value;

/// The router's idle timeout in the cutting scenarios; off the first round's grid (2.5 s
/// steps up to --max-idle 20s) so that no probe sits right on it.
const CUT_AFTER_S: f64 = 6.0;
/// Timer granularity allowed around it (conntrack's clock, the last ACK's delay).
const SLACK_S: f64 = 0.3;

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
    require_root();
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
    require_root();
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
