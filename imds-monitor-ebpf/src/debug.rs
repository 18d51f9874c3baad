//! Debug lines for `run --kernel-log debug` (aya-log), about what an operator
//! debugging a drop wants to see: each request's verdict, a full flow table,
//! a connection not followed, a reset sent or not, an owner not recorded.
//! Numbers only: never a path, header or token byte.
//!
//! Off by default at (almost) no verifier cost. The daemon sets aya-log's
//! `AYA_LOG_LEVEL` in .rodata before the load: 0 (off) unless `--kernel-log
//! debug`. A frozen read-only map is known to the verifier (5.2+), so it
//! skips every branch behind [`on`]: a call site costs it the load and the
//! compare. Each line is written by a global function, verified once on its
//! own and not once per inlined call site; the daemon turns the numbers
//! into names (`class=0` is `class=v1_get`, see imds-monitor's kernel.rs).

use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
};

use crate::maps::{LOGS, SCRATCH, ScanBuffer};

/// Whether `--kernel-log debug` is on.
#[inline(always)]
pub fn on() -> bool {
    level_enabled(Level::Debug)
}

/// A request's verdict (one line per `RequestEvent`), `packed` by
/// [`packed`]. `pid` is the connection's owner (0: not known).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_log_request(packed: u64, sport: u64, ifindex: u64, pid: u64) -> i64 {
    debug!(
        &(),
        target: "classify",
        "request class={} verdict={} reason={} sport={} ifindex={} pid={} request={}",
        packed as u8,
        (packed >> 8) as u8,
        (packed >> 16) as u8,
        sport as u16,
        ifindex as u32,
        pid as u32,
        (packed >> 32) as u16
    );
    0
}

/// Requests of one packet beyond what `ScanBuffer::logs` holds.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_log_unlogged(count: u64, sport: u64) -> i64 {
    debug!(
        &(),
        target: "classify",
        "{} more requests of one packet sport={} not logged",
        count as u32,
        sport as u16
    );
    0
}

/// What happened to a connection: `event` is an [`Event`] (the daemon
/// prints its name).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_log_flow(event: u64, sport: u64, ifindex: u64) -> i64 {
    debug!(
        &(),
        target: "classify",
        "connection event={} sport={} ifindex={}",
        event as u8,
        sport as u16,
        ifindex as u32
    );
    0
}

/// Connection events of [`imds_log_flow`] (names in the daemon's
/// kernel_log.rs).
#[derive(Clone, Copy)]
pub enum Event {
    FlowTableFull = 0,
    Untracked = 1,
    ResetSent = 2,
    ResetFailed = 3,
}

/// An owner that could not be recorded (`map` 0: CONNECTS, 1:
/// BY_SEQUENCE; the map is full, or another error): the connection's
/// requests carry no process, or none by sequence.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_log_owner_lost(map: u64, error: u64, pid: u64) -> i64 {
    debug!(
        &(),
        target: "attribution",
        "owner not recorded map={} error={} pid={}",
        map as u8,
        error as i64,
        pid as u32
    );
    0
}

/// A request's class, verdict, reason and index in its connection.
#[inline(always)]
pub fn packed(class: u8, verdict: u8, reason: u8, index: u16) -> u64 {
    class as u64 | (verdict as u64) << 8 | (reason as u64) << 16 | (index as u64) << 32
}

/// Logs a verdict; callers check [`on`] first.
#[inline(always)]
pub fn request(packed: u64, sport: u16, ifindex: u32, pid: u32) {
    imds_log_request(packed, sport as u64, ifindex as u64, pid as u64);
}

/// Logs the verdicts the steps of one packet left in `SCRATCH` (its
/// `logs`). A global function of its own: its loop's exits are explored
/// once here, not once each with the rest of `imds_scan`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_log_requests() -> i64 {
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        return 0;
    };
    let ScanBuffer {
        logs,
        logged,
        origin,
        flow,
        ..
    } = unsafe { &*scratch };
    let (logged, pid) = (*logged, flow.owner.tgid);
    let mut i = 0;
    while i < LOGS {
        if i as u64 >= logged {
            break;
        }
        request(logs[i], origin.key.sport, origin.ifindex, pid);
        i += 1;
    }
    if logged > LOGS as u64 {
        imds_log_unlogged(logged - LOGS as u64, origin.key.sport as u64);
    }
    0
}

#[inline(always)]
pub fn flow(what: Event, sport: u16, ifindex: u32) {
    if on() {
        imds_log_flow(what as u64, sport as u64, ifindex as u64);
    }
}

#[inline(always)]
pub fn owner_lost(map: u64, error: i32, pid: u32) {
    if on() {
        imds_log_owner_lost(map, error as i64 as u64, pid as u64);
    }
}
