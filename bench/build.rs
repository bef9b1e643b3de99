//! Builds the baseline kernel programs (crate `idlecut-bench-ebpf`, BPF target, the nightly
//! pinned in agent-ebpf/rust-toolchain.toml) so that the bench embeds them.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("ebpf").canonicalize()?;
    // One place pins the eBPF nightly for the whole repository.
    let toolchain_file = manifest_dir
        .join("../agent-ebpf/rust-toolchain.toml")
        .canonicalize()?;
    println!("cargo::rerun-if-changed={}", toolchain_file.display());
    let toolchain = fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?
        .lines()
        .find_map(|line| {
            let value = line
                .trim()
                .strip_prefix("channel")?
                .trim()
                .strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .ok_or_else(|| anyhow!("no `channel = ...` in {}", toolchain_file.display()))?;

    let object = PathBuf::from(env::var("OUT_DIR")?).join("idlecut-bench-probes");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Without the BPF toolchain: an empty object, which the bench refuses with a message.
        if !object.exists() {
            fs::write(&object, [])?;
        }
        println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "idlecut-bench-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .context(
        "building the baseline eBPF programs failed; `./x bench` installs the toolchain they \
         need (nightly with rust-src, bpf-linker built against LLVM 22)",
    )
}
