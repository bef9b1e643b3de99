//! The ring buffer the programs report into, read as typed events: the pipeline waits on it
//! and drains it without knowing that it is an aya map or what its records look like.

use std::io;

use aya::maps::{MapData, RingBuf};
use idlecut_core::events::Event;
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};

use super::decode::{DecodeError, decode};

/// The kernel-to-agent ring buffer, registered with the async runtime.
pub struct EventRing(AsyncFd<RingBuf<MapData>>);

/// The ring buffer once it has records to read.
pub struct ReadyRing<'a>(AsyncFdReadyMutGuard<'a, RingBuf<MapData>>);

impl EventRing {
    /// Registers the ring buffer with the runtime (call from within it).
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its file descriptor, which stays open (and the same) for
        // as long as the `AsyncFd` holds it.
        unsafe { AsyncFd::register(ring) }
            .map(Self)
            .map_err(io::Error::from)
    }

    /// Waits until the programs have woken the reader (they do when the buffer fills up).
    pub async fn ready(&mut self) -> io::Result<ReadyRing<'_>> {
        self.0.readable_mut().await.map(ReadyRing)
    }

    /// Takes up to `max` records now, whether or not the reader was woken; returns how many.
    pub fn drain(&mut self, max: usize, each: impl FnMut(Result<Event, DecodeError>)) -> usize {
        drain(self.0.get_mut(), max, each)
    }
}

impl ReadyRing<'_> {
    /// Takes up to `max` records; when fewer were waiting, the next `ready` waits for a wake-up.
    pub fn drain(&mut self, max: usize, each: impl FnMut(Result<Event, DecodeError>)) -> usize {
        let handled = drain(self.0.get_inner_mut(), max, each);
        if handled < max {
            self.0.clear_ready();
        }
        handled
    }
}

/// Decodes up to `max` records, handing each (or why it could not be decoded) to `each`.
fn drain(
    ring: &mut RingBuf<MapData>,
    max: usize,
    mut each: impl FnMut(Result<Event, DecodeError>),
) -> usize {
    let mut handled = 0;
    while handled < max {
        let Some(record) = ring.next() else { break };
        handled += 1;
        each(decode(&record));
    }
    handled
}
