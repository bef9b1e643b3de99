//! The real agent binary, running with its eBPF programs, and what tests ask it.

use std::{
    fs::File,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use idlecut_api::{
    connections::ConnectionsResponse,
    cuts::{CutRow, CutsResponse},
    paths::PathReport,
};
use serde::de::DeserializeOwned;

use crate::{
    http::http_get,
    prometheus::Scrape,
    system::{free_local_port, stop},
};

/// The agent binary, built by `./x test` (which sets IDLECUT_BIN).
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("IDLECUT_BIN") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/idlecut");
    assert!(
        path.exists(),
        "{} does not exist: build it with `./x build` or run the tests with `./x test`",
        path.display()
    );
    path
}

/// The `--hooks` every agent of this test run gets: `IDLECUT_TEST_HOOKS` (`auto`, the default,
/// or `classic`). `./x test` runs the integration suite once with each, so both kinds of hook
/// pass it.
pub fn hooks_under_test() -> String {
    std::env::var("IDLECUT_TEST_HOOKS").unwrap_or_else(|_| "auto".into())
}

/// A copy of the agent binary that `nobody` may execute (the build tree may sit under root's
/// home), for the tests that run it unprivileged. One per test process.
pub fn agent_copy_for_nobody() -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("idlecut-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let binary = dir.join("idlecut");
    std::fs::copy(agent_binary(), &binary).expect("copying the agent");
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    binary
}

/// Every tracepoint probe, as `idlecut_probe_attached` labels it: all attach on our kernels.
pub const TRACEPOINT_PROBES: [&str; 8] = [
    "sock:inet_sock_set_state",
    "tcp:tcp_probe",
    "sock:sock_send_length",
    "tcp:tcp_receive_reset",
    "tcp:tcp_send_reset",
    "tcp:tcp_retransmit_skb",
    "sock:inet_sk_error_report",
    "tcp:tcp_destroy_sock",
];

/// The `kind` label every tracepoint probe should report under [`hooks_under_test`].
pub fn expected_tracepoint_kind() -> &'static str {
    match hooks_under_test().as_str() {
        "classic" => "tracepoint",
        _ => "tp_btf",
    }
}

/// The real agent, with its eBPF programs attached, killed on drop.
pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    /// Stopped by the test already (`stops_within`).
    stopped: bool,
}

impl Agent {
    /// Starts the agent with `args` and waits until it serves /healthz.
    pub fn start(args: &[&str]) -> Self {
        Self::try_start_as(&[], &agent_binary(), args).unwrap_or_else(|err| panic!("{err}"))
    }

    /// Starts `binary` with `args` behind `runner` (a command prefix such as `setpriv ...`,
    /// or nothing) and waits until it serves /healthz; or says, with its log, why it did not.
    pub fn try_start_as(runner: &[&str], binary: &Path, args: &[&str]) -> Result<Self, String> {
        let addr = free_local_port();
        let log = std::env::temp_dir().join(format!("idlecut-agent-{}.log", addr.port()));
        let log_file = File::create(&log).expect("agent log file");
        // Scans every 2 s unless the test says otherwise: a close the kernel skipped (another
        // BPF program was running on that CPU) is then settled within a test's wait.
        let scan: &[&str] = if args.contains(&"--scan-interval") {
            &[]
        } else {
            &["--scan-interval", "2s"]
        };
        let mut command = match runner.split_first() {
            Some((program, runner_args)) => {
                let mut command = Command::new(program);
                command.args(runner_args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("--listen")
            .arg(addr.to_string())
            .args(["--hooks", &hooks_under_test()])
            .args(scan)
            .args(args)
            .env(
                "IDLECUT_LOG",
                std::env::var("IDLECUT_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting the agent");
        let mut agent = Self {
            child,
            addr,
            log,
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = agent.child.try_wait().expect("agent status") {
                return Err(format!(
                    "the agent exited with {status} at start-up:\n{}",
                    agent.log_text()
                ));
            }
            if http_get(addr, "/healthz").is_ok_and(|(status, _)| status == 200) {
                return Ok(agent);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the agent did not come up within 20 s:\n{}",
                    agent.log_text()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent (SIGTERM) and says whether it exited on its own within `grace`.
    pub fn stops_within(&mut self, grace: Duration) -> bool {
        self.stopped = true;
        stop(&mut self.child, grace)
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes the agent (SIGSTOP) until the guard is dropped (SIGCONT): what a starved or
    /// descheduled agent looks like to the kernel, so a test can overflow its ring buffer on a
    /// machine of any speed.
    pub fn frozen(&self) -> Frozen {
        let pid = i32::try_from(self.pid()).expect("pid fits in pid_t");
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        let rc = unsafe { libc::kill(pid, libc::SIGSTOP) };
        assert_eq!(rc, 0, "SIGSTOP agent: {}", std::io::Error::last_os_error());
        Frozen { pid }
    }

    /// The agent's log, without the loader's own debug chatter.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.contains(" aya_obj::") && !line.contains(" aya::"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The agent's own health series, for failure messages.
    pub fn health(&self) -> String {
        http_get(self.addr, "/metrics")
            .map(|(_, body)| {
                body.lines()
                    .filter(|line| {
                        [
                            "idlecut_events_",
                            "idlecut_tracked_",
                            "idlecut_kernel_",
                            "idlecut_untracked_",
                        ]
                        .iter()
                        .any(|prefix| line.starts_with(prefix))
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_else(|err| format!("(cannot scrape: {err})"))
    }

    pub fn scrape(&self) -> Scrape {
        let (status, body) = http_get(self.addr, "/metrics").expect("scraping /metrics");
        assert_eq!(status, 200, "/metrics answered {status}: {body}");
        Scrape::parse(&body)
    }

    /// Waits until `done` holds for a scrape (the agent classifies a close after a short grace
    /// period), then returns a scrape taken a moment later, so that counts that would overshoot
    /// are caught too.
    pub fn wait_for(&self, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
        poll_until(
            what,
            Duration::from_secs(10),
            Duration::from_millis(50),
            || done(&self.scrape()).then_some(()),
            || {
                format!(
                    "last scrape:\n{}\nagent log:\n{}",
                    self.scrape().text,
                    self.log_text()
                )
            },
        );
        thread::sleep(Duration::from_millis(300));
        self.scrape()
    }

    /// An API answer: `GET target` must answer 200 with JSON that reads as `T` (one of the
    /// agent's own answer types from `idlecut_api`, or `serde_json::Value`).
    pub fn api<T: DeserializeOwned>(&self, target: &str) -> T {
        parse_json(target, &self.api_text(target))
    }

    fn api_text(&self, target: &str) -> String {
        let (status, body) =
            http_get(self.addr, target).unwrap_or_else(|err| panic!("GET {target}: {err}"));
        assert_eq!(status, 200, "{target} answered {status}: {body}");
        body
    }

    /// `/api/v1/paths`, parsed; the answer must also read as the agent's own types.
    pub fn paths(&self) -> Vec<serde_json::Value> {
        let target = "/api/v1/paths";
        let body = self.api_text(target);
        let _: Vec<PathReport> = parse_json(target, &body);
        parse_json(target, &body)
    }

    /// `/api/v1/paths`, as the agent's own types.
    pub fn path_reports(&self) -> Vec<PathReport> {
        self.api("/api/v1/paths")
    }

    /// `/api/v1/connections?{query}`, as the agent's own types.
    pub fn connection_view(&self, query: &str) -> ConnectionsResponse {
        self.api(&format!("/api/v1/connections?{query}"))
    }

    /// Waits until a row of `/api/v1/connections?{query}` satisfies `done` (10 s at most).
    pub fn wait_for_connection_view(
        &self,
        what: &str,
        query: &str,
        done: impl Fn(&idlecut_api::connections::ConnectionRow) -> bool,
    ) -> ConnectionsResponse {
        poll_until(
            what,
            Duration::from_secs(10),
            Duration::from_millis(100),
            || {
                let view = self.connection_view(query);
                view.connections.iter().any(&done).then_some(view)
            },
            || {
                format!(
                    "the view:\n{}\nagent log:\n{}",
                    serde_json::to_string_pretty(&self.connection_view(query).connections)
                        .unwrap_or_default(),
                    self.log_text()
                )
            },
        )
    }

    /// Waits until a cut of `/api/v1/cuts?{query}` satisfies `done` (30 s at most: a cut comes
    /// once the path has forgotten the connection and someone spoke), and returns it.
    pub fn wait_for_cut(&self, what: &str, query: &str, done: impl Fn(&CutRow) -> bool) -> CutRow {
        let cuts = |agent: &Self| agent.api::<CutsResponse>(&format!("/api/v1/cuts?{query}"));
        poll_until(
            what,
            Duration::from_secs(30),
            Duration::from_millis(200),
            || cuts(self).cuts.into_iter().find(|cut| done(cut)),
            || {
                format!(
                    "the cuts:\n{:#?}\nagent log:\n{}",
                    cuts(self).cuts,
                    self.log_text()
                )
            },
        )
    }

    /// The report of one path, if the agent has it.
    pub fn path(&self, service: &str, role: &str, path: &str) -> Option<serde_json::Value> {
        self.paths().into_iter().find(|report| {
            report["service"] == service && report["role"] == role && report["path"] == path
        })
    }

    /// Waits until the report of a path satisfies `done`, and returns it.
    pub fn wait_for_path(
        &self,
        service: &str,
        role: &str,
        path: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        poll_until(
            &format!("{what} on {service}/{role}/{path}"),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || self.path(service, role, path).filter(|report| done(report)),
            || {
                format!(
                    "paths:\n{}\nagent health:\n{}\nagent log:\n{}",
                    serde_json::to_string_pretty(&self.paths()).unwrap_or_default(),
                    self.health(),
                    self.log_text()
                )
            },
        )
    }
}

/// Calls `attempt` every `interval` until it gives a value, for `timeout` at most; then fails
/// with what was awaited and what `last_state` says (asked only then).
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut attempt: impl FnMut() -> Option<T>,
    last_state: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; {}",
                last_state()
            );
        }
        thread::sleep(interval);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.stopped || stop(&mut self.child, Duration::from_secs(5)) {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

fn parse_json<T: DeserializeOwned>(target: &str, body: &str) -> T {
    serde_json::from_str(body)
        .unwrap_or_else(|err| panic!("bad JSON from {target} ({err}): {body}"))
}

/// Whether the agent attached the fentry program that reports ICMP errors (kernels that refuse
/// BPF trampolines do not get it, and the agent degrades to the socket's soft error).
pub fn icmp_probe_attached(scrape: &Scrape) -> bool {
    scrape.value("idlecut_probe_attached", &[("probe", "fentry:tcp_v4_err")]) == 1.0
}

/// The agent stays stopped while this lives; see [`Agent::frozen`].
pub struct Frozen {
    pid: i32,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}
