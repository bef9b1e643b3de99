//! The kernel end of the data flow: loads the embedded eBPF object, fills in its globals
//! (watched ports, tracepoint field offsets), attaches one program per tracepoint, and hands
//! out the ring buffer and counters. The only module that touches the kernel.

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use idlecut_ebpf::{
    CONNECTIONS_MAP, COUNTERS_MAP, EVENTS_MAP, FieldOffsets, MIN_IDLE_GAP_GLOBAL, PORTS_GLOBAL,
    counter, offsets_global,
};
use tracing::{info, warn};

use crate::{
    config::Config,
    tracefs::{self, Format, Needs},
};

/// The eBPF object built by build.rs from the `idlecut-ebpf` crate.
static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/idlecut-probes"));

/// A kernel program and the tracepoint it attaches to.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    /// `category:name`, the `probe` label of `idlecut_probe_attached`.
    pub label: &'static str,
    pub category: &'static str,
    pub name: &'static str,
    /// The program's function name in the object.
    pub program: &'static str,
    pub offsets_global: &'static str,
    needs: Needs,
    /// Without it the agent has nothing to report: failing to attach it is fatal.
    pub required: bool,
    /// What is lost when it is missing, for the warning.
    pub feature: &'static str,
}

pub const PROBES: [ProbeSpec; 6] = [
    ProbeSpec {
        label: "sock:inet_sock_set_state",
        category: "sock",
        name: "inet_sock_set_state",
        program: "inet_sock_set_state",
        offsets_global: offsets_global::INET_SOCK_SET_STATE,
        needs: Needs::StateChange,
        required: true,
        feature: "connection opens and closes",
    },
    ProbeSpec {
        label: "tcp:tcp_probe",
        category: "tcp",
        name: "tcp_probe",
        program: "tcp_probe",
        offsets_global: offsets_global::TCP_PROBE,
        needs: Needs::SocketAndPorts,
        required: false,
        feature: "idle gaps",
    },
    ProbeSpec {
        label: "tcp:tcp_receive_reset",
        category: "tcp",
        name: "tcp_receive_reset",
        program: "tcp_receive_reset",
        offsets_global: offsets_global::TCP_RECEIVE_RESET,
        needs: Needs::SocketAndPorts,
        required: false,
        feature: "resets received (endings fall back to the reported errno)",
    },
    ProbeSpec {
        label: "tcp:tcp_send_reset",
        category: "tcp",
        name: "tcp_send_reset",
        program: "tcp_send_reset",
        offsets_global: offsets_global::TCP_SEND_RESET,
        needs: Needs::SocketAndAnyPorts,
        required: false,
        feature: "resets sent",
    },
    ProbeSpec {
        label: "tcp:tcp_retransmit_skb",
        category: "tcp",
        name: "tcp_retransmit_skb",
        program: "tcp_retransmit_skb",
        offsets_global: offsets_global::TCP_RETRANSMIT_SKB,
        needs: Needs::SocketAndPorts,
        required: false,
        feature: "retransmissions",
    },
    ProbeSpec {
        label: "sock:inet_sk_error_report",
        category: "sock",
        name: "inet_sk_error_report",
        program: "inet_sk_error_report",
        offsets_global: offsets_global::INET_SK_ERROR_REPORT,
        needs: Needs::ErrorReport,
        required: false,
        feature: "timeouts and errors as endings",
    },
];

/// The loaded object: programs stay attached while this lives.
pub struct Probes {
    pub ebpf: Ebpf,
    pub events: RingBuf<MapData>,
    pub counters: KernelCounters,
    /// Each probe's label and whether it attached.
    pub attached: Vec<(&'static str, bool)>,
}

pub struct KernelCounters(PerCpuArray<MapData, u64>);

impl KernelCounters {
    /// The running total of one of the kernel's counters, summed over CPUs.
    pub fn total(&self, index: u32) -> anyhow::Result<u64> {
        let values = self
            .0
            .get(&index, 0)
            .with_context(|| format!("reading kernel counter {index}"))?;
        Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
    }

    pub fn ringbuf_full(&self) -> anyhow::Result<u64> {
        self.total(counter::RINGBUF_FULL)
    }

    pub fn state_insert_failed(&self) -> anyhow::Result<u64> {
        self.total(counter::STATE_INSERT_FAILED)
    }
}

pub fn load(config: &Config) -> anyhow::Result<Probes> {
    if PROBES_OBJECT.is_empty() {
        bail!(
            "this binary was built without its eBPF programs (AYA_BUILD_SKIP was set); \
             build it with `./x build`"
        );
    }
    let tracefs = tracefs::locate_or_mount()?;
    let offsets: Vec<(ProbeSpec, Result<FieldOffsets, String>)> = PROBES
        .iter()
        .map(|spec| {
            let offsets = Format::read(&tracefs, spec.category, spec.name)
                .map_err(|err| format!("{err:#}"))
                .and_then(|format| tracefs::offsets_for(&format, spec.needs));
            (*spec, offsets)
        })
        .collect();

    raise_memlock_limit();
    let ports = config.ports.bitmap();
    let min_idle_gap_ns = u64::try_from(config.min_idle_gap.as_nanos()).unwrap_or(u64::MAX);
    let mut loader = EbpfLoader::new();
    loader
        .override_global(PORTS_GLOBAL, &ports, true)
        .override_global(MIN_IDLE_GAP_GLOBAL, &min_idle_gap_ns, true)
        .map_max_entries(EVENTS_MAP, config.ring_buffer_bytes)
        .map_max_entries(CONNECTIONS_MAP, config.max_connections);
    for (spec, offsets) in &offsets {
        if let Ok(offsets) = offsets {
            loader.override_global(spec.offsets_global, offsets, true);
        }
    }
    let mut ebpf = loader.load(PROBES_OBJECT).context(
        "loading the eBPF programs (the agent needs root, or CAP_BPF, CAP_PERFMON and \
         CAP_SYS_RESOURCE, and a kernel with BPF ring buffers: Linux 5.8 or later)",
    )?;

    let mut attached = Vec::with_capacity(PROBES.len());
    for (spec, offsets) in &offsets {
        let result = match offsets {
            Err(missing) => Err(anyhow::anyhow!("tracepoint format: {missing}")),
            Ok(_) => attach(&mut ebpf, spec),
        };
        match result {
            Ok(()) => {
                info!(probe = spec.label, "attached");
                attached.push((spec.label, true));
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
                attached.push((spec.label, false));
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
    Ok(Probes {
        ebpf,
        events,
        counters,
        attached,
    })
}

fn attach(ebpf: &mut Ebpf, spec: &ProbeSpec) -> anyhow::Result<()> {
    let program: &mut TracePoint = ebpf
        .program_mut(spec.program)
        .with_context(|| format!("no program {} in the eBPF object", spec.program))?
        .try_into()?;
    program
        .load()
        .context("the verifier rejected the program")?;
    program.attach(spec.category, spec.name)?;
    Ok(())
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
