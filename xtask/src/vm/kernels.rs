//! Debian's cloud kernels: find the newest package of each line with
//! apt-cache, download and unpack it, all through a private apt configuration
//! under the cache dir (the system's sources and lists are never touched).

use std::cmp::Ordering;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};

use crate::cmd;

/// Package lists older than this are refreshed, so a new kernel ABI of a
/// line is picked up within a week.
const LISTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// One kernel line of the matrix: which Debian release carries it and what
/// its package names look like (`{prefix}{digits and dots}{suffix}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub name: &'static str,
    suite: &'static str,
    prefix: &'static str,
    suffix: &'static str,
}

/// The matrix, oldest first: Amazon Linux 2's 5.10, then 6.1 and 6.12.
pub const LINES: &[Line] = &[
    Line {
        name: "5.10",
        suite: "bullseye",
        prefix: "linux-image-5.10.0-",
        suffix: "-cloud-amd64",
    },
    Line {
        name: "6.1",
        suite: "bookworm",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64",
    },
    Line {
        name: "6.12",
        suite: "trixie",
        prefix: "linux-image-6.12.",
        suffix: "+deb13-cloud-amd64",
    },
];

impl Line {
    /// The ABI part of `package` (`57` of `linux-image-6.1.0-57-cloud-amd64`)
    /// if it is this line's kernel image (not -dbg, -unsigned or another flavour).
    fn abi<'a>(&self, package: &'a str) -> Option<&'a str> {
        let abi = package
            .strip_prefix(self.prefix)?
            .strip_suffix(self.suffix)?;
        let ok = !abi.is_empty()
            && abi.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && abi.bytes().next().is_some_and(|b| b.is_ascii_digit());
        ok.then_some(abi)
    }

    /// POSIX regex for `apt-cache search --names-only`; [`Line::abi`] filters exactly.
    fn search_pattern(&self) -> String {
        let esc = |s: &str| s.replace('.', r"\.").replace('+', r"\+");
        format!("^{}[0-9.]+{}$", esc(self.prefix), esc(self.suffix))
    }

    fn sources_list(&self) -> String {
        format!(
            "deb http://deb.debian.org/debian {s} main\n\
             deb http://deb.debian.org/debian-security {s}-security main\n",
            s = self.suite
        )
    }
}

/// Parses a `--kernel`/`--kernels` selection (`5.10`, `6.1`, `6.12`, `all`,
/// each possibly a comma list) into lines in matrix order, without repeats.
pub fn select(names: &[String]) -> anyhow::Result<Vec<Line>> {
    let mut wanted = vec![false; LINES.len()];
    for name in names.iter().flat_map(|n| n.split(',')).map(str::trim) {
        if name == "all" {
            wanted.iter_mut().for_each(|w| *w = true);
        } else if let Some(i) = LINES.iter().position(|l| l.name == name) {
            wanted[i] = true;
        } else if !name.is_empty() {
            let known: Vec<_> = LINES.iter().map(|l| l.name).collect();
            bail!(
                "unknown kernel line `{name}`: use {} or all",
                known.join(", ")
            );
        }
    }
    let lines: Vec<Line> = LINES
        .iter()
        .zip(wanted)
        .filter_map(|(l, w)| w.then_some(*l))
        .collect();
    if lines.is_empty() {
        bail!("no kernel selected");
    }
    Ok(lines)
}

/// The newest of this line's kernel images in `apt-cache search` output
/// (`name - description` lines), compared by ABI number.
pub fn newest_package(line: &Line, apt_cache_search: &str) -> Option<String> {
    apt_cache_search
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| line.abi(p).map(|abi| (abi, p)))
        .max_by(|a, b| compare_versions(a.0, b.0))
        .map(|(_, p)| p.to_owned())
}

/// Compares dotted numbers numerically (`6.12.9` < `6.12.10`).
fn compare_versions(a: &str, b: &str) -> Ordering {
    let nums = |s: &str| -> Vec<u64> { s.split('.').map(|n| n.parse().unwrap_or(0)).collect() };
    nums(a).cmp(&nums(b))
}

/// An unpacked kernel package, ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub line: &'static str,
    /// `uname -r` of the kernel, e.g. `6.1.0-57-cloud-amd64`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// Root that holds `lib/modules/VERSION` (the package dir, or its `usr`
    /// for packages that ship modules under /usr/lib).
    pub module_root: PathBuf,
}

impl Kernel {
    /// `lib/modules/VERSION` of the package, bind-mounted over the guest's.
    pub fn module_dir(&self) -> PathBuf {
        self.module_root.join("lib/modules").join(&self.version)
    }

    /// A usable unpacked package at `dir` (named after the version).
    fn at(line: &'static str, dir: &Path) -> Option<Self> {
        let version = dir.file_name()?.to_str()?.to_owned();
        let vmlinuz = dir.join("boot").join(format!("vmlinuz-{version}"));
        let module_root = [dir.to_path_buf(), dir.join("usr")]
            .into_iter()
            .find(|r| r.join("lib/modules").join(&version).is_dir())?;
        let kernel = Self {
            line,
            version,
            vmlinuz,
            module_root,
        };
        (kernel.vmlinuz.is_file() && kernel.module_dir().join("modules.dep").is_file())
            .then_some(kernel)
    }
}

/// Returns the newest kernel of `line`, unpacked under `cache`, fetching it
/// when missing. Idempotent; when everything is cached it runs no apt at all.
pub fn fetch(cache: &Path, line: &Line, refresh: bool) -> anyhow::Result<Kernel> {
    let apt = Apt::new(cache, line)?;
    let unpacked = cache.join("k");
    let updated = if refresh || apt.lists_stale() {
        match apt.update() {
            Ok(()) => true,
            Err(e) if apt.has_lists() => {
                eprintln!("warning: {e:#}; using the package lists from before");
                false
            }
            Err(e) => {
                // Offline with a kernel already unpacked: better than nothing.
                if let Some(k) = newest_unpacked(&unpacked, line) {
                    eprintln!(
                        "warning: {e:#}; using the cached kernel {} without checking for a newer one",
                        k.version
                    );
                    return Ok(k);
                }
                return Err(e.context(format!("cannot fetch the {} kernel list", line.name)));
            }
        }
    } else {
        false
    };

    // The choice only changes when the lists do: remember it.
    let chosen_file = apt.dir.join("chosen");
    let remembered = fs::read_to_string(&chosen_file)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|p| !updated && line.abi(p).is_some());
    let package = match remembered {
        Some(p) => p,
        None => {
            let out = apt.search(&line.search_pattern())?;
            let p = newest_package(line, &out).with_context(|| {
                format!(
                    "no package matching {} in Debian {} (apt lists under {})",
                    line.search_pattern(),
                    line.suite,
                    apt.dir.display()
                )
            })?;
            fs::write(&chosen_file, format!("{p}\n"))?;
            p
        }
    };

    let version = package.trim_start_matches("linux-image-").to_owned();
    let dir = unpacked.join(&version);
    if let Some(k) = Kernel::at(line.name, &dir) {
        return Ok(k);
    }
    println!("kernel {}: fetching {package}", line.name);
    let deb = apt.download(&package)?;
    let kernel = unpack(&deb, &dir, line.name);
    // The unpacked tree is the cache; the .deb is not needed any more.
    let _ = fs::remove_file(&deb);
    kernel
}

/// The newest already unpacked kernel of `line` under `dir`.
fn newest_unpacked(dir: &Path, line: &Line) -> Option<Kernel> {
    let names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .map(|v| format!("linux-image-{v}"))
        .collect();
    let newest = newest_package(line, &names.join("\n"))?;
    Kernel::at(
        line.name,
        &dir.join(newest.trim_start_matches("linux-image-")),
    )
}

/// `dpkg-deb -x` into a temporary dir, depmod (the package's postinst would),
/// then rename into place, so an interrupted unpack never looks complete.
fn unpack(deb: &Path, dir: &Path, line: &'static str) -> anyhow::Result<Kernel> {
    let parent = dir.parent().context("kernel dir has no parent")?;
    let version = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("kernel dir name")?;
    let partial = super::PidDir::create(parent, &format!(".partial-{version}"))?;
    cmd::run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(partial.path()),
    )?;
    let module_root = [partial.path().to_path_buf(), partial.path().join("usr")]
        .into_iter()
        .find(|r| r.join("lib/modules").join(version).is_dir())
        .with_context(|| format!("{} has no lib/modules/{version}", deb.display()))?;
    cmd::run(
        Command::new("depmod")
            .arg("-b")
            .arg(&module_root)
            .arg(version),
    )?;
    partial.persist_as(dir)?;
    Kernel::at(line, dir).with_context(|| format!("{} is not a usable kernel", dir.display()))
}

/// apt-get and apt-cache with private sources, lists and cache under
/// `cache/apt-SUITE`.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(cache: &Path, line: &Line) -> anyhow::Result<Self> {
        let dir = cache.join(format!("apt-{}", line.suite));
        for sub in ["lists/partial", "cache/archives/partial", "debs"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let sources = dir.join("sources.list");
        if fs::read_to_string(&sources).ok().as_deref() != Some(line.sources_list().as_str()) {
            fs::write(&sources, line.sources_list())?;
        }
        Ok(Self { dir })
    }

    fn options(&self) -> Vec<OsString> {
        let opt = |k: &str, v: &Path| -> [OsString; 2] {
            let mut s = OsString::from(format!("{k}="));
            s.push(v);
            ["-o".into(), s]
        };
        let mut o = Vec::new();
        o.extend(opt("Dir::Etc::sourcelist", &self.dir.join("sources.list")));
        o.extend(opt("Dir::Etc::sourceparts", Path::new("-")));
        o.extend(opt("Dir::State::Lists", &self.dir.join("lists")));
        o.extend(opt("Dir::Cache", &self.dir.join("cache")));
        // Downloads land in our own dir; no need to drop to the _apt user.
        o.extend(opt("APT::Sandbox::User", Path::new("root")));
        o
    }

    fn lists(&self) -> Vec<PathBuf> {
        fs::read_dir(self.dir.join("lists"))
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().contains("_Packages"))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn has_lists(&self) -> bool {
        !self.lists().is_empty()
    }

    fn lists_stale(&self) -> bool {
        let newest = self
            .lists()
            .iter()
            .filter_map(|p| p.metadata().ok()?.modified().ok())
            .max();
        match newest {
            None => true,
            Some(t) => SystemTime::now()
                .duration_since(t)
                .is_ok_and(|age| age > LISTS_MAX_AGE),
        }
    }

    fn update(&self) -> anyhow::Result<()> {
        cmd::run(
            Command::new("apt-get")
                .args(self.options())
                .args(["-q", "update"]),
        )
    }

    fn search(&self, pattern: &str) -> anyhow::Result<String> {
        let mut c = Command::new("apt-cache");
        c.args(self.options())
            .args(["search", "--names-only", pattern]);
        cmd::probe_stdout(&mut c).with_context(|| format!("`{}` failed", cmd::display(&c)))
    }

    fn download(&self, package: &str) -> anyhow::Result<PathBuf> {
        let debs = self.dir.join("debs");
        cmd::run(
            Command::new("apt-get")
                .args(self.options())
                .args(["-q", "download", package])
                .current_dir(&debs),
        )?;
        let prefix = format!("{package}_");
        fs::read_dir(&debs)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
            .with_context(|| {
                format!(
                    "apt-get download left no {prefix}*.deb in {}",
                    debs.display()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BULLSEYE: &str = "\
linux-image-5.10.0-30-cloud-amd64-dbg - Debug symbols for linux-image-5.10.0-30-cloud-amd64
linux-image-5.10.0-9-cloud-amd64 - Linux 5.10 for x86-64 cloud (signed)
linux-image-5.10.0-46-cloud-amd64-unsigned - Linux 5.10 for x86-64 cloud
linux-image-5.10.0-30-cloud-amd64 - Linux 5.10 for x86-64 cloud (signed)
linux-image-5.10.0-46-cloud-amd64 - Linux 5.10 for x86-64 cloud (signed)
linux-image-5.10.0-45-cloud-amd64 - Linux 5.10 for x86-64 cloud (signed)
linux-image-5.10.0-47-rt-amd64 - Linux 5.10 for x86-64, PREEMPT_RT
";

    #[test]
    fn picks_newest_abi_numerically() {
        assert_eq!(
            newest_package(&LINES[0], BULLSEYE).as_deref(),
            Some("linux-image-5.10.0-46-cloud-amd64")
        );
    }

    #[test]
    fn trixie_abi_is_a_patch_level() {
        let out = "\
linux-image-6.12.9+deb13-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.118+deb13-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.118+deb13-cloud-amd64-dbg - Debug symbols
linux-image-6.12.200+deb13-amd64 - Linux 6.12 for 64-bit PCs (signed)
";
        assert_eq!(
            newest_package(&LINES[2], out).as_deref(),
            Some("linux-image-6.12.118+deb13-cloud-amd64")
        );
    }

    #[test]
    fn nothing_matching_is_none() {
        assert_eq!(newest_package(&LINES[1], BULLSEYE), None);
        assert_eq!(newest_package(&LINES[1], ""), None);
        // A line prefix without an ABI is not a kernel image.
        assert_eq!(
            newest_package(&LINES[1], "linux-image-6.1.0--cloud-amd64 - x"),
            None
        );
    }

    #[test]
    fn search_pattern_escapes_regex() {
        assert_eq!(
            LINES[2].search_pattern(),
            r"^linux-image-6\.12\.[0-9.]+\+deb13-cloud-amd64$"
        );
        assert_eq!(
            LINES[0].search_pattern(),
            r"^linux-image-5\.10\.0-[0-9.]+-cloud-amd64$"
        );
    }

    #[test]
    fn selection() {
        let s = |v: &[&str]| {
            select(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map(|l| l.iter().map(|l| l.name).collect::<Vec<_>>())
        };
        assert_eq!(s(&["all"]).unwrap(), ["5.10", "6.1", "6.12"]);
        assert_eq!(s(&["6.12", "5.10"]).unwrap(), ["5.10", "6.12"]);
        assert_eq!(s(&["6.1,6.1", "6.1"]).unwrap(), ["6.1"]);
        assert!(s(&["4.19"]).is_err());
        assert!(s(&[]).is_err());
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("9", "10"), Ordering::Less);
        assert_eq!(compare_versions("6.12.10", "6.12.9"), Ordering::Greater);
        assert_eq!(compare_versions("57", "57"), Ordering::Equal);
    }
}
