//! Builds a `no_std` eBPF crate of this workspace for the BPF target from a build script, with
//! the nightly pinned in `agent-ebpf/rust-toolchain.toml` (one place pins it for the whole
//! repository), so that the calling crate can embed the object it produces.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds package `package` (in `crate_dir`, relative to the calling crate) so that
/// `OUT_DIR/<object>` holds its binary.
///
/// With `AYA_BUILD_SKIP=1` (a `cargo check` without the BPF toolchain) it writes an empty object
/// instead, which the caller must refuse to run with a clear message.
pub fn build_ebpf(package: &str, crate_dir: &str, object: &str) -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    // The calling crate may sit at any depth of the workspace (agent/kernel, bench).
    let toolchain_file = manifest_dir
        .ancestors()
        .map(|dir| dir.join("agent-ebpf/rust-toolchain.toml"))
        .find(|file| file.exists())
        .context("the calling crate lives in the workspace, beside agent-ebpf")?;
    let ebpf_dir = manifest_dir
        .join(crate_dir)
        .canonicalize()
        .with_context(|| format!("the eBPF crate's directory {crate_dir}"))?;
    let toolchain = pinned_nightly(&toolchain_file)?;

    let object = PathBuf::from(env::var("OUT_DIR")?).join(object);
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        if !object.exists() {
            fs::write(&object, [])?;
        }
        return Ok(());
    }
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: package,
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .with_context(|| {
        format!(
            "building the eBPF crate {package} failed; `./x build` installs the toolchain it \
             needs (nightly with rust-src, bpf-linker built against LLVM 22)"
        )
    })
}

/// The `[toolchain] channel` of a rust-toolchain.toml.
fn pinned_nightly(toolchain_file: &Path) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct File {
        toolchain: Toolchain,
    }
    #[derive(serde::Deserialize)]
    struct Toolchain {
        channel: String,
    }
    let toolchain_file = toolchain_file.canonicalize()?;
    println!("cargo::rerun-if-changed={}", toolchain_file.display());
    let text = fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?;
    let file: File = toml::from_str(&text)
        .with_context(|| format!("no `[toolchain] channel` in {}", toolchain_file.display()))?;
    Ok(file.toolchain.channel)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pinned_nightly_is_the_toolchain_files_channel() {
        let dir = std::env::temp_dir().join(format!("idlecut-toolchain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rust-toolchain.toml");
        std::fs::write(
            &file,
            "# pinned\n[toolchain]\nchannel = \"nightly-2026-07-15\"\ncomponents = [\"rust-src\"]\n",
        )
        .unwrap();
        assert_eq!(super::pinned_nightly(&file).unwrap(), "nightly-2026-07-15");
        std::fs::write(&file, "[toolchain]\n").unwrap();
        assert!(super::pinned_nightly(&file).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
