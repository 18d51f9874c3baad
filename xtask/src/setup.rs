//! `cargo xtask setup`: check, and install when missing, everything the build
//! and the tests need. The fast path (nothing missing) runs only dpkg-query,
//! two rustc probes and `bpf-linker --version`: no cargo, no apt, no network.
//!
//! The eBPF crate builds with the toolchain pinned in [`TOOLCHAIN_FILE`]
//! (a dated nightly). When it is missing but the installed `nightly` is that
//! very release, setup names it under the pinned name with a symlink in
//! rustup's toolchains directory instead of downloading it again.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read as _;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cmd;

#[path = "../../imds-monitor-ebpf/toolchain_pin.rs"]
mod toolchain_pin;
use toolchain_pin::toolchain_channel;

/// Pins the eBPF crate's toolchain (`channel`); imds-monitor/build.rs reads it
/// too. Relative to the workspace root.
pub const TOOLCHAIN_FILE: &str = "imds-monitor-ebpf/rust-toolchain.toml";
/// bpf-linker release installed by setup.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker 0.13.0 has a cargo feature (`llvm-N`) for.
const BPF_LINKER_LLVM_MAJORS: RangeInclusive<u32> = 21..=23;
/// Written to the cargo home after setup installs bpf-linker: which LLVM it
/// was built against, for when the binary itself cannot tell.
const STAMP_FILE: &str = "bpf-linker.imds-monitor-stamp";

/// Debian packages needed whatever the LLVM version: bpf-linker's build
/// dependencies and the tools the integration tests and the demo call.
const APT_BASE: &[(&str, &str)] = &[
    ("zlib1g-dev", "bpf-linker build"),
    ("libzstd-dev", "bpf-linker build"),
    ("nftables", "tests: mock IMDS address, blocking"),
    ("iproute2", "tests: netns and veth"),
    ("curl", "tests and demo: IMDS clients"),
    (
        "python3-venv",
        "tests: botocore and prometheus-client from PyPI",
    ),
    ("python3-yaml", "tests: the DaemonSet manifest"),
];

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Only check: install nothing, exit 1 if anything is missing.
    #[arg(long)]
    pub check: bool,
}

/// The pinned toolchain: its rustup name and, for a dated nightly
/// (`nightly-YYYY-MM-DD`), the date its rustup channel manifest must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub name: String,
    pub date: Option<String>,
}

impl Pin {
    pub fn parse(toolchain_file: &str) -> Option<Pin> {
        let name = toolchain_channel(toolchain_file)?;
        Some(Pin {
            name: name.to_owned(),
            date: nightly_date(name).map(str::to_owned),
        })
    }

    pub fn load() -> anyhow::Result<Pin> {
        let path = cmd::workspace_root().join(TOOLCHAIN_FILE);
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Pin::parse(&text)
            .with_context(|| format!("{}: no `channel = \"...\"` line", path.display()))
    }

    /// Why `tc` is not the pinned release, if it is not.
    fn mismatch(&self, tc: &InstalledToolchain) -> Option<String> {
        let want = self.date.as_deref()?;
        match tc.date.as_deref() {
            Some(have) if have == want => None,
            Some(have) => Some(format!("{} is the nightly of {have}", tc.sysroot.display())),
            None => Some(format!(
                "{} has no rustup channel manifest to tell its date",
                tc.sysroot.display()
            )),
        }
    }
}

/// How the pinned toolchain gets installed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Provision {
    /// The installed `nightly` is the pinned release: a symlink
    /// `<rustup home>/toolchains/<pin>-<host>` to its directory. Not `rustup
    /// toolchain link`, which refuses names of official toolchains; a symlink
    /// keeps rustup treating it as the dist toolchain it is (components,
    /// `rustup component add`), and the compiler's sysroot, hence the paths
    /// in the object's debug info, stays the nightly's directory.
    Link { target: PathBuf, link: PathBuf },
    /// `rustup toolchain install` (downloads).
    Download { name: String },
}

impl Provision {
    fn command(&self) -> String {
        match self {
            Provision::Link { target, link } => format!(
                "ln -s {} {}",
                cmd::shell_quote(&target.to_string_lossy()),
                cmd::shell_quote(&link.to_string_lossy())
            ),
            Provision::Download { name } => cmd::display(&rustup_install(name)),
        }
    }
}

/// One missing piece and how to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fix {
    Toolchain { name: String, how: Provision },
    Apt(Vec<String>),
    RustSrc { toolchain: String },
    BpfLinker { llvm: u32, force: bool },
}

impl Fix {
    fn command(&self) -> String {
        match self {
            Fix::Toolchain { how, .. } => how.command(),
            Fix::Apt(pkgs) => format!(
                "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
                pkgs.join(" ")
            ),
            Fix::RustSrc { toolchain } => {
                format!("rustup component add rust-src --toolchain {toolchain}")
            }
            Fix::BpfLinker { llvm, force } => cmd::display(&bpf_linker_install(*llvm, *force)),
        }
    }

    fn what(&self) -> String {
        match self {
            Fix::Toolchain { name, .. } => format!("toolchain {name}"),
            Fix::Apt(pkgs) => pkgs.join(" "),
            Fix::RustSrc { toolchain } => format!("rust-src for {toolchain}"),
            Fix::BpfLinker { .. } => "bpf-linker".into(),
        }
    }
}

#[derive(Debug, Default)]
struct Report {
    ok: usize,
    fixes: Vec<Fix>,
    /// Checks that could not run because an earlier piece is missing.
    skipped: usize,
    /// Pieces installed during the checks (the pinned toolchain).
    installed_early: usize,
}

fn line(status: &str, what: &str, detail: &str) {
    if detail.is_empty() {
        println!("{status:<11} {what}");
    } else {
        println!("{status:<11} {what}: {detail}");
    }
}

pub fn setup(args: &SetupArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = cmd::is_root();
    let install = root && !args.check;
    let missing_word = if install { "installing" } else { "missing" };
    let mut report = Report::default();

    // 1. The pinned toolchain, whose LLVM decides everything LLVM-related.
    let pin = Pin::load()?;
    let what = format!("toolchain {}", pin.name);
    let mut toolchain = toolchain_info(&pin.name);
    let wrong = toolchain.as_ref().and_then(|tc| pin.mismatch(tc));
    match (&toolchain, &wrong) {
        (Some(tc), None) => {
            report.ok += 1;
            line("ok", &what, &format!("{}, LLVM {}", tc.release, tc.llvm));
        }
        _ => {
            let how = provision(&pin);
            let why = match &wrong {
                Some(w) => w.clone(),
                None => format!("`rustc +{} -vV` failed", pin.name),
            };
            let by = match &how {
                Provision::Link { .. } => {
                    "the installed nightly is that release (link, no download)"
                }
                Provision::Download { .. } => "no installed nightly is that release (download)",
            };
            line(missing_word, &what, &format!("{why}; {by}"));
            if install {
                // Needed before anything else can be checked.
                remove_stale_links(&pin, wrong.is_some())?;
                install_toolchain(&how).with_context(|| {
                    format!(
                        "cannot install {}, which the eBPF crate builds with (pinned in {TOOLCHAIN_FILE}); \
                         try `{}`",
                        pin.name,
                        how.command()
                    )
                })?;
                toolchain = toolchain_info(&pin.name);
                match &toolchain {
                    None => bail!(
                        "{} installed but `rustc +{} -vV` still fails or shows no LLVM version",
                        pin.name,
                        pin.name
                    ),
                    Some(tc) => {
                        if let Some(w) = pin.mismatch(tc) {
                            bail!("{} installed, but {w}", pin.name);
                        }
                        line(
                            "ok",
                            &what,
                            &format!("{}, LLVM {} (installed)", tc.release, tc.llvm),
                        );
                    }
                }
                report.installed_early += 1;
            } else {
                toolchain = None;
                report.fixes.push(Fix::Toolchain {
                    name: pin.name.clone(),
                    how,
                });
            }
        }
    }
    let llvm_major = toolchain.as_ref().map(|tc| tc.llvm);
    let unsupported = llvm_major.filter(|m| !BPF_LINKER_LLVM_MAJORS.contains(m));
    if let Some(major) = unsupported {
        bail!(
            "{} (pinned in {TOOLCHAIN_FILE}) uses LLVM {major}, but bpf-linker {BPF_LINKER_VERSION} \
             supports LLVM {}..={} only: pin a toolchain whose `rustc -vV` shows a supported LLVM, \
             or bump BPF_LINKER_VERSION in xtask/src/setup.rs",
            pin.name,
            BPF_LINKER_LLVM_MAJORS.start(),
            BPF_LINKER_LLVM_MAJORS.end()
        );
    }

    // 2. Debian packages, in one dpkg-query.
    let mut packages: Vec<(String, String)> = Vec::new();
    if let Some(n) = llvm_major {
        packages.push((
            format!("llvm-{n}-dev"),
            format!("bpf-linker build ({}'s LLVM {n})", pin.name),
        ));
        packages.push((format!("libpolly-{n}-dev"), "bpf-linker build".into()));
    }
    packages.extend(
        APT_BASE
            .iter()
            .map(|(p, why)| (p.to_string(), why.to_string())),
    );
    let installed = dpkg_installed(packages.iter().map(|(p, _)| p.as_str()));
    let mut apt_missing = Vec::new();
    for (pkg, why) in &packages {
        if installed.contains(pkg.as_str()) {
            report.ok += 1;
            line("ok", &format!("apt {pkg}"), why);
        } else {
            line(missing_word, &format!("apt {pkg}"), why);
            apt_missing.push(pkg.clone());
        }
    }
    if llvm_major.is_none() {
        line(
            "skipped",
            "apt llvm-N-dev libpolly-N-dev",
            "N comes from the pinned toolchain",
        );
        report.skipped += 1;
    }
    if !apt_missing.is_empty() {
        report.fixes.push(Fix::Apt(apt_missing));
    }

    // 3. rust-src for the pinned toolchain (needed by -Z build-std=core).
    if let Some(tc) = &toolchain {
        let what = format!("rust-src for {}", pin.name);
        if has_rust_src(&tc.sysroot) {
            report.ok += 1;
            line("ok", &what, "");
        } else {
            line(missing_word, &what, "needed by -Z build-std=core");
            report.fixes.push(Fix::RustSrc {
                toolchain: pin.name.clone(),
            });
        }
    }

    // 4. bpf-linker, built against the pinned toolchain's LLVM.
    match llvm_major {
        Some(major) => match check_bpf_linker(major, &pin.name)? {
            Ok(detail) => {
                report.ok += 1;
                line("ok", "bpf-linker", &detail);
            }
            Err((why, force)) => {
                line(missing_word, "bpf-linker", &why);
                report.fixes.push(Fix::BpfLinker { llvm: major, force });
            }
        },
        None => {
            line(
                "skipped",
                "bpf-linker",
                "its LLVM must match the pinned toolchain's",
            );
            report.skipped += 1;
        }
    }

    if report.fixes.is_empty() && report.skipped == 0 && report.installed_early == 0 {
        println!(
            "setup: all {} checks ok ({:.1} s)",
            report.ok,
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }

    if !install {
        let why = if args.check {
            "--check given"
        } else {
            "not root, so nothing was installed"
        };
        println!(
            "setup: {} ok, {} missing ({why}). To install them:",
            report.ok,
            report.fixes.len()
        );
        for fix in &report.fixes {
            println!("  {}:\n      {}", fix.what(), fix.command());
        }
        if llvm_major.is_none() {
            println!("  then run `cargo xtask setup` again for the LLVM-dependent pieces.");
        } else {
            println!("  or run `cargo xtask setup` as root to do all of this.");
        }
        bail!("setup incomplete: {} piece(s) missing", report.fixes.len());
    }

    let installed_count = report.fixes.len() + report.installed_early;
    for fix in &report.fixes {
        apply(fix).with_context(|| format!("installing {} failed", fix.what()))?;
    }
    println!(
        "setup: {} ok, {installed_count} installed ({:.1} s)",
        report.ok,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn apply(fix: &Fix) -> anyhow::Result<()> {
    match fix {
        Fix::Toolchain { .. } => {
            unreachable!("the pinned toolchain is installed before the other checks")
        }
        Fix::Apt(pkgs) => {
            let apt = || {
                let mut c = Command::new("apt-get");
                c.env("DEBIAN_FRONTEND", "noninteractive");
                c
            };
            cmd::run(apt().arg("update"))?;
            cmd::run(apt().args(["install", "-y"]).args(pkgs))?;
        }
        Fix::RustSrc { toolchain } => {
            cmd::run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                toolchain,
            ]))?;
        }
        Fix::BpfLinker { llvm, force } => {
            // Never run two builds of it at once: wait for one started elsewhere.
            if wait_for_other_bpf_linker_install()?
                && let Ok(Ok(detail)) = check_bpf_linker(*llvm, "")
            {
                line(
                    "ok",
                    "bpf-linker",
                    &format!("{detail} (installed meanwhile)"),
                );
                return Ok(());
            }
            println!("(building bpf-linker takes several minutes)");
            cmd::run(&mut bpf_linker_install(*llvm, *force))?;
            let path = bpf_linker_path().context(
                "cargo install succeeded but no bpf-linker is in PATH or the cargo home",
            )?;
            let out = cmd::probe(Command::new(&path).arg("--version"))
                .filter(|o| o.status.success())
                .with_context(|| format!("{} --version fails after install", path.display()))?;
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let stamp = format!(
                "llvm-major={llvm}\nversion={BPF_LINKER_VERSION}\nbinary={}\n",
                path.display()
            );
            let stamp_path = cargo_home().join(STAMP_FILE);
            fs::write(&stamp_path, stamp)
                .with_context(|| format!("cannot write {}", stamp_path.display()))?;
            line("ok", "bpf-linker", &format!("{version}, LLVM {llvm}"));
        }
    }
    Ok(())
}

/// `cargo install bpf-linker` for the given LLVM major. `LLVM_PREFIX` points
/// bpf-linker's build script at Debian's versioned LLVM: without it the script
/// follows the `llvm-config` in PATH, which may be another LLVM (Debian's
/// /usr/bin/llvm-config is LLVM 14 when the `llvm` package is installed).
fn bpf_linker_install(llvm: u32, force: bool) -> Command {
    let mut c = Command::new("cargo");
    c.env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"));
    c.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
    ])
    .args(["--no-default-features", "--features"])
    .arg(format!("llvm-{llvm}"));
    if force {
        c.arg("--force");
    }
    // Outside the workspace, so the project's .cargo/config.toml does not apply.
    let home = cargo_home();
    if home.is_dir() {
        c.current_dir(home);
    }
    c
}

/// A toolchain as rustup runs it.
#[derive(Debug)]
struct InstalledToolchain {
    /// `rustc 1.97.0-nightly (e50aa6fba 2026-05-19)`.
    release: String,
    llvm: u32,
    host: String,
    /// `rustc --print sysroot`: the toolchain's directory, symlinks resolved.
    sysroot: PathBuf,
    /// `date` of its rustup channel manifest (dist toolchains have one).
    date: Option<String>,
}

/// `rustc +name`, never installing a missing toolchain on the way (rustup
/// does when auto-install is on).
fn rustc_for(name: &str) -> Command {
    let mut c = Command::new("rustc");
    c.arg(format!("+{name}")).env("RUSTUP_AUTO_INSTALL", "0");
    c
}

/// The toolchain rustup knows as `name`, or `None` if it is missing or
/// broken. Two rustc probes and one small file read.
fn toolchain_info(name: &str) -> Option<InstalledToolchain> {
    let vv = cmd::probe_stdout(rustc_for(name).arg("-vV"))?;
    let sysroot = cmd::probe_stdout(rustc_for(name).args(["--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let release = vv.lines().next().unwrap_or(name).trim().to_owned();
    let date = fs::read_to_string(sysroot.join("lib/rustlib/multirust-channel-manifest.toml"))
        .ok()
        .and_then(|m| manifest_date(&m).map(str::to_owned));
    Some(InstalledToolchain {
        release,
        llvm: parse_llvm_major(&vv)?,
        host: parse_field(&vv, "host")?.to_owned(),
        sysroot,
        date,
    })
}

/// `2026-05-20` from `nightly-2026-05-20`; `None` for other channels.
pub fn nightly_date(channel: &str) -> Option<&str> {
    let date = channel.strip_prefix("nightly-")?;
    let ok = date.len() == 10
        && date.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    ok.then_some(date)
}

/// `date` of a rustup channel manifest (its top-level key, before any table).
pub fn manifest_date(text: &str) -> Option<&str> {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "date").then(|| value.trim().trim_matches('"'))
        })
}

fn rustup_home() -> PathBuf {
    if let Some(home) = std::env::var_os("RUSTUP_HOME") {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".rustup")
}

/// How to install the pinned toolchain: link the installed `nightly` when it
/// is the pinned release (no download), else download it.
fn provision(pin: &Pin) -> Provision {
    let download = Provision::Download {
        name: pin.name.clone(),
    };
    let Some(date) = &pin.date else {
        return download;
    };
    let Some(nightly) = toolchain_info("nightly") else {
        return download;
    };
    if nightly.date.as_ref() != Some(date) {
        return download;
    }
    let toolchains = rustup_home().join("toolchains");
    if !toolchains.is_dir() {
        return download;
    }
    Provision::Link {
        target: nightly.sysroot,
        link: toolchains.join(format!("{}-{}", pin.name, nightly.host)),
    }
}

fn rustup_install(name: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args([
        "toolchain",
        "install",
        name,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]);
    c
}

fn install_toolchain(how: &Provision) -> anyhow::Result<()> {
    match how {
        Provision::Download { name } => cmd::run(&mut rustup_install(name)),
        Provision::Link { target, link } => {
            println!("$ {}", how.command());
            std::os::unix::fs::symlink(target, link).with_context(|| {
                format!("cannot create {} -> {}", link.display(), target.display())
            })?;
            // rustup keeps the hash of the channel manifest a toolchain was
            // installed from; the nightly's is the pinned date's, so with a copy
            // `rustup update` finds the pinned toolchain unchanged, offline.
            let hashes = rustup_home().join("update-hashes");
            let (Some(from), Some(to)) = (target.file_name(), link.file_name()) else {
                return Ok(());
            };
            let from = hashes.join(from);
            if from.is_file() {
                let _ = fs::copy(&from, hashes.join(to));
            }
            Ok(())
        }
    }
}

/// Before installing the pinned toolchain: removes symlinks under its name
/// (one setup made to a `nightly` that has been updated or removed since). A
/// real directory is rustup's to remove: when `wrong_release`, say so.
fn remove_stale_links(pin: &Pin, wrong_release: bool) -> anyhow::Result<()> {
    let toolchains = rustup_home().join("toolchains");
    let prefix = format!("{}-", pin.name);
    let entries = fs::read_dir(&toolchains)
        .with_context(|| format!("cannot read {}", toolchains.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_string_lossy().starts_with(&prefix);
        if !ours {
            continue;
        }
        if !path.is_symlink() {
            if !wrong_release {
                continue;
            }
            bail!(
                "{} is not the release its name says: remove it with \
                 `rustup toolchain uninstall {}` and run `cargo xtask setup` again",
                path.display(),
                pin.name
            );
        }
        println!("$ rm {}", cmd::shell_quote(&path.to_string_lossy()));
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        let _ = fs::remove_file(rustup_home().join("update-hashes").join(entry.file_name()));
    }
    Ok(())
}

fn parse_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// The LLVM major from `rustc -vV` output (`LLVM version: 22.1.4` -> 22).
pub fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    let version = parse_field(rustc_vv, "LLVM version")?;
    version.split('.').next()?.trim().parse().ok()
}

/// Installed packages among `pkgs`, from one `dpkg-query` call.
fn dpkg_installed<'a>(pkgs: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let out = cmd::probe(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Package}\\t${db:Status-Abbrev}\\n"])
            .args(pkgs),
    );
    // dpkg-query exits 1 when a package is unknown, but still lists the others.
    out.map(|o| parse_dpkg_query(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

/// Names whose status is "ii" (wanted install, installed) in
/// `dpkg-query -W -f='${Package}\t${db:Status-Abbrev}\n'` output.
pub fn parse_dpkg_query(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| {
            let (pkg, status) = l.split_once('\t')?;
            let pkg = pkg.split(':').next().unwrap_or(pkg);
            status.starts_with("ii").then(|| pkg.to_owned())
        })
        .collect()
}

/// Whether the toolchain at `sysroot` has the library sources that
/// `-Z build-std` reads (cargo looks for this lock file there).
fn has_rust_src(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/Cargo.lock")
        .is_file()
}

pub fn cargo_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cargo")
}

fn bpf_linker_path() -> Option<PathBuf> {
    cmd::find_in_path("bpf-linker").or_else(|| {
        let p = cargo_home().join("bin/bpf-linker");
        cmd::is_executable(&p).then_some(p)
    })
}

/// `Ok(detail)` when a usable bpf-linker built for `llvm` (the LLVM of
/// `toolchain`) is installed; `Err((why, force))` otherwise, `force` when one
/// exists and must be replaced.
#[allow(clippy::type_complexity)]
fn check_bpf_linker(llvm: u32, toolchain: &str) -> anyhow::Result<Result<String, (String, bool)>> {
    let Some(path) = bpf_linker_path() else {
        return Ok(Err(("not installed".into(), false)));
    };
    let out = cmd::probe(Command::new(&path).arg("--version"));
    let Some(out) = out.filter(|o| o.status.success()) else {
        return Ok(Err((
            format!("{} --version fails (broken install?)", path.display()),
            true,
        )));
    };
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut on_path_note = String::new();
    if cmd::find_in_path("bpf-linker").is_none() {
        on_path_note = format!(
            "; note: {} is not in PATH, xtask adds it for its own builds",
            path.parent().unwrap_or(&path).display()
        );
    }
    match bpf_linker_llvm(&path) {
        Some((major, source)) if major == llvm => Ok(Ok(format!(
            "{version}, LLVM {major} (from {source}){on_path_note}"
        ))),
        Some((major, source)) => Ok(Err((
            format!(
                "{version} is built against LLVM {major} (from {source}), {toolchain} uses LLVM {llvm}"
            ),
            true,
        ))),
        None => Ok(Err((
            format!("{version}: cannot tell which LLVM it was built against"),
            true,
        ))),
    }
}

/// Which LLVM major the bpf-linker at `path` uses, and how we know: the
/// libLLVM it links to, else cargo's install record, else our stamp file.
fn bpf_linker_llvm(path: &Path) -> Option<(u32, &'static str)> {
    // DT_NEEDED names live in .dynstr, near the start of the file.
    let head = fs::File::open(path).ok().and_then(|f| {
        let mut buf = Vec::new();
        f.take(4 << 20).read_to_end(&mut buf).ok().map(|_| buf)
    });
    if let Some(major) = head.and_then(|b| llvm_soname_major(&b)) {
        return Some((major, "its libLLVM soname"));
    }
    let home = cargo_home();
    let in_cargo_home =
        fs::canonicalize(path).ok() == fs::canonicalize(home.join("bin/bpf-linker")).ok();
    if !in_cargo_home {
        return None;
    }
    if let Some(major) = fs::read_to_string(home.join(".crates2.json"))
        .ok()
        .and_then(|j| crates2_llvm_major(&j))
    {
        return Some((major, "cargo's install record"));
    }
    let stamp = home.join(STAMP_FILE);
    let mtime = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    if mtime(&stamp) >= mtime(path)
        && let Some(major) = fs::read_to_string(&stamp)
            .ok()
            .and_then(|s| parse_stamp(&s))
    {
        return Some((major, "xtask's stamp file"));
    }
    None
}

/// The major of the first `libLLVM.so.N` / `libLLVM-N.so` name in an ELF
/// binary (its DT_NEEDED entry when bpf-linker links LLVM dynamically).
pub fn llvm_soname_major(bin: &[u8]) -> Option<u32> {
    const NEEDLE: &[u8] = b"libLLVM";
    let mut i = 0;
    while let Some(pos) = find(&bin[i..], NEEDLE) {
        let rest = &bin[i + pos + NEEDLE.len()..];
        let digits = if let Some(r) = rest.strip_prefix(b".so.") {
            Some(r)
        } else {
            rest.strip_prefix(b"-")
        };
        if let Some(d) = digits {
            let len = d.iter().take_while(|b| b.is_ascii_digit()).count();
            let tail_ok = rest.starts_with(b".so.") || d[len..].starts_with(b".so");
            if len > 0
                && len <= 3
                && tail_ok
                && let Ok(n) = std::str::from_utf8(&d[..len]).unwrap_or("").parse()
            {
                return Some(n);
            }
        }
        i += pos + NEEDLE.len();
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `llvm-N` feature of the bpf-linker entry in cargo's `.crates2.json`.
pub fn crates2_llvm_major(json: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let installs = v.get("installs")?.as_object()?;
    let (_, entry) = installs
        .iter()
        .find(|(k, _)| k.starts_with("bpf-linker "))?;
    entry
        .get("features")?
        .as_array()?
        .iter()
        .filter_map(|f| f.as_str()?.strip_prefix("llvm-")?.parse().ok())
        .next()
}

/// `llvm-major=N` from our stamp file.
pub fn parse_stamp(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("llvm-major="))
        .and_then(|v| v.trim().parse().ok())
}

/// If another `cargo install bpf-linker` runs (another shell, a parallel
/// setup), wait for it. Returns whether there was one.
fn wait_for_other_bpf_linker_install() -> anyhow::Result<bool> {
    let Some((pid, cmdline)) = other_bpf_linker_install() else {
        return Ok(false);
    };
    line(
        "waiting",
        "bpf-linker",
        &format!("for pid {pid} (`{cmdline}`) to finish"),
    );
    while Path::new(&format!("/proc/{pid}")).exists() {
        if cmd::interrupted() {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(true)
}

fn other_bpf_linker_install() -> Option<(u32, String)> {
    let me = std::process::id();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let raw = fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        is_bpf_linker_install(&args).then(|| (pid, args.join(" ")))
    })
}

/// Whether `args` is a `cargo install ... bpf-linker ...` command line.
pub fn is_bpf_linker_install(args: &[String]) -> bool {
    let Some(prog) = args.first() else {
        return false;
    };
    let base = Path::new(prog)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    base == "cargo" && args.iter().any(|a| a == "install") && args.iter().any(|a| a == "bpf-linker")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIGHTLY_VV: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)
binary: rustc
commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a
commit-date: 2026-05-19
host: x86_64-unknown-linux-gnu
release: 1.97.0-nightly
LLVM version: 22.1.4
";

    #[test]
    fn llvm_major_from_rustc_vv() {
        assert_eq!(parse_llvm_major(NIGHTLY_VV), Some(22));
        assert_eq!(parse_field(NIGHTLY_VV, "release"), Some("1.97.0-nightly"));
        // Older rustc without the line, garbage, empty.
        assert_eq!(parse_llvm_major("rustc 1.0.0\nrelease: 1.0.0\n"), None);
        assert_eq!(parse_llvm_major("LLVM version: x.y\n"), None);
        assert_eq!(parse_llvm_major(""), None);
        // Single-component version and CRLF line endings.
        assert_eq!(parse_llvm_major("LLVM version: 19\r\n"), Some(19));
    }

    #[test]
    fn dpkg_query_status() {
        let out =
            "curl\tii \nllvm-22-dev\tii \nnftables\trc \nzlib1g-dev:amd64\tii \niproute2\tun \n";
        let got = parse_dpkg_query(out);
        assert!(got.contains("curl"));
        assert!(got.contains("llvm-22-dev"));
        assert!(got.contains("zlib1g-dev"), "arch qualifier is dropped");
        assert!(!got.contains("nftables"), "removed, config files left");
        assert!(!got.contains("iproute2"), "not installed");
    }

    #[test]
    fn toolchain_file() {
        let file = "# pinned\n[toolchain]\nchannel = \"nightly-2026-05-20\"  # LLVM 22\n\
                    components = [\"rust-src\"]\n";
        assert_eq!(toolchain_channel(file), Some("nightly-2026-05-20"));
        assert_eq!(toolchain_channel("channel='1.95.0'\n"), Some("1.95.0"));
        assert_eq!(toolchain_channel("channels = \"x\"\n"), None);
        assert_eq!(toolchain_channel("channel = \"\"\n"), None);
        assert_eq!(toolchain_channel("channel = nightly\n"), None, "unquoted");
        assert_eq!(
            toolchain_channel("channel = \"nightly\n"),
            None,
            "unterminated"
        );

        assert_eq!(nightly_date("nightly-2026-05-20"), Some("2026-05-20"));
        assert_eq!(nightly_date("nightly"), None);
        assert_eq!(nightly_date("nightly-2026-5-20"), None);
        assert_eq!(
            nightly_date("nightly-2026-05-20-x86_64-unknown-linux-gnu"),
            None
        );
        assert_eq!(nightly_date("1.95.0"), None);
        assert_eq!(
            Pin::parse("channel = \"stable\"\n"),
            Some(Pin {
                name: "stable".into(),
                date: None
            })
        );

        // The repository's own pin: a dated nightly, so setup can check it.
        let pin = Pin::load().unwrap();
        assert!(pin.date.is_some(), "{pin:?}");
    }

    #[test]
    fn channel_manifest_date() {
        let manifest = "manifest-version = \"2\"\ndate = \"2026-05-20\"\n\
                        [pkg.cargo]\nversion = \"x\"\ndate = \"1999-01-01\"\n";
        assert_eq!(manifest_date(manifest), Some("2026-05-20"));
        assert_eq!(
            manifest_date("manifest-version = \"2\"\n[pkg]\ndate = \"1999-01-01\"\n"),
            None,
            "a table's date is not the manifest's"
        );
        assert_eq!(manifest_date(""), None);

        let pin = Pin::parse("channel = \"nightly-2026-05-20\"").unwrap();
        let tc = |date: Option<&str>| InstalledToolchain {
            release: "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)".into(),
            llvm: 22,
            host: "x86_64-unknown-linux-gnu".into(),
            sysroot: "/r/toolchains/nightly-x86_64-unknown-linux-gnu".into(),
            date: date.map(String::from),
        };
        assert_eq!(pin.mismatch(&tc(Some("2026-05-20"))), None);
        let why = pin.mismatch(&tc(Some("2026-06-01"))).unwrap();
        assert!(why.contains("nightly of 2026-06-01"), "{why}");
        assert!(pin.mismatch(&tc(None)).is_some(), "undated: cannot tell");
    }

    #[test]
    fn soname_major() {
        let mut elf = b"\x7fELF\0\0junk\0libc.so.6\0libLLVM.so.22.1\0libstdc++.so.6\0".to_vec();
        assert_eq!(llvm_soname_major(&elf), Some(22));
        elf = b"\0libLLVM-19.so\0".to_vec();
        assert_eq!(llvm_soname_major(&elf), Some(19));
        // A mention of the name that is not a soname is skipped.
        elf = b"see libLLVM for details\0libLLVM-\0libLLVM.so.21.1\0".to_vec();
        assert_eq!(llvm_soname_major(&elf), Some(21));
        assert_eq!(llvm_soname_major(b"statically linked"), None);
        assert_eq!(llvm_soname_major(b"libLLVM"), None);
    }

    #[test]
    fn crates2_feature() {
        let json = r#"{"installs":{
            "cargo-nextest 0.9.1 (registry+https://github.com/rust-lang/crates.io-index)":{"features":[]},
            "bpf-linker 0.13.0 (registry+https://github.com/rust-lang/crates.io-index)":
              {"version_req":"=0.13.0","bins":["bpf-linker"],"features":["llvm-22"],
               "all_features":false,"no_default_features":true}}}"#;
        assert_eq!(crates2_llvm_major(json), Some(22));
        assert_eq!(crates2_llvm_major(r#"{"installs":{}}"#), None);
        assert_eq!(
            crates2_llvm_major(r#"{"installs":{"bpf-linker 0.13.0 (x)":{"features":[]}}}"#),
            None,
            "default features: the LLVM is not recorded"
        );
        assert_eq!(crates2_llvm_major("not json"), None);
    }

    #[test]
    fn stamp() {
        assert_eq!(parse_stamp("llvm-major=22\nversion=0.13.0\n"), Some(22));
        assert_eq!(parse_stamp("version=0.13.0\n"), None);
    }

    #[test]
    fn other_install_detection() {
        let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(is_bpf_linker_install(&v(
            "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/bin/cargo install bpf-linker --version 0.13.0"
        )));
        assert!(is_bpf_linker_install(&v(
            "cargo install --locked bpf-linker"
        )));
        assert!(!is_bpf_linker_install(&v("cargo install cargo-nextest")));
        assert!(!is_bpf_linker_install(&v("grep cargo install bpf-linker")));
        assert!(!is_bpf_linker_install(&[]));
    }

    #[test]
    fn fix_commands() {
        let fix = Fix::BpfLinker {
            llvm: 22,
            force: true,
        };
        let c = fix.command();
        assert!(
            c.contains("cargo install bpf-linker --version 0.13.0 --locked --no-default-features --features llvm-22 --force"),
            "{c}"
        );
        assert_eq!(
            Fix::RustSrc {
                toolchain: "nightly-2026-05-20".into()
            }
            .command(),
            "rustup component add rust-src --toolchain nightly-2026-05-20"
        );
        let download = Fix::Toolchain {
            name: "nightly-2026-05-20".into(),
            how: Provision::Download {
                name: "nightly-2026-05-20".into(),
            },
        };
        assert_eq!(download.what(), "toolchain nightly-2026-05-20");
        assert_eq!(
            download.command(),
            "rustup toolchain install nightly-2026-05-20 --profile minimal --component rust-src"
        );
        let link = Provision::Link {
            target: "/root/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu".into(),
            link: "/root/.rustup/toolchains/nightly-2026-05-20-x86_64-unknown-linux-gnu".into(),
        };
        assert_eq!(
            link.command(),
            "ln -s /root/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu \
             /root/.rustup/toolchains/nightly-2026-05-20-x86_64-unknown-linux-gnu"
        );
        assert_eq!(
            Fix::Apt(vec!["llvm-22-dev".into(), "curl".into()]).command(),
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y llvm-22-dev curl"
        );
    }
}
