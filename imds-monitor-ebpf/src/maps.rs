//! Maps shared by the classifier's modules and read by the daemon.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use imds_monitor_common::{
    event::stat,
    flow::{FlowKey, FlowState},
};

use crate::scan::Origin;

/// Payload bytes of one packet the classifier inspects.
pub const SCAN_CAP: usize = 2048;

/// Connections to IMDS endpoints being parsed. A plain hash, not LRU: an
/// entry is never pushed out silently (a connection whose state vanished
/// mid-head could then finish its head unjudged). When it is full a new
/// connection is not followed, and so, in enforce mode, reset; the daemon
/// removes entries idle for a minute (connections that vanished unseen).
/// 16,384 open at once is far above what IMDS's own packet rate limit lets
/// a host keep busy (`--flow-table-entries` changes it).
#[map]
pub static FLOWS: HashMap<FlowKey, FlowState> = HashMap::with_max_entries(16384, 0);

/// Classified requests for the daemon.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Action per request class (`config::action`), set by the daemon: all
/// PASS except in enforce mode.
#[map]
pub static ACTIONS: Array<u8> = Array::with_max_entries(8, 0);

/// Counters the daemon reports (`event::stat`).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// A packet's payload, and a word after it that reads of its last bytes
/// take their junk from (eBPF reads aligned words only).
#[repr(C)]
pub struct Payload {
    pub bytes: [u8; SCAN_CAP],
    pub tail: u64,
}

/// What the scan step works on: the payload being scanned, where the scan
/// is in it, and a working copy of the connection's state.
#[repr(C)]
pub struct ScanBuffer {
    pub payload: Payload,
    /// Bytes consumed beyond one per step (lines, runs, skipped bodies):
    /// step `i` starts at byte `i + skipped`.
    pub skipped: u64,
    /// Payload bytes in `payload`.
    pub len: u64,
    /// 1 when the packet's payload ran past `payload`.
    pub truncated: u64,
    pub flow: FlowState,
    pub origin: Origin,
    /// `--kernel-log debug`: the verdicts of this packet's requests
    /// (`debug::packed`), logged once `imds_scan` returns (a log call in
    /// the step would nest a fourth call: more stack than eBPF has). The
    /// last slot takes the latest, so a drop (always the last) is logged.
    pub logs: [u64; LOGS],
    /// Requests of this packet, logged or not.
    pub logged: u64,
}

/// Verdicts of one packet that `--kernel-log debug` logs.
pub const LOGS: usize = 8;

/// Per-CPU copy of the payload being scanned (too large for the stack).
#[map]
pub static SCRATCH: PerCpuArray<ScanBuffer> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU staging area for a new `FLOWS` value (too large for the stack).
#[map]
static NEW_FLOW: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);

/// The staging value, reset for a connection whose next payload byte has
/// sequence `next_seq`; also what events about packets of no tracked
/// connection are made from.
#[inline(always)]
pub fn staged_flow(next_seq: u32) -> Option<*mut FlowState> {
    let staged = NEW_FLOW.get_ptr_mut(0)?;
    let flow = unsafe { &mut *staged };
    flow.parser.reset();
    flow.next_seq = next_seq;
    flow.first_seq = next_seq;
    flow.body_left = 0;
    flow.requests = 0;
    flow.flags = 0;
    flow.attribution = 0;
    flow.forwarded = 0;
    flow.owner.exempt_rule = 0;
    flow.last_seen_ns = unsafe { bpf_ktime_get_boot_ns() };
    Some(staged)
}

/// Starts tracking a connection at the payload byte with sequence
/// `next_seq`. Returns whether the entry was made.
#[inline(always)]
pub fn track_flow(key: &FlowKey, next_seq: u32) -> bool {
    let Some(staged) = staged_flow(next_seq) else {
        return false;
    };
    FLOWS.insert(key, unsafe { &*staged }, 0).is_ok()
}

/// Unread bytes above which an event wakes the daemon at once. Below it
/// the daemon's 20 ms poll picks events up: a wake-up costs an interrupt
/// (microseconds) per event, more than classifying the request.
const WAKEUP_BACKLOG: u64 = 1 << 20;

/// Flags for submitting a ring-buffer record.
#[inline(always)]
pub fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) > WAKEUP_BACKLOG {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // Per-CPU value: no other writer while this program runs on this CPU.
        unsafe { *counter += 1 };
    }
}
