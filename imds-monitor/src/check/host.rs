//! Gathers what the rules need from this machine: files under /proc (parsed
//! by `procfs`) and /sys, a bpf() probe, a bounded walk of the cgroup2 tree,
//! and a load of the embedded programs. Sends no packet anywhere.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use procfs::process::{MountInfos, Process, Status};

use super::rules::{BpfProbe, IfState, ProgramLoad, Tally, Tracefs, VMLINUX_BTF, Version};
use crate::{
    endpoints,
    kernel::{self, Kernel, LoadOptions},
    kernel_log::KernelLog,
    verifier::{
        BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_TRACEPOINT,
        LoadFailure, ProgLoad, Report, bpf, name16,
    },
};

pub fn read(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// /proc/self/status; `None` if it cannot be read or parsed.
pub fn status() -> Option<Status> {
    Process::myself().and_then(|me| me.status()).ok()
}

/// /proc/self/mountinfo; no mounts if it cannot be read or parsed.
pub fn mounts() -> MountInfos {
    Process::myself()
        .and_then(|me| me.mountinfo())
        .unwrap_or_else(|_| MountInfos(Vec::new()))
}

/// The arguments in /proc/cmdline; none if it cannot be read.
pub fn cmdline() -> Vec<String> {
    procfs::cmdline().unwrap_or_default()
}

/// `uname -r`. A plain read: procfs 0.18 has only
/// `procfs::sys::kernel::Version::current()`, which keeps the numbers and
/// drops the rest (`-fc-v1300`) that findings and reports show.
pub fn release() -> String {
    read("/proc/sys/kernel/osrelease").unwrap_or_default()
}

/// The version aya decides TCX vs netlink with.
pub fn effective_version() -> Option<Version> {
    let v = aya::util::KernelVersion::current().ok()?;
    super::rules::parse_version(&v.to_string())
}

pub fn btf_size() -> Option<u64> {
    fs::metadata(VMLINUX_BTF).ok().map(|m| m.len())
}

// ---------------------------------------------------------------- bpf()

const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// The head of `union bpf_attr` for BPF_MAP_CREATE; the kernel treats the
/// fields after it as zero.
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// `r0 = 0; exit`.
const RETURN_ZERO: [Insn; 2] = [
    Insn {
        code: 0xb7, // BPF_ALU64 | BPF_MOV | BPF_K
        regs: 0,
        off: 0,
        imm: 0,
    },
    Insn {
        code: 0x95, // BPF_JMP | BPF_EXIT
        regs: 0,
        off: 0,
        imm: 0,
    },
];

/// Creates a one-element array map, then loads `r0 = 0; exit` as a TC
/// classifier (CAP_BPF + CAP_NET_ADMIN) and as a tracepoint program
/// (CAP_BPF + CAP_PERFMON). Everything is closed again; nothing is attached.
pub fn bpf_probe() -> BpfProbe {
    let map = bpf(
        BPF_MAP_CREATE,
        &MapCreate {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            map_flags: 0,
            inner_map_fd: 0,
            numa_node: 0,
            map_name: name16("imds_check"),
        },
    )
    .map(drop);
    let mut programs = Vec::new();
    if map.is_ok() {
        let license = c"GPL";
        for (kind, prog_type) in [
            ("sched_cls", BPF_PROG_TYPE_SCHED_CLS),
            ("tracepoint", BPF_PROG_TYPE_TRACEPOINT),
        ] {
            let attr = ProgLoad {
                prog_type,
                insn_cnt: RETURN_ZERO.len() as u32,
                insns: RETURN_ZERO.as_ptr() as u64,
                license: license.as_ptr() as u64,
                prog_name: name16("imds_check"),
                ..ProgLoad::default()
            };
            programs.push((kind, bpf(BPF_PROG_LOAD, &attr).map(drop)));
        }
    }
    BpfProbe { map, programs }
}

// ---------------------------------------------------------------- tracefs

/// The tracepoints `run` attaches to (kernel.rs `TRACEPOINTS`).
const TRACEPOINTS: [&str; 4] = [
    "syscalls/sys_enter_execve",
    "sched/sched_process_exec",
    "sched/sched_process_fork",
    "sched/sched_process_exit",
];

/// The same mounts, in the same order, as `run` looks at; never mounts.
pub fn tracefs(can_mount: bool) -> Tracefs {
    let candidates = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].map(PathBuf::from);
    let dir = candidates
        .iter()
        .find(|d| d.join("events").is_dir())
        .cloned();
    let Some(dir) = dir else {
        let denied = candidates.into_iter().find(|d| {
            fs::metadata(d.join("events"))
                .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
        });
        return Tracefs {
            dir: None,
            denied,
            tracepoints: Vec::new(),
            fork_child_pid: Err("tracefs not mounted".into()),
            can_mount,
        };
    };
    let events = dir.join("events");
    let tracepoints = TRACEPOINTS
        .iter()
        .map(|tp| {
            let id = events.join(tp).join("id");
            let r = fs::read_to_string(&id).map(drop).map_err(|e| e.to_string());
            (tp.to_string(), r)
        })
        .collect();
    let format = events.join("sched/sched_process_fork/format");
    let fork_child_pid = match fs::read_to_string(&format) {
        Ok(text) => {
            kernel::field_offset(&text, "child_pid").ok_or_else(|| "no child_pid field".to_owned())
        }
        Err(e) => Err(e.to_string()),
    };
    Tracefs {
        dir: Some(dir),
        denied: None,
        tracepoints,
        fork_child_pid,
        can_mount,
    }
}

// ---------------------------------------------------------------- programs

/// Loads every embedded program as `run` does (the verifier runs), attaches
/// nothing, has the verifier measure each program once more (see
/// [`verifier::measure`]), and unloads them again.
pub fn load_programs(list: &[SocketAddr], kernel_log: KernelLog) -> ProgramLoad {
    let table = match endpoints::to_kernel(list) {
        Ok(t) => t,
        Err(e) => return ProgramLoad::Failed(format!("{e:#}"), None),
    };
    match Kernel::load(&LoadOptions {
        endpoints: &table,
        watched: None,
        pins: None,
        flow_entries: None,
        kernel_log,
    }) {
        Ok(kernel) => {
            let stats = kernel::verifier_stats(&kernel)
                .map(|programs| Report::new(release().trim().to_owned(), programs))
                .map_err(|e| format!("{e:#}"));
            drop(kernel);
            ProgramLoad::Loaded(stats)
        }
        Err(e) => {
            let rejected = e
                .chain()
                .find_map(|e| e.downcast_ref::<LoadFailure>())
                .map(|f| Report::rejected(&f.rejection));
            ProgramLoad::Failed(format!("{e:#}"), rejected)
        }
    }
}

// ---------------------------------------------------------------- interfaces

const IFF_UP: u32 = 0x1;

/// Every interface in /sys/class/net with its state.
pub fn interfaces() -> BTreeMap<String, IfState> {
    let Ok(dir) = fs::read_dir("/sys/class/net") else {
        return BTreeMap::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let path = entry.path();
            let operstate = read(path.join("operstate"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned());
            let admin_up = read(path.join("flags"))
                .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
                .map(|flags| flags & IFF_UP != 0);
            Some((
                name,
                IfState {
                    operstate,
                    admin_up,
                },
            ))
        })
        .collect()
}

// ---------------------------------------------------------------- cgroups

/// Bounds of the cgroup walk: a host with thousands of pods still answers fast.
const MAX_DEPTH: usize = 16;
const MAX_CGROUPS: usize = 100_000;
const MAX_TIME: Duration = Duration::from_secs(2);

/// Walks the cgroup2 tree under `root`; says why it stopped early, if it did.
pub fn walk_cgroups(root: &Path) -> (Tally, Option<String>) {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut deeper = false;
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        if tally.cgroups >= MAX_CGROUPS {
            return (tally, Some(format!("more than {MAX_CGROUPS} cgroups")));
        }
        if started.elapsed() > MAX_TIME {
            return (tally, Some(format!("{} s elapsed", MAX_TIME.as_secs())));
        }
        let rel = dir.strip_prefix(root).unwrap_or(&dir);
        tally.add(&format!("/{}", rel.display()));
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if depth == MAX_DEPTH {
                    deeper = true;
                    break;
                }
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    let stopped = deeper.then(|| format!("not below depth {MAX_DEPTH}"));
    (tally, stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_attr_heads_have_the_kernel_layout() {
        assert_eq!(size_of::<MapCreate>(), 44);
        assert_eq!(size_of::<Insn>(), 8);
    }

    #[test]
    fn walk_counts_containers_and_respects_depth() {
        let root = std::env::temp_dir().join(format!("imds-check-walk-{}", std::process::id()));
        let id = "ab".repeat(32);
        fs::create_dir_all(root.join(format!("system.slice/docker-{id}.scope"))).unwrap();
        let mut deep = root.join("deep");
        for i in 0..=MAX_DEPTH {
            deep = deep.join(i.to_string());
        }
        fs::create_dir_all(&deep).unwrap();
        let (tally, stopped) = walk_cgroups(&root);
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(tally.containers["docker"].len(), 1);
        assert_eq!(stopped.as_deref(), Some("not below depth 16"));
        // root, system.slice, the scope, deep and 15 levels below it
        assert_eq!(tally.cgroups, 3 + 1 + (MAX_DEPTH - 1));
    }
}
