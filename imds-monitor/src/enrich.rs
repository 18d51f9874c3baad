//! Enrichment: from the kernel's owner of a connection (pid, cgroup id) to
//! the process, its parents, its cgroup path and the workload behind it.

use std::{
    collections::HashMap,
    rc::Rc,
    time::{Duration, Instant},
};

use crate::{
    cgroups::CgroupPaths,
    event::{KernelOwner, Request},
    processes::{ProcessCache, ProcessInfo},
    runtime::{self, Resolver},
    workload::{Workload, WorkloadKind},
};

/// Ancestors listed at most (`imds.ancestry`).
pub const MAX_ANCESTRY: usize = 8;

/// Everything known about who sent a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sender {
    pub owner: Option<KernelOwner>,
    pub process: Option<ProcessInfo>,
    /// Parents, nearest first; the first one is `process.parent`.
    pub ancestry: Vec<ProcessInfo>,
    pub cgroup_path: Option<String>,
    pub workload: Workload,
    /// Why attribution is partial; `None` when it is full.
    pub partial: Option<&'static str>,
    /// For a container: what its runtime told (`imds.enrichment`).
    pub runtime: Option<runtime::State>,
}

impl Sender {
    /// `imds.workload.{kind,id}`: the owner's stable key.
    pub fn workload_key(&self) -> Option<(WorkloadKind, &str)> {
        // What survives a redeploy, once the runtime told it.
        if let Some((kind, id)) = self
            .runtime
            .as_ref()
            .and_then(runtime::State::meta)
            .and_then(|m| m.stable_key.as_ref())
        {
            return Some((*kind, id));
        }
        if let Some(key) = self.workload.key() {
            return Some(key);
        }
        let process = self.process.as_ref()?;
        let id = process.executable.as_deref().unwrap_or(&process.name);
        Some((WorkloadKind::Process, id))
    }
}

/// How long a resolved sender is reused for the same process and cgroup:
/// busy clients make many requests, and their parents rarely change.
const SENDER_TTL: Duration = Duration::from_secs(1);

/// The lookups enrichment needs, kept across events.
#[derive(Debug)]
pub struct Enricher {
    pub processes: ProcessCache,
    pub cgroups: CgroupPaths,
    /// Requests whose attribution was partial, for `monitor-stopped`.
    pub partial_count: u64,
    /// Recent senders by (process, cgroup), shared by events and diagnoses.
    recent: HashMap<(u32, u64), (Rc<Sender>, Instant)>,
    /// Container metadata from the runtimes.
    pub runtime: Resolver,
}

impl Enricher {
    pub fn new(processes: ProcessCache, cgroups: CgroupPaths, runtime: Resolver) -> Self {
        Self {
            processes,
            cgroups,
            partial_count: 0,
            recent: HashMap::new(),
            runtime,
        }
    }

    /// The container's runtime metadata as known now (starts a lookup the
    /// first time; never waits).
    fn container_state(&mut self, sender: &Sender) -> Option<runtime::State> {
        let id = sender.workload.container_id.as_deref()?;
        let cgroup = sender.owner.as_ref().map(|o| o.cgroup_id);
        Some(
            self.runtime
                .state(id, sender.workload.container_runtime, cgroup),
        )
    }

    /// A container's first process was exec'ed by its runtime (runc, crun)
    /// in cgroup `cgroup_id` (the kernel's id, not /proc/PID/cgroup, whose
    /// text is relative to the daemon's cgroup namespace): learn it and look
    /// the container up now, before it sends anything.
    pub fn container_started(&mut self, cgroup_id: u64) {
        let Some(path) = self.cgroups.path(cgroup_id) else {
            return;
        };
        let workload = Workload::from_cgroup_path(&path);
        let Some(id) = workload.container_id.as_deref() else {
            return;
        };
        self.runtime
            .state(id, workload.container_runtime, Some(cgroup_id));
    }

    /// Looks up the container a cgroup path names, if any, with its cgroup id.
    pub fn learn_cgroup(&mut self, path: &str) {
        let workload = Workload::from_cgroup_path(path);
        let Some(id) = workload.container_id.as_deref() else {
            return;
        };
        let cgroup_id = self.cgroups.id_of(path);
        self.runtime
            .state(id, workload.container_runtime, cgroup_id);
    }

    pub fn sender(&mut self, request: &Request) -> Rc<Sender> {
        let key = request.owner.as_ref().map(|o| (o.tgid, o.cgroup_id));
        let cached = key
            .and_then(|k| self.recent.get(&k))
            .filter(|(sender, at)| {
                at.elapsed() < SENDER_TTL && sender.owner.as_ref() == request.owner.as_ref()
            })
            .map(|(sender, _)| Rc::clone(sender));
        let cached = cached.and_then(|sender| {
            // Re-resolved once the runtime has answered for its container.
            let state = self.container_state(&sender);
            (state == sender.runtime).then_some(sender)
        });
        let sender = match cached {
            Some(sender) => sender,
            None => {
                let sender = Rc::new(self.resolve(request));
                if let Some(k) = key {
                    if self.recent.len() > 4096 {
                        self.recent.retain(|_, (_, at)| at.elapsed() < SENDER_TTL);
                    }
                    self.recent.insert(k, (Rc::clone(&sender), Instant::now()));
                }
                sender
            }
        };
        if sender.partial.is_some() {
            self.partial_count += 1;
        }
        sender
    }

    /// A process exec'ed or exited: its cached sender is stale.
    pub fn forget(&mut self, tgid: u32) {
        self.recent.retain(|(pid, _), _| *pid != tgid);
    }

    fn resolve(&mut self, request: &Request) -> Sender {
        let Some(owner) = request.owner.clone() else {
            // No connect() was seen for this connection: it was open before
            // the monitor started, or its socket is outside --cgroup.
            return Sender {
                partial: Some("connection_not_seen"),
                ..Sender::default()
            };
        };
        let cgroup_path = self.cgroups.path(owner.cgroup_id);
        log::debug!(
            "owner {} cgroup {} -> {cgroup_path:?}",
            owner.tgid,
            owner.cgroup_id
        );
        let workload = cgroup_path
            .as_deref()
            .map(Workload::from_cgroup_path)
            .unwrap_or_default();
        let mut process = self.processes.get(owner.tgid);
        let mut partial = None;
        match &mut process {
            // Pids are reused: trust the cache only if the name agrees.
            Some(p) if names_agree(&p.name, &owner.comm) => {}
            _ => {
                partial = Some("process_exited");
                process = Some(ProcessInfo {
                    pid: owner.tgid,
                    name: owner.comm.clone(),
                    uid: Some(owner.uid),
                    ..ProcessInfo::default()
                });
            }
        }
        let ancestry = if partial.is_none() {
            self.processes.ancestry(owner.tgid, MAX_ANCESTRY)
        } else {
            Vec::new()
        };
        if partial.is_none() && cgroup_path.is_none() {
            partial = Some("cgroup_removed");
        }
        let mut sender = Sender {
            owner: Some(owner),
            process,
            ancestry,
            cgroup_path,
            workload,
            partial,
            runtime: None,
        };
        sender.runtime = self.container_state(&sender);
        sender
    }
}

/// The kernel's comm is truncated to 15 bytes, and a thread may rename itself.
fn names_agree(cached: &str, comm: &str) -> bool {
    cached == comm || cached.starts_with(comm) || comm.starts_with(cached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_truncation_still_agrees() {
        assert!(names_agree("amazon-ssm-agent", "amazon-ssm-agen"));
        assert!(names_agree("curl", "curl"));
        assert!(!names_agree("curl", "python3"));
    }

    #[test]
    fn process_workload_falls_back_to_the_executable() {
        let sender = Sender {
            process: Some(ProcessInfo {
                pid: 9,
                name: "curl".into(),
                executable: Some("/usr/bin/curl".into()),
                ..ProcessInfo::default()
            }),
            ..Sender::default()
        };
        assert_eq!(
            sender.workload_key(),
            Some((WorkloadKind::Process, "/usr/bin/curl"))
        );
        assert_eq!(Sender::default().workload_key(), None);
    }
}
