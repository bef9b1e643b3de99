//! What the HTTP side reads of the pipeline's state: snapshots the pipeline publishes, never
//! its live data.
//!
//! The pipeline task owns the model, the path table and the inference; nothing else touches
//! them. A reader asks for a snapshot taken after it asked ([`Snapshots::fresh`]): the pipeline
//! takes one between two batches of events, so it is consistent, and publishes it on a `watch`
//! channel as an `Arc<Snapshot>` that any number of readers share without a lock. Snapshots are
//! taken only when asked for, and one serves every reader waiting at the time. (The Prometheus
//! registry is read directly: its metrics are atomics, made to be read while they are written.)

use std::{sync::Arc, time::Duration};

use tokio::sync::{Notify, watch};

use idlecut_core::{cuts::CutRow, events::Nanos, inference::PathReport, view::ConnectionRow};

/// The state readers see, as of `taken_at`.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Kernel time at which it was taken.
    pub taken_at: Nanos,
    /// Every path, ordered by service, role and path.
    pub paths: Vec<PathReport>,
    /// Every row of the per-connection view, in display order, unfiltered.
    pub connections: Vec<ConnectionRow>,
    /// The log of recent cuts, newest first, and how many it keeps.
    pub cuts: Vec<CutRow>,
    pub cuts_capacity: usize,
}

/// The readers' side: cheap to clone, one per HTTP handler.
#[derive(Clone)]
pub struct Snapshots {
    published: watch::Receiver<Arc<Snapshot>>,
    wanted: Arc<Notify>,
    clock: fn() -> Nanos,
}

/// The pipeline's side.
pub struct Publisher {
    published: watch::Sender<Arc<Snapshot>>,
    wanted: Arc<Notify>,
}

/// A publisher and its readers; `clock` is the kernel clock snapshots are stamped with.
pub fn channel(clock: fn() -> Nanos) -> (Publisher, Snapshots) {
    let (published, receiver) = watch::channel(Arc::new(Snapshot::default()));
    let wanted = Arc::new(Notify::new());
    (
        Publisher {
            published,
            wanted: wanted.clone(),
        },
        Snapshots {
            published: receiver,
            wanted,
            clock,
        },
    )
}

/// Why no snapshot came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// The pipeline has stopped: the agent is shutting down.
    Stopped,
    /// The pipeline did not publish one in time.
    TooSlow,
}

impl Snapshots {
    /// A snapshot taken after this call, waiting at most `patience` for it.
    pub async fn fresh(&self, patience: Duration) -> Result<Arc<Snapshot>, Unavailable> {
        let asked_at = (self.clock)();
        let mut published = self.published.clone();
        self.wanted.notify_one();
        let fresh = published.wait_for(|snapshot| snapshot.taken_at > asked_at);
        match tokio::time::timeout(patience, fresh).await {
            Ok(Ok(snapshot)) => Ok(Arc::clone(&snapshot)),
            Ok(Err(_)) => Err(Unavailable::Stopped),
            Err(_) => Err(Unavailable::TooSlow),
        }
    }
}

impl Publisher {
    /// Resolves when a reader wants a snapshot.
    pub async fn wanted(&self) {
        self.wanted.notified().await;
    }

    pub fn publish(&self, snapshot: Snapshot) {
        // No reader left only means nobody will look.
        let _ = self.published.send(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    static NOW: AtomicU64 = AtomicU64::new(10);

    fn now() -> Nanos {
        NOW.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_reader_gets_a_snapshot_taken_after_it_asked_and_waits_no_longer_than_told() {
        let (publisher, snapshots) = channel(now);
        let owner = tokio::spawn(async move {
            for taken_at in [20, 30] {
                publisher.wanted().await;
                NOW.store(taken_at, Ordering::SeqCst);
                publisher.publish(Snapshot {
                    taken_at,
                    ..Snapshot::default()
                });
            }
            publisher
        });
        let first = snapshots.fresh(Duration::from_secs(5)).await.unwrap();
        assert_eq!(first.taken_at, 20);
        let second = snapshots.fresh(Duration::from_secs(5)).await.unwrap();
        assert_eq!(second.taken_at, 30);
        let publisher = owner.await.unwrap();
        // Nobody publishes any more: the reader gives up in time.
        assert_eq!(
            snapshots.fresh(Duration::from_millis(50)).await.err(),
            Some(Unavailable::TooSlow)
        );
        drop(publisher);
        assert_eq!(
            snapshots.fresh(Duration::from_secs(5)).await.err(),
            Some(Unavailable::Stopped)
        );
    }
}
