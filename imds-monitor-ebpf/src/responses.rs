//! The server's side of each watched connection, on the way in: the status
//! code of every response, and the IP TTL it arrived with (a token response
//! with TTL 1 dies on the one more hop to a container).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_loop},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use imds_monitor_common::{
    event::{ResponseEvent, kind, stat},
    flow::{FlowState, flow_flag},
    response::ResponseStep,
};

use crate::{
    copy,
    flow::{Advance, advance},
    maps::{EVENTS, FLOWS, SCAN_CAP, count, submit_flags},
    packet::Segment,
    scan::load_payload,
};

/// Ingress has its own copy buffer: it may interrupt egress on the same CPU.
#[map]
static RESPONSE_SCRATCH: PerCpuArray<[u8; SCAN_CAP]> = PerCpuArray::with_max_entries(1, 0);

struct ResponseScan {
    bytes: *const [u8; SCAN_CAP],
    flow: *mut FlowState,
    segment: *const Segment,
    ifindex: u32,
}

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
    let Some(bytes) = RESPONSE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let len = segment.payload_len - skip;
    let Some(n) = load_payload(ctx, bytes, segment.payload_offset + skip, len) else {
        return;
    };
    let mut state = ResponseScan {
        bytes,
        flow,
        segment,
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
    };
    let callback = response_byte as unsafe extern "C" fn(u64, *mut c_void) -> i64;
    unsafe {
        bpf_loop(
            n,
            callback as *mut c_void,
            (&mut state as *mut ResponseScan).cast(),
            0,
        )
    };
    if n < len {
        count(stat::RESPONSES_LOST);
        flow.flags |= flow_flag::RESPONSES_LOST;
    }
}

/// One response byte; returns 1 to stop.
unsafe extern "C" fn response_byte(index: u64, state: *mut c_void) -> i64 {
    let state = unsafe { &mut *state.cast::<ResponseScan>() };
    if index >= SCAN_CAP as u64 {
        return 1;
    }
    let byte = unsafe { (*state.bytes)[index as usize] };
    let flow = unsafe { &mut *state.flow };
    match flow.response.feed(byte) {
        ResponseStep::More | ResponseStep::Done => 0,
        ResponseStep::Status => {
            emit_response(flow, unsafe { &*state.segment }, state.ifindex);
            flow.responses = flow.responses.wrapping_add(1);
            0
        }
        ResponseStep::Lost => {
            count(stat::RESPONSES_LOST);
            flow.flags |= flow_flag::RESPONSES_LOST;
            1
        }
    }
}

#[inline(always)]
fn emit_response(flow: &FlowState, segment: &Segment, ifindex: u32) {
    count(stat::RESPONSES);
    let Some(mut entry) = EVENTS.reserve::<ResponseEvent>(0) else {
        count(stat::LOST_EVENTS);
        return;
    };
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.kind = kind::RESPONSE;
    event.family = segment.key.family;
    event.ttl = segment.ttl;
    event.forwarded = flow.forwarded;
    event.status = flow.response.status;
    event.request_index = flow.responses;
    event.sport = segment.key.sport;
    event.dport = segment.key.dport;
    event.attribution = flow.attribution;
    event._pad = 0;
    event._pad1 = 0;
    event.ifindex = ifindex;
    event._pad2 = 0;
    // The key's and the event's addresses are 8-byte aligned.
    unsafe {
        copy::addr(&mut event.saddr, &segment.key.saddr);
        copy::addr(&mut event.daddr, &segment.key.daddr);
    }
    event.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    copy::owner(&mut event.owner, &flow.owner);
    entry.submit(submit_flags());
}
