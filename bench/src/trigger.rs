//! The latency a program on a tracepoint adds to the syscall that fires it, measured the way
//! Cloudflare ebpf_exporter's benchmark does (a cheap syscall in a loop, with and without the
//! program): a loop of send() calls on an unconnected UDP socket, which the kernel refuses
//! inside the protocol's sendmsg (nothing is sent) and which fires sock:sock_send_length once
//! each, for a non-TCP socket (so idlecut's program stops after its protocol check).
//!
//! Besides idlecut's program: a do-nothing program and ebpf_exporter's one-map-update program
//! (the anchors), and experiments that price the steps idlecut's programs are made of: one
//! field read through bpf_probe_read_kernel, the same as a direct load, a state inserted and
//! deleted in an LRU or a plain hash map, an 88-byte event through a ring buffer with and
//! without waking its reader.

use std::{
    collections::BTreeMap,
    net::UdpSocket,
    os::fd::AsRawFd as _,
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
        Baselines, CONST_READ, DIRECT_READ, HASH_INSERT_DELETE, HELPER_READ, LRU_INSERT_DELETE,
        MAP_UPDATE, NOPS, RINGBUF_NO_WAKEUP, RINGBUF_WAKEUP, Tracepoint,
    },
    net,
};

/// Each measurement is the fastest of this many blocks (interleaved with the other
/// conditions'): the rest of the machine only ever slows a block down.
const BLOCKS: u32 = 5;

/// The experiments, by the name their results carry.
const EXPERIMENTS: [(&str, (&str, Tracepoint)); 9] = [
    ("nop", NOPS[2]),
    ("map_update", MAP_UPDATE),
    ("helper_read", HELPER_READ),
    ("direct_read", DIRECT_READ),
    ("const_read", CONST_READ),
    ("lru_insert_delete", LRU_INSERT_DELETE),
    ("hash_insert_delete", HASH_INSERT_DELETE),
    ("ringbuf_wakeup", RINGBUF_WAKEUP),
    ("ringbuf_no_wakeup", RINGBUF_NO_WAKEUP),
];

/// Every condition whose added latency is reported: idlecut's, then the experiments.
pub const CONDITIONS: [&str; 10] = [
    "idlecut",
    "nop",
    "map_update",
    "helper_read",
    "direct_read",
    "const_read",
    "lru_insert_delete",
    "hash_insert_delete",
    "ringbuf_wakeup",
    "ringbuf_no_wakeup",
];

/// With the agent running: ns per send().
pub fn with_agent(iterations: u32) -> anyhow::Result<f64> {
    let per_block = (iterations / BLOCKS).max(1);
    let mut best = f64::INFINITY;
    for _ in 0..BLOCKS {
        best = best.min(ns_per_send(per_block)?);
    }
    Ok(best)
}

/// Without the agent: ns per send() with nothing attached (`none`) and with each experiment
/// this kernel runs, interleaved block by block.
pub fn without_agent(
    baselines: &mut Baselines,
    iterations: u32,
) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    let per_block = (iterations / BLOCKS).max(1);
    let reader = Reader::start(baselines.take_records()?)?;
    let mut conditions: Vec<(&'static str, Option<(&'static str, Tracepoint)>)> =
        vec![("none", None)];
    conditions.extend(
        EXPERIMENTS
            .iter()
            .filter(|(_, program)| baselines.is_available(program.0))
            .map(|&(name, program)| (name, Some(program))),
    );
    let mut best = vec![f64::INFINITY; conditions.len()];
    let result = (|| -> anyhow::Result<()> {
        for block in 0..BLOCKS as usize {
            for i in 0..conditions.len() {
                let slot = (i + block) % conditions.len();
                let ns = match conditions[slot].1 {
                    None => ns_per_send(per_block)?,
                    Some(program) => {
                        baselines.attach(program)?;
                        let ns = ns_per_send(per_block);
                        baselines.detach(program.0)?;
                        ns?
                    }
                };
                best[slot] = best[slot].min(ns);
            }
        }
        Ok(())
    })();
    baselines.put_records(reader.stop()?);
    result?;
    Ok(conditions.iter().map(|(name, _)| *name).zip(best).collect())
}

/// Mean ns of one refused send(), on CPU 0.
fn ns_per_send(iterations: u32) -> anyhow::Result<f64> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket")?;
    let buf = [0u8; 1];
    thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<f64> {
                net::pin_to_cpu(0)?;
                // Warm up caches and the branch predictor.
                for _ in 0..iterations / 10 {
                    let _ = socket.send(&buf);
                }
                let started = Instant::now();
                for _ in 0..iterations {
                    let _ = socket.send(&buf);
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
