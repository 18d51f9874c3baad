//! The kernel's run-time statistics of the daemon's eBPF programs: which
//! program ids belong to this run, and their `run_time` / `run_count`.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;

use anyhow::{Context, Result, bail};
use aya::programs::tc::TcAttachType;
use aya::programs::{ProgramInfo, SchedClassifier, loaded_programs};
use imds_sandbox::Sandbox;

/// The TC programs the benchmark compares (see imds-monitor-ebpf/src/main.rs).
pub const CLASSIFIER: &str = "imds_classify";
pub const PASSTHROUGH: &str = "imds_passthrough";
/// Every program of the daemon is named like this.
const DAEMON_PREFIX: &str = "imds_";

/// The kernel keeps 15 bytes of a program's name (BPF_OBJ_NAME_LEN - 1).
fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

/// Keeps `BPF_STATS_RUN_TIME` on while alive: the kernel only counts while
/// some file descriptor (or the sysctl) holds it on.
pub struct StatsGuard {
    _fd: OwnedFd,
}

pub fn enable_stats() -> Result<StatsGuard> {
    let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("cannot enable BPF run-time statistics (BPF_ENABLE_STATS)")?;
    Ok(StatsGuard { _fd: fd })
}

/// Ids of every program loaded now; taken before the daemon starts, so its
/// programs are the ones that appear afterwards.
pub fn loaded_ids() -> BTreeSet<u32> {
    // A program may be unloaded while we walk the list: skip it.
    loaded_programs().flatten().map(|p| p.id()).collect()
}

/// Accumulated time and runs of one program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub run_time_ns: u64,
    pub run_count: u64,
}

impl Counters {
    fn of(info: &ProgramInfo) -> Self {
        Self {
            run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            run_count: info.run_count(),
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_count: self.run_count.saturating_sub(earlier.run_count),
        }
    }

    /// Mean time per run, `None` without runs.
    pub fn ns_per_run(self) -> Option<f64> {
        (self.run_count > 0).then(|| self.run_time_ns as f64 / self.run_count as f64)
    }
}

/// What makes one of the daemon's other programs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// A TC program on the sandbox host's `eth0` (e.g. responses on ingress).
    Packet,
    /// connect4/connect6 and sock_ops, on the root cgroup: every connection
    /// on the machine.
    Connection,
    /// Tracepoints and the rest: every process event on the machine.
    Process,
}

impl HookKind {
    /// Whether each IMDS request passes it (a process event is not per request).
    pub fn per_request(self) -> bool {
        matches!(self, Self::Packet | Self::Connection)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Packet => "per packet on eth0",
            Self::Connection => "per connection (machine-wide)",
            Self::Process => "per process event (machine-wide)",
        }
    }

    /// From the kernel's program type. aya 0.14 does not export the type
    /// enum, only its Debug names (`BPF_PROG_TYPE_SOCK_OPS`, ...).
    fn of(info: &ProgramInfo) -> Self {
        let t = format!("{:?}", info.program_type());
        if t.contains("SCHED_CLS") {
            Self::Packet
        } else if t.contains("SOCK_ADDR") || t.contains("SOCK_OPS") {
            Self::Connection
        } else {
            Self::Process
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Hook {
    pub id: u32,
    pub kind: HookKind,
}

/// The programs of one daemon run, by kernel id.
#[derive(Debug, Clone)]
pub struct Programs {
    pub classifier: u32,
    pub passthrough: Option<u32>,
    /// The daemon's other programs, by name.
    pub hooks: BTreeMap<String, Hook>,
}

impl Programs {
    /// Finds the programs of the daemon that was started after `before` was
    /// taken. The TC programs are the ones attached to the sandbox host's
    /// `eth0` (a TCX query from inside its namespace, so other sandboxes'
    /// daemons cannot be mistaken for ours); without TCX (netlink attach on
    /// old kernels), the newest new program of each name.
    pub fn locate(sandbox: &Sandbox, before: &BTreeSet<u32>) -> Result<Self> {
        let new: Vec<ProgramInfo> = loaded_programs()
            .flatten()
            .filter(|p| !before.contains(&p.id()))
            .collect();
        let newest = |name: &str| {
            new.iter()
                .filter(|p| p.name_as_str() == Some(kernel_name(name)))
                .map(ProgramInfo::id)
                .max()
        };
        let attached = attached_tc(sandbox).unwrap_or_default();
        let pick = |name: &str| {
            attached
                .iter()
                .find(|(n, _)| n == kernel_name(name))
                .map(|(_, id)| *id)
                .or_else(|| newest(name))
        };
        let Some(classifier) = pick(CLASSIFIER) else {
            bail!("no {CLASSIFIER} program appeared after the daemon started");
        };
        let passthrough = pick(PASSTHROUGH);

        // Other programs have no attachment we can query per sandbox; if a
        // concurrent run loaded the same names, keep the id nearest to our
        // classifier's (one daemon loads all of its programs together).
        let mut hooks: BTreeMap<String, Hook> = BTreeMap::new();
        let ours = |name: &str| {
            name.starts_with(DAEMON_PREFIX)
                && name != kernel_name(CLASSIFIER)
                && name != kernel_name(PASSTHROUGH)
        };
        for p in &new {
            let Some(name) = p.name_as_str().filter(|n| ours(n)) else {
                continue;
            };
            let hook = Hook {
                id: p.id(),
                kind: HookKind::of(p),
            };
            let distance = |id: u32| id.abs_diff(classifier);
            hooks
                .entry(name.to_owned())
                .and_modify(|h| {
                    if distance(hook.id) < distance(h.id) {
                        *h = hook;
                    }
                })
                .or_insert(hook);
        }
        // Other TC programs on our eth0 are ours for sure.
        for (name, id) in attached.iter().filter(|(n, _)| ours(n)) {
            hooks.insert(
                name.clone(),
                Hook {
                    id: *id,
                    kind: HookKind::Packet,
                },
            );
        }
        Ok(Self {
            classifier,
            passthrough,
            hooks,
        })
    }

    /// Reads the counters of every program of this run.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let ids: BTreeSet<u32> = self
            .hooks
            .values()
            .map(|h| h.id)
            .chain([self.classifier])
            .chain(self.passthrough)
            .collect();
        let counters: BTreeMap<u32, Counters> = loaded_programs()
            .flatten()
            .filter(|p| ids.contains(&p.id()))
            .map(|p| (p.id(), Counters::of(&p)))
            .collect();
        if let Some(gone) = ids.iter().find(|id| !counters.contains_key(id)) {
            bail!("program {gone} is no longer loaded (did the daemon exit?)");
        }
        Ok(Snapshot { counters })
    }
}

/// `(name, id)` of the TCX programs on the sandbox host's `eth0`, egress
/// and ingress.
fn attached_tc(sandbox: &Sandbox) -> Result<Vec<(String, u32)>> {
    let ifname = sandbox.host_ifname();
    let mut found = Vec::new();
    for direction in [TcAttachType::Egress, TcAttachType::Ingress] {
        // The interface index and the query are those of the calling
        // thread's namespace: run them inside the sandbox host.
        let (_, programs) = sandbox
            .run_in_host_netns(|| SchedClassifier::query_tcx(ifname, direction))?
            .context("TCX query of the host's eth0")?;
        found.extend(
            programs
                .iter()
                .map(|p| (p.name_as_str().unwrap_or_default().to_owned(), p.id())),
        );
    }
    Ok(found)
}

/// Counters of a run's programs at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    counters: BTreeMap<u32, Counters>,
}

impl Snapshot {
    /// What program `id` did between `earlier` and `self`.
    pub fn since(&self, earlier: &Self, id: u32) -> Counters {
        let get = |s: &Self| s.counters.get(&id).copied().unwrap_or_default();
        get(self).since(get(earlier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_like_the_kernel_does() {
        assert_eq!(kernel_name(PASSTHROUGH), "imds_passthroug");
        assert_eq!(kernel_name(CLASSIFIER), CLASSIFIER);
    }

    #[test]
    fn counters_subtract_and_average() {
        let a = Counters {
            run_time_ns: 1_000,
            run_count: 10,
        };
        let b = Counters {
            run_time_ns: 4_000,
            run_count: 40,
        };
        assert_eq!(b.since(a).ns_per_run(), Some(100.0));
        assert_eq!(a.since(b), Counters::default(), "never negative");
        assert_eq!(Counters::default().ns_per_run(), None);
    }
}
