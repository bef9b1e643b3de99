//! The agent's scheduled checks (`[[check]]` in its config): each runs `idlecut check`'s own
//! code path (`check::check_target`) on its schedule, and its findings go to the
//! `idlecut_check_*` metrics and, next to the passive estimate of the same path, to
//! `/api/v1/paths`.
//!
//! One task, the scheduler, owns the results: each check runs in a loop of its own (so one
//! check never runs twice at once, and a slow one delays no other), each run in a task of its
//! own (so a panic ends the run, not the loop), and finished runs come back to the scheduler
//! over a channel. It publishes a snapshot of every check's last findings on a `watch`
//! channel; the HTTP side combines it with the pipeline's snapshot when it answers
//! (`compare`). Nothing here touches the pipeline: a check's connections are ordinary
//! connections, which the probes see like any other.

mod compare;
mod metrics;

use std::{
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};
use tracing::{info, warn};

pub use self::{compare::annotate, metrics::CheckMetrics};
use crate::{Caller, CheckArgs, IdleReport, Report, ScheduledCheck, registrar::Registrar};
use idlecut_api::vocabulary::{CheckName, CheckStatus, Role};
use idlecut_core::{
    paths::{PathKey, Prefixes},
    settings::PortMap,
};

/// The first run of the first check: soon after start-up, once the agent is serving.
const FIRST_RUN_AFTER: Duration = Duration::from_secs(5);
/// Between the first runs of two checks: an idle search holds up to 8 connections per port
/// open at once, and the checks of one agent need not all open theirs together.
const FIRST_RUN_SPREAD: Duration = Duration::from_secs(15);

/// What the last run of a check found on one port.
#[derive(Clone, Debug)]
pub struct PortResult {
    /// The check's target as configured (its metrics' `target` label).
    pub target: Arc<str>,
    pub port: u16,
    pub address: IpAddr,
    /// The passive path of the checked address if it has a label of its own: client role, the
    /// service the agent's `ports` give the port, the prefix of the address as the path table
    /// writes it. None for an unwatched port. Past `--max-paths` the table names an address
    /// without a label `other`; `annotate` resolves that against the paths it shows.
    pub path: Option<PathKey>,
    pub ended_unix_seconds: f64,
    pub max_idle_seconds: f64,
    /// The idle cut-off row, if the search ran.
    pub idle_status: Option<CheckStatus>,
    pub idle: Option<IdleReport>,
}

/// Every check's last findings, per port, in the order of the config.
#[derive(Debug, Default)]
pub struct CheckResults {
    pub ports: Vec<PortResult>,
}

/// The readers' side of the scheduler's results.
pub type Results = watch::Receiver<Arc<CheckResults>>;

/// A results channel: the scheduler's end, and the readers'.
pub fn results_channel() -> (watch::Sender<Arc<CheckResults>>, Results) {
    watch::channel(Arc::new(CheckResults::default()))
}

/// Runs one check and returns its report, or why it could not run.
pub type Runner = Arc<
    dyn Fn(Arc<CheckArgs>) -> Pin<Box<dyn Future<Output = Result<Report, String>> + Send>>
        + Send
        + Sync,
>;

/// The real runner: `idlecut check`'s code path, progress in the log, its connections left
/// out of the passive view (see `own`).
pub fn check_runner(own: Registrar) -> Runner {
    Arc::new(move |args| {
        let own = own.clone();
        Box::pin(async move {
            let target = args.target.host.clone();
            let checked = crate::check_target(args, Caller::Schedule, Some(own))
                .await
                .map_err(|err| err.to_string())?;
            // The run's findings stand; the record of certificates is retried by the next run
            // that learns one.
            if let Some(err) = checked.unsaved {
                warn!(target = %target, error = %format!("{err:#}"), "a scheduled check could not record the certificates it saw");
            }
            Ok(checked.report)
        })
    })
}

pub struct Scheduler {
    pub checks: Vec<ScheduledCheck>,
    pub runner: Runner,
    pub metrics: CheckMetrics,
    /// The agent's `ports`: the service of a checked port.
    pub ports: PortMap,
    /// The path table's naming: the prefix of a checked address.
    pub prefixes: Prefixes,
    pub results: watch::Sender<Arc<CheckResults>>,
}

/// A run that ended.
struct Finished {
    index: usize,
    ended: SystemTime,
    took: Duration,
    outcome: Result<Report, String>,
}

impl Scheduler {
    /// Runs every check on its schedule until `shutdown`; then stops the runs under way
    /// (their connections close) and returns.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let (finished_tx, mut finished) = mpsc::channel(self.checks.len().max(1));
        let mut loops = JoinSet::new();
        let start = Instant::now();
        for (index, check) in self.checks.iter().enumerate() {
            loops.spawn(check_loop(
                index,
                start + first_run_delay(index),
                check.every,
                Arc::new(check.args.clone()),
                self.runner.clone(),
                finished_tx.clone(),
            ));
        }
        drop(finished_tx);
        let mut last: Vec<Vec<PortResult>> = vec![Vec::new(); self.checks.len()];
        while !*shutdown.borrow_and_update() {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                run = finished.recv() => match run {
                    Some(run) => {
                        last[run.index] = self.record(&run);
                        self.results.send_replace(Arc::new(CheckResults {
                            ports: last.iter().flatten().cloned().collect(),
                        }));
                    }
                    None => break,
                },
            }
        }
        // Dropping a loop drops its run: the check's sockets close at once.
        loops.shutdown().await;
    }

    /// The path of a checked address with a label of its own, named as the path table names
    /// it (`Prefixes`); None for an unwatched port.
    fn path_of(&self, address: IpAddr, port: u16) -> Option<PathKey> {
        let service = self.ports.service(port)?;
        Some(PathKey {
            service: Arc::from(service),
            role: Role::Client,
            path: Arc::from(self.prefixes.label(address)),
        })
    }

    /// Logs a finished run, sets its metrics, and returns its findings per port.
    fn record(&self, run: &Finished) -> Vec<PortResult> {
        let check = &self.checks[run.index];
        let target: Arc<str> = Arc::from(check.label.as_str());
        let ended = run
            .ended
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let report = run.outcome.as_ref().ok();
        self.metrics.record(
            &target,
            &check.args.ports(),
            report,
            ended,
            run.took.as_secs_f64(),
        );
        let report = match &run.outcome {
            Ok(report) => report,
            Err(why) => {
                warn!(target = %target, error = %why, "a scheduled check could not run");
                return Vec::new();
            }
        };
        info!(
            target = %target,
            result = %report.result,
            took_s = run.took.as_secs(),
            "scheduled check finished"
        );
        report
            .ports
            .iter()
            .map(|port| PortResult {
                target: target.clone(),
                port: port.port,
                address: port.address.ip(),
                path: self.path_of(port.address.ip(), port.port),
                ended_unix_seconds: ended,
                max_idle_seconds: report.max_idle_seconds,
                idle_status: port
                    .rows
                    .iter()
                    .find(|row| row.check == CheckName::IdleCutoff)
                    .map(|row| row.status),
                idle: port.idle.clone(),
            })
            .collect()
    }
}

/// The delay before check `index` first runs.
fn first_run_delay(index: usize) -> Duration {
    FIRST_RUN_AFTER + FIRST_RUN_SPREAD * u32::try_from(index).unwrap_or(u32::MAX)
}

/// The next start on the grid `first + k * every` strictly after `now`: a run that took longer
/// than `every` skips the starts it missed instead of starting again at once.
fn next_start(first: Instant, every: Duration, now: Instant) -> Instant {
    if now < first || every.is_zero() {
        return first.max(now);
    }
    let elapsed = now.duration_since(first).as_nanos();
    let periods = elapsed / every.as_nanos() + 1;
    let offset = every.as_nanos().saturating_mul(periods);
    first + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// One check's runs, one after the other, forever (the scheduler aborts it on shutdown).
async fn check_loop(
    index: usize,
    first: Instant,
    every: Duration,
    args: Arc<CheckArgs>,
    runner: Runner,
    finished: mpsc::Sender<Finished>,
) {
    let mut next = first;
    loop {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        // A task of its own, so that a panic in a run is that run's failure only; aborted
        // with the loop (`AbortOnDrop`) when the scheduler stops.
        let mut run = AbortOnDrop(tokio::spawn(runner(args.clone())));
        let outcome = match run.await_result().await {
            Ok(outcome) => outcome,
            Err(panicked) => Err(format!("the check stopped: {panicked}")),
        };
        let took = started.elapsed();
        let ended = SystemTime::now();
        if finished
            .send(Finished {
                index,
                ended,
                took,
                outcome,
            })
            .await
            .is_err()
        {
            return;
        }
        next = next_start(first, every, Instant::now());
    }
}

/// A spawned task aborted when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn await_result(&mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;
