//! The `idlecut_check_*` metrics: what each scheduled check found at its last run. Their label
//! sets are bounded by the config (at most `MAX_CHECKS` targets, their ports, five checks).
//! They are registered in the agent's registry next to the other families, the same way
//! (`idlecut_core::metrics::register`, `register_seconds`).

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::Report;
use idlecut_api::vocabulary::{CheckName, CheckRunResult, CheckStatus};
use idlecut_core::metrics::{GaugeF64, register, register_seconds};

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
            status: register(
                registry,
                "check_status",
                "Each row of a scheduled check's last run: 1 pass, 0 fail, -1 could not tell; absent when the row did not run (an earlier row of the port failed, idle checks off, or the run could not start)",
                Family::default(),
            ),
            cutoff_lower: register_seconds(
                registry,
                "check_cutoff_lower",
                "A scheduled check's last idle search: the path cut no connection silent for this long (absent when none survived)",
                Family::default(),
            ),
            cutoff_upper: register_seconds(
                registry,
                "check_cutoff_upper",
                "A scheduled check's last idle search: the path cut a connection silent for this long (absent when none was cut)",
                Family::default(),
            ),
            last_run: register_seconds(
                registry,
                "check_last_run_timestamp",
                "When a scheduled check's last run ended (Unix time)",
                Family::default(),
            ),
            duration: register_seconds(
                registry,
                "check_duration",
                "How long a scheduled check's last run took (its idle search lasts as long as its longest silence)",
                Family::default(),
            ),
            runs: register(
                registry,
                "check_runs",
                "Runs of each scheduled check by result: pass, fail, could_not_tell, or error (it could not run: the name did not resolve, a file could not be read)",
                Family::default(),
            ),
        };
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

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;
    use crate::{IdleReport, PortReport};
    use idlecut_api::vocabulary::IdleSession;
    use idlecut_core::inference::Verdict;

    fn idle(lower: Option<f64>, upper: Option<f64>) -> IdleReport {
        IdleReport {
            cutoff_lower_seconds: lower,
            cutoff_upper_seconds: upper,
            signature: None,
            verdict: Verdict::Unknown,
            explanation: String::new(),
            recommended_keepalive_seconds: None,
            server_idle_limit_seconds: None,
            session: IdleSession::Greeted,
            connections: 4,
            probes: Vec::new(),
        }
    }

    /// The whole `idlecut_check_*` exposition, byte for byte: names, units, help texts, label
    /// names and their order are a contract (README.md, dashboards, alerts).
    #[test]
    fn the_exposition_is_pinned() {
        let mut registry = Registry::with_prefix("idlecut");
        let metrics =
            CheckMetrics::register(&mut registry, [Arc::from("mx"), Arc::from("imap.example")]);
        let mut imap = PortReport::new("192.0.2.7:143".parse().expect("address"));
        imap.row(CheckName::Reachability, CheckStatus::Pass, "accepted");
        imap.row(CheckName::IdleCutoff, CheckStatus::Fail, "cut");
        imap.idle = Some(idle(Some(240.0), Some(300.5)));
        let mut submission = PortReport::new("192.0.2.7:587".parse().expect("address"));
        submission.row(
            CheckName::Reachability,
            CheckStatus::CouldNotTell,
            "timed out",
        );
        let report = Report::new(
            "imap.example".to_owned(),
            600.0,
            1.0,
            vec![imap, submission],
        );
        let target: Arc<str> = Arc::from("imap.example");
        metrics.record(&target, &[143, 587], Some(&report), 1_700_000_000.0, 912.25);
        metrics.record(&Arc::from("mx"), &[25], None, 1_700_000_100.0, 0.5);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding");
        let text = with_sorted_series(&text);
        let expected = r#"# HELP idlecut_check_status Each row of a scheduled check's last run: 1 pass, 0 fail, -1 could not tell; absent when the row did not run (an earlier row of the port failed, idle checks off, or the run could not start).
# TYPE idlecut_check_status gauge
idlecut_check_status{target="imap.example",port="143",check="idle_cutoff"} 0
idlecut_check_status{target="imap.example",port="143",check="reachability"} 1
idlecut_check_status{target="imap.example",port="587",check="reachability"} -1
# HELP idlecut_check_cutoff_lower_seconds A scheduled check's last idle search: the path cut no connection silent for this long (absent when none survived).
# TYPE idlecut_check_cutoff_lower_seconds gauge
# UNIT idlecut_check_cutoff_lower_seconds seconds
idlecut_check_cutoff_lower_seconds{target="imap.example",port="143"} 240.0
# HELP idlecut_check_cutoff_upper_seconds A scheduled check's last idle search: the path cut a connection silent for this long (absent when none was cut).
# TYPE idlecut_check_cutoff_upper_seconds gauge
# UNIT idlecut_check_cutoff_upper_seconds seconds
idlecut_check_cutoff_upper_seconds{target="imap.example",port="143"} 300.5
# HELP idlecut_check_last_run_timestamp_seconds When a scheduled check's last run ended (Unix time).
# TYPE idlecut_check_last_run_timestamp_seconds gauge
# UNIT idlecut_check_last_run_timestamp_seconds seconds
idlecut_check_last_run_timestamp_seconds{target="imap.example"} 1700000000.0
idlecut_check_last_run_timestamp_seconds{target="mx"} 1700000100.0
# HELP idlecut_check_duration_seconds How long a scheduled check's last run took (its idle search lasts as long as its longest silence).
# TYPE idlecut_check_duration_seconds gauge
# UNIT idlecut_check_duration_seconds seconds
idlecut_check_duration_seconds{target="imap.example"} 912.25
idlecut_check_duration_seconds{target="mx"} 0.5
# HELP idlecut_check_runs Runs of each scheduled check by result: pass, fail, could_not_tell, or error (it could not run: the name did not resolve, a file could not be read).
# TYPE idlecut_check_runs counter
idlecut_check_runs_total{target="imap.example",result="could_not_tell"} 0
idlecut_check_runs_total{target="imap.example",result="error"} 0
idlecut_check_runs_total{target="imap.example",result="fail"} 1
idlecut_check_runs_total{target="imap.example",result="pass"} 0
idlecut_check_runs_total{target="mx",result="could_not_tell"} 0
idlecut_check_runs_total{target="mx",result="error"} 1
idlecut_check_runs_total{target="mx",result="fail"} 0
idlecut_check_runs_total{target="mx",result="pass"} 0
# EOF
"#;
        assert_eq!(text, expected, "\n{text}");
    }

    /// The exposition with each family's series in sorted order: a family keeps its series in
    /// a hash map, so their order changes from one process to the next; all else is as encoded.
    fn with_sorted_series(text: &str) -> String {
        let mut lines = Vec::new();
        let mut series = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                series.sort_unstable();
                lines.append(&mut series);
                lines.push(line);
            } else {
                series.push(line);
            }
        }
        series.sort_unstable();
        lines.append(&mut series);
        lines.iter().map(|line| format!("{line}\n")).collect()
    }
}
