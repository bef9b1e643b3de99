//! Drives the data flow: ring buffer -> decode -> connection model -> paths -> inference and
//! metrics. One task owns the model, the path table and the inference, so none needs a lock;
//! readers get snapshots of them that this task takes between two batches (see `snapshot`).

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use idlecut_check::registrar::Registrations;
use idlecut_core::{
    cuts::RecentCuts,
    events::{Event, Nanos},
    inference::Inference,
    metrics::{KernelCounterSync, Metrics},
    model::{ConnectionModel, Update},
    node::NodeTimeouts,
    paths::PathTable,
    scan::Scan,
    view,
};
use idlecut_kernel::{
    clock::monotonic_now,
    discovery::{self, Discovery},
    probes::{self, DecodeError, EventRing, KernelCounters, KernelState},
};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::snapshot::{Publisher, Snapshot};

/// A finished scan and when it started and ended (kernel time).
type ScanResult = (Scan, Nanos, Nanos);

/// How often the ring buffer is drained (programs wake the reader only when it fills up) and
/// closed connections past their grace period are classified.
const TICK: Duration = Duration::from_millis(50);
/// How often the kernel's counters are read (every this many ticks).
const COUNTER_SYNC_TICKS: u32 = 20;
/// Events handled per wake-up before giving the timer a turn.
const MAX_BATCH: usize = 8192;
/// Room for updates kept between batches. A scan that finds 100,000 connections makes twice as
/// many updates at once (13 MB); the room they took is given back once they are recorded.
const UPDATES_KEPT: usize = 4 * MAX_BATCH;

pub struct Pipeline {
    pub model: ConnectionModel,
    pub paths: PathTable,
    pub inference: Inference,
    pub metrics: Arc<Metrics>,
    pub counters: KernelCounters,
    pub kernel: KernelState,
    /// What a scan reads; locked by the scan's own thread while it runs.
    pub discovery: Arc<Mutex<Discovery>>,
    pub scan_interval: Duration,
    pub snapshots: Publisher,
    pub recent_cuts: RecentCuts,
    /// Connections the agent's scheduled checks open, to leave out.
    pub own_connections: Registrations,
}

impl Pipeline {
    pub async fn run(
        mut self,
        mut events: EventRing,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut updates = Vec::new();
        let lost = KernelCounterSync::default();
        let skipped = KernelCounterSync::default();
        let insert_failures = KernelCounterSync::default();
        let mut ticks = 0u32;
        let mut scan_timer = tokio::time::interval(self.scan_interval);
        scan_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut scan_in_flight: Option<oneshot::Receiver<ScanResult>> = None;
        let mut first_scan = true;
        let mut seeding = false;
        loop {
            tokio::select! {
                ready = events.ready() => {
                    ready?.drain(MAX_BATCH, |event| self.take(event, &mut updates));
                    self.record(&mut updates);
                }
                _ = scan_timer.tick(), if scan_in_flight.is_none() => {
                    self.model.scan_started();
                    scan_in_flight = Some(start_scan(Arc::clone(&self.discovery)));
                }
                result = async { scan_in_flight.as_mut().expect("guarded").await }, if scan_in_flight.is_some() => {
                    scan_in_flight = None;
                    let Ok((scan, started, finished)) = result else {
                        warn!("the socket table scan thread died");
                        continue;
                    };
                    // Every OPEN of a connection the scan saw was emitted before the scan could
                    // see it, and every end of one it did not see before it looked: take them
                    // all in first (the ends the ring buffer had no room for too), so that
                    // nothing is counted twice.
                    events.drain(usize::MAX, |event| self.take(event, &mut updates));
                    self.take_unreported_ends(usize::MAX, &mut updates);
                    self.record(&mut updates);
                    self.take_scan(&scan, started, finished, first_scan, &mut updates);
                    self.record(&mut updates);
                    first_scan = false;
                    seeding = self.update_seeding(seeding);
                }
                () = self.snapshots.wanted() => self.publish(),
                _ = tick.tick() => {
                    // Programs wake the reader only when the buffer fills up: small volumes
                    // are drained here.
                    events.drain(MAX_BATCH, |event| self.take(event, &mut updates));
                    self.take_unreported_ends(MAX_BATCH, &mut updates);
                    self.model.expire(monotonic_now(), &mut updates);
                    self.record(&mut updates);
                    seeding = self.update_seeding(seeding);
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(COUNTER_SYNC_TICKS) {
                        match (self.counters.ringbuf_full(), self.counters.state_insert_failed()) {
                            (Ok(full), Ok(failed)) => {
                                lost.sync(&self.metrics.events_lost, full);
                                skipped.sync(&self.metrics.events_lost, probes::skipped_program_runs());
                                insert_failures.sync(&self.metrics.kernel_state_insert_failures, failed);
                            }
                            (Err(err), _) | (_, Err(err)) => {
                                warn!(error = format!("{err:#}"), "cannot read kernel counters");
                            }
                        }
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        self.model.flush(&mut updates);
        self.record(&mut updates);
        Ok(())
    }

    /// Applies one event from the ring buffer (or counts it malformed).
    fn take(&mut self, event: Result<Event, DecodeError>, updates: &mut Vec<Update>) {
        // A check registers its connection before connecting: whatever registered before
        // this event was emitted is in the channel now.
        while let Ok((notice, given)) = self.own_connections.try_recv() {
            let given_at = monotonic_now()
                .saturating_sub(u64::try_from(given.elapsed().as_nanos()).unwrap_or(u64::MAX));
            self.model.leave_out(notice, given_at);
        }
        match event {
            Ok(event) => {
                // Off unless asked for (IDLECUT_LOG=idlecut::pipeline=trace): for debugging.
                tracing::trace!(?event, "event");
                self.model.apply(event, updates);
            }
            Err(_) => {
                self.metrics.events_malformed.inc();
            }
        }
    }

    /// Applies up to `max` of the ends the ring buffer had no room for, which waited in the
    /// kernel: after everything the ring buffer did carry, which happened before them.
    fn take_unreported_ends(&mut self, max: usize, updates: &mut Vec<Update>) {
        let ends = self.kernel.take_unreported_ends(max);
        self.metrics.ends_delayed.inc_by(ends.len() as u64);
        for end in ends {
            self.model.apply(end, updates);
        }
    }

    /// Takes in a finished scan: new connections are tracked and seeded for the kernel
    /// programs to adopt.
    fn take_scan(
        &mut self,
        scan: &Scan,
        started: Nanos,
        finished: Nanos,
        first: bool,
        updates: &mut Vec<Update>,
    ) {
        let before = updates.len();
        // A connection the scan no longer finds, although the model has it open, ended while
        // the kernel skipped its close: its leftover state says whether it died in a stall.
        let kernel = &self.kernel;
        let kernel_socket = |socket: u64| kernel.socket(socket);
        let (seeds, vanished) =
            self.model
                .apply_scan(scan, started, finished, &kernel_socket, updates);
        if !vanished.is_empty() {
            debug!(
                connections = vanished.len(),
                complete = scan.complete.len(),
                "settled connections the scan no longer found"
            );
        }
        for socket in vanished {
            self.kernel.forget(socket);
        }
        // What on this host forgets idle flows, for the metrics and the paths' explanations.
        let node = NodeTimeouts::from_scan(scan);
        self.metrics
            .node
            .set(&node, self.inference.settings().req5_threshold_seconds);
        self.inference.set_node_timeouts(node);
        let found = updates[before..]
            .iter()
            .filter(|u| matches!(u, Update::Discovered(_)))
            .count();
        if self.kernel.can_adopt {
            for seed in &seeds {
                if let Err(err) = self.kernel.plant(seed) {
                    warn!(
                        error = format!("{err:#}"),
                        "cannot seed a scanned connection"
                    );
                }
            }
        }
        if first {
            info!(
                connections = found,
                namespaces = scan.namespaces,
                "found connections that were already open"
            );
            if scan.unreadable > 0 {
                if discovery::has_sys_ptrace() {
                    debug!(
                        unreadable = scan.unreadable,
                        "some processes' network namespaces are not readable even with CAP_SYS_PTRACE"
                    );
                } else {
                    warn!(
                        unreadable = scan.unreadable,
                        "some processes' network namespaces cannot be looked at: their connections \
                         are seen by the probes but not by the scan (the agent needs CAP_SYS_PTRACE)"
                    );
                }
            }
        } else if found > 0 {
            debug!(
                connections = found,
                "scan found connections the probes had not reported"
            );
        }
        // Said once, at the first scan; later ones (namespaces come and go) only in debug logs.
        if let Some((ns, error)) = scan.failures.first() {
            let failed = scan.failures.len();
            let namespace = ns.path.display();
            if first {
                warn!(failed, %namespace, error, "cannot read some network namespaces' sockets");
            } else {
                debug!(failed, %namespace, error, "cannot read some network namespaces' sockets");
            }
        }
    }

    /// Keeps the kernel's SEEDING flag on exactly while seeds may be waiting.
    fn update_seeding(&mut self, was: bool) -> bool {
        let now = self.kernel.can_adopt && self.model.pending_adoptions() > 0;
        if now != was
            && let Err(err) = self.kernel.set_seeding(now)
        {
            warn!(error = format!("{err:#}"), "cannot update the SEEDING flag");
            return was;
        }
        now
    }

    fn record(&mut self, updates: &mut Vec<Update>) {
        if updates.is_empty() {
            return;
        }
        for update in updates.drain(..) {
            let key = update.identity().map(|identity| {
                let (key, new) = self.paths.key(identity);
                if new {
                    self.metrics.init_path(&key);
                }
                key
            });
            if let Some(key) = &key {
                self.recent_cuts.record(key, &update);
            }
            self.metrics.record(key.as_ref(), &update);
            if let Some(key) = &key
                && self.inference.record(key, &update)
                && let Some(report) = self.inference.report(key)
            {
                self.metrics.set_path_estimates(&report);
            }
        }
        updates.shrink_to(UPDATES_KEPT);
        self.metrics
            .paths
            .set(i64::try_from(self.paths.len()).unwrap_or(i64::MAX));
        self.metrics
            .tracked_connections
            .set(i64::try_from(self.model.open_count()).unwrap_or(i64::MAX));
    }
}

impl Pipeline {
    /// Publishes the state as it stands, between two batches, for the readers waiting.
    fn publish(&self) {
        let taken_at = monotonic_now();
        self.snapshots.publish(Snapshot {
            taken_at,
            paths: self.inference.reports(),
            connections: view::rows(
                &self.model,
                &self.paths,
                |socket, cookie| self.kernel.idle_clocks(socket, cookie),
                |path| self.inference.cutoff_of(path),
                taken_at,
            ),
            cuts: self
                .recent_cuts
                .rows(taken_at, std::time::SystemTime::now()),
            cuts_capacity: self.recent_cuts.capacity(),
        });
    }
}

/// Scans the socket tables on a thread of its own (it enters namespaces).
fn start_scan(discovery: Arc<Mutex<Discovery>>) -> oneshot::Receiver<ScanResult> {
    let (sender, receiver) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("idlecut-scan".into())
        .spawn(move || {
            let started = monotonic_now();
            // A scan that panicked left nothing half-done that the next one relies on.
            let scan = discovery
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .scan();
            let _ = sender.send((scan, started, monotonic_now()));
        });
    if let Err(err) = spawned {
        warn!(error = %err, "cannot start the socket table scan");
    }
    receiver
}
