//! The baseline kernel programs (crate `idlecut-bench-ebpf`) and the kernel's per-program run
//! statistics (`run_time_ns`, `run_cnt`), which count while BPF statistics are enabled.

use std::{collections::HashMap, os::fd::OwnedFd};

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{
        BtfTracePoint, TracePoint, loaded_programs, tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId,
    },
};
use serde::Serialize;

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

/// How a program sits on a tracepoint; the agent's `idlecut_probe_hook` says `kind` with the
/// same words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum HookKind {
    /// A BTF tracepoint (`BPF_PROG_TYPE_TRACING`, `BPF_TRACE_RAW_TP`): typed arguments, no
    /// record, a recursion guard per program. What the agent uses with `--hooks auto`.
    #[serde(rename = "tp_btf")]
    TpBtf,
    /// A classic tracepoint: a record formatted per event, one per-CPU guard shared by all
    /// tracing programs. The agent's fallback, forced with `--hooks classic`.
    #[serde(rename = "tracepoint")]
    Classic,
}

impl HookKind {
    pub const ALL: [Self; 2] = [Self::TpBtf, Self::Classic];

    /// The `kind` label of `idlecut_probe_hook`.
    pub fn label(self) -> &'static str {
        match self {
            Self::TpBtf => "tp_btf",
            Self::Classic => "tracepoint",
        }
    }

    /// The agent's flags that make it use this kind.
    pub fn agent_args(self) -> [&'static str; 2] {
        match self {
            Self::TpBtf => ["--hooks", "auto"],
            Self::Classic => ["--hooks", "classic"],
        }
    }

    /// The do-nothing programs of this kind, one per tracepoint of idlecut's.
    pub fn nops(self) -> &'static [Program; 8] {
        match self {
            Self::TpBtf => &BTF_NOPS,
            Self::Classic => &NOPS,
        }
    }
}

/// A baseline program: its name in the object, where and how it attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    pub name: &'static str,
    pub at: Tracepoint,
    pub kind: HookKind,
}

const fn classic(name: &'static str, at: Tracepoint) -> Program {
    Program {
        name,
        at,
        kind: HookKind::Classic,
    }
}

const fn btf(name: &'static str, at: Tracepoint) -> Program {
    Program {
        name,
        at,
        kind: HookKind::TpBtf,
    }
}

const SET_STATE: Tracepoint = tp("sock", "inet_sock_set_state");
const TCP_PROBE: Tracepoint = tp("tcp", "tcp_probe");
const SEND_LENGTH: Tracepoint = tp("sock", "sock_send_length");
const RECEIVE_RESET: Tracepoint = tp("tcp", "tcp_receive_reset");
const SEND_RESET: Tracepoint = tp("tcp", "tcp_send_reset");
const RETRANSMIT: Tracepoint = tp("tcp", "tcp_retransmit_skb");
const ERROR_REPORT: Tracepoint = tp("sock", "inet_sk_error_report");
const DESTROY_SOCK: Tracepoint = tp("tcp", "tcp_destroy_sock");

/// idlecut's tracepoints, each with a do-nothing classic program attached next to idlecut's.
pub const NOPS: [Program; 8] = [
    classic("nop_set_state", SET_STATE),
    classic("nop_tcp_probe", TCP_PROBE),
    classic("nop_send_len", SEND_LENGTH),
    classic("nop_rcv_reset", RECEIVE_RESET),
    classic("nop_send_reset", SEND_RESET),
    classic("nop_retransmit", RETRANSMIT),
    classic("nop_err_report", ERROR_REPORT),
    classic("nop_destroy_sock", DESTROY_SOCK),
];

/// The same tracepoints, do-nothing BTF tracepoint programs.
pub const BTF_NOPS: [Program; 8] = [
    btf("btf_nop_set_state", SET_STATE),
    btf("btf_nop_tcp_probe", TCP_PROBE),
    btf("btf_nop_send_len", SEND_LENGTH),
    btf("btf_nop_rcv_reset", RECEIVE_RESET),
    btf("btf_nop_send_reset", SEND_RESET),
    btf("btf_nop_retransmit", RETRANSMIT),
    btf("btf_nop_err_report", ERROR_REPORT),
    btf("btf_nop_destroy_sock", DESTROY_SOCK),
];

/// A program on sock:sock_send_length that increments a hash map entry: ebpf_exporter's
/// "simple map" probe, on a classic and on a BTF tracepoint (ebpf_exporter's hook kind).
pub const MAP_UPDATE: Program = classic("map_send_len", SEND_LENGTH);
pub const BTF_MAP_UPDATE: Program = btf("btf_map_send_len", SEND_LENGTH);

/// One field of sock:sock_send_length's record read through bpf_probe_read_kernel (how idlecut
/// reads fields), loaded directly at a load-time offset (expected to be refused by the
/// verifier), and loaded directly at a compile-time offset.
pub const HELPER_READ: Program = classic("helper_read", SEND_LENGTH);
pub const DIRECT_READ: Program = classic("direct_read", SEND_LENGTH);
pub const CONST_READ: Program = classic("const_read", SEND_LENGTH);
/// A per-socket state inserted and deleted, in an LRU hash map (like idlecut's) and in a
/// plain hash map; an event through a ring buffer, its reader woken each time or never.
pub const LRU_INSERT_DELETE: Program = classic("lru_insert_del", SEND_LENGTH);
pub const HASH_INSERT_DELETE: Program = classic("hash_insert_del", SEND_LENGTH);
pub const RINGBUF_WAKEUP: Program = classic("ringbuf_wakeup", SEND_LENGTH);
pub const RINGBUF_NO_WAKEUP: Program = classic("ringbuf_quiet", SEND_LENGTH);

/// The offset `const_read` was compiled for.
const CONST_READ_OFFSET: u16 = 18;

enum Link {
    Classic(TracePointLinkId),
    Btf(BtfTracePointLinkId),
}

/// The loaded baseline programs; attached ones stay attached while this lives.
pub struct Baselines {
    ebpf: Ebpf,
    links: HashMap<&'static str, Link>,
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
        for program in NOPS.iter().chain(&[
            MAP_UPDATE,
            HELPER_READ,
            LRU_INSERT_DELETE,
            HASH_INSERT_DELETE,
            RINGBUF_WAKEUP,
            RINGBUF_NO_WAKEUP,
        ]) {
            baselines
                .classic(program.name)?
                .load()
                .with_context(|| format!("loading {}", program.name))?;
        }
        let kernel_btf = Btf::from_sys_fs()
            .context("reading the kernel's BTF (/sys/kernel/btf/vmlinux), needed for tp_btf")?;
        for program in BTF_NOPS.iter().chain(&[BTF_MAP_UPDATE]) {
            baselines
                .btf(program.name)?
                .load(program.at.name, &kernel_btf)
                .map_err(|err| anyhow::anyhow!(verifier_message(&err)))
                .with_context(|| {
                    format!("loading {} (tp_btf/{})", program.name, program.at.name)
                })?;
        }
        for program in [DIRECT_READ, CONST_READ] {
            let loaded = if program == CONST_READ && protocol != CONST_READ_OFFSET {
                Err(format!(
                    "this kernel's sock_send_length record has `protocol` at {protocol}, not \
                     {CONST_READ_OFFSET}"
                ))
            } else {
                baselines
                    .classic(program.name)?
                    .load()
                    .map_err(|err| verifier_message(&err))
            };
            if let Err(why) = loaded {
                baselines.unavailable.insert(program.name, why);
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

    fn program(&mut self, name: &str) -> anyhow::Result<&mut aya::programs::Program> {
        self.ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in the baseline object"))
    }

    fn classic(&mut self, name: &str) -> anyhow::Result<&mut TracePoint> {
        Ok(self.program(name)?.try_into()?)
    }

    fn btf(&mut self, name: &str) -> anyhow::Result<&mut BtfTracePoint> {
        Ok(self.program(name)?.try_into()?)
    }

    pub fn attach(&mut self, program: Program) -> anyhow::Result<()> {
        if self.links.contains_key(program.name) {
            return Ok(());
        }
        let link = match program.kind {
            HookKind::Classic => self
                .classic(program.name)?
                .attach(program.at.category, program.at.name)
                .map(Link::Classic),
            HookKind::TpBtf => self.btf(program.name)?.attach().map(Link::Btf),
        }
        .with_context(|| format!("attaching {} to {}", program.name, program.at.label()))?;
        self.links.insert(program.name, link);
        Ok(())
    }

    pub fn detach(&mut self, program: Program) -> anyhow::Result<()> {
        let name = program.name;
        match self.links.remove(name) {
            Some(Link::Classic(link)) => self.classic(name)?.detach(link),
            Some(Link::Btf(link)) => self.btf(name)?.detach(link),
            None => return Ok(()),
        }
        .with_context(|| format!("detaching {name}"))
    }

    pub fn attach_all(&mut self, programs: &[Program]) -> anyhow::Result<()> {
        programs.iter().try_for_each(|&p| self.attach(p))
    }

    pub fn detach_all(&mut self, programs: &[Program]) -> anyhow::Result<()> {
        programs.iter().try_for_each(|&p| self.detach(p))
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

/// Which of idlecut's tracepoints a program of the agent sits on, and how, from its
/// (kernel-truncated, 15-character) name: idlecut names each classic program after its
/// tracepoint, and each BTF tracepoint program the same with a `btf_` prefix.
pub fn tracepoint_of_agent_program(name: &str) -> Option<(Tracepoint, HookKind)> {
    let (rest, kind) = match name.strip_prefix("btf_") {
        Some(rest) => (rest, HookKind::TpBtf),
        None => (name, HookKind::Classic),
    };
    if rest.is_empty() {
        return None;
    }
    NOPS.iter()
        .map(|nop| nop.at)
        .find(|at| at.name.starts_with(rest))
        .map(|at| (at, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_program_names_find_their_tracepoint() {
        assert_eq!(
            tracepoint_of_agent_program("inet_sock_set_s"),
            Some((SET_STATE, HookKind::Classic))
        );
        assert_eq!(
            tracepoint_of_agent_program("tcp_probe"),
            Some((TCP_PROBE, HookKind::Classic))
        );
        assert_eq!(
            tracepoint_of_agent_program("btf_inet_sock_s"),
            Some((SET_STATE, HookKind::TpBtf))
        );
        assert_eq!(
            tracepoint_of_agent_program("btf_tcp_receive"),
            Some((RECEIVE_RESET, HookKind::TpBtf))
        );
        assert_eq!(
            tracepoint_of_agent_program("btf_sock_send_l"),
            Some((SEND_LENGTH, HookKind::TpBtf))
        );
        assert_eq!(tracepoint_of_agent_program("tcp_v4_err"), None);
        assert_eq!(
            tracepoint_of_agent_program("btf_tcp_destroy"),
            Some((DESTROY_SOCK, HookKind::TpBtf))
        );
        assert_eq!(
            tracepoint_of_agent_program("tcp_destroy_soc"),
            Some((DESTROY_SOCK, HookKind::Classic))
        );
        assert_eq!(tracepoint_of_agent_program(""), None);
        assert_eq!(tracepoint_of_agent_program("btf_"), None);
    }
}
