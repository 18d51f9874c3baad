//! Loads the kernel programs and attaches the classifier to interfaces;
//! detaches everything it attached when dropped.

use std::process::Command;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
    util::KernelVersion,
};
use imds_monitor_common::config::Endpoints;

const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imds-monitor-ebpf"));
const CLASSIFIER: &str = "imds_classify";
/// An empty TC program, attached only for benchmarks (`--baseline-passthrough`).
const PASSTHROUGH: &str = "imds_passthrough";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX links on kernels >= 6.6, netlink clsact filters below.
    Auto,
    Tcx,
    Netlink,
}

/// One attachment, kept to undo it.
#[derive(Debug)]
struct Attachment {
    program: &'static str,
    iface: String,
    link: SchedClassifierLinkId,
    /// We added the clsact qdisc, so we remove it again.
    added_clsact: bool,
}

pub struct Kernel {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    pub method: &'static str,
}

impl Kernel {
    pub fn load(endpoints: &Endpoints) -> Result<Self> {
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .override_global("ENDPOINTS", endpoints, true)
            .load(OBJECT)
            .map_err(explain_load_error)?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(CLASSIFIER)
            .context("classifier missing from the object")?
            .try_into()?;
        program.load().map_err(|e| explain_load_error(e.into()))?;
        let passthrough: &mut SchedClassifier = ebpf
            .program_mut(PASSTHROUGH)
            .context("pass-through program missing from the object")?
            .try_into()?;
        passthrough.load().map_err(|e| explain_load_error(e.into()))?;
        Ok(Self {
            ebpf,
            attachments: Vec::new(),
            method: "",
        })
    }

    /// Attaches the classifier to egress of `iface`: every request leaving the
    /// host, from host processes and forwarded from containers, passes there.
    pub fn attach_egress(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        self.attach(CLASSIFIER, iface, mode)
    }

    /// Attaches the empty program to egress of `iface` (benchmark baseline).
    pub fn attach_passthrough(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        self.attach(PASSTHROUGH, iface, mode)
    }

    fn attach(&mut self, name: &'static str, iface: &str, mode: AttachMode) -> Result<()> {
        let tcx = match mode {
            // TCX exists from 6.6 on, the same rule aya's `attach` uses.
            AttachMode::Auto => {
                KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
            }
            AttachMode::Tcx => true,
            AttachMode::Netlink => false,
        };
        let mut added_clsact = false;
        if !tcx {
            // Filters of a daemon killed with SIGKILL outlive it: remove them first.
            if tc::qdisc_detach_program(iface, TcAttachType::Egress, name).is_ok() {
                log::warn!("removed a stale {name} filter from {iface}");
            }
            match tc::qdisc_add_clsact(iface) {
                Ok(()) => added_clsact = true,
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("adding the clsact qdisc to {iface}"));
                }
            }
        }
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing from the object"))?
            .try_into()?;
        let options = if tcx {
            TcAttachOptions::TcxOrder(LinkOrder::default())
        } else {
            TcAttachOptions::Netlink(NlOptions::default())
        };
        let link = program
            .attach_with_options(iface, TcAttachType::Egress, options)
            .with_context(|| format!("attaching to egress of {iface}"))?;
        self.method = if tcx { "tcx" } else { "netlink" };
        self.attachments.push(Attachment {
            program: name,
            iface: iface.to_owned(),
            link,
            added_clsact,
        });
        Ok(())
    }

    /// Interfaces the classifier is attached to.
    pub fn interfaces(&self) -> Vec<String> {
        self.attachments
            .iter()
            .filter(|a| a.program == CLASSIFIER)
            .map(|a| a.iface.clone())
            .collect()
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("EVENTS").context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn take_stats(&mut self) -> Result<PerCpuArray<MapData, u64>> {
        let map = self.ebpf.take_map("STATS").context("STATS map missing")?;
        Ok(PerCpuArray::try_from(map)?)
    }

    /// Detaches from every interface; errors are reported, not fatal.
    pub fn detach_all(&mut self) {
        // Newest first, so a clsact qdisc we added goes last.
        while let Some(attachment) = self.attachments.pop() {
            let program: Option<&mut SchedClassifier> = self
                .ebpf
                .program_mut(attachment.program)
                .and_then(|p| p.try_into().ok());
            let Some(program) = program else {
                continue;
            };
            if let Err(e) = program.detach(attachment.link) {
                log::warn!("detaching from {}: {e}", attachment.iface);
            }
            if attachment.added_clsact {
                remove_clsact(&attachment.iface);
            }
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// aya has no qdisc delete; iproute2 is on every host that has TC at all.
fn remove_clsact(iface: &str) {
    match Command::new("tc")
        .args(["qdisc", "del", "dev", iface, "clsact"])
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => log::warn!("`tc qdisc del dev {iface} clsact` exited with {s}"),
        Err(e) => log::warn!("removing the clsact qdisc from {iface}: {e}"),
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

/// Turns the errors users meet into what to do next.
fn explain_load_error(err: aya::EbpfError) -> anyhow::Error {
    let text = format!("{err:#}");
    let hint = if text.contains("Operation not permitted") || text.contains("EPERM") {
        "run as root (needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
    } else if text.contains("btf") || text.contains("BTF") {
        "the kernel needs BTF (CONFIG_DEBUG_INFO_BTF=y, /sys/kernel/btf/vmlinux)"
    } else {
        "the kernel must be 5.17 or newer (bpf_loop, ring buffers) with BTF"
    };
    anyhow!("loading the eBPF programs failed: {text}\nhint: {hint}")
}
