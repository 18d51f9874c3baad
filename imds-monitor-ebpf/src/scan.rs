//! Feeds a segment's payload through the shared parser, one step a call of a
//! global function, and
//! emits an event for every request head that completes.

use core::ffi::c_void;

use aya_ebpf::{EbpfContext, helpers::generated::bpf_ktime_get_boot_ns, programs::TcContext};
use imds_monitor_common::{
    class::{InvalidReason, RequestClass, Verdict},
    config::action,
    event::{RequestEvent, stat},
    flow::{FlowKey, FlowState, flow_flag},
    http::{Step, flag},
};

use crate::{
    copy, debug,
    maps::{
        ACTIONS, EVENTS, FLOWS, LOGS, Payload, SCAN_CAP, SCRATCH, ScanBuffer, count, submit_flags,
    },
};

/// Where a request came from, copied into each event of a packet.
#[repr(C)]
pub struct Origin {
    pub key: FlowKey,
    pub ifindex: u32,
    pub _pad: u32,
    pub socket_cookie: u64,
}

/// Copies up to [`SCAN_CAP`] payload bytes at `offset` into `bytes`; returns
/// how many, or `None` when there is nothing to read.
#[inline(always)]
pub fn load_payload(
    ctx: &TcContext,
    bytes: *mut [u8; SCAN_CAP],
    offset: u32,
    len: u32,
) -> Option<u32> {
    let n = if len as u64 > SCAN_CAP as u64 {
        // More than one packet's scan budget (a GSO burst of pipelined
        // requests): the rest cannot be followed.
        count(stat::TRUNCATED_PACKETS);
        SCAN_CAP as u64
    } else {
        len as u64
    };
    if n == 0 {
        return None;
    }
    // black_box hides the range from LLVM so it cannot fold the mask away;
    // the verifier then sees the length in [1, SCAN_CAP] in the passed register.
    let n = (core::hint::black_box(n).wrapping_sub(1) & (SCAN_CAP as u64 - 1)) + 1;
    if load_bytes(ctx, offset, bytes.cast(), n) != 0 {
        return None;
    }
    Some(n as u32)
}

/// Steps of the scan per packet. A step takes a line, or a byte and up to 8
/// more, or a body: 512 cover a full buffer of any ordinary request bytes.
/// What is left after them is not judged (`incomplete`). Each costs the
/// verifier about 30 instructions.
pub const STEPS: u64 = 512;

/// Feeds a segment's new payload bytes through the connection's parser.
///
/// The parser runs in [`imds_scan_step`], a global function: the verifier
/// checks it once, on its own, and the loop in [`imds_scan`] costs it a
/// handful of instructions per iteration. That keeps the classifier far below the
/// verifier's limits on every kernel (no `bpf_loop`, which needs 5.17, and
/// whose callback newer verifiers re-check until its states converge). A
/// global function takes only scalars (5.10), so the step works on a
/// per-CPU copy of the connection's state, copied in here and out by
/// [`imds_scan`].
#[inline(always)]
pub fn scan_payload(ctx: &TcContext, flow: &mut FlowState, origin: &Origin, offset: u32, len: u32) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let buffer = unsafe { &mut *scratch };
    buffer.skipped = 0;
    buffer.logged = 0;
    let Some(n) = load_payload(ctx, &raw mut buffer.payload.bytes, offset, len) else {
        return;
    };
    buffer.len = n as u64;
    copy::origin(&mut buffer.origin, origin);
    let work = &mut buffer.flow;
    copy::parser(&mut work.parser, &flow.parser);
    copy::owner(&mut work.owner, &flow.owner);
    work.body_left = flow.body_left;
    work.requests = flow.requests;
    work.flags = flow.flags;
    work.attribution = flow.attribution;
    work.forwarded = flow.forwarded;
    buffer.truncated = (n < len) as u64;
    imds_scan();
    // Here, not in imds_scan: there the check would run once per exit of
    // its loop (each a state of its own for the verifier).
    if debug::on() {
        debug::imds_log_requests();
    }
}

/// Runs the steps over the payload in [`SCRATCH`], reports what they left
/// unread, then copies the working state back to the connection's entry.
/// A global function, like the step: its loop is verified once, from one
/// state, whatever paths of the classifier lead to it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_scan() -> i64 {
    let mut steps = 0;
    while steps < STEPS {
        if imds_scan_step(steps) != 0 {
            break;
        }
        steps += 1;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let ScanBuffer {
        flow: work,
        origin,
        truncated,
        skipped,
        len,
        logs,
        logged,
        ..
    } = unsafe { &mut *scratch };
    // Bytes past the buffer or the steps are not judged: they might hold
    // a request. Enforce mode resets the connection (fails closed). The
    // steps ran out only if bytes are left after the last one.
    let unread = *truncated != 0 || (steps >= STEPS && steps + *skipped < *len);
    if unread && work.flags & (flow_flag::DESYNC | flow_flag::BLOCKED) == 0 {
        if action_for(RequestClass::Incomplete) == action::DROP && work.owner.exempt_rule == 0 {
            work.flags |= flow_flag::BLOCKED;
        }
        let reason = if *truncated != 0 {
            InvalidReason::PacketTooLong
        } else {
            InvalidReason::TooManySteps
        };
        emit_deferred(origin, work, RequestClass::Incomplete, reason, logs, logged);
        work.flags |= flow_flag::DESYNC;
    }
    let Some(flow) = FLOWS.get_ptr_mut(&origin.key) else {
        return 0;
    };
    let flow = unsafe { &mut *flow };
    copy::parser(&mut flow.parser, &work.parser);
    flow.body_left = work.body_left;
    flow.requests = work.requests;
    // Only set here, never cleared; the response side sets its own bits.
    flow.flags |= work.flags;
    0
}

#[inline(always)]
pub fn action_for(class: RequestClass) -> u8 {
    ACTIONS.get(class as u32).copied().unwrap_or(action::PASS)
}

/// `bpf_skb_load_bytes` with a 64-bit length argument (see `scan_payload`).
#[inline(always)]
pub fn load_bytes(ctx: &TcContext, offset: u32, to: *mut c_void, len: u64) -> i64 {
    const BPF_FUNC_SKB_LOAD_BYTES: usize = 26;
    let helper: unsafe extern "C" fn(*mut c_void, u32, *mut c_void, u64) -> i64 =
        unsafe { core::mem::transmute(BPF_FUNC_SKB_LOAD_BYTES) };
    unsafe { helper(ctx.as_ptr(), offset, to, len) }
}

/// The 8 bytes at `at` (first byte in the lowest bits), from the two aligned
/// words that hold them: eBPF has no unaligned loads, and LLVM would
/// otherwise read them one by one. `None` from the end of the payload
/// buffer on; the word after it (`tail`) gives the junk a word read
/// near the end takes past it.
///
/// # Safety
/// `payload` points into a map value, which the kernel aligns to 8 bytes.
#[inline(always)]
pub unsafe fn load_word(payload: *const Payload, at: u64) -> Option<u64> {
    if at >= SCAN_CAP as u64 {
        return None;
    }
    // The mask changes nothing, but shows the verifier the bound, which
    // LLVM may otherwise merge into the callers' compares (black_box keeps
    // it from dropping the mask).
    let base = core::hint::black_box(at) & (SCAN_CAP as u64 - 8);
    let words = payload.cast::<u64>();
    let (low, high) = unsafe {
        let low = words.add((base / 8) as usize);
        (u64::from_le(*low), u64::from_le(*low.add(1)))
    };
    let shift = (at & 7) * 8;
    // `high << (64 - shift)` in two steps, so that it is 0 for shift 0.
    Some((low >> shift) | ((high << 1) << (63 - shift)))
}

/// One step of the scan of the payload in [`SCRATCH`]: a payload byte,
/// then as many of the following bytes (up to 8) as the parser takes as a
/// run (`feed_run`); or a request body skipped whole. Returns 1 to stop.
/// Step `index` starts at byte `index + skipped`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_scan_step(index: u64) -> i64 {
    let Some(buffer) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let ScanBuffer {
        payload,
        skipped,
        len,
        flow,
        origin,
        logs,
        logged,
        ..
    } = unsafe { &mut *buffer };
    let (payload, len, origin) = (&*payload, *len, &*origin);
    let pos = index + *skipped;
    if pos >= len || pos >= SCAN_CAP as u64 {
        return 1;
    }

    if flow.body_left != 0 {
        let rest = len - pos;
        let skip = if (flow.body_left as u64) < rest {
            flow.body_left as u64
        } else {
            rest
        };
        flow.body_left -= skip as u32;
        *skipped += skip - 1;
        return 0;
    }
    let byte = payload.bytes[pos as usize];
    let step = flow.parser.feed(byte);
    if step == Step::More {
        // The bytes after it that change only counters, in one go.
        let next = pos + 1;
        if let Some(word) = unsafe { load_word(payload, next) } {
            let rest = len - next;
            let avail = if rest < 8 { rest as u32 } else { 8 };
            let taken = flow.parser.feed_run(word, avail);
            *skipped += taken as u64;
        }
    }
    match step {
        Step::More => 0,
        Step::Complete => {
            let (class, reason) = flow.parser.classify();
            if action_for(class) == action::DROP && flow.owner.exempt_rule == 0 {
                // Enforce: this segment completes a request that must not
                // reach IMDS; the caller drops it and resets the client.
                flow.flags |= flow_flag::BLOCKED;
                emit_deferred(origin, flow, class, reason, logs, logged);
                return 1;
            }
            emit_deferred(origin, flow, class, reason, logs, logged);
            flow.requests = flow.requests.wrapping_add(1);
            if flow.parser.flags & flag::CONTENT_LENGTH != 0 {
                flow.body_left = flow.parser.content_length;
            }
            flow.parser.reset();
            0
        }
        Step::Malformed => {
            // Junk is an invalid request: a policy that drops those resets it.
            if action_for(RequestClass::Invalid) == action::DROP && flow.owner.exempt_rule == 0 {
                flow.flags |= flow_flag::BLOCKED;
            }
            emit_deferred(
                origin,
                flow,
                RequestClass::Invalid,
                InvalidReason::Malformed,
                logs,
                logged,
            );
            // The server answers junk too (400), so it takes a response slot.
            flow.requests = flow.requests.wrapping_add(1);
            flow.flags |= flow_flag::DESYNC;
            1
        }
        Step::Overflow => {
            // A head longer than the parser reads: enforce mode resets it.
            if action_for(RequestClass::Incomplete) == action::DROP && flow.owner.exempt_rule == 0 {
                flow.flags |= flow_flag::BLOCKED;
            }
            emit_deferred(
                origin,
                flow,
                RequestClass::Incomplete,
                InvalidReason::HeadTooLong,
                logs,
                logged,
            );
            flow.flags |= flow_flag::DESYNC;
            1
        }
    }
}

/// Reports a request (and logs its verdict with `--kernel-log debug`).
#[inline(always)]
pub fn emit(origin: &Origin, flow: &FlowState, class: RequestClass, reason: InvalidReason) {
    let verdict = verdict(flow);
    if debug::on() {
        debug::request(
            debug::packed(class as u8, verdict, reason as u8, flow.requests),
            origin.key.sport,
            origin.ifindex,
            flow.owner.tgid,
        );
    }
    emit_event(origin, flow, class, reason, verdict);
}

/// [`emit`] for the scan: the verdict is logged after [`imds_scan`]
/// returns, with the packet's others, in order (`debug::imds_log_requests`).
#[inline(always)]
fn emit_deferred(
    origin: &Origin,
    flow: &FlowState,
    class: RequestClass,
    reason: InvalidReason,
    logs: &mut [u64; LOGS],
    logged: &mut u64,
) {
    let verdict = verdict(flow);
    if debug::on() {
        let slot = if *logged < LOGS as u64 - 1 {
            *logged as usize
        } else {
            LOGS - 1
        };
        logs[slot] = debug::packed(class as u8, verdict, reason as u8, flow.requests);
        *logged += 1;
    }
    emit_event(origin, flow, class, reason, verdict);
}

#[inline(always)]
fn verdict(flow: &FlowState) -> u8 {
    let verdict = if flow.flags & flow_flag::BLOCKED != 0 {
        Verdict::Dropped
    } else {
        Verdict::Allowed
    };
    verdict as u8
}

#[inline(always)]
fn emit_event(
    origin: &Origin,
    flow: &FlowState,
    class: RequestClass,
    reason: InvalidReason,
    verdict: u8,
) {
    let parser = &flow.parser;
    count(stat::CLASS_BASE + class as u32);
    let Some(mut entry) = EVENTS.reserve::<RequestEvent>(0) else {
        count(stat::LOST_EVENTS);
        return;
    };
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.kind = imds_monitor_common::event::kind::REQUEST;
    event.class = class as u8;
    event.reason = reason as u8;
    event.verdict = verdict;
    event.method_len = parser.method_len;
    event.family = origin.key.family;
    event.flags = parser.flags;
    event.path_len = parser.path_len;
    event.sport = origin.key.sport;
    event.dport = origin.key.dport;
    event.ifindex = origin.ifindex;
    event.ttl = parser.ttl;
    // The key's and the event's addresses are 8-byte aligned.
    unsafe {
        copy::addr(&mut event.saddr, &origin.key.saddr);
        copy::addr(&mut event.daddr, &origin.key.daddr);
    }
    event.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    event.socket_cookie = origin.socket_cookie;
    event.attribution = flow.attribution;
    event._pad = 0;
    event.method = parser.method;
    copy::path(&mut event.path, &parser.path, parser.path_len);
    copy::owner(&mut event.owner, &flow.owner);
    event.request_index = flow.requests;
    event.forwarded = flow.forwarded;
    event._pad2 = 0;
    event._pad3 = 0;
    entry.submit(submit_flags());
}
