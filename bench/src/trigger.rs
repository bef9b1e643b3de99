//! The latency a program on a tracepoint adds to the syscall that fires it, measured the way
//! Cloudflare ebpf_exporter's benchmark does (a cheap syscall in a loop, with and without the
//! program). Two loops fire sock:sock_send_length once per iteration, on sockets idlecut does
//! not watch (non-mail events):
//! - `refused_send`: send() on an unconnected UDP socket, which the kernel refuses inside the
//!   protocol's sendmsg (nothing is sent): the event carries an error, the cheapest path of
//!   idlecut's program (the measure of the runs before BTF tracepoints);
//! - `unix_send`: a 1-byte datagram sent on a Unix socket pair and read back: a send that
//!   succeeds, on a socket with no watched port, so idlecut's program takes the path of any
//!   non-mail send (for a BTF tracepoint: the port test).
//!
//! Besides idlecut's programs (the agent with `--hooks auto` and with `--hooks classic`):
//! do-nothing programs of both hook kinds and ebpf_exporter's one-map-update program on both
//! (the anchors), and experiments that price the steps idlecut's programs are made of: one
//! field read through bpf_probe_read_kernel, the same as a direct load, a state inserted and
//! deleted in an LRU or a plain hash map, an 88-byte event through a ring buffer with and
//! without waking its reader.

use std::{
    collections::BTreeMap,
    net::UdpSocket,
    os::{fd::AsRawFd as _, unix::net::UnixDatagram},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Instant,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};

use crate::{
    kernel::{
        BTF_MAP_UPDATE, BTF_NOPS, Baselines, CONST_READ, DIRECT_READ, HASH_INSERT_DELETE,
        HELPER_READ, HookKind, LRU_INSERT_DELETE, MAP_UPDATE, NOPS, Program, RINGBUF_NO_WAKEUP,
        RINGBUF_WAKEUP,
    },
    net,
};

/// Each measurement is the fastest of this many blocks (interleaved with the other
/// conditions'): the rest of the machine only ever slows a block down.
const BLOCKS: u32 = 5;

/// A syscall loop that fires sock:sock_send_length once per iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    RefusedSend,
    UnixSend,
}

impl Trigger {
    pub const ALL: [Self; 2] = [Self::RefusedSend, Self::UnixSend];

    pub fn label(self) -> &'static str {
        match self {
            Self::RefusedSend => "refused_send",
            Self::UnixSend => "unix_send",
        }
    }
}

/// The experiments, by the name their results carry.
const EXPERIMENTS: [(&str, Program); 11] = [
    ("nop", NOPS[2]),
    ("btf_nop", BTF_NOPS[2]),
    ("map_update", MAP_UPDATE),
    ("btf_map_update", BTF_MAP_UPDATE),
    ("helper_read", HELPER_READ),
    ("direct_read", DIRECT_READ),
    ("const_read", CONST_READ),
    ("lru_insert_delete", LRU_INSERT_DELETE),
    ("hash_insert_delete", HASH_INSERT_DELETE),
    ("ringbuf_wakeup", RINGBUF_WAKEUP),
    ("ringbuf_no_wakeup", RINGBUF_NO_WAKEUP),
];

/// The condition name of idlecut's programs of a hook kind.
pub fn idlecut_condition(hooks: HookKind) -> &'static str {
    match hooks {
        HookKind::TpBtf => "idlecut_tp_btf",
        HookKind::Classic => "idlecut_classic",
    }
}

/// Every condition whose added latency is reported: idlecut's, then the experiments.
pub const CONDITIONS: [&str; 13] = [
    "idlecut_tp_btf",
    "idlecut_classic",
    "nop",
    "btf_nop",
    "map_update",
    "btf_map_update",
    "helper_read",
    "direct_read",
    "const_read",
    "lru_insert_delete",
    "hash_insert_delete",
    "ringbuf_wakeup",
    "ringbuf_no_wakeup",
];

/// ns per event, by trigger, then by condition.
pub type Timings = BTreeMap<&'static str, BTreeMap<&'static str, f64>>;

/// With the agent running (with `hooks`): ns per event of each trigger, into `timings`.
pub fn with_agent(hooks: HookKind, iterations: u32, timings: &mut Timings) -> anyhow::Result<()> {
    let per_block = (iterations / BLOCKS).max(1);
    for trigger in Trigger::ALL {
        let mut best = f64::INFINITY;
        for _ in 0..BLOCKS {
            best = best.min(ns_per_event(trigger, per_block)?);
        }
        timings
            .entry(trigger.label())
            .or_default()
            .insert(idlecut_condition(hooks), best);
    }
    Ok(())
}

/// Without the agent: ns per event with nothing attached (`none`) and with each experiment
/// this kernel runs, interleaved block by block, into `timings`.
pub fn without_agent(
    baselines: &mut Baselines,
    iterations: u32,
    timings: &mut Timings,
) -> anyhow::Result<()> {
    let per_block = (iterations / BLOCKS).max(1);
    let reader = Reader::start(baselines.take_records()?)?;
    let mut conditions: Vec<(&'static str, Option<Program>)> = vec![("none", None)];
    conditions.extend(
        EXPERIMENTS
            .iter()
            .filter(|(_, program)| baselines.is_available(program.name))
            .map(|&(name, program)| (name, Some(program))),
    );
    let mut best = vec![[f64::INFINITY; Trigger::ALL.len()]; conditions.len()];
    let result = (|| -> anyhow::Result<()> {
        for block in 0..BLOCKS as usize {
            for i in 0..conditions.len() {
                let slot = (i + block) % conditions.len();
                if let Some(program) = conditions[slot].1 {
                    baselines.attach(program)?;
                }
                let measured: anyhow::Result<()> =
                    Trigger::ALL
                        .iter()
                        .enumerate()
                        .try_for_each(|(t, &trigger)| {
                            let ns = ns_per_event(trigger, per_block)?;
                            best[slot][t] = best[slot][t].min(ns);
                            Ok(())
                        });
                if let Some(program) = conditions[slot].1 {
                    baselines.detach(program)?;
                }
                measured?;
            }
        }
        Ok(())
    })();
    baselines.put_records(reader.stop()?);
    result?;
    for (t, trigger) in Trigger::ALL.iter().enumerate() {
        let of_trigger = timings.entry(trigger.label()).or_default();
        for ((name, _), ns) in conditions.iter().zip(&best) {
            of_trigger.insert(name, ns[t]);
        }
    }
    Ok(())
}

/// Mean ns of one iteration of a trigger's loop, on CPU 0.
fn ns_per_event(trigger: Trigger, iterations: u32) -> anyhow::Result<f64> {
    match trigger {
        Trigger::RefusedSend => {
            let socket = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket")?;
            let buf = [0u8; 1];
            time_on_cpu0(iterations, || {
                let _ = socket.send(&buf);
            })
        }
        Trigger::UnixSend => {
            let (sender, receiver) = UnixDatagram::pair().context("a Unix datagram socket pair")?;
            time_on_cpu0(iterations, || {
                let mut buf = [0u8; 1];
                let _ = sender.send(&[1]);
                let _ = receiver.recv(&mut buf);
            })
        }
    }
}

/// Mean ns of `iteration`, run `iterations` times on CPU 0 after a warm-up.
fn time_on_cpu0(iterations: u32, iteration: impl Fn() + Sync) -> anyhow::Result<f64> {
    thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<f64> {
                net::pin_to_cpu(0)?;
                // Warm up caches and the branch predictor.
                for _ in 0..iterations / 10 {
                    iteration();
                }
                let started = Instant::now();
                for _ in 0..iterations {
                    iteration();
                }
                Ok(started.elapsed().as_nanos() as f64 / f64::from(iterations))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the send loop panicked"))?
    })
}

/// Drains the experiments' ring buffer on CPU 1, the way idlecut's agent drains its own: it
/// sleeps in poll() until woken, or until 1 ms has passed (for the events that do not wake it).
struct Reader {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<anyhow::Result<RingBuf<MapData>>>,
}

impl Reader {
    fn start(mut ring: RingBuf<MapData>) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            net::pin_to_cpu(1)?;
            let mut poll = libc::pollfd {
                fd: ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut poll, 1, 1) };
                while ring.next().is_some() {}
            }
            Ok(ring)
        });
        Ok(Self { stop, thread })
    }

    fn stop(self) -> anyhow::Result<RingBuf<MapData>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the ring buffer reader panicked"))?
    }
}
