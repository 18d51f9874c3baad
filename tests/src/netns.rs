//! Named network namespaces (`ip netns`), entered per thread or per child.
//!
//! A namespace is entered with `setns(CLONE_NEWNET)`, which changes only the
//! calling thread. Work for a namespace therefore runs either in a dedicated
//! thread ([`NetNs::run`]) or in a child process between fork and exec
//! ([`crate::Sandbox::command`]). `ip netns exec` is avoided for workloads because it
//! remounts /sys, which hides the cgroup2 mount from the workload.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use nix::sched::{CloneFlags, setns};

use crate::util::run_checked;

/// Where `ip netns` keeps its bind-mounted namespace files.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A named network namespace. This is only a handle: the [`crate::Sandbox`]
/// that created it deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

impl NetNs {
    /// Handle for an existing namespace name (it is not checked).
    pub fn from_name(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            path: Path::new(NETNS_RUN_DIR).join(name),
        }
    }

    /// Creates the namespace with `ip netns add`.
    pub(crate) fn create(name: &str) -> Result<Self> {
        run_checked(Command::new("ip").args(["netns", "add", name]), None)?;
        Ok(Self::from_name(name))
    }

    /// Deletes the namespace with `ip netns del`. The kernel frees it once the
    /// last process or socket inside it is gone.
    pub(crate) fn delete(&self) -> Result<()> {
        run_checked(Command::new("ip").args(["netns", "del", &self.name]), None)?;
        Ok(())
    }

    /// Names of all namespaces under [`NETNS_RUN_DIR`].
    pub fn list() -> Result<Vec<String>> {
        let dir = match std::fs::read_dir(NETNS_RUN_DIR) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context(format!("cannot list {NETNS_RUN_DIR}")),
        };
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.with_context(|| format!("cannot list {NETNS_RUN_DIR}"))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, e.g. `/run/netns/<name>`; open it and `setns` to enter.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the namespace file (close-on-exec).
    pub fn open(&self) -> Result<OwnedFd> {
        let file = File::open(&self.path)
            .with_context(|| format!("cannot open network namespace {}", self.path.display()))?;
        Ok(file.into())
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its
    /// result. Sockets `f` creates belong to the namespace; the calling thread
    /// stays where it was. A panic in `f` is propagated.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let fd = self.open()?;
        let name = &self.name;
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || -> Result<T> {
                setns(&fd, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("cannot enter network namespace {name}"))?;
                Ok(f())
            });
            match worker.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Sets a sysctl of this namespace, e.g. `net.ipv4.ip_forward`. Writes the
    /// /proc/sys file from a thread inside the namespace, since /proc/sys/net
    /// shows the namespace of the thread that opens it.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let file = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&file, value))?
            .with_context(|| format!("cannot set {key}={value} in namespace {}", self.name))
    }

    /// Reads a sysctl of this namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let file = Path::new("/proc/sys").join(key.replace('.', "/"));
        let value = self
            .run(|| std::fs::read_to_string(&file))?
            .with_context(|| format!("cannot read {key} in namespace {}", self.name))?;
        Ok(value.trim().to_owned())
    }

    /// Runs `ip -n <name> ARGS` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let output = run_checked(
            Command::new("ip").arg("-n").arg(&self.name).args(args),
            None,
        )?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs several `ip` commands (one per line, without the leading `ip`) in
    /// this namespace with a single `ip -batch` process.
    pub fn ip_batch(&self, commands: &[String]) -> Result<()> {
        let script = commands.join("\n") + "\n";
        run_checked(
            Command::new("ip").args(["-n", &self.name, "-batch", "-"]),
            Some(&script),
        )?;
        Ok(())
    }

    /// Loads an nftables script into this namespace.
    pub fn nft(&self, script: &str) -> Result<()> {
        run_checked(self.command("nft")?.args(["-f", "-"]), Some(script))?;
        Ok(())
    }

    /// Runs `nft ARGS` in this namespace and returns its stdout.
    pub fn nft_query(&self, args: &[&str]) -> Result<String> {
        let output = run_checked(self.command("nft")?.args(args), None)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A command that runs inside this namespace but stays in the caller's
    /// cgroup. Meant for admin tools (nft, tc, ss); use
    /// [`crate::Sandbox::command`] for workloads.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let mut cmd = Command::new(program);
        crate::spawn::enter_in_child(&mut cmd, None, self.open()?);
        Ok(cmd)
    }
}
