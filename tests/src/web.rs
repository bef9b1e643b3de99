//! Helpers for the agent's HTTP side: raw requests (half-sent, oversized), the agent's process
//! (its limits, a timed SIGTERM), agents started with an open-files limit or a web config, a
//! test PKI made at run time, and a TLS client with credentials.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{
        PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

pub use crate::http::WebClient;
use crate::{
    agent::Agent,
    http::{CLIENTS, STARTING},
};

/// Sends `request` as is and reads the answer until the server closes (or `timeout` passes):
/// status, head and body. Written by hand, not through the agent's client (`http`): the tests
/// that use it send what that client never does (a POST, a target or a head past the server's
/// limits, bytes that are not HTTP) and check the answer's head too.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> (u16, String, String) {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connecting the agent");
    stream
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
    // The server may answer and close before reading all of an oversized request.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    split_answer(&String::from_utf8_lossy(&answer))
}

/// An HTTP answer's status (0 if there is none), head and body.
fn split_answer(answer: &str) -> (u16, String, String) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

impl Agent {
    /// A line of `/proc/PID/limits`, e.g. "Max open files".
    pub fn limit(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/limits", self.pid()))
            .expect("reading the agent's limits")
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/PID/limits"))
            .to_owned()
    }

    /// How many descriptors the agent has open.
    pub fn open_descriptors(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("reading the agent's descriptors")
            .count()
    }

    /// Sends SIGTERM and waits up to `within` for the agent to exit: its exit code and how
    /// long it took, or None if it was still running. The process is left to the harness to
    /// reap (its exit status is read from /proc/PID/stat while it is a zombie).
    pub fn terminate(&mut self, within: Duration) -> Option<(Option<i32>, Duration)> {
        let started = Instant::now();
        let pid = i32::try_from(self.pid()).expect("pid");
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        while started.elapsed() < within {
            if let Some(status) = exit_status(pid) {
                return Some((status, started.elapsed()));
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// The exit code of a child that has exited but is not reaped yet (a zombie): fields 3 (state)
/// and 52 (exit_code, as waitpid reports it) of /proc/PID/stat. None while it runs; Some(None)
/// when a signal ended it.
fn exit_status(pid: i32) -> Option<Option<i32>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() != Some(&"Z") {
        return None;
    }
    let status: i32 = fields.get(49)?.parse().ok()?;
    Some((status & 0x7f == 0).then_some((status >> 8) & 0xff))
}

/// A test PKI written to a directory: a CA, a server certificate for 127.0.0.1 and
/// `idlecut.test`, a client certificate, and a second CA with a client certificate of its own
/// (which the agent must refuse).
pub struct TestPki {
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl TestPki {
    /// Makes the PKI in a new temporary directory, removed on drop.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "idlecut-{tag}-{}-{}",
            std::process::id(),
            NEXT_PKI.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("PKI directory");
        let dir = dir.as_path();
        let ca = new_ca("idlecut test CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("writing ca.pem");
        let pki = Self {
            dir: dir.to_owned(),
            ca,
        };
        pki.issue(
            "server",
            &["127.0.0.1", "idlecut.test"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki.issue(
            "client",
            &["prometheus.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let other = new_ca("another CA");
        std::fs::write(dir.join("other-ca.pem"), other.pem()).expect("writing other-ca.pem");
        write_leaf(
            dir,
            "other-client",
            &other,
            &["prometheus.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        pki
    }

    /// Issues `NAME.pem` and `NAME.key` signed by the CA; returns the certificate's DER.
    pub fn issue(&self, name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Vec<u8> {
        write_leaf(&self.dir, name, &self.ca, names, usage)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Writes a file into the directory (a web config, a token...); returns its path.
    pub fn write(&self, file: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(file);
        std::fs::write(&path, contents)
            .unwrap_or_else(|err| panic!("writing {}: {err}", path.display()));
        path
    }

    /// A client of the agent's TLS side, trusting this CA, for `idlecut.test`.
    pub fn client(&self) -> WebClient {
        WebClient::tls(&self.path("ca.pem"), "idlecut.test", None)
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT_PKI: AtomicU32 = AtomicU32::new(0);

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

fn write_leaf(
    dir: &Path,
    name: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Vec<u8> {
    let mut params = CertificateParams::new(
        names
            .iter()
            .map(|name| (*name).to_owned())
            .collect::<Vec<_>>(),
    )
    .expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("signing");
    // Written beside, then renamed: a reader never sees half a file.
    for (file, text) in [
        (format!("{name}.key"), key.serialize_pem()),
        (format!("{name}.pem"), cert.pem()),
    ] {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("writing PEM");
        std::fs::rename(&tmp, dir.join(file)).expect("renaming PEM");
    }
    cert.der().to_vec()
}

/// An agent started with what `Agent::start` lacks: an open-files limit, a web config (with the
/// client to talk to it). Dereferences to `Agent`.
pub struct Launch {
    args: Vec<String>,
    runner: Vec<String>,
    client: Option<WebClient>,
}

pub struct LaunchedAgent {
    agent: Agent,
    client: Option<SocketAddr>,
}

impl std::ops::Deref for LaunchedAgent {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

impl std::ops::DerefMut for LaunchedAgent {
    fn deref_mut(&mut self) -> &mut Agent {
        &mut self.agent
    }
}

impl Drop for LaunchedAgent {
    fn drop(&mut self) {
        if let Some(addr) = self.client {
            CLIENTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&addr);
        }
    }
}

impl Launch {
    pub fn new(args: &[&str]) -> Self {
        Self {
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            runner: Vec::new(),
            client: None,
        }
    }

    /// Starts the agent under `prlimit --nofile=SOFT:HARD`, as systemd's limits would.
    pub fn open_files(mut self, soft: u64, hard: u64) -> Self {
        self.runner = vec![
            "prlimit".to_owned(),
            format!("--nofile={soft}:{hard}"),
            "--".to_owned(),
        ];
        self
    }

    /// The client the harness uses for this agent (its web config needs TLS or credentials).
    pub fn client(mut self, client: WebClient) -> Self {
        self.client = Some(client);
        self
    }

    /// Starts the agent and waits until it serves /healthz (`Agent::try_start_as`).
    pub fn start(self) -> LaunchedAgent {
        let runner: Vec<&str> = self.runner.iter().map(String::as_str).collect();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        STARTING.with(|starting| *starting.borrow_mut() = self.client.clone());
        let started = Agent::try_start_as(&runner, &crate::agent::agent_binary(), &args);
        STARTING.with(|starting| *starting.borrow_mut() = None);
        let agent = started.unwrap_or_else(|err| panic!("{err}"));
        let client = self.client.map(|client| {
            CLIENTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(agent.addr, client);
            agent.addr
        });
        LaunchedAgent { agent, client }
    }
}

#[cfg(test)]
mod tests {
    use std::{process::Command, thread, time::Duration};

    #[test]
    fn a_zombies_exit_status_is_read_without_reaping_it() {
        for (script, expected) in [("exit 3", Some(3)), ("kill -TERM $$", None)] {
            let mut child = Command::new("sh").args(["-c", script]).spawn().expect("sh");
            let pid = i32::try_from(child.id()).expect("pid");
            let mut status = None;
            for _ in 0..250 {
                status = super::exit_status(pid);
                if status.is_some() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(status, Some(expected), "{script}");
            // Still ours to reap, with the same status.
            let reaped = child.wait().expect("wait");
            assert_eq!(reaped.code(), expected, "{script}");
        }
    }
}
