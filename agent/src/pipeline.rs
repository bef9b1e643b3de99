//! Drives the data flow: ring buffer -> decode -> connection model -> paths -> inference and
//! metrics. One task owns the model and the path table, so neither needs a lock; the inference
//! is shared with the HTTP API behind a mutex held for one batch at a time.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::watch};
use tracing::warn;

use crate::{
    events::{self, Nanos},
    inference::Inference,
    metrics::{KernelCounterSync, Metrics},
    model::{ConnectionModel, Update},
    paths::PathTable,
    probes::KernelCounters,
};

/// How often closed connections past their grace period are classified.
const TICK: Duration = Duration::from_millis(50);
/// How often the kernel's counters are read (every this many ticks).
const COUNTER_SYNC_TICKS: u32 = 20;
/// Events handled per wake-up before giving the timer a turn.
const MAX_BATCH: usize = 8192;

pub struct Pipeline {
    pub model: ConnectionModel,
    pub paths: PathTable,
    pub inference: Arc<Mutex<Inference>>,
    pub metrics: Arc<Metrics>,
    pub counters: KernelCounters,
}

impl Pipeline {
    pub async fn run(
        mut self,
        events: RingBuf<MapData>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        // SAFETY: the ring buffer owns its file descriptor, which stays open for as long as the
        // `AsyncFd` holds it.
        let mut events = unsafe { AsyncFd::register(events) }
            .map_err(|err| anyhow::anyhow!("watching the ring buffer: {err}"))?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut updates = Vec::new();
        let lost = KernelCounterSync::default();
        let insert_failures = KernelCounterSync::default();
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                guard = events.readable_mut() => {
                    let mut guard = guard?;
                    let ring = guard.get_inner_mut();
                    let mut handled = 0;
                    while handled < MAX_BATCH {
                        let Some(record) = ring.next() else { break };
                        handled += 1;
                        match events::decode(&record) {
                            Ok(event) => self.model.apply(event, &mut updates),
                            Err(_) => {
                                self.metrics.events_malformed.inc();
                            }
                        }
                    }
                    if handled < MAX_BATCH {
                        guard.clear_ready();
                    }
                    self.record(&mut updates);
                }
                _ = tick.tick() => {
                    self.model.expire(monotonic_now(), &mut updates);
                    self.record(&mut updates);
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(COUNTER_SYNC_TICKS) {
                        match (self.counters.ringbuf_full(), self.counters.state_insert_failed()) {
                            (Ok(full), Ok(failed)) => {
                                lost.sync(&self.metrics.events_lost, full);
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

    fn record(&mut self, updates: &mut Vec<Update>) {
        if updates.is_empty() {
            return;
        }
        // A panic elsewhere while holding the lock leaves consistent data here: keep going.
        let mut inference = self
            .inference
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for update in updates.drain(..) {
            let key = update.identity().map(|identity| self.paths.key(identity));
            self.metrics.record(key.as_ref(), &update);
            if let Some(key) = &key
                && inference.record(key, &update)
                && let Some(report) = inference.report(key)
            {
                self.metrics.set_path_estimates(&report);
            }
        }
        drop(inference);
        self.metrics
            .paths
            .set(i64::try_from(self.paths.len()).unwrap_or(i64::MAX));
        self.metrics
            .tracked_connections
            .set(i64::try_from(self.model.open_count()).unwrap_or(i64::MAX));
    }
}

/// Kernel time as the eBPF programs see it (`bpf_ktime_get_ns` is CLOCK_MONOTONIC).
pub fn monotonic_now() -> Nanos {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and output pointer; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}
