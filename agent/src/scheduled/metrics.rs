//! The `idlecut_check_*` metrics: what each scheduled check found at its last run. Their label
//! sets are bounded by the config (at most `MAX_CHECKS` targets, their ports, five checks).
//! They are registered in the agent's registry next to the other families (`metrics`).

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::{
    check::Report,
    vocabulary::{CheckName, CheckRunResult, CheckStatus},
};

type GaugeF64 = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    target: Arc<str>,
    port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    target: Arc<str>,
    port: u16,
    check: CheckName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    target: Arc<str>,
    result: CheckRunResult,
}

/// The value of `idlecut_check_status` for a row's status.
pub fn status_value(status: CheckStatus) -> i64 {
    match status {
        CheckStatus::Pass => 1,
        CheckStatus::Fail => 0,
        CheckStatus::CouldNotTell => -1,
    }
}

pub struct CheckMetrics {
    status: Family<StatusLabels, Gauge>,
    cutoff_lower: Family<PortLabels, GaugeF64>,
    cutoff_upper: Family<PortLabels, GaugeF64>,
    last_run: Family<TargetLabels, GaugeF64>,
    duration: Family<TargetLabels, GaugeF64>,
    runs: Family<RunLabels, Counter>,
}

impl CheckMetrics {
    /// Registers the families in `registry` (prefix `idlecut_`), with every run counter of
    /// `targets` at 0 so that `increase()` sees the first run.
    pub fn register(registry: &mut Registry, targets: impl IntoIterator<Item = Arc<str>>) -> Self {
        let metrics = Self {
            status: Family::default(),
            cutoff_lower: Family::default(),
            cutoff_upper: Family::default(),
            last_run: Family::default(),
            duration: Family::default(),
            runs: Family::default(),
        };
        registry.register(
            "check_status",
            "Each row of a scheduled check's last run: 1 pass, 0 fail, -1 could not tell; absent when the row did not run (an earlier row of the port failed, idle checks off, or the run could not start)",
            metrics.status.clone(),
        );
        registry.register_with_unit(
            "check_cutoff_lower",
            "A scheduled check's last idle search: the path cut no connection silent for this long (absent when none survived)",
            Unit::Seconds,
            metrics.cutoff_lower.clone(),
        );
        registry.register_with_unit(
            "check_cutoff_upper",
            "A scheduled check's last idle search: the path cut a connection silent for this long (absent when none was cut)",
            Unit::Seconds,
            metrics.cutoff_upper.clone(),
        );
        registry.register_with_unit(
            "check_last_run_timestamp",
            "When a scheduled check's last run ended (Unix time)",
            Unit::Seconds,
            metrics.last_run.clone(),
        );
        registry.register_with_unit(
            "check_duration",
            "How long a scheduled check's last run took (its idle search lasts as long as its longest silence)",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register(
            "check_runs",
            "Runs of each scheduled check by result: pass, fail, could_not_tell, or error (it could not run: the name did not resolve, a file could not be read)",
            metrics.runs.clone(),
        );
        for target in targets {
            for result in CheckRunResult::ALL {
                let _ = metrics.runs.get_or_create(&RunLabels {
                    target: target.clone(),
                    result,
                });
            }
        }
        metrics
    }

    /// Records a finished run of the check of `target` on `ports`: the report's rows and
    /// cut-off, or none of them when it could not run (`report` None).
    pub fn record(
        &self,
        target: &Arc<str>,
        ports: &[u16],
        report: Option<&Report>,
        ended_unix_seconds: f64,
        duration_seconds: f64,
    ) {
        // Series of the previous run go first: a row that did not run this time is absent,
        // not left at an old value.
        for &port in ports {
            for check in CheckName::ALL {
                self.status.remove(&StatusLabels {
                    target: target.clone(),
                    port,
                    check,
                });
            }
            let labels = PortLabels {
                target: target.clone(),
                port,
            };
            self.cutoff_lower.remove(&labels);
            self.cutoff_upper.remove(&labels);
        }
        let result = report.map_or(CheckRunResult::Error, |report| match report.result {
            CheckStatus::Pass => CheckRunResult::Pass,
            CheckStatus::Fail => CheckRunResult::Fail,
            CheckStatus::CouldNotTell => CheckRunResult::CouldNotTell,
        });
        for port in report.iter().flat_map(|report| &report.ports) {
            for row in &port.rows {
                self.status
                    .get_or_create(&StatusLabels {
                        target: target.clone(),
                        port: port.port,
                        check: row.check,
                    })
                    .set(status_value(row.status));
            }
            let labels = PortLabels {
                target: target.clone(),
                port: port.port,
            };
            let idle = port.idle.as_ref();
            if let Some(lower) = idle.and_then(|idle| idle.cutoff_lower_seconds) {
                self.cutoff_lower.get_or_create(&labels).set(lower);
            }
            if let Some(upper) = idle.and_then(|idle| idle.cutoff_upper_seconds) {
                self.cutoff_upper.get_or_create(&labels).set(upper);
            }
        }
        self.runs
            .get_or_create(&RunLabels {
                target: target.clone(),
                result,
            })
            .inc();
        let labels = TargetLabels {
            target: target.clone(),
        };
        self.last_run.get_or_create(&labels).set(ended_unix_seconds);
        self.duration.get_or_create(&labels).set(duration_seconds);
    }
}
