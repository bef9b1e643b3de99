//! idlecut: follows TCP connections on the mail ports with eBPF and tells which network path
//! cuts long-lived connections, and how.
//!
//! Data flows one way: probes (kernel) -> events -> connection model -> paths -> metrics/HTTP.

mod client;
mod config;
mod heap;
mod http;
mod pipeline;
mod privileges;
mod snapshot;

use std::{
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use idlecut_check::{self as check, registrar, scheduled};
use idlecut_core::cuts;
use idlecut_cri::CriDirectory;
use idlecut_kernel::{clock, discovery::Discovery, probes};
use idlecut_node::{directory::PodDirectory, kubelet::KubeletDirs, timeouts};
use idlecut_web as web;
use tokio::sync::watch;
use tracing::info;

use crate::{config::Config, config::Flags, config::LogFormat, pipeline::Pipeline};
use idlecut_core::{
    inference::{Inference, Settings},
    listing::Watched,
    metrics::{Metrics, ProbeHookLabels, ProbeLabels},
    model::ConnectionModel,
    paths::{PathTable, Prefixes},
};

/// Finds the network paths that cut long-lived mail connections (IMAP IDLE, Submission...),
/// after how long, and how. Serves Prometheus metrics over HTTP. Needs Linux 5.8 or later and
/// root, or CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN and CAP_SYS_PTRACE (and CAP_SYS_RESOURCE before
/// Linux 5.11); keeps only CAP_SYS_ADMIN and CAP_SYS_PTRACE once its programs are attached.
#[derive(Debug, Parser)]
#[command(name = "idlecut", version, allow_negative_numbers = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the connections a running agent follows (and those that ended in the last few
    /// minutes) as a table, the way `ss` would
    Connections(client::ConnectionsArgs),
    /// Print the last cuts a running agent saw, newest first: which connection, process and
    /// path, after how long a silence, how, and who sent the RST
    Cuts(client::CutsArgs),
    Check(check::CheckArgs),
}

/// A client command's exit status: success, or its error on stderr and failure.
fn client_exit(result: anyhow::Result<()>) -> ExitCode {
    result.map_or_else(|err| exit_with_error(&err), |()| ExitCode::SUCCESS)
}

fn exit_with_error(err: &anyhow::Error) -> ExitCode {
    eprintln!("idlecut: error: {err:#}");
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Check(args)) => {
            return match check::run(args) {
                Ok(code) => ExitCode::from(code),
                Err(err) => exit_with_error(&err),
            };
        }
        Some(Command::Cuts(args)) => return client_exit(client::cuts(args)),
        Some(Command::Connections(args)) => return client_exit(client::connections(args)),
        None => {}
    }
    let config = match Config::load(&cli.flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("idlecut: error: {err}");
            return ExitCode::from(2);
        }
    };
    heap::tune();
    init_logging(config.log_format);
    // Usage errors, reported once in the log's format, exit 2.
    let web = match web::WebSettings::load(config.web_config.0.as_deref()) {
        Ok(web) => web,
        Err(err) => {
            tracing::error!("{err:#}");
            return ExitCode::from(2);
        }
    };
    // Before any descriptor is opened, so that the HTTP side is sized from the raised limit.
    let max_http_connections = match web::descriptors::raise_open_file_limit() {
        Ok(limit) => {
            info!(
                soft = limit.soft,
                hard = limit.hard,
                was = limit.soft_before,
                "open files limit"
            );
            web::descriptors::http_connection_capacity(limit.soft)
        }
        Err(err) => {
            tracing::warn!("cannot read or raise the open files limit: {err}");
            web::descriptors::MIN_HTTP_CONNECTIONS
        }
    };
    // Bound before the programs load, so that a taken port is reported (exit 2) at once.
    let listener = match web::bind(config.listen) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!("{err:#}");
            return ExitCode::from(2);
        }
    };
    // Loaded before the runtime starts its threads: capabilities belong to threads, and the
    // ones only loading needs are dropped here, once, for every thread the agent will have.
    // Errors from here on are reported once, in the log's format.
    let probes = match probes::load(&config.probe_settings()) {
        Ok(probes) => probes,
        Err(err) => {
            tracing::error!("{err:#}");
            return ExitCode::FAILURE;
        }
    };
    let net_admin = config.node_timeouts.nftables || config.node_timeouts.ipvs;
    match privileges::drop_after_load(net_admin) {
        Ok(kept) => info!(?kept, "programs attached: capabilities dropped but these"),
        Err(err) => {
            tracing::error!("{err:#}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let limits = web::Limits::with_capacity(max_http_connections);
    let result = runtime.block_on(run(config, probes, listener, web, limits));
    // Everything that matters stopped inside `run`. A blocking task may still be under way (a
    // scheduled check's name lookup, stuck on a silent name server, cannot be cancelled):
    // it must not hold the exit that README promises within 5 s.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt, prelude::*};
    // A filter that does not parse would silence every line, warnings included: say so, and
    // log at `info` instead.
    let (filter, bad_filter) = match std::env::var("IDLECUT_LOG") {
        Err(_) => (EnvFilter::new("info"), None),
        Ok(text) => match log_filter(&text) {
            Ok(filter) => (filter, None),
            Err(err) => (EnvFilter::new("info"), Some((text, err))),
        },
    };
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
    }
    if let Some((text, err)) = bad_filter {
        tracing::warn!(
            IDLECUT_LOG = text,
            error = err,
            "IDLECUT_LOG is not a valid log filter (such as info, debug or idlecut=debug): logging at info"
        );
    }
}

/// Parses a log filter, stricter than `EnvFilter` itself: a word it does not know is taken as
/// the name of a module to trace (`garbage!!!` would then silence every other line), so each
/// directive's target must look like a module path and its level must be a level.
fn log_filter(text: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    use tracing_subscriber::filter::LevelFilter;
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, level) = match directive.rsplit_once('=') {
            Some((target, level)) if !target.contains('[') || target.ends_with(']') => {
                (target, Some(level))
            }
            _ => (directive, None),
        };
        let target = target.split('[').next().unwrap_or_default();
        let is_level = target.parse::<LevelFilter>().is_ok();
        let is_path = !target.is_empty()
            && target
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-');
        if !is_level && !is_path {
            return Err(format!(
                "`{directive}` is neither a level nor a module path"
            ));
        }
        if let Some(level) = level
            && level.parse::<LevelFilter>().is_err()
        {
            return Err(format!(
                "`{level}` is not a level (trace, debug, info, warn, error, off)"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(text).map_err(|err| err.to_string())
}

async fn run(
    config: Config,
    probes: probes::Probes,
    listener: std::net::TcpListener,
    web: Arc<web::WebSettings>,
    limits: web::Limits,
) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::from_std(listener).context("serving the HTTP listener")?;
    let services = config
        .ports
        .ports()
        .filter_map(|port| config.ports.service(port))
        .map(Arc::from);
    // The one naming of paths, for the path table, the scheduled checks and the filters.
    let prefixes = Prefixes {
        ipv4: config.ipv4_prefix,
        ipv6: config.ipv6_prefix,
    };
    let mut metrics = Metrics::new(services);
    let check_metrics = scheduled::CheckMetrics::register(
        &mut metrics.registry,
        config
            .checks
            .iter()
            .map(|check| Arc::from(check.label.as_str())),
    );
    let metrics = Arc::new(metrics);
    for attached in &probes.attached {
        let probe = attached.label;
        metrics
            .probe_attached
            .get_or_create(&ProbeLabels { probe })
            .set(i64::from(attached.kind.is_some()));
        if let Some(kind) = attached.kind {
            metrics
                .probe_verified_instructions
                .get_or_create(&ProbeLabels { probe })
                .set(i64::from(attached.verified_instructions));
            metrics
                .probe_hook
                .get_or_create(&ProbeHookLabels {
                    probe,
                    kind: kind.as_str(),
                })
                .set(1);
        }
    }
    let probes::Probes {
        ebpf,
        logger,
        events,
        counters,
        state,
        attached: _,
    } = probes;
    let (publisher, snapshots) = snapshot::channel(clock::monotonic_now);
    let (own_registrar, own_connections) = registrar::channel();
    let pipeline = Pipeline {
        model: ConnectionModel::new(config.ports.clone()),
        paths: PathTable::new(prefixes, config.max_paths),
        inference: Inference::new(Settings {
            req5_threshold_seconds: config.req5_threshold.as_secs_f64(),
            min_cuts: config.min_cuts,
        }),
        metrics: metrics.clone(),
        counters,
        kernel: state,
        discovery: Arc::new(Mutex::new(Discovery::new(
            config.ports.clone(),
            pod_directories(&config),
            timeouts::Sources {
                nftables: config.node_timeouts.nftables,
                ipvs: config.node_timeouts.ipvs,
                ..timeouts::Sources::default()
            },
            config.node_netns.clone(),
        ))),
        scan_interval: config.scan_interval,
        snapshots: publisher,
        recent_cuts: cuts::RecentCuts::new(config.recent_cuts),
        own_connections,
    };
    let (stop, stopped) = watch::channel(false);
    let (check_results, checks) = scheduled::results_channel();
    // Its own task: a check's idle search takes as long as its longest silence, and neither
    // the pipeline nor HTTP waits for it.
    let scheduler = (!config.checks.is_empty()).then(|| {
        tokio::spawn(
            scheduled::Scheduler {
                checks: config.checks.clone(),
                runner: scheduled::check_runner(own_registrar),
                metrics: check_metrics,
                ports: config.ports.clone(),
                prefixes,
                results: check_results,
            }
            .run(stopped.clone()),
        )
    });
    let events = probes::EventRing::new(events).context("watching the ring buffer")?;
    let pipeline = tokio::spawn(pipeline.run(events, stopped.clone()));
    let kernel_logs =
        logger.map(|logger| tokio::spawn(probes::forward_kernel_logs(logger, stopped.clone())));
    let server = tokio::spawn(web::serve(
        listener,
        http::router(http::AppState {
            metrics,
            snapshots,
            checks,
            watched: Arc::new(Watched::new(&config.ports, prefixes)),
        }),
        web.clone(),
        limits,
        stopped,
    ));
    info!(
        listen = %config.listen,
        ports = %config.ports,
        web = %web.describe(),
        max_http_connections = limits.max_connections,
        scheduled_checks = config.checks.len(),
        "idlecut is running: metrics at {}://{}/metrics",
        if web.current().tls.is_some() { "https" } else { "http" },
        config.listen
    );

    // Run until a signal, or until a task stops on its own, which only an error makes it do:
    // better to exit (and be restarted) than to serve numbers that no longer move.
    let mut pipeline = pipeline;
    let mut server = server;
    tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            info!("shutting down");
        }
        ended = &mut pipeline => {
            let _ = stop.send(true);
            ended.context("pipeline task")??;
            anyhow::bail!("the event pipeline stopped");
        }
        ended = &mut server => {
            let _ = stop.send(true);
            ended.context("HTTP task")??;
            anyhow::bail!("the HTTP server stopped");
        }
    }
    let _ = stop.send(true);
    pipeline.await.context("pipeline task")??;
    server.await.context("HTTP task")??;
    if let Some(scheduler) = scheduler {
        scheduler.await.context("check scheduler task")?;
    }
    if let Some(kernel_logs) = kernel_logs {
        kernel_logs.await.context("kernel log task")??;
    }
    // Detaches the programs.
    drop(ebpf);
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {},
        _ = interrupt.recv() => {},
    }
    Ok(())
}

/// Where pods get their names, the richest source first: the container runtime (labels and
/// workload too), when named; then the kubelet's log directories, unless turned off.
fn pod_directories(config: &Config) -> Vec<Box<dyn PodDirectory>> {
    let mut directories: Vec<Box<dyn PodDirectory>> = Vec::new();
    if let Some(socket) = &config.cri_socket.0 {
        directories.push(Box::new(CriDirectory::new(
            socket,
            tokio::runtime::Handle::current(),
        )));
    }
    if let Some(logs) = &config.kubelet_logs.0 {
        directories.push(Box::new(KubeletDirs::new(logs)));
    }
    directories
}
