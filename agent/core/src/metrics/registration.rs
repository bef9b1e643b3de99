//! The families the agent exports, registered with their names, units and help texts: the
//! metric contract in one place (README.md lists it). Recording into them is `super`'s.

use super::*;

impl Metrics {
    pub fn new(services: impl IntoIterator<Item = Arc<str>>) -> Self {
        let mut registry = Registry::with_prefix("idlecut");
        let opened = register(
            &mut registry,
            "connections_opened",
            "Connections that reached ESTABLISHED on a watched port",
            Family::<PathKey, Counter>::default(),
        );
        let discovered = register(
            &mut registry,
            "connections_discovered",
            "Connections the agent did not see open: found by a scan of the kernel's socket tables (at start-up, or missed), or met only at their close",
            Family::<PathKey, Counter>::default(),
        );
        let keepalive = register(
            &mut registry,
            "keepalive_connections",
            "Open connections by TCP keepalive setting: off, below_2h (probes more often than RFC 1122 and RFC 5383 allow), 2h_or_more",
            Family::<KeepaliveLabels, Gauge>::default(),
        );
        let keepalive_interval = register_seconds(
            &mut registry,
            "path_keepalive_interval",
            "Typical interval of the application's own keepalives on the path (survived idle gaps that are clearly periodic)",
            Family::<PathKey, GaugeF64>::default(),
        );
        let closed = register(
            &mut registry,
            "connections_closed",
            "Connections that ended, by how they ended (fin, reset_received, reset_sent, timeout, error, unknown)",
            Family::<EndLabels, Counter>::default(),
        );
        let open = register(
            &mut registry,
            "connections_open",
            "Connections open now (seen opening, or found by a scan)",
            Family::<ServiceLabels, Gauge>::default(),
        );
        let duration: Family<EndLabels, Histogram, fn() -> Histogram> = register_seconds(
            &mut registry,
            "connection_duration",
            "Lifetime of connections whose start was seen, by how they ended",
            Family::new_with_constructor(duration_histogram),
        );
        let resets = register(
            &mut registry,
            "resets",
            "TCP resets on watched connections, received from the path or sent by this host",
            Family::<ResetLabels, Counter>::default(),
        );
        let retransmits = register(
            &mut registry,
            "retransmits",
            "Segments retransmitted on watched connections",
            Family::<PathKey, Counter>::default(),
        );
        let mss_lowered = register(
            &mut registry,
            "mss_lowered",
            "Stalls that ended only once the kernel's MTU probing (net.ipv4.tcp_mtu_probing) lowered the connection's MSS: black holes of the path's MTU that the connection survived",
            Family::<PathKey, Counter>::default(),
        );
        let idle_gap: Family<PathKey, Histogram, fn() -> Histogram> = register_seconds(
            &mut registry,
            "idle_gap",
            "Idle gaps (neither side sending) that the path let through: the peer was heard again",
            Family::new_with_constructor(duration_histogram),
        );
        let cuts = register(
            &mut registry,
            "cuts",
            "Connections the path cut after an idle gap, by signature (reset, blackhole, icmp), and those lost in a PMTU black hole (pmtu: not idle cuts)",
            Family::<CutLabels, Counter>::default(),
        );
        let reset_cuts = register(
            &mut registry,
            "reset_cuts",
            "Connections the path cut with a RST after an idle gap (idlecut_cuts_total{signature=\"reset\"}), by who sent the RST: peer, path (a middlebox forged it) or unknown",
            Family::<ResetCutLabels, Counter>::default(),
        );
        let idle_before_cut: Family<CutLabels, CutHistogram, fn() -> CutHistogram> =
            register_seconds(
                &mut registry,
                "idle_before_cut",
                "How long connections had been idle when the path cut them; exemplars name the \
                 connection (local, remote) as /api/v1/cuts lists it",
                Family::new_with_constructor(cut_histogram),
            );
        let cutoff_lower = register_seconds(
            &mut registry,
            "path_cutoff_lower",
            "The path cuts idle connections after more than this (longest survived idle gap)",
            Family::<PathKey, GaugeF64>::default(),
        );
        let cutoff_upper = register_seconds(
            &mut registry,
            "path_cutoff_upper",
            "The path cuts idle connections after at most this (shortest idle gap followed by a cut); absent until a cut",
            Family::<PathKey, GaugeF64>::default(),
        );
        let req5_violation = register(
            &mut registry,
            "path_req5_violation",
            "1 when the path cut at least --min-cuts connections idle for less than --req5-threshold (RFC 5382 REQ-5: 7440 s)",
            Family::<PathKey, Gauge>::default(),
        );
        let duration_limit = register_seconds(
            &mut registry,
            "path_duration_limit",
            "Age at which active connections on the path die, when such deaths cluster (RFC 5383 section 4.1)",
            Family::<PathKey, GaugeF64>::default(),
        );
        let stall: Family<StallLabels, Histogram, fn() -> Histogram> = register_seconds(
            &mut registry,
            "stall",
            "Retransmissions without hearing from the peer, by outcome (recovered, fatal)",
            Family::new_with_constructor(duration_histogram),
        );
        let icmp_errors = register(
            &mut registry,
            "icmp_errors",
            "ICMP errors received for watched connections, by ICMP type and code",
            Family::<IcmpLabels, Counter>::default(),
        );
        let icmp_soft_errors = register(
            &mut registry,
            "icmp_soft_errors",
            "Watched connections that retransmitted through an ICMP error (the soft error it left on the socket, by errno: EHOSTUNREACH for IPv4 host unreachable or administratively prohibited, ENETUNREACH, EACCES for IPv6 administratively prohibited...); counted on every kernel, with or without the ICMP probe",
            Family::<SoftIcmpLabels, Counter>::default(),
        );
        let events_lost = register(
            &mut registry,
            "events_lost",
            "Kernel events lost: the ring buffer was full (raise --ring-buffer-size), or the kernel skipped a program run because another BPF program was running on that CPU",
            Counter::default(),
        );
        let ends_delayed = register(
            &mut registry,
            "ends_delayed",
            "Connection ends the ring buffer had no room for, which waited in the kernel until the agent took them (none lost; a ring buffer too small for bursts)",
            Counter::default(),
        );
        let events_malformed = register(
            &mut registry,
            "events_malformed",
            "Kernel events the agent could not decode, skipped",
            Counter::default(),
        );
        let tracked_connections = register(
            &mut registry,
            "tracked_connections",
            "Connections the agent follows now",
            Gauge::default(),
        );
        let probe_attached = register(
            &mut registry,
            "probe_attached",
            "1 when the kernel program on this tracepoint is attached, 0 when this kernel lacks it",
            Family::<ProbeLabels, Gauge>::default(),
        );
        let probe_verified_instructions = register(
            &mut registry,
            "probe_verified_instructions",
            "Instructions the kernel's verifier walked for each attached program: its size and worst-case path",
            Family::<ProbeLabels, Gauge>::default(),
        );
        let probe_hook = register(
            &mut registry,
            "probe_hook",
            "1 for the kind of kernel hook that serves each attached probe: tp_btf (BTF tracepoint), tracepoint (classic) or fentry",
            Family::<ProbeHookLabels, Gauge>::default(),
        );
        let untracked_closes = register(
            &mut registry,
            "untracked_closes",
            "Connections that closed without the agent having seen them open, before a scan had read their namespace (older than the agent)",
            Counter::default(),
        );
        let kernel_state_evictions = register(
            &mut registry,
            "kernel_state_evictions",
            "Connections whose kernel state was evicted under LRU pressure (raise --max-connections)",
            Counter::default(),
        );
        let kernel_state_insert_failures = register(
            &mut registry,
            "kernel_state_insert_failures",
            "Connections the kernel could not start tracking",
            Counter::default(),
        );
        let paths = register(
            &mut registry,
            "paths",
            "Paths with their own label (at most --max-paths; the rest are path=\"other\")",
            Gauge::default(),
        );
        registry.register(
            "build",
            "Version of the running agent",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let node = node::NodeMetrics::register(&mut registry);
        // Every service and role shows an open-connection count from the start, even at 0, so
        // that dashboards and alerts see the series before the first connection.
        for service in services {
            for role in [Role::Server, Role::Client] {
                open.get_or_create(&ServiceLabels {
                    service: service.clone(),
                    role,
                })
                .set(0);
            }
        }
        Self {
            registry,
            opened,
            discovered,
            keepalive,
            keepalive_interval,
            closed,
            open,
            duration,
            resets,
            retransmits,
            mss_lowered,
            idle_gap,
            cuts,
            reset_cuts,
            idle_before_cut,
            cutoff_lower,
            cutoff_upper,
            req5_violation,
            duration_limit,
            stall,
            icmp_errors,
            icmp_soft_errors,
            events_lost,
            ends_delayed,
            events_malformed,
            tracked_connections,
            probe_attached,
            probe_verified_instructions,
            probe_hook,
            untracked_closes,
            kernel_state_evictions,
            kernel_state_insert_failures,
            paths,
            node,
        }
    }
}

/// Registers `metric` under `name` and returns it, for the caller to keep. Every family of the
/// agent's registry is registered through this or `register_seconds`, the scheduled checks'
/// (`idlecut_check::scheduled`) too.
pub fn register<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Like `register`, for a metric in seconds (`_seconds` is appended to its name).
pub fn register_seconds<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register_with_unit(name, help, Unit::Seconds, metric.clone());
    metric
}

pub(super) fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

pub(super) type CutHistogram = HistogramWithExemplars<CutExemplar>;

pub(super) fn cut_histogram() -> CutHistogram {
    HistogramWithExemplars::new(DURATION_BUCKETS.into_iter())
}
