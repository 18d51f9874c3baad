//! The server's side of each watched connection, on the way in: the status
//! code of every response, and the IP TTL it arrived with (a token response
//! with TTL 1 dies on the one more hop to a container).

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_boot_ns, macros::map, maps::PerCpuArray, programs::TcContext,
};
use imds_monitor_common::{
    event::{Owner, ResponseEvent, kind, stat},
    flow::{FlowKey, flow_flag},
    response::{ResponseReader, ResponseStep},
};

use crate::{
    copy,
    flow::{Advance, advance},
    maps::{EVENTS, FLOWS, Payload, SCAN_CAP, count, submit_flags},
    packet::Segment,
    scan::{STEPS, load_payload, load_word},
};

/// What the response step works on: one segment's payload, where the
/// reading is in it, and a working copy of the connection's response side
/// (the step is a global function, which takes scalars only).
#[repr(C)]
struct ResponseScan {
    payload: Payload,
    /// Bytes consumed beyond one per step (runs, bodies).
    skipped: u64,
    /// Payload bytes in `payload`.
    len: u64,
    key: FlowKey,
    owner: Owner,
    reader: ResponseReader,
    ifindex: u32,
    responses: u16,
    flags: u8,
    ttl: u8,
    forwarded: u8,
    attribution: u8,
    _pad: [u8; 6],
}

/// Ingress has its own scratch: it may interrupt egress on the same CPU.
#[map]
static RESPONSE_SCRATCH: PerCpuArray<ResponseScan> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn on_segment(ctx: &TcContext, segment: &Segment) {
    // Only bytes matter. The SYN-ACK comes before the connection's entry
    // exists (it is made with the first request byte), and bare ACKs carry
    // nothing: neither needs the lookup.
    if segment.payload_len == 0 {
        return;
    }
    // Only connections whose requests were seen: no state is made here.
    let Some(flow) = FLOWS.get_ptr_mut(&segment.key) else {
        return;
    };
    let flow = unsafe { &mut *flow };
    if flow.flags & flow_flag::RESPONSES_LOST != 0 {
        return;
    }
    if flow.response_next_seq == 0 {
        // The first response byte of the connection: the server's initial
        // sequence number + 1 (or, mid-connection, wherever it is now).
        flow.response_next_seq = segment.seq;
    }
    let skip = match advance(flow.response_next_seq, segment.seq, segment.payload_len) {
        Advance::New { skip } => skip,
        Advance::Seen => return,
        Advance::Gap => {
            count(stat::RESPONSES_LOST);
            flow.flags |= flow_flag::RESPONSES_LOST;
            return;
        }
    };
    flow.response_next_seq = segment.seq.wrapping_add(segment.payload_len);
    let Some(scratch) = RESPONSE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let work = unsafe { &mut *scratch };
    let len = segment.payload_len - skip;
    let Some(n) = load_payload(
        ctx,
        &raw mut work.payload.bytes,
        segment.payload_offset + skip,
        len,
    ) else {
        return;
    };
    work.skipped = 0;
    work.len = n as u64;
    // The key's and the scratch's addresses are 8-byte aligned.
    unsafe {
        copy::addr(&mut work.key.saddr, &segment.key.saddr);
        copy::addr(&mut work.key.daddr, &segment.key.daddr);
    }
    work.key.sport = segment.key.sport;
    work.key.dport = segment.key.dport;
    work.key.family = segment.key.family;
    copy::owner(&mut work.owner, &flow.owner);
    work.reader = flow.response;
    work.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    work.responses = flow.responses;
    work.flags = 0;
    work.ttl = segment.ttl;
    work.forwarded = flow.forwarded;
    work.attribution = flow.attribution;
    let mut index = 0;
    let mut finished = false;
    while index < STEPS {
        if imds_response_step(index) != 0 {
            finished = true;
            break;
        }
        index += 1;
    }
    // The steps changed it through their own pointer.
    let work = unsafe { &*scratch };
    flow.response = work.reader;
    flow.responses = work.responses;
    flow.flags |= work.flags;
    // Bytes past the buffer or the steps cannot be followed.
    if (!finished || n < len) && flow.flags & flow_flag::RESPONSES_LOST == 0 {
        count(stat::RESPONSES_LOST);
        flow.flags |= flow_flag::RESPONSES_LOST;
    }
}

/// One step of reading the response bytes in [`RESPONSE_SCRATCH`]: a run
/// the reader takes whole (a body, the rest of a line it does not read),
/// else one byte. Step `index` starts at byte `index + skipped`. Returns 1
/// to stop. A global function: verified once, whatever the loop's length.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn imds_response_step(index: u64) -> i64 {
    let Some(scratch) = RESPONSE_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let work = unsafe { &mut *scratch };
    let pos = index + work.skipped;
    if pos >= work.len || pos >= SCAN_CAP as u64 {
        return 1;
    }
    let rest = work.len - pos;
    if let Some(word) = unsafe { load_word(&work.payload, pos) } {
        let taken = work.reader.feed_run(word, rest as u32);
        if taken != 0 {
            work.skipped += taken as u64 - 1;
            return 0;
        }
    }
    let byte = work.payload.bytes[pos as usize];
    match work.reader.feed(byte) {
        ResponseStep::More | ResponseStep::Done => 0,
        ResponseStep::Status => {
            emit_response(work);
            work.responses = work.responses.wrapping_add(1);
            0
        }
        ResponseStep::Lost => {
            count(stat::RESPONSES_LOST);
            work.flags |= flow_flag::RESPONSES_LOST;
            1
        }
    }
}

#[inline(always)]
fn emit_response(work: &ResponseScan) {
    count(stat::RESPONSES);
    let Some(mut entry) = EVENTS.reserve::<ResponseEvent>(0) else {
        count(stat::LOST_EVENTS);
        return;
    };
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.kind = kind::RESPONSE;
    event.family = work.key.family;
    event.ttl = work.ttl;
    event.forwarded = work.forwarded;
    event.status = work.reader.status;
    event.request_index = work.responses;
    event.sport = work.key.sport;
    event.dport = work.key.dport;
    event.attribution = work.attribution;
    event._pad = 0;
    event._pad1 = 0;
    event.ifindex = work.ifindex;
    event._pad2 = 0;
    // The key's and the event's addresses are 8-byte aligned.
    unsafe {
        copy::addr(&mut event.saddr, &work.key.saddr);
        copy::addr(&mut event.daddr, &work.key.daddr);
    }
    event.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    copy::owner(&mut event.owner, &work.owner);
    entry.submit(submit_flags());
}
