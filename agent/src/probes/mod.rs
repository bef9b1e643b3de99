//! The kernel end of the data flow: loads the embedded eBPF object, fills in its globals
//! (watched ports, tracepoint field offsets, structure offsets from BTF), attaches one program
//! per hook, and hands out the ring buffer, the counters and the per-connection state maps.
//! The only module that loads anything into the kernel.

mod decode;
mod kernel;
mod layouts;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{FEntry, TracePoint},
};
use idlecut_ebpf::{
    CONNECTIONS_MAP, COUNTERS_MAP, EVENTS_MAP, FieldOffsets, MIN_IDLE_GAP_GLOBAL, PORTS_GLOBAL,
    PortBitmap, SEEDING_MAP, SEEDS_MAP, SKB_OFFSETS_GLOBAL, SOCK_OFFSETS_GLOBAL, SkbOffsets,
    SockOffsets, WAKEUP_BYTES_GLOBAL, offsets_global,
};
use layouts::{
    btf,
    tracefs::{self, Format, Needs},
};
use tracing::{info, warn};

pub use self::{
    decode::decode,
    kernel::{KernelCounters, KernelState},
};
use crate::config::{Config, PortMap};

/// The eBPF object built by build.rs from the `idlecut-ebpf` crate.
static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/idlecut-probes"));

/// Where a program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// A tracepoint, whose field offsets come from tracefs into `offsets_global`.
    Tracepoint {
        category: &'static str,
        name: &'static str,
        needs: Needs,
        offsets_global: &'static str,
    },
    /// A BPF trampoline on a kernel function (needs BTF); reads `struct sk_buff` at offsets
    /// from BTF.
    FEntry { function: &'static str },
}

/// A kernel program and where it attaches.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    /// The `probe` label of `idlecut_probe_attached`: `category:name` or `fentry:function`.
    pub label: &'static str,
    /// The program's function name in the object.
    pub program: &'static str,
    pub hook: Hook,
    /// Without it the agent has nothing to report: failing to attach it is fatal.
    pub required: bool,
    /// What is lost when it is missing, for the warning.
    pub feature: &'static str,
}

const fn tracepoint(
    label: &'static str,
    category: &'static str,
    name: &'static str,
    needs: Needs,
    offsets_global: &'static str,
    feature: &'static str,
) -> ProbeSpec {
    ProbeSpec {
        label,
        program: name,
        hook: Hook::Tracepoint {
            category,
            name,
            needs,
            offsets_global,
        },
        required: false,
        feature,
    }
}

pub const PROBES: [ProbeSpec; 9] = [
    ProbeSpec {
        required: true,
        ..tracepoint(
            "sock:inet_sock_set_state",
            "sock",
            "inet_sock_set_state",
            Needs::StateChange,
            offsets_global::INET_SOCK_SET_STATE,
            "connection opens and closes",
        )
    },
    tracepoint(
        "tcp:tcp_probe",
        "tcp",
        "tcp_probe",
        Needs::SocketAndPorts,
        offsets_global::TCP_PROBE,
        "segments received (idle gaps, answers after a gap, stall recoveries)",
    ),
    tracepoint(
        "sock:sock_send_length",
        "sock",
        "sock_send_length",
        Needs::SendLength,
        offsets_global::SOCK_SEND_LENGTH,
        "data sent (gaps this host ends; blackhole cuts are then seen only through retransmissions)",
    ),
    tracepoint(
        "tcp:tcp_receive_reset",
        "tcp",
        "tcp_receive_reset",
        Needs::SocketAndPorts,
        offsets_global::TCP_RECEIVE_RESET,
        "resets received (endings fall back to the reported errno)",
    ),
    tracepoint(
        "tcp:tcp_send_reset",
        "tcp",
        "tcp_send_reset",
        Needs::SocketAndAnyPorts,
        offsets_global::TCP_SEND_RESET,
        "resets sent",
    ),
    tracepoint(
        "tcp:tcp_retransmit_skb",
        "tcp",
        "tcp_retransmit_skb",
        Needs::SocketAndPorts,
        offsets_global::TCP_RETRANSMIT_SKB,
        "retransmissions and stalls",
    ),
    tracepoint(
        "sock:inet_sk_error_report",
        "sock",
        "inet_sk_error_report",
        Needs::ErrorReport,
        offsets_global::INET_SK_ERROR_REPORT,
        "timeouts and errors as endings",
    ),
    ProbeSpec {
        label: "fentry:tcp_v4_err",
        program: "tcp_v4_err",
        hook: Hook::FEntry {
            function: "tcp_v4_err",
        },
        required: false,
        feature: "ICMP errors for IPv4 connections (icmp cuts still show through EHOSTUNREACH)",
    },
    ProbeSpec {
        label: "fentry:tcp_v6_err",
        program: "tcp_v6_err",
        hook: Hook::FEntry {
            function: "tcp_v6_err",
        },
        required: false,
        feature: "ICMPv6 errors for IPv6 connections",
    },
];

/// The kernel programs' own log records (rare diagnostics), forwarded to `tracing`.
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Program runs the kernel skipped, summed over the agent's programs: a tracepoint program is
/// skipped when another BPF program is already running on that CPU (an interrupt landed during
/// one), and counts it in the program's `recursion_misses` (Linux 5.12+, in /proc/self/fdinfo).
pub fn skipped_program_runs() -> u64 {
    let Ok(fds) = std::fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter(|info| info.contains("prog_type:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("recursion_misses:"))
                .and_then(|value| value.trim().parse::<u64>().ok())
        })
        .sum()
}

/// The loaded object: programs stay attached while this lives.
pub struct Probes {
    pub ebpf: Ebpf,
    /// None when the object has no log map (a build without kernel log statements).
    pub logger: Option<KernelLogger>,
    pub events: RingBuf<MapData>,
    pub counters: KernelCounters,
    pub state: KernelState,
    /// Each probe's label and, when it attached, how many instructions the verifier walked
    /// (the budget the tests hold the kernel side to).
    pub attached: Vec<(&'static str, Option<u32>)>,
}

pub fn load(config: &Config) -> anyhow::Result<Probes> {
    if PROBES_OBJECT.is_empty() {
        bail!(
            "this binary was built without its eBPF programs (AYA_BUILD_SKIP was set); \
             build it with `./x build`"
        );
    }
    let tracefs = tracefs::locate_or_mount()?;
    // What each program needs from this kernel, or why this kernel cannot give it.
    let btf = btf::vmlinux();
    let skb_offsets: anyhow::Result<SkbOffsets> = match &btf {
        Ok(btf) => btf::skb_offsets(btf),
        Err(err) => Err(anyhow::anyhow!("{err:#}")),
    };
    let sock_offsets: anyhow::Result<SockOffsets> = match &btf {
        Ok(btf) => btf::sock_offsets(btf),
        Err(err) => Err(anyhow::anyhow!("{err:#}")),
    };
    if let Err(err) = &sock_offsets {
        warn!(
            error = format!("{err:#}"),
            "no socket layout from BTF: connections will not show their network namespace, and \
             those found at start-up are followed only until they close"
        );
    }
    let readiness: Vec<(ProbeSpec, Result<Option<FieldOffsets>, String>)> = PROBES
        .iter()
        .map(|spec| {
            let ready = match spec.hook {
                Hook::Tracepoint {
                    category,
                    name,
                    needs,
                    ..
                } => Format::read(&tracefs, category, name)
                    .map_err(|err| format!("{err:#}"))
                    .and_then(|format| tracefs::offsets_for(&format, needs))
                    .map(Some),
                Hook::FEntry { .. } => match &skb_offsets {
                    Ok(_) => Ok(None),
                    Err(err) => Err(format!("{err:#}")),
                },
            };
            (*spec, ready)
        })
        .collect();

    raise_memlock_limit();
    let ports = port_bitmap(&config.ports);
    let min_idle_gap_ns = u64::try_from(config.min_idle_gap.as_nanos()).unwrap_or(u64::MAX);
    // A quarter full wakes the reader; below that, the pipeline's timer drains the buffer.
    let wakeup_bytes = u64::from(config.ring_buffer_bytes / 4);
    let mut loader = EbpfLoader::new();
    loader
        .override_global(PORTS_GLOBAL, &ports, true)
        .override_global(MIN_IDLE_GAP_GLOBAL, &min_idle_gap_ns, true)
        .override_global(WAKEUP_BYTES_GLOBAL, &wakeup_bytes, true)
        .map_max_entries(EVENTS_MAP, config.ring_buffer_bytes)
        .map_max_entries(CONNECTIONS_MAP, config.max_connections)
        .map_max_entries(SEEDS_MAP, config.max_connections);
    if let Ok(skb_offsets) = &skb_offsets {
        loader.override_global(SKB_OFFSETS_GLOBAL, skb_offsets, true);
    }
    if let Ok(sock_offsets) = &sock_offsets {
        loader.override_global(SOCK_OFFSETS_GLOBAL, sock_offsets, true);
    }
    for (spec, ready) in &readiness {
        if let (Hook::Tracepoint { offsets_global, .. }, Ok(Some(offsets))) = (spec.hook, ready) {
            loader.override_global(offsets_global, offsets, true);
        }
    }
    // The kernel programs log only rare diagnostics; they do it at the agent's own level.
    let kernel_log_level = kernel_log_level() as u8;
    loader.override_global(aya_log::LEVEL, &kernel_log_level, false);
    let mut ebpf = loader.load(PROBES_OBJECT).context(
        "loading the eBPF programs (the agent needs root, or CAP_BPF, CAP_PERFMON and \
         CAP_SYS_RESOURCE, and a kernel with BPF ring buffers: Linux 5.8 or later)",
    )?;

    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(err) => {
            tracing::debug!(error = %err, "no kernel log map");
            None
        }
    };
    // aya's own BTF, for attaching the fentry programs.
    let aya_btf = aya::Btf::from_sys_fs();
    let mut attached = Vec::with_capacity(PROBES.len());
    for (spec, ready) in &readiness {
        let result = match ready {
            Err(missing) => Err(anyhow::anyhow!("{missing}")),
            Ok(_) => attach(&mut ebpf, spec, aya_btf.as_ref().ok()),
        };
        match result {
            Ok(verified) => {
                info!(
                    probe = spec.label,
                    verified_instructions = verified,
                    "attached"
                );
                attached.push((spec.label, Some(verified)));
            }
            Err(err) if spec.required => {
                return Err(err.context(format!("attaching {}", spec.label)));
            }
            Err(err) => {
                warn!(
                    probe = spec.label,
                    error = format!("{err:#}"),
                    "not attached: this kernel will not report {}",
                    spec.feature
                );
                attached.push((spec.label, None));
            }
        }
    }

    let events = RingBuf::try_from(
        ebpf.take_map(EVENTS_MAP)
            .context("the eBPF object has no EVENTS map")?,
    )?;
    let counters = KernelCounters(PerCpuArray::try_from(
        ebpf.take_map(COUNTERS_MAP)
            .context("the eBPF object has no COUNTERS map")?,
    )?);
    let mut take = |name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("the eBPF object has no {name} map"))
    };
    let state = KernelState {
        connections: HashMap::try_from(take(CONNECTIONS_MAP)?)?,
        seeds: HashMap::try_from(take(SEEDS_MAP)?)?,
        seeding: Array::try_from(take(SEEDING_MAP)?)?,
        can_adopt: sock_offsets.is_ok(),
    };
    Ok(Probes {
        ebpf,
        logger,
        events,
        counters,
        state,
        attached,
    })
}

/// Loads and attaches a program; returns how many instructions the verifier walked (0 when the
/// kernel does not say).
fn attach(ebpf: &mut Ebpf, spec: &ProbeSpec, btf: Option<&aya::Btf>) -> anyhow::Result<u32> {
    let program = ebpf
        .program_mut(spec.program)
        .with_context(|| format!("no program {} in the eBPF object", spec.program))?;
    match spec.hook {
        Hook::Tracepoint { category, name, .. } => {
            let program: &mut TracePoint = program.try_into()?;
            program
                .load()
                .context("the verifier rejected the program")?;
            program.attach(category, name)?;
            Ok(verified_instructions(program.info()))
        }
        Hook::FEntry { function } => {
            let btf = btf.context("no kernel BTF")?;
            let program: &mut FEntry = program.try_into()?;
            program
                .load(function, btf)
                .context("loading the fentry program (needs BTF and BPF trampolines)")?;
            program.attach()?;
            Ok(verified_instructions(program.info()))
        }
    }
}

fn verified_instructions(
    info: Result<aya::programs::ProgramInfo, aya::programs::ProgramError>,
) -> u32 {
    info.ok()
        .and_then(|info| info.verified_instruction_count())
        .unwrap_or(0)
}

/// The most verbose level the agent logs at, as aya-log's kernel-side filter understands it.
fn kernel_log_level() -> aya_log::Level {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => aya_log::Level::Trace,
        LevelFilter::DEBUG => aya_log::Level::Debug,
        LevelFilter::INFO => aya_log::Level::Info,
        LevelFilter::WARN => aya_log::Level::Warn,
        _ => aya_log::Level::Error,
    }
}

/// Forwards the kernel programs' log records until shutdown.
pub async fn forward_kernel_logs(
    logger: KernelLogger,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // SAFETY: the logger owns its ring buffer's descriptor for as long as the AsyncFd holds it.
    let mut logger = unsafe { tokio::io::unix::AsyncFd::register(logger) }
        .map_err(|err| anyhow::anyhow!("watching the kernel log buffer: {err}"))?;
    loop {
        tokio::select! {
            guard = logger.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the memory cgroup.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct; failure only matters on old kernels and is reported then
    // by the map creation itself.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if rc != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The watched ports as the programs test them: bit `p % 64` of word `p / 64`.
fn port_bitmap(ports: &PortMap) -> PortBitmap {
    let mut bitmap = [0u64; 1024];
    for port in ports.ports() {
        bitmap[usize::from(port >> 6)] |= 1 << (port & 63);
    }
    bitmap
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    use super::*;

    /// The names the agent uses for maps and globals are constants of the shared crate; the
    /// kernel side spells them as identifiers. This ties the two: the embedded object has
    /// exactly the maps and globals the agent opens and sets (and aya-log's own).
    #[test]
    fn the_object_has_exactly_the_maps_and_globals_the_agent_uses() {
        let object = object::File::parse(PROBES_OBJECT).expect("the embedded object parses");
        let names_in = |section_name: &str| -> BTreeSet<String> {
            let Some(section) = object.section_by_name(section_name) else {
                return BTreeSet::new();
            };
            object
                .symbols()
                .filter(|sym| sym.is_global() && sym.section_index() == Some(section.index()))
                .map(|sym| sym.name().expect("symbol names are UTF-8").to_owned())
                .collect()
        };
        let expected_maps: BTreeSet<String> = idlecut_ebpf::MAPS
            .iter()
            .chain(&["AYA_LOGS"])
            .map(|name| (*name).to_owned())
            .collect();
        assert_eq!(names_in("maps"), expected_maps);
        let expected_globals: BTreeSet<String> = idlecut_ebpf::GLOBALS
            .iter()
            .chain(&[aya_log::LEVEL])
            .map(|name| (*name).to_owned())
            .collect();
        assert_eq!(names_in(".rodata"), expected_globals);
    }

    #[test]
    fn bitmap_has_exactly_the_configured_ports() {
        let ports = crate::config::parse_ports("25=smtp,143=imap,65535=top").unwrap();
        let bitmap = port_bitmap(&ports);
        let set: Vec<u16> = (0..=u16::MAX)
            .filter(|&p| bitmap[usize::from(p >> 6)] & (1 << (p & 63)) != 0)
            .collect();
        assert_eq!(set, [25, 143, 65535]);
    }
}
