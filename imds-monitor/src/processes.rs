//! The process cache: who each pid is (executable, arguments, parent), kept
//! from exec, fork and exit records and seeded from /proc at start, so a
//! process that exited right after its request is still named with its
//! parents. Exited processes are kept for a while for events still queued.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How long an exited process stays resolvable.
const KEEP_EXITED: Duration = Duration::from_secs(60);
/// Names that end an ancestry chain: the container runtime's shim.
const SHIMS: [&str; 5] = [
    "containerd-shim",
    "containerd-shim-runc-v2",
    "conmon",
    "docker-containerd-shim",
    "runc",
];
/// OCI runtimes: what they exec is a container's process.
const OCI_RUNTIMES: [&str; 4] = ["runc", "crun", "youki", "runsc"];

/// Whether the process is an OCI runtime, or its init: runc re-execs
/// itself as `/proc/self/exe` (comm `exe`, whose executable may read as
/// `/` once it is in the container's root) and renames it `runc:[2:INIT]`.
pub fn is_oci_runtime(p: &ProcessInfo) -> bool {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_owned();
    let exe = p.executable.as_deref().map(base);
    OCI_RUNTIMES
        .iter()
        .any(|r| exe.as_deref() == Some(*r) || p.name.starts_with(r))
        || p.name == "exe"
}

/// Entries above which exited ones are swept on the next exit.
const SWEEP_ABOVE: usize = 65_536;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: Option<u32>,
    /// The kernel's comm (at most 15 bytes).
    pub name: String,
    pub executable: Option<String>,
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// The real uid the kernel reported at exec; `None` when read from
    /// /proc (a request's own uid, taken by the kernel, is used then).
    pub uid: Option<u32>,
}

/// An exec as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    pub tgid: u32,
    pub uid: u32,
    pub name: String,
    pub filename: String,
    pub args: Vec<String>,
    pub args_truncated: bool,
    /// The cgroup it exec'ed in (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
}

#[derive(Debug)]
struct Entry {
    info: ProcessInfo,
    exited: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct ProcessCache {
    entries: HashMap<u32, Entry>,
}

impl ProcessCache {
    /// Seeded with every process running now.
    pub fn seeded() -> Self {
        let mut cache = Self::default();
        if let Ok(all) = procfs::process::all_processes() {
            for process in all.flatten() {
                if let Some(info) = read_process(&process) {
                    cache.insert(info);
                }
            }
        }
        cache
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn insert(&mut self, info: ProcessInfo) {
        self.entries.insert(info.pid, Entry { info, exited: None });
    }

    pub fn on_exec(&mut self, exec: Exec) {
        // The exec'ing process is alive now: /proc has the resolved path and
        // parent. Its arguments come from the kernel (taken before the exec).
        let from_proc = read_proc(exec.tgid);
        let known_ppid = self.entries.get(&exec.tgid).and_then(|e| e.info.ppid);
        let executable = from_proc
            .as_ref()
            .and_then(|p| p.executable.clone())
            .or_else(|| resolved_path(&exec.filename));
        self.insert(ProcessInfo {
            pid: exec.tgid,
            ppid: from_proc.as_ref().and_then(|p| p.ppid).or(known_ppid),
            name: exec.name,
            executable,
            args: exec.args,
            args_truncated: exec.args_truncated,
            uid: Some(exec.uid),
        });
    }

    /// A new task of `parent`: until it execs, it is a copy of its parent.
    pub fn on_fork(&mut self, parent: u32, child: u32) {
        if child == parent {
            return;
        }
        let mut info = match self.entries.get(&parent) {
            Some(e) => e.info.clone(),
            None => match read_proc(parent) {
                Some(info) => {
                    self.insert(info.clone());
                    info
                }
                None => ProcessInfo::default(),
            },
        };
        info.pid = child;
        info.ppid = Some(parent);
        self.insert(info);
    }

    pub fn on_exit(&mut self, tgid: u32) {
        if let Some(entry) = self.entries.get_mut(&tgid) {
            entry.exited = Some(Instant::now());
        }
        if self.entries.len() > SWEEP_ABOVE {
            self.sweep();
        }
    }

    /// Forgets processes that exited more than [`KEEP_EXITED`] ago.
    pub fn sweep(&mut self) {
        self.entries
            .retain(|_, e| e.exited.is_none_or(|t| t.elapsed() < KEEP_EXITED));
    }

    /// The cached process, without reading /proc.
    pub fn peek(&self, pid: u32) -> Option<&ProcessInfo> {
        self.entries.get(&pid).map(|e| &e.info)
    }

    /// The process, from the cache or else from /proc.
    pub fn get(&mut self, pid: u32) -> Option<ProcessInfo> {
        if let Some(entry) = self.entries.get(&pid) {
            return Some(entry.info.clone());
        }
        let info = read_proc(pid)?;
        self.insert(info.clone());
        Some(info)
    }

    /// Parents of `pid`, nearest first, up to `max`: it stops after init
    /// (pid 1) or a container shim, and at an unknown parent.
    pub fn ancestry(&mut self, pid: u32, max: usize) -> Vec<ProcessInfo> {
        let mut chain = Vec::new();
        let mut next = self.get(pid).and_then(|p| p.ppid);
        while let Some(ppid) = next {
            if ppid == 0 || chain.len() == max || chain.iter().any(|p: &ProcessInfo| p.pid == ppid)
            {
                break;
            }
            let Some(parent) = self.get(ppid) else { break };
            let stop = parent.pid == 1 || SHIMS.iter().any(|s| parent.name.starts_with(s));
            next = parent.ppid;
            chain.push(parent);
            if stop {
                break;
            }
        }
        chain
    }
}

/// The root of the host's init: with the host's PID namespace (hostPID)
/// it is the host's file system also when the daemon runs in a container.
const HOST_ROOT: &str = "/proc/1/root";

/// The program an execve path names, as /proc/PID/exe would show it: an
/// absolute path with its symlinks resolved (`/usr/bin/sh` -> `/usr/bin/dash`)
/// in the host's file system; a relative one as given (it depended on the
/// process's directory).
fn resolved_path(filename: &str) -> Option<String> {
    if filename.is_empty() {
        return None;
    }
    if filename.starts_with('/') {
        let real = resolve_under(Path::new(HOST_ROOT), filename).or_else(|| {
            fs::canonicalize(filename)
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        });
        if let Some(real) = real {
            return Some(real);
        }
    }
    Some(filename.to_owned())
}

/// `path` with its symlinks resolved inside `root` as if it were `/` (an
/// absolute link restarts at `root`, `..` stops there); `None` if a
/// component is missing or there are too many links.
fn resolve_under(root: &Path, path: &str) -> Option<String> {
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: std::collections::VecDeque<std::ffi::OsString> = Path::new(path)
        .components()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        match part.to_str() {
            Some("/" | "." | "") => continue,
            Some("..") => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let mut here: PathBuf = root.to_path_buf();
        here.extend(&resolved);
        here.push(&part);
        if !fs::symlink_metadata(&here).ok()?.file_type().is_symlink() {
            resolved.push(part);
            continue;
        }
        links += 1;
        if links > 40 {
            return None;
        }
        let target = fs::read_link(&here).ok()?;
        if target.is_absolute() {
            resolved.clear();
        }
        for c in target.components().rev() {
            pending.push_front(c.as_os_str().to_owned());
        }
    }
    let mut out = String::new();
    for part in &resolved {
        out.push('/');
        out.push_str(&part.to_string_lossy());
    }
    Some(if out.is_empty() { "/".to_owned() } else { out })
}

/// Reads one process from /proc; `None` if it is gone.
fn read_proc(pid: u32) -> Option<ProcessInfo> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    read_process(&process)
}

fn read_process(process: &procfs::process::Process) -> Option<ProcessInfo> {
    let stat = process.stat().ok()?;
    let executable = process.exe().ok().map(|p| {
        p.to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_owned()
    });
    let args = match process.cmdline() {
        Ok(args) => args,
        // procfs reads cmdline as UTF-8; keep other arguments, lossily.
        Err(_) => fs::read(format!("/proc/{}/cmdline", process.pid()))
            .map(|raw| split_nul(&raw))
            .unwrap_or_default(),
    };
    Some(ProcessInfo {
        pid: u32::try_from(process.pid()).ok()?,
        ppid: u32::try_from(stat.ppid).ok(),
        name: stat.comm,
        executable,
        args,
        args_truncated: false,
        // Not read here: parsing /proc/PID/status would double the cost
        // of the seed, and a request carries the kernel's uid (at connect).
        uid: None,
    })
}

/// NUL-separated strings (cmdline, the kernel's argument buffer).
pub fn split_nul(raw: &[u8]) -> Vec<String> {
    raw.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_paths_resolve_like_proc_exe() {
        let link = std::env::temp_dir().join(format!("imds-link-{}", std::process::id()));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/proc/self/exe", &link).unwrap();
        let resolved = resolved_path(link.to_str().unwrap()).unwrap();
        assert!(
            !resolved.contains("imds-link"),
            "symlink followed: {resolved}"
        );
        fs::remove_file(&link).unwrap();
        assert_eq!(resolved_path("./run.sh").as_deref(), Some("./run.sh"));
        assert_eq!(
            resolved_path("/no/such/file").as_deref(),
            Some("/no/such/file")
        );
        assert_eq!(resolved_path(""), None);
    }

    #[test]
    fn paths_resolve_in_the_host_root_not_the_daemons() {
        // A root of its own, as the host's is to a daemon in a container.
        let root = std::env::temp_dir().join(format!("imds-root-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("usr/bin/dash"), b"").unwrap();
        std::os::unix::fs::symlink("/usr/bin/dash", root.join("usr/bin/sh")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("usr/bin/up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let r = |p: &str| resolve_under(&root, p);
        assert_eq!(r("/usr/bin/sh").as_deref(), Some("/usr/bin/dash"));
        assert_eq!(
            r("/bin/sh").as_deref(),
            Some("/usr/bin/dash"),
            "relative link"
        );
        assert_eq!(r("/bin/./../bin/dash").as_deref(), Some("/usr/bin/dash"));
        assert_eq!(
            r("/usr/bin/up/../usr/bin/sh").as_deref(),
            Some("/usr/bin/dash"),
            "`..` stops at the root"
        );
        assert_eq!(r("/usr/bin/missing"), None);
        assert_eq!(r("/loop"), None, "too many links");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn nul_separated_args() {
        assert_eq!(
            split_nul(b"curl\0-s\0http://x/\0"),
            ["curl", "-s", "http://x/"]
        );
        assert!(split_nul(b"").is_empty());
    }

    fn info(pid: u32, ppid: u32, name: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid: Some(ppid),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn fork_copies_the_parent_and_exec_replaces_it() {
        let mut cache = ProcessCache::default();
        cache.insert(ProcessInfo {
            executable: Some("/bin/sh".into()),
            ..info(4_000_000, 1, "sh")
        });
        cache.on_fork(4_000_000, 4_000_001);
        let child = cache.get(4_000_001).unwrap();
        assert_eq!(
            (child.ppid, child.executable.as_deref()),
            (Some(4_000_000), Some("/bin/sh"))
        );
        // The exec'd pid is gone from /proc (fake pid): the kernel's facts are used.
        cache.on_exec(Exec {
            tgid: 4_000_001,
            uid: 0,
            name: "curl".into(),
            filename: "/usr/bin/curl".into(),
            args: vec!["curl".into(), "-s".into()],
            args_truncated: false,
            cgroup_id: 1,
        });
        let child = cache.get(4_000_001).unwrap();
        assert_eq!(child.name, "curl");
        assert_eq!(child.executable.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(child.ppid, Some(4_000_000), "parent kept from the fork");
        cache.on_exit(4_000_001);
        assert!(cache.get(4_000_001).is_some(), "kept a while after exit");
    }

    #[test]
    fn ancestry_stops_at_a_shim_or_init_and_survives_loops() {
        let mut cache = ProcessCache::default();
        cache.insert(info(4_000_010, 4_000_011, "curl"));
        cache.insert(info(4_000_011, 4_000_012, "sh"));
        cache.insert(info(4_000_012, 4_000_013, "containerd-shim-runc-v2"));
        cache.insert(info(4_000_013, 1, "containerd"));
        let chain: Vec<_> = cache
            .ancestry(4_000_010, 8)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(chain, ["sh", "containerd-shim-runc-v2"]);
        cache.insert(info(4_000_020, 4_000_021, "a"));
        cache.insert(info(4_000_021, 4_000_020, "b"));
        assert_eq!(cache.ancestry(4_000_020, 8).len(), 2, "a cycle ends");
        assert_eq!(cache.ancestry(4_000_010, 1).len(), 1, "bounded");
    }

    #[test]
    fn seeds_from_proc() {
        let cache = ProcessCache::seeded();
        assert!(cache.len() > 1);
        let mut cache = cache;
        let me = cache.get(std::process::id()).unwrap();
        assert_eq!(
            me.executable.as_deref(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(|p| p.to_str())
        );
        assert_eq!(me.args, std::env::args().collect::<Vec<_>>());
        assert_eq!(me.ppid, Some(std::os::unix::process::parent_id()));
        assert!(me.name.len() <= 15 && !me.name.is_empty(), "{}", me.name);
    }
}
