//! `imds-monitor check`: a preflight of the host. One line per check, `ok`,
//! `warn` or `FAIL`, with what was found and how to fix it; exit status 0
//! when `run` can work here.
//!
//! [`rules`] decides each check from plain inputs (file contents, as parsed
//! by `procfs`, numbers) and is unit-tested with other hosts' files; [`host`]
//! gathers the inputs on this machine. Nothing is sent to an endpoint or
//! anywhere else.

mod host;
mod rules;

use std::{
    io::{self, Write as _},
    net::SocketAddr,
    process::ExitCode,
};

use serde::{Serialize, Serializer};

use crate::{cgroups, endpoints, interfaces};

pub use rules::MIN_KERNEL;

const EXAMPLES: &str = "\
Examples:
  # Before the first run on a host, or while building an AMI
  sudo imds-monitor check

  # For scripts: exit status 0 when `run` can work here, 1 when not
  sudo imds-monitor check --format json | jq -r '.[] | select(.status != \"ok\")'

  # Check the interface and endpoints that `run` will be given
  sudo imds-monitor check --iface ens5 --endpoint 169.254.170.2

  # What each program costs the kernel's verifier, as a table
  sudo imds-monitor check --verifier
    ok    programs          9 programs verified in 0.21 s of kernel time; largest
                            imds_classify 41,230 insns (budget 200,000) ...
          program        type        insns  max states/insn  total states  peak states     time
          imds_classify  sched_cls  41,230               12         2,310        1,204  95.1 ms
          ...

  # The same with run --kernel-log debug's log calls (off, they cost nothing)
  sudo imds-monitor check --verifier --kernel-log debug

  # The same per program, for scripts and the kernel matrix
  sudo imds-monitor check --json | jq '.[] | select(.check == \"programs\") | .verifier'

Checks: kernel (>= 5.10; TCX from 6.6, clsact below), btf, privileges,
bpf-syscall, unprivileged-bpf, lockdown, cgroup2, bpffs, tracefs, programs
(the embedded programs are loaded, measured by the verifier and unloaded, never
attached; each must verify in at most 200,000 processed instructions, all
together in under 1 s), interface, containers, kprobes.

A program the verifier refuses is reported on one line: the program, the
kernel, the verifier's reason and last instruction, and the file under
/run/imds-monitor (or $TMPDIR) that holds the whole verifier log.

Routes come from the main routing table, read over netlink: nothing is
sent to IMDS.

Exit status: 0 no check failed (warnings allowed), 1 a check failed, 2 bad
command line.";

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct CheckArgs {
    /// text: one line per check; json: an array of {check, status, detail,
    /// fix}, status being "ok", "warn" or "fail"
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Same as --format json. The programs check then carries `verifier`:
    /// the kernel release, and per program processed_insns, insn_limit,
    /// max_states_per_insn, total_states, peak_states, mark_read,
    /// verification_us, stack_depth (or `rejected`, when one was refused)
    #[arg(long, conflicts_with = "format")]
    pub json: bool,

    /// Also print, under the programs check, a table of what each program
    /// costs the verifier: processed instructions, states, verification time
    #[arg(long)]
    pub verifier: bool,

    /// Load the programs with `run --kernel-log` at this level (debug: the
    /// log calls are verified too); the programs check then measures that
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = crate::kernel_log::KernelLog::Off)]
    pub kernel_log: crate::kernel_log::KernelLog,

    /// Interface `run` will be given with --iface (repeatable). Default: the
    /// interfaces that route to the endpoints, as `run` picks them
    #[arg(long = "iface", value_name = "NAME")]
    pub ifaces: Vec<String>,

    /// Endpoint `run` will be given with --endpoint (repeatable). Default:
    /// 169.254.169.254:80 and [fd00:ec2::254]:80
    #[arg(long = "endpoint", value_name = "ADDR[:PORT]", value_parser = endpoints::parse)]
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    const fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// The checks, in the order they are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Kernel,
    Btf,
    Privileges,
    BpfSyscall,
    UnprivilegedBpf,
    Lockdown,
    Cgroup2,
    Bpffs,
    Tracefs,
    Programs,
    Interface,
    Containers,
    Kprobes,
}

impl Check {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Btf => "btf",
            Self::Privileges => "privileges",
            Self::BpfSyscall => "bpf-syscall",
            Self::UnprivilegedBpf => "unprivileged-bpf",
            Self::Lockdown => "lockdown",
            Self::Cgroup2 => "cgroup2",
            Self::Bpffs => "bpffs",
            Self::Tracefs => "tracefs",
            Self::Programs => "programs",
            Self::Interface => "interface",
            Self::Containers => "containers",
            Self::Kprobes => "kprobes",
        }
    }
}

impl Serialize for Check {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: Check,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// The command or setting that fixes it (failures, and warnings that have one).
    pub fix: Option<String>,
    /// programs: what the verifier said about each program, or about the
    /// one it refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifier: Option<crate::verifier::Report>,
}

pub fn main(args: CheckArgs) -> ExitCode {
    let findings = run_checks(&args);
    let format = if args.json { Format::Json } else { args.format };
    let out = match format {
        Format::Text => text(&findings, args.verifier),
        Format::Json => serde_json::to_string_pretty(&findings).expect("findings serialize") + "\n",
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = io::stdout().lock().write_all(out.as_bytes());
    if findings.iter().any(|f| f.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Gathers each input on this host and applies its rule.
fn run_checks(args: &CheckArgs) -> Vec<Finding> {
    let endpoints = if args.endpoints.is_empty() {
        endpoints::defaults()
    } else {
        args.endpoints.clone()
    };
    let status = host::status();
    let mounts = host::mounts();
    let cap_eff = status.as_ref().map(|s| s.capeff);
    let caps_ok = cap_eff.is_some_and(|c| rules::missing_caps(c).is_empty());

    let mut findings = vec![
        rules::kernel(&host::release(), host::effective_version()),
        rules::btf(host::btf_size()),
        rules::privileges(status.as_ref()),
        rules::bpf_syscall(
            &host::bpf_probe(),
            caps_ok,
            status.as_ref().and_then(|s| s.seccomp),
        ),
        // procfs 0.18 has no accessor for this sysctl.
        rules::unprivileged_bpf(
            host::read("/proc/sys/kernel/unprivileged_bpf_disabled").as_deref(),
        ),
        rules::lockdown(
            host::read("/sys/kernel/security/lockdown").as_deref(),
            &host::cmdline(),
        ),
        rules::cgroup2(&mounts),
        rules::bpffs(&mounts),
    ];
    let can_mount = cap_eff.is_some_and(|c| c & (1 << rules::CAP_SYS_ADMIN) != 0);
    let tracefs = host::tracefs(can_mount);
    findings.push(rules::tracefs(&tracefs));

    // Loading is the one test that proves `run` can load; it needs what the
    // checks before it looked at, and run would mount a missing tracefs.
    let blocker = findings.iter().find(|f| {
        f.status == Status::Fail
            && matches!(
                f.check,
                Check::Kernel | Check::Btf | Check::Privileges | Check::BpfSyscall | Check::Tracefs
            )
    });
    let load = match (blocker, &tracefs.dir) {
        (Some(f), _) => {
            rules::ProgramLoad::Skipped(format!("the {} check failed", f.check.as_str()))
        }
        (None, None) => rules::ProgramLoad::Skipped(
            "tracefs is not mounted, and check does not mount it".to_owned(),
        ),
        (None, Some(_)) => host::load_programs(&endpoints, args.kernel_log),
    };
    findings.push(rules::programs(&load));

    let routes = interfaces::routes_to(&endpoints)
        .unwrap_or_else(|_| endpoints.iter().map(|e| (*e, None)).collect());
    findings.push(rules::interface(&routes, &args.ifaces, &host::interfaces()));

    findings.push(match cgroups::cgroup2_mount_of(&mounts.0) {
        Some(root) => {
            let (tally, stopped) = host::walk_cgroups(&root);
            rules::containers(&root.display().to_string(), &tally, stopped.as_deref())
        }
        None => rules::containers_unscanned(),
    });
    findings.push(rules::kprobes());
    findings
}

/// One line per check (and with `verifier`, the programs' table under
/// theirs), then a verdict.
fn text(findings: &[Finding], verifier: bool) -> String {
    let mut out = String::new();
    for f in findings {
        out += &format!(
            "{:<4}  {:<16}  {}",
            f.status.label(),
            f.check.as_str(),
            f.detail
        );
        if let Some(fix) = &f.fix {
            out += &format!("; fix: {fix}");
        }
        out.push('\n');
        if let Some(report) = f
            .verifier
            .as_ref()
            .filter(|r| verifier && r.rejected.is_none())
        {
            for line in report.table().lines() {
                out += &format!("      {line}\n");
            }
        }
    }
    let count = |s| findings.iter().filter(|f| f.status == s).count();
    let (warnings, failures) = (count(Status::Warn), count(Status::Fail));
    out += &if failures == 0 {
        format!(
            "no check failed ({warnings} warning{}): `imds-monitor run` can work on this host\n",
            if warnings == 1 { "" } else { "s" }
        )
    } else {
        format!(
            "{failures} check{} failed: `imds-monitor run` will not work until {} fixed\n",
            if failures == 1 { "" } else { "s" },
            if failures == 1 { "it is" } else { "they are" }
        )
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(check: Check, status: Status, fix: Option<&str>) -> Finding {
        Finding {
            check,
            status,
            detail: "found".to_owned(),
            fix: fix.map(str::to_owned),
            verifier: None,
        }
    }

    #[test]
    fn text_has_one_line_per_check_and_a_verdict() {
        let out = text(
            &[
                finding(Check::Kernel, Status::Ok, None),
                finding(Check::Bpffs, Status::Warn, Some("mount it")),
                finding(Check::BpfSyscall, Status::Fail, Some("run as root")),
            ],
            true,
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0], "ok    kernel            found");
        assert_eq!(lines[1], "warn  bpffs             found; fix: mount it");
        assert_eq!(lines[2], "FAIL  bpf-syscall       found; fix: run as root");
        assert!(lines[3].starts_with("1 check failed"), "{}", lines[3]);

        let fine = text(&[finding(Check::Bpffs, Status::Warn, None)], false);
        assert!(
            fine.ends_with(
                "no check failed (1 warning): `imds-monitor run` can work on this host\n"
            )
        );
    }

    #[test]
    fn json_shape_is_stable() {
        let json = serde_json::to_value([
            finding(Check::UnprivilegedBpf, Status::Ok, None),
            finding(Check::Cgroup2, Status::Fail, Some("boot with x")),
        ])
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"check": "unprivileged-bpf", "status": "ok", "detail": "found", "fix": null},
                {"check": "cgroup2", "status": "fail", "detail": "found", "fix": "boot with x"},
            ])
        );
    }
}
