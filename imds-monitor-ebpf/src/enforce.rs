//! Enforce mode's fail-fast: the segment that completes a dropped request is
//! rewritten in place into a TCP reset from the endpoint to the client and
//! handed to the interface's ingress. The client's connect()ed socket (or,
//! after the host's NAT undoes the address, a container's) gets ECONNRESET at
//! once instead of retransmitting for minutes; IMDS never sees the request.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_INGRESS, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_NET},
    helpers::generated::{
        bpf_csum_diff, bpf_redirect, bpf_skb_adjust_room, bpf_skb_change_tail, bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use imds_monitor_common::event::{AF_INET, AF_INET6};

use crate::{debug, packet::Segment};

const TCP_HEADER: usize = 20;
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const ETH_HEADER: usize = 14;
const TCP_RST_ACK: u8 = 0x14;
const IPPROTO_TCP: u8 = 6;

/// Returns the TC verdict: a redirect of the reset, or a plain drop when the
/// packet cannot be rewritten (IP options, a GSO packet, a failed helper).
#[inline(always)]
pub fn reset_client(ctx: &TcContext, segment: &Segment) -> i32 {
    let sent = build_reset(ctx, segment).is_some();
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if sent {
        debug::flow(debug::Event::ResetSent, segment.key.sport, ifindex);
        unsafe { bpf_redirect(ifindex, BPF_F_INGRESS as u64) as i32 }
    } else {
        debug::flow(debug::Event::ResetFailed, segment.key.sport, ifindex);
        TC_ACT_SHOT as i32
    }
}

/// One's-complement fold of a 32-bit partial sum. bpf_csum_diff adds the
/// bytes as they lie in memory, so the result is stored as is (native order),
/// like the kernel's csum_fold.
#[inline(always)]
fn fold(sum: i64) -> u16 {
    let mut s = sum as u64 & 0xffff_ffff;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[inline(always)]
fn checksum(words: &mut [u8]) -> u16 {
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            words.as_mut_ptr().cast(),
            words.len() as u32,
            0,
        )
    };
    fold(sum)
}

#[inline(always)]
fn store(ctx: &TcContext, offset: usize, bytes: &[u8]) -> Option<()> {
    let ret = unsafe {
        bpf_skb_store_bytes(
            ctx.as_ptr().cast(),
            offset as u32,
            bytes.as_ptr().cast(),
            bytes.len() as u32,
            0,
        )
    };
    (ret == 0).then_some(())
}

/// The reset's TCP header: ports swapped, seq = what the client expects next
/// from the endpoint (its ack), ack = the end of the dropped segment.
#[inline(always)]
fn tcp_header(segment: &Segment) -> [u8; TCP_HEADER] {
    let mut tcp = [0u8; TCP_HEADER];
    tcp[0..2].copy_from_slice(&segment.key.dport.to_be_bytes());
    tcp[2..4].copy_from_slice(&segment.key.sport.to_be_bytes());
    tcp[4..8].copy_from_slice(&segment.ack.to_be_bytes());
    let end = segment.seq.wrapping_add(segment.payload_len);
    tcp[8..12].copy_from_slice(&end.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = TCP_RST_ACK;
    tcp
}

#[inline(always)]
fn build_reset(ctx: &TcContext, segment: &Segment) -> Option<()> {
    // A GSO packet would be split after this point: not rewritable here.
    if unsafe { (*ctx.skb.skb).gso_segs } > 1 {
        return None;
    }
    let l3 = segment.l3_offset as usize;
    let plain = match segment.key.family {
        AF_INET => IPV4_HEADER,
        AF_INET6 => IPV6_HEADER,
        _ => return None,
    };
    // IPv4 options or IPv6 extension headers: taken out first, so that the
    // reset has a plain IP header. The kernel moves the headers before them
    // (not the TCP header), so the checksum offload state still points at
    // the TCP header.
    let extra = (segment.l4_offset as usize).saturating_sub(l3 + plain);
    if extra != 0 {
        let ret = unsafe {
            bpf_skb_adjust_room(ctx.as_ptr().cast(), -(extra as i32), BPF_ADJ_ROOM_NET, 0)
        };
        if ret != 0 {
            return None;
        }
    }
    let l4 = l3 + plain;
    // The MACs, swapped: the host takes the reset as addressed to it.
    let eth: [u8; ETH_HEADER] = ctx.load(0).ok()?;
    let mut swapped = eth;
    swapped[0..6].copy_from_slice(&eth[6..12]);
    swapped[6..12].copy_from_slice(&eth[0..6]);
    let mut tcp = tcp_header(segment);
    let ret = unsafe { bpf_skb_change_tail(ctx.as_ptr().cast(), (l4 + TCP_HEADER) as u32, 0) };
    if ret != 0 {
        return None;
    }
    store(ctx, 0, &swapped)?;
    if segment.key.family == AF_INET {
        let (client, endpoint) = (&segment.key.saddr[..4], &segment.key.daddr[..4]);
        let mut ip = [0u8; IPV4_HEADER];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((IPV4_HEADER + TCP_HEADER) as u16).to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = IPPROTO_TCP;
        ip[12..16].copy_from_slice(endpoint);
        ip[16..20].copy_from_slice(client);
        let sum = checksum(&mut ip);
        ip[10..12].copy_from_slice(&sum.to_ne_bytes());
        // Pseudo-header (source, destination, zero, protocol, TCP length), then the header.
        let mut pseudo = [0u8; 12 + TCP_HEADER];
        pseudo[0..4].copy_from_slice(endpoint);
        pseudo[4..8].copy_from_slice(client);
        pseudo[9] = IPPROTO_TCP;
        pseudo[10..12].copy_from_slice(&(TCP_HEADER as u16).to_be_bytes());
        pseudo[12..].copy_from_slice(&tcp);
        let sum = checksum(&mut pseudo);
        tcp[16..18].copy_from_slice(&sum.to_ne_bytes());
        store(ctx, l3, &ip)?;
    } else {
        let (client, endpoint) = (&segment.key.saddr, &segment.key.daddr);
        let mut ip = [0u8; IPV6_HEADER];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(TCP_HEADER as u16).to_be_bytes());
        ip[6] = IPPROTO_TCP;
        ip[7] = 64;
        ip[8..24].copy_from_slice(endpoint);
        ip[24..40].copy_from_slice(client);
        let mut pseudo = [0u8; 40 + TCP_HEADER];
        pseudo[0..16].copy_from_slice(endpoint);
        pseudo[16..32].copy_from_slice(client);
        pseudo[34..36].copy_from_slice(&(TCP_HEADER as u16).to_be_bytes());
        pseudo[39] = IPPROTO_TCP;
        pseudo[40..].copy_from_slice(&tcp);
        let sum = checksum(&mut pseudo);
        tcp[16..18].copy_from_slice(&sum.to_ne_bytes());
        store(ctx, l3, &ip)?;
    }
    store(ctx, l4, &tcp)?;
    Some(())
}
