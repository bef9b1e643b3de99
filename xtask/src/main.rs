//! `cargo xtask`: build, run and test idlecut. `./x` installs the toolchains and calls this.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod imports;
mod layers;

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Build, run and test idlecut")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the agent (release) with its eBPF programs embedded: target/release/idlecut
    Build,
    /// Build, then run the agent as root (through sudo when needed) with the given arguments
    Run {
        /// Arguments for the agent, after `--`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check the crates against the map of docs/architecture.md: each crate's dependencies, and
    /// no import cycle among the modules of any crate
    Layers,
    /// rustfmt check, the crate map, clippy with warnings denied (host and BPF target), unit tests, then the
    /// kernel integration tests as root, then the benchmark's smoke mode
    Test,
    /// Build, then measure what idlecut costs the host (as root, a few minutes): prints a
    /// summary table, writes the raw results to target/bench/
    Bench {
        /// A few seconds per measurement: checks only that each one produces numbers
        #[arg(long)]
        smoke: bool,
        /// More arguments for idlecut-bench (such as `--only kernel,churn`), after `--`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run_task(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(cli: Cli) -> anyhow::Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Task::Build => build(),
        Task::Run { args } => {
            build()?;
            let binary = root.join("target/release/idlecut");
            let mut command = as_root(&binary);
            command.args(args);
            run(&mut command)
        }
        Task::Layers => layers::check(&root),
        Task::Test => test(&root),
        Task::Bench { smoke, args } => bench(&root, smoke, &args),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {command:?}");
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs `program` as root: directly when we are root, through sudo otherwise.
fn as_root(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.arg("--preserve-env").arg(program);
        command
    }
}

fn build() -> anyhow::Result<()> {
    run(cargo().args(["build", "--release", "--package", "idlecut"]))
}

fn test(root: &Path) -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    layers::check(root)?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The kernel programs (the agent's and the benchmark's baselines), linted as what they
    // are: BPF code built with the pinned nightly, which rustup picks from
    // agent-ebpf/rust-toolchain.toml when run from there.
    run(Command::new("cargo")
        .current_dir(root.join("agent-ebpf"))
        .args([
            "clippy",
            "--package",
            "idlecut-ebpf",
            "--package",
            "idlecut-bench-ebpf",
        ])
        .args(["--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(root.join("target/ebpf-clippy"))
        .args(["--", "-D", "warnings"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC"))?;
    run(cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "idlecut-integration-tests",
    ]))?;
    build()?;
    // The integration tests load eBPF programs and create network namespaces: root only.
    let binary = root.join("target/release/idlecut");
    let mut integration = cargo();
    integration
        .args(["test", "--package", "idlecut-integration-tests"])
        .env("IDLECUT_BIN", &binary);
    if !is_root() {
        eprintln!("xtask: not root; the kernel tests run through sudo");
        integration.args([
            "--config",
            "target.'cfg(target_os = \"linux\")'.runner = ['sudo', '--preserve-env']",
        ]);
    }
    // One agent at a time: every agent sees every namespace's connections.
    integration.args(["--", "--test-threads=1"]);
    run(&mut integration)?;
    // Again with the fallback: classic tracepoints are what kernels without BTF run, and they
    // must pass the same suite.
    run(integration.env("IDLECUT_TEST_HOOKS", "classic"))?;
    // Keeps the benchmark from rotting: every measurement, briefly.
    bench(root, true, &[])
}

/// Builds the agent and the benchmark, then runs the benchmark as root (it loads eBPF
/// programs, creates network namespaces and starts the agent).
fn bench(root: &Path, smoke: bool, args: &[String]) -> anyhow::Result<()> {
    build()?;
    run(cargo().args(["build", "--release", "--package", "idlecut-bench"]))?;
    let mut command = as_root(&root.join("target/release/idlecut-bench"));
    command.env("IDLECUT_BIN", root.join("target/release/idlecut"));
    if smoke {
        command.arg("--smoke");
    }
    command.args(args);
    run(&mut command)
}
