//! TCP sequence tracking: every payload byte of a connection reaches the
//! parser exactly once, in order; retransmitted bytes are skipped.

use aya_ebpf::{EbpfContext, helpers::generated::bpf_get_socket_cookie, programs::TcContext};
use imds_monitor_common::{
    class::{InvalidReason, RequestClass},
    event::{attribution, stat},
    flow::{FlowState, SeqKey, flow_flag},
};

use crate::{
    attribution::{BY_SEQUENCE, CONNECTS},
    copy,
    maps::{FLOWS, count, track_flow},
    packet::Segment,
    scan::{self, Origin},
};

/// What happens to a segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Pass,
    /// A later segment of a blocked connection.
    Drop,
    /// This segment completed a request that must not reach IMDS: drop it
    /// and reset the client.
    Reset,
}

#[inline(always)]
pub fn on_segment(ctx: &TcContext, segment: &Segment) -> Fate {
    if segment.syn {
        // A new connection. Its state is made with its first payload byte
        // (most connections to a port never send one), so here only an
        // entry left by an earlier connection on the same ports goes.
        if FLOWS.get_ptr(&segment.key).is_some() {
            let _ = FLOWS.remove(&segment.key);
        }
        return Fate::Pass;
    }
    if segment.payload_len == 0 && !segment.fin_or_rst {
        // A bare ACK: nothing to read, nothing ending.
        return Fate::Pass;
    }
    let origin = Origin {
        key: segment.key,
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        _pad: 0,
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
    };
    let mut fate = Fate::Pass;
    if segment.payload_len != 0 {
        fate = on_payload(ctx, segment, &origin);
    }
    if segment.fin_or_rst {
        if let Some(flow) = FLOWS.get_ptr_mut(&segment.key) {
            let flow = unsafe { &mut *flow };
            // The connection ended inside a request head: say so, never guess.
            if flow.flags & flow_flag::DESYNC == 0 && flow.parser.in_request() {
                scan::emit(&origin, flow, RequestClass::Incomplete, InvalidReason::None);
            }
        }
        let _ = FLOWS.remove(&segment.key);
    }
    fate
}

#[inline(always)]
fn on_payload(ctx: &TcContext, segment: &Segment, origin: &Origin) -> Fate {
    let flow = match FLOWS.get_ptr_mut(&segment.key) {
        Some(flow) => flow,
        None => {
            // The connection's first payload, or one seen mid-connection
            // (the monitor started while it was open, or the entry was
            // evicted): start parsing here. On egress the first payload
            // byte is the initial sequence number + 1, which finds a
            // forwarded connection's owner; mid-connection that lookup
            // simply misses.
            if !track_flow(&segment.key, segment.seq) {
                return Fate::Pass;
            }
            match FLOWS.get_ptr_mut(&segment.key) {
                Some(flow) => flow,
                None => return Fate::Pass,
            }
        }
    };
    let flow = unsafe { &mut *flow };
    if flow.flags & flow_flag::BLOCKED != 0 {
        // Retransmissions and anything after a dropped request.
        return Fate::Drop;
    }
    if flow.flags & flow_flag::DESYNC != 0 {
        return Fate::Pass;
    }
    let len = segment.payload_len;
    // Set on every segment: a socket-less packet was forwarded (a container).
    flow.forwarded = (origin.socket_cookie == 0) as u8;
    let skip = match advance(flow.next_seq, segment.seq, len) {
        Advance::New { skip } => skip,
        Advance::Seen => {
            count(stat::RETRANSMITS);
            return Fate::Pass;
        }
        Advance::Gap => {
            // Bytes were never seen (a segment lost before this hook, or map
            // eviction): the stream position is unknown from here on.
            count(stat::SEQUENCE_GAPS);
            if flow.parser.in_request() {
                scan::emit(origin, flow, RequestClass::Incomplete, InvalidReason::None);
            }
            flow.flags |= flow_flag::DESYNC;
            return Fate::Pass;
        }
    };
    if flow.attribution == attribution::NONE {
        find_owner(flow, segment, origin.socket_cookie);
    }
    flow.next_seq = segment.seq.wrapping_add(len);
    scan::scan_payload(ctx, flow, origin, segment.payload_offset + skip, len - skip);
    if flow.flags & flow_flag::BLOCKED != 0 {
        Fate::Reset
    } else {
        Fate::Pass
    }
}

/// Where a segment of `len` bytes at `seq` stands against `expected`, the
/// next byte not yet read.
pub enum Advance {
    /// New bytes; the first `skip` were seen before (re-segmented retransmit).
    New { skip: u32 },
    /// Everything was seen before: a retransmission.
    Seen,
    /// Bytes before it were never seen.
    Gap,
}

#[inline(always)]
pub fn advance(expected: u32, seq: u32, len: u32) -> Advance {
    let ahead = seq.wrapping_sub(expected) as i32;
    if ahead > 0 {
        return Advance::Gap;
    }
    let already_seen = ahead.unsigned_abs();
    if already_seen >= len {
        Advance::Seen
    } else {
        Advance::New { skip: already_seen }
    }
}

/// Looks up who opened the connection: by the packet's socket (host
/// processes), else by initial sequence number (forwarded container traffic).
#[inline(always)]
fn find_owner(flow: &mut FlowState, segment: &Segment, socket_cookie: u64) {
    if socket_cookie != 0 {
        if let Some(owner) = unsafe { CONNECTS.get(&socket_cookie) } {
            copy::owner(&mut flow.owner, owner);
            flow.attribution = attribution::SOCKET;
        }
        return;
    }
    let key = SeqKey {
        daddr: segment.key.daddr,
        dport: segment.key.dport,
        family: segment.key.family,
        _pad: 0,
        seq: flow.first_seq,
    };
    if let Some(owner) = unsafe { BY_SEQUENCE.get(&key) } {
        copy::owner(&mut flow.owner, owner);
        flow.attribution = attribution::SEQUENCE;
    }
}
