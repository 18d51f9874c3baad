//! Builds the kernel programs (imds-monitor-ebpf) with the nightly pinned in
//! imds-monitor-ebpf/rust-toolchain.toml and bpf-linker, and leaves the object
//! in OUT_DIR for `include_bytes_aligned!`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

#[path = "../imds-monitor-ebpf/toolchain_pin.rs"]
mod toolchain_pin;
use toolchain_pin::toolchain_channel;

const SETUP_HINT: &str = "run `cargo xtask setup`";

fn main() -> anyhow::Result<()> {
    let root = env!("CARGO_MANIFEST_DIR");
    // The kernel crate also compiles the shared parser: rebuild when it changes.
    println!("cargo:rerun-if-changed={root}/../imds-monitor-common/src");
    // The workspace manifest holds the kernel crate's release profile and
    // dependency versions; without this a profile change kept the old object.
    println!("cargo:rerun-if-changed={root}/../Cargo.toml");
    println!("cargo:rerun-if-changed={root}/../Cargo.lock");
    let ebpf_dir = format!("{root}/../imds-monitor-ebpf");
    let toolchain_file = format!("{ebpf_dir}/rust-toolchain.toml");
    println!("cargo:rerun-if-changed={toolchain_file}");
    let text = std::fs::read_to_string(&toolchain_file)
        .with_context(|| format!("cannot read {toolchain_file}"))?;
    let toolchain = toolchain_channel(&text)
        .with_context(|| format!("{toolchain_file}: no `channel = \"...\"` line"))?;
    if !aya_build_skipped() {
        check_toolchain(toolchain)?;
    }
    aya_build::build_ebpf(
        [Package {
            name: "imds-monitor-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(toolchain),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF programs with {toolchain} failed: {e:#}\n\
             hint: `cargo xtask setup` installs {toolchain}, its rust-src and bpf-linker"
        )
    })
}

/// `date` of a rustup channel manifest (its top-level key, before any table).
fn manifest_date(text: &str) -> Option<&str> {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "date").then(|| value.trim().trim_matches('"'))
        })
}

/// aya-build's own switch for skipping the eBPF build (it reads it again).
fn aya_build_skipped() -> bool {
    std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Fails with what to do when the pinned toolchain is missing, is not the
/// release it names (a link made by setup whose target was updated since) or
/// lacks rust-src. Without rustup, aya-build uses the toolchain in PATH and
/// says so.
fn check_toolchain(toolchain: &str) -> anyhow::Result<()> {
    let Ok(out) = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
    else {
        return Ok(());
    };
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let said = said.lines().next().unwrap_or("").trim();
        bail!(
            "the eBPF crate builds with {toolchain} (pinned in imds-monitor-ebpf/rust-toolchain.toml), \
             which is not usable here ({said}): {SETUP_HINT}"
        );
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let rustlib = Path::new(&sysroot).join("lib/rustlib");
    let manifest = rustlib.join("multirust-channel-manifest.toml");
    // An update of the toolchain behind the name must rebuild (and re-check).
    // Only an existing file: cargo reruns every time for a missing one.
    if manifest.is_file() {
        println!("cargo:rerun-if-changed={}", manifest.display());
    }
    let pinned_date = toolchain.strip_prefix("nightly-");
    let manifest_text = std::fs::read_to_string(&manifest).unwrap_or_default();
    if let (Some(pinned), Some(actual)) = (pinned_date, manifest_date(&manifest_text))
        && pinned != actual
    {
        bail!(
            "toolchain {toolchain} at {sysroot} is the nightly of {actual}, not of {pinned} \
             (it was linked to a nightly that has been updated since): {SETUP_HINT}"
        );
    }
    if !rustlib.join("src/rust/library/Cargo.lock").is_file() {
        bail!("toolchain {toolchain} has no rust-src, which -Z build-std=core needs: {SETUP_HINT}");
    }
    Ok(())
}
