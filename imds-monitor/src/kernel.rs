//! Loads the kernel programs and attaches the classifier to interfaces;
//! detaches everything it attached when dropped.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, SockOps, TcAttachType,
        TracePoint,
        cgroup_sock_addr::CgroupSockAddrLinkId,
        links::{FdLink, PinnedLink},
        sock_ops::SockOpsLinkId,
        tc::{
            self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcError,
        },
        trace_point::TracePointLinkId,
    },
    util::KernelVersion,
};
use imds_monitor_common::config::{Endpoints, ExemptBits};
use imds_monitor_common::flow::{FlowKey, FlowState};

use crate::{cgroups::Subtree, policy::compile::Compiled, tc_filters, verifier};

const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imds-monitor-ebpf"));
const CLASSIFIER: &str = "imds_classify";
/// An empty TC program, attached only for benchmarks (`--baseline-passthrough`).
const PASSTHROUGH: &str = "imds_passthrough";
/// Reads responses on the way in (status codes, token response TTL).
const RESPONSES: &str = "imds_responses";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX links on kernels >= 6.6, netlink clsact filters below.
    Auto,
    Tcx,
    Netlink,
}

/// Socket hooks: who connects (connect4/6) and the handshake (sock_ops).
const CONNECT_HOOKS: [&str; 2] = ["imds_connect4", "imds_connect6"];
const SOCKOPS: &str = "imds_sockops";
/// Process lifecycle tracepoints: (program, category, name).
const TRACEPOINTS: [(&str, &str, &str); 5] = [
    ("imds_execve", "syscalls", "sys_enter_execve"),
    ("imds_exec", "sched", "sched_process_exec"),
    ("imds_fork", "sched", "sched_process_fork"),
    ("imds_exit", "sched", "sched_process_exit"),
    // New cgroups named by a policy exception (enforce mode's no-race rule).
    ("imds_cgroup_mkdir", "cgroup", "cgroup_mkdir"),
];

/// One attachment, kept to undo it.
#[derive(Debug)]
enum Attachment {
    Tc {
        program: &'static str,
        iface: String,
        link: SchedClassifierLinkId,
        /// We added the clsact qdisc, so we remove it again.
        added_clsact: bool,
    },
    Connect(&'static str, CgroupSockAddrLinkId),
    SockOps(SockOpsLinkId),
    TracePoint(&'static str, TracePointLinkId),
    /// Pinned in bpffs (enforce mode): stays attached if the daemon dies.
    Pinned(String, PinnedLink),
}

/// Maps whose state enforcement needs across a daemon's restart: the flows
/// being judged, owners, the policy, the actions, and the event queue.
const PINNED_MAPS: [&str; 15] = [
    "FLOWS",
    "EVENTS",
    "STATS",
    "ACTIONS",
    "CONNECTS",
    "BY_SEQUENCE",
    "SEQ_KEYS",
    "EXEMPT_CGROUPS",
    "EXEMPT_PATHS",
    "EXEMPT_LEAVES",
    "EXEMPT_CONTAINERS",
    "EXEMPT_EXECS",
    "PROC_EXEMPT",
    "EXCEPTION_NEEDS",
    "PENDING_EXECS",
];

/// Where enforce mode pins maps and links (`--pin-dir`, in bpffs).
#[derive(Clone, Debug)]
pub struct Pins {
    pub dir: std::path::PathBuf,
}

impl Pins {
    /// The pin directory, mounting bpffs at its parent if it is not one.
    pub fn open(dir: &Path) -> Result<Self> {
        let parent = dir.parent().context("--pin-dir has no parent directory")?;
        // Daemons starting together must not each mount bpffs: a second
        // mount would hide the first one's pins.
        let is_bpffs = || {
            nix::sys::statfs::statfs(parent)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        };
        // Only a mount needs the lock (a read-only root may have no /run).
        let _guard = if is_bpffs() {
            None
        } else {
            Some(mount_lock()?)
        };
        if !is_bpffs() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            nix::mount::mount(
                Some("bpf"),
                parent,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .with_context(|| format!("mounting bpffs at {}", parent.display()))?;
            log::info!("mounted bpffs at {}", parent.display());
        }
        for sub in ["maps", "links"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn map(&self, name: &str) -> std::path::PathBuf {
        self.dir.join("maps").join(name)
    }

    fn link(&self, name: &str) -> std::path::PathBuf {
        self.dir.join("links").join(name)
    }

    /// Links pinned by a daemon that is gone: enforcement this start adopts.
    pub fn has_links(&self) -> bool {
        fs::read_dir(self.dir.join("links")).is_ok_and(|mut d| d.next().is_some())
    }

    /// Detaches every pinned link and removes the maps: enforcement ends.
    pub fn remove(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        if let Ok(links) = fs::read_dir(self.dir.join("links")) {
            for entry in links.flatten() {
                let path = entry.path();
                // Unpinning drops the last reference: the link detaches.
                if let Ok(link) = PinnedLink::from_pin(&path) {
                    link.unpin()
                        .with_context(|| format!("unpinning {}", path.display()))?;
                } else {
                    fs::remove_file(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                }
                removed.push(format!("link {}", entry.file_name().to_string_lossy()));
            }
        }
        if let Ok(maps) = fs::read_dir(self.dir.join("maps")) {
            for entry in maps.flatten() {
                fs::remove_file(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
                removed.push(format!("map {}", entry.file_name().to_string_lossy()));
            }
        }
        let _ = fs::remove_dir(self.dir.join("links"));
        let _ = fs::remove_dir(self.dir.join("maps"));
        let _ = fs::remove_dir(&self.dir);
        Ok(removed)
    }
}

/// Pins `link` at `path`, replacing a pin left there.
fn pin(link: FdLink, path: &Path) -> Result<PinnedLink> {
    if path.exists() {
        fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
    }
    link.pin(path)
        .map_err(|e| anyhow!("pinning {}: {e}", path.display()))
}

pub struct Kernel {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    /// What works less well on this kernel, one sentence each (besides the
    /// attach method, see [`Kernel::method`]).
    pub degraded: Vec<&'static str>,
    pub method: &'static str,
    /// Enforce mode: maps and links are pinned here.
    pins: Option<Pins>,
    /// On stop, leave pinned enforcement in place (`--persist`).
    pub persist: bool,
    /// `--kernel-log debug`: prints the programs' log lines.
    kernel_log: Option<crate::kernel_log::Reader>,
    /// tracefs was found or mounted: the process tracepoints are attached.
    tracepoints: bool,
}

/// `imds.degraded` when tracefs is missing and cannot be mounted.
pub const TRACEFS_MISSING: &str = "process tracking: tracefs is not mounted and could not be \
     mounted at /sys/kernel/tracing, so the exec, fork, exit and cgroup_mkdir tracepoints are \
     not attached: requests are still classified and enforced and their senders named by the \
     socket hooks, but processes started after the monitor are named from /proc when their \
     request is seen (one that exited by then only by its kernel name and pid), and exceptions \
     by executable or cgroup path do not cover processes and cgroups that start later \
     (enforce mode drops their IMDSv1: it fails closed)";

/// What the programs need to know before they are loaded.
pub struct LoadOptions<'a> {
    pub endpoints: &'a Endpoints,
    /// `--cgroup`: the followed subtree; `None` for the whole hierarchy.
    pub watched: Option<&'a Subtree>,
    /// Enforce mode: pin maps and links (and adopt pinned ones).
    pub pins: Option<Pins>,
    /// Entries of the flow table (`--flow-table-entries`); `None` keeps the
    /// object's size.
    pub flow_entries: Option<u32>,
    /// `--kernel-log`: the programs' log level (see [`Kernel::read_kernel_log`]).
    pub kernel_log: crate::kernel_log::KernelLog,
}

impl Kernel {
    pub fn load(options: &LoadOptions<'_>) -> Result<Self> {
        raise_memlock_limit();
        let mut degraded = Vec::new();
        // No tracefs (and none can be mounted): the process tracepoints stay
        // unattached and the rest runs (see TRACEFS_MISSING).
        let tracefs = match tracefs() {
            Ok(dir) => Some(dir),
            Err(e) => {
                log::warn!("{e:#}: running without the process tracepoints");
                degraded.push(TRACEFS_MISSING);
                None
            }
        };
        let (child_pid_offset, (mkdir_id, mkdir_path)) = match &tracefs {
            Some(dir) => (fork_child_pid_offset(dir)?, mkdir_offsets(dir)?),
            None => (0, (0, 0)),
        };
        let (mut cgroup_id, cgroup_level) = options.watched.map_or((0, 0), |w| (w.id, w.level));
        // `--cgroup` limits the process tracepoints to the subtree with
        // bpf_get_current_ancestor_cgroup_id, which tracepoints cannot call
        // before 5.15-ish (5.10 has it for socket programs only): there they
        // follow every process, and the daemon keeps only the subtree's.
        if cgroup_id != 0
            && !verifier::tracepoint_helper_supported(verifier::HELPER_ANCESTOR_CGROUP_ID)
        {
            cgroup_id = 0;
            degraded.push(
                "process tracking: the kernel's tracepoints cannot tell the --cgroup subtree \
                 (no bpf_get_current_ancestor_cgroup_id there): every process's exec, fork \
                 and exit is read, not only the subtree's",
            );
        }
        let mut loader = EbpfLoader::new();
        if let Some(entries) = options.flow_entries {
            loader.map_max_entries("FLOWS", entries);
        }
        if let Some(pins) = &options.pins {
            // An existing pin is reused: a restarted daemon keeps the state.
            for name in PINNED_MAPS {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        // aya-log's level global: 0 (off) makes the verifier skip every log call.
        let log_level = options.kernel_log.level();
        let mut ebpf = loader
            .override_global(aya_log::LEVEL, &log_level, true)
            .override_global("ENDPOINTS", options.endpoints, true)
            .override_global("FORK_CHILD_PID_OFFSET", &child_pid_offset, true)
            .override_global("WATCHED_CGROUP_ID", &cgroup_id, true)
            .override_global("WATCHED_CGROUP_LEVEL", &cgroup_level, true)
            .override_global("MKDIR_ID_OFFSET", &mkdir_id, true)
            .override_global("MKDIR_PATH_OFFSET", &mkdir_path, true)
            .load(OBJECT)
            .map_err(explain_load_error)?;
        for name in [CLASSIFIER, PASSTHROUGH, RESPONSES] {
            let tc: &mut SchedClassifier = program(&mut ebpf, name)?.try_into()?;
            tc.load().map_err(|e| explain_program_load_error(name, e))?;
        }
        for name in CONNECT_HOOKS {
            let hook: &mut CgroupSockAddr = program(&mut ebpf, name)?.try_into()?;
            hook.load()
                .map_err(|e| explain_program_load_error(name, e))?;
        }
        let sockops: &mut SockOps = program(&mut ebpf, SOCKOPS)?.try_into()?;
        sockops
            .load()
            .map_err(|e| explain_program_load_error(SOCKOPS, e))?;
        for (name, _, _) in TRACEPOINTS {
            let tp: &mut TracePoint = program(&mut ebpf, name)?.try_into()?;
            tp.load().map_err(|e| explain_program_load_error(name, e))?;
        }
        Ok(Self {
            ebpf,
            attachments: Vec::new(),
            degraded,
            method: "",
            pins: options.pins.clone(),
            persist: false,
            kernel_log: None,
            tracepoints: tracefs.is_some(),
        })
    }

    /// `--kernel-log debug`: prints the programs' log lines to stderr, on a
    /// thread, until the kernel is dropped. Takes their log map, which
    /// [`verifier_stats`] then cannot relocate: `run` only.
    pub fn read_kernel_log(&mut self) -> Result<()> {
        self.kernel_log = Some(crate::kernel_log::Reader::start(&mut self.ebpf)?);
        Ok(())
    }

    /// Attaches the socket hooks to a cgroup (every process below it is
    /// attributed) and the process tracepoints. On our kernels (>= 5.7) aya
    /// makes cgroup bpf_links, which always run beside other tools' programs
    /// on the same cgroup; their flags must be 0, which `Single` maps to.
    pub fn attach_attribution(&mut self, cgroup_dir: &Path) -> Result<()> {
        let cgroup = fs::File::open(cgroup_dir)
            .with_context(|| format!("opening cgroup {}", cgroup_dir.display()))?;
        for name in CONNECT_HOOKS {
            // A pinned predecessor stays attached until the new link is in:
            // both write the same (pinned) maps meanwhile.
            let old = self
                .pins
                .as_ref()
                .and_then(|p| PinnedLink::from_pin(p.link(name)).ok());
            let hook: &mut CgroupSockAddr = program(&mut self.ebpf, name)?.try_into()?;
            let link = hook
                .attach(&cgroup, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", cgroup_dir.display()))?;
            match &self.pins {
                Some(pins) => {
                    let fd = FdLink::try_from(hook.take_link(link)?)?;
                    let pinned = pin(fd, &pins.link(name))?;
                    drop(old);
                    self.attachments
                        .push(Attachment::Pinned(name.to_owned(), pinned));
                }
                None => self.attachments.push(Attachment::Connect(name, link)),
            }
        }
        let old = self
            .pins
            .as_ref()
            .and_then(|p| PinnedLink::from_pin(p.link(SOCKOPS)).ok());
        let sockops: &mut SockOps = program(&mut self.ebpf, SOCKOPS)?.try_into()?;
        let link = sockops
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {SOCKOPS} to {}", cgroup_dir.display()))?;
        match &self.pins {
            Some(pins) => {
                let fd = FdLink::try_from(sockops.take_link(link)?)?;
                let pinned = pin(fd, &pins.link(SOCKOPS))?;
                drop(old);
                self.attachments
                    .push(Attachment::Pinned(SOCKOPS.to_owned(), pinned));
            }
            None => self.attachments.push(Attachment::SockOps(link)),
        }
        for &(name, category, event) in TRACEPOINTS.iter().filter(|_| self.tracepoints) {
            let tp: &mut TracePoint = program(&mut self.ebpf, name)?.try_into()?;
            let link = tp
                .attach(category, event)
                .with_context(|| format!("attaching to tracepoint {category}/{event}"))?;
            self.attachments.push(Attachment::TracePoint(name, link));
        }
        Ok(())
    }

    /// Attaches the classifier to egress of `iface`: every request leaving the
    /// host, from host processes and forwarded from containers, passes there.
    pub fn attach_egress(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        self.attach(CLASSIFIER, TcAttachType::Egress, iface, mode)
    }

    /// Attaches the response reader to ingress of `iface`, where IMDS's
    /// answers arrive before they are delivered or forwarded.
    pub fn attach_ingress(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        self.attach(RESPONSES, TcAttachType::Ingress, iface, mode)
    }

    /// Attaches the empty program to egress of `iface` (benchmark baseline).
    pub fn attach_passthrough(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        self.attach(PASSTHROUGH, TcAttachType::Egress, iface, mode)
    }

    fn attach(
        &mut self,
        name: &'static str,
        direction: TcAttachType,
        iface: &str,
        mode: AttachMode,
    ) -> Result<()> {
        let tcx = match mode {
            // TCX exists from 6.6 on, the same rule aya's `attach` uses.
            AttachMode::Auto => {
                KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
            }
            AttachMode::Tcx => true,
            AttachMode::Netlink => false,
        };
        let mut added_clsact = false;
        // Filters of a daemon killed with SIGKILL outlive it. They go only
        // once the new filter is attached (make-before-break): in enforce
        // mode a moment without a classifier would let IMDSv1 through.
        let mut stale = Vec::new();
        // 0: the kernel picks (in front of the first filter there).
        let mut priority = 0;
        if !tcx {
            let clsact = ClsactFilters::read(iface, direction);
            stale = clsact.ours(name);
            if !stale.is_empty() {
                priority = clsact.free_priority();
            }
            match tc::qdisc_add_clsact(iface) {
                Ok(()) => added_clsact = true,
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                    // A clsact qdisc holding nothing but a killed
                    // predecessor's filters is the one it added: removed
                    // on stop, as the predecessor would have, unless
                    // another of our attachments on `iface` decided already.
                    added_clsact = !stale.is_empty()
                        && clsact.only_ours()
                        && !self
                            .attachments
                            .iter()
                            .any(|a| matches!(a, Attachment::Tc { iface: i, .. } if i == iface));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("adding the clsact qdisc to {iface}"));
                }
            }
        }
        let pin_name = format!("{name}-{iface}");
        let pins = if tcx { self.pins.clone() } else { None };
        let program: &mut SchedClassifier = program(&mut self.ebpf, name)?.try_into()?;
        let pinned_link = pins
            .as_ref()
            .and_then(|p| PinnedLink::from_pin(p.link(&pin_name)).ok());
        // A predecessor's link: swap the program in place, with no moment
        // without a classifier on the interface. A link whose interface was
        // deleted since (re-created or not) is dead (ENOLINK): attached anew.
        let adopted = match pinned_link {
            Some(old) => {
                let link = SchedClassifierLink::try_from(FdLink::from(old))?;
                match program.attach_to_link(link) {
                    Ok(link) => Some(link),
                    Err(e) => {
                        log::warn!(
                            "the pinned {pin_name} link cannot be adopted ({e}): {iface} was \
                             deleted since; attaching anew"
                        );
                        None
                    }
                }
            }
            None => None,
        };
        let link = match adopted {
            Some(link) => link,
            None => {
                let options = if tcx {
                    TcAttachOptions::TcxOrder(LinkOrder::default())
                } else {
                    TcAttachOptions::Netlink(NlOptions {
                        priority,
                        ..NlOptions::default()
                    })
                };
                program
                    .attach_with_options(iface, direction, options)
                    .with_context(|| format!("attaching {name} to {iface} ({direction:?})"))?
            }
        };
        // The new filter classifies (at a priority none of them uses): the
        // stale ones can go now, exactly those and not the new one.
        for filter in &stale {
            match tc_filters::delete(ClsactFilters::ifindex(iface), hook(direction), filter) {
                Ok(()) => log::warn!(
                    "removed a stale {name} filter from {iface} (pref {}, handle {:#x})",
                    filter.priority,
                    filter.handle
                ),
                Err(e) => log::warn!(
                    "removing the stale {name} filter (pref {}, handle {:#x}) from {iface}: {e}",
                    filter.priority,
                    filter.handle
                ),
            }
        }
        self.method = if tcx { "tcx" } else { "netlink" };
        match pins {
            Some(pins) => {
                let fd = FdLink::try_from(program.take_link(link)?)?;
                let pinned = pin(fd, &pins.link(&pin_name))?;
                self.attachments.push(Attachment::Pinned(pin_name, pinned));
            }
            None => self.attachments.push(Attachment::Tc {
                program: name,
                iface: iface.to_owned(),
                link,
                added_clsact,
            }),
        }
        Ok(())
    }

    /// Attaches everything an interface gets: the classifier on egress,
    /// the response reader on ingress, and with `passthrough` the empty
    /// benchmark program (`--baseline-passthrough`). Used at start and when
    /// an interface appears again (see `links`).
    pub fn attach_interface(
        &mut self,
        iface: &str,
        mode: AttachMode,
        passthrough: bool,
    ) -> Result<()> {
        if passthrough {
            self.attach_passthrough(iface, mode)?;
        }
        self.attach_egress(iface, mode)?;
        self.attach_ingress(iface, mode)
    }

    /// The interface was deleted: its TCX links or its clsact qdisc and
    /// filters went with the device. Forgets what was attached to it
    /// (closing the links, unpinning their pins) without asking the gone
    /// device, so the name can be attached to again when it reappears.
    pub fn forget_interface(&mut self, iface: &str) {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attachments)
            .into_iter()
            .partition(|a| match a {
                Attachment::Tc { iface: name, .. } => name == iface,
                Attachment::Pinned(name, _) => [CLASSIFIER, PASSTHROUGH, RESPONSES]
                    .iter()
                    .any(|p| name.strip_prefix(p) == Some(&format!("-{iface}"))),
                _ => false,
            });
        self.attachments = kept;
        for attachment in gone {
            match attachment {
                Attachment::Tc {
                    program: name,
                    link,
                    ..
                } => {
                    // Dropping the owned link closes a TCX link's fd; a
                    // clsact filter's detach fails on the gone device, and
                    // the drop ignores that.
                    if let Ok(tc) = program(&mut self.ebpf, name)
                        .and_then(|p| <&mut SchedClassifier>::try_from(p).map_err(Into::into))
                    {
                        drop(tc.take_link(link));
                    }
                }
                Attachment::Pinned(name, link) => {
                    if let Err(e) = link.unpin() {
                        log::warn!("unpinning {name} of the deleted {iface}: {e}");
                    }
                }
                _ => {}
            }
        }
    }

    /// Interfaces the classifier is attached to.
    pub fn interfaces(&self) -> Vec<String> {
        self.attachments
            .iter()
            .filter_map(|a| match a {
                Attachment::Pinned(name, _) => name
                    .strip_prefix(CLASSIFIER)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .map(str::to_owned),
                Attachment::Tc { program, iface, .. } if *program == CLASSIFIER => {
                    Some(iface.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// Removes flow-table entries idle for `max_idle`: connections that
    /// vanished without a FIN or RST passing the classifier (a container's
    /// network namespace deleted mid-connection). The table is a plain hash
    /// (never evicts), so this is what keeps it from filling up. Returns how
    /// many went.
    pub fn sweep_flows(&mut self, max_idle: std::time::Duration) -> Result<usize> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .context("reading CLOCK_BOOTTIME")?;
        let now_ns = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
        let Some(oldest) = now_ns.checked_sub(max_idle.as_nanos() as u64) else {
            return Ok(0);
        };
        let map = self.ebpf.map_mut("FLOWS").context("FLOWS map missing")?;
        let mut flows: aya::maps::HashMap<_, FlowKey, FlowState> =
            aya::maps::HashMap::try_from(map)?;
        let idle: Vec<FlowKey> = flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, flow)| flow.last_seen_ns < oldest)
            .map(|(key, _)| key)
            .collect();
        let mut removed = 0;
        for key in &idle {
            // Gone meanwhile (its FIN came): fine.
            if flows.remove(key).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// What the classifier does per request class (`config::action`).
    pub fn set_actions(&mut self, actions: [u8; 8]) -> Result<()> {
        let map = self
            .ebpf
            .map_mut("ACTIONS")
            .context("ACTIONS map missing")?;
        let mut array: aya::maps::Array<_, u8> = aya::maps::Array::try_from(map)?;
        for (class, value) in actions.iter().enumerate() {
            array.set(class as u32, value, 0)?;
        }
        Ok(())
    }

    /// Loads a compiled policy into the maps. New entries go in before stale
    /// ones leave, so no exception lapses during a reload; the class actions
    /// change last.
    pub fn apply_policy(&mut self, policy: &Compiled) -> Result<()> {
        replace_hash(&mut self.ebpf, "EXEMPT_CGROUPS", &policy.cgroups)?;
        replace_hash(&mut self.ebpf, "EXEMPT_PATHS", &policy.paths)?;
        replace_hash(&mut self.ebpf, "EXEMPT_LEAVES", &policy.leaves)?;
        replace_hash(&mut self.ebpf, "EXEMPT_CONTAINERS", &policy.containers)?;
        replace_hash(&mut self.ebpf, "EXEMPT_EXECS", &policy.execs)?;
        {
            let map = self
                .ebpf
                .map_mut("PROC_EXEMPT")
                .context("PROC_EXEMPT map missing")?;
            let mut procs: aya::maps::HashMap<_, u32, u64> = aya::maps::HashMap::try_from(map)?;
            // Processes not named now get 0 (forks of them inherit it).
            let stale: Vec<u32> = procs.keys().filter_map(|k| k.ok()).collect();
            for pid in stale {
                if !policy.processes.contains_key(&pid) {
                    let _ = procs.insert(pid, 0, 0);
                }
            }
            for (pid, bits) in &policy.processes {
                procs.insert(pid, bits, 0)?;
            }
        }
        {
            let map = self
                .ebpf
                .map_mut("EXCEPTION_NEEDS")
                .context("EXCEPTION_NEEDS map missing")?;
            let mut array: aya::maps::Array<_, u64> = aya::maps::Array::try_from(map)?;
            for (i, value) in policy.needs.iter().enumerate() {
                array.set(i as u32, value, 0)?;
            }
        }
        self.set_actions(policy.actions)
    }

    /// A resolved container's cgroup satisfies the container-kind matchers
    /// of the exceptions in `bits` (image, Kubernetes, ECS: see
    /// `policy::compile::runtime_bits`): ORed into its `EXEMPT_CGROUPS`
    /// entry, beside what the policy load or the mkdir hook wrote.
    pub fn exempt_container_cgroup(&mut self, cgroup: u64, bits: u64) -> Result<()> {
        let map = self
            .ebpf
            .map_mut("EXEMPT_CGROUPS")
            .context("EXEMPT_CGROUPS map missing")?;
        let mut hash: aya::maps::HashMap<_, u64, ExemptBits> = aya::maps::HashMap::try_from(map)?;
        let mut entry = hash.get(&cgroup, 0).unwrap_or_default();
        if entry.container_id & bits == bits {
            return Ok(());
        }
        entry.container_id |= bits;
        hash.insert(cgroup, entry, 0)
            .context("writing EXEMPT_CGROUPS")
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn take_stats(&mut self) -> Result<PerCpuArray<MapData, u64>> {
        let map = self.ebpf.take_map("STATS").context("STATS map missing")?;
        Ok(PerCpuArray::try_from(map)?)
    }

    /// Detaches everything, newest first (so a clsact qdisc we added goes
    /// after its filters); errors are reported, not fatal.
    pub fn detach_all(&mut self) {
        while let Some(attachment) = self.attachments.pop() {
            if let Err(e) = self.detach(attachment) {
                log::warn!("{e:#}");
            }
        }
        if let Some(pins) = &self.pins
            && !self.persist
            && let Err(e) = pins.remove()
        {
            log::warn!("removing {}: {e:#}", pins.dir.display());
        }
    }

    fn detach(&mut self, attachment: Attachment) -> Result<()> {
        match attachment {
            Attachment::Tc {
                program: name,
                iface,
                link,
                added_clsact,
            } => {
                let tc: &mut SchedClassifier = program(&mut self.ebpf, name)?.try_into()?;
                if self.persist && self.pins.is_some() {
                    // --persist where filters cannot be pinned (clsact, before
                    // 6.6): the filter stays, holding the program and its
                    // pinned maps; `imds-monitor detach` removes it by name.
                    let owned = tc.take_link(link)?;
                    std::mem::forget(owned);
                    return Ok(());
                }
                let detached = tc
                    .detach(link)
                    .with_context(|| format!("detaching {name} from {iface}"));
                if added_clsact {
                    remove_clsact(&iface);
                }
                detached
            }
            Attachment::Connect(name, link) => {
                let hook: &mut CgroupSockAddr = program(&mut self.ebpf, name)?.try_into()?;
                hook.detach(link)
                    .with_context(|| format!("detaching {name}"))
            }
            Attachment::SockOps(link) => {
                let sockops: &mut SockOps = program(&mut self.ebpf, SOCKOPS)?.try_into()?;
                sockops
                    .detach(link)
                    .with_context(|| format!("detaching {SOCKOPS}"))
            }
            // --persist keeps it attached through its pin; otherwise the
            // pin goes and, with it, the last reference to the link.
            Attachment::Pinned(name, link) => {
                if !self.persist {
                    link.unpin().with_context(|| format!("unpinning {name}"))?;
                }
                Ok(())
            }
            Attachment::TracePoint(name, link) => {
                let tp: &mut TracePoint = program(&mut self.ebpf, name)?.try_into()?;
                tp.detach(link).with_context(|| format!("detaching {name}"))
            }
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))
}

/// Held while checking for and mounting a file system, so daemons starting
/// together mount it once (stacked mounts would hide what the first holds).
fn mount_lock() -> Result<nix::fcntl::Flock<fs::File>> {
    const LOCK: &str = "/run/imds-monitor.mount.lock";
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .with_context(|| format!("opening {LOCK}"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("locking {LOCK}: {e}"))
}

/// The tracefs mount, mounted at /sys/kernel/tracing if no tracefs is.
fn tracefs() -> Result<std::path::PathBuf> {
    let mounted = || {
        ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .into_iter()
            .find(|dir| Path::new(dir).join("events").is_dir())
    };
    // Mounted already (a node's, or the DaemonSet's hostPath): no lock is
    // needed, and none can be made on a read-only root without /run.
    if let Some(dir) = mounted() {
        return Ok(dir.into());
    }
    let _guard = mount_lock()?;
    if let Some(dir) = mounted() {
        return Ok(dir.into());
    }
    let dir = Path::new("/sys/kernel/tracing");
    nix::mount::mount(
        Some("tracefs"),
        dir,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "tracefs is not mounted and mounting it at {} failed",
            dir.display()
        )
    })?;
    log::info!("mounted tracefs at {}", dir.display());
    Ok(dir.into())
}

/// sched_process_fork's `child_pid` offset: 44 on older kernels, 20 since
/// its comm fields became `__data_loc`.
fn fork_child_pid_offset(tracefs: &Path) -> Result<u32> {
    let path = tracefs.join("events/sched/sched_process_fork/format");
    let format =
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    match field_offset(&format, "child_pid") {
        Some(offset) if offset < 256 => Ok(offset),
        _ => bail!("no child_pid field in {}", path.display()),
    }
}

/// Offsets of `id` and `path` in cgroup:cgroup_mkdir's record.
fn mkdir_offsets(tracefs: &Path) -> Result<(u32, u32)> {
    let path = tracefs.join("events/cgroup/cgroup_mkdir/format");
    let format =
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    match (field_offset(&format, "id"), field_offset(&format, "path")) {
        (Some(id), Some(p)) if id < 256 && p < 256 => Ok((id, p)),
        _ => bail!("no id/path fields in {}", path.display()),
    }
}

/// Makes a kernel hash map hold exactly `entries`: inserts first, then removes the rest.
fn replace_hash<K, V>(
    ebpf: &mut Ebpf,
    name: &str,
    entries: &std::collections::HashMap<K, V>,
) -> Result<()>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("{name} map missing"))?;
    let mut hash: aya::maps::HashMap<_, K, V> = aya::maps::HashMap::try_from(map)?;
    for (k, v) in entries {
        hash.insert(k, v, 0)
            .with_context(|| format!("writing {name}"))?;
    }
    let stale: Vec<K> = hash
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !entries.contains_key(k))
        .collect();
    for k in stale {
        let _ = hash.remove(&k);
    }
    Ok(())
}

/// Offset of `field` in a tracepoint format file.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        let name = decl.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        line.split(';')
            .find_map(|part| part.trim().strip_prefix("offset:"))
            .and_then(|v| v.parse().ok())
    })
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// aya has no qdisc delete: `tc qdisc del dev IFACE clsact` over netlink.
fn remove_clsact(iface: &str) {
    if let Err(e) = tc_filters::delete_clsact(ClsactFilters::ifindex(iface)) {
        log::warn!("removing the clsact qdisc from {iface}: {e}");
    }
}

fn hook(direction: TcAttachType) -> tc_filters::Hook {
    match direction {
        TcAttachType::Ingress => tc_filters::Hook::Ingress,
        _ => tc_filters::Hook::Egress,
    }
}

/// The filters on an interface's clsact qdisc, both hooks, as `attach`
/// found them before attaching (nothing when they cannot be read: then
/// the attach itself reports the interface's problem).
struct ClsactFilters {
    this_hook: Vec<tc_filters::Filter>,
    other_hook: Vec<tc_filters::Filter>,
}

impl ClsactFilters {
    fn ifindex(iface: &str) -> u32 {
        crate::interfaces::index_of(iface).unwrap_or(0)
    }

    fn read(iface: &str, direction: TcAttachType) -> Self {
        let index = Self::ifindex(iface);
        let read = |hook| {
            tc_filters::list(index, hook).unwrap_or_else(|e| {
                log::debug!("listing the clsact filters of {iface} ({hook:?}): {e}");
                Vec::new()
            })
        };
        let this = hook(direction);
        let other = match this {
            tc_filters::Hook::Ingress => tc_filters::Hook::Egress,
            tc_filters::Hook::Egress => tc_filters::Hook::Ingress,
        };
        Self {
            this_hook: read(this),
            other_hook: read(other),
        }
    }

    /// Filters on this hook running our program `name`.
    fn ours(&self, name: &str) -> Vec<tc_filters::Filter> {
        self.this_hook
            .iter()
            .filter(|f| f.runs(name))
            .cloned()
            .collect()
    }

    /// Whether every filter on the qdisc (chain heads aside) runs one of
    /// our programs.
    fn only_ours(&self) -> bool {
        self.this_hook
            .iter()
            .chain(&self.other_hook)
            .filter(|f| f.handle != 0)
            .all(|f| {
                [CLASSIFIER, RESPONSES, PASSTHROUGH]
                    .iter()
                    .any(|p| f.runs(p))
            })
    }

    /// A priority no filter on this hook uses.
    fn free_priority(&self) -> u16 {
        tc_filters::free_priority(&self.this_hook)
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct; failure only matters on old kernels.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK");
    }
}

/// Removes the classifier's and the response reader's clsact filters from
/// every interface of this network namespace (what `--persist` leaves on
/// kernels before 6.6, where filters cannot be pinned); returns what went.
pub fn remove_netlink_filters() -> Vec<String> {
    let mut removed = Vec::new();
    // The interfaces of this network namespace (/sys/class/net shows the
    // namespace sysfs was mounted in, which may be another).
    let Ok(interfaces) = nix::net::if_::if_nameindex() else {
        return removed;
    };
    for interface in interfaces.iter() {
        let iface = interface.name().to_string_lossy().into_owned();
        for (name, direction) in [
            (CLASSIFIER, TcAttachType::Egress),
            (RESPONSES, TcAttachType::Ingress),
        ] {
            if tc::qdisc_detach_program(&iface, direction, name).is_ok() {
                removed.push(format!("filter {name} on {iface}"));
            }
        }
    }
    removed
}

/// Turns the errors users meet into what to do next. A verifier rejection
/// becomes one line (its log goes to a file, see [`verifier::Rejection`]).
fn explain_load_error(err: aya::EbpfError) -> anyhow::Error {
    explain(None, err)
}

/// [`explain_load_error`] for a program whose name the caller knows, so a
/// rejection says which program it was:
/// `tc.load().map_err(|e| explain_program_load_error(name, e))?`.
pub fn explain_program_load_error(
    program: &str,
    err: aya::programs::ProgramError,
) -> anyhow::Error {
    explain(Some(program), err.into())
}

fn explain(program: Option<&str>, err: aya::EbpfError) -> anyhow::Error {
    let min = crate::check::MIN_KERNEL;
    let old = KernelVersion::current()
        .ok()
        .filter(|v| *v < KernelVersion::new(min.major as u8, min.minor as u8, 0));
    let too_old = old.map(|v| {
        format!(
            "this kernel is {v}: imds-monitor needs Linux {}.{} or newer with BTF \
             (Amazon Linux 2023, Amazon Linux 2's 5.10, Ubuntu 22.04 or 24.04, Bottlerocket)",
            min.major, min.minor
        )
    });
    let rejection = match &err {
        aya::EbpfError::ProgramError(e) => verifier::rejection(program, OBJECT, e),
        _ => None,
    };
    if let Some(rejection) = rejection {
        let hint = too_old.unwrap_or_else(|| {
            "this kernel is supported, so this build of imds-monitor has a program the \
             verifier refuses here: report it with the log file; \
             `imds-monitor check --verifier` shows what each program costs the verifier"
                .to_owned()
        });
        return anyhow::Error::new(verifier::LoadFailure { rejection, hint });
    }
    let text = format!("{err:#}");
    let hint = if text.contains("Operation not permitted") || text.contains("EPERM") {
        "run as root (needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)".to_owned()
    } else if text.contains("btf") || text.contains("BTF") {
        "the kernel needs BTF (CONFIG_DEBUG_INFO_BTF=y, /sys/kernel/btf/vmlinux)".to_owned()
    } else if let Some(too_old) = too_old {
        too_old
    } else {
        "see the error; `RUST_LOG=debug` shows more".to_owned()
    };
    let what = match program {
        Some(name) => format!("loading the eBPF program {name} failed"),
        None => "loading the eBPF programs failed".to_owned(),
    };
    anyhow!("{what}: {text}\nhint: {hint}")
}

/// What the verifier says each loaded program costs it: a second load of
/// every program of the embedded object against these maps, with
/// `BPF_LOG_STATS` (see [`verifier::measure`]).
pub fn verifier_stats(kernel: &Kernel) -> Result<Vec<verifier::ProgramStats>> {
    verifier::measure(&kernel.ebpf, OBJECT)
}

#[cfg(test)]
mod tests {
    use super::field_offset;

    #[test]
    fn fork_format_of_old_and_new_kernels() {
        let new = "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;";
        let old = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:1;
\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:1;
\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;";
        assert_eq!(field_offset(new, "child_pid"), Some(20));
        assert_eq!(field_offset(old, "child_pid"), Some(44));
        assert_eq!(field_offset(old, "child_comm"), Some(28));
        assert_eq!(field_offset(old, "pid"), None);
    }
}
