//! On a Kubernetes node whose container runtime the agent may ask (`--cri-socket`): a real
//! containerd runs a real pod, made through the CRI as the kubelet makes it (its manifest's
//! labels, a Deployment's `pod-template-hash`, the kubelet's cgroupfs layout), and the agent,
//! with the kubelet's directories turned off, names the pod, its container, its labels and its
//! Deployment from the runtime alone, for the open connection and for its cut.
//!
//! The pod uses the node's network (no CNI here): containerd runs in the topology's client
//! namespace, whose router forgets idle flows after `CUT_S` and answers what follows with a
//! RST.

use std::{
    io::{Read as _, Write as _},
    process::Command,
    time::Duration,
};

use idlecut_integration_tests::{
    Agent, Containerd, CriPod, Topology, accept_within, agent_binary,
    api::{
        pods::Pod,
        vocabulary::{Role, Signature, WorkloadKind},
    },
    listen, require_root,
};

const CUT_S: u32 = 5;

fn assert_names_the_pod(pod: &Pod, expected: &CriPod) {
    assert_eq!(pod.namespace.as_deref(), Some(expected.namespace.as_str()));
    assert_eq!(pod.pod.as_deref(), Some(expected.name.as_str()));
    assert_eq!(pod.uid, expected.uid);
    assert_eq!(pod.container.as_deref(), Some(expected.container.as_str()));
    let workload = pod.workload.as_ref().expect("the pod's workload");
    assert_eq!(
        (workload.kind, workload.name.as_str()),
        (WorkloadKind::Deployment, "imap-client")
    );
    assert_eq!(
        pod.labels.get("app").map(String::as_str),
        Some("imap-client")
    );
    assert!(
        !pod.labels
            .keys()
            .any(|key| key.starts_with("io.kubernetes.")),
        "the kubelet's own labels are left out: {:?}",
        pod.labels
    );
}

#[test]
fn the_runtime_names_the_pod_its_labels_and_its_deployment() {
    require_root();
    let node = Topology::new();
    node.router_conntrack(CUT_S, false);
    node.router_rules("ct state invalid reject with tcp reset");
    let mut containerd = Containerd::start(&node.client);
    let socket = containerd.socket.to_string_lossy().into_owned();
    let agent = Agent::start(&[
        "--min-idle-gap",
        "1s",
        "--cri-socket",
        &socket,
        "--kubelet-logs",
        "none",
    ]);

    let imap = listen(&node.server, "0.0.0.0:143");
    let pod = CriPod {
        namespace: "mail".into(),
        name: "imap-client-5f7c9d8b4-q7x2k".into(),
        uid: format!("6a1f0c2e-7b3d-4e5f-8a9b-{:012x}", std::process::id()),
        container: "mua".into(),
        labels: vec![
            ("app".into(), "imap-client".into()),
            ("pod-template-hash".into(), "5f7c9d8b4".into()),
        ],
    };
    // Greets, stays silent longer than the router keeps the flow, then speaks and is reset.
    let server_ip = node.server_v4();
    containerd.run_pod(
        &pod,
        &format!(
            "(echo 'a1 NOOP'; sleep {}; echo 'a2 NOOP'; sleep 30) | nc {server_ip} 143",
            CUT_S + 4
        ),
    );
    let mut server = accept_within(&imap, Duration::from_secs(30));
    let mut buf = [0u8; 64];
    assert!(server.read(&mut buf).expect("the pod's greeting") > 0);
    server.write_all(b"a1 OK\r\n").expect("answering the pod");

    // While it is open, the connection view names the pod from the runtime.
    let view = agent.wait_for_connection_view(
        "the pod's open connection, named",
        "service=imap&role=client",
        |row| {
            row.pod
                .as_ref()
                .is_some_and(|p| p.workload.is_some() && p.container.is_some())
        },
    );
    let row = view
        .connections
        .iter()
        .find(|row| row.pod.is_some())
        .expect("the pod's row");
    assert_names_the_pod(row.pod.as_ref().expect("named"), &pod);
    assert_eq!(row.host, Some(false));

    // Its cut names it too, in the API and in `idlecut cuts`, which finds it by its workload.
    let cut = agent.wait_for_cut("the pod's cut", "namespace=mail", |cut| {
        cut.service == "imap" && cut.role == Role::Client
    });
    assert_eq!(cut.signature, Signature::Reset);
    assert_names_the_pod(cut.pod.as_ref().expect("the cut's pod"), &pod);

    // `idlecut cuts --workload W`: its table, which must come with success.
    let cuts_of = |workload: &str| {
        let output = Command::new(agent_binary())
            .args([
                "cuts",
                "--agent",
                &agent.addr.to_string(),
                "--workload",
                workload,
            ])
            .output()
            .expect("idlecut cuts");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let table = cuts_of("deployment/imap-client");
    eprintln!("idlecut cuts --workload deployment/imap-client:\n{table}");
    // Another workload's filter leaves it out.
    let other = cuts_of("statefulset/imap-client");
    assert!(!other.contains(&pod.name), "{other}");
    let last_two = |line: &str| {
        let cells: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        cells[cells.len().saturating_sub(2)..].to_vec()
    };
    let mut lines = table.lines();
    assert_eq!(
        last_two(lines.next().unwrap_or_default()),
        ["POD", "WORKLOAD"],
        "{table}"
    );
    assert_eq!(
        last_two(lines.next().unwrap_or_default()),
        [pod.display_name().as_str(), "deployment/imap-client"],
        "{table}"
    );
}
