//! On a Kubernetes node: which pod was cut, and whether the node itself is the middlebox.
//!
//! Node A's namespace plays the node: it routes (and masquerades) between a pod's namespace and
//! a server, its conntrack forgets idle flows after `NODE_CONNTRACK_S` (a tuning guide's
//! lowered `nf_conntrack_tcp_timeout_established`), and an nftables `ct timeout` policy
//! forgets Submission flows sooner (`NODE_POLICY_S`). A segment of a forgotten flow is answered
//! with a RST. Topology B's router is a middlebox beyond the node, with a longer timeout. The
//! agent is told which namespace is the node (`--node-netns`, PID 1's on a real node).
//!
//! The pod is a real process (bash) in a cgroup named as the kubelet names it, with the
//! kubelet's log directories laid out beside; the test's own process is the host.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::MetadataExt as _,
    process::Command,
    thread,
    time::Duration,
};

use idlecut_integration_tests::{
    Agent, FakePod, KubeletLogs, Topology, accept_within, agent_binary,
    api::{
        cuts::CutsResponse,
        vocabulary::{CutterLocation, KeepaliveOutlook, Role, Signature, TimeoutSource},
    },
    connect, exchange, listen, require_root, set_keepalive,
};

const NODE_CONNTRACK_S: u32 = 8;
const NODE_POLICY_S: u32 = 4;
const BEYOND_S: u32 = 12;

/// A silence, then the client speaks: answered (the path let it through) or reset (cut).
fn silence_then_speak(mut client: TcpStream, mut server: TcpStream, gap_s: u64, cut: bool) {
    thread::sleep(Duration::from_secs(gap_s));
    client.write_all(b"a2 NOOP\r\n").expect("client write");
    let mut buf = [0u8; 64];
    if cut {
        // The node (or the router beyond) forgot the flow and answers with a RST.
        let read = client.read(&mut buf);
        assert!(
            read.is_err() || read.is_ok_and(|n| n == 0),
            "a {gap_s} s silence should have been cut"
        );
    } else {
        let n = server.read(&mut buf).expect("the server hears the client");
        assert!(n > 0);
        server.write_all(b"a2 OK\r\n").expect("server write");
        assert!(client.read(&mut buf).expect("client read") > 0);
    }
}

/// The node's nftables: a `ct timeout` policy for Submission, and masquerading the pods'
/// traffic. (The policy is set on a flow conntrack has just created and not yet confirmed:
/// after conntrack's hook, at filter priority; before it, the flow does not exist yet.)
fn node_ruleset(policy_s: u32) -> String {
    format!(
        "table inet k8s {{\n\
         ct timeout mailshort {{\n protocol tcp\n l3proto ip\n policy = {{ established: {policy_s} }}\n }}\n\
         chain pre {{\n type filter hook prerouting priority filter; policy accept;\n tcp dport 587 ct timeout set \"mailshort\"\n }}\n\
         }}\n\
         table ip nat {{\n chain postrouting {{\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"eth2\" masquerade\n }}\n}}\n"
    )
}

fn netns_inode(name: &str) -> u32 {
    let inode = std::fs::metadata(format!("/run/netns/{name}"))
        .expect("the namespace's file")
        .ino();
    u32::try_from(inode).expect("a 32-bit inode")
}

#[test]
fn the_cut_pod_is_named_and_the_node_is_told_from_a_middlebox_beyond_it() {
    require_root();
    let node = Topology::new();
    node.router_conntrack(NODE_CONNTRACK_S, false);
    node.router_rules("ct state invalid reject with tcp reset");
    node.router.nft(&node_ruleset(NODE_POLICY_S));
    let beyond = Topology::new();
    beyond.router_conntrack(BEYOND_S, false);
    beyond.router_rules("ct state invalid reject with tcp reset");
    let logs = KubeletLogs::new();
    let mut pod = FakePod::new(&logs, "mail", "mua-0", "mua");
    let node_netns = format!("/run/netns/{}", node.router.name);
    let kubelet_logs = logs.root.to_string_lossy().into_owned();
    let agent = Agent::start(&[
        "--min-idle-gap",
        "1s",
        "--node-netns",
        &node_netns,
        "--node-timeouts",
        "conntrack,nftables",
        "--kubelet-logs",
        &kubelet_logs,
    ]);

    let imap = listen(&node.server, "0.0.0.0:143");
    let submission = listen(&node.server, "0.0.0.0:587");
    let beyond_imap = listen(&beyond.server, "0.0.0.0:143");
    // The pod's client: greets, then stays silent longer than the node's conntrack keeps the
    // flow, then speaks and is reset. Started first: its silence runs alongside the others.
    let server_ip = node.server_v4();
    pod.spawn(
        &node.client,
        &format!(
            "exec 3<>/dev/tcp/{server_ip}/143 || exit 98; echo 'a1 NOOP' >&3; read -t 5 line <&3; \
             sleep {}; echo 'a2 NOOP' >&3; read -t 5 line <&3; sleep 30",
            NODE_CONNTRACK_S + 3
        ),
    );
    let mut pod_server = accept_within(&imap, Duration::from_secs(10));
    let mut buf = [0u8; 64];
    assert!(pod_server.read(&mut buf).expect("the pod's greeting") > 0);
    pod_server
        .write_all(b"a1 OK\r\n")
        .expect("answering the pod");

    // Host connections: a silence each path lets through, and one it cuts.
    let target = |topology: &Topology, port: u16| format!("{}:{port}", topology.server_v4());
    let runs = [
        (&node, &imap, 143, NODE_CONNTRACK_S - 3, false),
        (&node, &submission, 587, NODE_POLICY_S - 2, false),
        (&node, &submission, 587, NODE_POLICY_S + 2, true),
        (&beyond, &beyond_imap, 143, BEYOND_S - 2, false),
        (&beyond, &beyond_imap, 143, BEYOND_S + 3, true),
    ];
    let threads: Vec<_> = runs
        .iter()
        .map(|&(topology, listener, port, gap, cut)| {
            let (mut client, mut server) =
                connect(&topology.client, listener, &target(topology, port));
            exchange(&mut client, &mut server);
            thread::spawn(move || silence_then_speak(client, server, u64::from(gap), cut))
        })
        .collect();
    for thread in threads {
        thread.join().expect("a scripted connection");
    }

    // The node's conntrack cut the pod's IMAP connection.
    let node_inode = netns_inode(&node.router.name);
    let imap_path = node.server_path_v4();
    let report = agent.wait_for_path(
        "imap",
        "client",
        &imap_path,
        "the node as the cutter",
        |r| r["cutter"] == "node",
    );
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    let reports = agent.path_reports();
    let imap_report = reports
        .iter()
        .find(|r| {
            r.service.as_ref() == "imap" && r.role == Role::Client && r.path.as_ref() == imap_path
        })
        .expect("the IMAP path");
    assert_eq!(imap_report.cutter, Some(CutterLocation::Node));
    let likely = &imap_report.node_timeouts[0];
    assert_eq!(likely.netns, node_inode);
    assert_eq!(likely.timeout.source, TimeoutSource::Conntrack);
    assert_eq!(likely.timeout.name, "nf_conntrack_tcp_timeout_established");
    assert_eq!(likely.timeout.seconds, u64::from(NODE_CONNTRACK_S));
    let sentence = format!(
        "This node's conntrack (namespace {node_inode}, nf_conntrack_tcp_timeout_established = {NODE_CONNTRACK_S} s) forgets idle flows: it is the likely cutter."
    );
    assert!(
        imap_report.explanation.contains(&sentence),
        "{}",
        imap_report.explanation
    );

    // Its nftables policy cut Submission sooner.
    let submission_report = agent.wait_for_path(
        "submission",
        "client",
        &imap_path,
        "the node's policy as the cutter",
        |r| r["cutter"] == "node",
    );
    assert_eq!(submission_report["node_timeouts"][0]["source"], "nftables");
    assert_eq!(
        submission_report["node_timeouts"][0]["name"],
        "inet/k8s/mailshort"
    );
    assert_eq!(
        submission_report["node_timeouts"][0]["seconds"],
        u64::from(NODE_POLICY_S)
    );

    // The router beyond the node cut at 12 s: the node's timeouts say it is not the node.
    let beyond_report = agent.wait_for_path(
        "imap",
        "client",
        &beyond.server_path_v4(),
        "a cutter beyond the node",
        |r| r["cutter"] == "beyond_node",
    );
    assert!(
        beyond_report["explanation"]
            .as_str()
            .is_some_and(|e| e.contains("the cutter is beyond this node")),
        "{beyond_report:#}"
    );
    assert_eq!(beyond_report["node_timeouts"], serde_json::json!([]));

    // The metrics carry the node's timeouts with a REQ-5 verdict.
    let scrape = agent.scrape();
    let node_label = node_inode.to_string();
    for (source, name, seconds) in [
        (
            "conntrack",
            "nf_conntrack_tcp_timeout_established",
            NODE_CONNTRACK_S,
        ),
        ("nftables", "inet/k8s/mailshort", NODE_POLICY_S),
    ] {
        let labels = [
            ("netns", node_label.as_str()),
            ("node", "true"),
            ("source", source),
            ("name", name),
        ];
        assert_eq!(
            scrape.value("idlecut_host_idle_timeout_seconds", &labels),
            f64::from(seconds),
            "{}",
            scrape.text
        );
        assert_eq!(
            scrape.value("idlecut_host_idle_timeout_req5_violation", &labels),
            1.0
        );
    }

    // The cuts log names the pod of the pod's cut and the host for the host's.
    let cuts: CutsResponse = agent.api("/api/v1/cuts");
    let pod_cut = cuts
        .cuts
        .iter()
        .find(|cut| cut.service == "imap" && cut.role == Role::Client && cut.path == imap_path)
        .unwrap_or_else(|| panic!("the pod's cut: {cuts:#?}"));
    assert_eq!(pod_cut.signature, Signature::Reset);
    let named = pod_cut.pod.as_ref().expect("the cut's pod");
    assert_eq!(named.namespace.as_deref(), Some("mail"));
    assert_eq!(named.pod.as_deref(), Some("mua-0"));
    assert_eq!(named.container.as_deref(), Some("mua"));
    assert_eq!(named.uid, pod.uid);
    assert_eq!(pod_cut.host, Some(false));
    let host_cut = cuts
        .cuts
        .iter()
        .find(|cut| cut.service == "submission" && cut.role == Role::Client)
        .expect("the host's Submission cut");
    assert_eq!((host_cut.pod.as_ref(), host_cut.host), (None, Some(true)));
    // `idlecut cuts --namespace mail` prints the pod's cut only.
    let output = Command::new(agent_binary())
        .args([
            "cuts",
            "--agent",
            &agent.addr.to_string(),
            "--namespace",
            "mail",
        ])
        .output()
        .expect("idlecut cuts");
    let table = String::from_utf8_lossy(&output.stdout);
    eprintln!("idlecut cuts --namespace mail:\n{table}");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(table.contains(&pod.display_name()), "{table}");
    assert!(!table.contains("submission"), "{table}");

    // The connection view: the pod's open server side is the host's (the test holds it), and
    // a keepalive below the cut-off survives while one above it will be cut.
    let (keep_short, _short_server) = connect(&node.client, &imap, &target(&node, 143));
    set_keepalive(&keep_short, 2);
    let (keep_long, _long_server) = connect(&node.client, &imap, &target(&node, 143));
    set_keepalive(&keep_long, 60);
    let port_of = |stream: &TcpStream| stream.local_addr().expect("local address").to_string();
    let (short_local, long_local) = (port_of(&keep_short), port_of(&keep_long));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let view = agent.connection_view("service=imap&role=client");
        let outlook = |local: &str| {
            view.connections
                .iter()
                .find(|row| row.local == local)
                .and_then(|row| row.keepalive_outlook)
        };
        if outlook(&short_local) == Some(KeepaliveOutlook::Survives)
            && outlook(&long_local) == Some(KeepaliveOutlook::WillBeCut)
        {
            let mine = view
                .connections
                .iter()
                .find(|row| row.local == short_local)
                .expect("listed");
            assert_eq!((mine.pod.as_ref(), mine.host), (None, Some(true)));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "keepalive outlooks not reported: {view:#?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    // For README: the tables as an SRE sees them.
    for args in [&["cuts"][..], &["connections", "--service", "imap"]] {
        let output = Command::new(agent_binary())
            .args(args)
            .args(["--agent", &agent.addr.to_string()])
            .output()
            .expect("idlecut cuts / connections");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!(
            "idlecut {}:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    drop(pod_server);
}
