//! Harness for idlecut's kernel integration tests: network namespaces that clean up after
//! themselves, a client / router / server topology joined by veth pairs, the real agent binary
//! running with its eBPF programs, and a scraper for its `/metrics`.
//!
//! Tests panic with context rather than return errors, so a failure says where it happened.

pub mod web;

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// Kernel tests need root. Under CI they fail without it; elsewhere they say loudly that they
/// did not run. Returns false when the test should stop.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1") {
        panic!(
            "kernel integration tests need root (CI=true forbids skipping): run them with ./x test"
        );
    }
    eprintln!("SKIPPED: kernel integration tests need root; `./x test` runs them with sudo");
    false
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running {program} {args:?}: {err}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        // A namespace left behind by a crashed run would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")]);
    }

    /// Loads an nftables ruleset (`nft -f -`) in the namespace.
    pub fn nft(&self, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("writing the ruleset");
        let output = child.wait_with_output().expect("waiting for nft");
        assert!(
            output.status.success(),
            "nft -f failed for\n{ruleset}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it creates live there (and
    /// may then be used from any thread).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|err| panic!("opening {path}: {err}"));
            // SAFETY: a valid namespace file descriptor; only this thread changes namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

static NEXT_TOPOLOGY: AtomicU32 = AtomicU32::new(0);

/// client --veth-- router --veth-- server, over IPv4 and IPv6. The router forwards, and plays
/// the middlebox with nftables rules the test adds.
///
/// Addresses, with `k` unique to the topology so that paths never collide between tests:
/// client 10.k.1.2 / fd00:k:1::2, router 10.k.1.1 10.k.2.1 / fd00:k:1::1 fd00:k:2::1,
/// server 10.k.2.2 / fd00:k:2::2.
pub struct Topology {
    pub k: u32,
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
}

impl Topology {
    pub fn new() -> Self {
        let k = 100 + (std::process::id() + NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed)) % 150;
        let tag = format!("ic{}-{k}", std::process::id());
        let client = Netns::new(format!("{tag}-client"));
        let router = Netns::new(format!("{tag}-router"));
        let server = Netns::new(format!("{tag}-server"));
        for (ns, side) in [(&client, 1), (&server, 2)] {
            sh(
                "ip",
                &[
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    &ns.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("eth{side}"),
                    "netns",
                    &router.name,
                ],
            );
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
            ns.exec(
                "ip",
                &["addr", "add", &format!("10.{k}.{side}.2/24"), "dev", "eth0"],
            );
            ns.exec(
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("fd00:{k}:{side}::2/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            ns.exec("ip", &["link", "set", "eth0", "up"]);
            ns.exec(
                "ip",
                &[
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.{k}.{side}.1"),
                ],
            );
            ns.exec(
                "ip",
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("fd00:{k}:{side}::1"),
                ],
            );
            let dev = format!("eth{side}");
            router.exec(
                "ip",
                &["addr", "add", &format!("10.{k}.{side}.1/24"), "dev", &dev],
            );
            router.exec(
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("fd00:{k}:{side}::1/64"),
                    "dev",
                    &dev,
                    "nodad",
                ],
            );
            router.exec("ip", &["link", "set", &dev, "up"]);
        }
        router.sysctl("net.ipv4.ip_forward", "1");
        router.sysctl("net.ipv6.conf.all.forwarding", "1");
        Self {
            k,
            client,
            router,
            server,
        }
    }

    pub fn client_v4(&self) -> String {
        format!("10.{}.1.2", self.k)
    }
    pub fn server_v4(&self) -> String {
        format!("10.{}.2.2", self.k)
    }
    pub fn server_v6(&self) -> String {
        format!("fd00:{}:2::2", self.k)
    }
    /// The path label the server gives its clients: the client subnet.
    pub fn client_path_v4(&self) -> String {
        format!("10.{}.1.0/24", self.k)
    }
    /// The path label the client gives its server.
    pub fn server_path_v4(&self) -> String {
        format!("10.{}.2.0/24", self.k)
    }
    pub fn client_path_v6(&self) -> String {
        format!("fd00:{}:1::/48", self.k)
    }
    pub fn server_path_v6(&self) -> String {
        format!("fd00:{}:2::/48", self.k)
    }
    /// Every path label this topology's connections can have.
    pub fn paths(&self) -> Vec<String> {
        vec![
            self.client_path_v4(),
            self.server_path_v4(),
            self.client_path_v6(),
            self.server_path_v6(),
        ]
    }

    /// Installs an nftables ruleset in the router (replacing table `inet middlebox`).
    pub fn router_rules(&self, forward_chain_rules: &str) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.router.name,
                "nft",
                "delete",
                "table",
                "inet",
                "middlebox",
            ])
            .output();
        self.router.nft(&format!(
            "table inet middlebox {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  {forward_chain_rules}\n }}\n}}\n"
        ));
    }

    pub fn clear_router_rules(&self) {
        self.router
            .exec("nft", &["delete", "table", "inet", "middlebox"]);
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

/// A listener in the server namespace.
pub fn listen(ns: &Netns, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().expect("listen address");
    ns.run(move || TcpListener::bind(addr).unwrap_or_else(|err| panic!("bind {addr}: {err}")))
}

/// A connection from the client namespace, with the server's end accepted.
pub fn connect(ns: &Netns, listener: &TcpListener, addr: &str) -> (TcpStream, TcpStream) {
    let addr: SocketAddr = addr.parse().expect("connect address");
    let client = ns.run(move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|err| panic!("connect {addr}: {err}"))
    });
    let (server, _) = listener.accept().expect("accept");
    for stream in [&client, &server] {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
    }
    (client, server)
}

/// One request and one answer, like an IMAP command.
pub fn exchange(client: &mut TcpStream, server: &mut TcpStream) {
    client.write_all(b"a1 NOOP\r\n").expect("client write");
    let mut buf = [0u8; 64];
    let n = server.read(&mut buf).expect("server read");
    assert_eq!(&buf[..n], b"a1 NOOP\r\n");
    server
        .write_all(b"a1 OK NOOP completed\r\n")
        .expect("server write");
    let n = client.read(&mut buf).expect("client read");
    assert!(n > 0, "the server's answer did not arrive");
}

/// Closes both ends with FIN: the client first, the server once it has read the EOF.
pub fn close_gracefully(client: TcpStream, mut server: TcpStream) {
    drop(client);
    let mut buf = [0u8; 16];
    assert_eq!(server.read(&mut buf).expect("server read EOF"), 0);
    drop(server);
}

/// Closes a socket with a RST (SO_LINGER 0), as an aborting application does.
pub fn abort(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket and option buffer of the right size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            u32::try_from(size_of::<libc::linger>()).expect("size"),
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

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

/// The real agent, with its eBPF programs attached, killed on drop.
/// The `--hooks` every agent of this test run gets: `IDLECUT_TEST_HOOKS` (`auto`, the default,
/// or `classic`). `./x test` runs the integration suite once with each, so both kinds of hook
/// pass it.
pub fn hooks_under_test() -> String {
    std::env::var("IDLECUT_TEST_HOOKS").unwrap_or_else(|_| "auto".into())
}

/// The `kind` label every tracepoint probe should report under [`hooks_under_test`].
pub fn expected_tracepoint_kind() -> &'static str {
    match hooks_under_test().as_str() {
        "classic" => "tracepoint",
        _ => "tp_btf",
    }
}

pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
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
        let mut agent = Self { child, addr, log };
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

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let scrape = self.scrape();
            if done(&scrape) {
                thread::sleep(Duration::from_millis(300));
                return self.scrape();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last scrape:\n{}\nagent log:\n{}",
                scrape.text,
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if stop(&mut self.child, Duration::from_secs(5)) {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Stops a child process: SIGTERM first, so that it can clean up (the agent detaches its
/// programs), then SIGKILL if it has not exited within `grace`. Returns whether it exited on
/// its own.
pub fn stop(child: &mut Child, grace: Duration) -> bool {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// A loopback address with a port nothing listens on (for the agent, for Prometheus).
pub fn free_local_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local addr")
}

/// A minimal HTTP/1.0 GET: status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    if let Some(client) = web::client_for(addr) {
        return client.get(addr, path);
    }
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A parsed `/metrics` exposition.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Self {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of the series with exactly these labels, if it exists.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| *v)
    }

    /// Like `get`, with a missing series read as 0.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum over series of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Like `sum`, over the series whose `path` label is one of `paths` (a test's own paths:
    /// connections left over by other tests, on other paths, must not count).
    pub fn sum_in(&self, name: &str, labels: &[(&str, &str)], paths: &[String]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
                    && l.get("path").is_some_and(|p| paths.contains(p))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Every label set of `name`.
    pub fn series(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, _)| l.clone())
            .collect()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let end = after.find('"').expect("closing quote");
        labels.insert(
            key.trim_start_matches(',').to_owned(),
            after[..end].to_owned(),
        );
        rest = &after[end + 1..];
    }
    labels
}

/// Turns TCP keepalive on with probes after `idle_s` seconds of silence (SO_KEEPALIVE and
/// TCP_KEEPIDLE).
pub fn set_keepalive(stream: &TcpStream, idle_s: i32) {
    for (level, option, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_s),
    ] {
        // SAFETY: valid socket and option buffer of the right size.
        let rc = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                level,
                option,
                std::ptr::from_ref(&value).cast(),
                u32::try_from(size_of::<i32>()).expect("size"),
            )
        };
        assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
    }
}

/// Makes the kernel give up on unacknowledged data after `ms` (TCP_USER_TIMEOUT), so that a
/// black-holed connection dies in seconds instead of the default ~15 minutes.
pub fn set_user_timeout(stream: &TcpStream, ms: u32) {
    // SAFETY: valid socket and option buffer of the right size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            std::ptr::from_ref(&ms).cast(),
            u32::try_from(size_of::<u32>()).expect("size"),
        )
    };
    assert_eq!(
        rc,
        0,
        "TCP_USER_TIMEOUT: {}",
        std::io::Error::last_os_error()
    );
}

impl Topology {
    /// Makes the router a stateful middlebox: conntrack forgets an idle established flow after
    /// `idle_timeout_s`, and with `loose` off a mid-stream segment cannot re-create it.
    pub fn router_conntrack(&self, idle_timeout_s: u32, loose: bool) {
        self.router.sysctl(
            "net.netfilter.nf_conntrack_tcp_timeout_established",
            &idle_timeout_s.to_string(),
        );
        self.router.sysctl(
            "net.netfilter.nf_conntrack_tcp_loose",
            if loose { "1" } else { "0" },
        );
    }

    /// Appends one rule to the router's forward chain (created by `router_rules`).
    pub fn router_add_rule(&self, rule: &str) {
        let mut args = vec!["add", "rule", "inet", "middlebox", "forward"];
        args.extend(rule.split_whitespace());
        self.router.exec("nft", &args);
    }

    /// Source NAT with randomized ports for traffic towards the server, like a carrier NAT.
    pub fn router_masquerade_random(&self) {
        self.router.nft(
            "table ip nat {\n chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"eth2\" masquerade random\n }\n}\n",
        );
    }
}

impl Agent {
    /// `/api/v1/paths`, parsed.
    pub fn paths(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.addr, "/api/v1/paths").expect("GET /api/v1/paths");
        assert_eq!(status, 200, "/api/v1/paths answered {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("bad JSON ({err}): {body}"))
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
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(report) = self.path(service, role, path)
                && done(&report)
            {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} on {service}/{role}/{path}; paths:\n{}\nagent health:\n{}\nagent log:\n{}",
                serde_json::to_string_pretty(&self.paths()).unwrap_or_default(),
                self.health(),
                self.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether the agent attached the fentry program that reports ICMP errors (kernels that refuse
/// BPF trampolines do not get it, and the agent degrades to the socket's soft error).
pub fn icmp_probe_attached(scrape: &Scrape) -> bool {
    scrape.value("idlecut_probe_attached", &[("probe", "fentry:tcp_v4_err")]) == 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_parser_reads_labels_and_values() {
        let scrape = Scrape::parse(
            "# TYPE a counter\na_total{service=\"imap\",role=\"client\",path=\"10.0.0.0/24\"} 3\nb 1.5\n# EOF\n",
        );
        assert_eq!(
            scrape.get(
                "a_total",
                &[
                    ("service", "imap"),
                    ("role", "client"),
                    ("path", "10.0.0.0/24")
                ]
            ),
            Some(3.0)
        );
        assert_eq!(scrape.get("a_total", &[("service", "imap")]), None);
        assert_eq!(scrape.sum("a_total", &[("service", "imap")]), 3.0);
        assert_eq!(scrape.get("b", &[]), Some(1.5));
    }
}
