//! An application keepalive that holds on a real server: Dovecot in the server namespace sends
//! IMAP IDLE's `* OK Still here` every 3 s (`imap_idle_notify_interval`); a client in the
//! client namespace logs in, selects INBOX, sends NOOPs after short waits, idles, and logs out,
//! several sessions in a row, through a router that forgets flows idle for 5 s. The IDLE
//! keepalives are fewer than three quarters of the path's survived gaps (which the rule the
//! agent had before needed to be periodic): the path's keepalive interval must still be those
//! 3 s, on both sides, since each connection finds its own cadence. A last session, silent past the 5 s, is cut: the router does cut, and only the
//! keepalives kept the IDLE sessions alive.
//!
//! It makes traffic on a mail port that any agent on the host counts, and it loads the BPF
//! programs: run it under the BPF lock.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use idlecut_integration_tests::{
    Agent, Netns, Topology,
    mail::{self, Certificate, IMAP_PASSWORD, TempDir},
    require_root,
};

/// Dovecot's `imap_idle_notify_interval`.
const NOTIFY_S: f64 = 3.0;
/// The router forgets an established flow idle for this long.
const CUT_AFTER_S: u32 = 5;
/// Sessions in a row, each its own connection.
const SESSIONS: usize = 3;
/// Keepalives each IDLE waits for: the first comes early (Dovecot aligns it to the clock),
/// then one every 3 s, so five gaps of 3 s at least.
const KEEPALIVES: usize = 6;
/// The client's waits between commands: silences the router lets through, none near 3 s.
const BEFORE_LOGIN: Duration = Duration::from_millis(1500);
const BEFORE_NOOP: Duration = Duration::from_millis(2000);
const BEFORE_SECOND_NOOP: Duration = Duration::from_millis(4200);
const BEFORE_DONE: Duration = Duration::from_millis(1500);
const BEFORE_LOGOUT: Duration = Duration::from_millis(2000);
/// The silence of the last session, which the router must cut.
const TOO_LONG: Duration = Duration::from_secs(7);
/// Every answer comes within this (a keepalive every 3 s); a session ends by a panic past it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(6);
/// Lines one answer may take (SELECT's untagged lines, a keepalive racing DONE).
const MAX_LINES: usize = 32;

/// A plain-text IMAP session over a `TcpStream` (this Dovecot allows LOGIN without TLS), each
/// answer bounded in lines and time.
struct Imap {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    tag: u32,
}

impl Imap {
    /// Connects from `ns` to `server`:143 and reads the greeting.
    fn connect(ns: &Netns, server: &str) -> Self {
        let addr: SocketAddr = format!("{server}:143").parse().expect("server address");
        let stream = ns
            .run(move || TcpStream::connect_timeout(&addr, ANSWER_TIMEOUT))
            .unwrap_or_else(|err| panic!("connecting to Dovecot at {addr}: {err}"));
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .expect("read timeout");
        let mut imap = Self {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
            tag: 0,
        };
        let greeting = imap.line().expect("the greeting");
        assert!(greeting.starts_with("* OK"), "greeting: {greeting}");
        imap
    }

    /// The next line from the server, without its CRLF; an error on a timeout or a close.
    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim_end().to_owned())
    }

    fn send(&mut self, line: &str) -> std::io::Result<()> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())
    }

    /// Sends a tagged command; returns its tag.
    fn start(&mut self, command: &str) -> std::io::Result<String> {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        self.send(&format!("{tag} {command}"))?;
        Ok(tag)
    }

    /// Reads up to the tagged answer of `tag`, which must be OK.
    fn finish(&mut self, tag: &str, what: &str) {
        let mut seen = Vec::new();
        for _ in 0..MAX_LINES {
            let line = self
                .line()
                .unwrap_or_else(|err| panic!("{what}: no answer ({err}) after {seen:?}"));
            if let Some(status) = line.strip_prefix(&format!("{tag} ")) {
                assert!(status.starts_with("OK"), "{what}: {line}");
                return;
            }
            seen.push(line);
        }
        panic!("{what}: no tagged answer in {MAX_LINES} lines: {seen:?}");
    }

    fn command(&mut self, command: &str) {
        let tag = self
            .start(command)
            .unwrap_or_else(|err| panic!("sending {command}: {err}"));
        self.finish(&tag, command);
    }

    /// IDLE until `keepalives` `* OK Still here` came, then DONE after `before_done`.
    fn idle(&mut self, keepalives: usize, before_done: Duration) {
        let tag = self.start("IDLE").expect("sending IDLE");
        let mut lines = 0;
        loop {
            let line = self.line().expect("IDLE's continuation");
            if line.starts_with('+') {
                break;
            }
            lines += 1;
            assert!(lines < MAX_LINES, "no continuation for IDLE");
        }
        let started = Instant::now();
        let mut heard = 0;
        for _ in 0..MAX_LINES {
            if heard == keepalives {
                break;
            }
            let line = self.line().unwrap_or_else(|err| {
                panic!(
                    "IDLE: {heard} keepalives in {:?}, then none ({err})",
                    started.elapsed()
                )
            });
            if line == "* OK Still here" {
                heard += 1;
            }
        }
        assert_eq!(heard, keepalives, "keepalives in {:?}", started.elapsed());
        thread::sleep(before_done);
        self.send("DONE").expect("sending DONE");
        self.finish(&tag, "DONE");
    }

    /// Whether the server answers a NOOP sent after `silence` (else the path cut the session).
    fn answers_after(&mut self, silence: Duration) -> bool {
        thread::sleep(silence);
        let Ok(tag) = self.start("NOOP") else {
            return false;
        };
        for _ in 0..MAX_LINES {
            match self.line() {
                Ok(line) if line.starts_with(&format!("{tag} OK")) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

/// One session as a mail client runs it: its gaps are the waits, an IDLE's early first
/// keepalive, the 3 s between keepalives, and the waits around DONE.
fn session(ns: &Netns, server: &str, user: &str) {
    let mut imap = Imap::connect(ns, server);
    thread::sleep(BEFORE_LOGIN);
    imap.command(&format!("LOGIN {user} {IMAP_PASSWORD}"));
    imap.command("SELECT INBOX");
    thread::sleep(BEFORE_NOOP);
    imap.command("NOOP");
    thread::sleep(BEFORE_SECOND_NOOP);
    imap.command("NOOP");
    imap.idle(KEEPALIVES, BEFORE_DONE);
    thread::sleep(BEFORE_LOGOUT);
    imap.command("LOGOUT");
}

#[test]
fn dovecot_idle_keepalives_are_the_paths_keepalive_interval_among_other_gaps() {
    require_root();
    let net = Topology::new();
    let certs = TempDir::new("certs");
    let cert = Certificate::generate(&certs, "mail.test");
    let server = net.server_v4();
    let _imap = mail::dovecot_with(
        &net.server,
        &[&server],
        &cert,
        "disable_plaintext_auth = no\nimap_idle_notify_interval = 3 secs",
    );
    // The router forgets flows idle for 5 s and resets what comes after (an AWS NAT Gateway,
    // scaled down).
    net.router_conntrack(CUT_AFTER_S, false);
    net.router_rules("ct state invalid reject with tcp reset");
    let agent = Agent::start(&["--min-idle-gap", "1s"]);

    for n in 0..SESSIONS {
        session(&net.client, &server, &format!("user{n}"));
    }
    // The router does cut: a session silent for 7 s is reset.
    let mut silent = Imap::connect(&net.client, &server);
    silent.command(&format!("LOGIN silent {IMAP_PASSWORD}"));
    assert!(
        !silent.answers_after(TOO_LONG),
        "a session silent for {TOO_LONG:?} was not cut by a router that forgets flows idle for \
         {CUT_AFTER_S} s"
    );

    let within = |seconds: f64| (seconds - NOTIFY_S).abs() <= NOTIFY_S * 0.10;
    for (role, path) in [
        ("client", net.server_path_v4()),
        ("server", net.client_path_v4()),
    ] {
        let report = agent.wait_for_path("imap", role, &path, "a keepalive interval", |r| {
            !r["keepalive_interval_seconds"].is_null()
        });
        eprintln!("{role} path report: {report:#}");
        let interval = report["keepalive_interval_seconds"]
            .as_f64()
            .expect("interval");
        assert!(within(interval), "{interval} s, not 3 s: {report:#}");
        let labels = [("service", "imap"), ("role", role), ("path", path.as_str())];
        let gauge = agent
            .scrape()
            .get("idlecut_path_keepalive_interval_seconds", &labels)
            .unwrap_or_else(|| panic!("no keepalive interval for {labels:?}"));
        assert!(within(gauge), "the gauge says {gauge} s");
        // The IDLE keepalives (at most KEEPALIVES gaps a session) are fewer than the three
        // quarters of the path's survived gaps that the rule the agent had before needed.
        let survived = report["survived_gaps"].as_u64().expect("survived gaps");
        let keepalive_gaps = (SESSIONS * KEEPALIVES) as u64;
        assert!(
            4 * keepalive_gaps < 3 * survived,
            "{survived} survived gaps, {keepalive_gaps} of them keepalives at most: that may \
             be three quarters, which the rule the agent had before found too; this run does \
             not test what it is about: {report:#}"
        );
        // Each session's connection shows its own cadence in the view.
        let view = agent.connection_view(&format!(
            "service=imap&role={role}&path={}",
            path.replace('/', "%2F")
        ));
        let cadences: Vec<f64> = view
            .connections
            .iter()
            .filter_map(|row| row.cadence_seconds)
            .collect();
        assert!(
            cadences.len() >= SESSIONS && cadences.iter().all(|&c| within(c)),
            "cadences {cadences:?} in {view:#?}"
        );
    }
    agent.wait_for_path(
        "imap",
        "client",
        &net.server_path_v4(),
        "the silent session's cut",
        |r| r["cuts"]["reset"] == 1,
    );
}
