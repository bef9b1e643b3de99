//! `idlecut check`: audits the path to a mail server on demand, from the client's side, point
//! by point of RFC 5383: the ports are reachable (§3, §6), the server answering is the server
//! (§3: interception), extension negotiation is intact (§6: STARTTLS and the capability list),
//! and idle connections survive, or else where and how the path cuts them and which keepalive
//! keeps them open (§4.1, §7: RFC 5382 REQ-5).
//!
//! Each port is checked on its own task, all at once: the idle search takes as long as the
//! longest silence it tries, and there is no reason to pay that once per port.

mod args;
mod dialog;
mod idle;
mod known;
mod login;
mod negotiate;
mod probe;
mod reach;
pub mod registrar;
mod report;
pub mod scheduled;
mod table;
mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;

pub use self::{
    args::{Caller, CheckArgs},
    report::{IdleReport, PortReport, Report},
    table::{MAX_CHECKS, ScheduledCheck},
};
use self::{
    args::{IDLE_BUDGET, IDLE_PARALLEL, Progress},
    dialog::{Dialog, truncate},
    known::KnownCerts,
    login::Credentials,
    probe::IdleSettings,
    tls::Fingerprint,
};
use crate::registrar::Registrar;
use idlecut_api::vocabulary::{CheckName, CheckStatus};

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

/// A check's report, and whether the certificates it learned could be recorded.
#[derive(Debug)]
pub struct Checked {
    pub report: Report,
    /// Writing `--known-certs` failed: the report stands (a run may have taken hours), and
    /// this error follows it.
    pub unsaved: Option<anyhow::Error>,
}

/// Runs one check, the same for `idlecut check` and the agent's schedule: reads the files it
/// names, checks every port, and records the certificates it learned.
pub async fn check_target(
    args: Arc<CheckArgs>,
    caller: Caller,
    own: Option<Registrar>,
) -> Result<Checked, CheckError> {
    let files = args.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let known = files
            .known_certs
            .as_deref()
            .map(KnownCerts::load)
            .transpose()?;
        let credentials = match (caller, files.credentials.as_deref()) {
            (Caller::Schedule, None) => None,
            (Caller::Schedule, file) => Credentials::load(file).context("credentials")?,
            (Caller::Command, None) => Credentials::load(None)?,
            (Caller::Command, file) => Credentials::load(file).context("--credentials")?,
        };
        anyhow::Ok((known, credentials))
    })
    .await
    .map_err(|err| CheckError::Run(err.into()))?;
    let (known, credentials) = loaded.map_err(CheckError::Files)?;
    let (report, known) = check(args, known, credentials.map(Arc::new), caller, own)
        .await
        .map_err(CheckError::Run)?;
    let unsaved = match known {
        None => None,
        Some(known) => tokio::task::spawn_blocking(move || known.save())
            .await
            .map_err(anyhow::Error::from)
            .and_then(|saved| saved)
            .err(),
    };
    Ok(Checked { report, unsaved })
}

/// Runs `idlecut check` and returns the exit status.
pub fn run(args: &CheckArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let outcome = runtime.block_on(check_target(Arc::new(args.clone()), Caller::Command, None));
    // A name lookup given up on (a silent name server) still holds a blocking thread: do not
    // wait for it to exit.
    runtime.shutdown_timeout(Duration::ZERO);
    let Checked { report, unsaved } = match outcome {
        Ok(checked) => checked,
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
    // The report first: it may have taken hours. A file that cannot be written is a file
    // that cannot be used, as one that cannot be read: exit 2.
    if let Some(err) = unsaved {
        eprintln!("idlecut: error: {err:#}");
        return Ok(2);
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
    // Resolving is part of connecting, and bounded like it: getaddrinfo against a silent name
    // server retries for 20 s and more. (The lookup itself runs on a blocking thread that
    // cannot be cancelled; the agent's exit does not wait for it.)
    let address = tokio::time::timeout(args.connect_timeout, tokio::net::lookup_host((host, 0)))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot resolve `{host}`: no answer within the connect timeout ({})",
                idlecut_core::duration_text::with_seconds(args.connect_timeout.as_secs_f64())
            )
        })?
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
