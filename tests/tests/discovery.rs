//! Connections that were already open when the agent started, the keepalive audit, namespaces
//! and owners, the per-connection view, and agent restarts. Real connections in network
//! namespaces, the real agent.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::MetadataExt as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use idlecut_integration_tests::api::connections::ConnectionsResponse;
use idlecut_integration_tests::{
    Agent, Netns, Topology, agent_binary, close_gracefully, connect, exchange, http_get,
    imap_after_an_exchange, listen, require_root, set_keepalive,
};
use serde_json::Value;

fn netns_inode(ns: &Netns) -> u64 {
    std::fs::metadata(format!("/run/netns/{}", ns.name))
        .expect("namespace file")
        .ino()
}

fn connections(agent: &Agent, query: &str) -> Value {
    let (status, body) = http_get(agent.addr, &format!("/api/v1/connections?{query}"))
        .expect("GET /api/v1/connections");
    assert_eq!(status, 200, "{body}");
    // The answer reads as the agent's own type too: the typed API stays true.
    serde_json::from_str::<ConnectionsResponse>(&body)
        .unwrap_or_else(|err| panic!("not a ConnectionsResponse ({err}): {body}"));
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("bad JSON ({err}): {body}"))
}

fn wait_for_connections(
    agent: &Agent,
    query: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let view = connections(agent, query);
        if done(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{view:#}\nagent log:\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn row<'a>(view: &'a Value, local: &str, remote: &str) -> &'a Value {
    view["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .find(|row| row["local"] == local && row["remote"] == remote)
        .unwrap_or_else(|| panic!("no connection {local} -> {remote} in {view:#}"))
}

#[test]
fn connections_open_before_the_agent_are_found_and_a_later_cut_is_measured_from_the_real_gap() {
    require_root();
    let net = Topology::new();
    // The middlebox forgets idle flows after 3 s and answers with a RST (AWS NAT style).
    net.router_conntrack(3, false);
    net.router_rules("ct state invalid reject with tcp reset");
    let (mut client, server) = imap_after_an_exchange(&net);
    // A second namespace of another kind: a loopback Submission connection in it.
    let aux = Netns::new(format!("ic{}-aux", std::process::id()));
    let (mut aux_client, mut aux_server) = aux.run(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:587").expect("bind 587");
        let client = TcpStream::connect("127.0.0.1:587").expect("connect 587");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    });
    exchange(&mut aux_client, &mut aux_server);
    let gap_started = Instant::now();

    // The connections idle for 1.5 s before the agent starts.
    thread::sleep(Duration::from_millis(1500));
    let agent = Agent::start(&["--min-idle-gap", "1s", "--scan-interval", "1s"]);
    let (client_local, client_remote) = (
        client.local_addr().expect("addr").to_string(),
        client.peer_addr().expect("addr").to_string(),
    );
    let aux_local = aux_client.local_addr().expect("addr").to_string();
    let ours = [
        (client_local.clone(), client_remote.clone()),
        (client_remote.clone(), client_local.clone()),
        (aux_local.clone(), "127.0.0.1:587".to_owned()),
        ("127.0.0.1:587".to_owned(), aux_local.clone()),
    ];
    let view = wait_for_connections(&agent, "", "the four connections", |v| {
        ours.iter().all(|(local, remote)| {
            v["connections"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["local"] == local.as_str() && r["remote"] == remote.as_str())
            })
        })
    });
    let client_row = row(&view, &client_local, &client_remote);
    let server_row = row(&view, &client_remote, &client_local);
    let aux_row = row(&view, &aux_local, "127.0.0.1:587");
    eprintln!("{view:#}");
    assert_eq!(client_row["role"], "client");
    assert_eq!(client_row["netns"], netns_inode(&net.client));
    assert_eq!(server_row["role"], "server");
    assert_eq!(server_row["netns"], netns_inode(&net.server));
    assert_eq!(aux_row["service"], "submission");
    assert_eq!(aux_row["netns"], netns_inode(&aux));
    for row in [client_row, server_row, aux_row] {
        assert!(
            row["age_seconds"].is_null(),
            "the start was not seen: {row:#}"
        );
        let idle = row["idle_seconds"].as_f64().expect("idle");
        let elapsed = gap_started.elapsed().as_secs_f64();
        assert!(
            idle >= 1.4 && idle <= elapsed + 0.1,
            "idle {idle} s after {elapsed} s: {row:#}"
        );
        assert_eq!(
            row["pid"],
            std::process::id(),
            "this test process owns them: {row:#}"
        );
        assert_eq!(row["state"], "open");
    }
    // `idlecut connections` prints the same, as a table.
    let output = Command::new(agent_binary())
        .args(["connections", "--agent", &agent.addr.to_string()])
        .output()
        .expect("idlecut connections");
    let table = String::from_utf8_lossy(&output.stdout);
    eprintln!("idlecut connections:\n{table}");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        table.lines().next().is_some_and(|h| h.starts_with("STATE")),
        "{table}"
    );
    assert!(
        table.contains(&client_local) && table.contains(&netns_inode(&net.server).to_string()),
        "{table}"
    );
    for (local, remote) in &ours {
        assert!(
            table
                .lines()
                .any(|line| line.contains(local.as_str()) && line.contains(remote.as_str())),
            "{local} -> {remote} missing:\n{table}"
        );
    }

    // At 4.5 s of silence the client speaks: the router has forgotten the flow and resets it.
    thread::sleep(Duration::from_millis(4500).saturating_sub(gap_started.elapsed()));
    client.write_all(b"a2 NOOP\r\n").expect("write");
    let mut buf = [0u8; 16];
    assert!(client.read(&mut buf).is_err(), "the router's RST");
    let path = net.server_path_v4();
    let report = agent.wait_for_path("imap", "client", &path, "the cut", |r| {
        r["cuts"]["reset"] == 1
    });
    eprintln!("{report:#}");
    let gap = report["cutoff_upper_seconds"]
        .as_f64()
        .expect("the gap before the cut");
    assert!(
        (4.3..=5.0).contains(&gap),
        "the cut came after {gap} s of silence; the gap began 1.5 s before the agent started"
    );
    let scrape = agent.scrape();
    let paths = [net.paths(), vec!["127.0.0.0/24".to_owned()]].concat();
    assert_eq!(
        scrape.sum_in("idlecut_connections_discovered_total", &[], &paths),
        4.0,
        "{}",
        scrape.text
    );
    assert_eq!(
        scrape.sum_in("idlecut_connections_opened_total", &[], &paths),
        0.0,
        "{}",
        scrape.text
    );
    drop(server);
    drop((aux_client, aux_server));
}

#[test]
fn keepalive_settings_are_audited() {
    require_root();
    let net = Topology::new();
    let agent = Agent::start(&["--scan-interval", "1s"]);
    let imap = listen(&net.server, "0.0.0.0:143");
    let target = format!("{}:143", net.server_v4());
    let mut pairs = Vec::new();
    for idle in [Some(60), Some(7200), None] {
        let (mut client, mut server) = connect(&net.client, &imap, &target);
        if let Some(idle) = idle {
            set_keepalive(&client, idle);
        }
        exchange(&mut client, &mut server);
        pairs.push((client, server, idle));
    }
    let path = net.server_path_v4();
    let gauge =
        |scrape: &idlecut_integration_tests::Scrape, role: &str, path: &str, setting: &str| {
            scrape.value(
                "idlecut_keepalive_connections",
                &[
                    ("service", "imap"),
                    ("role", role),
                    ("path", path),
                    ("setting", setting),
                ],
            )
        };
    // A scan that meets a socket with data in flight (its retransmit timer armed, e.g. the
    // server's reply before the client's delayed ACK) cannot tell its keepalive setting, and
    // the next scan tells it: wait for both sides, not only the clients.
    agent.wait_for(
        "the three client settings and the servers' keepalive off",
        |s| {
            gauge(s, "client", &path, "below_2h") == 1.0
                && gauge(s, "client", &path, "2h_or_more") == 1.0
                && gauge(s, "client", &path, "off") == 1.0
                && gauge(s, "server", &net.client_path_v4(), "off") == 3.0
        },
    );
    let view = connections(&agent, "role=client");
    for (client, _, idle) in &pairs {
        let row = row(
            &view,
            &client.local_addr().expect("addr").to_string(),
            &client.peer_addr().expect("addr").to_string(),
        );
        match idle {
            Some(seconds) => {
                let interval = row["keepalive_interval_seconds"]
                    .as_f64()
                    .expect("interval");
                let expected = f64::from(*seconds);
                assert!(
                    (interval - expected).abs() < 2.0,
                    "{interval} s for {seconds} s: {row:#}"
                );
            }
            None => assert_eq!(row["keepalive"], "off", "{row:#}"),
        }
    }
    // Closing them takes them out of the gauge.
    for (client, server, _) in pairs {
        close_gracefully(client, server);
    }
    let scrape = agent.wait_for("all closed", |s| {
        s.value("idlecut_tracked_connections", &[]) == 0.0
    });
    assert_eq!(
        scrape.sum("idlecut_keepalive_connections", &[]),
        0.0,
        "{}",
        scrape.text
    );
}

#[test]
fn a_periodic_exchange_yields_the_application_keepalive_interval() {
    require_root();
    let net = Topology::new();
    let agent = Agent::start(&["--min-idle-gap", "1s"]);
    let (mut client, mut server) = imap_after_an_exchange(&net);
    // Dovecot's "* OK Still here", every 2 s instead of every 2 min.
    for _ in 0..6 {
        thread::sleep(Duration::from_secs(2));
        server.write_all(b"* OK Still here\r\n").expect("write");
        let mut buf = [0u8; 32];
        assert!(client.read(&mut buf).expect("read") > 0);
    }
    for (role, path) in [
        ("server", net.client_path_v4()),
        ("client", net.server_path_v4()),
    ] {
        let report = agent.wait_for_path("imap", role, &path, "a keepalive interval", |r| {
            !r["keepalive_interval_seconds"].is_null()
        });
        let interval = report["keepalive_interval_seconds"]
            .as_f64()
            .expect("interval");
        assert!((interval - 2.0).abs() < 0.3, "{interval} s: {report:#}");
        let scrape = agent.scrape();
        let labels = [("service", "imap"), ("role", role), ("path", path.as_str())];
        let gauge = scrape
            .get("idlecut_path_keepalive_interval_seconds", &labels)
            .expect("gauge");
        assert!((gauge - 2.0).abs() < 0.3, "{gauge}");
    }
    close_gracefully(client, server);
}

#[test]
fn restarting_the_agent_counts_nothing_twice_and_loses_nothing() {
    require_root();
    let net = Topology::new();
    let imap = listen(&net.server, "0.0.0.0:143");
    let target = format!("{}:143", net.server_v4());
    let first = Agent::start(&["--scan-interval", "1s"]);
    let mut pairs: Vec<(TcpStream, TcpStream)> = (0..2)
        .map(|_| connect(&net.client, &imap, &target))
        .collect();
    for (client, server) in &mut pairs {
        exchange(client, server);
    }
    let paths = net.paths();
    let sum = |s: &idlecut_integration_tests::Scrape, name: &str, labels: &[(&str, &str)]| {
        s.sum_in(name, labels, &paths)
    };
    let scrape = first.wait_for("two opens on each side", |s| {
        sum(s, "idlecut_connections_opened_total", &[]) == 4.0
    });
    assert_eq!(
        sum(&scrape, "idlecut_connections_discovered_total", &[]),
        0.0,
        "{}",
        scrape.text
    );
    drop(first);

    let second = Agent::start(&["--scan-interval", "1s"]);
    let scrape = second.wait_for("the four connections found again", |s| {
        sum(s, "idlecut_connections_discovered_total", &[]) == 4.0
    });
    // Let a few more scans run: still counted once.
    thread::sleep(Duration::from_millis(2500));
    let scrape_later = second.scrape();
    for scrape in [&scrape, &scrape_later] {
        assert_eq!(
            sum(scrape, "idlecut_connections_discovered_total", &[]),
            4.0,
            "{}",
            scrape.text
        );
        assert_eq!(sum(scrape, "idlecut_connections_opened_total", &[]), 0.0);
    }
    for path in [net.client_path_v4(), net.server_path_v4()] {
        let report = second.path(
            "imap",
            if path == net.client_path_v4() {
                "server"
            } else {
                "client"
            },
            &path,
        );
        assert_eq!(report.expect("the path")["open_connections"], 2);
    }
    for (client, server) in pairs {
        close_gracefully(client, server);
    }
    let scrape = second.wait_for("the four closes", |s| {
        sum(s, "idlecut_connections_closed_total", &[]) >= 4.0
    });
    assert_eq!(
        sum(
            &scrape,
            "idlecut_connections_closed_total",
            &[("end", "fin")]
        ),
        4.0,
        "{}",
        scrape.text
    );
    for path in [net.client_path_v4(), net.server_path_v4()] {
        let report = second.path(
            "imap",
            if path == net.client_path_v4() {
                "server"
            } else {
                "client"
            },
            &path,
        );
        assert_eq!(report.expect("the path")["open_connections"], 0);
    }
}
