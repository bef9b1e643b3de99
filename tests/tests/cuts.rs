//! Where and how a path cuts idle connections: the router namespace plays real middleboxes
//! (`docs/middleboxes.md`), scaled down in time. Every scenario asserts the
//! signature, the role, and that the reported cut-off interval contains the router's real
//! timeout. Who sent the RSTs of a cut is `reset_origin.rs`'s part.
//!
//! The router's conntrack forgets an idle flow after `TIMEOUT_S` seconds. Connections are
//! first all opened (one at a time, so that each accept gets its own connect), then run their
//! scripts concurrently: a silence of a chosen length, then one side speaks (`cut_scripts`).

mod cut_scripts;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    thread,
    time::Duration,
};

use cut_scripts::{
    Expect, LONG_GAPS_MS, SHORT_GAPS_MS, Script, Speaker, TIMEOUT_S, USER_TIMEOUT_MS,
    assert_cut_metrics, assert_cut_path, both_roles, expiring_middlebox, number, run_scripts,
    script, start_agent,
};
use idlecut_integration_tests::{
    Agent, Topology, abort, close_gracefully, connect, icmp_probe_attached, listen, require_root,
    set_user_timeout,
};

/// IMAP over IPv4 through the router, both roles speaking after short and long silences.
fn imap_both_roles(net: &Topology) {
    let imap = listen(&net.server, "0.0.0.0:143");
    run_scripts(
        &net.client,
        &format!("{}:143", net.server_v4()),
        &imap,
        both_roles(),
    );
}

#[test]
fn silent_blackhole_after_conntrack_expiry_both_roles() {
    require_root();
    let (net, agent) = expiring_middlebox("ct state invalid drop");
    imap_both_roles(&net);

    let (client_path, server_path) = (net.server_path_v4(), net.client_path_v4());
    let client = assert_cut_path(&agent, "imap", "client", &client_path, "blackhole", 2);
    let server = assert_cut_path(&agent, "imap", "server", &server_path, "blackhole", 2);
    eprintln!("client path: {client:#}\nserver path: {server:#}");
    let scrape = agent.scrape();
    assert_cut_metrics(&scrape, "imap", "client", &client_path, "blackhole", 2.0);
    assert_cut_metrics(&scrape, "imap", "server", &server_path, "blackhole", 2.0);
    // The black-holed senders timed out after a fatal stall.
    for (role, path) in [("client", &client_path), ("server", &server_path)] {
        let labels = [("service", "imap"), ("role", role), ("path", path.as_str())];
        assert_eq!(
            scrape.value(
                "idlecut_connections_closed_total",
                &[labels[0], labels[1], labels[2], ("end", "timeout")]
            ),
            2.0,
            "{}",
            scrape.text
        );
        assert_eq!(
            scrape.value(
                "idlecut_stall_seconds_count",
                &[labels[0], labels[1], labels[2], ("outcome", "fatal")]
            ),
            2.0
        );
        // Survived gaps: the two this side broke and the two the other side broke.
        assert_eq!(
            scrape.value("idlecut_idle_gap_seconds_count", &labels),
            4.0,
            "{}",
            scrape.text
        );
    }
}

#[test]
fn masquerade_with_random_ports_remaps_and_the_server_answers_with_a_reset() {
    require_root();
    let net = Topology::new();
    // Loose pick-up: the client's next segment after the timeout re-creates the mapping on a
    // new random port, which the server does not know.
    net.router_conntrack(TIMEOUT_S, true);
    net.router_masquerade_random();
    let agent = start_agent();
    let imap = listen(&net.server, "0.0.0.0:143");
    let mut scripts: Vec<Script> = SHORT_GAPS_MS
        .iter()
        .map(|&gap| script(gap, Speaker::Client, Expect::Answered))
        .collect();
    scripts.extend(
        LONG_GAPS_MS
            .iter()
            .map(|&gap| script(gap, Speaker::Client, Expect::Cut)),
    );
    run_scripts(
        &net.client,
        &format!("{}:143", net.server_v4()),
        &imap,
        scripts,
    );

    let report = assert_cut_path(&agent, "imap", "client", &net.server_path_v4(), "reset", 2);
    eprintln!("client path: {report:#}");
    // The server saw the connections from the router's address, and never a cut.
    let server = agent
        .path("imap", "server", &net.server_path_v4())
        .expect("the server's path is the router's subnet");
    assert_eq!(server["cuts"]["reset"], 0, "{server:#}");
}

#[test]
fn icmp_host_unreachable_after_the_timeout() {
    require_root();
    let (net, agent) =
        expiring_middlebox("ct state invalid reject with icmpx type host-unreachable");
    imap_both_roles(&net);

    let (client_path, server_path) = (net.server_path_v4(), net.client_path_v4());
    let client = assert_cut_path(&agent, "imap", "client", &client_path, "icmp", 2);
    assert_cut_path(&agent, "imap", "server", &server_path, "icmp", 2);
    eprintln!("client path: {client:#}");
    let scrape = agent.scrape();
    // Host unreachable is a soft error: TCP kept retransmitting (RFC 1122) and reported it
    // when it gave up.
    assert_eq!(
        scrape.value(
            "idlecut_connections_closed_total",
            &[
                ("service", "imap"),
                ("role", "client"),
                ("path", &client_path),
                ("end", "error")
            ]
        ),
        2.0,
        "{}",
        scrape.text
    );
    if icmp_probe_attached(&scrape) {
        assert!(
            scrape.value(
                "idlecut_icmp_errors_total",
                &[
                    ("service", "imap"),
                    ("role", "client"),
                    ("path", &client_path),
                    ("type", "3"),
                    ("code", "1")
                ]
            ) >= 2.0,
            "{}",
            scrape.text
        );
    } else {
        eprintln!(
            "NOTE: fentry:tcp_v4_err is not attached on this kernel; ICMP error counts are not asserted, the icmp signature came from EHOSTUNREACH"
        );
    }
}

#[test]
fn a_compliant_path_survives_its_gaps() {
    require_root();
    let net = Topology::new();
    // Conntrack with Linux's default timeout (5 days): nothing is cut.
    net.router_rules("ct state invalid drop");
    let agent = Agent::start(&["--min-idle-gap", "1s", "--req5-threshold", "3s"]);
    let imap = listen(&net.server, "0.0.0.0:143");
    let scripts = vec![
        script(1500, Speaker::Client, Expect::Answered),
        script(3500, Speaker::Client, Expect::Answered),
        script(3500, Speaker::Server, Expect::Answered),
    ];
    run_scripts(
        &net.client,
        &format!("{}:143", net.server_v4()),
        &imap,
        scripts,
    );

    for (role, path) in [
        ("client", net.server_path_v4()),
        ("server", net.client_path_v4()),
    ] {
        let report = agent.wait_for_path("imap", role, &path, "three survived gaps", |r| {
            r["survived_gaps"].as_u64() == Some(3)
        });
        eprintln!("{role} path: {report:#}");
        assert_eq!(report["verdict"], "ok", "{report:#}");
        assert_eq!(report["cuts"]["reset"], 0);
        assert_eq!(report["cuts"]["blackhole"], 0);
        assert_eq!(report["cuts"]["icmp"], 0);
        assert!(report["cutoff_upper_seconds"].is_null(), "{report:#}");
        assert!(
            number(&report, "cutoff_lower_seconds").is_some_and(|l| l >= 3.0),
            "{report:#}"
        );
        let scrape = agent.scrape();
        let labels = [("service", "imap"), ("role", role), ("path", path.as_str())];
        assert_eq!(
            scrape.get("idlecut_path_req5_violation", &labels),
            Some(0.0)
        );
        assert_eq!(
            scrape.get("idlecut_path_cutoff_upper_seconds", &labels),
            None
        );
        assert_eq!(scrape.value("idlecut_idle_gap_seconds_count", &labels), 3.0);
    }
}

#[test]
fn a_path_that_limits_connection_age_although_they_are_active() {
    require_root();
    const AGE_LIMIT_MS: u64 = 3000;
    let net = Topology::new();
    net.router_rules("");
    let agent = start_agent();
    let imap = listen(&net.server, "0.0.0.0:143");
    let target = format!("{}:143", net.server_v4());
    let pairs: Vec<(TcpStream, TcpStream)> = (0..3)
        .map(|_| {
            let (client, server) = connect(&net.client, &imap, &target);
            set_user_timeout(&client, USER_TIMEOUT_MS);
            (client, server)
        })
        .collect();
    thread::scope(|scope| {
        for (mut client, mut server) in pairs {
            let net = &net;
            scope.spawn(move || {
                let opened = std::time::Instant::now();
                let port = client.local_addr().expect("local addr").port();
                let mut cut = false;
                // Never idle: a command every 200 ms.
                loop {
                    if !cut && opened.elapsed() >= Duration::from_millis(AGE_LIMIT_MS) {
                        net.router_add_rule(&format!("tcp sport {port} drop"));
                        net.router_add_rule(&format!("tcp dport {port} drop"));
                        cut = true;
                    }
                    if client.write_all(b"a1 NOOP\r\n").is_err() {
                        break;
                    }
                    if !cut {
                        let mut buf = [0u8; 64];
                        let _ = server.read(&mut buf).expect("server read");
                    }
                    thread::sleep(Duration::from_millis(200));
                    assert!(
                        opened.elapsed() < Duration::from_secs(20),
                        "the connection never died"
                    );
                }
                abort(server);
            });
        }
    });

    let report = agent.wait_for_path(
        "imap",
        "client",
        &net.server_path_v4(),
        "a duration limit",
        |r| !r["duration_limit_seconds"].is_null(),
    );
    eprintln!("client path: {report:#}");
    let limit = number(&report, "duration_limit_seconds").expect("a limit");
    assert!(
        (3.0..=4.0).contains(&limit),
        "limit {limit} s for a {AGE_LIMIT_MS} ms age limit"
    );
    assert_eq!(
        report["cuts"]["blackhole"], 0,
        "active connections are not idle cuts: {report:#}"
    );
    assert_ne!(report["verdict"], "violates_req5");
    let explanation = report["explanation"].as_str().unwrap_or_default();
    assert!(explanation.contains("RFC 5383"), "{explanation}");
    let scrape = agent.scrape();
    assert!(
        scrape
            .get(
                "idlecut_path_duration_limit_seconds",
                &[
                    ("service", "imap"),
                    ("role", "client"),
                    ("path", &net.server_path_v4())
                ]
            )
            .is_some()
    );
}

#[test]
fn a_short_outage_with_soft_icmp_errors_is_survived() {
    require_root();
    let net = Topology::new();
    net.router_rules("");
    let agent = start_agent();
    let imap = listen(&net.server, "0.0.0.0:143");
    let target = format!("{}:143", net.server_v4());
    // Three connections, three outages: plain loss, ICMP net unreachable (code 0), ICMP host
    // unreachable (code 1). RFC 1122: codes 0, 1 (and 5) must not abort a connection.
    let mut pairs: Vec<(TcpStream, TcpStream)> = (0..3)
        .map(|_| connect(&net.client, &imap, &target))
        .collect();
    let ports: Vec<u16> = pairs
        .iter()
        .map(|(client, _)| client.local_addr().expect("local addr").port())
        .collect();
    net.router_add_rule(&format!("tcp sport {} drop", ports[0]));
    net.router_add_rule(&format!(
        "meta nfproto ipv4 tcp sport {} reject with icmp type net-unreachable",
        ports[1]
    ));
    net.router_add_rule(&format!(
        "meta nfproto ipv4 tcp sport {} reject with icmp type host-unreachable",
        ports[2]
    ));
    for (client, _) in &mut pairs {
        client.write_all(b"a1 NOOP\r\n").expect("write");
    }
    thread::sleep(Duration::from_millis(1200));
    net.router_rules("");
    for (_, server) in &mut pairs {
        let mut buf = [0u8; 16];
        let n = server
            .read(&mut buf)
            .expect("the data arrives after the outage");
        assert_eq!(&buf[..n], b"a1 NOOP\r\n");
    }
    thread::sleep(Duration::from_millis(200));
    let path = net.server_path_v4();
    let labels = [
        ("service", "imap"),
        ("role", "client"),
        ("path", path.as_str()),
        ("outcome", "recovered"),
    ];
    let scrape = agent.wait_for("three recovered stalls", |s| {
        s.value("idlecut_stall_seconds_count", &labels) >= 3.0
    });
    assert_eq!(
        scrape.value("idlecut_stall_seconds_count", &labels),
        3.0,
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.sum_in("idlecut_cuts_total", &[], &net.paths()),
        0.0,
        "{}",
        scrape.text
    );
    if icmp_probe_attached(&scrape) {
        for code in ["0", "1"] {
            assert!(
                scrape.value(
                    "idlecut_icmp_errors_total",
                    &[
                        ("service", "imap"),
                        ("role", "client"),
                        ("path", &path),
                        ("type", "3"),
                        ("code", code)
                    ]
                ) >= 1.0,
                "code {code}: {}",
                scrape.text
            );
        }
    } else {
        eprintln!(
            "NOTE: fentry:tcp_v4_err is not attached on this kernel; ICMP error counts are not asserted"
        );
    }
    for (client, server) in pairs {
        close_gracefully(client, server);
    }
    let scrape = agent.wait_for("three FIN closes", |s| {
        s.value(
            "idlecut_connections_closed_total",
            &[
                ("service", "imap"),
                ("role", "client"),
                ("path", &path),
                ("end", "fin"),
            ],
        ) >= 3.0
    });
    assert_eq!(
        scrape.sum_in(
            "idlecut_connections_closed_total",
            &[("role", "client")],
            &net.paths()
        ),
        3.0
    );
}

#[test]
fn paths_do_not_bleed_into_each_other() {
    require_root();
    let net = Topology::new();
    // IPv4 through a middlebox that black-holes after the timeout; IPv6 through the same
    // conntrack, but its invalid packets are let through: a compliant path.
    net.router_conntrack(TIMEOUT_S, false);
    net.router_rules("meta nfproto ipv4 ct state invalid drop");
    let agent = start_agent();
    let imap4 = listen(&net.server, "0.0.0.0:143");
    let imap6 = listen(&net.server, "[::]:993");
    let target4 = format!("{}:143", net.server_v4());
    let target6 = format!("[{}]:993", net.server_v6());
    let scripts = || {
        vec![
            script(LONG_GAPS_MS[0], Speaker::Client, Expect::Cut),
            script(LONG_GAPS_MS[1], Speaker::Client, Expect::Cut),
        ]
    };
    let survived = || {
        vec![
            script(LONG_GAPS_MS[0], Speaker::Client, Expect::Answered),
            script(LONG_GAPS_MS[1], Speaker::Client, Expect::Answered),
        ]
    };
    thread::scope(|scope| {
        scope.spawn(|| run_scripts(&net.client, &target4, &imap4, scripts()));
        scope.spawn(|| run_scripts(&net.client, &target6, &imap6, survived()));
    });
    let v4 = agent.wait_for_path(
        "imap",
        "client",
        &net.server_path_v4(),
        "two blackhole cuts",
        |r| r["cuts"]["blackhole"] == 2,
    );
    let v6 = agent.wait_for_path(
        "imaps",
        "client",
        &net.server_path_v6(),
        "two survived gaps",
        |r| r["survived_gaps"] == 2,
    );
    eprintln!("v4: {v4:#}\nv6: {v6:#}");
    assert_eq!(v4["verdict"], "violates_req5");
    assert_eq!(v4["survived_gaps"], 0, "{v4:#}");
    assert_eq!(v6["cuts"]["blackhole"], 0, "{v6:#}");
    assert_ne!(v6["verdict"], "violates_req5");
    assert!(
        number(&v6, "cutoff_lower_seconds").is_some_and(|l| l >= 4.0),
        "{v6:#}"
    );
}
