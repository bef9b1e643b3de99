//! The one client of a running agent's HTTP side (`idlecut connections`, `idlecut cuts`, the
//! integration tests and the benchmark): a plain HTTP/1.0 request over a socket (or TLS, with
//! rustls). The agent is on this host or one hop away, and this keeps the binary free of an
//! HTTP client stack.
//!
//! The CLI's credentials come from files or the environment, never from a flag's value (which
//! `ps` and shell histories show): see `AgentArgs`; the tests give theirs as values
//! ([`AgentClient::bearer`], [`AgentClient::basic`]). What it accepts of an answer is bounded
//! in size and time ([`ANSWER_LIMITS`]), whatever answers on the port.

use std::{
    io::{self, Read, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rustls::pki_types::ServerName;

use crate::{
    DEFAULT_LISTEN, parse_listen,
    tls::{read_certificates, read_private_key},
};

/// How to reach a running agent: its address, TLS, credentials. Secrets are read from files or
/// the environment: IDLECUT_BEARER_TOKEN or IDLECUT_BEARER_TOKEN_FILE (a token), or
/// IDLECUT_BASIC_AUTH_USER with IDLECUT_BASIC_AUTH_PASSWORD or IDLECUT_BASIC_AUTH_PASSWORD_FILE.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The running agent's HTTP address (its --listen); https://ADDR:PORT for TLS
    #[arg(long = "agent", value_name = "[https://]ADDR:PORT", default_value = DEFAULT_LISTEN, value_parser = parse_agent)]
    pub agent: AgentAddress,
    /// CA certificate(s) that signed the agent's TLS certificate (PEM)
    #[arg(long, value_name = "FILE", env = "IDLECUT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Name the agent's certificate is checked against [default: the address's IP]
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Client certificate (PEM) for an agent that asks for one (mutual TLS)
    #[arg(
        long,
        value_name = "FILE",
        env = "IDLECUT_CERT_FILE",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(
        long,
        value_name = "FILE",
        env = "IDLECUT_KEY_FILE",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,
    /// File holding the bearer token the agent's web config expects (or the token itself in
    /// IDLECUT_BEARER_TOKEN; never as a flag's value)
    #[arg(long, value_name = "FILE", env = "IDLECUT_BEARER_TOKEN_FILE")]
    pub bearer_token_file: Option<PathBuf>,
    /// User for basic authentication (the password from IDLECUT_BASIC_AUTH_PASSWORD or
    /// --basic-auth-password-file)
    #[arg(long, value_name = "USER", env = "IDLECUT_BASIC_AUTH_USER")]
    pub basic_auth_user: Option<String>,
    /// File holding the basic-authentication password (or the password itself in
    /// IDLECUT_BASIC_AUTH_PASSWORD; never as a flag's value)
    #[arg(long, value_name = "FILE", env = "IDLECUT_BASIC_AUTH_PASSWORD_FILE")]
    pub basic_auth_password_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug)]
pub struct AgentAddress {
    pub tls: bool,
    pub addr: SocketAddr,
}

impl std::fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.addr)
    }
}

pub fn parse_agent(value: &str) -> Result<AgentAddress, String> {
    let (tls, rest) = match value.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        Some((scheme, _)) => return Err(format!("`{scheme}` is not http or https")),
        None => (false, value),
    };
    let addr = parse_listen(rest.trim_end_matches('/'))?;
    Ok(AgentAddress { tls, addr })
}

/// A client for one agent, built from `AgentArgs` (or, in the tests, with [`AgentClient::plain`]
/// and the methods that add TLS and credentials).
#[derive(Clone)]
pub struct AgentClient {
    address: AgentAddress,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    authorization: Option<String>,
    limits: AnswerLimits,
}

/// An answer of the agent, whatever its status.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    /// The body (invalid UTF-8 replaced).
    pub body: String,
    /// Over TLS, the certificate the agent presented (DER): the first of its chain.
    pub peer_certificate: Option<Vec<u8>>,
}

impl AgentClient {
    pub fn new(args: &AgentArgs) -> anyhow::Result<Self> {
        let address = args.agent;
        let tls = if address.tls {
            let ca_file = args
                .ca_file
                .as_deref()
                .context("an https:// agent needs --ca-file (or IDLECUT_CA_FILE): the CA that signed its certificate")?;
            let client = args.cert_file.as_deref().zip(args.key_file.as_deref());
            let name = match &args.tls_server_name {
                Some(name) => server_name(name)?,
                None => ServerName::IpAddress(address.addr.ip().into()),
            };
            Some(tls_config(ca_file, client, name)?)
        } else {
            if args.ca_file.is_some() || args.cert_file.is_some() {
                bail!("--ca-file and --cert-file need an https:// agent address");
            }
            None
        };
        Ok(Self {
            address,
            tls,
            authorization: authorization(args)?,
            limits: ANSWER_LIMITS,
        })
    }

    /// A client of the agent at `addr` over plain HTTP, without credentials.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            address: AgentAddress { tls: false, addr },
            tls: None,
            authorization: None,
            limits: ANSWER_LIMITS,
        }
    }

    /// The same client over TLS: trusting the CA certificate(s) in `ca_file`, checking the
    /// agent's certificate against `server_name`, presenting `client` (certificate and key
    /// files) when given.
    pub fn over_tls(
        self,
        ca_file: &Path,
        server_name: &str,
        client: Option<(&Path, &Path)>,
    ) -> anyhow::Result<Self> {
        let tls = tls_config(ca_file, client, self::server_name(server_name)?)?;
        Ok(Self {
            address: AgentAddress {
                tls: true,
                ..self.address
            },
            tls: Some(tls),
            ..self
        })
    }

    /// The same client with a bearer token.
    pub fn bearer(self, token: &str) -> Self {
        Self {
            authorization: Some(bearer(token)),
            ..self
        }
    }

    /// The same client with basic authentication.
    pub fn basic(self, user: &str, password: &str) -> Self {
        Self {
            authorization: Some(basic(user, password)),
            ..self
        }
    }

    /// The same client (TLS, credentials, limits) for the agent at `addr`.
    pub fn at(&self, addr: SocketAddr) -> Self {
        Self {
            address: AgentAddress {
                addr,
                ..self.address
            },
            ..self.clone()
        }
    }

    /// GETs `target` and returns the body of a 200 answer, within [`ANSWER_LIMITS`].
    pub fn get(&self, target: &str) -> anyhow::Result<String> {
        let Answer { status, body, .. } = self.request(target)?;
        if status != 200 {
            let shown = body.trim();
            let shown = shown
                .char_indices()
                .nth(SHOWN_ERROR_BODY)
                .map_or(shown, |(end, _)| &shown[..end]);
            bail!("the agent answered {status}: {shown}");
        }
        Ok(body)
    }

    /// GETs `target` and returns the answer whatever its status, within [`ANSWER_LIMITS`]. An
    /// error when there is no HTTP answer (a refused connection or handshake, a server that
    /// closes without one) or one beyond the limits.
    pub fn request(&self, target: &str) -> anyhow::Result<Answer> {
        let agent = self.address;
        let addr = agent.addr;
        let endpoint = target.split('?').next().unwrap_or(target);
        let deadline = Instant::now() + self.limits.time;
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(3)).with_context(|| {
                format!(
                    "cannot reach the agent at {agent} (is it running? set its address with --agent)"
                )
            })?;
        stream.set_write_timeout(Some(self.limits.stall))?;
        let stream = Timed {
            stream,
            deadline,
            stall: self.limits.stall,
        };
        let authorization = self
            .authorization
            .as_ref()
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n{authorization}\r\n");
        let reading = Reading {
            agent,
            endpoint,
            limits: self.limits,
            deadline,
        };
        let (status, body, peer_certificate) = match &self.tls {
            None => {
                let mut stream = stream;
                stream
                    .write_all(request.as_bytes())
                    .with_context(|| format!("asking the agent at {agent} for {endpoint}"))?;
                let (status, body) = reading.answer(&mut stream, false)?;
                (status, body, None)
            }
            Some((config, name)) => {
                let connection = rustls::ClientConnection::new(config.clone(), name.clone())
                    .context("starting TLS")?;
                let mut stream = rustls::StreamOwned::new(connection, stream);
                // The handshake reads too: a stall or the deadline ends it.
                stream
                    .write_all(request.as_bytes())
                    .map_err(|err| reading.read_error(err, true))?;
                let (status, body) = reading.answer(&mut stream, true)?;
                let certificate = stream
                    .conn
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|certificate| certificate.to_vec());
                (status, body, certificate)
            }
        };
        let Ok(status) = status.parse::<u16>() else {
            bail!("{agent} did not answer HTTP to {endpoint}");
        };
        let body = String::from_utf8(body)
            .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned());
        Ok(Answer {
            status,
            body,
            peer_certificate,
        })
    }
}

/// What the client accepts of an answer, so that a misbehaving endpoint (or something else
/// listening on the agent's port) cannot fill its memory or hold it forever.
#[derive(Clone, Copy, Debug)]
pub struct AnswerLimits {
    /// The status line and headers.
    pub head: usize,
    /// The body.
    pub body: usize,
    /// From connecting to the answer's last byte.
    pub time: Duration,
    /// Without a byte from the agent (TLS handshake included).
    pub stall: Duration,
}

/// The client's limits: a head of 64 KiB (an agent's is a few hundred bytes), a body of
/// 128 MiB (an agent's largest answer, a full log of 100,000 cuts asked with `--limit 100000`,
/// is about 65 MB), 60 s in all and 15 s without a byte.
pub const ANSWER_LIMITS: AnswerLimits = AnswerLimits {
    head: 64 << 10,
    body: 128 << 20,
    time: Duration::from_secs(60),
    stall: Duration::from_secs(15),
};

/// How much of an error answer's body the error shows.
const SHOWN_ERROR_BODY: usize = 4096;

/// The connection to the agent: each read waits at most the stall limit, and none starts
/// after the deadline (rustls reads through it too, so TLS records are bounded alike).
struct Timed {
    stream: TcpStream,
    deadline: Instant,
    stall: Duration,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left.min(self.stall)))?;
        self.stream.read(buf)
    }
}

impl io::Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Reading one request's answer, bounded by `limits` and `deadline`.
struct Reading<'a> {
    agent: AgentAddress,
    /// The request's path, without its query, for messages.
    endpoint: &'a str,
    limits: AnswerLimits,
    deadline: Instant,
}

impl Reading<'_> {
    /// The answer's status and body, read from `stream` until the agent closes (an HTTP/1.0
    /// answer), at most `limits` of it.
    fn answer(&self, stream: &mut impl Read, tls: bool) -> anyhow::Result<(String, Vec<u8>)> {
        let (agent, endpoint) = (self.agent, self.endpoint);
        let over_body = || {
            anyhow::anyhow!(
                "the answer of the agent at {agent} to {endpoint} is over {}, the most this \
                 client accepts: ask for fewer rows (--limit) or narrow the filters",
                size(self.limits.body)
            )
        };
        let mut answer: Vec<u8> = Vec::new();
        // Where the body starts, and the length the head announced, once the head is in.
        let mut head: Option<(usize, Option<usize>)> = None;
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // A server that closes without close_notify has still answered.
                Err(err) if tls && err.kind() == io::ErrorKind::UnexpectedEof && head.is_some() => {
                    break;
                }
                Err(err) => return Err(self.read_error(err, tls)),
            };
            if let Some((start, _)) = head
                && answer.len() - start + n > self.limits.body
            {
                return Err(over_body());
            }
            let searched = answer.len().saturating_sub(3);
            answer.extend_from_slice(&chunk[..n]);
            if head.is_none() {
                let end = answer[searched..]
                    .windows(4)
                    .position(|window| window == b"\r\n\r\n")
                    .map(|at| searched + at);
                match end {
                    Some(end) if end <= self.limits.head => {
                        let announced = content_length(&answer[..end]);
                        if let Some(length) = announced
                            && length > self.limits.body
                        {
                            bail!(
                                "the agent at {agent} announced an answer of {length} bytes to \
                                 {endpoint}, over {}, the most this client accepts: ask for \
                                 fewer rows (--limit) or narrow the filters",
                                size(self.limits.body)
                            );
                        }
                        let start = end + 4;
                        if answer.len() - start > self.limits.body {
                            return Err(over_body());
                        }
                        answer.reserve(announced.unwrap_or(0).saturating_sub(answer.len() - start));
                        head = Some((start, announced));
                    }
                    _ if answer.len() > self.limits.head => bail!(
                        "the agent at {agent} answered {endpoint} with a head over {}, the most \
                         this client accepts (is it an idlecut agent?)",
                        size(self.limits.head)
                    ),
                    _ => {}
                }
            }
        }
        let Some((start, announced)) = head else {
            bail!("{agent} did not answer HTTP to {endpoint}");
        };
        let received = answer.len() - start;
        if let Some(announced) = announced
            && received < announced
        {
            bail!(
                "the answer of the agent at {agent} to {endpoint} ended after {received} of the \
                 {announced} bytes it announced"
            );
        }
        let status = std::str::from_utf8(&answer[..start])
            .ok()
            .and_then(|head| head.split(' ').nth(1))
            .unwrap_or_default()
            .to_owned();
        answer.drain(..start);
        Ok((status, answer))
    }

    fn read_error(&self, err: io::Error, tls: bool) -> anyhow::Error {
        let (agent, endpoint) = (self.agent, self.endpoint);
        let timed_out = matches!(
            err.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        );
        if timed_out && Instant::now() >= self.deadline {
            anyhow::anyhow!(
                "the agent at {agent} did not finish its answer to {endpoint} within {} s, the \
                 most this client waits",
                self.limits.time.as_secs()
            )
        } else if timed_out {
            anyhow::anyhow!(
                "the agent at {agent} sent nothing for {} s while answering {endpoint}",
                self.limits.stall.as_secs()
            )
        } else if tls {
            anyhow::Error::new(err).context(format!("TLS with {agent}"))
        } else {
            anyhow::Error::new(err).context(format!("reading the answer of {agent} to {endpoint}"))
        }
    }
}

/// The value of the Content-Length header of `head`, if it has one that is a number.
fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

/// A limit as people read it: `128 MiB`, `64 KiB`.
fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

fn server_name(name: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| anyhow::anyhow!("`{name}` is not a DNS name or IP address"))
}

/// TLS trusting the CA(s) in `ca_file`, presenting `client` (certificate and key files) when
/// given, for a server with the certificate of `name`.
fn tls_config(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
    name: ServerName<'static>,
) -> anyhow::Result<(Arc<rustls::ClientConfig>, ServerName<'static>)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates(ca_file)? {
        roots
            .add(cert)
            .with_context(|| format!("a certificate in {} is not valid", ca_file.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots);
    let config = match client {
        Some((cert_file, key_file)) => {
            let key = read_private_key(key_file)?;
            builder
                .with_client_auth_cert(read_certificates(cert_file)?, key)
                .with_context(|| {
                    format!(
                        "the key in {} does not fit the certificate in {}",
                        key_file.display(),
                        cert_file.display()
                    )
                })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok((Arc::new(config), name))
}

/// The Authorization header's value, from the files or environment variables given.
fn authorization(args: &AgentArgs) -> anyhow::Result<Option<String>> {
    let secret = |value_var: &str, file: Option<&Path>| -> anyhow::Result<Option<String>> {
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            return Ok(Some(text.trim().to_owned()));
        }
        Ok(std::env::var(value_var)
            .ok()
            .map(|value| value.trim().to_owned()))
    };
    if let Some(token) = secret("IDLECUT_BEARER_TOKEN", args.bearer_token_file.as_deref())? {
        return Ok(Some(bearer(&token)));
    }
    let Some(user) = &args.basic_auth_user else {
        return Ok(None);
    };
    let password = secret(
        "IDLECUT_BASIC_AUTH_PASSWORD",
        args.basic_auth_password_file.as_deref(),
    )?
    .context("IDLECUT_BASIC_AUTH_USER needs IDLECUT_BASIC_AUTH_PASSWORD or IDLECUT_BASIC_AUTH_PASSWORD_FILE")?;
    Ok(Some(basic(user, &password)))
}

/// The Authorization header's value for a bearer token.
fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The Authorization header's value for basic authentication.
fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Percent-encodes a query value (service names and prefixes contain `/` and `:`): everything
/// but RFC 3986's unreserved characters.
pub fn encode(value: &str) -> String {
    const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(value, RESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
        thread,
        time::{Duration, Instant},
    };

    use super::{ANSWER_LIMITS, AgentAddress, AgentClient, AnswerLimits};

    /// A server on a loopback port that answers one request with `answer` (given the
    /// connection once the request is read; it returns how many bytes it wrote), and a client
    /// of it within `limits`.
    fn misbehaving(
        limits: AnswerLimits,
        answer: impl FnOnce(&mut TcpStream) -> usize + Send + 'static,
    ) -> (AgentClient, thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut connection, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8];
            while !request.ends_with(b"\r\n\r\n") && connection.read(&mut byte).unwrap() == 1 {
                request.push(byte[0]);
            }
            answer(&mut connection)
        });
        let client = AgentClient {
            address: AgentAddress { tls: false, addr },
            tls: None,
            authorization: None,
            limits,
        };
        (client, server)
    }

    /// Writes `head`, then `piece` over and over until the client hangs up or `most` bytes are
    /// out, every `pause`; how many bytes went out.
    fn stream(
        connection: &mut TcpStream,
        head: &[u8],
        piece: &[u8],
        pause: Duration,
        most: usize,
    ) -> usize {
        let mut written = 0;
        if connection.write_all(head).is_err() {
            return 0;
        }
        while written < most && connection.write_all(piece).is_ok() {
            written += piece.len();
            thread::sleep(pause);
        }
        written + head.len()
    }

    /// Waits until the client hangs up.
    fn hold(connection: &mut TcpStream) {
        let _ = connection.read(&mut [0u8; 1]);
    }

    const OK_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n";

    #[test]
    fn an_endless_body_is_refused_at_the_limit_in_bounded_time_and_memory() {
        let started = Instant::now();
        let (client, server) = misbehaving(ANSWER_LIMITS, |connection| {
            // Spaces: JSON whitespace, as endless as the answer.
            stream(
                connection,
                OK_HEAD,
                &[b' '; 64 << 10],
                Duration::ZERO,
                usize::MAX,
            )
        });
        let err = format!(
            "{:#}",
            client.get("/api/v1/cuts?limit=5").expect_err("endless")
        );
        let written = server.join().unwrap();
        assert!(err.contains("to /api/v1/cuts is over 128 MiB"), "{err}");
        assert!(err.contains("the most this client accepts"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        // The client stopped reading at the limit: it cannot hold more than it read, and what
        // it did not read is at most the sockets' buffers.
        assert!(
            written < ANSWER_LIMITS.body + (64 << 20),
            "the server wrote {written} bytes before the client hung up"
        );
    }

    #[test]
    fn a_head_without_an_end_is_refused_at_its_limit() {
        let (client, server) = misbehaving(ANSWER_LIMITS, |connection| {
            stream(
                connection,
                b"HTTP/1.1 200 OK\r\n",
                b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
                Duration::ZERO,
                usize::MAX,
            )
        });
        let err = format!(
            "{:#}",
            client.get("/api/v1/connections").expect_err("endless")
        );
        let written = server.join().unwrap();
        assert!(
            err.contains("answered /api/v1/connections with a head over 64 KiB"),
            "{err}"
        );
        assert!(written < (64 << 20), "the server wrote {written} bytes");
    }

    #[test]
    fn an_announced_length_over_the_limit_is_refused_before_the_body() {
        let started = Instant::now();
        let (client, server) = misbehaving(ANSWER_LIMITS, |connection| {
            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 419430400\r\n\r\n";
            connection.write_all(head).unwrap();
            hold(connection);
            head.len()
        });
        let err = format!("{:#}", client.get("/api/v1/cuts").expect_err("too long"));
        server.join().unwrap();
        assert!(
            err.contains("announced an answer of 419430400 bytes to /api/v1/cuts, over 128 MiB"),
            "{err}"
        );
        // At once: not after the stall limit.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_trickle_is_cut_at_the_time_limit_and_silence_at_the_stall_limit() {
        let limits = AnswerLimits {
            time: Duration::from_secs(1),
            ..ANSWER_LIMITS
        };
        let started = Instant::now();
        let (client, server) = misbehaving(limits, |connection| {
            // A byte every 20 ms: never a stall, never an end.
            stream(
                connection,
                OK_HEAD,
                b" ",
                Duration::from_millis(20),
                usize::MAX,
            )
        });
        let err = format!("{:#}", client.get("/api/v1/cuts").expect_err("trickle"));
        server.join().unwrap();
        let took = started.elapsed();
        assert!(
            err.contains("did not finish its answer to /api/v1/cuts within 1 s"),
            "{err}"
        );
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(5),
            "{took:?}"
        );

        let limits = AnswerLimits {
            stall: Duration::from_secs(1),
            ..ANSWER_LIMITS
        };
        let started = Instant::now();
        let (client, server) = misbehaving(limits, |connection| {
            hold(connection);
            0
        });
        let err = format!(
            "{:#}",
            client.get("/api/v1/connections").expect_err("silent")
        );
        server.join().unwrap();
        assert!(
            err.contains("sent nothing for 1 s while answering /api/v1/connections"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn answers_within_the_limits_are_read_whole_and_errors_reported() {
        let (client, server) = misbehaving(ANSWER_LIMITS, |connection| {
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"total\":0}";
            connection.write_all(answer).unwrap();
            answer.len()
        });
        assert_eq!(client.get("/api/v1/cuts").unwrap(), "{\"total\":0}");
        server.join().unwrap();

        let (client, server) = misbehaving(ANSWER_LIMITS, |connection| {
            let answer = b"HTTP/1.1 400 Bad Request\r\n\r\nlimit=`0`: expected 1 to 100\n";
            connection.write_all(answer).unwrap();
            answer.len()
        });
        let err = format!("{:#}", client.get("/api/v1/cuts?limit=0").expect_err("400"));
        assert_eq!(err, "the agent answered 400: limit=`0`: expected 1 to 100");
        server.join().unwrap();

        let (client, server) = misbehaving(ANSWER_LIMITS, |connection| {
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"total\":";
            connection.write_all(answer).unwrap();
            answer.len()
        });
        let err = format!("{:#}", client.get("/api/v1/cuts").expect_err("cut short"));
        assert!(err.contains("ended after 9 of the 100 bytes"), "{err}");
        server.join().unwrap();
    }

    /// A TLS server on a loopback port (a certificate for 127.0.0.1 made now) that reads one
    /// request and runs `answer` on the connection, and a client of it that trusts the
    /// certificate, within `limits`.
    fn tls_misbehaving(
        limits: AnswerLimits,
        answer: impl FnOnce(&mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>)
        + Send
        + 'static,
    ) -> (AgentClient, thread::JoinHandle<()>) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let ca_file = std::env::temp_dir().join(format!(
            "idlecut-client-tls-{}-{}.pem",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&ca_file, certified.cert.pem()).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (connection, _) = listener.accept().unwrap();
            let tls = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
            let mut stream = rustls::StreamOwned::new(tls, connection);
            let mut request = Vec::new();
            let mut byte = [0u8];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                request.push(byte[0]);
            }
            answer(&mut stream);
        });
        let mut client = AgentClient::new(&super::AgentArgs {
            agent: super::parse_agent(&format!("https://{addr}")).unwrap(),
            ca_file: Some(ca_file.clone()),
            tls_server_name: None,
            cert_file: None,
            key_file: None,
            bearer_token_file: None,
            basic_auth_user: None,
            basic_auth_password_file: None,
        })
        .unwrap();
        std::fs::remove_file(&ca_file).unwrap();
        client.limits = limits;
        (client, server)
    }

    #[test]
    fn over_tls_answers_are_read_whole_and_held_to_the_same_limits() {
        // A server that closes without close_notify has still answered.
        let (client, server) = tls_misbehaving(ANSWER_LIMITS, |stream| {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"total\":0}")
                .unwrap();
            stream.flush().unwrap();
        });
        assert_eq!(client.get("/api/v1/cuts").unwrap(), "{\"total\":0}");
        server.join().unwrap();

        let small = AnswerLimits {
            body: 1 << 20,
            ..ANSWER_LIMITS
        };
        let (client, server) = tls_misbehaving(small, |stream| {
            if stream.write_all(OK_HEAD).is_ok() {
                while stream.write_all(&[b' '; 16 << 10]).is_ok() {}
            }
        });
        let err = format!("{:#}", client.get("/api/v1/cuts").expect_err("endless"));
        server.join().unwrap();
        assert!(err.contains("to /api/v1/cuts is over 1 MiB"), "{err}");

        // One TLS record sent a byte at a time: rustls reads on until the record is whole,
        // each read well within the stall limit; the deadline still ends it.
        let limits = AnswerLimits {
            time: Duration::from_secs(1),
            ..ANSWER_LIMITS
        };
        let started = Instant::now();
        let (client, server) = tls_misbehaving(limits, |stream| {
            let mut answer = OK_HEAD.to_vec();
            answer.extend_from_slice(&[b' '; 8 << 10]);
            stream.conn.writer().write_all(&answer).unwrap();
            let mut records = Vec::new();
            while stream.conn.wants_write() {
                stream.conn.write_tls(&mut records).unwrap();
            }
            for byte in records {
                if stream.sock.write_all(&[byte]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        let err = format!(
            "{:#}",
            client.get("/api/v1/connections").expect_err("trickle")
        );
        server.join().unwrap();
        let took = started.elapsed();
        assert!(
            err.contains("did not finish its answer to /api/v1/connections within 1 s"),
            "{err}"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_request_returns_any_status_with_its_body_and_the_certificate_over_tls() {
        let (client, server) = misbehaving(ANSWER_LIMITS, |connection| {
            let answer = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 13\r\n\r\nUnauthorized\n";
            connection.write_all(answer).unwrap();
            answer.len()
        });
        let answer = client.request("/metrics").unwrap();
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (401, "Unauthorized\n")
        );
        assert_eq!(answer.peer_certificate, None);
        server.join().unwrap();

        let (client, server) = misbehaving(ANSWER_LIMITS, |connection| {
            let answer = b"\x15\x03\x03\x00\x02\x02\x46";
            connection.write_all(answer).unwrap();
            answer.len()
        });
        let err = format!("{:#}", client.request("/metrics").expect_err("no HTTP"));
        assert!(err.contains("did not answer HTTP to /metrics"), "{err}");
        server.join().unwrap();

        let (client, server) = tls_misbehaving(ANSWER_LIMITS, |stream| {
            stream
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            stream.flush().unwrap();
        });
        let answer = client.request("/nowhere").unwrap();
        server.join().unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (404, ""));
        let certificate = answer.peer_certificate.expect("a certificate");
        assert!(!certificate.is_empty());
    }

    #[test]
    fn agent_addresses_take_a_scheme() {
        let agent = super::parse_agent("https://127.0.0.1:9464/").unwrap();
        assert!(agent.tls);
        assert_eq!(agent.to_string(), "https://127.0.0.1:9464");
        assert!(!super::parse_agent("[::1]:9464").unwrap().tls);
        assert!(super::parse_agent("ftp://127.0.0.1:9464").is_err());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(super::encode("10.0.2.0/24"), "10.0.2.0%2F24");
        assert_eq!(super::encode("fd00:1::/48"), "fd00%3A1%3A%3A%2F48");
    }
}
