//! The cut scripts of the cut scenarios (`cuts.rs`, `reset_origin.rs`): the router namespace
//! plays real middleboxes (`docs/middleboxes.md`), scaled down in time, and the checks that a
//! report and the metrics say the path cuts after idle (signature, role, and a cut-off interval
//! that contains the router's real timeout).
//!
//! The router's conntrack forgets an idle flow after `TIMEOUT_S` seconds. Connections are
//! first all opened (one at a time, so that each accept gets its own connect), then run their
//! scripts concurrently: a silence of a chosen length, then one side speaks.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    thread,
    time::Duration,
};

use idlecut_integration_tests::{
    Agent, Netns, Scrape, Topology, abort, close_gracefully, connect, exchange, set_user_timeout,
};
use serde_json::Value;

/// The middlebox's idle timeout.
pub const TIMEOUT_S: u32 = 3;
/// Silences the path lets through, and silences it cuts.
pub const SHORT_GAPS_MS: [u64; 2] = [1500, 2000];
pub const LONG_GAPS_MS: [u64; 2] = [4500, 5000];
/// How long a black-holed sender retransmits before its kernel gives up.
pub const USER_TIMEOUT_MS: u32 = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    Client,
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The other side hears it, the connection goes on (then closes with FIN).
    Answered,
    /// The speaker's connection dies: RST, ICMP errors or retransmissions into nothing.
    Cut,
}

pub struct Script {
    gap_ms: u64,
    speaker: Speaker,
    expect: Expect,
}

pub fn script(gap_ms: u64, speaker: Speaker, expect: Expect) -> Script {
    Script {
        gap_ms,
        speaker,
        expect,
    }
}

/// Opens one connection per script (one after the other), then runs the scripts at once.
pub fn run_scripts(
    client_ns: &Netns,
    target: &str,
    port_listener: &std::net::TcpListener,
    scripts: Vec<Script>,
) {
    let pairs: Vec<(TcpStream, TcpStream, Script)> = scripts
        .into_iter()
        .map(|script| {
            let (mut client, mut server) = connect(client_ns, port_listener, target);
            set_user_timeout(&client, USER_TIMEOUT_MS);
            set_user_timeout(&server, USER_TIMEOUT_MS);
            exchange(&mut client, &mut server);
            (client, server, script)
        })
        .collect();
    let threads: Vec<_> = pairs
        .into_iter()
        .map(|(client, server, script)| thread::spawn(move || play(client, server, &script)))
        .collect();
    for thread in threads {
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    }
}

fn play(mut client: TcpStream, mut server: TcpStream, script: &Script) {
    thread::sleep(Duration::from_millis(script.gap_ms));
    let (speaker, listener) = match script.speaker {
        Speaker::Client => (&mut client, &mut server),
        Speaker::Server => (&mut server, &mut client),
    };
    speaker
        .write_all(b"* OK Still here\r\n")
        .expect("the write itself is accepted locally");
    let mut buf = [0u8; 64];
    match script.expect {
        Expect::Answered => {
            let n = listener.read(&mut buf).expect("the other side hears it");
            assert_eq!(&buf[..n], b"* OK Still here\r\n");
            // The answer (its ACK at least) reaches the speaker before the next script step.
            thread::sleep(Duration::from_millis(100));
            close_gracefully(client, server);
        }
        Expect::Cut => {
            speaker
                .set_read_timeout(Some(Duration::from_secs(15)))
                .expect("read timeout");
            let result = speaker.read(&mut buf);
            assert!(
                result.is_err(),
                "{:?} after {} ms: expected the connection to die, read {result:?}",
                script.speaker,
                script.gap_ms
            );
            // The other end is half-open: abort it so it does not linger.
            abort(client);
            abort(server);
        }
    }
}

/// Both roles: short silences survived, long ones cut, each side speaking first in turn.
pub fn both_roles() -> Vec<Script> {
    let mut scripts = Vec::new();
    for speaker in [Speaker::Client, Speaker::Server] {
        for gap in SHORT_GAPS_MS {
            scripts.push(script(gap, speaker, Expect::Answered));
        }
        for gap in LONG_GAPS_MS {
            scripts.push(script(gap, speaker, Expect::Cut));
        }
    }
    scripts
}

pub fn number(report: &Value, field: &str) -> Option<f64> {
    report[field].as_f64()
}

/// The report says the path cuts after idle: `cuts` of `signature`, an interval around the
/// router's timeout, and a REQ-5 violation.
pub fn assert_cut_path(
    agent: &Agent,
    service: &str,
    role: &str,
    path: &str,
    signature: &str,
    cuts: u64,
) -> Value {
    let report = agent.wait_for_path(
        service,
        role,
        path,
        &format!("{cuts} {signature} cuts"),
        |r| r["cuts"][signature].as_u64() == Some(cuts),
    );
    let (lower, upper) = (
        number(&report, "cutoff_lower_seconds"),
        number(&report, "cutoff_upper_seconds"),
    );
    let timeout = f64::from(TIMEOUT_S);
    assert!(
        lower.is_some_and(|l| l < timeout) && upper.is_some_and(|u| u >= timeout),
        "cut-off ({lower:?}, {upper:?}] does not contain the router's {timeout} s: {report:#}"
    );
    assert_eq!(report["verdict"], "violates_req5", "{report:#}");
    assert_eq!(
        report["cuts"]["reset"].as_u64().unwrap_or(0)
            + report["cuts"]["blackhole"].as_u64().unwrap_or(0)
            + report["cuts"]["icmp"].as_u64().unwrap_or(0),
        cuts,
        "only {signature} cuts: {report:#}"
    );
    let explanation = report["explanation"].as_str().unwrap_or_default();
    assert!(explanation.contains("RFC 5382 REQ-5"), "{explanation}");
    report
}

pub fn assert_cut_metrics(
    scrape: &Scrape,
    service: &str,
    role: &str,
    path: &str,
    signature: &str,
    cuts: f64,
) {
    let labels = [
        ("service", service),
        ("role", role),
        ("path", path),
        ("signature", signature),
    ];
    assert_eq!(
        scrape.value("idlecut_cuts_total", &labels),
        cuts,
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.value("idlecut_idle_before_cut_seconds_count", &labels),
        cuts
    );
    let path_labels = [("service", service), ("role", role), ("path", path)];
    assert_eq!(
        scrape.get("idlecut_path_req5_violation", &path_labels),
        Some(1.0)
    );
    let lower = scrape
        .get("idlecut_path_cutoff_lower_seconds", &path_labels)
        .expect("lower bound");
    let upper = scrape
        .get("idlecut_path_cutoff_upper_seconds", &path_labels)
        .expect("upper bound");
    assert!(
        lower < f64::from(TIMEOUT_S) && upper >= f64::from(TIMEOUT_S),
        "({lower}, {upper}]"
    );
}

pub fn start_agent() -> Agent {
    Agent::start(&["--min-idle-gap", "1s"])
}

/// A router whose conntrack forgets idle flows after `TIMEOUT_S` (no loose pick-up), with
/// `rules` deciding what happens to the segments that then no longer match a flow.
pub fn expiring_middlebox(rules: &str) -> (Topology, Agent) {
    let net = Topology::new();
    net.router_conntrack(TIMEOUT_S, false);
    net.router_rules(rules);
    let agent = start_agent();
    (net, agent)
}
