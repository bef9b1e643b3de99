//! The kernel end of the data flow: loads the embedded eBPF object, fills in its globals
//! (watched ports, tracepoint field offsets, structure offsets from BTF), attaches one program
//! per hook, and hands out the ring buffer, the counters and the per-connection state maps.
//! The only module that loads anything into the kernel.

mod catalog;
mod decode;
mod kernel;
mod layouts;
mod ring;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry, TracePoint},
};
use idlecut_ebpf::{
    CONNECTIONS_MAP, COUNTERS_MAP, EVENTS_MAP, FieldOffsets, MIN_IDLE_GAP_GLOBAL,
    PORT_RANGE_GLOBAL, PORTS_GLOBAL, PortBitmap, PortRange, RETRANSMIT_ERR_GLOBAL, SEEDING_MAP,
    SEEDS_MAP, SKB_OFFSETS_GLOBAL, SOCK_OFFSETS_GLOBAL, SOCKET_CLOCKS_GLOBAL, SkbOffsets,
    SockOffsets, SocketClocks, UNREPORTED_MAP, WAKEUP_BYTES_GLOBAL,
};
use layouts::{
    btf,
    tracefs::{self, Format},
};
use tracing::{info, warn};

use self::catalog::{Hook, PROBES, ProbeSpec};
pub use self::{
    catalog::HookKind,
    decode::{DecodeError, decode, tcp_state_of},
    kernel::{KernelCounters, KernelState},
    ring::{EventRing, ReadyRing},
};
use idlecut_core::settings::PortMap;

use crate::clock;
use crate::settings::Hooks;

/// What loading the programs needs to know of the agent's settings.
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    pub ports: PortMap,
    pub hooks: Hooks,
    pub min_idle_gap: std::time::Duration,
    pub ring_buffer_size: u32,
    pub max_connections: u32,
}

/// The eBPF object built by build.rs from the `idlecut-ebpf` crate.
static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/idlecut-probes"));

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

/// One probe after start-up: which kind of hook serves it, if any.
#[derive(Clone, Copy, Debug)]
pub struct Attached {
    /// The `probe` label (the same whichever kind of hook serves it).
    pub label: &'static str,
    /// None when nothing could be attached for it.
    pub kind: Option<HookKind>,
    /// How many instructions the verifier walked (the budget the tests hold the kernel side
    /// to); 0 when the kernel does not say or nothing is attached.
    pub verified_instructions: u32,
}

/// The loaded object: programs stay attached while this lives.
pub struct Probes {
    pub ebpf: Ebpf,
    /// None when the object has no log map (a build without kernel log statements).
    pub logger: Option<KernelLogger>,
    pub events: RingBuf<MapData>,
    pub counters: KernelCounters,
    pub state: KernelState,
    pub attached: Vec<Attached>,
}

/// What this kernel offers the programs, found before the object is loaded (its globals must
/// be set by then).
struct KernelLayouts {
    sock: anyhow::Result<SockOffsets>,
    skb: anyhow::Result<SkbOffsets>,
    /// Where TCP keeps a socket's clocks, timing left unknown.
    clocks: anyhow::Result<SocketClocks>,
    /// Whether the BTF tracepoint tcp_retransmit_skb has its `err` argument.
    retransmit_has_err: bool,
    /// Each tracepoint's record offsets for its classic program, or why there are none; in
    /// `PROBES` order (`Ok(None)` for hooks that are not tracepoints).
    records: Vec<Result<Option<FieldOffsets>, String>>,
}

/// Reads the layouts the probes need. BTF tracepoints read sockets at offsets from BTF and need
/// nothing else; classic tracepoints read records at offsets from tracefs. With `--hooks auto`
/// and BTF, tracefs is read only if it is already mounted (for a fallback that is rarely
/// needed), so that the agent needs neither the mount nor root's access to tracefs.
fn kernel_layouts(config: &ProbeSettings) -> anyhow::Result<(KernelLayouts, bool)> {
    let (sock, skb, clocks, retransmit_has_err) = match btf::vmlinux() {
        Ok(btf) => (
            btf::sock_offsets(&btf),
            btf::skb_offsets(&btf),
            btf::socket_clock_offsets(&btf),
            btf::tracepoint_arguments(&btf, "tcp_retransmit_skb") >= Some(3),
        ),
        Err(err) => (
            Err(anyhow::anyhow!("{err:#}")),
            Err(anyhow::anyhow!("{err:#}")),
            Err(err),
            false,
        ),
    };
    if let Err(err) = &sock {
        warn!(
            error = format!("{err:#}"),
            "no socket layout from BTF: classic tracepoints only, connections will not show \
             their network namespace, and those found at start-up are followed only until \
             they close"
        );
    }
    let prefer_btf = config.hooks == Hooks::Auto && sock.is_ok();
    let tracefs = if prefer_btf {
        tracefs::locate().ok_or_else(|| {
            "tracefs is not mounted, so there is no classic tracepoint to fall back on".to_owned()
        })
    } else {
        Ok(tracefs::locate_or_mount()?)
    };
    let records = PROBES
        .iter()
        .map(|spec| match spec.hook {
            Hook::Tracepoint {
                category,
                name,
                needs,
                ..
            } => {
                let tracefs = tracefs.as_ref().map_err(Clone::clone)?;
                Format::read(tracefs, category, name)
                    .map_err(|err| format!("{err:#}"))
                    .and_then(|format| tracefs::offsets_for(&format, needs))
                    .map(Some)
            }
            Hook::FEntry { .. } => Ok(None),
        })
        .collect();
    Ok((
        KernelLayouts {
            sock,
            skb,
            clocks,
            retransmit_has_err,
            records,
        },
        prefer_btf,
    ))
}

pub fn load(config: &ProbeSettings) -> anyhow::Result<Probes> {
    if PROBES_OBJECT.is_empty() {
        bail!(
            "this binary was built without its eBPF programs (AYA_BUILD_SKIP was set); \
             build it with `./x build`"
        );
    }
    let (layouts, prefer_btf) = kernel_layouts(config)?;

    raise_memlock_limit();
    let ports = port_bitmap(&config.ports);
    let port_range = port_range(&config.ports);
    let min_idle_gap_ns = u64::try_from(config.min_idle_gap.as_nanos()).unwrap_or(u64::MAX);
    // A quarter full wakes the reader; below that, the pipeline's timer drains the buffer.
    let wakeup_bytes = u64::from(config.ring_buffer_size / 4);
    let mut loader = EbpfLoader::new();
    loader
        .override_global(PORTS_GLOBAL, &ports, true)
        .override_global(PORT_RANGE_GLOBAL, &port_range, true)
        .override_global(MIN_IDLE_GAP_GLOBAL, &min_idle_gap_ns, true)
        .override_global(WAKEUP_BYTES_GLOBAL, &wakeup_bytes, true)
        .map_max_entries(EVENTS_MAP, config.ring_buffer_size)
        .map_max_entries(CONNECTIONS_MAP, config.max_connections)
        .map_max_entries(SEEDS_MAP, config.max_connections);
    if let Ok(skb_offsets) = &layouts.skb {
        loader.override_global(SKB_OFFSETS_GLOBAL, skb_offsets, true);
    }
    if let Ok(sock_offsets) = &layouts.sock {
        loader.override_global(SOCK_OFFSETS_GLOBAL, sock_offsets, true);
    }
    let socket_clocks = match (&layouts.clocks, clock::tick_ns()) {
        (Ok(offsets), Some(tick)) => clock::socket_clocks(*offsets, tick, min_idle_gap_ns),
        (offsets, _) => {
            if layouts.sock.is_ok() {
                let why = match offsets {
                    Err(err) => format!("{err:#}"),
                    Ok(_) => "CLOCK_MONOTONIC_COARSE gives no resolution to take the kernel's \
                              tick from"
                        .to_owned(),
                };
                warn!(
                    error = why,
                    "each segment and send of a mail connection looks its state up (slower): \
                     the programs cannot read TCP's own clocks on this kernel"
                );
            }
            SocketClocks::unknown()
        }
    };
    loader.override_global(SOCKET_CLOCKS_GLOBAL, &socket_clocks, true);
    let retransmit_has_err = u8::from(layouts.retransmit_has_err);
    loader.override_global(RETRANSMIT_ERR_GLOBAL, &retransmit_has_err, true);
    for (spec, record) in PROBES.iter().zip(&layouts.records) {
        if let (Hook::Tracepoint { offsets_global, .. }, Ok(Some(offsets))) = (spec.hook, record) {
            loader.override_global(offsets_global, offsets, true);
        }
    }
    // The kernel programs log only rare diagnostics; they do it at the agent's own level.
    let kernel_log_level = kernel_log_level() as u8;
    loader.override_global(aya_log::LEVEL, &kernel_log_level, false);
    let mut ebpf = loader
        .load(PROBES_OBJECT)
        .map_err(|err| explain_load_error(anyhow::Error::from(err)))
        .context("loading the eBPF object (a kernel with BPF ring buffers: Linux 5.8 or later)")?;

    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(err) => {
            tracing::debug!(error = %err, "no kernel log map");
            None
        }
    };
    // aya's own BTF, for loading the BTF tracepoint and fentry programs.
    let aya_btf = aya::Btf::from_sys_fs().ok();
    let mut attached = Vec::with_capacity(PROBES.len());
    for (spec, record) in PROBES.iter().zip(&layouts.records) {
        let result = attach_probe(
            &mut ebpf,
            spec,
            record,
            &layouts,
            prefer_btf,
            aya_btf.as_ref(),
        );
        match result {
            Ok((kind, verified)) => {
                info!(
                    probe = spec.label,
                    kind = kind.as_str(),
                    verified_instructions = verified,
                    "attached"
                );
                attached.push(Attached {
                    label: spec.label,
                    kind: Some(kind),
                    verified_instructions: verified,
                });
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
                attached.push(Attached {
                    label: spec.label,
                    kind: None,
                    verified_instructions: 0,
                });
            }
        }
    }

    let mut take = |name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("the eBPF object has no {name} map"))
    };
    let events = RingBuf::try_from(take(EVENTS_MAP)?)?;
    let counters = KernelCounters(PerCpuArray::try_from(take(COUNTERS_MAP)?)?);
    let state = KernelState {
        connections: HashMap::try_from(take(CONNECTIONS_MAP)?)?,
        seeds: HashMap::try_from(take(SEEDS_MAP)?)?,
        seeding: Array::try_from(take(SEEDING_MAP)?)?,
        unreported: HashMap::try_from(take(UNREPORTED_MAP)?)?,
        can_adopt: layouts.sock.is_ok(),
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

/// Attaches one probe with the best hook kind this kernel allows: a tracepoint's BTF program
/// when preferred, its classic program when that is not possible; returns the kind used and
/// how many instructions the verifier walked.
fn attach_probe(
    ebpf: &mut Ebpf,
    spec: &ProbeSpec,
    record: &Result<Option<FieldOffsets>, String>,
    layouts: &KernelLayouts,
    prefer_btf: bool,
    btf: Option<&aya::Btf>,
) -> anyhow::Result<(HookKind, u32)> {
    match spec.hook {
        Hook::FEntry { function } => {
            if let Err(err) = &layouts.skb {
                bail!("no sk_buff layout from BTF: {err:#}");
            }
            let btf = btf.context("no kernel BTF")?;
            let program: &mut FEntry = program(ebpf, spec, HookKind::FEntry)?.try_into()?;
            program
                .load(function, btf)
                .map_err(|err| explain_load_error(err.into()))
                .context("loading the fentry program (needs BTF and BPF trampolines)")?;
            program.attach()?;
            Ok((HookKind::FEntry, verified_instructions(program.info())))
        }
        Hook::Tracepoint { category, name, .. } => {
            if prefer_btf {
                match attach_btf_tracepoint(ebpf, spec, name, btf) {
                    Ok(verified) => return Ok((HookKind::BtfTracepoint, verified)),
                    Err(err) => warn!(
                        probe = spec.label,
                        error = format!("{err:#}"),
                        "the BTF tracepoint did not attach: trying the classic tracepoint"
                    ),
                }
            }
            if let Err(missing) = record {
                bail!("{missing}");
            }
            let program: &mut TracePoint = program(ebpf, spec, HookKind::Tracepoint)?.try_into()?;
            program
                .load()
                .map_err(|err| explain_load_error(err.into()))?;
            program.attach(category, name)?;
            Ok((HookKind::Tracepoint, verified_instructions(program.info())))
        }
    }
}

fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    spec: &ProbeSpec,
    tracepoint: &str,
    btf: Option<&aya::Btf>,
) -> anyhow::Result<u32> {
    let btf = btf.context("no kernel BTF")?;
    let program: &mut BtfTracePoint = program(ebpf, spec, HookKind::BtfTracepoint)?.try_into()?;
    program
        .load(tracepoint, btf)
        .map_err(|err| explain_load_error(err.into()))?;
    program.attach()?;
    Ok(verified_instructions(program.info()))
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    spec: &ProbeSpec,
    kind: HookKind,
) -> anyhow::Result<&'a mut aya::programs::Program> {
    let name = spec.program(kind);
    ebpf.program_mut(name)
        .with_context(|| format!("no program {name} in the eBPF object"))
}

/// Says what a load failure means: EPERM is about privileges (or a hook this kernel does not
/// allow), not the verifier, which answers EACCES or EINVAL with its log.
fn explain_load_error(err: anyhow::Error) -> anyhow::Error {
    let errno = err
        .chain()
        .find_map(|cause| cause.downcast_ref::<std::io::Error>()?.raw_os_error());
    match errno {
        Some(libc::EPERM) => err.context(
            "not permitted: the agent needs root, or CAP_BPF and CAP_PERFMON (and \
             CAP_SYS_RESOURCE on kernels before 5.11); with those, this kernel does not allow \
             this kind of hook",
        ),
        _ => err.context("the verifier rejected the program (its log follows, if any)"),
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

/// The lowest and highest watched port, for the programs' first test.
fn port_range(ports: &PortMap) -> PortRange {
    let mut watched = ports.ports();
    let first = watched.next().unwrap_or(0);
    let (lowest, highest) = watched.fold((first, first), |(lo, hi), port| {
        (lo.min(port), hi.max(port))
    });
    PortRange { lowest, highest }
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
        // aya-log's map and level exist only while a program logs (none does today: a log
        // statement costs thousands of verified instructions); the agent forwards them if so.
        let maps = names_in("maps");
        let logs = maps.contains("AYA_LOGS");
        let expected_maps: BTreeSet<String> = idlecut_ebpf::MAPS
            .iter()
            .chain(logs.then_some(&"AYA_LOGS"))
            .map(|name| (*name).to_owned())
            .collect();
        assert_eq!(maps, expected_maps);
        let globals = names_in(".rodata");
        let expected_globals: BTreeSet<String> = idlecut_ebpf::GLOBALS
            .iter()
            .chain(globals.contains(aya_log::LEVEL).then_some(&aya_log::LEVEL))
            .map(|name| (*name).to_owned())
            .collect();
        assert_eq!(globals, expected_globals);
    }

    #[test]
    fn bitmap_has_exactly_the_configured_ports() {
        let ports = idlecut_core::settings::parse_ports("25=smtp,143=imap,65535=top").unwrap();
        let bitmap = port_bitmap(&ports);
        let set: Vec<u16> = (0..=u16::MAX)
            .filter(|&p| bitmap[usize::from(p >> 6)] & (1 << (p & 63)) != 0)
            .collect();
        assert_eq!(set, [25, 143, 65535]);
        assert_eq!(
            port_range(&ports),
            PortRange {
                lowest: 25,
                highest: 65535
            }
        );
        let mail = idlecut_core::settings::parse_ports("993=imaps,143=imap,4190=sieve").unwrap();
        let range = port_range(&mail);
        assert_eq!((range.lowest, range.highest), (143, 4190));
        assert!(range.contains(993) && !range.contains(8080) && !range.contains(25));
    }
}
