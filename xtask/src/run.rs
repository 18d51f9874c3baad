//! `cargo xtask demo | bench | run`: release build, then the demo, the
//! benchmark or the monitor itself (on EC2) with `IMDS_MONITOR_BIN` set.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd;
use crate::setup::{self, SetupArgs};

/// Binaries of the tests crate (`imds-sandbox`, tests/src/bin/).
const DEMO_BIN: &str = "imds-demo";
const BENCH_BIN: &str = "imds-bench";
const MONITOR_BIN: &str = "imds-monitor";
/// Tells the demo and the benchmark which imds-monitor binary to start.
const MONITOR_ENV: &str = "IMDS_MONITOR_BIN";

#[derive(Debug, clap::Args)]
pub struct PassArgs {
    /// Do not run `cargo xtask setup` first.
    #[arg(long)]
    pub no_setup: bool,

    /// Arguments passed through to the program (put them after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Treat this host as an EC2 instance, whatever DMI says.
    #[arg(long, conflicts_with = "not_ec2")]
    pub ec2: bool,

    /// Treat this host as not being an EC2 instance (runs the demo).
    #[arg(long)]
    pub not_ec2: bool,

    /// Do not run `cargo xtask setup` first.
    #[arg(long)]
    pub no_setup: bool,

    /// Arguments for `imds-monitor run` (default: `--mode alert`); put them after `--`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "MONITOR_ARGS"
    )]
    pub args: Vec<String>,
}

pub fn demo(args: &PassArgs) -> anyhow::Result<()> {
    prepare(args.no_setup)?;
    let target = build_release(&["imds-monitor", "imds-sandbox"])?;
    run_sandbox_bin(&target, DEMO_BIN, &args.args)
}

pub fn bench(args: &PassArgs) -> anyhow::Result<()> {
    prepare(args.no_setup)?;
    let target = build_release(&["imds-monitor", "imds-sandbox"])?;
    run_sandbox_bin(&target, BENCH_BIN, &args.args)
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let (on_ec2, why) = if args.ec2 {
        (true, "--ec2 given".to_owned())
    } else if args.not_ec2 {
        (false, "--not-ec2 given".to_owned())
    } else {
        let evidence = Ec2Evidence::read();
        match ec2_reason(&evidence) {
            Some(reason) => (true, reason),
            None => (
                false,
                format!("no EC2 marker found ({})", evidence.describe()),
            ),
        }
    };

    prepare(args.no_setup)?;
    if on_ec2 {
        println!("EC2 instance: {why}; starting imds-monitor (Ctrl-C stops it)");
        let target = build_release(&["imds-monitor"])?;
        let monitor = release_bin(&target, MONITOR_BIN)?;
        if !cmd::is_root() {
            println!(
                "warning: imds-monitor loads eBPF programs and needs root \
                 (or CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN)"
            );
        }
        let default_args = ["--mode".to_owned(), "alert".to_owned()];
        let monitor_args = if args.args.is_empty() {
            &default_args[..]
        } else {
            &args.args[..]
        };
        cmd::run(Command::new(&monitor).arg("run").args(monitor_args))
    } else {
        println!(
            "not an EC2 instance: {why}. Running the demo instead: it starts imds-monitor \
             against a mock IMDS in network namespaces on this machine. Use \
             `cargo xtask run --ec2` to run the monitor here anyway."
        );
        if !args.args.is_empty() {
            println!(
                "note: arguments for imds-monitor ({}) are not given to the demo; \
                 pass demo arguments with `cargo xtask demo -- ARGS`",
                args.args.join(" ")
            );
        }
        let target = build_release(&["imds-monitor", "imds-sandbox"])?;
        run_sandbox_bin(&target, DEMO_BIN, &[])
    }
}

fn prepare(no_setup: bool) -> anyhow::Result<()> {
    if !no_setup {
        setup::setup(&SetupArgs { check: false }).context("setup failed")?;
    }
    Ok(())
}

/// `cargo build --release -p ...`; returns the release directory.
fn build_release(packages: &[&str]) -> anyhow::Result<PathBuf> {
    let mut build = cmd::cargo();
    build.args(["build", "--release"]);
    for p in packages {
        build.args(["-p", p]);
    }
    cmd::run(&mut build)?;
    Ok(target_dir().join("release"))
}

/// The workspace's target directory, as cargo sees it (honours
/// CARGO_TARGET_DIR and build.target-dir).
fn target_dir() -> PathBuf {
    let metadata = cmd::probe_stdout(cmd::cargo().args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--offline",
    ]));
    metadata
        .and_then(|m| serde_json::from_str::<serde_json::Value>(&m).ok())
        .and_then(|v| v.get("target_directory")?.as_str().map(PathBuf::from))
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| cmd::workspace_root().join("target"))
        })
}

fn release_bin(release_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = release_dir.join(name);
    if !cmd::is_executable(&path) {
        bail!(
            "{} was not built; it should come from {}",
            path.display(),
            if name == MONITOR_BIN {
                "imds-monitor/src/main.rs".to_owned()
            } else {
                format!("tests/src/bin/{name}.rs (package imds-sandbox)")
            }
        );
    }
    Ok(path)
}

/// Runs a binary of the tests crate with `IMDS_MONITOR_BIN` set.
fn run_sandbox_bin(release_dir: &Path, name: &str, args: &[String]) -> anyhow::Result<()> {
    let monitor = release_bin(release_dir, MONITOR_BIN)?;
    let bin = release_bin(release_dir, name)?;
    cmd::run(Command::new(bin).env(MONITOR_ENV, monitor).args(args))
}

/// What the machine says about itself, read without any network access
/// (never 169.254.169.254).
#[derive(Debug, Default, Clone)]
pub struct Ec2Evidence {
    pub board_vendor: Option<String>,
    pub sys_vendor: Option<String>,
    pub bios_vendor: Option<String>,
    pub hypervisor_uuid: Option<String>,
}

const BOARD_VENDOR: &str = "/sys/class/dmi/id/board_vendor";
const SYS_VENDOR: &str = "/sys/class/dmi/id/sys_vendor";
const BIOS_VENDOR: &str = "/sys/devices/virtual/dmi/id/bios_vendor";
const HYPERVISOR_UUID: &str = "/sys/hypervisor/uuid";

impl Ec2Evidence {
    pub fn read() -> Self {
        let read = |p: &str| fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
        Ec2Evidence {
            board_vendor: read(BOARD_VENDOR),
            sys_vendor: read(SYS_VENDOR),
            bios_vendor: read(BIOS_VENDOR),
            hypervisor_uuid: read(HYPERVISOR_UUID),
        }
    }

    /// What was read, for messages.
    pub fn describe(&self) -> String {
        let fields = [
            ("board_vendor", &self.board_vendor),
            ("sys_vendor", &self.sys_vendor),
            ("bios_vendor", &self.bios_vendor),
            ("hypervisor uuid", &self.hypervisor_uuid),
        ];
        let seen: Vec<String> = fields
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v:?}")))
            .collect();
        if seen.is_empty() {
            "no DMI or Xen hypervisor files readable".to_owned()
        } else {
            seen.join(", ")
        }
    }
}

/// Why this is an EC2 instance, or `None`. Nitro instances name
/// "Amazon EC2" as DMI vendor; Xen ones have a hypervisor UUID starting
/// with "ec2".
pub fn ec2_reason(e: &Ec2Evidence) -> Option<String> {
    let vendor = [
        (BOARD_VENDOR, &e.board_vendor),
        (SYS_VENDOR, &e.sys_vendor),
        (BIOS_VENDOR, &e.bios_vendor),
    ];
    for (path, value) in vendor {
        if let Some(v) = value
            && v.contains("Amazon EC2")
        {
            return Some(format!("{path} is {v:?}"));
        }
    }
    if let Some(uuid) = &e.hypervisor_uuid
        && uuid.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("ec2"))
    {
        return Some(format!("{HYPERVISOR_UUID} starts with \"ec2\""));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(
        board: Option<&str>,
        sys: Option<&str>,
        bios: Option<&str>,
        uuid: Option<&str>,
    ) -> Ec2Evidence {
        Ec2Evidence {
            board_vendor: board.map(String::from),
            sys_vendor: sys.map(String::from),
            bios_vendor: bios.map(String::from),
            hypervisor_uuid: uuid.map(String::from),
        }
    }

    #[test]
    fn nitro_instance() {
        let e = ev(
            Some("Amazon EC2"),
            Some("Amazon EC2"),
            Some("Amazon EC2"),
            None,
        );
        assert!(ec2_reason(&e).unwrap().contains("board_vendor"));
        let e = ev(None, Some("Amazon EC2"), None, None);
        assert!(ec2_reason(&e).unwrap().contains("sys_vendor"));
        let e = ev(None, None, Some("Amazon EC2"), None);
        assert!(ec2_reason(&e).unwrap().contains("bios_vendor"));
    }

    #[test]
    fn xen_instance() {
        let e = ev(
            None,
            Some("Xen"),
            Some("Xen"),
            Some("ec2e1916-9099-7caf-fd21-012345abcdef"),
        );
        assert!(ec2_reason(&e).unwrap().contains("/sys/hypervisor/uuid"));
        let e = ev(
            None,
            None,
            None,
            Some("EC2E1916-9099-7CAF-FD21-012345ABCDEF"),
        );
        assert!(ec2_reason(&e).is_some());
    }

    #[test]
    fn not_ec2() {
        assert_eq!(ec2_reason(&Ec2Evidence::default()), None);
        let e = ev(Some("Google"), Some("Google"), Some("Google"), None);
        assert_eq!(ec2_reason(&e), None);
        let e = ev(None, Some("QEMU"), Some("SeaBIOS"), None);
        assert_eq!(ec2_reason(&e), None);
        // Plain Xen elsewhere, and a short uuid file.
        let e = ev(
            None,
            Some("Xen"),
            Some("Xen"),
            Some("4a7c3b2e-0000-0000-0000-000000000000"),
        );
        assert_eq!(ec2_reason(&e), None);
        let e = ev(None, None, None, Some("ec"));
        assert_eq!(ec2_reason(&e), None);
        // "Amazon" alone is not EC2 (e.g. other Amazon hardware).
        let e = ev(None, Some("Amazon.com, Inc."), None, None);
        assert_eq!(ec2_reason(&e), None);
    }

    #[test]
    fn describe_lists_what_was_read() {
        let e = ev(None, Some("QEMU"), None, None);
        assert_eq!(e.describe(), "sys_vendor \"QEMU\"");
        assert_eq!(
            Ec2Evidence::default().describe(),
            "no DMI or Xen hypervisor files readable"
        );
    }
}
