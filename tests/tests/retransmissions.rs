//! Retransmissions and stalls seen by the real eBPF programs, against the kernel's own
//! counters: real TCP connections between network namespaces, a router that drops (for a
//! while, or one segment once) and a shaper on the client's link.
//!
//! Both ends of every connection live on this host (in different namespaces); the assertions
//! are on the client's side (role `client`, the server's path).

use std::{thread, time::Duration};

use idlecut_integration_tests::{
    Agent, CONNECTIONS_CLOSED, Topology, close_gracefully, connections_closed,
    imap_after_an_exchange, require_root,
};

#[test]
fn retransmissions_during_a_short_outage_are_counted() {
    require_root();
    let net = Topology::new();
    let agent = Agent::start(&[]);
    let (mut client, mut server) = imap_after_an_exchange(&net);

    // Everything towards the server is lost for a second: the client retransmits (RTO starts
    // at 200 ms or more), then the path recovers and the data gets through.
    net.router_rules("tcp dport 143 drop");
    std::io::Write::write_all(&mut client, b"a3 NOOP\r\n").expect("write");
    thread::sleep(Duration::from_millis(1200));
    net.clear_router_rules();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut server, &mut buf).expect("the data arrives after the outage");
    assert_eq!(&buf[..n], b"a3 NOOP\r\n");
    close_gracefully(client, server);

    let server_path = net.server_path_v4();
    let scrape = agent.wait_for("the close after the outage", |s| {
        s.sum_in(CONNECTIONS_CLOSED, &[], &net.paths()) >= 2.0
    });
    let retransmits = scrape.value(
        "idlecut_retransmits_total",
        &[
            ("service", "imap"),
            ("role", "client"),
            ("path", &server_path),
        ],
    );
    // At least two timeouts fit in the outage (200 ms, then 400 ms); at most a handful.
    assert!(
        (2.0..=6.0).contains(&retransmits),
        "{retransmits} retransmits\n{}",
        scrape.text
    );
    assert_eq!(
        connections_closed(&scrape, "imap", "client", &server_path, "fin"),
        1.0
    );
}

/// A retransmission that never left the host is not one. A shaper on the client's link (tbf
/// at 4 kbit/s) holds a full-size segment in its queue for about three seconds, so TCP's
/// retransmission timer fires while the original is still queued: the kernel refuses to send
/// the copy (EBUSY, counted as TCPSpuriousRtxHostQueues, not as RetransSegs). Nothing was lost
/// on the path: idlecut counts what the kernel counts, and sees no stall when nothing was
/// retransmitted.
#[test]
fn retransmissions_refused_while_the_original_is_queued_on_the_host_are_not_counted() {
    require_root();
    let net = Topology::new();
    let agent = Agent::start(&[]);
    let (mut client, mut server) = imap_after_an_exchange(&net);

    net.client.exec(
        "tc",
        &[
            "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "4kbit", "burst", "1600",
            "latency", "30s",
        ],
    );
    let before = tcp_counters(&net, &["RetransSegs", "TCPSpuriousRtxHostQueues"]);
    // The first segment spends the shaper's bucket, the second waits for it to refill.
    std::io::Write::write_all(&mut client, &[b'x'; 2800]).expect("write");
    let mut got = vec![0u8; 2800];
    std::io::Read::read_exact(&mut server, &mut got).expect("the data arrives, late");
    thread::sleep(Duration::from_millis(300));
    let after = tcp_counters(&net, &["RetransSegs", "TCPSpuriousRtxHostQueues"]);
    let (retransmitted, refused) = (after[0] - before[0], after[1] - before[1]);
    assert!(
        refused > 0,
        "no retransmission was refused for a queued original (TCPSpuriousRtxHostQueues)"
    );
    net.client
        .exec("tc", &["qdisc", "del", "dev", "eth0", "root"]);
    close_gracefully(client, server);

    let server_path = net.server_path_v4();
    let scrape = agent.wait_for("the close", |s| {
        s.sum_in(CONNECTIONS_CLOSED, &[], &net.paths()) >= 2.0
    });
    let client_side = [
        ("service", "imap"),
        ("role", "client"),
        ("path", server_path.as_str()),
    ];
    assert_eq!(
        scrape.value("idlecut_retransmits_total", &client_side),
        retransmitted as f64,
        "RetransSegs moved by {retransmitted}, {refused} refused\n{}",
        scrape.text
    );
    if retransmitted == 0 {
        assert_eq!(
            scrape.sum_in("idlecut_stall_seconds_count", &[], &net.paths()),
            0.0,
            "{}",
            scrape.text
        );
    }
    assert_eq!(
        connections_closed(&scrape, "imap", "client", &server_path, "fin"),
        1.0
    );
}

/// TCP counters of the client's namespace (`Tcp:` of /proc/net/snmp, `TcpExt:` of
/// /proc/net/netstat), by name.
fn tcp_counters(net: &Topology, names: &[&str]) -> Vec<u64> {
    let text = net
        .client
        .exec("cat", &["/proc/net/snmp", "/proc/net/netstat"]);
    let mut values = std::collections::HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.windows(2) {
        let (header, numbers) = (pair[0], pair[1]);
        let Some((prefix, fields)) = header.split_once(':') else {
            continue;
        };
        if !matches!(prefix, "Tcp" | "TcpExt") || !numbers.starts_with(prefix) {
            continue;
        }
        let numbers = numbers.split_once(':').map_or("", |(_, rest)| rest);
        for (name, value) in fields.split_whitespace().zip(numbers.split_whitespace()) {
            if let Ok(value) = value.parse::<u64>() {
                values.insert(name.to_owned(), value);
            }
        }
    }
    names
        .iter()
        .map(|name| {
            *values
                .get(*name)
                .unwrap_or_else(|| panic!("no TCP counter {name} in:\n{text}"))
        })
        .collect()
}

/// One lost segment at the tail of a send, repaired by a tail loss probe: a retransmission
/// that leaves TCP in its normal congestion state (an RTO would not). The stall ends when the
/// probe is acknowledged, as it happens, not at the connection's next event (the BTF programs
/// settle most segments from the socket's own clocks, and must not take this acknowledgement
/// for one of them), and nothing is cut.
#[test]
fn a_tail_loss_probe_ends_its_stall_when_it_is_acknowledged() {
    require_root();
    let net = Topology::new();
    let agent = Agent::start(&[]);
    let (mut client, mut server) = imap_after_an_exchange(&net);

    // The client's next data segment is lost, once: it spends the quota, its retransmission
    // passes (a pure ACK is 52 bytes long with timestamps, this segment 61).
    let port = client.local_addr().expect("local addr").port();
    net.router_rules(&format!(
        "tcp sport {port} ip length > 56 quota until 100 bytes drop"
    ));
    let probes_before = loss_probes(&net);
    std::io::Write::write_all(&mut client, b"a3 NOOP\r\n").expect("write");
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut server, &mut buf).expect("the data arrives after the probe");
    assert_eq!(&buf[..n], b"a3 NOOP\r\n");
    assert!(
        loss_probes(&net) > probes_before,
        "the loss was repaired by a tail loss probe (TcpExtTCPLossProbes did not move)"
    );

    // Nothing else happens on the connection until the stall shows as recovered.
    let server_path = net.server_path_v4();
    let labels = [
        ("service", "imap"),
        ("role", "client"),
        ("path", server_path.as_str()),
        ("outcome", "recovered"),
    ];
    let scrape = agent.wait_for("the stall's end", |s| {
        s.value("idlecut_stall_seconds_count", &labels) >= 1.0
    });
    assert_eq!(
        scrape.value("idlecut_stall_seconds_count", &labels),
        1.0,
        "{}",
        scrape.text
    );
    // From the probe to its acknowledgement: a round trip here, far below a refresh period.
    let stalled = scrape.value("idlecut_stall_seconds_sum", &labels);
    assert!(stalled < 0.1, "stalled for {stalled} s\n{}", scrape.text);
    close_gracefully(client, server);
    let scrape = agent.wait_for("the close", |s| {
        s.sum_in(CONNECTIONS_CLOSED, &[], &net.paths()) >= 2.0
    });
    assert_eq!(
        connections_closed(&scrape, "imap", "client", &server_path, "fin"),
        1.0
    );
    assert_eq!(
        scrape.sum_in("idlecut_cuts_total", &[], &net.paths()),
        0.0,
        "{}",
        scrape.text
    );
}

/// TcpExtTCPLossProbes in the client's namespace: tail loss probes sent.
fn loss_probes(net: &Topology) -> u64 {
    tcp_counters(net, &["TCPLossProbes"])[0]
}
