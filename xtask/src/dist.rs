//! `cargo xtask dist`: what is shipped, built into `target/dist/`.
//!
//! - `imds-monitor-<arch>-linux-musl`: static (musl) executables for x86_64 and
//!   aarch64, each with the kernel programs embedded. Built with rustup's musl
//!   targets; aarch64 is linked by `rust-lld`, which ships with rustc, against
//!   the musl libc that ships inside rustup's `rust-std` for that target. No C
//!   cross toolchain (or zig) is needed because the workspace has no C
//!   dependency. The kernel object is eBPF bytecode built for `bpfel` by
//!   `imds-monitor/build.rs`; both architectures are little-endian.
//! - `.deb` (cargo-deb) and `.rpm` (cargo-generate-rpm) per architecture, from
//!   `[package.metadata.deb]` and `[package.metadata.generate-rpm]` in
//!   `imds-monitor/Cargo.toml`: the binary, the systemd unit, the config and
//!   the logrotate file under `packaging/`.
//! - `oci/`: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`)
//!   of an image FROM scratch holding only the static binary, one manifest per
//!   architecture, and the same layout as `imds-monitor-oci.tar` (an OCI
//!   archive for `ctr images import`, `skopeo copy oci-archive:`, podman load).

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

use crate::cmd;

#[derive(Debug, Args)]
pub struct DistArgs {
    /// Architectures to build (comma-separated or repeated)
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["x86_64", "aarch64"])]
    pub arch: Vec<Arch>,

    /// Only the static binaries: no packages, no image
    #[arg(long)]
    pub binaries_only: bool,

    /// Skip the OCI image
    #[arg(long)]
    pub no_image: bool,

    /// Then run the tests of the artifacts (tests/tests/{dist,packaging,
    /// kubernetes}.rs: static binaries, packages, image), which plain
    /// `cargo test` leaves out (ignored) because they need these files
    #[arg(long)]
    pub test: bool,
}

/// `cargo` arguments that run the tests of the artifacts, which plain
/// `cargo test` leaves out (ignored) because they need what dist builds.
pub const ARTIFACT_TESTS: &[&str] = &[
    "test",
    "-p",
    "imds-sandbox",
    "--test",
    "dist",
    "--test",
    "packaging",
    "--test",
    "kubernetes",
    "--",
    "--ignored",
];

impl DistArgs {
    /// Both architectures, packages and the image.
    pub fn everything() -> Self {
        Self {
            arch: vec![Arch::X86_64, Arch::Aarch64],
            binaries_only: false,
            no_image: false,
            test: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
}

impl Arch {
    pub const fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    pub const fn triple(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64-unknown-linux-musl",
            Self::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// GOARCH-style name that OCI platforms use.
    pub const fn oci(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Aarch64 => "arm64",
        }
    }

    /// ELF `e_machine`.
    const fn elf_machine(self) -> u16 {
        match self {
            Self::X86_64 => 62,
            Self::Aarch64 => 183,
        }
    }

    /// `target/dist/` file name of the static binary.
    pub fn binary_name(self) -> String {
        format!("imds-monitor-{}-linux-musl", self.name())
    }
}

pub fn dist_dir() -> PathBuf {
    cmd::workspace_root().join("target").join("dist")
}

/// Cargo tools the packages are built with, at the versions tested.
const CARGO_TOOLS: &[(&str, &str, &str)] = &[
    ("cargo-deb", "3.8.0", "cargo-deb"),
    ("cargo-generate-rpm", "0.21.1", "cargo-generate-rpm"),
];
/// Debian packages the artifact tests use (rpm to read the .rpm, qemu-user
/// to run the aarch64 binary, skopeo to read the image, systemd-analyze,
/// file).
const APT_TOOLS: &[(&str, &str)] = &[
    ("rpm", "rpm"),
    ("qemu-aarch64-static", "qemu-user-static"),
    ("skopeo", "skopeo"),
    ("systemd-analyze", "systemd"),
    ("file", "file"),
];

/// Installs what building and testing the artifacts need, when missing.
fn ensure_tools(packages: bool) -> anyhow::Result<()> {
    if packages {
        let bin = crate::setup::cargo_home().join("bin");
        for (binary, version, krate) in CARGO_TOOLS {
            if !bin.join(binary).is_file() {
                cmd::run(Command::new("cargo").args([
                    "install",
                    "--locked",
                    "--version",
                    version,
                    krate,
                ]))
                .with_context(|| format!("installing {krate} {version}"))?;
            }
        }
    }
    let missing: Vec<&str> = APT_TOOLS
        .iter()
        .filter(|(binary, _)| !on_path(binary))
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() && cmd::is_root() {
        cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        cmd::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    Ok(())
}

/// Whether `program` is an executable file in a directory of `$PATH`.
fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

pub fn dist(args: &DistArgs) -> anyhow::Result<()> {
    ensure_tools(!args.binaries_only)?;
    let dir = dist_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut arches = args.arch.clone();
    arches.dedup();
    let mut built = Vec::new();
    for &arch in &arches {
        let bin = build_static(arch, &dir)?;
        built.push((arch, bin));
    }
    if !args.binaries_only {
        for &arch in &arches {
            packages(arch, &dir)?;
        }
        if !args.no_image {
            let layout = dir.join("oci");
            let tar = dir.join("imds-monitor-oci.tar");
            write_oci_image(&built, &layout, &tar)?;
            println!(
                "OCI image layout: {}; archive: {}",
                layout.display(),
                tar.display()
            );
        }
    }
    println!("\ntarget/dist:");
    let mut entries: Vec<_> = fs::read_dir(&dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let meta = e.metadata()?;
        if meta.is_file() {
            println!("  {:>12}  {}", meta.len(), e.file_name().to_string_lossy());
        }
    }
    if args.test {
        let mut test = cmd::cargo();
        test.args(ARTIFACT_TESTS);
        cmd::run(&mut test)?;
    }
    Ok(())
}

fn ensure_target(triple: &str) -> anyhow::Result<()> {
    let installed =
        cmd::probe_stdout(Command::new("rustup").args(["target", "list", "--installed"]))
            .unwrap_or_default();
    if installed.lines().any(|l| l.trim() == triple) {
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["target", "add", triple]))
}

/// Builds the static binary for `arch`, checks it is a static ELF of that
/// machine, and copies it (stripped) into `dir`.
fn build_static(arch: Arch, dir: &Path) -> anyhow::Result<PathBuf> {
    let triple = arch.triple();
    ensure_target(triple)?;
    let mut cargo = cmd::cargo();
    cargo.args([
        "build",
        "--release",
        "-p",
        "imds-monitor",
        "--target",
        triple,
    ]);
    if arch == Arch::Aarch64 {
        // rustc puts its own bin directory on the linker's PATH, so the
        // bundled lld links against the self-contained musl of rust-std.
        cargo.env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld");
    }
    cmd::run(&mut cargo)?;
    let built = cmd::workspace_root()
        .join("target")
        .join(triple)
        .join("release")
        .join("imds-monitor");
    let image = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    check_static_elf(&image, arch.elf_machine()).with_context(|| format!("{}", built.display()))?;
    // Stripped where cargo left it, so the packages (which take it from
    // there) get the small one too; cargo keeps it until it relinks.
    if let Some(strip) = strip_tool() {
        cmd::run(Command::new(strip).arg(&built))?;
    }
    let out = dir.join(arch.binary_name());
    let _ = fs::remove_file(&out);
    fs::copy(&built, &out)?;
    if let Some(desc) = cmd::probe_stdout(Command::new("file").arg("-b").arg(&out)) {
        println!("{}: {}", out.display(), desc.trim());
    }
    Ok(out)
}

/// llvm-strip handles both architectures; binutils' strip only the host's.
fn strip_tool() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = (14..=30)
        .rev()
        .map(|v| PathBuf::from(format!("/usr/lib/llvm-{v}/bin/llvm-strip")))
        .collect();
    candidates.extend(cmd::find_in_path("llvm-strip"));
    candidates.into_iter().find(|p| cmd::is_executable(p))
}

/// An ELF64 little-endian executable for `machine` with no program
/// interpreter and no `DT_NEEDED` library: the kernel runs it without ld.so.
pub fn check_static_elf(image: &[u8], machine: u16) -> anyhow::Result<()> {
    let u16_at = |o: usize| {
        image
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    let u64_at = |o: usize| {
        image
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    if image.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not a little-endian ELF64 file");
    }
    let found = u16_at(18).unwrap_or(0);
    if found != machine {
        bail!("ELF machine {found}, expected {machine}");
    }
    let phoff = u64_at(0x20).unwrap_or(0) as usize;
    let phentsize = u16_at(0x36).unwrap_or(0) as usize;
    let phnum = u16_at(0x38).unwrap_or(0) as usize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(ph).context("truncated program header")?;
        if p_type == 3 {
            bail!("has a program interpreter (PT_INTERP): dynamically linked");
        }
        if p_type == 2 {
            // PT_DYNAMIC (static-pie has one): no DT_NEEDED (1) may be in it.
            let off = u64_at(ph + 8).context("truncated")? as usize;
            let size = u64_at(ph + 32).context("truncated")? as usize;
            for entry in (off..off + size).step_by(16) {
                match u64_at(entry) {
                    Some(0) | None => break,
                    Some(1) => bail!("needs a shared library (DT_NEEDED)"),
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}

fn packages(arch: Arch, dir: &Path) -> anyhow::Result<()> {
    let triple = arch.triple();
    let mut deb = cmd::cargo();
    deb.args(["deb", "-p", "imds-monitor", "--no-build", "--no-strip"])
        .args(["--target", triple, "--output"])
        .arg(dir);
    cmd::run(&mut deb).context("building the .deb (install: cargo install cargo-deb)")?;
    let mut rpm = cmd::cargo();
    // gzip: Amazon Linux 2's rpm 4.11 cannot read the default zstd payload.
    rpm.args(["generate-rpm", "-p", "imds-monitor", "--target", triple])
        .args(["--payload-compress", "gzip", "-o"])
        .arg(dir);
    cmd::run(&mut rpm).context("building the .rpm (install: cargo install cargo-generate-rpm)")
}

// ---------------------------------------------------------------- OCI image

/// One file in a layer tar.
pub struct TarEntry<'a> {
    pub path: &'a str,
    pub mode: u32,
    /// `None` for a directory.
    pub data: Option<&'a [u8]>,
}

/// A reproducible ustar archive: uid/gid 0, mtime 0, entries in the order given.
pub fn tar(entries: &[TarEntry<'_>]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = [0u8; 512];
        let name = match e.data {
            None => format!("{}/", e.path.trim_end_matches('/')),
            Some(_) => e.path.to_owned(),
        };
        if name.len() > 100 {
            bail!("tar path too long: {name}");
        }
        h[..name.len()].copy_from_slice(name.as_bytes());
        let size = e.data.map_or(0, <[u8]>::len);
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = width - 1);
            h[at..at + width].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, u64::from(e.mode));
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, size as u64);
        octal(&mut h, 136, 12, 0);
        h[148..156].copy_from_slice(b"        ");
        h[156] = if e.data.is_some() { b'0' } else { b'5' };
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        if let Some(data) = e.data {
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(512), 0);
        }
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

fn sha256(data: &[u8]) -> anyhow::Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running sha256sum")?;
    let mut stdin = child.stdin.take().context("sha256sum stdin")?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("sha256sum writer panicked"))??;
    let hex = String::from_utf8(out.stdout)?;
    let hex = hex.split_whitespace().next().unwrap_or_default().to_owned();
    if hex.len() != 64 {
        bail!("sha256sum printed no digest");
    }
    Ok(hex)
}

/// A content-addressed blob store under `layout/blobs/sha256`.
struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    /// Stores `data`; returns its descriptor (`mediaType`, `digest`, `size`).
    fn put(&self, media_type: &str, data: &[u8]) -> anyhow::Result<serde_json::Value> {
        let hex = sha256(data)?;
        fs::write(self.dir.join(&hex), data)?;
        Ok(serde_json::json!({
            "mediaType": media_type,
            "digest": format!("sha256:{hex}"),
            "size": data.len(),
        }))
    }
}

/// Where the binary sits in the image, and the container's entrypoint.
pub const IMAGE_BINARY: &str = "usr/bin/imds-monitor";

/// Writes an OCI image layout with one FROM-scratch image per architecture
/// (a single layer: the static binary) and an index naming each platform,
/// then the same tree as an uncompressed tar (an OCI archive).
pub fn write_oci_image(
    binaries: &[(Arch, PathBuf)],
    layout: &Path,
    archive: &Path,
) -> anyhow::Result<()> {
    let _ = fs::remove_dir_all(layout);
    let blobs = Blobs {
        dir: layout.join("blobs").join("sha256"),
    };
    fs::create_dir_all(&blobs.dir)?;
    let version = env!("CARGO_PKG_VERSION");
    let mut manifests = Vec::new();
    for (arch, bin) in binaries {
        let data = fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
        let layer = tar(&[
            TarEntry {
                path: "usr",
                mode: 0o755,
                data: None,
            },
            TarEntry {
                path: "usr/bin",
                mode: 0o755,
                data: None,
            },
            TarEntry {
                path: IMAGE_BINARY,
                mode: 0o755,
                data: Some(&data),
            },
            // Mount points the DaemonSet's volumes land on; empty in the image.
            TarEntry {
                path: "var",
                mode: 0o755,
                data: None,
            },
            TarEntry {
                path: "var/log",
                mode: 0o755,
                data: None,
            },
            TarEntry {
                path: "var/log/imds-monitor",
                mode: 0o755,
                data: None,
            },
        ])?;
        let diff_id = format!("sha256:{}", sha256(&layer)?);
        let layer_desc = blobs.put("application/vnd.oci.image.layer.v1.tar", &layer)?;
        let config = serde_json::json!({
            "created": "1970-01-01T00:00:00Z",
            "architecture": arch.oci(),
            "os": "linux",
            "config": {
                "Entrypoint": [format!("/{IMAGE_BINARY}")],
                "Cmd": ["run", "--mode", "alert"],
                "Labels": {
                    "org.opencontainers.image.title": "imds-monitor",
                    "org.opencontainers.image.version": version,
                    "org.opencontainers.image.description":
                        "Finds, per process and container, what still uses IMDSv1 on an EC2 host",
                },
            },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "cargo xtask dist" }],
        });
        let config_desc = blobs.put(
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&config)?,
        )?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer_desc],
        });
        let mut desc = blobs.put(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest)?,
        )?;
        desc["platform"] = serde_json::json!({ "architecture": arch.oci(), "os": "linux" });
        manifests.push(desc);
    }
    // A multi-platform image: the layout's index names one image index (by
    // tag), which names a manifest per platform.
    let image_index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let mut desc = blobs.put(
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&image_index)?,
    )?;
    desc["annotations"] = serde_json::json!({
        "org.opencontainers.image.ref.name": version,
        "io.containerd.image.name": format!("docker.io/library/imds-monitor:{version}"),
    });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [desc],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec_pretty(&index)?,
    )?;
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;

    // The archive: the same files, in a fixed order.
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("oci-layout".into(), fs::read(layout.join("oci-layout"))?),
        ("index.json".into(), fs::read(layout.join("index.json"))?),
    ];
    let mut names: Vec<_> = fs::read_dir(&blobs.dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        files.push((format!("blobs/sha256/{n}"), fs::read(blobs.dir.join(&n))?));
    }
    let mut entries = vec![
        TarEntry {
            path: "blobs",
            mode: 0o755,
            data: None,
        },
        TarEntry {
            path: "blobs/sha256",
            mode: 0o755,
            data: None,
        },
    ];
    entries.extend(files.iter().map(|(p, d)| TarEntry {
        path: p,
        mode: 0o644,
        data: Some(d),
    }));
    fs::write(archive, tar(&entries)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_is_read_by_gnu_tar() {
        let dir = std::env::temp_dir().join(format!("xtask-tar-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("t.tar");
        let data = vec![7u8; 1000];
        let bytes = tar(&[
            TarEntry {
                path: "usr",
                mode: 0o755,
                data: None,
            },
            TarEntry {
                path: "usr/bin/x",
                mode: 0o755,
                data: Some(&data),
            },
        ])
        .unwrap();
        assert_eq!(bytes.len() % 512, 0);
        fs::write(&archive, &bytes).unwrap();
        let out = Command::new("tar")
            .arg("-tvf")
            .arg(&archive)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(listing.contains("drwxr-xr-x 0/0"), "{listing}");
        assert!(
            listing.contains("-rwxr-xr-x 0/0            1000 1970-01-01 00:00 usr/bin/x"),
            "{listing}"
        );
        let x = dir.join("x");
        fs::create_dir_all(&x).unwrap();
        let out = Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&x)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(fs::read(x.join("usr/bin/x")).unwrap(), data);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn oci_layout_is_content_addressed() {
        let dir = std::env::temp_dir().join(format!("xtask-oci-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("bin");
        fs::write(&bin, b"\x7fELF not really").unwrap();
        let layout = dir.join("oci");
        let archive = dir.join("oci.tar");
        write_oci_image(
            &[(Arch::X86_64, bin.clone()), (Arch::Aarch64, bin)],
            &layout,
            &archive,
        )
        .unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        // Every descriptor names a blob whose digest and size match.
        let blob = |desc: &serde_json::Value| {
            let digest = desc["digest"].as_str().unwrap();
            let hex = digest.strip_prefix("sha256:").unwrap();
            let data = fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
            assert_eq!(sha256(&data).unwrap(), hex);
            assert_eq!(data.len() as u64, desc["size"].as_u64().unwrap());
            data
        };
        let top = index["manifests"].as_array().unwrap();
        assert_eq!(top.len(), 1);
        assert_eq!(
            top[0]["annotations"]["org.opencontainers.image.ref.name"],
            env!("CARGO_PKG_VERSION")
        );
        let image_index: serde_json::Value = serde_json::from_slice(&blob(&top[0])).unwrap();
        let manifests = image_index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 2);
        assert_eq!(manifests[1]["platform"]["architecture"], "arm64");
        for m in manifests {
            let manifest: serde_json::Value = serde_json::from_slice(&blob(m)).unwrap();
            let config: serde_json::Value =
                serde_json::from_slice(&blob(&manifest["config"])).unwrap();
            assert_eq!(config["architecture"], m["platform"]["architecture"]);
            assert_eq!(config["config"]["Entrypoint"][0], "/usr/bin/imds-monitor");
            let layer = blob(&manifest["layers"][0]);
            // Uncompressed layer: its diff_id is its digest.
            assert_eq!(
                config["rootfs"]["diff_ids"][0],
                manifest["layers"][0]["digest"]
            );
            assert_eq!(&layer[..12], b"usr/\0\0\0\0\0\0\0\0");
        }
        let out = Command::new("tar")
            .arg("-tf")
            .arg(&archive)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.lines().any(|l| l == "index.json"), "{listing}");
        assert!(listing.lines().any(|l| l == "oci-layout"), "{listing}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn static_elf_check() {
        // A minimal ELF64 header with one PT_INTERP program header.
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        assert!(
            check_static_elf(&elf, 62)
                .unwrap_err()
                .to_string()
                .contains("PT_INTERP")
        );
        elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        check_static_elf(&elf, 62).unwrap();
        assert!(check_static_elf(&elf, 183).is_err());
    }
}
