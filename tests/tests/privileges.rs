//! The privileges README documents are the ones the agent needs: it starts and follows
//! connections as a non-root user with exactly those capabilities, and once its programs are
//! attached it keeps only what its running work (the namespace scan) needs.

use std::process::Command;

use idlecut_integration_tests::{
    Agent, TRACEPOINT_PROBES, Topology, agent_copy_for_nobody, close_gracefully,
    expected_tracepoint_kind, hooks_under_test, imap_after_an_exchange, require_root,
};

/// README's list, as setpriv spells it.
const DOCUMENTED_CAPABILITIES: &str = "+bpf,+perfmon,+sys_admin,+sys_ptrace";
const NOBODY: u32 = 65534;
/// Bits of CAP_SYS_PTRACE (19) and CAP_SYS_ADMIN (21): what the agent keeps after start-up.
const SCAN_CAPABILITIES: u64 = (1 << 19) | (1 << 21);

/// `setpriv` running a program as nobody with exactly the documented capabilities (inherited
/// and ambient, so that they survive the change of user and the exec).
fn as_nobody_with_documented_capabilities() -> Vec<String> {
    let caps = format!("-all,{DOCUMENTED_CAPABILITIES}");
    [
        "setpriv",
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
        &format!("--bounding-set={caps}"),
        "--",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A field of /proc/<pid>/status.
fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("agent status")
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)
                .map(|value| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn effective_capabilities(pid: u32) -> u64 {
    u64::from_str_radix(&status_field(pid, "CapEff:"), 16).expect("CapEff is hex")
}

/// Whether nobody can read a classic tracepoint's format (tracefs is root's by default).
fn tracefs_readable_by_nobody() -> bool {
    let mut command: Vec<String> = as_nobody_with_documented_capabilities();
    command.extend(
        [
            "test",
            "-r",
            "/sys/kernel/tracing/events/sock/inet_sock_set_state/format",
        ]
        .map(str::to_owned),
    );
    Command::new(&command[0])
        .args(&command[1..])
        .status()
        .expect("setpriv")
        .success()
}

#[test]
fn runs_as_a_non_root_user_with_exactly_the_documented_capabilities() {
    require_root();
    // Mounted (by root) as on any machine where something traces: what the agent then finds.
    if !std::path::Path::new("/sys/kernel/tracing/events").is_dir() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status();
    }
    let binary = agent_copy_for_nobody();
    let runner = as_nobody_with_documented_capabilities();
    let runner: Vec<&str> = runner.iter().map(String::as_str).collect();
    let started = Agent::try_start_as(&runner, &binary, &[]);
    if hooks_under_test() == "classic" && !tracefs_readable_by_nobody() {
        // Classic tracepoints read their record layouts from tracefs, which only root may read
        // here: the agent says so and what to do, instead of starting blind.
        let err = match started {
            Ok(_) => panic!("the agent started with classic tracepoints it cannot read"),
            Err(err) => err,
        };
        assert!(
            err.contains("not readable") && err.contains("tracefs"),
            "the error should say that tracefs is not readable:\n{err}"
        );
        return;
    }
    let agent = started.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        status_field(agent.pid(), "Uid:").split_whitespace().next(),
        Some(NOBODY.to_string().as_str()),
        "the agent should run as nobody"
    );
    // Once attached, only the scan's capabilities remain.
    assert_eq!(
        effective_capabilities(agent.pid()),
        SCAN_CAPABILITIES,
        "capabilities after start-up (CapEff)"
    );
    let scrape = agent.scrape();
    for probe in TRACEPOINT_PROBES {
        assert_eq!(
            scrape.get(
                "idlecut_probe_hook",
                &[("probe", probe), ("kind", expected_tracepoint_kind())]
            ),
            Some(1.0),
            "{probe} not attached as {} by a non-root agent:\n{}\n{}",
            expected_tracepoint_kind(),
            scrape.text,
            agent.log_text()
        );
    }
    // And it follows connections in other namespaces.
    let net = Topology::new();
    let (client, server) = imap_after_an_exchange(&net);
    close_gracefully(client, server);
    let path = net.client_path_v4();
    agent.wait_for("the connection, opened and closed", |scrape| {
        scrape.sum(
            "idlecut_connections_closed_total",
            &[
                ("service", "imap"),
                ("role", "server"),
                ("path", &path),
                ("end", "fin"),
            ],
        ) >= 1.0
    });
}

#[test]
fn root_keeps_only_the_scan_capabilities_once_attached() {
    require_root();
    let agent = Agent::start(&[]);
    assert_eq!(
        effective_capabilities(agent.pid()),
        SCAN_CAPABILITIES,
        "capabilities after start-up (CapEff)"
    );
    assert_eq!(
        u64::from_str_radix(&status_field(agent.pid(), "CapPrm:"), 16).expect("hex"),
        SCAN_CAPABILITIES,
        "dropped capabilities cannot come back (CapPrm)"
    );
}
