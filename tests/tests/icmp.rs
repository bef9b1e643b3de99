//! ICMP errors on kernels that refuse fentry (where no program sees `tcp_v4_err`): a router
//! that forgets idle flows answers the first segment after the silence with an ICMP error.
//! TCP retransmits through it (RFC 1122 soft errors); each retransmission shows the soft
//! error the ICMP error left on the socket, so the connection's view names it while TCP is
//! still trying, the path counts it, and the cut is an ICMP one, over IPv4 and IPv6.

use std::{io::Write as _, thread, time::Duration};

use idlecut_integration_tests::{
    Agent, Topology, abort, api::vocabulary::ConnectionState, connect, exchange, listen,
    require_root, set_user_timeout,
};

/// The router's idle timeout, and a silence past it.
const TIMEOUT_S: u32 = 2;
const SILENCE: Duration = Duration::from_secs(4);
/// Long enough that TCP is still retransmitting when the view is read.
const USER_TIMEOUT_MS: u32 = 15_000;

/// One connection per family through a router rejecting what no longer matches a flow with
/// `reject`; returns the `icmp_error` each open connection showed, and the agent.
fn cut_by(reject: &str) -> (Topology, Agent, Vec<(String, String)>) {
    let net = Topology::new();
    net.router_conntrack(TIMEOUT_S, false);
    net.router_rules(&format!("ct state invalid {reject}"));
    let agent = Agent::start(&["--min-idle-gap", "1s"]);
    let mut seen = Vec::new();
    for (listen_on, server) in [
        ("0.0.0.0:143", format!("{}:143", net.server_v4())),
        ("[::]:143", format!("[{}]:143", net.server_v6())),
    ] {
        let imap = listen(&net.server, listen_on);
        let (mut client, mut accepted) = connect(&net.client, &imap, &server);
        exchange(&mut client, &mut accepted);
        set_user_timeout(&client, USER_TIMEOUT_MS);
        thread::sleep(SILENCE);
        client
            .write_all(b"a1 NOOP\r\n")
            .expect("write after the silence");
        let local = client.local_addr().expect("local address").to_string();
        let view = agent.wait_for_connection_view(
            "the ICMP error on the open connection",
            "service=imap&role=client",
            |row| {
                row.local == local && row.state == ConnectionState::Open && row.icmp_error.is_some()
            },
        );
        let row = view
            .connections
            .iter()
            .find(|row| row.local == local)
            .expect("the row");
        seen.push((server, row.icmp_error.clone().unwrap_or_default()));
        abort(client);
        drop(accepted);
    }
    (net, agent, seen)
}

fn assert_icmp_cuts(net: &Topology, agent: &Agent, errors: [(&str, &str); 2]) {
    for (path, error) in [
        (net.server_path_v4(), errors[0]),
        (net.server_path_v6(), errors[1]),
    ] {
        let report = agent.wait_for_path("imap", "client", &path, "an icmp cut", |r| {
            r["cuts"]["icmp"].as_u64() == Some(1)
        });
        eprintln!("{path}: {report:#}");
        let labels = [
            ("service", "imap"),
            ("role", "client"),
            ("path", path.as_str()),
            ("error", error.1),
        ];
        assert_eq!(
            agent
                .scrape()
                .value("idlecut_icmp_soft_errors_total", &labels),
            1.0,
            "{path} {}",
            error.0
        );
    }
}

#[test]
fn host_unreachable_is_named_while_tcp_retransmits_and_cuts_as_icmp() {
    require_root();
    let (net, agent, seen) = cut_by("reject with icmpx type host-unreachable");
    eprintln!("{seen:?}");
    assert_eq!(seen[0].1, "EHOSTUNREACH", "{seen:?}");
    assert_eq!(seen[1].1, "EHOSTUNREACH", "{seen:?}");
    assert_icmp_cuts(
        &net,
        &agent,
        [("ipv4", "EHOSTUNREACH"), ("ipv6", "EHOSTUNREACH")],
    );
}

#[test]
fn administratively_prohibited_is_named_while_tcp_retransmits_and_cuts_as_icmp() {
    require_root();
    let (net, agent, seen) = cut_by("reject with icmpx type admin-prohibited");
    eprintln!("{seen:?}");
    // ICMP code 13 maps to EHOSTUNREACH; ICMPv6 administratively prohibited to EACCES.
    assert_eq!(seen[0].1, "EHOSTUNREACH", "{seen:?}");
    assert_eq!(seen[1].1, "EACCES", "{seen:?}");
    assert_icmp_cuts(&net, &agent, [("ipv4", "EHOSTUNREACH"), ("ipv6", "EACCES")]);
}
