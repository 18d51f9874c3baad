//! TCP sequence tracking: every payload byte of a connection reaches the
//! parser exactly once, in order; retransmitted bytes are skipped.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    programs::TcContext,
};
use imds_monitor_common::{
    class::{InvalidReason, RequestClass},
    config::action,
    event::{attribution, stat},
    flow::{FlowKey, FlowState, SeqKey, flow_flag},
    http,
};

use crate::{
    attribution::{BY_SEQUENCE, CONNECTS},
    copy, debug,
    maps::{FLOWS, count, staged_flow, track_flow},
    packet::Segment,
    scan::{self, Origin},
};

/// What happens to a segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Pass,
    /// Dropped without a reset (a packet that cannot be rewritten into one).
    Drop,
    /// Dropped, and the client reset: a request that must not reach IMDS,
    /// or any later segment of its connection (a retransmission).
    Reset,
}

/// Whether enforce mode resets what the classifier cannot judge for this
/// connection's owner: the `incomplete` class drops unless a policy
/// exception covers the owner.
#[inline(always)]
fn fails_closed(flow: &FlowState) -> bool {
    scan::action_for(RequestClass::Incomplete) == action::DROP && flow.owner.exempt_rule == 0
}

/// A segment the classifier cannot judge: reported once per connection
/// (with why), the connection's stream no longer followed, and in enforce
/// mode the connection blocked: this segment and every later one dropped,
/// the client reset.
#[inline(always)]
fn unjudged(flow: &mut FlowState, origin: &Origin, reason: InvalidReason) -> Fate {
    let blocks = fails_closed(flow);
    if blocks {
        flow.flags |= flow_flag::BLOCKED;
    }
    if flow.flags & flow_flag::DESYNC == 0 || blocks {
        scan::emit(origin, flow, RequestClass::Incomplete, reason);
    }
    flow.flags |= flow_flag::DESYNC;
    if blocks { Fate::Reset } else { Fate::Pass }
}

#[inline(always)]
pub fn on_segment(ctx: &TcContext, segment: &Segment) -> Fate {
    let origin = Origin {
        key: segment.key,
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        _pad: 0,
        socket_cookie: 0,
    };
    if segment.syn {
        // A new connection. Its state is made with its first payload byte
        // (most connections to a port never send one), so here only an
        // entry left by an earlier connection on the same ports goes.
        if FLOWS.get_ptr(&segment.key).is_some() {
            let _ = FLOWS.remove(&segment.key);
        }
        if segment.payload_len == 0 {
            return Fate::Pass;
        }
        // Data in a SYN (TCP Fast Open) is not read. Dropped, the client
        // sends the SYN again without it and the data after the handshake.
        count(stat::UNREADABLE_PACKETS);
        let origin = Origin {
            socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
            ..origin
        };
        return if report_untracked(&origin, InvalidReason::SynData) {
            Fate::Drop
        } else {
            Fate::Pass
        };
    }
    if segment.payload_len == 0 && !segment.fin_or_rst {
        // A bare ACK: nothing to read, nothing ending.
        return Fate::Pass;
    }
    let origin = Origin {
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        ..origin
    };
    let mut fate = Fate::Pass;
    if segment.payload_len != 0 {
        fate = on_payload(ctx, segment, &origin);
    }
    if segment.fin_or_rst {
        if let Some(flow) = FLOWS.get_ptr_mut(&segment.key) {
            let flow = unsafe { &mut *flow };
            // The connection ended inside a request head: say so, never guess
            // (a head already dropped was reported as such).
            if flow.flags & (flow_flag::DESYNC | flow_flag::BLOCKED) == 0
                && flow.parser.in_request()
            {
                scan::emit(
                    &origin,
                    flow,
                    RequestClass::Incomplete,
                    InvalidReason::ConnectionClosed,
                );
            }
        }
        // A blocked connection's entry stays until it ages out: the
        // client's retransmissions must still be reset.
        if fate != Fate::Reset {
            let _ = FLOWS.remove(&segment.key);
        }
    }
    fate
}

/// A packet to an endpoint that cannot be read as one TCP segment (an IP
/// fragment, IPv6 extension headers not followed): nothing in it is judged.
#[inline(always)]
pub fn on_unreadable(ctx: &TcContext, key: &FlowKey) -> Fate {
    count(stat::UNREADABLE_PACKETS);
    let origin = Origin {
        key: *key,
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        _pad: 0,
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
    };
    if report_untracked(&origin, InvalidReason::IpHeader) {
        Fate::Drop
    } else {
        Fate::Pass
    }
}

/// Reports a packet the classifier could not read (SYN data, fragments,
/// extension headers) or follow (a full flow table) as an `incomplete`
/// request; returns whether enforce mode drops it. No connection state is
/// made for it.
#[inline(always)]
fn report_untracked(origin: &Origin, reason: InvalidReason) -> bool {
    let Some(flow) = staged_flow(0) else {
        // No staging entry: nothing to report with; fail closed all the same.
        return scan::action_for(RequestClass::Incomplete) == action::DROP;
    };
    let flow = unsafe { &mut *flow };
    owner_by_socket(flow, origin.socket_cookie);
    let blocks = fails_closed(flow);
    if blocks {
        flow.flags |= flow_flag::BLOCKED;
    }
    scan::emit(origin, flow, RequestClass::Incomplete, reason);
    blocks
}

#[inline(always)]
fn on_payload(ctx: &TcContext, segment: &Segment, origin: &Origin) -> Fate {
    let flow = match FLOWS.get_ptr_mut(&segment.key) {
        Some(flow) => flow,
        None => match on_untracked(ctx, segment, origin) {
            Ok(flow) => flow,
            Err(fate) => return fate,
        },
    };
    // One call site: the scan loop is inlined once.
    on_tracked(ctx, unsafe { &mut *flow }, segment, origin)
}

/// A payload segment of a connection without state: its first payload, or
/// one seen mid-connection (open before the monitor started, or its entry
/// evicted from the full table). Parsed from here when it is the first
/// payload or starts a request line; anything else is a stream the
/// classifier cannot follow (a head's second half, a body), unjudged.
/// Returns the new entry to parse the segment with, or the segment's fate.
#[inline(always)]
fn on_untracked(
    ctx: &TcContext,
    segment: &Segment,
    origin: &Origin,
) -> Result<*mut FlowState, Fate> {
    let fresh = starts_request(ctx, segment) || is_first_payload(segment);
    if !track_flow(&segment.key, segment.seq) {
        // The flow table is full: a connection that is not followed is not
        // let through either (each of its segments meets this again).
        count(stat::FLOW_TABLE_FULL);
        debug::flow(
            debug::Event::FlowTableFull,
            segment.key.sport,
            origin.ifindex,
        );
        return Err(if report_untracked(origin, InvalidReason::FlowTableFull) {
            Fate::Reset
        } else {
            Fate::Pass
        });
    }
    let Some(flow) = FLOWS.get_ptr_mut(&segment.key) else {
        return Err(Fate::Pass);
    };
    if fresh {
        return Ok(flow);
    }
    let flow = unsafe { &mut *flow };
    count(stat::UNTRACKED_SEGMENTS);
    debug::flow(debug::Event::Untracked, segment.key.sport, origin.ifindex);
    flow.forwarded = (origin.socket_cookie == 0) as u8;
    find_owner(flow, segment, origin.socket_cookie);
    Err(unjudged(flow, origin, InvalidReason::UntrackedConnection))
}

#[inline(always)]
fn on_tracked(ctx: &TcContext, flow: &mut FlowState, segment: &Segment, origin: &Origin) -> Fate {
    if flow.flags & flow_flag::BLOCKED != 0 {
        // Retransmissions and anything after a dropped request.
        return Fate::Reset;
    }
    if flow.flags & flow_flag::DESYNC != 0 {
        // More bytes of a stream not followed: in enforce mode they do not
        // reach IMDS either.
        return if fails_closed(flow) {
            unjudged(flow, origin, InvalidReason::Unfollowed)
        } else {
            Fate::Pass
        };
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
            // Bytes were never seen (a segment lost before this hook): the
            // stream position is unknown from here on.
            count(stat::SEQUENCE_GAPS);
            if flow.attribution == attribution::NONE {
                find_owner(flow, segment, origin.socket_cookie);
            }
            return unjudged(flow, origin, InvalidReason::SequenceGap);
        }
    };
    if flow.attribution == attribution::NONE {
        find_owner(flow, segment, origin.socket_cookie);
    }
    flow.next_seq = segment.seq.wrapping_add(len);
    flow.last_seen_ns = unsafe { bpf_ktime_get_boot_ns() };
    scan::scan_payload(ctx, flow, origin, segment.payload_offset + skip, len - skip);
    // The scan wrote the entry through its own lookup: read it again.
    let flags = unsafe { core::ptr::read_volatile(&flow.flags) };
    if flags & flow_flag::BLOCKED != 0 {
        Fate::Reset
    } else {
        Fate::Pass
    }
}

/// Whether the segment's payload starts a request line (see
/// [`imds_monitor_common::http::starts_request`]).
#[inline(always)]
fn starts_request(ctx: &TcContext, segment: &Segment) -> bool {
    let mut word = 0u64;
    let n = if segment.payload_len < 8 {
        segment.payload_len as u64
    } else {
        8
    };
    if n == 0 {
        return false;
    }
    // Masked so that the verifier sees the length in [1, 8].
    let n = (core::hint::black_box(n) - 1) & 7;
    let ret = scan::load_bytes(ctx, segment.payload_offset, (&raw mut word).cast(), n + 1);
    ret == 0 && http::starts_request(u64::from_le(word), n as u32 + 1)
}

/// Whether the segment carries the connection's first payload byte: the
/// sock_ops hook recorded the connection's initial sequence number + 1
/// (a host's or a container's connection made while the monitor ran).
#[inline(always)]
fn is_first_payload(segment: &Segment) -> bool {
    let key = SeqKey {
        daddr: segment.key.daddr,
        dport: segment.key.dport,
        family: segment.key.family,
        _pad: 0,
        seq: segment.seq,
    };
    unsafe { BY_SEQUENCE.get(&key) }.is_some()
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

/// Who opened the connection, by the packet's socket (host processes).
#[inline(always)]
fn owner_by_socket(flow: &mut FlowState, socket_cookie: u64) {
    if let Some(owner) = unsafe { CONNECTS.get(&socket_cookie) } {
        copy::owner(&mut flow.owner, owner);
        flow.attribution = attribution::SOCKET;
    }
}

/// Looks up who opened the connection: by the packet's socket (host
/// processes), else by initial sequence number (forwarded container traffic).
#[inline(always)]
fn find_owner(flow: &mut FlowState, segment: &Segment, socket_cookie: u64) {
    if socket_cookie != 0 {
        owner_by_socket(flow, socket_cookie);
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
