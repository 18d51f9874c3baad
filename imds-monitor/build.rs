//! Builds the kernel programs (imds-monitor-ebpf, nightly + bpf-linker) and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = env!("CARGO_MANIFEST_DIR");
    // The kernel crate also compiles the shared parser: rebuild when it changes.
    println!("cargo:rerun-if-changed={root}/../imds-monitor-common/src");
    // The workspace manifest holds the kernel crate's release profile and
    // dependency versions; without this a profile change kept the old object.
    println!("cargo:rerun-if-changed={root}/../Cargo.toml");
    println!("cargo:rerun-if-changed={root}/../Cargo.lock");
    let ebpf_dir = format!("{root}/../imds-monitor-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "imds-monitor-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF programs failed: {e:#}\n\
             hint: `cargo xtask setup` installs the nightly's rust-src and bpf-linker"
        )
    })
}
