//! cgroup v2 directories: finding the mount, creating, killing, removing.

use std::fs::{self, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The cgroup2 mount point, read from /proc/self/mountinfo (it differs between
/// pure v2 systems, `/sys/fs/cgroup`, and hybrid ones, `/sys/fs/cgroup/unified`).
pub fn cgroup2_mount() -> Result<&'static Path> {
    static MOUNT: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = MOUNT.get() {
        return Ok(path);
    }
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    let path = parse_cgroup2_mount(&mountinfo).context("no cgroup2 file system is mounted")?;
    Ok(MOUNT.get_or_init(|| path))
}

/// Finds the first cgroup2 mount point in mountinfo text. Fields: `id parent
/// major:minor root mount-point options [optional...] - fstype source ...`.
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = before.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path of a process as the kernel reports it in
/// `/proc/<pid>/cgroup` (`0::/a/b`), e.g. `/a/b`.
pub fn cgroup_of_pid(pid: u32) -> Result<String> {
    let file = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
        .with_context(|| format!("{file} has no cgroup v2 line"))
}

/// A cgroup v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
    rel: String,
}

impl Cgroup {
    /// Handle for `rel`, a path below the cgroup2 mount such as
    /// `/imds-sandbox-1/system.slice/x.service` (leading slash optional).
    pub fn from_rel(rel: &str) -> Result<Self> {
        let rel = format!("/{}", rel.trim_matches('/'));
        let path = cgroup2_mount()?.join(rel.trim_start_matches('/'));
        Ok(Self { path, rel })
    }

    /// Creates the directory and its missing parents.
    pub(crate) fn create(rel: &str) -> Result<Self> {
        let cgroup = Self::from_rel(rel)?;
        fs::create_dir_all(&cgroup.path)
            .with_context(|| format!("cannot create cgroup {}", cgroup.path.display()))?;
        Ok(cgroup)
    }

    /// The handle of `sub` (relative, may have several components) below this one.
    pub fn child(&self, sub: &str) -> Result<Self> {
        let sub = sub.trim_matches('/');
        if sub.is_empty()
            || sub
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("invalid cgroup sub-path {sub:?}");
        }
        Self::from_rel(&format!("{}/{sub}", self.rel))
    }

    /// Absolute directory, e.g. `/sys/fs/cgroup/imds-sandbox-1/system.slice`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path below the cgroup2 mount with a leading slash, exactly as
    /// `/proc/<pid>/cgroup` shows it after `0::`.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// The cgroup id: the inode number of the directory, which is what
    /// `bpf_get_current_cgroup_id()` returns for tasks inside it.
    pub fn id(&self) -> Result<u64> {
        let meta = fs::metadata(&self.path)
            .with_context(|| format!("cannot stat cgroup {}", self.path.display()))?;
        Ok(meta.ino())
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Opens `cgroup.procs` for writing (close-on-exec); writing a pid (or `0`
    /// for the writer itself) moves that process here.
    pub fn open_procs(&self) -> Result<OwnedFd> {
        let file = self.path.join("cgroup.procs");
        let f = OpenOptions::new()
            .write(true)
            .open(&file)
            .with_context(|| format!("cannot open {}", file.display()))?;
        Ok(f.into())
    }

    /// Pids directly in this cgroup (not in its children).
    pub fn procs(&self) -> Result<Vec<u32>> {
        let file = self.path.join("cgroup.procs");
        let text =
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        text.lines()
            .map(|l| {
                l.parse()
                    .with_context(|| format!("bad pid {l:?} in {}", file.display()))
            })
            .collect()
    }

    /// Whether any process lives in this cgroup or below (`cgroup.events`).
    pub fn is_populated(&self) -> Result<bool> {
        let file = self.path.join("cgroup.events");
        let text =
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        Ok(text.lines().any(|l| l == "populated 1"))
    }

    /// SIGKILLs every process in this cgroup and below: `cgroup.kill` (5.14+),
    /// else each pid of `cgroup.procs` down the tree (Linux 5.10).
    pub fn kill(&self) -> Result<()> {
        let file = self.path.join("cgroup.kill");
        if file.exists() {
            return fs::write(&file, "1")
                .with_context(|| format!("cannot write {}", file.display()));
        }
        kill_tree(&self.path)
    }

    /// Kills everything inside, waits (up to `timeout`) for the processes to
    /// be gone, then removes the directory tree bottom-up.
    pub(crate) fn destroy(&self, timeout: Duration) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        self.kill()?;
        let deadline = Instant::now() + timeout;
        while self.is_populated()? {
            if Instant::now() >= deadline {
                bail!(
                    "processes in {} survived SIGKILL for {timeout:?}",
                    self.path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        remove_tree(&self.path)
    }
}

/// SIGKILL to every process listed in `dir`'s `cgroup.procs` and below.
fn kill_tree(dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    let text =
        fs::read_to_string(&procs).with_context(|| format!("cannot read {}", procs.display()))?;
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) with a pid read from cgroup.procs; a pid gone
        // meanwhile gives ESRCH, which is fine.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            kill_tree(&entry.path())?;
        }
    }
    Ok(())
}

/// rmdir of a cgroup tree, children first (cgroupfs refuses non-empty rmdir
/// and plain files inside cannot be unlinked).
fn remove_tree(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove cgroup {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:5 - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn unescapes_mount_points() {
        let text = "1 2 0:1 / /mnt/with\\040space rw - cgroup2 none rw\n";
        assert_eq!(
            parse_cgroup2_mount(text),
            Some(PathBuf::from("/mnt/with space"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 2 0:1 / /x rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn child_rejects_escapes() {
        let Ok(root) = Cgroup::from_rel("/a") else {
            return; // no cgroup2 on this machine: nothing to check
        };
        assert!(root.child("../b").is_err());
        assert!(root.child("").is_err());
        assert_eq!(root.child("b/c.service").unwrap().rel(), "/a/b/c.service");
    }
}
