//! Prometheus metrics: the exporter end of the data flow. Names and labels here are a contract
//! (dashboards and alerts depend on them); README.md lists them.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

mod exposition;
mod labels;

use self::labels::{
    CutExemplar, CutLabels, EndLabels, IcmpLabels, KeepaliveLabels, ResetCutLabels, ResetLabels,
    ServiceLabels, StallLabels, VersionLabels,
};
pub use self::{
    exposition::without_exemplars,
    labels::{ProbeHookLabels, ProbeLabels},
};

type GaugeF64 = Gauge<f64, AtomicU64>;

use prometheus_client::{
    metrics::{
        counter::Counter, exemplar::HistogramWithExemplars, family::Family, gauge::Gauge,
        histogram::Histogram, info::Info,
    },
    registry::{Metric, Registry, Unit},
};

use crate::{
    events::Nanos,
    inference::{PathReport, Verdict},
    model::Update,
    paths::PathKey,
    vocabulary::{Direction, End, KeepaliveSetting, ResetOrigin, Role, Signature},
};

/// Histogram edges in seconds for durations and idle gaps: fine below a minute, then the
/// timeouts real middleboxes use (AWS 350 s, Azure 240 s, GCP 600/1200 s...) and the RFC 5382
/// REQ-5 floor of 7440 s.
pub const DURATION_BUCKETS: [f64; 23] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 240.0, 300.0, 350.0, 600.0, 900.0, 1200.0, 1800.0,
    3600.0, 7200.0, 7440.0, 14400.0, 28800.0, 43200.0, 86400.0, 172800.0,
];

/// Registers `metric` under `name` and returns it, for the caller to keep.
fn register<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Like `register`, for a metric in seconds (`_seconds` is appended to its name).
fn register_seconds<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register_with_unit(name, help, Unit::Seconds, metric.clone());
    metric
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

type CutHistogram = HistogramWithExemplars<CutExemplar>;

fn cut_histogram() -> CutHistogram {
    HistogramWithExemplars::new(DURATION_BUCKETS.into_iter())
}

/// Every metric the agent exports, and the registry that encodes them.
pub struct Metrics {
    pub registry: Registry,
    opened: Family<PathKey, Counter>,
    discovered: Family<PathKey, Counter>,
    keepalive: Family<KeepaliveLabels, Gauge>,
    keepalive_interval: Family<PathKey, GaugeF64>,
    closed: Family<EndLabels, Counter>,
    open: Family<ServiceLabels, Gauge>,
    duration: Family<EndLabels, Histogram, fn() -> Histogram>,
    resets: Family<ResetLabels, Counter>,
    retransmits: Family<PathKey, Counter>,
    idle_gap: Family<PathKey, Histogram, fn() -> Histogram>,
    cuts: Family<CutLabels, Counter>,
    reset_cuts: Family<ResetCutLabels, Counter>,
    idle_before_cut: Family<CutLabels, CutHistogram, fn() -> CutHistogram>,
    cutoff_lower: Family<PathKey, GaugeF64>,
    cutoff_upper: Family<PathKey, GaugeF64>,
    req5_violation: Family<PathKey, Gauge>,
    duration_limit: Family<PathKey, GaugeF64>,
    stall: Family<StallLabels, Histogram, fn() -> Histogram>,
    icmp_errors: Family<IcmpLabels, Counter>,
    pub events_lost: Counter,
    pub ends_delayed: Counter,
    pub events_malformed: Counter,
    pub tracked_connections: Gauge,
    pub probe_attached: Family<ProbeLabels, Gauge>,
    pub probe_verified_instructions: Family<ProbeLabels, Gauge>,
    pub probe_hook: Family<ProbeHookLabels, Gauge>,
    pub untracked_closes: Counter,
    pub kernel_state_evictions: Counter,
    pub kernel_state_insert_failures: Counter,
    pub paths: Gauge,
}

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
        let idle_gap: Family<PathKey, Histogram, fn() -> Histogram> = register_seconds(
            &mut registry,
            "idle_gap",
            "Idle gaps (neither side sending) that the path let through: the peer was heard again",
            Family::new_with_constructor(duration_histogram),
        );
        let cuts = register(
            &mut registry,
            "cuts",
            "Connections the path cut after an idle gap, by signature (reset, blackhole, icmp)",
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
        }
    }

    /// Records what the connection model concluded; `key` is the path of the update's
    /// connection (None for updates about no connection).
    pub fn record(&self, key: Option<&PathKey>, update: &Update) {
        let Some(key) = key else {
            match update {
                Update::UntrackedClose => {
                    self.untracked_closes.inc();
                }
                Update::KernelStateEvicted => {
                    self.kernel_state_evictions.inc();
                }
                _ => {}
            }
            return;
        };
        match update {
            Update::Opened(_) => {
                self.open_gauge(key).inc();
                self.opened.get_or_create(key).inc();
            }
            Update::Discovered(_) => {
                self.open_gauge(key).inc();
                self.discovered.get_or_create(key).inc();
            }
            Update::KeepaliveChanged { from, to, .. } => {
                if let Some(from) = from {
                    self.keepalive_gauge(key, *from).dec();
                }
                self.keepalive_gauge(key, *to).inc();
            }
            Update::Closed {
                end,
                duration,
                keepalive,
                ..
            } => {
                self.open_gauge(key).dec();
                if let Some(setting) = keepalive {
                    self.keepalive_gauge(key, *setting).dec();
                }
                let labels = EndLabels {
                    path: key.clone(),
                    end: *end,
                };
                self.closed.get_or_create(&labels).inc();
                if let Some(duration) = duration {
                    self.duration
                        .get_or_create(&labels)
                        .observe(seconds(*duration));
                }
            }
            Update::Reset(_, direction, verdict) => {
                self.resets
                    .get_or_create(&ResetLabels {
                        path: key.clone(),
                        direction: *direction,
                        origin: verdict.origin,
                    })
                    .inc();
            }
            Update::Retransmit(_) => {
                self.retransmits.get_or_create(key).inc();
            }
            Update::IdleGapSurvived(_, gap) => {
                self.idle_gap.get_or_create(key).observe(seconds(*gap));
            }
            Update::Cut {
                gap,
                signature,
                context,
                ..
            } => {
                let labels = CutLabels {
                    path: key.clone(),
                    signature: *signature,
                };
                self.cuts.get_or_create(&labels).inc();
                if *signature == Signature::Reset {
                    let origin = context
                        .reset
                        .map_or(ResetOrigin::Unknown, |verdict| verdict.origin);
                    self.reset_cuts
                        .get_or_create(&ResetCutLabels {
                            path: key.clone(),
                            origin,
                        })
                        .inc();
                }
                let exemplar = context.endpoints.map(|endpoints| CutExemplar {
                    local: endpoints.local.to_string(),
                    remote: endpoints.remote.to_string(),
                });
                // Recorded within a tick of the cut: now is its time, to the scrape's precision.
                self.idle_before_cut.get_or_create(&labels).observe(
                    seconds(*gap),
                    exemplar,
                    Some(std::time::SystemTime::now()),
                );
            }
            Update::Stall {
                duration, outcome, ..
            } => {
                self.stall
                    .get_or_create(&StallLabels {
                        path: key.clone(),
                        outcome: *outcome,
                    })
                    .observe(seconds(*duration));
            }
            Update::IcmpError {
                icmp_type, code, ..
            } => {
                self.icmp_errors
                    .get_or_create(&IcmpLabels {
                        path: key.clone(),
                        r#type: *icmp_type,
                        code: *code,
                    })
                    .inc();
            }
            Update::DiedWhileActive { .. }
            | Update::UntrackedClose
            | Update::KernelStateEvicted => {}
        }
    }

    /// Creates a new path's event counters at 0 (every signature, direction and end), so that
    /// `rate()` and `increase()` see its first cut, reset or close.
    pub fn init_path(&self, key: &PathKey) {
        // Creating the series is the point; the guards are dropped at once.
        for signature in Signature::ALL {
            let _ = self.cuts.get_or_create(&CutLabels {
                path: key.clone(),
                signature,
            });
        }
        for origin in [ResetOrigin::Peer, ResetOrigin::Path, ResetOrigin::Unknown] {
            let _ = self.reset_cuts.get_or_create(&ResetCutLabels {
                path: key.clone(),
                origin,
            });
        }
        let origins = ResetOrigin::ALL.into_iter().map(|origin| {
            let direction = if origin == ResetOrigin::Local {
                Direction::Sent
            } else {
                Direction::Received
            };
            (direction, origin)
        });
        for (direction, origin) in origins {
            let _ = self.resets.get_or_create(&ResetLabels {
                path: key.clone(),
                direction,
                origin,
            });
        }
        for end in End::ALL {
            let _ = self.closed.get_or_create(&EndLabels {
                path: key.clone(),
                end,
            });
        }
    }

    /// Sets a path's estimate gauges from its report; a gauge whose value is unknown is
    /// removed rather than set to a number that would mean something.
    pub fn set_path_estimates(&self, report: &PathReport) {
        let labels = PathKey {
            service: report.service.clone(),
            role: report.role,
            path: report.path.clone(),
        };
        for (family, value) in [
            (&self.cutoff_lower, report.cutoff_lower_seconds),
            (&self.cutoff_upper, report.cutoff_upper_seconds),
            (&self.duration_limit, report.duration_limit_seconds),
            (&self.keepalive_interval, report.keepalive_interval_seconds),
        ] {
            match value {
                Some(value) => {
                    family.get_or_create(&labels).set(value);
                }
                None => {
                    family.remove(&labels);
                }
            }
        }
        self.req5_violation
            .get_or_create(&labels)
            .set(i64::from(report.verdict == Verdict::ViolatesReq5));
    }

    fn open_gauge(&self, key: &PathKey) -> impl std::ops::Deref<Target = Gauge> + '_ {
        self.open.get_or_create(&ServiceLabels {
            service: key.service.clone(),
            role: key.role,
        })
    }

    fn keepalive_gauge(
        &self,
        key: &PathKey,
        setting: KeepaliveSetting,
    ) -> impl std::ops::Deref<Target = Gauge> + '_ {
        self.keepalive.get_or_create(&KeepaliveLabels {
            path: key.clone(),
            setting,
        })
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn seconds(ns: Nanos) -> f64 {
    // Precision loss past 2^53 ns (104 days) is irrelevant for a histogram.
    #[expect(clippy::cast_precision_loss, reason = "histogram resolution")]
    let seconds = ns as f64 / 1e9;
    seconds
}

/// Increases a counter to a kernel-side running total (the kernel's counters only grow).
#[derive(Debug, Default)]
pub struct KernelCounterSync {
    last: AtomicU64,
}

impl KernelCounterSync {
    pub fn sync(&self, counter: &Counter, kernel_total: u64) {
        let last = self.last.swap(kernel_total, Ordering::Relaxed);
        if kernel_total > last {
            counter.inc_by(kernel_total - last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::ResetTtls,
        inference::{CutCounts, PathReport, ResetOrigins},
        model::{CutContext, Identity, ResetVerdict},
        paths::PathTable,
    };

    fn identity(remote: &str) -> Identity {
        Identity {
            service: Arc::from("imap"),
            role: Role::Client,
            remote: remote.parse().unwrap(),
        }
    }

    #[test]
    fn buckets_include_the_contract_edges() {
        for edge in [
            60.0, 240.0, 300.0, 350.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0, 7200.0, 7440.0,
            14400.0, 28800.0, 86400.0,
        ] {
            assert!(DURATION_BUCKETS.contains(&edge), "{edge} missing");
        }
        assert!(DURATION_BUCKETS.is_sorted());
    }

    #[test]
    fn exposition_has_the_contract_names_and_labels() {
        let metrics = Metrics::new([Arc::from("imap")]);
        let mut paths = PathTable::new(24, 48, 1);
        let mut record = |update: &Update| {
            let key = update.identity().map(|identity| {
                let (key, new) = paths.key(identity);
                if new {
                    metrics.init_path(&key);
                }
                key
            });
            metrics.record(key.as_ref(), update);
        };
        for update in [
            Update::Opened(identity("192.0.2.1")),
            Update::Opened(identity("198.51.100.1")),
            Update::Reset(
                identity("192.0.2.1"),
                Direction::Received,
                ResetVerdict::received(ResetTtls {
                    peer: Some(63),
                    reset: Some(64),
                }),
            ),
            Update::Closed {
                identity: identity("192.0.2.1"),
                end: End::ResetReceived,
                duration: Some(350_000_000_000),
                keepalive: None,
            },
            Update::Cut {
                identity: identity("192.0.2.1"),
                gap: 300_000_000_000,
                signature: Signature::Reset,
                context: CutContext {
                    endpoints: Some(crate::events::Endpoints {
                        local: "10.0.0.2:40000".parse().unwrap(),
                        remote: "192.0.2.1:143".parse().unwrap(),
                    }),
                    reset: Some(ResetVerdict::received(ResetTtls {
                        peer: Some(63),
                        reset: Some(64),
                    })),
                    ..CutContext::default()
                },
            },
            Update::IcmpError {
                identity: identity("192.0.2.1"),
                icmp_type: 3,
                code: 1,
            },
        ] {
            record(&update);
        }
        metrics.paths.set(1);
        let text = metrics.encode().unwrap();
        for line in [
            r#"idlecut_connections_opened_total{service="imap",role="client",path="192.0.2.0/24"} 1"#,
            r#"idlecut_connections_opened_total{service="imap",role="client",path="other"} 1"#,
            r#"idlecut_connections_closed_total{service="imap",role="client",path="192.0.2.0/24",end="reset_received"} 1"#,
            r#"idlecut_connections_open{service="imap",role="client"} 1"#,
            r#"idlecut_connections_open{service="imap",role="server"} 0"#,
            r#"idlecut_resets_total{service="imap",role="client",path="192.0.2.0/24",direction="received",origin="path"} 1"#,
            r#"idlecut_connection_duration_seconds_bucket{le="350.0",service="imap",role="client",path="192.0.2.0/24",end="reset_received"} 1"#,
            r#"idlecut_connection_duration_seconds_bucket{le="300.0",service="imap",role="client",path="192.0.2.0/24",end="reset_received"} 0"#,
            r#"idlecut_build_info{version=""#,
            "idlecut_paths 1",
            r#"idlecut_cuts_total{service="imap",role="client",path="192.0.2.0/24",signature="reset"} 1"#,
            r#"idlecut_idle_before_cut_seconds_bucket{le="300.0",service="imap",role="client",path="192.0.2.0/24",signature="reset"} 1"#,
            r#"idlecut_icmp_errors_total{service="imap",role="client",path="192.0.2.0/24",type="3",code="1"} 1"#,
            // A path's counters exist from its first connection on, at 0.
            r#"idlecut_cuts_total{service="imap",role="client",path="192.0.2.0/24",signature="blackhole"} 0"#,
            r#"idlecut_resets_total{service="imap",role="client",path="192.0.2.0/24",direction="sent",origin="local"} 0"#,
            r#"idlecut_resets_total{service="imap",role="client",path="192.0.2.0/24",direction="received",origin="peer"} 0"#,
            r#"idlecut_connections_closed_total{service="imap",role="client",path="192.0.2.0/24",end="timeout"} 0"#,
            // The cut's connection, as /api/v1/cuts lists it.
            r#"idlecut_idle_before_cut_seconds_bucket{le="300.0",service="imap",role="client",path="192.0.2.0/24",signature="reset"} 1 # {local="10.0.0.2:40000",remote="192.0.2.1:143"} 300.0 "#,
            r#"idlecut_reset_cuts_total{service="imap",role="client",path="192.0.2.0/24",origin="path"} 1"#,
            r#"idlecut_reset_cuts_total{service="imap",role="client",path="192.0.2.0/24",origin="peer"} 0"#,
            "# EOF",
        ] {
            assert!(text.contains(line), "missing {line}\nin\n{text}");
        }
        let plain = without_exemplars(&text);
        assert!(!plain.contains("# {"), "{plain}");
        assert!(plain.contains(
            r#"idlecut_idle_before_cut_seconds_bucket{le="300.0",service="imap",role="client",path="192.0.2.0/24",signature="reset"} 1
"#
        ));
        assert_eq!(plain.lines().count(), text.lines().count());
    }

    #[test]
    fn unknown_estimates_are_absent_not_zero() {
        let metrics = Metrics::new([Arc::from("imap")]);
        let mut report = PathReport {
            service: Arc::from("imap"),
            role: Role::Client,
            path: Arc::from("192.0.2.0/24"),
            open_connections: 0,
            survived_gaps: 1,
            longest_survived_gap_seconds: Some(120.0),
            cuts: CutCounts::default(),
            cuts_below_req5: 0,
            cutoff_lower_seconds: Some(120.0),
            cutoff_upper_seconds: Some(350.0),
            verdict: Verdict::ViolatesReq5,
            duration_limit_seconds: None,
            keepalive_interval_seconds: None,
            resets_received: ResetOrigins::default(),
            forged_reset: None,
            explanation: String::new(),
            active_checks: Vec::new(),
        };
        metrics.set_path_estimates(&report);
        let text = metrics.encode().unwrap();
        assert!(text.contains(r#"idlecut_path_cutoff_upper_seconds{service="imap",role="client",path="192.0.2.0/24"} 350.0"#), "{text}");
        assert!(
            text.contains(
                r#"idlecut_path_req5_violation{service="imap",role="client",path="192.0.2.0/24"} 1"#
            ),
            "{text}"
        );
        assert!(
            !text.contains("idlecut_path_duration_limit_seconds{"),
            "{text}"
        );
        report.cutoff_upper_seconds = None;
        metrics.set_path_estimates(&report);
        assert!(
            !metrics
                .encode()
                .unwrap()
                .contains("idlecut_path_cutoff_upper_seconds{")
        );
    }

    #[test]
    fn kernel_counters_are_followed_by_deltas() {
        let counter = Counter::default();
        let sync = KernelCounterSync::default();
        sync.sync(&counter, 5);
        sync.sync(&counter, 5);
        sync.sync(&counter, 9);
        assert_eq!(counter.get(), 9);
    }
}
