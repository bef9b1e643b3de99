//! Real mail servers for tests: private Dovecot (IMAP with STARTTLS) and Postfix (Submission
//! with STARTTLS) instances in a namespace, configured in a temporary directory with a
//! certificate generated for the test; a relay that strips STARTTLS from capability lists, as
//! a meddling firewall does; a loopback IMAP server for checks that need no namespace; and a
//! runner for `idlecut check`.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    agent::agent_binary,
    system::{sh, stop},
    topology::Netns,
};

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A directory under the system's temporary directory, removed on drop. World-readable:
/// Postfix and Dovecot workers read from it under their own users.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(what: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "idlecut-{what}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|err| panic!("mkdir {path:?}: {err}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        Self { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, text).unwrap_or_else(|err| panic!("writing {path:?}: {err}"));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A self-signed certificate and its key (P-256, quick to make), with the SHA-256 fingerprint
/// of the certificate as 64 lower-case hex digits.
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sha256: String,
}

impl Certificate {
    pub fn generate(dir: &TempDir, name: &str) -> Self {
        let cert = dir.join(&format!("{name}.crt"));
        let key = dir.join(&format!("{name}.key"));
        sh(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&cert),
            ],
        );
        let printed = sh(
            "openssl",
            &[
                "x509",
                "-in",
                path_str(&cert),
                "-noout",
                "-fingerprint",
                "-sha256",
            ],
        );
        let sha256 = printed
            .trim()
            .rsplit('=')
            .next()
            .expect("fingerprint")
            .replace(':', "")
            .to_ascii_lowercase();
        assert_eq!(sha256.len(), 64, "openssl printed {printed}");
        Self { cert, key, sha256 }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// A server process in a namespace, stopped on drop (SIGTERM: each stops its own workers).
pub struct Server {
    child: Child,
    name: &'static str,
    log: PathBuf,
    _dir: TempDir,
}

impl Server {
    fn spawn(
        ns: &Netns,
        name: &'static str,
        program: &str,
        args: &[&str],
        dir: TempDir,
        log: PathBuf,
    ) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Postfix's master signals its group when it stops.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name}: {err}"));
        Self {
            child,
            name,
            log,
            _dir: dir,
        }
    }

    /// Waits until the server accepts connections on `addr` (from inside `ns`).
    fn wait_ready(mut self, ns: &Netns, addr: &str) -> Self {
        let addr: SocketAddr = addr.parse().expect("server address");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} at start-up:\n{}",
                    self.name,
                    self.log()
                );
            }
            if ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
            {
                return self;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {addr} within 15 s:\n{}",
                self.name,
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let group = i32::try_from(self.child.id()).ok();
        stop(&mut self.child, Duration::from_secs(5));
        // Workers that outlive their master (Dovecot's login processes keep their clients'
        // connections) would linger after the namespace is gone: end the whole group.
        if let Some(group) = group {
            // SAFETY: signalling the process group this server was started in.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    }
}

/// The password Dovecot accepts, for any user name.
pub const IMAP_PASSWORD: &str = "idle-but-not-dead";

/// Dovecot serving IMAP on port 143 of `addresses` (IPv4 or IPv6), STARTTLS with `cert`, and
/// LOGIN over TLS for any user with [`IMAP_PASSWORD`] (each gets an empty mail home here; a
/// wrong password is refused at once, without Dovecot's usual 2 s delay).
pub fn dovecot(ns: &Netns, addresses: &[&str], cert: &Certificate) -> Server {
    dovecot_with(ns, addresses, cert, "")
}

/// The same, with `extra` lines at the end of dovecot.conf. A setting given there again wins
/// over the one above it (Dovecot takes the last): `disable_plaintext_auth = no` allows LOGIN
/// without TLS, `imap_idle_notify_interval = 3 secs` sends IDLE's `* OK Still here` every 3 s.
pub fn dovecot_with(ns: &Netns, addresses: &[&str], cert: &Certificate, extra: &str) -> Server {
    let dir = TempDir::new("dovecot");
    for sub in ["run", "state", "home"] {
        std::fs::create_dir_all(dir.join(sub)).expect("dovecot dirs");
    }
    // Mail processes run as nobody and create their user's home.
    std::fs::set_permissions(dir.join("home"), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod home");
    let log = dir.join("dovecot.log");
    let config = dir.write(
        "dovecot.conf",
        &format!(
            "base_dir = {run}\nstate_dir = {state}\nlog_path = {log}\n\
             protocols = imap\nlisten = {listen}\n\
             ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n\
             disable_plaintext_auth = yes\n\
             passdb {{\n  driver = static\n  args = password={IMAP_PASSWORD}\n}}\n\
             userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={home}/%u\n}}\n\
             mail_location = maildir:~/Maildir\n\
             auth_failure_delay = 0\n\
             service imap-login {{\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
             {extra}\n",
            listen = addresses.join(", "),
            run = path_str(&dir.join("run")),
            state = path_str(&dir.join("state")),
            home = path_str(&dir.join("home")),
            log = path_str(&log),
            cert = path_str(&cert.cert),
            key = path_str(&cert.key),
        ),
    );
    let config = path_str(&config).to_owned();
    Server::spawn(ns, "dovecot", "dovecot", &["-F", "-c", &config], dir, log)
        .wait_ready(ns, &socket_address(addresses, 143))
}

/// Postfix serving Submission on port 587 of `addresses` as `hostname` (its greeting names it),
/// STARTTLS with `cert`, and `extra` lines of main.cf. Its master runs in the foreground from
/// a private configuration and queue directory, so several instances can run at once.
pub fn postfix(
    ns: &Netns,
    addresses: &[&str],
    hostname: &str,
    cert: &Certificate,
    extra: &str,
) -> Server {
    let dir = TempDir::new("postfix");
    let etc = dir.join("etc");
    let data = dir.join("data");
    for sub in [&etc, &dir.join("spool"), &data] {
        std::fs::create_dir_all(sub).expect("postfix dirs");
    }
    sh("chown", &["postfix", path_str(&data)]);
    let log = dir.join("maillog");
    dir.write(
        "etc/main.cf",
        &format!(
            // No reverse DNS for clients: the namespaces have no resolver, and the greeting
            // would wait for its timeout.
            "compatibility_level = 3.6\nqueue_directory = {spool}\ndata_directory = {data}\n\
             mail_owner = postfix\nsetgid_group = postdrop\nmyhostname = {hostname}\n\
             mydestination =\ninet_interfaces = {interfaces}\ninet_protocols = all\n\
             maillog_file_prefixes = {root}\nmaillog_file = {log}\n\
             smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key}\n\
             smtpd_tls_security_level = may\n\
             smtpd_peername_lookup = no\n{extra}\n",
            interfaces = addresses.join(", "),
            spool = path_str(&dir.join("spool")),
            data = path_str(&data),
            root = path_str(&dir.path),
            log = path_str(&log),
            cert = path_str(&cert.cert),
            key = path_str(&cert.key),
        ),
    );
    dir.write(
        "etc/master.cf",
        "submission inet n - n - - smtpd\n\
         pickup unix n - n 60 1 pickup\n\
         cleanup unix n - n - 0 cleanup\n\
         qmgr unix n - n 300 1 qmgr\n\
         tlsmgr unix - - n 1000? 1 tlsmgr\n\
         rewrite unix - - n - - trivial-rewrite\n\
         bounce unix - - n - 0 bounce\n\
         defer unix - - n - 0 bounce\n\
         trace unix - - n - 0 bounce\n\
         verify unix - - n - 1 verify\n\
         flush unix n - n 1000? 0 flush\n\
         proxymap unix - - n - - proxymap\n\
         anvil unix - - n - 1 anvil\n\
         scache unix - - n - 1 scache\n\
         postlog unix-dgram n - n - 1 postlogd\n",
    );
    let etc = path_str(&etc).to_owned();
    // `postfix check` creates the queue's subdirectories with their owners.
    ns.exec("postfix", &["-c", &etc, "check"]);
    let daemons = sh("postconf", &["-dh", "daemon_directory"]);
    let master = format!("{}/master", daemons.trim());
    Server::spawn(ns, "postfix", &master, &["-c", &etc, "-d"], dir, log)
        .wait_ready(ns, &socket_address(addresses, 587))
}

/// `port` on the first of `addresses`, as a socket address.
fn socket_address(addresses: &[&str], port: u16) -> String {
    let address = addresses.first().expect("at least one address");
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// A transparent relay, as a meddling firewall runs one: connections to `listen` (in `ns`) are
/// relayed to `upstream`, with STARTTLS removed from the server's capability lists (IMAP
/// CAPABILITY words, SMTP EHLO lines). Once TLS starts it passes bytes through untouched.
pub struct StripStarttls {
    stopping: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl StripStarttls {
    pub fn start(ns: &Netns, listen: &str, upstream: &str) -> Self {
        let listen: SocketAddr = listen.parse().expect("relay address");
        let upstream: SocketAddr = upstream.parse().expect("upstream address");
        let listener = ns.run(move || TcpListener::bind(listen).expect("relay bind"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_flag = stopping.clone();
        // The relay's own connections to the server start in the same namespace. A borrowed
        // name, never dropped: the test owns (and deletes) the namespace.
        let relay_ns = std::mem::ManuallyDrop::new(Netns {
            name: ns.name.clone(),
        });
        let acceptor = thread::spawn(move || {
            while !stop_flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let server = relay_ns.run(move || {
                            TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
                        });
                        let Ok(server) = server else { continue };
                        let _ = client.set_nonblocking(false);
                        relay(client, server);
                    }
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => break,
                }
            }
        });
        Self {
            stopping,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for StripStarttls {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn relay(client: TcpStream, server: TcpStream) {
    let (client_in, server_in) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    thread::spawn(move || pump(client_in, server, false));
    thread::spawn(move || pump(server_in, client, true));
}

/// Copies `from` to `to`, line by line while the text is plain (stripping STARTTLS when
/// `strip`), byte for byte once a TLS record shows up (0x16: a handshake record).
fn pump(mut from: TcpStream, mut to: TcpStream, strip: bool) {
    let _ = from.set_read_timeout(Some(Duration::from_secs(60)));
    let mut pending: Vec<u8> = Vec::new();
    let mut tls = false;
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if tls || !strip {
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        if pending.first() == Some(&0x16) {
            tls = true;
            if to.write_all(&pending).is_err() {
                break;
            }
            pending.clear();
            continue;
        }
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            let edited = if text.starts_with("250-STARTTLS") || text.starts_with("250 STARTTLS") {
                String::new()
            } else {
                text.replace(" STARTTLS", "")
            };
            if to.write_all(edited.as_bytes()).is_err() {
                return;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// What `idlecut check` printed and how it exited.
pub struct CheckRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CheckRun {
    /// The `--json` report.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("not JSON ({err}):\n{}\n{}", self.stdout, self.stderr))
    }
}

/// Runs `idlecut check ARGS` inside `ns`.
pub fn run_check(ns: &Netns, args: &[&str]) -> CheckRun {
    let output = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(agent_binary())
        .arg("check")
        .args(args)
        .output()
        .expect("running idlecut check");
    CheckRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A minimal IMAP server on 127.0.0.1, in this process, for `idlecut check` runs that need no
/// namespace (the command line's own behaviour): it greets, lists its capabilities and
/// completes STARTTLS with a self-signed certificate made for it, then lists them again over
/// TLS. One thread per session; they end with the test process.
pub struct LoopbackImap {
    pub addr: SocketAddr,
}

impl LoopbackImap {
    pub fn start() -> Self {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let key =
            rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key.into())
        .expect("TLS config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the IMAP server");
        let addr = listener.local_addr().expect("its address");
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let config = config.clone();
                thread::spawn(move || {
                    let _ = imap_session(stream, config);
                });
            }
        });
        Self { addr }
    }
}

fn imap_session(stream: TcpStream, config: Arc<rustls::ServerConfig>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut plain = BufReader::new(stream);
    plain
        .get_mut()
        .write_all(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] loopback IMAP ready\r\n")?;
    if !imap_commands(&mut plain, "IMAP4rev1 IDLE STARTTLS LOGINDISABLED")? {
        return Ok(());
    }
    // The client waits for the go-ahead before its handshake: nothing is left buffered.
    let connection = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = BufReader::new(rustls::StreamOwned::new(connection, plain.into_inner()));
    imap_commands(&mut tls, "IMAP4rev1 IDLE AUTH=PLAIN")?;
    Ok(())
}

/// Answers CAPABILITY, NOOP and LOGOUT until the session ends (false) or asks for STARTTLS
/// (true, once it has the go-ahead).
fn imap_commands<S: Read + Write>(
    session: &mut BufReader<S>,
    capabilities: &str,
) -> std::io::Result<bool> {
    let mut line = String::new();
    loop {
        line.clear();
        if session.read_line(&mut line)? == 0 {
            return Ok(false);
        }
        let line = line.trim_end();
        let (tag, command) = line.split_once(' ').unwrap_or((line, ""));
        let (answer, next) = match command.to_ascii_uppercase().as_str() {
            "CAPABILITY" => (
                format!("* CAPABILITY {capabilities}\r\n{tag} OK done\r\n"),
                None,
            ),
            "NOOP" => (format!("{tag} OK done\r\n"), None),
            "STARTTLS" => (format!("{tag} OK begin TLS now\r\n"), Some(true)),
            "LOGOUT" => (format!("* BYE\r\n{tag} OK done\r\n"), Some(false)),
            _ => (format!("{tag} BAD not here\r\n"), None),
        };
        let stream = session.get_mut();
        stream.write_all(answer.as_bytes())?;
        stream.flush()?;
        if let Some(next) = next {
            return Ok(next);
        }
    }
}
