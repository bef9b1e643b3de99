//! idlecut-bench: what idlecut costs the host, each cost measured against a baseline in the
//! same run, interleaved so that machine noise cancels.
//!
//! 1. kernel: ns per event of each program (BPF run statistics) against a do-nothing program
//!    of the same hook kind on the same tracepoints, for non-mail and mail traffic, with the
//!    agent on BTF tracepoints and on classic tracepoints; and the latency a program adds to a
//!    syscall, against ebpf_exporter's published numbers.
//! 2. overhead: loopback bulk throughput and ping-pong rate on a non-mail port, agent off/on
//!    (each hook kind), do-nothing programs of each kind.
//! 3. churn: open+close rate with no lost events, the first rate that loses some, skipped
//!    program runs, agent CPU, per hook kind.
//! 4. scale: kernel and user memory per tracked connection, /metrics with 500 paths, start-up
//!    scan time.
//! 5. latency: from a cut connection's end to the cut in /metrics.
//! 6. soak: the agent under a steady mixed load for minutes: memory after a warm-up and at the
//!    end, CPU, every connection counted.
//!
//! `./x bench` builds and runs it as root; `./x bench --smoke` runs every measurement briefly
//! and fails unless each produced numbers (part of `./x test`). Results go to `target/bench/`.

mod agent;
mod churn;
mod holder;
mod kernel;
mod kernel_cost;
mod latency;
mod net;
mod overhead;
mod report;
mod results;
mod scale;
mod soak;
mod stats;
mod trigger;
mod workload;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use self::results::{Outcome, Results};

/// Measures what idlecut costs the host, each cost against a baseline in the same run.
/// Needs root; loads eBPF programs, creates network namespaces and runs the agent
/// (IDLECUT_BIN, default target/release/idlecut). Traffic stays on namespaces' loopbacks.
#[derive(Debug, Parser)]
#[command(name = "idlecut-bench")]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    /// A few seconds per measurement instead of minutes: checks only that each produces numbers
    #[arg(long)]
    smoke: bool,
    /// Only these sections
    #[arg(long, value_delimiter = ',', value_name = "SECTION")]
    only: Vec<Section>,
    /// Where the JSON results go
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Internal {
    /// (internal) Hold connections open for the scale measurement
    #[command(hide = true)]
    Hold(holder::HoldArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Section {
    Kernel,
    Overhead,
    Churn,
    Scale,
    Latency,
    Soak,
}

#[derive(Serialize)]
struct Machine {
    kernel: String,
    cpu: String,
    cpus: usize,
    memory_bytes: u64,
    agent_binary: String,
    agent_version: String,
    /// `git describe --always --dirty` of the tree the agent binary was built in (the binary
    /// is taken to sit in `<tree>/target/release/`): `-dirty` means uncommitted changes.
    agent_source: String,
    /// The same for the benchmark's own tree.
    commit: String,
}

#[derive(Serialize)]
struct Report<'a> {
    mode: &'static str,
    started_unix: u64,
    seconds: f64,
    machine: Machine,
    summary: &'a [report::Row],
    results: &'a Results,
}

struct Plan {
    kernel: kernel_cost::Settings,
    overhead: overhead::Settings,
    churn: churn::Settings,
    scale: scale::Settings,
    latency: latency::Settings,
    soak: soak::Settings,
}

fn plan(smoke: bool) -> Plan {
    if smoke {
        Plan {
            kernel: kernel_cost::Settings {
                rounds: 1,
                phase: Duration::from_millis(200),
                chatter_connections: 20,
            },
            overhead: overhead::Settings {
                rounds: 1,
                blocks: 2,
                window: Duration::from_millis(100),
                trigger_iterations: 20_000,
            },
            churn: churn::Settings {
                rates: vec![churn::TARGET_RATE],
                step: Duration::from_millis(300),
                max_rounds: 1,
                namespaces: 2,
            },
            scale: scale::Settings {
                tracked: 2000,
                prefixes: 19,
                http_requests: 3,
                startup_rounds: 1,
            },
            latency: latency::Settings { samples: 1 },
            soak: soak::Settings {
                duration: Duration::from_secs(6),
                churn_rate: 100,
                idle_population: 100,
                idle_renewed_per_second: 20,
                sample_every: Duration::from_secs(1),
            },
        }
    } else {
        Plan {
            kernel: kernel_cost::Settings {
                rounds: 7,
                phase: Duration::from_secs(2),
                chatter_connections: 200,
            },
            overhead: overhead::Settings {
                rounds: 8,
                blocks: 5,
                window: Duration::from_millis(400),
                trigger_iterations: 300_000,
            },
            churn: churn::Settings {
                rates: vec![2000, 5000, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000],
                step: Duration::from_secs(2),
                max_rounds: 3,
                namespaces: 2,
            },
            scale: scale::Settings {
                tracked: 100_000,
                prefixes: 499,
                http_requests: 20,
                startup_rounds: 3,
            },
            latency: latency::Settings { samples: 8 },
            soak: soak::Settings {
                duration: Duration::from_secs(600),
                churn_rate: 500,
                idle_population: 2000,
                idle_renewed_per_second: 20,
                sample_every: Duration::from_secs(10),
            },
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("idlecut-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(Internal::Hold(args)) = &cli.internal {
        holder::hold(args)?;
        return Ok(ExitCode::SUCCESS);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the benchmark loads eBPF programs and creates network namespaces: run it as root \
             (`./x bench` does)"
        );
    }
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Before anything runs: the trees as they were when the binaries started.
    let machine = machine();
    let plan = plan(cli.smoke);
    let wanted = |s: Section| cli.only.is_empty() || cli.only.contains(&s);
    let results = Results {
        kernel_cost: section(wanted(Section::Kernel), "kernel cost per event", || {
            kernel_cost::run(&plan.kernel)
        }),
        overhead: section(
            wanted(Section::Overhead),
            "overhead on unrelated traffic",
            || overhead::run(&plan.overhead),
        ),
        churn: section(wanted(Section::Churn), "connection churn", || {
            churn::run(&plan.churn)
        }),
        scale: section(wanted(Section::Scale), "scale", || scale::run(&plan.scale)),
        latency: section(wanted(Section::Latency), "detection latency", || {
            latency::run(&plan.latency)
        }),
        soak: section(wanted(Section::Soak), "soak", || soak::run(&plan.soak)),
    };
    let rows = report::rows(&results);
    let mode = if cli.smoke { "smoke" } else { "full" };
    let report = Report {
        mode,
        started_unix,
        seconds: started.elapsed().as_secs_f64(),
        machine,
        summary: &rows,
        results: &results,
    };
    let out = cli
        .out
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench"));
    let written = write(&out, mode, started_unix, &report)?;

    println!("{}", report::table(&rows));
    if let Some(Ok(kernel)) = &results.kernel_cost {
        println!("{}", report::kernel_detail(kernel));
    }
    println!(
        "{mode} run in {:.0} s; raw results in {}",
        report.seconds,
        written.display()
    );
    let mut ok = true;
    for (name, error) in [
        ("kernel", error_of(&results.kernel_cost)),
        ("overhead", error_of(&results.overhead)),
        ("churn", error_of(&results.churn)),
        ("scale", error_of(&results.scale)),
        ("latency", error_of(&results.latency)),
        ("soak", error_of(&results.soak)),
    ] {
        if let Some(error) = error {
            eprintln!("idlecut-bench: {name} failed: {error}");
            ok = false;
        }
    }
    for row in rows.iter().filter(|r| !r.is_measured()) {
        eprintln!("idlecut-bench: no number for `{}`", row.measure);
        ok = false;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs a section if wanted, saying how long it took (its clean-up included).
fn section<T>(wanted: bool, name: &str, run: impl FnOnce() -> anyhow::Result<T>) -> Outcome<T> {
    if !wanted {
        return None;
    }
    eprintln!("idlecut-bench: {name}...");
    let started = Instant::now();
    let result = run();
    eprintln!(
        "idlecut-bench: {name}: {} in {:.1} s",
        if result.is_ok() { "done" } else { "failed" },
        started.elapsed().as_secs_f64()
    );
    Some(result)
}

fn error_of<T>(outcome: &Outcome<T>) -> Option<String> {
    match outcome {
        Some(Err(err)) => Some(format!("{err:#}")),
        _ => None,
    }
}

/// Writes `<mode>-<time>.json` and `<mode>-latest.json`; returns the first.
fn write(
    dir: &Path,
    mode: &str,
    started_unix: u64,
    report: &Report<'_>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    let path = dir.join(format!("{mode}-{started_unix}.json"));
    std::fs::write(&path, &json).with_context(|| format!("writing {}", path.display()))?;
    let latest = dir.join(format!("{mode}-latest.json"));
    std::fs::write(&latest, &json).with_context(|| format!("writing {}", latest.display()))?;
    Ok(path)
}

fn machine() -> Machine {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let memory_bytes = agent::kib_field(&read("/proc/meminfo"), "MemTotal:").unwrap_or(0);
    let output = |program: &Path, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let binary = agent::binary();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let describe = |tree: &Path| {
        output(
            Path::new("git"),
            &[
                "-C",
                &tree.display().to_string(),
                "describe",
                "--always",
                "--dirty",
            ],
        )
    };
    let agent_tree = binary
        .canonicalize()
        .ok()
        .and_then(|b| b.ancestors().nth(3).map(Path::to_path_buf));
    Machine {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        cpu,
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        memory_bytes,
        agent_version: output(&binary, &["--version"]),
        agent_binary: binary.display().to_string(),
        agent_source: agent_tree.map(|tree| describe(&tree)).unwrap_or_default(),
        commit: describe(&workspace),
    }
}
