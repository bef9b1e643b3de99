//! The summary: one row per measurement, with idlecut's number, its baseline's, their ratio
//! (median and range over rounds), the target and whether it was met. Printed as a table and
//! kept in the JSON results.

use serde::Serialize;

use crate::{
    Results,
    stats::{Spread, ratio},
};

/// Cloudflare ebpf_exporter's benchmark (benchmark/README.md): getpid() on a MacBook Air M1,
/// Linux 6.5-rc1 in QEMU, a `tp_btf/sys_enter` program attached. Added ns per call.
pub const ANCHOR_EMPTY_NS: f64 = 15.0;
pub const ANCHOR_MAP_UPDATE_NS: f64 = 35.0;

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub section: &'static str,
    pub measure: String,
    pub unit: &'static str,
    /// idlecut's number (median over rounds).
    pub idlecut: f64,
    /// The baseline's number, measured in the same run.
    pub baseline: f64,
    pub baseline_is: String,
    /// idlecut / baseline, per round.
    pub ratio: Option<Spread>,
    pub target: String,
    /// None: no target, for information.
    pub met: Option<bool>,
}

impl Row {
    /// Whether the row holds numbers (what the smoke mode checks).
    pub fn is_measured(&self) -> bool {
        self.idlecut.is_finite()
            && self.baseline.is_finite()
            && self.ratio.is_none_or(|r| r.is_measured())
    }
}

fn row(
    section: &'static str,
    measure: impl Into<String>,
    unit: &'static str,
    idlecut: f64,
    (baseline, baseline_is): (f64, &str),
    ratio: Option<Spread>,
) -> Row {
    Row {
        section,
        measure: measure.into(),
        unit,
        idlecut,
        baseline,
        baseline_is: baseline_is.to_owned(),
        ratio,
        target: String::new(),
        met: None,
    }
}

impl Row {
    fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = target.into();
        self.met = Some(met);
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.target = note.into();
        self
    }
}

pub fn rows(results: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(Ok(k)) = &results.kernel_cost {
        for (class, name, limit) in [
            (crate::kernel_cost::Class::NonMail, "non-mail traffic", 1.3),
            (crate::kernel_cost::Class::Mail, "mail traffic", 3.0),
        ] {
            if let Some(s) = k
                .summary
                .iter()
                .find(|s| s.class == class && s.tracepoint == "all")
            {
                let r = row(
                    "kernel",
                    format!("kernel ns per event, {name} (all tracepoints)"),
                    "ns",
                    s.idlecut_ns_per_run.median,
                    (
                        s.baseline_ns_per_run.median,
                        "do-nothing program, same events",
                    ),
                    Some(s.ratio),
                );
                let met = s.ratio.median <= limit;
                rows.push(r.target(format!("<= {limit}x"), met));
            }
        }
    }
    if let Some(Ok(o)) = &results.overhead {
        let added = |name: &str| o.added_ns.get(name).copied();
        let nop = added("nop").map_or(f64::NAN, |s| s.median);
        for (name, measure, note) in [
            (
                "idlecut",
                "added latency per event: idlecut (sock_send_length, non-TCP socket)",
                format!("anchor: ebpf_exporter {ANCHOR_EMPTY_NS} ns empty (tp_btf)"),
            ),
            (
                "map_update",
                "added latency per event: one-map-update program",
                format!("anchor: ebpf_exporter {ANCHOR_MAP_UPDATE_NS} ns (tp_btf)"),
            ),
            (
                "helper_read",
                "added latency: one field read, bpf_probe_read_kernel",
                "experiment".to_owned(),
            ),
            (
                "const_read",
                "added latency: one field read, direct load (constant offset)",
                "experiment".to_owned(),
            ),
            (
                "lru_insert_delete",
                "added latency: state insert + delete, LRU hash map",
                "experiment".to_owned(),
            ),
            (
                "hash_insert_delete",
                "added latency: state insert + delete, plain hash map",
                "experiment".to_owned(),
            ),
            (
                "ringbuf_wakeup",
                "added latency: 88-byte event, ring buffer, reader woken",
                "experiment".to_owned(),
            ),
            (
                "ringbuf_no_wakeup",
                "added latency: 88-byte event, ring buffer, no wakeup",
                "experiment".to_owned(),
            ),
        ] {
            // The anchors' rows always (the smoke check wants their numbers); experiments
            // only where this kernel runs them.
            let anchor = matches!(name, "idlecut" | "map_update");
            let spread = added(name).filter(|s| anchor || s.is_measured());
            if let Some(spread) = spread {
                rows.push(
                    row(
                        "kernel",
                        measure,
                        "ns",
                        spread.median,
                        (nop, "do-nothing program"),
                        None,
                    )
                    .note(note),
                );
            }
        }
        for (what, unit, on, off, nop, ratio_on, ratio_nop) in [
            (
                "loopback TCP bulk throughput",
                "Gbit/s",
                o.bulk_gbit_s_on,
                o.bulk_gbit_s_off,
                o.bulk_gbit_s_nop,
                o.bulk_ratio,
                o.bulk_nop_ratio,
            ),
            (
                "loopback TCP ping-pong rate (64 B)",
                "/s",
                o.ping_pong_per_s_on,
                o.ping_pong_per_s_off,
                o.ping_pong_per_s_nop,
                o.ping_pong_ratio,
                o.ping_pong_nop_ratio,
            ),
        ] {
            rows.push(
                row(
                    "overhead",
                    format!("{what}, non-mail port"),
                    unit,
                    on.median,
                    (off.median, "agent not running"),
                    Some(ratio_on),
                )
                .target("loss < 2% (ratio >= 0.98)", ratio_on.median >= 0.98),
            );
            rows.push(
                row(
                    "overhead",
                    format!("{what}, do-nothing programs attached"),
                    unit,
                    nop.median,
                    (off.median, "nothing attached"),
                    Some(ratio_nop),
                )
                .note("what attaching anything there costs"),
            );
        }
    }
    if let Some(Ok(c)) = &results.churn {
        let machine_max = c.max_without_agent_per_s.median;
        let target_rate = f64::from(crate::churn::TARGET_RATE);
        let (target, met) = if machine_max >= target_rate {
            (
                format!("no loss at {}k/s", crate::churn::TARGET_RATE / 1000),
                c.sustained_no_loss_per_s >= 0.99 * target_rate,
            )
        } else {
            (
                format!("no loss at the machine's max ({machine_max:.0}/s)"),
                c.first_loss_per_s.is_none(),
            )
        };
        rows.push(
            row(
                "churn",
                "open+close rate sustained with zero lost events",
                "conn/s",
                c.sustained_no_loss_per_s,
                (machine_max, "machine max, agent not running"),
                None,
            )
            .target(target, met),
        );
        rows.push(
            row(
                "churn",
                match c.first_loss_per_s {
                    Some(_) => "first rate with lost events".to_owned(),
                    None => "first rate with lost events: none up to the max".to_owned(),
                },
                "conn/s",
                c.first_loss_per_s.unwrap_or(c.max_with_agent_per_s.median),
                (machine_max, "machine max, agent not running"),
                None,
            )
            .note(c.first_loss.clone().unwrap_or_default()),
        );
        rows.push(
            row(
                "churn",
                "program runs the kernel skipped at 20k conn/s, per 10k connections",
                "runs",
                c.recursion_misses_per_10k_at_20k,
                (0.0, "expected"),
                None,
            )
            .note(match c.first_recursion_miss_per_s {
                Some(rate) => format!("first seen at {rate:.0}/s (recursion_misses)"),
                None => "none seen".to_owned(),
            }),
        );
        rows.push(
            row(
                "churn",
                "kernel state insert failures at 20k conn/s (share of tracked)",
                "%",
                100.0 * c.insert_failure_share_at_20k,
                (0.0, "expected"),
                None,
            )
            .note(match c.first_insert_failure_per_s {
                Some(rate) => format!("first seen at {rate:.0}/s"),
                None => "none seen".to_owned(),
            }),
        );
        rows.push(
            row(
                "churn",
                "agent CPU at 20k conn/s",
                "cores",
                c.agent_cpu_cores_at_20k,
                (2.0, "cores on this machine"),
                None,
            )
            .note(format!(
                "{:.1} us per connection",
                c.agent_cpu_us_per_connection_at_20k
            )),
        );
        rows.push(
            row(
                "churn",
                "machine max open+close rate, agent running",
                "conn/s",
                c.max_with_agent_per_s.median,
                (c.max_without_agent_per_s.median, "agent not running"),
                Some(c.max_ratio),
            )
            .note(""),
        );
    }
    if let Some(Ok(s)) = &results.scale {
        let tracked = format!("{:.0}", s.tracked_connections);
        rows.push(
            row(
                "scale",
                format!("kernel map memory per tracked connection ({tracked} tracked)"),
                "bytes",
                s.kernel_bytes_per_tracked_connection,
                (
                    s.kernel_bytes_per_slot,
                    "per --max-connections slot, CONNECTIONS + SEEDS",
                ),
                None,
            )
            .target("<= 200 B", s.kernel_bytes_per_tracked_connection <= 200.0),
        );
        rows.push(
            row(
                "scale",
                format!("agent RSS per tracked connection ({tracked} tracked)"),
                "bytes",
                s.user_bytes_per_connection,
                (
                    s.user_bytes_per_discovered_connection.median,
                    "same, connections found by the start-up scan",
                ),
                None,
            )
            .target("<= 300 B", s.user_bytes_per_connection <= 300.0),
        );
        rows.push(
            row(
                "scale",
                format!("GET /metrics, {:.0} paths", s.paths),
                "ms",
                s.metrics_ms.median,
                (s.healthz_ms.median, "GET /healthz, same server"),
                Some(s.metrics_ratio),
            )
            .note(format!(
                "{} KiB, {} samples",
                s.metrics_bytes / 1024,
                s.metrics_series
            )),
        );
        rows.push(
            row(
                "scale",
                format!(
                    "start-up until the first scan is in, {:.0} connections found",
                    s.scan_connections_found.median
                ),
                "s",
                s.scan_seconds_imap.median,
                (
                    s.scan_seconds_nothing.median,
                    "same, watching an unused port",
                ),
                Some(s.scan_ratio),
            )
            .note(format!(
                "scan cost ~{:.2} s",
                s.scan_seconds_imap.median - s.scan_seconds_nothing.median
            )),
        );
    }
    if let Some(Ok(l)) = &results.latency {
        rows.push(
            row(
                "latency",
                "cut end -> cut visible in /metrics",
                "ms",
                l.cut_visible_ms.median,
                (l.open_visible_ms.median, "open -> open visible"),
                Some(l.ratio),
            )
            .note(format!("scrape resolution ~{:.1} ms", l.scrape_ms.median)),
        );
    }
    rows
}

/// A fixed-width text table of the rows.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "section",
        "measure",
        "idlecut",
        "baseline",
        "ratio (median [min-max])",
        "target",
        "met",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.section.to_owned(),
                r.measure.clone(),
                format!("{} {}", number(r.idlecut), r.unit),
                format!("{} {} ({})", number(r.baseline), r.unit, r.baseline_is),
                r.ratio.map_or_else(
                    || number(ratio(r.idlecut, r.baseline)),
                    |s| format!("{} [{}-{}]", number(s.median), number(s.min), number(s.max)),
                ),
                r.target.clone(),
                match r.met {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                    None => "-".to_owned(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&header.map(str::to_owned));
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// Three significant digits, without scientific notation for the values we print.
fn number(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_owned();
    }
    let magnitude = x.abs();
    if magnitude >= 100.0 {
        format!("{x:.0}")
    } else if magnitude >= 10.0 {
        format!("{x:.1}")
    } else if magnitude >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(number(1234.5), "1234");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(1.2345), "1.23");
        assert_eq!(number(0.012345), "0.012");
        assert_eq!(number(f64::NAN), "n/a");
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let rows = vec![
            row("a", "one", "ns", 1.0, (2.0, "b"), None).target("<= 1x", true),
            row(
                "a",
                "a longer one",
                "ns",
                10.0,
                (2.0, "b"),
                Some(Spread::of(&[5.0])),
            )
            .note(""),
        ];
        let text = table(&rows);
        let lengths: Vec<usize> = text.lines().map(|l| l.chars().count()).collect();
        assert!(lengths.windows(2).all(|w| w[0] == w[1]), "{text}");
        assert!(text.contains("| yes"), "{text}");
    }
}
