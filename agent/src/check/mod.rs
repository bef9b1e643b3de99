//! `idlecut check`: audits the path to a mail server on demand, from the client's side, point
//! by point of RFC 5383: the ports are reachable (§3, §6), the server answering is the server
//! (§3: interception), extension negotiation is intact (§6: STARTTLS and the capability list),
//! and idle connections survive, or else where and how the path cuts them and which keepalive
//! keeps them open (§4.1, §7: RFC 5382 REQ-5).
//!
//! Each port is checked on its own task, all at once: the idle search takes as long as the
//! longest silence it tries, and there is no reason to pay that once per port.

mod dialog;
mod idle;
mod known;
mod login;
mod negotiate;
mod probe;
mod reach;
mod report;
mod table;
mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;

use self::{
    dialog::{Dialog, truncate},
    idle::IdleSettings,
    known::KnownCerts,
    login::Credentials,
    tls::Fingerprint,
};
pub use self::{
    idle::IdleReport,
    report::{PortReport, Report},
    table::{MAX_CHECKS, ScheduledCheck},
};
use crate::{
    config,
    own::Registrar,
    vocabulary::{CheckName, CheckStatus},
};

/// The ports RFC 5383 §3 says MUST be reachable: IMAP and Message Submission.
const DEFAULT_PORTS: [u16; 2] = [143, 587];
/// Idle connections one port's search may use, and how many are silent at once.
const IDLE_BUDGET: usize = 32;
const IDLE_PARALLEL: usize = 8;
/// Defaults shared by the flags and the `[[check]]` tables of the agent's config.
const DEFAULT_MAX_IDLE: &str = "2h5m";
const DEFAULT_CONNECT_TIMEOUT: &str = "10s";
const DEFAULT_ANSWER_TIMEOUT: &str = "15s";
const DEFAULT_REQ5_THRESHOLD: &str = "2h4m";

/// Audit the path to a mail server now: reachability of IMAP (143) and Submission (587),
/// the server's identity, STARTTLS and the capability lists, and where the path cuts idle
/// connections. Exits 0 when nothing failed, 1 when a check failed, 2 on a usage error
// (Not a doc comment: clap shows those in --help.) The same settings come from a `[[check]]`
// table of the agent's config (`check::table`), through the same parsers and defaults.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct CheckArgs {
    /// The mail server: HOST, HOST:PORT, IP or [IPv6]:PORT. Without a port, 143 and 587
    #[arg(value_name = "TARGET[:PORT]", value_parser = parse_target)]
    target: Target,
    /// Also check this port (repeatable); the protocol is told from the greeting
    #[arg(long = "port", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,
    /// The longest silence the path must allow; 0s skips the idle and keepalive checks
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_MAX_IDLE, value_parser = config::parse_duration)]
    max_idle: Duration,
    /// How narrow the reported cut-off interval should be [default: --max-idle / 60, at least 1s]
    #[arg(long, value_name = "DURATION", value_parser = parse_at_least_100ms)]
    precision: Option<Duration>,
    /// The SHA-256 fingerprint of the server's certificate: any other one is interception
    #[arg(long, value_name = "SHA256", value_parser = Fingerprint::parse)]
    expect_cert: Option<Fingerprint>,
    /// A file with an IMAP user name (first line) and password (second), so that idle IMAP
    /// sessions log in and may stay silent longer; or set IDLECUT_CHECK_USER and
    /// IDLECUT_CHECK_PASSWORD
    #[arg(long, value_name = "FILE")]
    credentials: Option<std::path::PathBuf>,
    /// A file of the certificates earlier runs saw (JSON): a new target's is recorded, a
    /// different one later is interception (trust on first use)
    #[arg(long, value_name = "FILE")]
    known_certs: Option<std::path::PathBuf>,
    /// Text the greeting must contain (such as the server's name): any other is interception
    #[arg(long, value_name = "TEXT")]
    expect_greeting: Option<String>,
    /// A capability that must be offered, like IDLE or imap:IDLE, smtp:PIPELINING (repeatable)
    #[arg(long = "capability", value_name = "NAME")]
    capabilities: Vec<String>,
    /// How long to wait for a connection to be accepted
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_CONNECT_TIMEOUT, value_parser = parse_at_least_100ms)]
    connect_timeout: Duration,
    /// How long to wait for an answer (and for the path to acknowledge what was sent)
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_ANSWER_TIMEOUT, value_parser = parse_at_least_100ms)]
    answer_timeout: Duration,
    /// The idle time RFC 5382 REQ-5 requires
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_REQ5_THRESHOLD, value_parser = config::parse_req5_threshold)]
    req5_threshold: Duration,
    /// Print the report as JSON (progress still goes to stderr)
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: Option<u16>,
}

fn parse_target(text: &str) -> Result<Target, String> {
    let bad_port = |port: &str| format!("`{port}` in `{text}` is not a port (1-65535)");
    let port = |port: &str| match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad_port(port)),
        Ok(port) => Ok(port),
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{text}`: a `[` without its `]`"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(port(p)?)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("`{text}`: write [IPv6]:PORT")),
        }
    } else if text.matches(':').count() == 1 {
        let (host, p) = text.split_once(':').unwrap_or((text, ""));
        (host, Some(port(p)?))
    } else {
        // No colon, or a bare IPv6 address.
        (text, None)
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("`{text}` is not a host name or address"));
    }
    Ok(Target {
        host: host.to_owned(),
        port,
    })
}

fn parse_at_least_100ms(text: &str) -> Result<Duration, String> {
    let duration = config::parse_duration(text)?;
    if duration < Duration::from_millis(100) {
        return Err(format!("`{text}` is too short (at least 100ms)"));
    }
    Ok(duration)
}

impl CheckArgs {
    /// The ports to check: the target's, or IMAP and Submission, then any `--port`.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = match self.target.port {
            Some(port) => vec![port],
            None => DEFAULT_PORTS.to_vec(),
        };
        for &port in &self.ports {
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        ports
    }

    /// The server's name or address, as given.
    #[cfg(test)]
    pub fn host(&self) -> &str {
        &self.target.host
    }

    /// The idle time below which a cut breaks RFC 5382 REQ-5.
    #[cfg(test)]
    pub fn req5_threshold(&self) -> Duration {
        self.req5_threshold
    }
}

/// Who runs a check: a person at the command line, or the agent's schedule (`[[check]]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// `idlecut check`: progress on stderr; IMAP credentials may come from the environment.
    Command,
    /// The agent: progress in its log at debug level; credentials only from the entry's
    /// `credentials` file (the agent's environment is no place for a password meant for one
    /// server, which every scheduled check would otherwise send to its own).
    Schedule,
}

/// Progress while the idle search runs.
pub struct Progress {
    prefix: String,
    caller: Caller,
}

impl Progress {
    pub fn note(&self, message: &str) {
        match self.caller {
            Caller::Command => eprintln!("{}{message}", self.prefix),
            Caller::Schedule => tracing::debug!("{}{message}", self.prefix),
        }
    }
}

/// Why a check did not give a report.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A file it was given cannot be used (credentials, known certificates): a usage error.
    #[error("{0:#}")]
    Files(anyhow::Error),
    /// The target cannot be resolved, or the run failed.
    #[error("{0:#}")]
    Run(anyhow::Error),
}

/// Runs one check, the same for `idlecut check` and the agent's schedule: reads the files it
/// names, checks every port, and records the certificates it learned.
pub async fn check_target(
    args: Arc<CheckArgs>,
    caller: Caller,
    own: Option<Registrar>,
) -> Result<Report, CheckError> {
    let files = args.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let known = files
            .known_certs
            .as_deref()
            .map(KnownCerts::load)
            .transpose()?;
        let credentials = match (caller, files.credentials.as_deref()) {
            (Caller::Schedule, None) => None,
            (_, file) => Credentials::load(file)?,
        };
        anyhow::Ok((known, credentials))
    })
    .await
    .map_err(|err| CheckError::Run(err.into()))?;
    let (known, credentials) = loaded.map_err(CheckError::Files)?;
    let (report, known) = check(args, known, credentials.map(Arc::new), caller, own)
        .await
        .map_err(CheckError::Run)?;
    if let Some(known) = known {
        tokio::task::spawn_blocking(move || known.save())
            .await
            .map_err(|err| CheckError::Run(err.into()))?
            .map_err(CheckError::Run)?;
    }
    Ok(report)
}

/// Runs `idlecut check` and returns the exit status.
pub fn run(args: &CheckArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = match runtime.block_on(check_target(Arc::new(args.clone()), Caller::Command, None))
    {
        Ok(report) => report,
        Err(CheckError::Files(err)) => {
            eprintln!("idlecut: error: {err:#}");
            return Ok(2);
        }
        Err(CheckError::Run(err)) => return Err(err),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("writing the report")?
        );
    } else {
        print!("{}", report.render());
    }
    Ok(report.exit_code())
}

/// Checks every port at once. Returns the report, and the record of known certificates with
/// what this run learned when it learned something.
async fn check(
    args: Arc<CheckArgs>,
    mut known: Option<KnownCerts>,
    credentials: Option<Arc<Credentials>>,
    caller: Caller,
    own: Option<Registrar>,
) -> anyhow::Result<(Report, Option<KnownCerts>)> {
    let ports = args.ports();
    let host = args.target.host.as_str();
    let address = tokio::net::lookup_host((host, 0))
        .await
        .with_context(|| format!("cannot resolve `{host}`"))?
        .next()
        .with_context(|| format!("`{host}` has no address"))?
        .ip();
    let precision = args
        .precision
        .unwrap_or_else(|| (args.max_idle / 60).max(Duration::from_secs(1)));
    let idle = IdleSettings {
        max_idle: args.max_idle,
        precision,
        parallel: IDLE_PARALLEL,
        budget: IDLE_BUDGET,
        connect_timeout: args.connect_timeout,
        answer_timeout: args.answer_timeout,
        req5_threshold: args.req5_threshold,
        credentials,
        server_name: host.to_owned(),
        own,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (index, &port) in ports.iter().enumerate() {
        let (args, idle) = (args.clone(), idle.clone());
        let recorded = known.as_ref().and_then(|known| known.get(host, port));
        tasks.spawn(async move {
            let addr = SocketAddr::new(address, port);
            let report = check_port(addr, &args, &idle, recorded, caller).await;
            (index, report)
        });
    }
    let mut reports = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        reports.push(joined.context("a port's check stopped")?);
    }
    reports.sort_by_key(|(index, _)| *index);
    let reports: Vec<PortReport> = reports.into_iter().map(|(_, report)| report).collect();
    let mut learned = false;
    if let Some(known) = &mut known {
        for report in &reports {
            if let Some(certificate) = &report.certificate {
                learned |= known.learn(host, report.port, certificate.sha256);
            }
        }
    }
    let report = Report::new(
        if host == address.to_string() {
            host.to_owned()
        } else {
            format!("{host} ({address})")
        },
        args.max_idle.as_secs_f64(),
        precision.as_secs_f64(),
        reports,
    );
    Ok((report, known.filter(|_| learned)))
}

async fn check_port(
    addr: SocketAddr,
    args: &CheckArgs,
    idle: &IdleSettings,
    recorded: Option<Fingerprint>,
    caller: Caller,
) -> PortReport {
    let mut report = PortReport::new(addr);
    let prefix = match caller {
        Caller::Command => format!("idlecut check: {}: ", addr.port()),
        Caller::Schedule => format!("check {}, port {}: ", args.target.host, addr.port()),
    };
    let progress = Progress { prefix, caller };
    let started = std::time::Instant::now();
    let stream = match idle.connect(addr).await {
        Ok(stream) => stream,
        Err(failure) => {
            report.row(
                CheckName::Reachability,
                CheckStatus::Fail,
                format!("{addr}: {}", failure.describe(idle.connect_timeout)),
            );
            return report;
        }
    };
    report.row(
        CheckName::Reachability,
        CheckStatus::Pass,
        format!(
            "{addr} accepted the connection in {:.1} ms",
            started.elapsed().as_secs_f64() * 1000.0
        ),
    );
    let ehlo_name = match stream.local_addr() {
        Ok(SocketAddr::V4(local)) => format!("[{}]", local.ip()),
        Ok(SocketAddr::V6(local)) => format!("[IPv6:{}]", local.ip()),
        Err(_) => "[127.0.0.1]".to_owned(),
    };
    let (dialog, greeting) = match Dialog::greet(stream, args.answer_timeout).await {
        Ok(greeted) => greeted,
        Err(err) => {
            report.row(
                CheckName::Identity,
                CheckStatus::Fail,
                format!("connected, but no mail server greets: {err}"),
            );
            return report;
        }
    };
    let protocol = dialog.protocol;
    report.protocol = Some(protocol);
    report.greeting = Some(greeting.clone());
    progress.note(&format!(
        "{} greeting: {}",
        protocol.name(),
        truncate(&greeting)
    ));
    let session = negotiate::run(dialog, &args.target.host, &ehlo_name).await;
    report.capabilities = session.capabilities.clone();
    report.capabilities_tls = session.capabilities_tls.clone();
    report.certificate = session.certificate.clone();
    let (status, detail) = negotiate::identity(&session, &greeting, args, recorded);
    report.row(CheckName::Identity, status, detail);
    let (status, detail) = negotiate::extensions(&session, protocol, &args.capabilities);
    report.row(CheckName::Extensions, status, detail);
    if !idle.max_idle.is_zero() {
        let (idle_report, idle_row, keepalive_row) =
            idle::search(addr, protocol, idle, &progress).await;
        report.idle = Some(idle_report);
        report.rows.push(idle_row);
        report.rows.push(keepalive_row);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> (String, Option<u16>) {
        let target = parse_target(text).unwrap();
        (target.host, target.port)
    }

    #[test]
    fn targets_with_and_without_ports() {
        assert_eq!(
            target("mail.example.net"),
            ("mail.example.net".into(), None)
        );
        assert_eq!(
            target("mail.example.net:587"),
            ("mail.example.net".into(), Some(587))
        );
        assert_eq!(target("192.0.2.7:143"), ("192.0.2.7".into(), Some(143)));
        assert_eq!(target("2001:db8::7"), ("2001:db8::7".into(), None));
        assert_eq!(
            target("[2001:db8::7]:143"),
            ("2001:db8::7".into(), Some(143))
        );
        assert_eq!(target("[2001:db8::7]"), ("2001:db8::7".into(), None));
        for bad in [
            "host:0",
            "host:imap",
            "[2001:db8::7",
            "[::1]143",
            "",
            ":143",
            "a b",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
