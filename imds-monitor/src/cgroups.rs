//! The cgroup v2 hierarchy: where it is mounted, which directory a cgroup id
//! (the kernel's `bpf_get_current_cgroup_id`, the directory's inode) names.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use procfs::process::MountInfo;

/// The cgroup2 mount whose directories are the whole hierarchy, so a
/// cgroup id (an inode) is found by walking it and its paths are the ones
/// the host sees.
///
/// In a container (the DaemonSet) there can be several: the runtime's own,
/// rooted at the container's cgroup namespace, and the host's bind-mounted
/// over it (`hostPath: /sys/fs/cgroup`), on a hybrid host with its cgroup2
/// at `unified/` below. A mount that a later one covers (same or a parent
/// mount point) is hidden, so visible mounts come first; then a root made of
/// `..` only (the hierarchy's root seen from inside a cgroup namespace), or
/// `/`, over a subdirectory.
pub fn cgroup2_mount_of(mounts: &[MountInfo]) -> Option<PathBuf> {
    let point = |m: &MountInfo| PathBuf::from(unescape_octal(&m.mount_point.to_string_lossy()));
    // Whether `a` is `b`'s parent mount, or that parent's, and so on.
    let is_ancestor = |a: &MountInfo, b: &MountInfo| {
        let mut parent = b.pid;
        for _ in 0..mounts.len() {
            if parent == a.mnt_id {
                return true;
            }
            match mounts.iter().find(|m| m.mnt_id == parent) {
                Some(m) if m.pid != m.mnt_id => parent = m.pid,
                _ => break,
            }
        }
        false
    };
    let hidden = |i: usize| {
        let p = point(&mounts[i]);
        mounts[i + 1..]
            .iter()
            .any(|later| p.starts_with(point(later)) && !is_ancestor(later, &mounts[i]))
    };
    let root_rank = |root: &str| {
        let parts: Vec<&str> = root.split('/').filter(|c| !c.is_empty()).collect();
        if !parts.is_empty() && parts.iter().all(|c| *c == "..") {
            0
        } else if parts.is_empty() {
            1
        } else {
            2
        }
    };
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.fs_type == "cgroup2")
        .min_by_key(|(i, m)| (hidden(*i), root_rank(&m.root), *i))
        .map(|(_, m)| point(m))
}

/// mountinfo escapes space, tab, newline and backslash as \ooo (procfs
/// leaves them).
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .context("reading /proc/self/mountinfo")?;
    cgroup2_mount_of(&mounts.0).context(
        "cgroup v2 is not mounted (no cgroup2 line in /proc/self/mountinfo); \
         mount it (mount -t cgroup2 none /sys/fs/cgroup) or boot with systemd.unified_cgroup_hierarchy=1",
    )
}

/// A cgroup directory to attach the socket hooks to, with what the
/// tracepoints need to test "below it": its id and depth.
#[derive(Clone, Debug)]
pub struct Subtree {
    pub dir: PathBuf,
    /// Path relative to the cgroup2 root, starting with `/`.
    pub path: String,
    pub id: u64,
    pub level: u32,
}

/// `--cgroup PATH`: a directory under the cgroup2 mount, given absolute
/// (`/sys/fs/cgroup/system.slice`) or relative to the root (`/system.slice`).
pub fn subtree(root: &Path, requested: Option<&Path>) -> Result<Subtree> {
    let dir = match requested {
        None => root.to_path_buf(),
        Some(p) if p.starts_with(root) => p.to_path_buf(),
        Some(p) => root.join(p.strip_prefix("/").unwrap_or(p)),
    };
    let meta = fs::metadata(&dir).with_context(|| {
        format!(
            "cgroup {} not found under the cgroup2 mount {}",
            dir.display(),
            root.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("{} is not a cgroup directory", dir.display());
    }
    let rel = dir.strip_prefix(root).expect("dir is under root");
    let path = format!("/{}", rel.display());
    Ok(Subtree {
        level: rel.components().count() as u32,
        id: meta.ino(),
        dir,
        path: if path == "/" {
            path
        } else {
            path.trim_end_matches('/').to_owned()
        },
    })
}

/// Every cgroup below `root`: its id (the directory's inode, which is what
/// `bpf_get_current_cgroup_id` returns) and its path relative to `root`.
pub fn walk(root: &Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        let rel = dir
            .strip_prefix(root)
            .map(|r| format!("/{}", r.display()))
            .unwrap_or_default();
        out.push((meta.ino(), rel));
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Cgroup id to path, by walking the hierarchy. An unknown id walks again
/// (new containers and services appear all the time); an id that a walk did
/// not find is not looked for again for a second, so a removed cgroup costs
/// one walk a second at most.
#[derive(Debug)]
pub struct CgroupPaths {
    root: PathBuf,
    by_id: HashMap<u64, String>,
    missing: HashMap<u64, Instant>,
}

impl CgroupPaths {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            by_id: HashMap::new(),
            missing: HashMap::new(),
        }
    }

    /// Entries held: known paths and ids remembered as missing.
    pub fn entries(&self) -> usize {
        self.by_id.len() + self.missing.len()
    }

    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        let recently_missed = self
            .missing
            .get(&id)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if recently_missed {
            return None;
        }
        self.walk();
        let found = self.by_id.get(&id).cloned();
        if found.is_none() {
            log::debug!(
                "cgroup id {id} not found among {} cgroups",
                self.by_id.len()
            );
            self.missing
                .retain(|_, t| t.elapsed() < Duration::from_secs(1));
            self.missing.insert(id, Instant::now());
        }
        found
    }

    fn walk(&mut self) {
        self.by_id = walk(&self.root).into_iter().collect();
    }

    /// The id of the cgroup at `path` (relative to the mount), remembered.
    pub fn id_of(&mut self, path: &str) -> Option<u64> {
        let dir = self.root.join(path.trim_start_matches('/'));
        let id = fs::metadata(dir).ok()?.ino();
        let path = if path.is_empty() { "/" } else { path };
        self.by_id.insert(id, path.to_owned());
        Some(id)
    }

    /// Every cgroup now, by id (a walk), for finding containers.
    pub fn all(&mut self) -> Vec<(u64, String)> {
        self.walk();
        self.by_id.iter().map(|(id, p)| (*id, p.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cgroup2 mount point, from mountinfo text.
    fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
        let mounts: Vec<MountInfo> = mountinfo
            .lines()
            .filter_map(|line| MountInfo::from_line(line).ok())
            .collect();
        cgroup2_mount_of(&mounts)
    }

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "\
25 1 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw shared:9 - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,seclabel,nsdelegate\n";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "35 24 0:30 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount_in(escaped),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(
            cgroup2_mount_in("25 1 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }

    #[test]
    fn in_a_container_the_visible_host_hierarchy_wins() {
        // The DaemonSet on a hybrid host: the runtime's cgroup2 (rooted at
        // the pod's cgroup namespace) at /sys/fs/cgroup, then the hostPath
        // bind of the host's /sys/fs/cgroup (a tmpfs) over it, with the
        // host's cgroup2 below at unified/ (its root above the namespace).
        let hybrid_pod = "\
600 500 0:40 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw,nsdelegate
601 500 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
602 601 0:27 /../../../.. /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
603 601 0:28 /../../.. /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            cgroup2_mount_in(hybrid_pod),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        // A unified host: both at /sys/fs/cgroup; the later (the host's) is
        // the one seen, and the one whose root is the hierarchy's.
        let unified_pod = "\
600 500 0:40 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw,nsdelegate
601 500 0:30 /../../.. /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw,nsdelegate
";
        let mounts: Vec<MountInfo> = unified_pod
            .lines()
            .map(|l| MountInfo::from_line(l).unwrap())
            .collect();
        assert_eq!(
            cgroup2_mount_of(&mounts),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // Two visible ones: the hierarchy's root over a subdirectory bind.
        let two = "\
40 30 0:30 /kubepods.slice /mnt/pods rw - cgroup2 cgroup2 rw
41 30 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(cgroup2_mount_in(two), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn subtree_accepts_absolute_and_root_relative_paths() {
        let root = std::env::temp_dir().join(format!("imds-cg-{}", std::process::id()));
        fs::create_dir_all(root.join("system.slice/x.service")).unwrap();
        let a = subtree(&root, Some(&root.join("system.slice"))).unwrap();
        let b = subtree(&root, Some(Path::new("/system.slice"))).unwrap();
        assert_eq!((a.path.as_str(), a.level, a.id), ("/system.slice", 1, b.id));
        let top = subtree(&root, None).unwrap();
        assert_eq!((top.path.as_str(), top.level), ("/", 0));
        let err = subtree(&root, Some(Path::new("/nope")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not found"), "{err}");
        let mut paths = CgroupPaths::new(root.clone());
        let id = fs::metadata(root.join("system.slice/x.service"))
            .unwrap()
            .ino();
        assert_eq!(paths.path(id).as_deref(), Some("/system.slice/x.service"));
        // A cgroup made right after a walk is found on its first lookup.
        fs::create_dir_all(root.join("system.slice/new.service")).unwrap();
        let new = fs::metadata(root.join("system.slice/new.service"))
            .unwrap()
            .ino();
        assert_eq!(
            paths.path(new).as_deref(),
            Some("/system.slice/new.service")
        );
        // One that is gone is looked for at most once a second.
        assert_eq!(paths.path(u64::MAX), None);
        assert!(paths.missing.contains_key(&u64::MAX));
        fs::remove_dir_all(&root).unwrap();
    }
}
