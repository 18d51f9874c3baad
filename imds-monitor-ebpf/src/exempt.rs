//! Policy exceptions, decided in the kernel so a process's first request is
//! already judged right (no wait for the daemon to learn of a new container).
//!
//! - Existing cgroups: the daemon writes `EXEMPT_CGROUPS` when it loads the
//!   policy. New cgroups: `imds_cgroup_mkdir` matches the new directory's
//!   path, unit name and container id against the policy's keys before any
//!   process can be moved in.
//! - Executables: `PROC_EXEMPT` by process, set at exec from
//!   `EXEMPT_EXECS` (and by the daemon for running processes), inherited on fork.
//! - At connect() (`owner_exemption`), the bits of the caller's cgroup and
//!   its ancestors and of the process give the first matching exception.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_kernel_str_bytes, generated::bpf_get_current_ancestor_cgroup_id},
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use imds_monitor_common::config::{
    EXEMPT_CONTAINER_ID_CAP, EXEMPT_LEAF_CAP, EXEMPT_PATH_CAP, ExemptBits, needs,
};

/// Deepest cgroup level looked at for ancestors.
const MAX_LEVEL: i32 = 16;

#[map]
pub static EXEMPT_CGROUPS: HashMap<u64, ExemptBits> = HashMap::with_max_entries(65536, 0);
/// Keys for new cgroups: the whole path (cgroup_prefix rules), the
/// directory name (systemd_unit rules), the container id's first 12 hex digits.
#[map]
static EXEMPT_PATHS: HashMap<[u8; EXEMPT_PATH_CAP], ExemptBits> = HashMap::with_max_entries(256, 0);
#[map]
static EXEMPT_LEAVES: HashMap<[u8; EXEMPT_LEAF_CAP], ExemptBits> =
    HashMap::with_max_entries(256, 0);
#[map]
static EXEMPT_CONTAINERS: HashMap<[u8; EXEMPT_CONTAINER_ID_CAP], ExemptBits> =
    HashMap::with_max_entries(256, 0);
/// Executable path as given to execve -> bits of the exceptions naming it.
#[map]
pub static EXEMPT_EXECS: HashMap<[u8; EXEMPT_PATH_CAP], u64> = HashMap::with_max_entries(256, 0);
/// Process -> bits of the executable exceptions it matches.
#[map]
pub static PROC_EXEMPT: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65536, 0);
/// Per kind, the exceptions that use it (`config::needs`).
#[map]
static EXCEPTION_NEEDS: Array<u64> = Array::with_max_entries(needs::COUNT, 0);

/// Offsets in cgroup:cgroup_mkdir's record, from its format file.
#[unsafe(no_mangle)]
static MKDIR_ID_OFFSET: u32 = 16;
#[unsafe(no_mangle)]
static MKDIR_PATH_OFFSET: u32 = 24;

struct Keys {
    path: [u8; EXEMPT_PATH_CAP],
    leaf: [u8; EXEMPT_LEAF_CAP],
    container: [u8; EXEMPT_CONTAINER_ID_CAP],
    /// Where the directory name starts and the path ends ([`find_leaf`]).
    leaf_start: u64,
    path_len: u64,
}

#[map]
static KEYS: PerCpuArray<Keys> = PerCpuArray::with_max_entries(1, 0);

/// Finds where the directory name of the NUL-terminated path starts and
/// where the path ends, and parks both in `keys` (`leaf_start`,
/// `path_len`) instead of registers: the verifier then sees one state per
/// loop step whatever came before, not one per slash position.
#[inline(always)]
fn find_leaf(keys: &mut Keys) {
    unsafe {
        write_volatile(&mut keys.leaf_start, 0);
        write_volatile(&mut keys.path_len, EXEMPT_PATH_CAP as u64);
    }
    let mut i = 0;
    while i < EXEMPT_PATH_CAP {
        match keys.path[i] {
            0 => {
                unsafe { write_volatile(&mut keys.path_len, i as u64) };
                break;
            }
            b'/' => unsafe { write_volatile(&mut keys.leaf_start, i as u64 + 1) },
            _ => {}
        }
        i += 1;
    }
}

#[inline(always)]
fn or_bits(total: &mut ExemptBits, bits: Option<&ExemptBits>) {
    if let Some(bits) = bits {
        total.cgroup_prefix |= bits.cgroup_prefix;
        total.container_id |= bits.container_id;
        total.systemd_unit |= bits.systemd_unit;
    }
}

/// A new cgroup: if the policy names it, record its bits by id.
#[tracepoint(category = "cgroup", name = "cgroup_mkdir")]
pub fn imds_cgroup_mkdir(ctx: TracePointContext) -> u32 {
    let _ = on_mkdir(&ctx);
    0
}

#[inline(always)]
fn on_mkdir(ctx: &TracePointContext) -> Option<()> {
    let id_offset = unsafe { read_volatile(&MKDIR_ID_OFFSET) } as usize;
    let path_offset = unsafe { read_volatile(&MKDIR_PATH_OFFSET) } as usize;
    let id: u64 = unsafe { ctx.read_at(id_offset & 0xff) }.ok()?;
    // __data_loc: offset of the string in the record (low 16 bits).
    let loc: u32 = unsafe { ctx.read_at(path_offset & 0xff) }.ok()?;
    let keys = KEYS.get_ptr_mut(0)?;
    let keys = unsafe { &mut *keys };
    keys.path = [0; EXEMPT_PATH_CAP];
    keys.leaf = [0; EXEMPT_LEAF_CAP];
    keys.container = [0; EXEMPT_CONTAINER_ID_CAP];
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    unsafe { bpf_probe_read_kernel_str_bytes(src, &mut keys.path) }.ok()?;
    let mut bits = ExemptBits::default();
    or_bits(&mut bits, unsafe { EXEMPT_PATHS.get(&keys.path) });
    // The directory name, for unit and container rules.
    find_leaf(keys);
    let from = unsafe { read_volatile(&keys.leaf_start) } as usize & (EXEMPT_PATH_CAP - 1);
    let len = unsafe { read_volatile(&keys.path_len) } as usize & (2 * EXEMPT_PATH_CAP - 1);
    // No early exit: a branch per byte would make every later step a
    // state of its own. Bytes from past the path's buffer count as 0.
    let mut i = 0;
    while i < EXEMPT_LEAF_CAP {
        let src = from + i;
        // 1 while src < EXEMPT_PATH_CAP: the borrow of the subtraction.
        let inside = ((src as u64).wrapping_sub(EXEMPT_PATH_CAP as u64) >> 63) as u8;
        keys.leaf[i] = keys.path[src & (EXEMPT_PATH_CAP - 1)] * inside;
        i += 1;
    }
    or_bits(&mut bits, unsafe { EXEMPT_LEAVES.get(&keys.leaf) });
    // "<runtime>-<64 hex>.scope" (systemd driver) or "<64 hex>" (cgroupfs).
    let leaf_len = len.saturating_sub(from) as u64;
    let id_start = if leaf_len == 64 {
        Some(0u64)
    } else if leaf_len > 70 && keys.leaf[(leaf_len as usize - 6) & (EXEMPT_LEAF_CAP - 1)] == b'.' {
        Some(leaf_len - 6 - 64)
    } else {
        None
    };
    if let Some(start) = id_start {
        let mut i = 0;
        while i < EXEMPT_CONTAINER_ID_CAP {
            keys.container[i] = keys.leaf[(start as usize + i) & (EXEMPT_LEAF_CAP - 1)];
            i += 1;
        }
        or_bits(&mut bits, unsafe { EXEMPT_CONTAINERS.get(&keys.container) });
    }
    if bits != ExemptBits::default() {
        let _ = EXEMPT_CGROUPS.insert(&id, &bits, 0);
    }
    Some(())
}

#[inline(always)]
fn need(index: u32) -> u64 {
    EXCEPTION_NEEDS.get(index).copied().unwrap_or(0)
}

/// The exception (index + 1) covering the calling process, 0 for none.
#[inline(always)]
pub fn owner_exemption(tgid: u32) -> u32 {
    let defined = need(needs::DEFINED);
    if defined == 0 {
        return 0;
    }
    let mut bits = ExemptBits::default();
    let mut level = 0;
    while level < MAX_LEVEL {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        or_bits(&mut bits, unsafe { EXEMPT_CGROUPS.get(&id) });
        level += 1;
    }
    let exe = unsafe { PROC_EXEMPT.get(&tgid) }.copied().unwrap_or(0);
    let matched = (bits.cgroup_prefix | !need(needs::CGROUP_PREFIX))
        & (bits.container_id | !need(needs::CONTAINER_ID))
        & (bits.systemd_unit | !need(needs::SYSTEMD_UNIT))
        & (exe | !need(needs::EXECUTABLE))
        & defined;
    if matched == 0 {
        0
    } else {
        matched.trailing_zeros() + 1
    }
}
