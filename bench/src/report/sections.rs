//! The rows of each section of the summary, one function per measurement: kernel cost per
//! event and added latency (`kernel`), unrelated traffic (`overhead`), connection churn
//! (`churn`), scale, detection latency and the soak run.

use super::{Row, row};
use crate::{
    churn::{Churn, OfKind},
    kernel::HookKind,
    kernel_cost::{Class, KernelCost, Load},
    overhead::{Overhead, traffic_condition},
    results::Results,
    soak::Soak,
    trigger::Trigger,
};

/// Cloudflare ebpf_exporter's benchmark (benchmark/README.md): getpid() on a MacBook Air M1,
/// Linux 6.5-rc1 in QEMU, a `tp_btf/sys_enter` program attached. Added ns per call.
pub const ANCHOR_EMPTY_NS: f64 = 15.0;
pub const ANCHOR_MAP_UPDATE_NS: f64 = 35.0;

pub fn soak_rows(s: &Soak, rows: &mut Vec<Row>) {
    const MIB: f64 = 1024.0 * 1024.0;
    let load = format!(
        "{:.0} s, {} connections/s and {} idle",
        s.seconds, s.churn_rate, s.idle_population
    );
    rows.push(
        row(
            "soak",
            format!("agent memory at the end ({load})"),
            "MiB",
            s.rss_end_bytes as f64 / MIB,
            (s.rss_after_warmup_bytes as f64 / MIB, "after the warm-up"),
            None,
        )
        .target(
            "<= warm-up + 5 % + 1 MiB",
            s.rss_end_bytes <= s.rss_allowed_bytes(),
        ),
    );
    let expected = 2.0 * s.connections_made as f64;
    rows.push(
        row(
            "soak",
            "connections counted, opened (or met only at their close) and closed",
            "tracked",
            s.tracked_closed
                .min(s.tracked_opened + s.tracked_discovered),
            (expected, "made (two ends each)"),
            None,
        )
        .target(
            "all, each once",
            s.tracked_opened + s.tracked_discovered == expected && s.tracked_closed == expected,
        ),
    );
    rows.push(
        row(
            "soak",
            "kernel events lost (skipped program runs, ring buffer full)",
            "events",
            s.events_lost,
            (expected, "connection ends"),
            None,
        )
        .target(
            "0 (a lost open or end is recovered, a lost gap is not)",
            s.events_lost == 0.0,
        ),
    );
    rows.push(
        row(
            "soak",
            "agent CPU",
            "%",
            s.cpu_percent,
            (100.0, "one CPU"),
            None,
        )
        .note("for information"),
    );
}

/// ` (tp_btf)`: which hook kind a row is about.
fn kind_suffix(hooks: HookKind) -> String {
    format!(" ({})", hooks.label())
}

pub fn kernel_rows(k: &KernelCost, rows: &mut Vec<Row>) {
    // Issue 18's targets are per event of traffic on open connections; churn, whose every
    // open and end creates or drops a connection's state and sends an event, is reported
    // beside them.
    for hooks in HookKind::ALL {
        for (class, load, name, limit) in [
            (Class::NonMail, Load::Traffic, "non-mail traffic", Some(1.3)),
            (Class::Mail, Load::Traffic, "mail traffic", Some(3.0)),
            (
                Class::NonMail,
                Load::Churn,
                "non-mail connection churn",
                None,
            ),
            (Class::Mail, Load::Churn, "mail connection churn", None),
        ] {
            let Some(s) = k.summary.iter().find(|s| {
                s.hooks == hooks && s.class == class && s.load == load && s.tracepoint == "all"
            }) else {
                continue;
            };
            let r = row(
                "kernel",
                format!(
                    "kernel ns per event, {name} (all tracepoints){}",
                    kind_suffix(hooks)
                ),
                "ns",
                s.idlecut_ns_per_run.median,
                (
                    s.baseline_ns_per_run.median,
                    &format!("do-nothing {} program, same events", hooks.label()),
                ),
                Some(s.ratio),
            );
            rows.push(match limit {
                Some(limit) => r.target(format!("<= {limit}x"), s.ratio.median <= limit),
                None => r.note("for information: opens and ends"),
            });
        }
    }
}

pub fn latency_added_rows(o: &Overhead, rows: &mut Vec<Row>) {
    let added = |trigger: Trigger, name: &str| {
        o.added_ns
            .get(trigger.label())
            .and_then(|by| by.get(name))
            .copied()
    };
    let median = |trigger, name| added(trigger, name).map_or(f64::NAN, |s| s.median);
    // A successful non-mail send: the target compares idlecut on BTF tracepoints with an empty
    // classic tracepoint program.
    let unix = Trigger::UnixSend;
    let nop_classic = median(unix, "nop");
    let nop_btf = median(unix, "btf_nop");
    for (name, measure, baseline, target) in [
        (
            "idlecut_tp_btf",
            "added latency per non-mail send: idlecut (tp_btf)",
            (nop_classic, "do-nothing classic tracepoint program"),
            Some(("< the do-nothing classic program", nop_classic)),
        ),
        (
            "idlecut_classic",
            "added latency per non-mail send: idlecut (tracepoint)",
            (nop_classic, "do-nothing classic tracepoint program"),
            None,
        ),
        (
            "btf_nop",
            "added latency per non-mail send: do-nothing tp_btf program",
            (nop_classic, "do-nothing classic tracepoint program"),
            None,
        ),
        (
            "btf_map_update",
            "added latency per send: one-map-update program (tp_btf)",
            (nop_btf, "do-nothing tp_btf program"),
            None,
        ),
    ] {
        let Some(spread) = added(unix, name) else {
            continue;
        };
        let r = row(
            "kernel",
            measure,
            "ns",
            spread.median,
            (baseline.0, baseline.1),
            None,
        );
        rows.push(match target {
            Some((text, limit)) => r.target(text, spread.median < limit),
            None if name == "btf_nop" => r.note(format!(
                "anchor: ebpf_exporter {ANCHOR_EMPTY_NS} ns empty (tp_btf)"
            )),
            None if name == "btf_map_update" => r.note(format!(
                "anchor: ebpf_exporter {ANCHOR_MAP_UPDATE_NS} ns (tp_btf)"
            )),
            None => r.note("Unix datagram send + read back"),
        });
    }
    // The refused send of the runs before BTF tracepoints, and the experiments on it.
    let refused = Trigger::RefusedSend;
    let nop = median(refused, "nop");
    for (name, measure, note) in [
        (
            "idlecut_tp_btf",
            "added latency per refused send: idlecut (tp_btf)",
            "error event: the program's first test",
        ),
        (
            "idlecut_classic",
            "added latency per refused send: idlecut (tracepoint)",
            "the measure of the runs before",
        ),
        (
            "map_update",
            "added latency per refused send: one-map-update program (tracepoint)",
            "",
        ),
        (
            "helper_read",
            "added latency: one field read, bpf_probe_read_kernel",
            "experiment",
        ),
        (
            "const_read",
            "added latency: one field read, direct load (constant offset)",
            "experiment",
        ),
        (
            "lru_insert_delete",
            "added latency: state insert + delete, LRU hash map",
            "experiment",
        ),
        (
            "hash_insert_delete",
            "added latency: state insert + delete, plain hash map",
            "experiment",
        ),
        (
            "ringbuf_wakeup",
            "added latency: 88-byte event, ring buffer, reader woken",
            "experiment",
        ),
        (
            "ringbuf_no_wakeup",
            "added latency: 88-byte event, ring buffer, no wakeup",
            "experiment",
        ),
    ] {
        // idlecut's rows always (the smoke check wants their numbers); experiments only where
        // this kernel runs them.
        let always = name.starts_with("idlecut") || name == "map_update";
        if let Some(spread) = added(refused, name).filter(|s| always || s.is_measured()) {
            rows.push(
                row(
                    "kernel",
                    measure,
                    "ns",
                    spread.median,
                    (nop, "do-nothing classic tracepoint program"),
                    None,
                )
                .note(note),
            );
        }
    }
}

pub fn traffic_rows(o: &Overhead, rows: &mut Vec<Row>) {
    for (what, unit, off) in [
        ("loopback TCP bulk throughput", "Gbit/s", o.bulk_gbit_s_off),
        (
            "loopback TCP ping-pong rate (64 B)",
            "/s",
            o.ping_pong_per_s_off,
        ),
    ] {
        let bulk = unit == "Gbit/s";
        for hooks in HookKind::ALL {
            for agent in [true, false] {
                let Some(t) = o.traffic.get(traffic_condition(hooks, agent)) else {
                    continue;
                };
                let (on, ratio_on) = if bulk {
                    (t.bulk_gbit_s, t.bulk_ratio)
                } else {
                    (t.ping_pong_per_s, t.ping_pong_ratio)
                };
                let r = if agent {
                    row(
                        "overhead",
                        format!("{what}, non-mail port{}", kind_suffix(hooks)),
                        unit,
                        on.median,
                        (off.median, "agent not running"),
                        Some(ratio_on),
                    )
                    .target("loss < 2% (ratio >= 0.98)", ratio_on.median >= 0.98)
                } else {
                    row(
                        "overhead",
                        format!("{what}, do-nothing {} programs attached", hooks.label()),
                        unit,
                        on.median,
                        (off.median, "nothing attached"),
                        Some(ratio_on),
                    )
                    .note("what attaching anything there costs")
                };
                rows.push(r);
            }
        }
    }
}

pub fn churn_rows(c: &Churn, hooks: HookKind, k: &OfKind, rows: &mut Vec<Row>) {
    let suffix = kind_suffix(hooks);
    let machine_max = c.max_without_agent_per_s.median;
    let target_rate = f64::from(crate::churn::TARGET_RATE);
    let (target, met) = if machine_max >= target_rate {
        (
            format!("no loss at {}k/s", crate::churn::TARGET_RATE / 1000),
            k.sustained_no_loss_per_s >= 0.99 * target_rate,
        )
    } else {
        (
            format!("no loss at the machine's max ({machine_max:.0}/s)"),
            k.first_loss_per_s.is_none(),
        )
    };
    rows.push(
        row(
            "churn",
            format!("open+close rate sustained with zero lost events{suffix}"),
            "conn/s",
            k.sustained_no_loss_per_s,
            (machine_max, "machine max, agent not running"),
            None,
        )
        .target(target, met),
    );
    rows.push(
        row(
            "churn",
            match k.first_loss_per_s {
                Some(_) => format!("first rate with lost events{suffix}"),
                None => format!("first rate with lost events: none up to the max{suffix}"),
            },
            "conn/s",
            k.first_loss_per_s.unwrap_or(k.max_with_agent_per_s.median),
            (machine_max, "machine max, agent not running"),
            None,
        )
        .note(k.first_loss.clone().unwrap_or_default()),
    );
    rows.push(
        row(
            "churn",
            format!("program runs the kernel skipped at 20k conn/s, per 10k connections{suffix}"),
            "runs",
            k.recursion_misses_per_10k_at_20k,
            (0.0, "expected"),
            None,
        )
        .note(match k.first_recursion_miss_per_s {
            Some(rate) => format!("first seen at {rate:.0}/s (recursion_misses)"),
            None => "none seen".to_owned(),
        }),
    );
    rows.push(
        row(
            "churn",
            format!("opens / closes not counted at 20k conn/s{suffix}"),
            "opens",
            k.uncounted_opens_at_20k,
            (0.0, "expected"),
            None,
        )
        .note(format!("{:.0} closes", k.uncounted_closes_at_20k)),
    );
    rows.push(
        row(
            "churn",
            format!("kernel state insert failures at 20k conn/s (share of tracked){suffix}"),
            "%",
            100.0 * k.insert_failure_share_at_20k,
            (0.0, "expected"),
            None,
        )
        .note(match k.first_insert_failure_per_s {
            Some(rate) => format!("first seen at {rate:.0}/s"),
            None => "none seen".to_owned(),
        }),
    );
    rows.push(
        row(
            "churn",
            format!("agent CPU at 20k conn/s{suffix}"),
            "cores",
            k.agent_cpu_cores_at_20k,
            (2.0, "cores on this machine"),
            None,
        )
        .note(format!(
            "{:.1} us per connection",
            k.agent_cpu_us_per_connection_at_20k
        )),
    );
    rows.push(
        row(
            "churn",
            format!("machine max open+close rate, agent running{suffix}"),
            "conn/s",
            k.max_with_agent_per_s.median,
            (machine_max, "agent not running"),
            Some(k.max_ratio),
        )
        .note(""),
    );
}

pub fn scale_and_latency_rows(results: &Results, rows: &mut Vec<Row>) {
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
}
