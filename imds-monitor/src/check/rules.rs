//! One pure function per check: the facts gathered from the host go in, a
//! [`Finding`] comes out. Nothing here reads the machine, so every rule is
//! unit-tested with the file contents of other hosts (parsed by `procfs`, as
//! the host's own are).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    path::PathBuf,
};

use procfs::process::{MountInfos, Status as ProcStatus};

use super::{Check, Finding, Status};
use crate::{
    verifier::{BUDGET_INSNS, BUDGET_TOTAL, Report, thousands},
    workload::Workload,
};

/// The supported floor: Amazon Linux 2's 5.10. The programs need ring
/// buffers and bpf_ktime_get_boot_ns (5.8), bounded loops (5.3) and tail
/// calls; 5.10 is the oldest kernel they are verified on.
pub const MIN_KERNEL: Version = Version::new(5, 10, 0);
/// Linux 6.6 added TCX links; aya (and `run`) use them from there on.
pub const TCX_KERNEL: Version = Version::new(6, 6, 0);

/// How `run` can be given the capabilities it needs without being root.
pub const CAPS_FIX: &str = "run as root (sudo imds-monitor run), or grant the capabilities: \
     `setcap cap_bpf,cap_net_admin,cap_perfmon,cap_sys_admin+ep /usr/local/bin/imds-monitor`, \
     or in the systemd unit `AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_ADMIN`";

impl Finding {
    fn new(check: Check, status: Status, detail: impl Into<String>) -> Self {
        Self {
            check,
            status,
            detail: detail.into(),
            fix: None,
            verifier: None,
        }
    }

    fn ok(check: Check, detail: impl Into<String>) -> Self {
        Self::new(check, Status::Ok, detail)
    }

    fn warn(check: Check, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(check, Status::Warn, detail).with_fix(fix)
    }

    fn fail(check: Check, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(check, Status::Fail, detail).with_fix(fix)
    }

    fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

// ---------------------------------------------------------------- kernel

/// A kernel version, as compared for feature support.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// `6.18.44-fc-v595`, `5.10.223-211.872.amzn2.x86_64`, `6.8.0-1012-aws`,
/// `6.1-rc3`: the leading `major.minor[.patch]`; a missing patch is 0.
pub fn parse_version(release: &str) -> Option<Version> {
    let release = release.trim();
    let end = release
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(release.len());
    let mut parts = release[..end].split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some(Version::new(major, minor, patch))
}

/// `release` is `uname -r`; `effective` the version aya decides with (it
/// prefers Ubuntu's /proc/version_signature and Debian's `uname -v`).
pub fn kernel(release: &str, effective: Option<Version>) -> Finding {
    let release = release.trim();
    let from_release = parse_version(release);
    let Some(version) = effective.or(from_release) else {
        return Finding::warn(
            Check::Kernel,
            format!("cannot read a version from the kernel release `{release}`"),
            "make sure the kernel is Linux 5.10 or newer (uname -r)",
        );
    };
    let mut detail = release.to_owned();
    if from_release.is_some_and(|v| v != version) {
        detail += &format!(" (upstream {version})");
    }
    if version < MIN_KERNEL {
        return Finding::fail(
            Check::Kernel,
            format!(
                "{detail}: Linux 5.10 or newer is needed (ring buffers and \
                 bpf_ktime_get_boot_ns need 5.8; 5.10 is the oldest kernel the programs are \
                 verified on)"
            ),
            "boot a 5.10+ kernel: Amazon Linux 2 (5.10) or 2023, Ubuntu 22.04 or 24.04, \
             Bottlerocket (Amazon Linux 2's 4.14 kernel is too old: \
             `sudo amazon-linux-extras install kernel-5.10`)",
        );
    }
    let attach = if version >= TCX_KERNEL {
        "TC attaches with TCX links (>= 6.6)"
    } else {
        "TC attaches with a clsact qdisc and a netlink filter (TCX needs 6.6; \
         a qdisc imds-monitor adds is removed on exit)"
    };
    Finding::ok(
        Check::Kernel,
        format!("{detail}: supported (>= 5.10); {attach}"),
    )
}

// ---------------------------------------------------------------- BTF

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// `size`: of /sys/kernel/btf/vmlinux, `None` if it does not exist.
pub fn btf(size: Option<u64>) -> Finding {
    match size {
        Some(bytes) => Finding::ok(
            Check::Btf,
            format!(
                "{VMLINUX_BTF} present ({:.1} MiB)",
                bytes as f64 / f64::from(1 << 20)
            ),
        ),
        None => Finding::fail(
            Check::Btf,
            format!("{VMLINUX_BTF} is missing: this kernel was built without BTF"),
            "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (Amazon Linux 2023, \
             Ubuntu 22.04 and later, Bottlerocket ship one)",
        ),
    }
}

// ---------------------------------------------------------------- privileges

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

fn cap_name(cap: u32) -> &'static str {
    match cap {
        CAP_NET_ADMIN => "CAP_NET_ADMIN",
        CAP_SYS_PTRACE => "CAP_SYS_PTRACE",
        CAP_SYS_ADMIN => "CAP_SYS_ADMIN",
        CAP_PERFMON => "CAP_PERFMON",
        CAP_BPF => "CAP_BPF",
        _ => "CAP_?",
    }
}

fn has(cap_eff: u64, cap: u32) -> bool {
    cap_eff & (1 << cap) != 0
}

/// What loading and attaching needs, as the kernel checks it: CAP_BPF,
/// CAP_PERFMON (tracepoints) and CAP_NET_ADMIN (TC, cgroup socket hooks);
/// CAP_SYS_ADMIN stands in for each of them.
pub fn missing_caps(cap_eff: u64) -> Vec<&'static str> {
    if has(cap_eff, CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]
        .into_iter()
        .filter(|&c| !has(cap_eff, c))
        .map(cap_name)
        .collect()
}

/// From /proc/self/status; `None` if it could not be read or parsed (procfs
/// wants, among others, the `Uid:` and `CapEff:` lines).
pub fn privileges(status: Option<&ProcStatus>) -> Finding {
    // The effective uid: the second of `Uid:\treal\teffective\tsaved\tfs`.
    let euid = status.map(|s| s.euid);
    let who = match euid {
        Some(0) => "uid 0".to_owned(),
        Some(uid) => format!("uid {uid} (not root)"),
        None => "uid unknown".to_owned(),
    };
    let Some(cap_eff) = status.map(|s| s.capeff) else {
        return Finding::warn(
            Check::Privileges,
            format!("{who}; no CapEff line in /proc/self/status"),
            CAPS_FIX,
        );
    };
    let present: Vec<&str> = [CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN]
        .into_iter()
        .filter(|&c| has(cap_eff, c))
        .map(cap_name)
        .collect();
    let present = if present.is_empty() {
        "none of CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN".to_owned()
    } else {
        present.join(", ")
    };
    let found = format!("{who}; CapEff {cap_eff:016x}: {present}");
    let missing = missing_caps(cap_eff);
    if !missing.is_empty() {
        let dropped = if euid == Some(0) {
            " (root with capabilities dropped: a container without --privileged?)"
        } else {
            ""
        };
        return Finding::fail(
            Check::Privileges,
            format!("{found}; missing {}{dropped}", missing.join(", ")),
            CAPS_FIX,
        );
    }
    if !has(cap_eff, CAP_SYS_PTRACE) {
        return Finding::warn(
            Check::Privileges,
            format!(
                "{found}; no CAP_SYS_PTRACE: events will lack the executable of other \
                 users' processes (/proc/PID/exe)"
            ),
            "add CAP_SYS_PTRACE to the capabilities (setcap or AmbientCapabilities), or run as root",
        );
    }
    let note = if has(cap_eff, CAP_SYS_ADMIN) {
        ""
    } else {
        " (without CAP_SYS_ADMIN run cannot mount tracefs itself: see tracefs)"
    };
    Finding::ok(Check::Privileges, format!("{found}{note}"))
}

// ---------------------------------------------------------------- bpf()

/// What the bpf() probe did: each attempt and its errno.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfProbe {
    pub map: Result<(), i32>,
    /// (program type, result), tried only once the map was created.
    pub programs: Vec<(&'static str, Result<(), i32>)>,
}

fn errno_text(errno: i32) -> String {
    nix::errno::Errno::from_raw(errno).to_string()
}

/// `caps_ok`: the privileges check found what is needed; `seccomp`: the
/// `Seccomp:` mode of this process (0 none, 1 strict, 2 filter).
pub fn bpf_syscall(probe: &BpfProbe, caps_ok: bool, seccomp: Option<u32>) -> Finding {
    let failed = match probe.map {
        Err(errno) => Some(("bpf(BPF_MAP_CREATE) of an array map".to_owned(), errno)),
        Ok(()) => probe.programs.iter().find_map(|(kind, r)| {
            r.err().map(|e| {
                (
                    format!("bpf(BPF_PROG_LOAD) of a 2-instruction {kind} program"),
                    e,
                )
            })
        }),
    };
    let Some((what, errno)) = failed else {
        let kinds: Vec<&str> = probe.programs.iter().map(|(k, _)| *k).collect();
        return Finding::ok(
            Check::BpfSyscall,
            format!(
                "created an array map and loaded {} test programs (closed again, nothing attached)",
                kinds.join(" and ")
            ),
        );
    };
    let found = format!("{what} failed: {}", errno_text(errno));
    if errno == libc::ENOSYS {
        return Finding::fail(
            Check::BpfSyscall,
            format!("{found}: the kernel has no bpf() (or a seccomp filter hides it)"),
            "boot a kernel built with CONFIG_BPF_SYSCALL=y",
        );
    }
    if errno != libc::EPERM && errno != libc::EACCES {
        return Finding::fail(
            Check::BpfSyscall,
            found,
            "the kernel must be 5.10 or newer with BPF enabled; see the kernel check",
        );
    }
    let (why, fix) = if !caps_ok {
        (
            "this process lacks the capabilities (see privileges); unprivileged bpf() is \
             limited or off (kernel.unprivileged_bpf_disabled)",
            CAPS_FIX.to_owned(),
        )
    } else if seccomp == Some(2) {
        (
            "the capabilities are there, but this process runs under a seccomp filter, \
             and container runtimes' default profiles deny bpf()",
            "run the container with --security-opt seccomp=unconfined (or a profile that \
             allows bpf) and --privileged or the capabilities"
                .to_owned(),
        )
    } else {
        (
            "the capabilities are there: an LSM policy (SELinux, AppArmor), a seccomp \
             filter or kernel lockdown refused it",
            "look for the denial in `dmesg` and the audit log (ausearch -m AVC,APPARMOR_DENIED)"
                .to_owned(),
        )
    };
    Finding::fail(Check::BpfSyscall, format!("{found}: {why}"), fix)
}

// ---------------------------------------------------------------- sysctls

/// /proc/sys/kernel/unprivileged_bpf_disabled; informational only, as
/// imds-monitor always runs privileged.
pub fn unprivileged_bpf(value: Option<&str>) -> Finding {
    let detail = match value.map(str::trim) {
        None => "kernel.unprivileged_bpf_disabled not present".to_owned(),
        Some("0") => "kernel.unprivileged_bpf_disabled=0: unprivileged users may use bpf() \
                      (no effect on imds-monitor, which runs privileged; 2 is the safer setting)"
            .to_owned(),
        Some("1") => "kernel.unprivileged_bpf_disabled=1: unprivileged bpf() off until reboot \
                      (no effect on imds-monitor, which runs privileged)"
            .to_owned(),
        Some("2") => "kernel.unprivileged_bpf_disabled=2: unprivileged bpf() off \
                      (no effect on imds-monitor, which runs privileged)"
            .to_owned(),
        Some(other) => format!("kernel.unprivileged_bpf_disabled={other}"),
    };
    Finding::ok(Check::UnprivilegedBpf, detail)
}

/// The active mode in /sys/kernel/security/lockdown: `none [integrity] confidentiality`.
pub fn parse_lockdown(file: &str) -> Option<&str> {
    let start = file.find('[')? + 1;
    let len = file[start..].find(']')?;
    Some(&file[start..start + len])
}

/// `file`: /sys/kernel/security/lockdown, `None` if securityfs is not
/// mounted; `cmdline`: the arguments in /proc/cmdline, for a `lockdown=` there.
pub fn lockdown(file: Option<&str>, cmdline: &[String]) -> Finding {
    let Some(file) = file else {
        // procfs splits at spaces only: the last argument keeps the newline.
        let requested = cmdline
            .iter()
            .find_map(|arg| arg.trim().strip_prefix("lockdown="));
        let detail = match requested {
            Some(mode) => format!(
                "not readable (securityfs not mounted at /sys/kernel/security); \
                 the command line asks for lockdown={mode}"
            ),
            None => "not readable (securityfs not mounted at /sys/kernel/security); \
                     no lockdown= on the kernel command line"
                .to_owned(),
        };
        return Finding::ok(Check::Lockdown, detail);
    };
    match parse_lockdown(file) {
        Some("none") => Finding::ok(Check::Lockdown, "none"),
        Some("integrity") => Finding::ok(
            Check::Lockdown,
            "integrity: blocks bpf_probe_write_user and writes to kernel memory, \
             which imds-monitor does not use",
        ),
        Some("confidentiality") => Finding::warn(
            Check::Lockdown,
            "confidentiality: blocks bpf_probe_read_kernel and most of tracefs; \
             imds-monitor's programs read only user memory and tracepoint format and id files \
             (see tracefs and programs)",
            "if loading fails, boot with lockdown=integrity (Secure Boot kernels \
             may raise it to confidentiality)",
        ),
        Some(other) => Finding::ok(Check::Lockdown, format!("mode `{other}`")),
        None => Finding::ok(
            Check::Lockdown,
            format!(
                "unrecognized /sys/kernel/security/lockdown: `{}`",
                file.trim()
            ),
        ),
    }
}

// ---------------------------------------------------------------- mounts

/// From /proc/self/mountinfo; the cgroup2 root is the one `run` uses
/// ([`crate::cgroups::cgroup2_mount_of`]).
pub fn cgroup2(mounts: &MountInfos) -> Finding {
    let Some(root) = crate::cgroups::cgroup2_mount_of(&mounts.0) else {
        return Finding::fail(
            Check::Cgroup2,
            "cgroup v2 is not mounted (no cgroup2 line in /proc/self/mountinfo): the socket \
             hooks attach to the cgroup v2 root",
            "boot with systemd.unified_cgroup_hierarchy=1 (unified), or mount it \
             (mount -t cgroup2 none /sys/fs/cgroup/unified; with cgroup v1 every process \
             then sits in its root, so no container is told apart)",
        );
    };
    let v1: Vec<_> = mounts.iter().filter(|m| m.fs_type == "cgroup").collect();
    let root = root.display();
    if v1.is_empty() {
        return Finding::ok(Check::Cgroup2, format!("cgroup2 at {root} (unified)"));
    }
    let detail = format!(
        "cgroup2 at {root} (hybrid: {} cgroup v1 hierarchies beside it)",
        v1.len()
    );
    let net_v1 = v1.iter().any(|m| {
        m.super_options.contains_key("net_cls") || m.super_options.contains_key("net_prio")
    });
    if net_v1 {
        return Finding::warn(
            Check::Cgroup2,
            format!(
                "{detail}; net_cls/net_prio v1 controllers are mounted: once anything \
                 configures them the kernel stops cgroup2 socket matching and connections \
                 lose their owner"
            ),
            "see `dmesg | grep 'cgroup2 socket matching'`; boot with \
             systemd.unified_cgroup_hierarchy=1 to avoid it",
        );
    }
    Finding::ok(Check::Cgroup2, detail)
}

pub const BPFFS: &str = "/sys/fs/bpf";

/// From /proc/self/mountinfo.
pub fn bpffs(mounts: &MountInfos) -> Finding {
    let points: Vec<String> = mounts
        .iter()
        .filter(|m| m.fs_type == "bpf")
        .map(|m| m.mount_point.to_string_lossy().into_owned())
        .collect();
    if points.iter().any(|p| p == BPFFS) {
        return Finding::ok(Check::Bpffs, format!("mounted at {BPFFS}"));
    }
    let elsewhere = if points.is_empty() {
        String::new()
    } else {
        format!(" (mounted at {})", points.join(", "))
    };
    Finding::warn(
        Check::Bpffs,
        format!(
            "not mounted at {BPFFS}{elsewhere}: run (monitor, alert) does not need it; \
             pinning programs and maps (enforce mode) does"
        ),
        format!("mount -t bpf bpf {BPFFS} (lasting: `bpf {BPFFS} bpf defaults 0 0` in /etc/fstab)"),
    )
}

// ---------------------------------------------------------------- tracefs

/// What was found under tracefs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracefs {
    /// The mount `run` would use (the first with an `events` directory).
    pub dir: Option<PathBuf>,
    /// A tracefs directory this process may not search (tracefs is root-only).
    pub denied: Option<PathBuf>,
    /// `category/name` of each tracepoint `run` attaches to, with the error
    /// reading its `id` (as aya does to attach).
    pub tracepoints: Vec<(String, Result<(), String>)>,
    /// sched_process_fork's `child_pid` offset, read from its format file.
    pub fork_child_pid: Result<u32, String>,
    /// CAP_SYS_ADMIN: `run` can mount tracefs itself.
    pub can_mount: bool,
}

pub fn tracefs(t: &Tracefs) -> Finding {
    if let (None, Some(denied)) = (&t.dir, &t.denied) {
        return Finding::fail(
            Check::Tracefs,
            format!(
                "{} is not readable by this process (tracefs is root-only), so run cannot \
                 use its tracepoints",
                denied.display()
            ),
            "run as root, or add CAP_DAC_READ_SEARCH to the capabilities",
        );
    }
    let Some(dir) = &t.dir else {
        let found = "tracefs not mounted (neither /sys/kernel/tracing nor \
                     /sys/kernel/debug/tracing has events/)";
        return if t.can_mount {
            Finding::warn(
                Check::Tracefs,
                format!(
                    "{found}: run mounts it at /sys/kernel/tracing itself; its tracepoints \
                     are not checked here"
                ),
                "mount -t tracefs tracefs /sys/kernel/tracing",
            )
        } else {
            Finding::fail(
                Check::Tracefs,
                format!("{found}, and without CAP_SYS_ADMIN run cannot mount it"),
                "mount -t tracefs tracefs /sys/kernel/tracing (as root), or give run CAP_SYS_ADMIN",
            )
        };
    };
    let dir = dir.display();
    let broken: Vec<String> = t
        .tracepoints
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name} ({e})")))
        .collect();
    if !broken.is_empty() {
        let denied = broken.iter().any(|b| b.contains("ermission denied"));
        let fix = if denied {
            "run as root, or add CAP_DAC_READ_SEARCH to the capabilities (tracefs is root-only)"
        } else {
            "boot a kernel with CONFIG_FTRACE_SYSCALLS=y and the sched tracepoints \
             (every distribution kernel has them)"
        };
        return Finding::fail(
            Check::Tracefs,
            format!("{dir}: cannot use tracepoints {}", broken.join(", ")),
            fix,
        );
    }
    match &t.fork_child_pid {
        Ok(offset) => Finding::ok(
            Check::Tracefs,
            format!(
                "{dir}: tracepoints {} present; sched_process_fork child_pid at offset {offset}",
                t.tracepoints
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(e) => Finding::fail(
            Check::Tracefs,
            format!("{dir}: sched/sched_process_fork/format: {e}"),
            "run as root (tracefs is root-only)",
        ),
    }
}

// ---------------------------------------------------------------- programs

/// Loading the embedded programs (verifier included), without attaching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgramLoad {
    /// They loaded; the verifier's figures for each, or why they could not
    /// be read.
    Loaded(Result<Report, String>),
    /// The error `run` would stop with, and what the verifier said if it
    /// refused a program.
    Failed(String, Option<Report>),
    /// Not tried, and why.
    Skipped(String),
}

const VERIFIER_FIX: &str = "the programs of this build are too close to the verifier's limits: \
     a kernel whose verifier explores more (even another build of the same release) may refuse \
     them; `imds-monitor check --verifier` shows each program";

pub fn programs(load: &ProgramLoad) -> Finding {
    match load {
        ProgramLoad::Loaded(Err(why)) => Finding::ok(
            Check::Programs,
            format!(
                "the embedded eBPF programs load and pass the verifier (not attached, unloaded \
                 again); the verifier's statistics could not be read: {why}"
            ),
        ),
        ProgramLoad::Loaded(Ok(report)) => programs_measured(report),
        ProgramLoad::Skipped(why) => Finding::warn(
            Check::Programs,
            format!("loading the embedded eBPF programs not tried: {why}"),
            "fix what the checks above report, then check again",
        ),
        ProgramLoad::Failed(err, report) => {
            // kernel.rs ends its load errors with "\nhint: <what to do>".
            let (what, hint) = match err.split_once("\nhint: ") {
                Some((what, hint)) => (what, hint),
                None => (err.as_str(), "see the error; `RUST_LOG=debug` shows more"),
            };
            let mut f = Finding::fail(Check::Programs, what.replace('\n', " "), hint);
            f.verifier = report.clone();
            f
        }
    }
}

/// `9 programs verified in 0.21 s of kernel time; largest imds_classify
/// 41,230 insns (budget 200,000)`, a warning past either budget.
fn programs_measured(report: &Report) -> Finding {
    let n = report.programs.len();
    let mut detail = format!(
        "{n} program{} verified in {:.2} s of kernel time",
        if n == 1 { "" } else { "s" },
        report.total().as_secs_f64()
    );
    if let Some(p) = report.largest() {
        detail += &format!(
            "; largest {} {} insns (budget {})",
            p.name,
            thousands(p.stats.processed_insns.unwrap_or(0).into()),
            thousands(BUDGET_INSNS.into())
        );
    }
    detail += " (loaded, not attached, unloaded again)";
    let mut problems = Vec::new();
    let over: Vec<String> = report
        .over_budget()
        .map(|p| {
            format!(
                "{} {}",
                p.name,
                thousands(p.stats.processed_insns.unwrap_or(0).into())
            )
        })
        .collect();
    if !over.is_empty() {
        problems.push(format!(
            "over the budget of {} insns: {}",
            thousands(BUDGET_INSNS.into()),
            over.join(", ")
        ));
    }
    if report.total() > BUDGET_TOTAL {
        problems.push(format!(
            "verification takes longer than the budget of {} s",
            BUDGET_TOTAL.as_secs()
        ));
    }
    let unmeasured: Vec<&str> = report.unmeasured().map(|p| p.name.as_str()).collect();
    if !unmeasured.is_empty() {
        problems.push(format!("not measured: {}", unmeasured.join(", ")));
    }
    let mut f = if problems.is_empty() {
        Finding::ok(Check::Programs, detail)
    } else {
        Finding::warn(
            Check::Programs,
            format!("{detail}; {}", problems.join("; ")),
            VERIFIER_FIX,
        )
    };
    f.verifier = Some(report.clone());
    f
}

// ---------------------------------------------------------------- interface

/// An interface as /sys/class/net/<name> shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfState {
    /// `operstate`: up, down, unknown, dormant, lowerlayerdown, ...
    pub operstate: String,
    /// IFF_UP from `flags`, the administrative state.
    pub admin_up: Option<bool>,
}

/// `routes`: where each endpoint is routed (interfaces::routes_to);
/// `requested`: `--iface`; `states`: every interface that exists.
pub fn interface(
    routes: &[(SocketAddr, Option<String>)],
    requested: &[String],
    states: &BTreeMap<String, IfState>,
) -> Finding {
    let routed: Vec<String> = routes
        .iter()
        .map(|(ep, iface)| match iface {
            Some(i) => format!("{ep} via {i}"),
            None => format!("{ep} no route"),
        })
        .collect();
    let routed = format!(
        "{} (read from the routing table over netlink; nothing sent)",
        routed.join(", ")
    );
    let here = || states.keys().cloned().collect::<Vec<_>>().join(", ");
    let mut watched: Vec<&str> = requested.iter().map(String::as_str).collect();
    if watched.is_empty() {
        for iface in routes.iter().filter_map(|(_, i)| i.as_deref()) {
            if !watched.contains(&iface) {
                watched.push(iface);
            }
        }
    }
    if watched.is_empty() {
        return Finding::fail(
            Check::Interface,
            format!("no interface routes to an endpoint: {routed}"),
            format!(
                "name the interface toward IMDS with --iface (interfaces here: {})",
                here()
            ),
        );
    }
    let mut shown = Vec::new();
    let mut problems: Vec<(Status, String, String)> = Vec::new();
    for &name in &watched {
        let Some(state) = states.get(name) else {
            shown.push(format!("{name} (missing)"));
            problems.push((
                Status::Fail,
                format!("{name} does not exist"),
                format!("--iface with one of: {}", here()),
            ));
            continue;
        };
        let up = match state.operstate.as_str() {
            "up" => true,
            // Virtual devices without carrier reporting: the admin flag says it.
            "unknown" => state.admin_up != Some(false),
            _ => false,
        };
        shown.push(format!("{name} ({})", state.operstate));
        if !up {
            problems.push((
                Status::Warn,
                format!(
                    "{name} is {}: run attaches but sees nothing until it is up",
                    state.operstate
                ),
                format!("ip link set dev {name} up"),
            ));
        }
    }
    if !requested.is_empty() {
        for (ep, iface) in routes {
            if let Some(iface) = iface
                && !watched.contains(&iface.as_str())
            {
                problems.push((
                    Status::Warn,
                    format!("{ep} is routed via {iface}, which --iface leaves out"),
                    format!("add --iface {iface}"),
                ));
            }
        }
    }
    let detail = format!("watching {}; {routed}", shown.join(", "));
    let status = problems
        .iter()
        .map(|(s, _, _)| *s)
        .max()
        .unwrap_or(Status::Ok);
    if status == Status::Ok {
        return Finding::ok(Check::Interface, detail);
    }
    let (what, fixes): (Vec<String>, Vec<String>) =
        problems.into_iter().map(|(_, w, f)| (w, f)).unzip();
    Finding::new(
        Check::Interface,
        status,
        format!("{}; {detail}", what.join("; ")),
    )
    .with_fix(fixes.join("; "))
}

// ---------------------------------------------------------------- containers

/// Containers and pods found in the cgroup2 tree, named as `run` will
/// attribute them ([`Workload::from_cgroup_path`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub cgroups: usize,
    /// Distinct container ids per runtime.
    pub containers: BTreeMap<&'static str, BTreeSet<String>>,
    pub pods: BTreeSet<String>,
}

impl Tally {
    /// Counts one cgroup, by its path relative to the cgroup2 root.
    pub fn add(&mut self, path: &str) {
        self.cgroups += 1;
        let workload = Workload::from_cgroup_path(path);
        if let (Some(id), Some(runtime)) = (workload.container_id, workload.container_runtime) {
            self.containers.entry(runtime).or_default().insert(id);
        }
        if let Some(uid) = workload.pod_uid {
            self.pods.insert(uid);
        }
    }
}

/// `stopped`: why the walk ended early (time or size bound), if it did.
pub fn containers(root: &str, tally: &Tally, stopped: Option<&str>) -> Finding {
    let mut found: Vec<String> = tally
        .containers
        .iter()
        .map(|(runtime, ids)| format!("{runtime} {}", ids.len()))
        .collect();
    if !tally.pods.is_empty() {
        found.push(format!("kubernetes pods {}", tally.pods.len()));
    }
    let plural = if tally.cgroups == 1 { "" } else { "s" };
    let scanned = format!("{} cgroup{plural} under {root} scanned", tally.cgroups);
    let scanned = match stopped {
        Some(why) => format!("{scanned}, then stopped: {why}"),
        None => scanned,
    };
    let detail = if found.is_empty() {
        format!(
            "no container cgroups (Docker, containerd, CRI-O, Podman, kubepods) found; \
             {scanned}"
        )
    } else {
        format!("{}; {scanned}", found.join(", "))
    };
    Finding::ok(Check::Containers, detail)
}

/// Without a cgroup2 mount there is no tree to scan (cgroup2 fails).
pub fn containers_unscanned() -> Finding {
    Finding::ok(
        Check::Containers,
        "not scanned: cgroup v2 is not mounted (see cgroup2)",
    )
}

// ---------------------------------------------------------------- kprobes

pub fn kprobes() -> Finding {
    Finding::ok(
        Check::Kprobes,
        "not used (TC, cgroup socket hooks and tracepoints only; CONFIG_KPROBES may be off)",
    )
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn v(major: u32, minor: u32, patch: u32) -> Version {
        Version::new(major, minor, patch)
    }

    #[test]
    fn kernel_releases_of_real_hosts_parse() {
        for (release, want) in [
            ("6.18.44-fc-v595", Some(v(6, 18, 44))),
            ("5.10.223-211.872.amzn2.x86_64", Some(v(5, 10, 223))),
            ("6.1.102-111.182.amzn2023.aarch64", Some(v(6, 1, 102))),
            ("6.8.0-1012-aws", Some(v(6, 8, 0))),
            ("5.17.0\n", Some(v(5, 17, 0))),
            ("6.1-rc3", Some(v(6, 1, 0))),
            ("6.10", Some(v(6, 10, 0))),
            ("4.14.348-265.562.amzn2.x86_64", Some(v(4, 14, 348))),
            ("", None),
            ("linux", None),
            ("6", None),
        ] {
            assert_eq!(parse_version(release), want, "{release:?}");
        }
    }

    #[test]
    fn kernel_needs_5_10_and_names_the_attach_method() {
        let new = kernel("6.18.44-fc-v595", Some(v(6, 18, 44)));
        assert_eq!(new.status, Status::Ok);
        assert!(new.detail.contains("TCX"), "{}", new.detail);
        assert!(!new.detail.contains("5.17"), "{}", new.detail);

        let al2023 = kernel("6.1.102-111.182.amzn2023.x86_64", None);
        assert_eq!(al2023.status, Status::Ok);
        assert!(al2023.detail.contains("clsact"), "{}", al2023.detail);

        let tcx_edge = kernel("6.6.0", None);
        assert!(tcx_edge.detail.contains("TCX"), "{}", tcx_edge.detail);
        let below_tcx = kernel("6.5.13", None);
        assert!(below_tcx.detail.contains("clsact"), "{}", below_tcx.detail);

        // Amazon Linux 2's 5.10 is the floor, and attaches with clsact.
        let al2 = kernel("5.10.223-211.872.amzn2.x86_64", None);
        assert_eq!(al2.status, Status::Ok);
        assert!(al2.detail.contains("clsact"), "{}", al2.detail);
        let edge = kernel("5.10.0", None);
        assert_eq!(edge.status, Status::Ok);

        // Ubuntu's ABI release hides the upstream patch; aya's version wins.
        let ubuntu = kernel("5.15.0-1051-aws", Some(v(5, 15, 131)));
        assert_eq!(ubuntu.status, Status::Ok);
        assert!(
            ubuntu.detail.contains("upstream 5.15.131"),
            "{}",
            ubuntu.detail
        );

        for old in ["5.4.0-1103-aws", "4.14.348-265.562.amzn2.x86_64", "5.9.16"] {
            let f = kernel(old, None);
            assert_eq!(f.status, Status::Fail, "{old}");
            assert!(f.detail.contains("5.10 or newer"), "{}", f.detail);
            assert!(!f.detail.contains("5.17"), "{}", f.detail);
            assert!(f.fix.as_deref().unwrap().contains("5.10"), "{old}");
        }

        assert_eq!(kernel("???", None).status, Status::Warn);
    }

    #[test]
    fn btf_present_or_missing() {
        let ok = btf(Some(5_515_236));
        assert_eq!(
            (ok.status, ok.detail.contains("5.3 MiB")),
            (Status::Ok, true)
        );
        let missing = btf(None);
        assert_eq!(missing.status, Status::Fail);
        assert!(missing.fix.unwrap().contains("CONFIG_DEBUG_INFO_BTF=y"));
    }

    use procfs::FromRead as _;

    /// /proc/PID/status with the lines procfs requires; `uids`: real,
    /// effective, saved, fs.
    fn status_text(uids: [u32; 4], cap_eff: &str) -> String {
        let [r, e, s, f] = uids;
        format!(
            "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nTgid:\t955\nPid:\t955\n\
             PPid:\t950\nTracerPid:\t0\nUid:\t{r}\t{e}\t{s}\t{f}\nGid:\t0\t0\t0\t0\n\
             FDSize:\t256\nGroups:\t \nThreads:\t1\nSigQ:\t0/96367\n\
             SigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
             SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n\
             SigCgt:\t0000000000000000\nCapInh:\t0000000000000000\nCapPrm:\t{cap_eff}\n\
             CapEff:\t{cap_eff}\nCapBnd:\t000001ffffffffff\nNoNewPrivs:\t0\nSeccomp:\t2\n"
        )
    }

    fn parse_status(text: &str) -> Option<ProcStatus> {
        ProcStatus::from_read(text.as_bytes()).ok()
    }

    fn status_file(uid: u32, cap_eff: &str) -> ProcStatus {
        parse_status(&status_text([uid; 4], cap_eff)).expect("fixture parses")
    }

    #[test]
    fn status_fields_parse() {
        let s = status_file(1000, "000001fffeffffff");
        assert_eq!(s.capeff, 0x0000_01ff_feff_ffff);
        assert_eq!(s.euid, 1000);
        assert_eq!(s.seccomp, Some(2));
        // Real uid 1000, effective 0 (setuid): the effective one counts.
        let setuid = parse_status(&status_text([1000, 0, 0, 0], "0")).unwrap();
        assert_eq!(setuid.euid, 0);
        // Without a CapEff line, or with a bad one, there is no status.
        let no_cap_eff = status_text([0; 4], "0").replace("CapEff:\t0\n", "");
        assert!(parse_status(&no_cap_eff).is_none());
        assert!(parse_status(&status_text([0; 4], "zz")).is_none());
        assert!(parse_status("Name:\tx\n").is_none());
    }

    #[test]
    fn capabilities_decode() {
        let bit = |c: u32| 1u64 << c;
        assert!(missing_caps(u64::MAX).is_empty());
        assert!(
            missing_caps(bit(CAP_SYS_ADMIN)).is_empty(),
            "SYS_ADMIN stands in"
        );
        assert_eq!(
            missing_caps(bit(CAP_BPF) | bit(CAP_PERFMON)),
            ["CAP_NET_ADMIN"]
        );
        assert_eq!(missing_caps(0), ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        // Docker's default set: no BPF, PERFMON, NET_ADMIN, SYS_ADMIN.
        assert_eq!(missing_caps(0xa80425fb).len(), 3);
    }

    #[test]
    fn privileges_of_root_capabilities_and_containers() {
        // Root on this kind of host: everything (bit 24 cleared does not matter).
        let root = privileges(Some(&status_file(0, "000001fffeffffff")));
        assert_eq!(root.status, Status::Ok, "{}", root.detail);
        assert!(
            root.detail
                .contains("CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN")
        );

        // Root in a default Docker container.
        let docker = privileges(Some(&status_file(0, "00000000a80425fb")));
        assert_eq!(docker.status, Status::Fail);
        assert!(
            docker.detail.contains("capabilities dropped"),
            "{}",
            docker.detail
        );
        assert!(docker.fix.unwrap().contains("setcap"));

        // A user with exactly the documented capabilities (setcap).
        let caps = (1u64 << CAP_BPF)
            | (1 << CAP_NET_ADMIN)
            | (1 << CAP_PERFMON)
            | (1 << CAP_SYS_ADMIN)
            | (1 << CAP_SYS_PTRACE);
        let user = privileges(Some(&status_file(1000, &format!("{caps:016x}"))));
        assert_eq!(user.status, Status::Ok, "{}", user.detail);
        assert!(user.detail.contains("not root"));

        let no_ptrace = caps & !(1 << CAP_SYS_PTRACE);
        let warn = privileges(Some(&status_file(1000, &format!("{no_ptrace:016x}"))));
        assert_eq!(warn.status, Status::Warn);
        assert!(warn.detail.contains("CAP_SYS_PTRACE"));

        let plain = privileges(Some(&status_file(1000, "0000000000000000")));
        assert_eq!(plain.status, Status::Fail);
        assert!(
            plain
                .detail
                .contains("missing CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN")
        );

        // A status procfs cannot parse (here: no CapEff line).
        let unparsed = parse_status("Uid:\t0\t0\t0\t0\n");
        assert_eq!(privileges(unparsed.as_ref()).status, Status::Warn);
    }

    #[test]
    fn bpf_probe_failures_are_explained() {
        let all_ok = BpfProbe {
            map: Ok(()),
            programs: vec![("sched_cls", Ok(())), ("tracepoint", Ok(()))],
        };
        let ok = bpf_syscall(&all_ok, true, Some(0));
        assert_eq!(ok.status, Status::Ok);
        assert!(
            ok.detail.contains("sched_cls and tracepoint"),
            "{}",
            ok.detail
        );

        let eperm = BpfProbe {
            map: Err(libc::EPERM),
            programs: vec![],
        };
        let unprivileged = bpf_syscall(&eperm, false, Some(0));
        assert_eq!(unprivileged.status, Status::Fail);
        assert!(
            unprivileged.detail.contains("EPERM"),
            "{}",
            unprivileged.detail
        );
        assert!(unprivileged.detail.contains("capabilities"));
        assert_eq!(unprivileged.fix.as_deref(), Some(CAPS_FIX));

        let seccomp = bpf_syscall(&eperm, true, Some(2));
        assert!(seccomp.detail.contains("seccomp"), "{}", seccomp.detail);
        assert!(seccomp.fix.unwrap().contains("seccomp=unconfined"));

        let lsm = bpf_syscall(&eperm, true, Some(0));
        assert!(lsm.detail.contains("lockdown"), "{}", lsm.detail);

        let no_tc = BpfProbe {
            map: Ok(()),
            programs: vec![("sched_cls", Err(libc::EPERM)), ("tracepoint", Ok(()))],
        };
        let f = bpf_syscall(&no_tc, false, None);
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.detail.contains("sched_cls program failed: EPERM"),
            "{}",
            f.detail
        );

        let enosys = BpfProbe {
            map: Err(libc::ENOSYS),
            programs: vec![],
        };
        assert!(
            bpf_syscall(&enosys, true, None)
                .fix
                .unwrap()
                .contains("CONFIG_BPF_SYSCALL")
        );
    }

    fn cmdline(text: &str) -> Vec<String> {
        procfs::KernelCmdline::from_read(text.as_bytes()).unwrap().0
    }

    #[test]
    fn lockdown_modes() {
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality\n"),
            Some("none")
        );
        assert_eq!(
            parse_lockdown("none integrity [confidentiality]\n"),
            Some("confidentiality")
        );
        assert_eq!(parse_lockdown("none integrity"), None);
        assert_eq!(
            lockdown(Some("[none] integrity confidentiality"), &[]).detail,
            "none"
        );
        let integrity = lockdown(Some("none [integrity] confidentiality"), &[]);
        assert_eq!(integrity.status, Status::Ok);
        assert!(integrity.detail.contains("bpf_probe_write_user"));
        let conf = lockdown(Some("none integrity [confidentiality]"), &[]);
        assert_eq!(conf.status, Status::Warn);
        assert!(conf.detail.contains("tracefs"));
        let unmounted = lockdown(None, &cmdline("quiet lockdown=integrity ro\n"));
        assert_eq!(unmounted.status, Status::Ok);
        assert!(
            unmounted.detail.contains("lockdown=integrity"),
            "{}",
            unmounted.detail
        );
        // The last argument, with the newline procfs leaves on it.
        let last = lockdown(None, &cmdline("quiet lockdown=integrity\n"));
        assert!(
            last.detail.ends_with("lockdown=integrity"),
            "{}",
            last.detail
        );
        assert!(
            lockdown(None, &cmdline("quiet\n"))
                .detail
                .contains("no lockdown=")
        );
    }

    #[test]
    fn unprivileged_bpf_is_informational() {
        for value in [Some("0\n"), Some("1"), Some("2"), None, Some("7")] {
            assert_eq!(unprivileged_bpf(value).status, Status::Ok);
        }
        assert!(unprivileged_bpf(Some("2\n")).detail.contains("=2"));
    }

    const HYBRID: &str = "\
25 1 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/memory rw shared:12 - cgroup cgroup rw,memory
43 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs nodev rw
";
    const UNIFIED: &str = "\
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,seclabel,nsdelegate
36 24 0:31 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:10 - bpf bpf rw,mode=700
";
    const LEGACY_WITH_NET: &str = "\
30 25 0:26 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755
32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/net_cls,net_prio rw shared:13 - cgroup cgroup rw,net_cls,net_prio
";

    fn mounts(text: &str) -> MountInfos {
        MountInfos::from_read(text.as_bytes()).expect("fixture parses")
    }

    #[test]
    fn mountinfo_fields() {
        let mounts = mounts(HYBRID);
        assert_eq!(mounts.0.len(), 6);
        let unified = &mounts.0[2];
        assert_eq!(unified.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(unified.fs_type, "cgroup2");
        assert!(unified.super_options.contains_key("nsdelegate"));
        assert_eq!(mounts.0[5].fs_type, "tracefs");
    }

    #[test]
    fn cgroup2_unified_hybrid_and_missing() {
        let unified = cgroup2(&mounts(UNIFIED));
        assert_eq!(unified.status, Status::Ok);
        assert!(
            unified.detail.contains("/sys/fs/cgroup (unified)"),
            "{}",
            unified.detail
        );

        let hybrid = cgroup2(&mounts(HYBRID));
        assert_eq!(hybrid.status, Status::Ok);
        assert!(
            hybrid
                .detail
                .contains("/sys/fs/cgroup/unified (hybrid: 2 cgroup v1"),
            "{}",
            hybrid.detail
        );

        let legacy = cgroup2(&mounts(LEGACY_WITH_NET));
        assert_eq!(legacy.status, Status::Fail);
        assert!(
            legacy
                .fix
                .unwrap()
                .contains("systemd.unified_cgroup_hierarchy=1")
        );

        let net = format!(
            "{LEGACY_WITH_NET}31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        );
        let net = cgroup2(&mounts(&net));
        assert_eq!(net.status, Status::Warn);
        assert!(net.detail.contains("net_cls"), "{}", net.detail);
    }

    #[test]
    fn bpffs_mounted_elsewhere_or_not_at_all() {
        assert_eq!(bpffs(&mounts(UNIFIED)).status, Status::Ok);
        let missing = bpffs(&mounts(HYBRID));
        assert_eq!(missing.status, Status::Warn);
        assert!(
            missing
                .fix
                .unwrap()
                .starts_with("mount -t bpf bpf /sys/fs/bpf")
        );
        let elsewhere = bpffs(&mounts("1 2 0:3 / /run/bpf rw - bpf bpf rw\n"));
        assert!(
            elsewhere.detail.contains("mounted at /run/bpf"),
            "{}",
            elsewhere.detail
        );
    }

    fn tracepoints(err: Option<&str>) -> Vec<(String, Result<(), String>)> {
        ["syscalls/sys_enter_execve", "sched/sched_process_exec"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let r = match err {
                    Some(e) if i == 0 => Err(e.to_owned()),
                    _ => Ok(()),
                };
                (n.to_string(), r)
            })
            .collect()
    }

    #[test]
    fn tracefs_mounted_missing_or_unreadable() {
        let good = Tracefs {
            dir: Some("/sys/kernel/tracing".into()),
            denied: None,
            tracepoints: tracepoints(None),
            fork_child_pid: Ok(20),
            can_mount: true,
        };
        let ok = tracefs(&good);
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.detail.contains("offset 20"), "{}", ok.detail);

        let unmounted = Tracefs {
            dir: None,
            denied: None,
            tracepoints: vec![],
            fork_child_pid: Err("not mounted".into()),
            can_mount: true,
        };
        assert_eq!(tracefs(&unmounted).status, Status::Warn);
        let stuck = Tracefs {
            can_mount: false,
            ..unmounted
        };
        assert_eq!(tracefs(&stuck).status, Status::Fail);
        let root_only = Tracefs {
            denied: Some("/sys/kernel/tracing".into()),
            ..stuck
        };
        let f = tracefs(&root_only);
        assert_eq!(f.status, Status::Fail);
        assert!(f.detail.contains("not readable"), "{}", f.detail);
        assert!(f.fix.unwrap().contains("CAP_DAC_READ_SEARCH"));

        let no_syscalls = Tracefs {
            tracepoints: tracepoints(Some("No such file or directory (os error 2)")),
            ..good.clone()
        };
        let f = tracefs(&no_syscalls);
        assert_eq!(f.status, Status::Fail);
        assert!(f.fix.unwrap().contains("CONFIG_FTRACE_SYSCALLS"));

        let denied = Tracefs {
            tracepoints: tracepoints(Some("Permission denied (os error 13)")),
            ..good.clone()
        };
        assert!(
            tracefs(&denied)
                .fix
                .unwrap()
                .contains("CAP_DAC_READ_SEARCH")
        );

        let no_fork = Tracefs {
            fork_child_pid: Err("no child_pid field".into()),
            ..good
        };
        assert_eq!(tracefs(&no_fork).status, Status::Fail);
    }

    #[test]
    fn program_load_errors_keep_the_hint_as_fix() {
        assert_eq!(
            programs(&ProgramLoad::Loaded(Err("no BTF".into()))).status,
            Status::Ok
        );
        assert_eq!(
            programs(&ProgramLoad::Skipped("privileges".into())).status,
            Status::Warn
        );
        let f = programs(&ProgramLoad::Failed(
            "loading the eBPF programs failed: the BPF_PROG_LOAD syscall failed\nhint: run as root"
                .into(),
            None,
        ));
        assert_eq!(f.status, Status::Fail);
        assert_eq!(f.fix.as_deref(), Some("run as root"));
        assert!(!f.detail.contains('\n'));
        assert_eq!(f.verifier, None);
    }

    fn measured(programs: &[(&str, u32, u64)]) -> Report {
        let programs = programs
            .iter()
            .map(|(name, insns, us)| crate::verifier::ProgramStats {
                name: (*name).to_owned(),
                kind: "sched_cls",
                stats: crate::verifier::Stats {
                    processed_insns: Some(*insns),
                    verification_us: Some(*us),
                    ..Default::default()
                },
                error: None,
            })
            .collect();
        Report::new("6.18.44-fc-v595".to_owned(), programs)
    }

    #[test]
    fn programs_report_the_largest_against_the_budget() {
        let report = measured(&[
            ("imds_classify", 41_230, 95_000),
            ("imds_responses", 19_862, 10_000),
            ("imds_exit", 48, 100),
        ]);
        let f = programs(&ProgramLoad::Loaded(Ok(report.clone())));
        assert_eq!(f.status, Status::Ok);
        assert_eq!(
            f.detail,
            "3 programs verified in 0.11 s of kernel time; largest imds_classify 41,230 insns \
             (budget 200,000) (loaded, not attached, unloaded again)"
        );
        assert_eq!(f.verifier, Some(report));

        let over = programs(&ProgramLoad::Loaded(Ok(measured(&[
            ("imds_classify", 412_000, 400_000),
            ("imds_exit", 48, 100),
        ]))));
        assert_eq!(over.status, Status::Warn);
        assert!(
            over.detail
                .ends_with("over the budget of 200,000 insns: imds_classify 412,000"),
            "{}",
            over.detail
        );
        assert!(over.fix.as_deref().unwrap().contains("--verifier"));

        let slow = programs(&ProgramLoad::Loaded(Ok(measured(&[
            ("a", 150_000, 700_000),
            ("b", 150_000, 400_000),
        ]))));
        assert_eq!(slow.status, Status::Warn);
        assert!(slow.detail.contains("1.10 s"), "{}", slow.detail);
        assert!(slow.detail.contains("budget of 1 s"), "{}", slow.detail);

        let mut unmeasured = measured(&[("imds_classify", 41_230, 95_000)]);
        unmeasured.programs[0].error = Some("Invalid argument (os error 22): ".into());
        let f = programs(&ProgramLoad::Loaded(Ok(unmeasured)));
        assert_eq!(f.status, Status::Warn);
        assert!(
            f.detail.ends_with("not measured: imds_classify"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn a_rejection_keeps_its_report() {
        let rejected = Report {
            rejected: Some(crate::verifier::Rejected {
                program: Some("imds_classify".into()),
                processed_insns: Some(1_000_001),
                instruction: None,
                source: None,
                reason: Some("BPF program is too large. Processed 1000001 insn".into()),
                log: Some("/run/imds-monitor/verifier-imds_classify-1.log".into()),
            }),
            ..measured(&[])
        };
        let f = programs(&ProgramLoad::Failed(
            "loading the eBPF programs failed: imds_classify rejected\nhint: report it".into(),
            Some(rejected.clone()),
        ));
        assert_eq!(f.status, Status::Fail);
        assert_eq!(
            f.detail,
            "loading the eBPF programs failed: imds_classify rejected"
        );
        assert_eq!(f.verifier, Some(rejected));
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["verifier"]["rejected"]["processed_insns"], 1_000_001);
        assert_eq!(json["verifier"]["programs"], serde_json::json!([]));
    }

    fn ep(s: &str) -> SocketAddr {
        crate::endpoints::parse(s).unwrap()
    }

    fn states(list: &[(&str, &str, bool)]) -> BTreeMap<String, IfState> {
        list.iter()
            .map(|(n, op, up)| {
                (
                    n.to_string(),
                    IfState {
                        operstate: op.to_string(),
                        admin_up: Some(*up),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn interface_toward_imds() {
        let here = states(&[
            ("lo", "unknown", true),
            ("ens5", "up", true),
            ("docker0", "down", true),
        ]);
        let routes = vec![
            (ep("169.254.169.254"), Some("ens5".to_owned())),
            (ep("fd00:ec2::254"), None),
        ];
        let ok = interface(&routes, &[], &here);
        assert_eq!(ok.status, Status::Ok, "{}", ok.detail);
        assert!(ok.detail.contains("watching ens5 (up)"), "{}", ok.detail);
        assert!(ok.detail.contains("169.254.169.254:80 via ens5"));
        assert!(ok.detail.contains("[fd00:ec2::254]:80 no route"));

        let none = interface(&[(ep("169.254.169.254"), None)], &[], &here);
        assert_eq!(none.status, Status::Fail);
        let fix = none.fix.unwrap();
        assert!(fix.contains("--iface") && fix.contains("ens5"), "{fix}");

        let down = interface(
            &[(ep("169.254.169.254"), Some("docker0".into()))],
            &[],
            &here,
        );
        assert_eq!(down.status, Status::Warn);
        assert_eq!(down.fix.as_deref(), Some("ip link set dev docker0 up"));

        // A tunnel reports "unknown"; the admin flag decides.
        let tun = states(&[("tun0", "unknown", true)]);
        let tun_route = [(ep("169.254.169.254"), Some("tun0".into()))];
        assert_eq!(interface(&tun_route, &[], &tun).status, Status::Ok);

        let missing = interface(&routes, &["eth9".into()], &here);
        assert_eq!(missing.status, Status::Fail);
        assert!(
            missing.detail.contains("eth9 does not exist"),
            "{}",
            missing.detail
        );

        let other = interface(&routes, &["lo".into()], &here);
        assert_eq!(other.status, Status::Warn);
        assert!(
            other.detail.contains("--iface leaves out"),
            "{}",
            other.detail
        );
        assert!(other.fix.unwrap().contains("--iface ens5"));
    }

    #[test]
    fn containers_are_counted_once_per_id() {
        const ID: &str = "4f9c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";
        const ID2: &str = "0000000000000000000000000000000000000000000000000000000000000002";
        let uid = "0b7e2f5a_1c3d_4e5f_8a9b_0c1d2e3f4a5b";
        let mut tally = Tally::default();
        for path in [
            "/".to_owned(),
            "/system.slice".to_owned(),
            "/system.slice/sshd.service".to_owned(),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/system.slice/docker-{ID}.scope/init.scope"),
            format!("/docker/{ID2}"),
            "/kubepods.slice".to_owned(),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice"),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod{uid}.slice/crio-{ID2}.scope"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
        ] {
            tally.add(&path);
        }
        assert_eq!(tally.cgroups, 12);
        let counts: Vec<(&str, usize)> = tally
            .containers
            .iter()
            .map(|(r, ids)| (*r, ids.len()))
            .collect();
        assert_eq!(
            counts,
            [
                ("containerd", 1),
                ("cri-o", 1),
                ("docker", 2),
                ("podman", 1)
            ]
        );
        assert_eq!(tally.pods.len(), 1);
        let f = containers("/sys/fs/cgroup", &tally, None);
        assert_eq!(f.status, Status::Ok);
        assert!(
            f.detail
                .starts_with("containerd 1, cri-o 1, docker 2, podman 1, kubernetes pods 1;"),
            "{}",
            f.detail
        );

        let one = Tally {
            cgroups: 1,
            ..Tally::default()
        };
        let empty = containers("/sys/fs/cgroup/unified", &one, Some("2 s elapsed"));
        assert!(
            empty.detail.contains("no container cgroups"),
            "{}",
            empty.detail
        );
        assert!(
            empty.detail.ends_with(
                "1 cgroup under /sys/fs/cgroup/unified scanned, then stopped: 2 s elapsed"
            ),
            "{}",
            empty.detail
        );
    }
}
