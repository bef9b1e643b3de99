//! Who sent the RST that cut a connection: the path, forged by a middlebox whose conntrack
//! forgot the flow (like an AWS NAT gateway, IPv4 and IPv6; a cut even when it answers a
//! retransmission a round trip after the send), or the peer itself, told apart by TTL and hop
//! limit; `/api/v1/cuts` and `idlecut cuts` list each cut with the process that held it.
//!
//! As in `cuts.rs`, the router namespace plays real middleboxes (`docs/middleboxes.md`), scaled
//! down in time; a cut asserts the signature, the role, and that the reported cut-off interval
//! contains the router's real timeout.
//!
//! The router's conntrack forgets an idle flow after `TIMEOUT_S` seconds. Connections are
//! first all opened (one at a time, so that each accept gets its own connect), then run their
//! scripts concurrently: a silence of a chosen length, then one side speaks (`cut_scripts`).

mod cut_scripts;

use std::{io::Read as _, thread};

use cut_scripts::{
    Expect, LONG_GAPS_MS, Speaker, assert_cut_metrics, assert_cut_path, both_roles,
    expiring_middlebox, run_scripts, script, start_agent,
};
use idlecut_integration_tests::{
    Topology, abort, agent_binary,
    api::{
        cuts::CutsResponse,
        vocabulary::{ResetOrigin, Role, Signature},
    },
    connect, exchange, http_get, listen, require_root,
};
use serde_json::{Value, json};

#[test]
fn reset_after_conntrack_expiry_like_an_aws_nat_gateway_ipv4_and_ipv6() {
    require_root();
    let (net, agent) = expiring_middlebox("ct state invalid reject with tcp reset");
    let imap4 = listen(&net.server, "0.0.0.0:143");
    let imap6 = listen(&net.server, "[::]:587");
    let target6 = format!("[{}]:587", net.server_v6());
    let target4 = format!("{}:143", net.server_v4());
    thread::scope(|scope| {
        scope.spawn(|| run_scripts(&net.client, &target4, &imap4, both_roles()));
        scope.spawn(|| run_scripts(&net.client, &target6, &imap6, both_roles()));
    });

    for (service, client_path, server_path) in [
        ("imap", net.server_path_v4(), net.client_path_v4()),
        ("submission", net.server_path_v6(), net.client_path_v6()),
    ] {
        let client = assert_cut_path(&agent, service, "client", &client_path, "reset", 2);
        let server = assert_cut_path(&agent, service, "server", &server_path, "reset", 2);
        eprintln!("{service} client path: {client:#}\n{service} server path: {server:#}");
        let scrape = agent.scrape();
        assert_cut_metrics(&scrape, service, "client", &client_path, "reset", 2.0);
        assert_cut_metrics(&scrape, service, "server", &server_path, "reset", 2.0);
        // The router next to each end forged the RSTs (TTL or hop limit 64, undecremented);
        // the peer's segments came through it (63).
        for (role, path, report) in [
            ("client", &client_path, client),
            ("server", &server_path, server),
        ] {
            assert_eq!(
                report["resets_received"],
                json!({"peer": 0, "path": 2, "unknown": 0}),
                "{report:#}"
            );
            assert_eq!(
                report["forged_reset"],
                json!({"hops_from_host": 1, "peer_hops": 2, "ttl_difference": 1}),
                "{report:#}"
            );
            let explanation = report["explanation"].as_str().unwrap_or_default();
            assert!(
                explanation.contains("reset by the path, about 1 hop from this host"),
                "{explanation}"
            );
            assert_eq!(
                scrape.value(
                    "idlecut_resets_total",
                    &reset_labels(service, role, path, "path")
                ),
                2.0,
                "{}",
                scrape.text
            );
            let cut_labels = |origin| {
                [
                    ("service", service),
                    ("role", role),
                    ("path", path.as_str()),
                    ("origin", origin),
                ]
            };
            assert_eq!(
                scrape.value("idlecut_reset_cuts_total", &cut_labels("path")),
                2.0,
                "{}",
                scrape.text
            );
            assert_eq!(
                scrape.value("idlecut_reset_cuts_total", &cut_labels("peer")),
                0.0
            );
        }
    }

    // The log of recent cuts leads from the alert to each connection and its process: this
    // test's, which held every socket.
    let log: CutsResponse = agent.api("/api/v1/cuts?origin=path");
    eprintln!("/api/v1/cuts: {log:#?}");
    assert_eq!((log.total, log.capacity), (8, 1000), "{log:#?}");
    let me = std::process::id();
    for cut in &log.cuts {
        assert_eq!(cut.signature, Signature::Reset, "{cut:?}");
        assert_eq!(cut.origin, Some(ResetOrigin::Path), "{cut:?}");
        assert_eq!(cut.reset_hops_from_host, Some(1), "{cut:?}");
        assert_eq!(cut.pid, Some(me), "{cut:?}");
        assert!(cut.idle_before_cut_seconds >= 4.0, "{cut:?}");
        let remote_ip = cut
            .remote
            .rsplit_once(':')
            .map(|(ip, _)| ip.trim_matches(['[', ']']));
        let expected = match (cut.role, cut.service.as_str()) {
            (Role::Client, "imap") => net.server_v4(),
            (Role::Server, "imap") => net.client_v4(),
            (Role::Client, _) => net.server_v6(),
            (Role::Server, _) => net.client_v6(),
        };
        assert_eq!(remote_ip, Some(expected.as_str()), "{cut:?}");
    }
    // A bad filter is a 400 that says which parameter and what it takes.
    for (query, expected) in [
        ("origin=nobody", "origin="),
        ("limit=1001", "expected 1 to 1000"),
        ("pid=1", "unknown parameter `pid`"),
    ] {
        let (status, body) = http_get(agent.addr, &format!("/api/v1/cuts?{query}"))
            .unwrap_or_else(|err| panic!("GET /api/v1/cuts?{query}: {err}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(expected), "{query}: {body}");
    }
    // Newest first.
    assert!(
        log.cuts
            .windows(2)
            .all(|w| w[0].seconds_ago <= w[1].seconds_ago)
    );
    // And `idlecut cuts` prints them.
    let output = std::process::Command::new(agent_binary())
        .args([
            "cuts",
            "--agent",
            &agent.addr.to_string(),
            "--origin",
            "path",
        ])
        .output()
        .expect("running idlecut cuts");
    let table = String::from_utf8_lossy(&output.stdout);
    eprintln!("idlecut cuts --origin path:\n{table}");
    assert!(
        output.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        table.lines().filter(|l| l.contains("path(1 hop)")).count(),
        8,
        "{table}"
    );
    assert!(table.contains(&me.to_string()), "{table}");
}

fn reset_labels<'a>(
    service: &'a str,
    role: &'a str,
    path: &'a str,
    origin: &'a str,
) -> [(&'a str, &'a str); 5] {
    [
        ("service", service),
        ("role", role),
        ("path", path),
        ("direction", "received"),
        ("origin", origin),
    ]
}

#[test]
fn a_reset_that_answers_a_retransmission_is_a_cut_not_an_answer() {
    require_root();
    // Over a real network the RST comes a round trip after the send, long after the kernel
    // reported it: here the router drops the first segment after the timeout and resets the
    // retransmission, so the RST arrives hundreds of milliseconds after the send, as it would
    // from a NAT gateway far away. It must count as the cut, not as the peer's answer.
    let (net, agent) = expiring_middlebox(
        "ct state invalid numgen inc mod 2 == 0 drop\n  ct state invalid reject with tcp reset",
    );
    let imap = listen(&net.server, "0.0.0.0:143");
    run_scripts(
        &net.client,
        &format!("{}:143", net.server_v4()),
        &imap,
        vec![script(LONG_GAPS_MS[0], Speaker::Client, Expect::Cut)],
    );
    let report = agent.wait_for_path(
        "imap",
        "client",
        &net.server_path_v4(),
        "one reset cut",
        |r| r["cuts"]["reset"] == 1,
    );
    eprintln!("client path: {report:#}");
    assert_eq!(report["survived_gaps"], 0, "{report:#}");
    assert_eq!(report["resets_received"]["path"], 1, "{report:#}");
    let scrape = agent.scrape();
    assert!(
        scrape.value(
            "idlecut_retransmits_total",
            &[
                ("service", "imap"),
                ("role", "client"),
                ("path", &net.server_path_v4())
            ]
        ) >= 1.0,
        "the RST answered a retransmission: {}",
        scrape.text
    );
}

#[test]
fn a_reset_the_peer_sends_is_told_from_one_the_path_forges() {
    require_root();
    // A plain router: every RST here comes from the server, by SO_LINGER 0.
    let net = Topology::new();
    let agent = start_agent();
    let imap4 = listen(&net.server, "0.0.0.0:143");
    let imap6 = listen(&net.server, "[::]:587");
    for (listener, target) in [
        (&imap4, format!("{}:143", net.server_v4())),
        (&imap6, format!("[{}]:587", net.server_v6())),
    ] {
        // The client has heard the server before its RST: same TTL, the peer's.
        let (mut client, mut server) = connect(&net.client, listener, &target);
        exchange(&mut client, &mut server);
        abort(server);
        let mut buf = [0u8; 16];
        assert!(client.read(&mut buf).is_err(), "the RST reaches the client");
    }
    // The RST is the first segment the client gets on the established connection: nothing to
    // compare it with.
    let (mut client, server) = connect(&net.client, &imap4, &format!("{}:143", net.server_v4()));
    abort(server);
    let mut buf = [0u8; 16];
    assert!(client.read(&mut buf).is_err(), "the RST reaches the client");

    let (v4, v6) = (net.server_path_v4(), net.server_path_v6());
    let report = agent.wait_for_path("imap", "client", &v4, "two resets received", |r| {
        r["resets_received"]["peer"] == 1 && r["resets_received"]["unknown"] == 1
    });
    assert_eq!(report["resets_received"]["path"], 0, "{report:#}");
    assert_eq!(report["forged_reset"], Value::Null, "{report:#}");
    let explanation = report["explanation"].as_str().unwrap_or_default();
    assert!(
        explanation.contains("came from the peer itself"),
        "{explanation}"
    );
    let v6_report =
        agent.wait_for_path("submission", "client", &v6, "a reset from the peer", |r| {
            r["resets_received"]["peer"] == 1
        });
    eprintln!("v4: {report:#}\nv6: {v6_report:#}");
    let scrape = agent.scrape();
    for (service, path, origin, count) in [
        ("imap", &v4, "peer", 1.0),
        ("imap", &v4, "unknown", 1.0),
        ("imap", &v4, "path", 0.0),
        ("submission", &v6, "peer", 1.0),
        ("submission", &v6, "path", 0.0),
    ] {
        assert_eq!(
            scrape.value(
                "idlecut_resets_total",
                &reset_labels(service, "client", path, origin)
            ),
            count,
            "{service} {origin}: {}",
            scrape.text
        );
    }
    // The server sent them.
    assert_eq!(
        scrape.value(
            "idlecut_resets_total",
            &[
                ("service", "imap"),
                ("role", "server"),
                ("path", &net.client_path_v4()),
                ("direction", "sent"),
                ("origin", "local"),
            ]
        ),
        2.0,
        "{}",
        scrape.text
    );
}
