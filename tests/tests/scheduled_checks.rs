//! Scheduled checks on an unlucky day: a check's own connections are left out of what the
//! agent reports, and only they (a registration ends with the check's socket, whatever became
//! of it); a name server that never answers holds neither a check nor the agent's stop.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use idlecut_integration_tests::{
    Agent, Netns, Topology, agent_binary, hooks_under_test, listen, require_root, sh, stop,
};

/// How long the agent still counts an abandoned registration (idlecut_core::own).
const ABANDONED_GRACE: Duration = Duration::from_secs(10);

/// A scheduled check whose SYNs the router drops gives up on its connect. A user's connection
/// that later gets the same local port to the same server is the user's: counted open (it
/// used to be left out for up to a day, as the check's).
#[test]
fn a_check_whose_connect_failed_does_not_hide_a_later_user_connection() {
    require_root();
    let net = Topology::new();
    let server = net.server_v4();
    let imap = listen(&net.server, "0.0.0.0:143");
    let _host = net.attach_host();
    net.router_rules(&format!("ip daddr {server} tcp dport 143 drop"));
    let target = format!("{server}:143");
    let dir = std::env::temp_dir().join(format!("idlecut-own-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let config = dir.join("idlecut.toml");
    std::fs::write(
        &config,
        format!(
            "[[check]]\ntarget = \"{target}\"\nevery = \"1h\"\nmax_idle = \"5s\"\n\
             connect_timeout = \"1s\"\nanswer_timeout = \"1s\"\n"
        ),
    )
    .expect("config file");
    let agent = Agent::start(&["--config", config.to_str().expect("UTF-8 path")]);

    // The check's first run starts 5 s after the agent: note the local ports of its
    // unanswered SYNs until the run is over.
    let mut check_ports = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let runs = |agent: &Agent| {
        agent
            .scrape()
            .sum("idlecut_check_runs_total", &[("target", &target)])
    };
    while runs(&agent) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no check run:\n{}",
            agent.log_text()
        );
        let syn_sent = sh("ss", &["-Htn", "state", "syn-sent", "dst", &target]);
        check_ports.extend(syn_sent.lines().filter_map(|line| {
            let local: SocketAddr = line.split_whitespace().nth(2)?.parse().ok()?;
            Some(local.port())
        }));
        thread::sleep(Duration::from_millis(50));
    }
    let port = *check_ports
        .first()
        .expect("the check's SYN was seen waiting");
    eprintln!("the check's connects went unanswered from ports {check_ports:?}");

    // The path heals; later, a user's connection gets the check's local port.
    net.clear_router_rules();
    thread::sleep(ABANDONED_GRACE + Duration::from_secs(1));
    let user =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    user.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())
        .expect("the check's port is free again");
    let remote: SocketAddr = target.parse().expect("target");
    user.connect_timeout(&remote.into(), Duration::from_secs(5))
        .expect("connect");
    let user: TcpStream = user.into();
    let (_accepted, _) = imap.accept().expect("accept");
    let path = net.server_path_v4();
    let scrape = agent.wait_for("the user's connection counted open", |scrape| {
        scrape.value(
            "idlecut_connections_open",
            &[("service", "imap"), ("role", "client")],
        ) == 1.0
            && scrape.value(
                "idlecut_connections_opened_total",
                &[("service", "imap"), ("role", "client"), ("path", &path)],
            ) == 1.0
    });
    assert_eq!(
        user.local_addr().expect("local address").port(),
        port,
        "{}",
        scrape.text
    );
    std::fs::remove_dir_all(&dir).expect("remove temporary directory");
}

/// A namespace whose resolver asks a name server that never answers: a UDP socket on
/// 127.0.0.1:53 that takes queries and says nothing (`ip netns exec` puts
/// /etc/netns/NAME/resolv.conf in place of /etc/resolv.conf).
struct SilentNameServer {
    ns: Netns,
    etc: PathBuf,
    asked: Arc<AtomicBool>,
}

impl SilentNameServer {
    fn new() -> Self {
        let ns = Netns::new(format!("icdns{}", std::process::id() % 100_000));
        let etc = PathBuf::from(format!("/etc/netns/{}", ns.name));
        std::fs::create_dir_all(&etc).expect("/etc/netns directory");
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").expect("resolv.conf");
        let socket = ns.run(|| UdpSocket::bind("127.0.0.1:53").expect("bind 127.0.0.1:53"));
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("read timeout");
        let asked = Arc::new(AtomicBool::new(false));
        let flag = asked.clone();
        // Bounded: the test is over within two minutes.
        thread::spawn(move || {
            let mut query = [0; 512];
            for _ in 0..120 {
                if socket.recv(&mut query).is_ok() {
                    flag.store(true, Ordering::Relaxed);
                }
            }
        });
        Self { ns, etc, asked }
    }

    fn wait_for_a_query(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        while !self.asked.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "nobody asked the name server");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SilentNameServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// `idlecut check` gives up on a name within its connect timeout (the resolver alone would
/// retry for 20 s), and the agent stops within README's 5 s while a scheduled check's lookup
/// hangs (it used to wait for the lookup: 17 s).
#[test]
fn a_name_server_that_never_answers_holds_neither_a_check_nor_the_stop() {
    require_root();
    let dns = SilentNameServer::new();
    let binary = agent_binary();
    let binary = binary.to_str().expect("UTF-8 path");

    let started = Instant::now();
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &dns.ns.name,
            binary,
            "check",
            "mail.silent.test:143",
        ])
        .args(["--connect-timeout", "1s"])
        .output()
        .expect("idlecut check");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("idlecut check took {took:?}: {}", stderr.trim());
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "cannot resolve `mail.silent.test`: no answer within the connect timeout (1 s)"
        ),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");

    // The agent, in that namespace, with a check whose lookup outlasts the stop.
    let dir = std::env::temp_dir().join(format!("idlecut-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let config = dir.join("idlecut.toml");
    std::fs::write(
        &config,
        "[[check]]\ntarget = \"mail.silent.test:143\"\nevery = \"1h\"\nconnect_timeout = \"60s\"\n",
    )
    .expect("config file");
    let log = std::fs::File::create(dir.join("agent.log")).expect("log file");
    let hooks = hooks_under_test();
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &dns.ns.name, binary])
        .args(["--config", config.to_str().expect("UTF-8 path")])
        .args(["--listen", "127.0.0.1:9464", "--hooks", &hooks])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the agent");
    // Its first run starts 5 s after the agent; the lookup then waits on the silence.
    dns.wait_for_a_query(Duration::from_secs(60));
    thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    let stopped = stop(&mut agent, Duration::from_secs(5));
    let took = stopping.elapsed();
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    std::fs::remove_dir_all(&dir).expect("remove temporary directory");
    assert!(stopped, "still running 5 s after SIGTERM:\n{log}");
    eprintln!("the agent stopped {took:?} after SIGTERM");
}
