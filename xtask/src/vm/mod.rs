//! The kernel matrix: boots Debian's cloud kernels (5.10, 6.1, 6.12) under
//! qemu and runs a command in each, with this machine's own root as its root
//! (shared read-only over virtiofs, tmpfs overlay on top, no network).
//!
//! Everything lives under `target/kernel-matrix/`: private apt lists and
//! unpacked kernels (kept), and one dir per VM run (removed after the run).

mod initramfs;
mod kernels;
pub mod matrix;
mod qemu;

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::cmd;
use crate::test::Tally;
pub use kernels::Kernel;
pub use qemu::VmRun;

#[derive(Debug, clap::Args)]
pub struct KernelsArgs {
    /// Kernel line to boot: 5.10, 6.1, 6.12 or all (repeatable, or comma-separated).
    #[arg(long, value_name = "LINE", default_value = "all")]
    pub kernel: Vec<String>,

    /// Seconds each VM may run before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,

    /// Refresh the kernel package lists now (otherwise weekly).
    #[arg(long)]
    pub update: bool,

    /// Command run by `/bin/sh -c` in each guest, from the workspace root.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// `cargo xtask kernels`: run a command in each selected kernel.
pub fn kernels(args: &KernelsArgs) -> anyhow::Result<()> {
    let lines = kernels::select(&args.kernel)?;
    let matrix = Matrix::prepare(&lines, args.update)?;
    let script = args.command.join(" ");
    let timeout = Duration::from_secs(args.timeout);
    let mut runs = Vec::new();
    for kernel in &matrix.kernels {
        println!("== kernel {} ({}) ==", kernel.line, kernel.version);
        let mut out = io::stdout();
        let run = matrix.run(kernel, &script, timeout, &mut |bytes| {
            let _ = out.write_all(bytes);
            let _ = out.flush();
        })?;
        runs.push(run);
    }
    println!("== kernels ==");
    print_table(runs.iter().map(|r| (r, None)));
    if runs.iter().any(|r| r.exit != Some(0)) {
        return Err(cmd::Silent(1).into());
    }
    Ok(())
}

/// Host tools and kernels, ready to run VMs.
#[derive(Debug)]
pub struct Matrix {
    tools: qemu::Tools,
    pub kernels: Vec<Kernel>,
    runs: PathBuf,
}

impl Matrix {
    /// Installs missing host packages (as root) and fetches missing kernels.
    /// Fails, saying what is missing, when that is not possible.
    pub fn prepare(lines: &[kernels::Line], refresh: bool) -> anyhow::Result<Self> {
        if !cmd::is_root() {
            bail!(
                "the kernel matrix needs root: virtiofsd shares / and missing packages are \
                 installed with apt-get; run as root"
            );
        }
        let tools = host_tools()?;
        let cache = cache_dir();
        let kernels = lines
            .iter()
            .map(|line| kernels::fetch(&cache, line, refresh))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for k in &kernels {
            println!("kernel {}: {}", k.line, k.version);
        }
        Ok(Self {
            tools,
            kernels,
            runs: cache.join("run"),
        })
    }

    /// A scratch dir next to the VM run dirs, removed when dropped.
    pub fn scratch_dir(&self, name: &str) -> anyhow::Result<PidDir> {
        PidDir::create(&self.runs, name)
    }

    /// Boots `kernel` and runs `script` from the workspace root.
    pub fn run(
        &self,
        kernel: &Kernel,
        script: &str,
        timeout: Duration,
        on_output: &mut dyn FnMut(&[u8]),
    ) -> anyhow::Result<VmRun> {
        let run = qemu::run(
            &self.tools,
            kernel,
            &self.runs,
            &cmd::workspace_root(),
            script,
            timeout,
            on_output,
        )?;
        println!(
            "-- kernel {}: boot {} s, total {:.1} s, {}",
            run.version,
            secs(run.boot),
            run.total.as_secs_f64(),
            describe_exit(&run)
        );
        Ok(run)
    }
}

/// Kernels, apt lists and run dirs: in the target dir, so `cargo clean`
/// removes them and nothing outside the workspace is written.
fn cache_dir() -> PathBuf {
    cmd::workspace_root().join("target/kernel-matrix")
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64()))
}

fn describe_exit(run: &VmRun) -> String {
    match (run.exit, &run.problem) {
        (Some(rc), _) => format!("exit {rc}"),
        (None, Some(why)) => format!("no exit status: {why}"),
        (None, None) => "no exit status".to_owned(),
    }
}

/// One row per VM run: kernel, boot and total seconds, then passed/failed
/// when tests were counted, and the exit status.
pub fn print_table<'a>(rows: impl IntoIterator<Item = (&'a VmRun, Option<&'a Tally>)>) {
    let rows: Vec<_> = rows.into_iter().collect();
    let counted = rows.iter().any(|(_, t)| t.is_some());
    let width = rows
        .iter()
        .map(|(r, _)| r.version.len())
        .chain([6])
        .max()
        .unwrap_or(6);
    let mut header = format!("{:<width$}  {:>6}  {:>7}", "kernel", "boot s", "total s");
    if counted {
        header.push_str(&format!("  {:>6}  {:>6}", "passed", "failed"));
    }
    header.push_str("  result");
    println!("{header}");
    for (run, tally) in rows {
        let mut line = format!(
            "{:<width$}  {:>6}  {:>7.1}",
            run.version,
            secs(run.boot),
            run.total.as_secs_f64()
        );
        if counted {
            let t = tally.copied().unwrap_or_default();
            line.push_str(&format!("  {:>6}  {:>6}", t.passed, t.failed));
        }
        line.push_str(&format!("  {}", describe_exit(run)));
        println!("{line}");
    }
}

/// Host programs the VMs need, and the Debian package of each.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("depmod", "kmod"),
    ("xz", "xz-utils"),
    ("zstd", "zstd"),
    ("dpkg-deb", "dpkg"),
];

/// qemu 7.2's C virtiofsd (bookworm, package qemu-system-common), or the
/// Rust one (package virtiofsd from trixie on).
const VIRTIOFSD: &[&str] = &["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];

/// Finds the host tools, installing the missing ones with apt-get.
fn host_tools() -> anyhow::Result<qemu::Tools> {
    let missing = missing_packages();
    if !missing.is_empty() {
        if cmd::find_in_path("apt-get").is_none() {
            bail!(
                "the kernel matrix needs {} (Debian packages), and there is no apt-get to \
                 install them",
                missing.join(" ")
            );
        }
        install(&missing).with_context(|| {
            format!(
                "the kernel matrix needs the Debian packages {} and installing them failed",
                missing.join(" ")
            )
        })?;
    }
    let mut virtiofsd = find_virtiofsd();
    if virtiofsd.is_none() {
        // Newer Debian ships it as its own package.
        install(&["virtiofsd".to_owned()]).context("no virtiofsd, and installing it failed")?;
        virtiofsd = find_virtiofsd();
    }
    let virtiofsd = virtiofsd.with_context(|| {
        format!(
            "no virtiofsd at {} even after installing qemu-system-common and virtiofsd",
            VIRTIOFSD.join(" or ")
        )
    })?;
    let still: Vec<_> = missing_packages();
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    let help = cmd::probe(Command::new(&virtiofsd).arg("--help"))
        .map(|o| String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned())
        .unwrap_or_default();
    Ok(qemu::Tools {
        qemu: cmd::find_in_path("qemu-system-x86_64").context("qemu-system-x86_64")?,
        rust_virtiofsd: help.contains("--shared-dir"),
        virtiofsd,
    })
}

fn find_virtiofsd() -> Option<PathBuf> {
    VIRTIOFSD
        .iter()
        .map(PathBuf::from)
        .find(|p| cmd::is_executable(p))
}

fn missing_packages() -> Vec<String> {
    let mut missing: Vec<String> = HOST_TOOLS
        .iter()
        .filter(|(tool, _)| cmd::find_in_path(tool).is_none())
        .map(|(_, pkg)| (*pkg).to_owned())
        .collect();
    let busybox_ok = fs::read(initramfs::BUSYBOX).is_ok_and(|b| initramfs::is_static_elf(&b));
    if !busybox_ok {
        missing.push("busybox-static".to_owned());
    }
    if find_virtiofsd().is_none() {
        missing.push("qemu-system-common".to_owned());
    }
    missing
}

fn install(packages: &[String]) -> anyhow::Result<()> {
    let apt = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    cmd::run(apt().args(["-q", "update"]))?;
    cmd::run(apt().args(["install", "-y", "-q"]).args(packages))
}

/// A directory `PARENT/NAME.pidPID` that is removed when dropped. The pid
/// lets a later run remove the dirs of runs that were killed.
#[derive(Debug)]
pub struct PidDir {
    path: PathBuf,
    keep: bool,
}

impl PidDir {
    pub fn create(parent: &Path, name: &str) -> anyhow::Result<Self> {
        prune_stale(parent);
        let path = parent.join(format!("{name}.pid{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the dir to `dest`, which then stays.
    pub fn persist_as(mut self, dest: &Path) -> anyhow::Result<()> {
        fs::rename(&self.path, dest).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.path.display(),
                dest.display()
            )
        })?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for PidDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The pid in a [`PidDir`] name.
fn pid_of(name: &str) -> Option<u32> {
    name.rsplit_once(".pid")?.1.parse().ok()
}

/// Removes the [`PidDir`]s under `parent` whose process is gone.
fn prune_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(pid_of) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_dir_names() {
        assert_eq!(pid_of("6.1.0-57-cloud-amd64.pid1234"), Some(1234));
        assert_eq!(pid_of(".partial-6.12.118+deb13-cloud-amd64.pid7"), Some(7));
        assert_eq!(pid_of("6.1.0-57-cloud-amd64"), None);
        assert_eq!(pid_of("x.pidx"), None);
    }

    #[test]
    fn pid_dir_is_removed_unless_persisted() {
        let parent = std::env::temp_dir().join(format!("xtask-piddir-{}", std::process::id()));
        let d = PidDir::create(&parent, "a").unwrap();
        let p = d.path().to_owned();
        assert!(p.is_dir());
        drop(d);
        assert!(!p.exists());
        let d = PidDir::create(&parent, "b").unwrap();
        d.persist_as(&parent.join("b")).unwrap();
        assert!(parent.join("b").is_dir());
        fs::remove_dir_all(&parent).unwrap();
    }
}
