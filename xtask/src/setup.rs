//! `cargo xtask setup`: check, and install when missing, everything the build
//! and the tests need. The fast path (nothing missing) runs only dpkg-query,
//! rustc/rustup probes and `bpf-linker --version`: no cargo, no apt.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read as _;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cmd;

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
];

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Only check: install nothing, exit 1 if anything is missing.
    #[arg(long)]
    pub check: bool,
}

/// One missing piece and how to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fix {
    Nightly,
    Apt(Vec<String>),
    RustSrc,
    BpfLinker { llvm: u32, force: bool },
}

impl Fix {
    fn command(&self) -> String {
        match self {
            Fix::Nightly => "rustup toolchain install nightly --component rust-src".into(),
            Fix::Apt(pkgs) => format!(
                "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
                pkgs.join(" ")
            ),
            Fix::RustSrc => "rustup component add rust-src --toolchain nightly".into(),
            Fix::BpfLinker { llvm, force } => cmd::display(&bpf_linker_install(*llvm, *force)),
        }
    }

    fn what(&self) -> String {
        match self {
            Fix::Nightly => "nightly toolchain".into(),
            Fix::Apt(pkgs) => pkgs.join(" "),
            Fix::RustSrc => "rust-src for nightly".into(),
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
    /// Pieces installed during the checks (the nightly toolchain).
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

    // 1. The nightly toolchain, whose LLVM decides everything LLVM-related.
    let mut llvm = nightly_llvm();
    match &llvm {
        Some((release, major)) => {
            report.ok += 1;
            line(
                "ok",
                "nightly toolchain",
                &format!("{release}, LLVM {major}"),
            );
        }
        None => {
            line(
                missing_word,
                "nightly toolchain",
                "`rustc +nightly -vV` failed",
            );
            if install {
                // Needed before anything else can be checked.
                cmd::run(Command::new("rustup").args([
                    "toolchain",
                    "install",
                    "nightly",
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ]))
                .context(
                    "cannot install the nightly toolchain; the eBPF crate needs it \
                     (run `rustup toolchain install nightly --component rust-src`)",
                )?;
                llvm = nightly_llvm();
                if llvm.is_none() {
                    bail!(
                        "nightly installed but `rustc +nightly -vV` still fails or shows no LLVM version"
                    );
                }
                report.installed_early += 1;
            } else {
                report.fixes.push(Fix::Nightly);
            }
        }
    }
    let llvm_major = llvm.map(|(_, major)| major);
    let unsupported = llvm_major.filter(|m| !BPF_LINKER_LLVM_MAJORS.contains(m));
    if let Some(major) = unsupported {
        bail!(
            "the nightly toolchain uses LLVM {major}, but bpf-linker {BPF_LINKER_VERSION} \
             supports LLVM {}..={} only: install a nightly whose `rustc +nightly -vV` shows \
             a supported LLVM, or bump BPF_LINKER_VERSION in xtask/src/setup.rs",
            BPF_LINKER_LLVM_MAJORS.start(),
            BPF_LINKER_LLVM_MAJORS.end()
        );
    }

    // 2. Debian packages, in one dpkg-query.
    let mut packages: Vec<(String, String)> = Vec::new();
    if let Some(n) = llvm_major {
        packages.push((
            format!("llvm-{n}-dev"),
            format!("bpf-linker build (nightly's LLVM {n})"),
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
            "N comes from the nightly toolchain",
        );
        report.skipped += 1;
    }
    if !apt_missing.is_empty() {
        report.fixes.push(Fix::Apt(apt_missing));
    }

    // 3. rust-src for nightly (needed by -Z build-std=core).
    if llvm_major.is_some() {
        if nightly_has_rust_src() {
            report.ok += 1;
            line("ok", "rust-src for nightly", "");
        } else {
            line(
                missing_word,
                "rust-src for nightly",
                "needed by -Z build-std=core",
            );
            report.fixes.push(Fix::RustSrc);
        }
    }

    // 4. bpf-linker, built against the nightly's LLVM.
    match llvm_major {
        Some(major) => match check_bpf_linker(major)? {
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
                "its LLVM must match the nightly toolchain's",
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
        Fix::Nightly => unreachable!("the nightly toolchain is installed before the other checks"),
        Fix::Apt(pkgs) => {
            let apt = || {
                let mut c = Command::new("apt-get");
                c.env("DEBIAN_FRONTEND", "noninteractive");
                c
            };
            cmd::run(apt().arg("update"))?;
            cmd::run(apt().args(["install", "-y"]).args(pkgs))?;
        }
        Fix::RustSrc => {
            cmd::run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))?;
        }
        Fix::BpfLinker { llvm, force } => {
            // Never run two builds of it at once: wait for one started elsewhere.
            if wait_for_other_bpf_linker_install()?
                && let Ok(Ok(detail)) = check_bpf_linker(*llvm)
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

/// `(release, LLVM major)` of the nightly toolchain, or `None` if missing.
fn nightly_llvm() -> Option<(String, u32)> {
    let vv = cmd::probe_stdout(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = parse_llvm_major(&vv)?;
    let release = parse_field(&vv, "release").unwrap_or("nightly").to_owned();
    Some((format!("rustc {release}"), major))
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

fn nightly_has_rust_src() -> bool {
    cmd::probe_stdout(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .is_some_and(|out| has_component(&out, "rust-src"))
}

/// Whether `rustup component list --installed` output lists `component`
/// (`rust-src`, or a target-specific name like `rust-std-x86_64-...`).
pub fn has_component(list: &str, component: &str) -> bool {
    list.lines().any(|l| {
        let name = l.split_whitespace().next().unwrap_or("");
        name == component
    })
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

/// `Ok(detail)` when a usable bpf-linker built for `llvm` is installed;
/// `Err((why, force))` otherwise, `force` when one exists and must be replaced.
#[allow(clippy::type_complexity)]
fn check_bpf_linker(llvm: u32) -> anyhow::Result<Result<String, (String, bool)>> {
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
                "{version} is built against LLVM {major} (from {source}), the nightly uses LLVM {llvm}"
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
    fn rustup_components() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(!has_component(list, "rust-s"));
        assert!(!has_component("rust-src-extra\n", "rust-src"));
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
            Fix::Apt(vec!["llvm-22-dev".into(), "curl".into()]).command(),
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y llvm-22-dev curl"
        );
    }
}
