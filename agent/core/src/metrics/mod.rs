//! Prometheus metrics: the exporter end of the data flow. Names and labels here are a contract
//! (dashboards and alerts depend on them); README.md lists them.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

mod exposition;
mod labels;
mod node;
mod registration;

use self::labels::{
    CutExemplar, CutLabels, EndLabels, IcmpLabels, KeepaliveLabels, ResetCutLabels, ResetLabels,
    ServiceLabels, SoftIcmpLabels, StallLabels, VersionLabels,
};
use self::registration::CutHistogram;
pub use self::{
    exposition::without_exemplars,
    labels::{ProbeHookLabels, ProbeLabels},
    registration::{register, register_seconds},
};

/// A gauge of seconds and other fractions.
pub type GaugeF64 = Gauge<f64, AtomicU64>;

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
    model::{Update, icmp_errno_name},
    paths::PathKey,
};
use idlecut_api::vocabulary::{Direction, End, KeepaliveSetting, ResetOrigin, Role, Signature};

/// Histogram edges in seconds for durations and idle gaps: fine below a minute, then the
/// timeouts real middleboxes use (AWS 350 s, Azure 240 s, GCP 600/1200 s...) and the RFC 5382
/// REQ-5 floor of 7440 s.
pub const DURATION_BUCKETS: [f64; 23] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 240.0, 300.0, 350.0, 600.0, 900.0, 1200.0, 1800.0,
    3600.0, 7200.0, 7440.0, 14400.0, 28800.0, 43200.0, 86400.0, 172800.0,
];

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
    mss_lowered: Family<PathKey, Counter>,
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
    icmp_soft_errors: Family<SoftIcmpLabels, Counter>,
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
    /// The node's own idle timeouts (`idlecut_host_*`).
    pub node: node::NodeMetrics,
}

impl Metrics {
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
            Update::MssLowered { .. } => {
                self.mss_lowered.get_or_create(key).inc();
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
                let pod = context
                    .owner
                    .as_ref()
                    .and_then(|owner| owner.pod.as_ref())
                    .map(|pod| match (&pod.namespace, &pod.pod) {
                        (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
                        // Not named (the kubelet's logs not mounted): its UID still says which.
                        _ => pod.uid.clone(),
                    });
                let exemplar = context.endpoints.map(|endpoints| {
                    CutExemplar::new(
                        endpoints.local.to_string(),
                        endpoints.remote.to_string(),
                        pod,
                    )
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
            Update::SoftIcmpError { errno, .. } => {
                self.icmp_soft_errors
                    .get_or_create(&SoftIcmpLabels {
                        path: key.clone(),
                        error: icmp_errno_name(*errno),
                    })
                    .inc();
            }
            Update::DiedWhileActive { .. }
            | Update::CadenceChanged { .. }
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
        paths::{PathTable, Prefixes},
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
        let mut paths = PathTable::new(Prefixes { ipv4: 24, ipv6: 48 }, 1);
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

    /// On Kubernetes the cut's exemplar names its pod, when it fits OpenMetrics' 128
    /// characters beside the addresses (Prometheus refuses a longer one with the scrape).
    #[test]
    fn the_cut_exemplar_names_the_pod_when_it_fits() {
        let metrics = Metrics::new([Arc::from("imap")]);
        let key = PathKey {
            service: Arc::from("imap"),
            role: Role::Client,
            path: Arc::from("192.0.2.0/24"),
        };
        let cut = |port: u16, namespace: &str, name: &str| {
            let owner = crate::scan::Owner {
                pid: 42,
                cgroup: None,
                pod: Some(idlecut_api::pods::Pod {
                    namespace: Some(namespace.to_owned()),
                    pod: Some(name.to_owned()),
                    uid: "3f0c6a4e-0000-4000-8000-000000000001".to_owned(),
                    container: None,
                    qos: None,
                    workload: None,
                    labels: Default::default(),
                }),
            };
            Update::Cut {
                identity: identity("192.0.2.1"),
                gap: 300 * 1_000_000_000,
                signature: Signature::Blackhole,
                context: CutContext {
                    endpoints: Some(crate::events::Endpoints {
                        local: format!("[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:{port}")
                            .parse()
                            .unwrap(),
                        remote: "[2001:db8:ffff:ffff:ffff:ffff:ffff:fffe]:143"
                            .parse()
                            .unwrap(),
                    }),
                    owner: Some(Arc::new(owner)),
                    ..CutContext::default()
                },
            }
        };
        metrics.record(Some(&key), &cut(40000, "mail", "imap-0"));
        let text = metrics.encode().unwrap();
        assert!(text.contains(r#",pod="mail/imap-0"} 300.0 "#), "{text}");
        let long_name = "x".repeat(63);
        metrics.record(Some(&key), &cut(40001, "mail", &long_name));
        let text = metrics.encode().unwrap();
        assert!(
            !text.contains(&long_name),
            "too long to fit: left out\n{text}"
        );
        for line in text.lines().filter(|line| line.contains(" # {")) {
            let labels = line
                .split(" # {")
                .nth(1)
                .unwrap()
                .split('}')
                .next()
                .unwrap();
            let chars: usize = labels
                .split(',')
                .map(|label| {
                    let (name, value) = label.split_once('=').unwrap();
                    name.len() + value.trim_matches('"').chars().count()
                })
                .sum();
            assert!(chars <= 128, "{chars}: {line}");
        }
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
            mss_lowered: 0,
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
            cutter: None,
            node_timeouts: Vec::new(),
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
