//! The daemon's eBPF maps, seen from outside: found through the daemon's
//! own file descriptors (`/proc/PID/fdinfo`), so another daemon running at
//! the same time is never mistaken for it. Entry counts of its hash maps
//! (flow table, connection owners, ...), and how full its ring buffer gets
//! (the consumer and producer positions, mapped read-only: the bench never
//! consumes a record).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aya::maps::{MapFd, MapInfo, MapType};

/// The daemon's maps the soak watches, by kernel name (15 bytes at most).
pub const WATCHED: [&str; 8] = [
    "FLOWS",
    "CONNECTS",
    "BY_SEQUENCE",
    "SEQ_KEYS",
    "PENDING_EXECS",
    "PROC_EXEMPT",
    "EXEMPT_CGROUPS",
    "EXEMPT_EXECS",
];
/// The ring buffer events reach the daemon through.
pub const RING: &str = "EVENTS";

/// One map of the daemon.
pub struct DaemonMap {
    pub name: String,
    pub max_entries: u32,
    /// An LRU hash map: the kernel evicts its oldest entries when it is
    /// full, so it is bounded by its size whatever removes entries.
    pub lru: bool,
    key_size: u32,
    fd: MapFd,
}

impl std::fmt::Debug for DaemonMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonMap")
            .field("name", &self.name)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

/// Ids of the maps process `pid` holds a file descriptor of.
fn map_ids(pid: u32) -> Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let Ok(entry) = entry else { continue };
        // An fd closed meanwhile: skip it.
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The maps of the daemon `pid`, by name.
pub fn daemon_maps(pid: u32) -> Result<BTreeMap<String, DaemonMap>> {
    let mut maps = BTreeMap::new();
    for id in map_ids(pid)? {
        let Ok(info) = MapInfo::from_id(id) else {
            continue;
        };
        let Some(name) = info.name_as_str().map(str::to_owned) else {
            continue;
        };
        let fd = info
            .fd()
            .with_context(|| format!("cannot open map {name} (id {id})"))?;
        maps.insert(
            name.clone(),
            DaemonMap {
                name,
                max_entries: info.max_entries(),
                lru: matches!(
                    info.map_type(),
                    Ok(MapType::LruHash | MapType::LruPerCpuHash)
                ),
                key_size: info.key_size(),
                fd,
            },
        );
    }
    if maps.is_empty() {
        bail!("process {pid} holds no eBPF map: is it the daemon?");
    }
    Ok(maps)
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// `union bpf_attr` as BPF_MAP_*_ELEM and GET_NEXT_KEY use it.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

impl DaemonMap {
    /// Entries now, by walking the keys (GET_NEXT_KEY); a walk that a
    /// concurrent deletion restarts is cut off at twice the map's size.
    pub fn entries(&self) -> Result<u64> {
        let size = self.key_size as usize;
        let mut key = vec![0u8; size.max(1)];
        let mut next = vec![0u8; size.max(1)];
        let mut count = 0u64;
        let mut first = true;
        let limit = u64::from(self.max_entries) * 2 + 16;
        while count < limit {
            let mut attr = ElemAttr {
                map_fd: self.fd.as_fd().as_raw_fd() as u32,
                key: if first { 0 } else { key.as_ptr() as u64 },
                next_key: next.as_mut_ptr() as u64,
                ..ElemAttr::default()
            };
            // SAFETY: bpf(2) with an attr that points at buffers of the
            // map's key size, alive for the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_GET_NEXT_KEY,
                    &mut attr as *mut ElemAttr,
                    size_of::<ElemAttr>(),
                )
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOENT) {
                    return Ok(count);
                }
                return Err(e).with_context(|| format!("walking the keys of {}", self.name));
            }
            count += 1;
            first = false;
            std::mem::swap(&mut key, &mut next);
        }
        Ok(count)
    }
}

/// Samples how many bytes wait in the daemon's ring buffer, every
/// `period`, on a thread of its own; keeps the largest.
pub struct RingSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// The first two pages of a ring buffer map (consumer and producer
/// positions), mapped read-only.
struct Positions {
    base: *mut libc::c_void,
    len: usize,
    page: usize,
}

// SAFETY: the mapping is read-only and only read with volatile loads.
unsafe impl Send for Positions {}

impl Positions {
    fn map(fd: &MapFd) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = 2 * page;
        // SAFETY: a new shared read-only mapping of the map's fd; the kernel
        // allows read-only mappings of both position pages.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("cannot map the ring buffer's positions");
        }
        Ok(Self { base, len, page })
    }

    /// Bytes produced and not yet consumed.
    fn pending(&self) -> u64 {
        // SAFETY: both offsets lie in the mapping, 8-byte aligned.
        unsafe {
            let consumer = std::ptr::read_volatile(self.base.cast::<u64>());
            let producer =
                std::ptr::read_volatile(self.base.cast::<u8>().add(self.page).cast::<u64>());
            producer.saturating_sub(consumer)
        }
    }
}

impl Drop for Positions {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what map() mapped.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

impl RingSampler {
    pub fn start(maps: &BTreeMap<String, DaemonMap>, period: Duration) -> Result<Self> {
        let ring = maps
            .get(RING)
            .with_context(|| format!("the daemon has no {RING} ring buffer"))?;
        let positions = Positions::map(&ring.fd)?;
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak, samples) = (stop.clone(), peak.clone(), samples.clone());
            std::thread::Builder::new()
                .name("bench-ring".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        peak.fetch_max(positions.pending(), Ordering::Relaxed);
                        samples.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(period);
                    }
                })
                .context("cannot spawn the ring sampler")?
        };
        Ok(Self {
            stop,
            peak,
            samples,
            thread: Some(thread),
        })
    }

    /// Stops sampling: (peak bytes waiting, samples taken).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.peak.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

impl Drop for RingSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
