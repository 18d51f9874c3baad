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

/// The cgroup2 mount point, from a mountinfo table.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo
        .lines()
        .find_map(|line| {
            // "<id> <parent> <maj:min> <root> <mount point> <options> ... - <fstype> <source> ..."
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            (fstype == "cgroup2").then(|| before.split_whitespace().nth(4).map(unescape_octal))?
        })
        .map(PathBuf::from)
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
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
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    cgroup2_mount_in(&mountinfo).context(
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
