//! Placing child processes into a cgroup and a network namespace.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Where a workload runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Place {
    /// The EC2 host namespace, in the sandbox's root cgroup.
    HostRoot,
    /// The EC2 host namespace, in a cgroup given relative to the sandbox's
    /// root cgroup (e.g. `system.slice/cron.service`); created on demand.
    Host(String),
    /// The network namespace and cgroup of container `i`.
    Container(usize),
}

impl Place {
    /// A host service: `system.slice/<name>.service`, as systemd names it.
    pub fn service(name: &str) -> Self {
        Self::Host(format!("system.slice/{name}.service"))
    }
}

/// Makes the child of `cmd`, between fork and exec, write `0` to the already
/// opened `cgroup.procs` (which moves the writer into that cgroup) and then
/// `setns(CLONE_NEWNET)` into `netns`.
///
/// The files are opened by the parent, so the child only issues two raw
/// syscalls: after fork in a multi-threaded process nothing else (allocation,
/// locks) is safe. If either step fails the spawn fails, so a workload never
/// runs by accident in the machine's own namespace.
pub(crate) fn enter_in_child(cmd: &mut Command, cgroup_procs: Option<OwnedFd>, netns: OwnedFd) {
    let hook = move || -> std::io::Result<()> {
        if let Some(procs) = &cgroup_procs {
            // SAFETY: write(2) on an fd the closure owns, from a static buffer;
            // async-signal-safe.
            let written = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: setns(2) on an fd the closure owns; async-signal-safe.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls (see above).
    unsafe {
        cmd.pre_exec(hook);
    }
}
