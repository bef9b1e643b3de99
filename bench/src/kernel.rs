//! The baseline kernel programs (crate `idlecut-bench-ebpf`) and the kernel's per-program run
//! statistics (`run_time_ns`, `run_cnt`), which count while BPF statistics are enabled.

use std::{collections::HashMap, os::fd::OwnedFd};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{TracePoint, loaded_programs, trace_point::TracePointLinkId},
};

static BASELINE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/idlecut-bench-probes"));

/// A tracepoint idlecut attaches to: `category:name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tracepoint {
    pub category: &'static str,
    pub name: &'static str,
}

impl Tracepoint {
    pub fn label(self) -> String {
        format!("{}:{}", self.category, self.name)
    }
}

const fn tp(category: &'static str, name: &'static str) -> Tracepoint {
    Tracepoint { category, name }
}

/// idlecut's tracepoints, each with the do-nothing program attached next to idlecut's.
pub const NOPS: [(&str, Tracepoint); 7] = [
    ("nop_set_state", tp("sock", "inet_sock_set_state")),
    ("nop_tcp_probe", tp("tcp", "tcp_probe")),
    ("nop_send_len", tp("sock", "sock_send_length")),
    ("nop_rcv_reset", tp("tcp", "tcp_receive_reset")),
    ("nop_send_reset", tp("tcp", "tcp_send_reset")),
    ("nop_retransmit", tp("tcp", "tcp_retransmit_skb")),
    ("nop_err_report", tp("sock", "inet_sk_error_report")),
];

/// A program on sock:sock_send_length that increments a hash map entry: ebpf_exporter's
/// "simple map" probe.
pub const MAP_UPDATE: (&str, Tracepoint) = ("map_send_len", tp("sock", "sock_send_length"));

/// One field of sock:sock_send_length's record read through bpf_probe_read_kernel (how idlecut
/// reads fields), loaded directly at a load-time offset (expected to be refused by the
/// verifier), and loaded directly at a compile-time offset.
pub const HELPER_READ: (&str, Tracepoint) = ("helper_read", tp("sock", "sock_send_length"));
pub const DIRECT_READ: (&str, Tracepoint) = ("direct_read", tp("sock", "sock_send_length"));
pub const CONST_READ: (&str, Tracepoint) = ("const_read", tp("sock", "sock_send_length"));
/// A per-socket state inserted and deleted, in an LRU hash map (like idlecut's) and in a
/// plain hash map; an event through a ring buffer, its reader woken each time or never.
pub const LRU_INSERT_DELETE: (&str, Tracepoint) =
    ("lru_insert_del", tp("sock", "sock_send_length"));
pub const HASH_INSERT_DELETE: (&str, Tracepoint) =
    ("hash_insert_del", tp("sock", "sock_send_length"));
pub const RINGBUF_WAKEUP: (&str, Tracepoint) = ("ringbuf_wakeup", tp("sock", "sock_send_length"));
pub const RINGBUF_NO_WAKEUP: (&str, Tracepoint) = ("ringbuf_quiet", tp("sock", "sock_send_length"));

/// The offset `const_read` was compiled for.
const CONST_READ_OFFSET: u16 = 18;

/// The loaded baseline programs; attached ones stay attached while this lives.
pub struct Baselines {
    ebpf: Ebpf,
    links: HashMap<&'static str, TracePointLinkId>,
    /// Optional programs that could not be loaded here, and why.
    pub unavailable: HashMap<&'static str, String>,
    records: Option<RingBuf<MapData>>,
}

impl Baselines {
    pub fn load() -> anyhow::Result<Self> {
        if BASELINE_OBJECT.is_empty() {
            bail!(
                "idlecut-bench was built without its eBPF programs (AYA_BUILD_SKIP was set); \
                 build it with `./x bench`"
            );
        }
        let protocol = send_length_protocol_offset()?;
        let ebpf = EbpfLoader::new()
            .override_global("SEND_LENGTH_PROTOCOL", &protocol, true)
            .load(BASELINE_OBJECT)
            .context("loading the baseline programs")?;
        let mut baselines = Self {
            ebpf,
            links: HashMap::new(),
            unavailable: HashMap::new(),
            records: None,
        };
        for (program, _) in NOPS.iter().chain([
            &MAP_UPDATE,
            &HELPER_READ,
            &LRU_INSERT_DELETE,
            &HASH_INSERT_DELETE,
            &RINGBUF_WAKEUP,
            &RINGBUF_NO_WAKEUP,
        ]) {
            baselines
                .program(program)?
                .load()
                .with_context(|| format!("loading {program}"))?;
        }
        for (program, _) in [DIRECT_READ, CONST_READ] {
            let loaded = if program == CONST_READ.0 && protocol != CONST_READ_OFFSET {
                Err(format!(
                    "this kernel's sock_send_length record has `protocol` at {protocol}, not \
                     {CONST_READ_OFFSET}"
                ))
            } else {
                baselines
                    .program(program)?
                    .load()
                    .map_err(|err| verifier_message(&err))
            };
            if let Err(why) = loaded {
                baselines.unavailable.insert(program, why);
            }
        }
        Ok(baselines)
    }

    /// The ring buffer the `ringbuf_*` programs write to, lent to a reader.
    pub fn take_records(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        if let Some(records) = self.records.take() {
            return Ok(records);
        }
        let map = self
            .ebpf
            .take_map("RECORDS")
            .context("no RECORDS map in the baseline object")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Gives the ring buffer back for the next round.
    pub fn put_records(&mut self, records: RingBuf<MapData>) {
        self.records = Some(records);
    }

    pub fn is_available(&self, name: &str) -> bool {
        !self.unavailable.contains_key(name)
    }

    fn program(&mut self, name: &str) -> anyhow::Result<&mut TracePoint> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in the baseline object"))?
            .try_into()?)
    }

    pub fn attach(&mut self, (name, at): (&'static str, Tracepoint)) -> anyhow::Result<()> {
        if self.links.contains_key(name) {
            return Ok(());
        }
        let link = self
            .program(name)?
            .attach(at.category, at.name)
            .with_context(|| format!("attaching {name} to {}", at.label()))?;
        self.links.insert(name, link);
        Ok(())
    }

    pub fn detach(&mut self, name: &'static str) -> anyhow::Result<()> {
        if let Some(link) = self.links.remove(name) {
            self.program(name)?
                .detach(link)
                .with_context(|| format!("detaching {name}"))?;
        }
        Ok(())
    }

    /// The kernel id of a baseline program.
    pub fn id(&mut self, name: &str) -> anyhow::Result<u32> {
        Ok(self.program(name)?.info()?.id())
    }
}

/// The offset of `protocol` in sock:sock_send_length's record, from tracefs.
fn send_length_protocol_offset() -> anyhow::Result<u16> {
    let paths = [
        "/sys/kernel/tracing/events/sock/sock_send_length/format",
        "/sys/kernel/debug/tracing/events/sock/sock_send_length/format",
    ];
    let format = paths
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .context("no sock:sock_send_length format in tracefs (is tracefs mounted?)")?;
    format
        .lines()
        .find(|line| line.contains(" protocol;"))
        .and_then(|line| {
            line.split(';')
                .find_map(|part| part.trim().strip_prefix("offset:"))
        })
        .and_then(|offset| offset.parse().ok())
        .context("no `protocol` field in sock:sock_send_length's format")
}

/// The verifier's last words about a program it refused, or the error.
fn verifier_message(err: &aya::programs::ProgramError) -> String {
    match err {
        aya::programs::ProgramError::LoadError { verifier_log, .. } => {
            let log = verifier_log.to_string();
            // The reason comes before the closing statistics.
            let reason = log
                .lines()
                .rev()
                .map(str::trim)
                .find(|line| {
                    !line.is_empty()
                        && !line.starts_with("verification time")
                        && !line.starts_with("stack depth")
                        && !line.starts_with("processed ")
                })
                .unwrap_or("(no verifier log)");
            format!("refused by the verifier: {reason}")
        }
        other => format!("{other}"),
    }
}

/// Enables the kernel's BPF run statistics (`BPF_ENABLE_STATS`, the same switch as
/// `sysctl kernel.bpf_stats_enabled=1`) for as long as the descriptor stays open.
pub fn enable_run_stats() -> anyhow::Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run statistics (BPF_ENABLE_STATS)")
}

/// Accumulated run time and run count of a program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub time_ns: u64,
    pub count: u64,
}

impl RunStats {
    pub fn since(self, before: Self) -> Self {
        Self {
            time_ns: self.time_ns.saturating_sub(before.time_ns),
            count: self.count.saturating_sub(before.count),
        }
    }
}

/// Name and run statistics of the given programs, by id.
pub fn run_stats(ids: &[u32]) -> anyhow::Result<HashMap<u32, (String, RunStats)>> {
    let mut found = HashMap::new();
    // Other programs may come and go while we iterate: skip what fails.
    for info in loaded_programs().flatten() {
        if ids.contains(&info.id()) {
            let name = info.name_as_str().unwrap_or_default().to_owned();
            let stats = RunStats {
                time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                count: info.run_count(),
            };
            found.insert(info.id(), (name, stats));
        }
    }
    Ok(found)
}

/// Which of idlecut's tracepoints a program of the agent sits on, from its (kernel-truncated,
/// 15-character) name: idlecut names each program after its tracepoint.
pub fn tracepoint_of_agent_program(name: &str) -> Option<Tracepoint> {
    if name.is_empty() {
        return None;
    }
    NOPS.iter()
        .map(|(_, at)| *at)
        .find(|at| at.name.starts_with(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_program_names_find_their_tracepoint() {
        assert_eq!(
            tracepoint_of_agent_program("inet_sock_set_s"),
            Some(tp("sock", "inet_sock_set_state"))
        );
        assert_eq!(
            tracepoint_of_agent_program("tcp_probe"),
            Some(tp("tcp", "tcp_probe"))
        );
        assert_eq!(tracepoint_of_agent_program("tcp_v4_err"), None);
        assert_eq!(tracepoint_of_agent_program(""), None);
    }
}
