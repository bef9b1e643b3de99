//! A PMTU black hole is not an idle cut. The router's link towards the client shrinks to an
//! MTU of 1280 while its "fragmentation needed" / "packet too big" errors are dropped: full-size
//! segments from the server vanish, small ones pass. After short silences (far below any idle
//! timeout: the router forgets nothing), the server's large answers stall and time out, its
//! small ones arrive. idlecut must name the black hole (signature `pmtu`, the size lost), and
//! keep it out of the cut-off interval and the REQ-5 verdict.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use idlecut_api::{cuts::CutsResponse, paths::Verdict, vocabulary::Signature};
use idlecut_integration_tests::{
    Agent, Topology, abort, connect, listen, require_root, set_user_timeout,
};

/// The shrunk MTU of the router's link to the client (IPv6's minimum, so both families share
/// it).
const NARROW_MTU: u32 = 1280;
/// The silence before each answer: above `--min-idle-gap`, far below any idle timeout.
const SILENCE: Duration = Duration::from_secs(2);
/// The server gives up on an unacknowledged answer after this (TCP_USER_TIMEOUT).
const USER_TIMEOUT_MS: u32 = 4000;
/// A large answer (an IMAP FETCH of a message): five full segments and a small tail, which
/// gets through and is acknowledged selectively.
const LARGE: usize = 8 * 1024;
/// A small answer ("* 3 EXISTS").
const SMALL: usize = 200;

/// The server answers `bytes` after the silence; the client reads what arrives in time.
fn answer_after_silence(client: &mut TcpStream, server: &mut TcpStream, bytes: usize) -> usize {
    thread::sleep(SILENCE);
    server.write_all(&vec![b'x'; bytes]).expect("server write");
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let deadline = Instant::now() + Duration::from_millis(USER_TIMEOUT_MS.into());
    let mut received = 0;
    let mut buf = vec![0u8; 16 * 1024];
    while received < bytes && Instant::now() < deadline {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(_) => {}
        }
    }
    received
}

/// The topology, with the server's sends cut into segments before they leave it, as a real
/// NIC does (each meets the router alone, and the small tail of an answer passes where its
/// full-size segments do not); `mtu_probing` is the server's `net.ipv4.tcp_mtu_probing`.
fn topology(mtu_probing: &str) -> Topology {
    let net = Topology::new();
    net.server
        .exec("ip", &["link", "set", "dev", "eth0", "gso_max_segs", "1"]);
    net.server.sysctl("net.ipv4.tcp_mtu_probing", mtu_probing);
    net
}

/// Narrows the router's link to the client and drops the ICMP errors that would say so.
fn narrow_the_path(net: &Topology) {
    net.router.exec(
        "ip",
        &["link", "set", "dev", "eth1", "mtu", &NARROW_MTU.to_string()],
    );
    net.router.nft(
        "table inet pmtu {\n chain output {\n  type filter hook output priority 0; policy accept;\n  \
         icmp type destination-unreachable icmp code frag-needed drop\n  \
         icmpv6 type packet-too-big drop\n }\n}\n",
    );
}

#[test]
fn full_size_answers_lost_after_short_silences_are_a_pmtu_black_hole_not_an_idle_cut() {
    require_root();
    // TCP gives up rather than lowering its MSS (the default): the stall is fatal.
    let net = topology("0");
    let agent = Agent::start(&["--min-idle-gap", "1s"]);
    let imap = listen(&net.server, "[::]:143");

    let mut connections = Vec::new();
    for address in [net.server_v4(), format!("[{}]", net.server_v6())] {
        for bytes in [LARGE, SMALL] {
            let (mut client, mut server) = connect(&net.client, &imap, &format!("{address}:143"));
            set_user_timeout(&server, USER_TIMEOUT_MS);
            // Full-size segments pass before the MTU shrinks.
            server.write_all(&vec![b'y'; LARGE]).expect("server write");
            let mut buf = vec![0u8; LARGE];
            client.read_exact(&mut buf).expect("a large answer before");
            connections.push((address.clone(), bytes, client, server));
        }
    }
    narrow_the_path(&net);

    let answers: Vec<_> = connections
        .into_iter()
        .map(|(address, bytes, mut client, mut server)| {
            thread::spawn(move || {
                let received = answer_after_silence(&mut client, &mut server, bytes);
                (address, bytes, received, client, server)
            })
        })
        .collect();
    let mut survivors = Vec::new();
    for answer in answers {
        let (address, bytes, received, client, server) = answer.join().expect("answer thread");
        if bytes == SMALL {
            assert_eq!(
                received, SMALL,
                "{address}: a small answer passes the narrow link"
            );
            survivors.push((client, server));
        } else {
            assert!(
                received < LARGE,
                "{address}: {received} bytes of a large answer arrived"
            );
            // The server's socket timed out; the client aborts, as a mail client that gave up
            // on its FETCH does (no silence of its own ended, no cut of its own).
            abort(client);
            drop(server);
        }
    }

    let server_paths = [net.client_path_v4(), net.client_path_v6()];
    for path in &server_paths {
        let report = agent.wait_for_path("imap", "server", path, "a PMTU black hole", |report| {
            report["cuts"]["pmtu"] == 1
        });
        eprintln!("{report:#}");
        assert_eq!(report["cuts_below_req5"], 0, "{report:#}");
        assert_eq!(report["cuts"]["blackhole"], 0, "{report:#}");
        assert_ne!(report["verdict"], "violates_req5", "{report:#}");
        assert!(report["cutoff_upper_seconds"].is_null(), "{report:#}");
        // The small answers' silences were survived, the large ones' too (their tails arrived).
        assert!(report["survived_gaps"].as_u64().unwrap() >= 2, "{report:#}");
        let explanation = report["explanation"].as_str().unwrap();
        assert!(
            explanation.contains("1 connection died in a PMTU black hole, not for being idle"),
            "{explanation}"
        );
    }
    let reports = agent.path_reports();
    assert!(
        reports
            .iter()
            .all(|report| report.verdict != Verdict::ViolatesReq5),
        "{reports:#?}"
    );

    let cuts: CutsResponse = agent.api("/api/v1/cuts");
    let pmtu: Vec<_> = cuts
        .cuts
        .iter()
        .filter(|cut| server_paths.contains(&cut.path))
        .collect();
    assert_eq!(pmtu.len(), 2, "{:#?}", cuts.cuts);
    for cut in pmtu {
        assert_eq!(cut.signature, Signature::Pmtu, "{cut:#?}");
        assert_eq!(cut.idle_before_cut_seconds, 0.0, "{cut:#?}");
        // The lost segments could not fit the narrow link with their headers (20 bytes of
        // TCP and 20 of IPv4 at least).
        let lost = u32::from(cut.lost_segment_bytes.expect("the size lost"));
        assert!(lost + 40 > NARROW_MTU, "{cut:#?}");
        assert_eq!(cut.mss.map(u32::from), Some(lost), "full-size: {cut:#?}");
    }
    // No cut on any other path: the clients' side saw its answers' tails and aborted.
    assert!(
        cuts.cuts.iter().all(|cut| cut.signature == Signature::Pmtu),
        "{:#?}",
        cuts.cuts
    );
    drop(survivors);
}

/// With `net.ipv4.tcp_mtu_probing = 1`, the kernel takes the black hole for one after a few
/// timeouts and falls back to a smaller MSS: the answer arrives late, the connection survives,
/// and idlecut tells the MSS it fell back to.
#[test]
fn a_black_hole_the_kernel_probes_its_way_through_is_survived_and_the_lower_mss_told() {
    require_root();
    let net = topology("1");
    let agent = Agent::start(&["--min-idle-gap", "1s"]);
    let imap = listen(&net.server, "0.0.0.0:143");
    let (mut client, mut server) = connect(&net.client, &imap, &format!("{}:143", net.server_v4()));
    narrow_the_path(&net);

    thread::sleep(SILENCE);
    server.write_all(&vec![b'x'; LARGE]).expect("server write");
    let mut buf = vec![0u8; LARGE];
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    client
        .read_exact(&mut buf)
        .expect("the whole answer, once the MSS is lower");

    let path = net.client_path_v4();
    let report = agent.wait_for_path("imap", "server", &path, "the lower MSS", |report| {
        report["mss_lowered"] == 1
    });
    eprintln!("{report:#}");
    assert_eq!(report["cuts"]["pmtu"], 0, "{report:#}");
    assert_eq!(report["cuts_below_req5"], 0, "{report:#}");
    let explanation = report["explanation"].as_str().unwrap();
    // The kernel falls back to net.ipv4.tcp_base_mss (1024) or below.
    let told = explanation
        .split("lowered the MSS (from 1448 to ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|to| to.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no lower MSS told: {explanation}"));
    assert!(told + 40 <= NARROW_MTU, "{explanation}");
    let scrape = agent.scrape();
    assert_eq!(
        scrape.value(
            "idlecut_mss_lowered_total",
            &[
                ("service", "imap"),
                ("role", "server"),
                ("path", path.as_str())
            ]
        ),
        1.0,
        "{}",
        scrape.text
    );
    drop((client, server));
}
