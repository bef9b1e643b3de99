//! The kernel's maps behind typed requests: its counters, the per-connection state the
//! programs keep (read for idle clocks and stalls), and the seeds of scanned connections for
//! the programs to adopt. Callers never see `ConnectionState` or a flag bit.

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use idlecut_ebpf::{ConnectionState, RawEvent, counter, event_flags};

use super::decode;
use idlecut_core::events::{Event, KernelSocket, Seed, Side};

/// The kernel's own counters (per CPU, summed on read).
pub struct KernelCounters(pub(super) PerCpuArray<MapData, u64>);

impl KernelCounters {
    /// The running total of one of the kernel's counters, summed over CPUs.
    fn total(&self, index: u32) -> anyhow::Result<u64> {
        let values = self
            .0
            .get(&index, 0)
            .with_context(|| format!("reading kernel counter {index}"))?;
        Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
    }

    /// Events a program could not reserve in the ring buffer: lost.
    pub fn ringbuf_full(&self) -> anyhow::Result<u64> {
        self.total(counter::RINGBUF_FULL)
    }

    /// Connections the kernel could not start tracking.
    pub fn state_insert_failed(&self) -> anyhow::Result<u64> {
        self.total(counter::STATE_INSERT_FAILED)
    }
}

/// When a connection last received a segment and last sent data (kernel time).
pub use idlecut_core::events::IdleClocks;

/// The kernel's per-connection state and the seeds of scanned connections.
pub struct KernelState {
    pub(super) connections: HashMap<MapData, u64, ConnectionState>,
    pub(super) seeds: HashMap<MapData, u64, ConnectionState>,
    pub(super) seeding: Array<MapData, u32>,
    pub(super) unreported: HashMap<MapData, u64, RawEvent>,
    /// Whether the programs can adopt seeds (they need the cookie's offset from BTF).
    pub can_adopt: bool,
}

impl KernelState {
    /// The idle clocks of a followed connection (by socket), or of a seed not adopted yet (by
    /// cookie).
    pub fn idle_clocks(&self, socket: Option<u64>, cookie: Option<u64>) -> Option<IdleClocks> {
        socket
            .and_then(|socket| self.connections.get(&socket, 0).ok())
            .or_else(|| cookie.and_then(|cookie| self.seeds.get(&cookie, 0).ok()))
            .map(|state| (state.last_received_ns, state.last_sent_ns))
    }

    /// Whether the programs still follow a socket, and since when it has been retransmitting
    /// without hearing from the peer, if it is stalled.
    pub fn socket(&self, socket: u64) -> KernelSocket {
        match self.connections.get(&socket, 0) {
            Ok(state) => KernelSocket::Followed {
                stalled_since: Some(state.stall_started_ns).filter(|&started| started != 0),
            },
            Err(_) => KernelSocket::Gone,
        }
    }

    /// Plants a scanned connection's state for the programs to adopt when they meet it.
    pub fn plant(&mut self, seed: &Seed) -> anyhow::Result<()> {
        let state = ConnectionState {
            opened_ns: 0,
            last_received_ns: seed.last_received,
            last_sent_ns: seed.last_sent,
            stall_started_ns: 0,
            retransmits: 0,
            flags: match seed.first_fin {
                Some(Side::Local) => event_flags::LOCAL_CLOSED_FIRST,
                Some(Side::Remote) => event_flags::REMOTE_CLOSED_FIRST,
                None => 0,
            },
            peer_ttl: 0,
            reset_ttl: 0,
            _pad: [0; 1],
        };
        self.seeds
            .insert(&seed.cookie, &state, 0)
            .context("seeding a scanned connection")
    }

    /// Drops the state of a socket whose close the programs never saw.
    pub fn forget(&mut self, socket: u64) {
        let _ = self.connections.remove(&socket);
    }

    /// Takes the connection ends the ring buffer had no room for (at most `max`), as events to
    /// apply after those of the ring buffer. Empty but after an overflow: one syscall then.
    pub fn take_unreported_ends(&mut self, max: usize) -> Vec<Event> {
        let sockets: Vec<u64> = self
            .unreported
            .keys()
            .filter_map(Result::ok)
            .take(max)
            .collect();
        let mut ends = Vec::with_capacity(sockets.len());
        for socket in sockets {
            if let Ok(raw) = self.unreported.get(&socket, 0)
                && let Ok(event) = decode::from_raw(&raw)
            {
                ends.push(event);
            }
            let _ = self.unreported.remove(&socket);
        }
        ends
    }

    /// Tells the programs whether seeds may be waiting (they skip the lookup otherwise).
    pub fn set_seeding(&mut self, seeding: bool) -> anyhow::Result<()> {
        self.seeding
            .set(0, &u32::from(seeding), 0)
            .context("setting the SEEDING flag")
    }
}
