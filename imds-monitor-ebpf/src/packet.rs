//! Header parsing: finds TCP segments to a watched IMDS endpoint and leaves
//! every other packet after a few compares.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use imds_monitor_common::{
    config::{MAX_V4_ENDPOINTS, MAX_V6_ENDPOINTS},
    event::{AF_INET, AF_INET6},
    flow::FlowKey,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::ENDPOINTS;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;

/// What a packet is to the classifier.
pub enum Packet {
    /// Not for a watched endpoint (or not TCP): left alone.
    Other,
    /// A TCP segment to a watched endpoint.
    Segment(Segment),
    /// For a watched endpoint's address, but not readable as one TCP
    /// segment: an IP fragment, or IPv6 extension headers not followed.
    /// `key` has the addresses, and the ports when a TCP header was found.
    Unreadable(FlowKey),
}

/// A TCP segment to a watched endpoint.
pub struct Segment {
    /// Always client -> endpoint, also for responses (so both directions
    /// find the same connection state).
    pub key: FlowKey,
    /// IPv4 TTL or IPv6 hop limit as the packet arrived here.
    pub ttl: u8,
    pub seq: u32,
    /// Acknowledgement number (what the sender has received so far).
    pub ack: u32,
    /// Offset of the IP header and of the TCP header from the packet start
    /// (more than a plain IP header apart with IPv4 options or IPv6
    /// extension headers).
    pub l3_offset: u32,
    pub l4_offset: u32,
    pub syn: bool,
    pub fin_or_rst: bool,
    /// Offset of the TCP payload from the start of the packet.
    pub payload_offset: u32,
    pub payload_len: u32,
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// The watched port (network byte order) of IPv4 endpoint `addr` (as read
/// from a packet), if it is one.
#[inline(always)]
fn watched_v4_port(addr: u32) -> Option<u16> {
    let count = unsafe { core::ptr::read_volatile(&ENDPOINTS.v4_count) } as usize;
    for i in 0..MAX_V4_ENDPOINTS {
        if i >= count {
            break;
        }
        if unsafe { core::ptr::read_volatile(&ENDPOINTS.v4_addrs[i]) } == addr {
            return Some(unsafe { core::ptr::read_volatile(&ENDPOINTS.v4_ports[i]) });
        }
    }
    None
}

#[inline(always)]
fn watched_v6_port(addr: &[u8; 16]) -> Option<u16> {
    let count = unsafe { core::ptr::read_volatile(&ENDPOINTS.v6_count) } as usize;
    for i in 0..MAX_V6_ENDPOINTS {
        if i >= count {
            break;
        }
        if unsafe { core::ptr::read_volatile(&ENDPOINTS.v6_addrs[i]) } == *addr {
            return Some(unsafe { core::ptr::read_volatile(&ENDPOINTS.v6_ports[i]) });
        }
    }
    None
}

/// Whether `addr`:`port_be` (both network byte order) is a watched endpoint.
#[inline(always)]
pub fn watched_v4(addr: u32, port_be: u16) -> bool {
    watched_v4_port(addr) == Some(port_be)
}

#[inline(always)]
pub fn watched_v6(addr: &[u8; 16], port_be: u16) -> bool {
    watched_v6_port(addr) == Some(port_be)
}

/// A packet leaving toward IMDS, as the classifier sees it.
#[inline(always)]
pub fn imds_packet(ctx: &TcContext) -> Packet {
    let eth: *const EthHdr = match ptr_at(ctx, 0) {
        Some(eth) => eth,
        None => return Packet::Other,
    };
    match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_IP => ipv4_segment::<false>(ctx),
        ETH_P_IPV6 => ipv6_segment::<false>(ctx),
        _ => Packet::Other,
    }
}

/// A TCP segment from a watched endpoint (a response), keyed like its request.
#[inline(always)]
pub fn imds_response_segment(ctx: &TcContext) -> Option<Segment> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let packet = match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_IP => ipv4_segment::<true>(ctx),
        ETH_P_IPV6 => ipv6_segment::<true>(ctx),
        _ => Packet::Other,
    };
    match packet {
        Packet::Segment(segment) => Some(segment),
        _ => None,
    }
}

const IP_MORE_FRAGMENTS: u16 = 0x2000;
const IP_FRAGMENT_OFFSET: u16 = 0x1fff;

/// `RESPONSE`: the endpoint is the packet's source, not its destination.
#[inline(always)]
fn ipv4_segment<const RESPONSE: bool>(ctx: &TcContext) -> Packet {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return Packet::Other;
    };
    let ip = unsafe { &*ip };
    if ip.proto != IPPROTO_TCP {
        return Packet::Other;
    }
    let (client, endpoint) = if RESPONSE {
        (ip.dst_addr, ip.src_addr)
    } else {
        (ip.src_addr, ip.dst_addr)
    };
    let Some(watched_port) = watched_v4_port(u32::from_ne_bytes(endpoint)) else {
        return Packet::Other;
    };
    let mut key = FlowKey {
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: AF_INET,
        _pad: 0,
        _pad2: 0,
    };
    key.saddr[..4].copy_from_slice(&client);
    key.daddr[..4].copy_from_slice(&endpoint);
    let frags = u16::from_be_bytes(ip.frags);
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if frags & IP_FRAGMENT_OFFSET != 0 || ihl < Ipv4Hdr::LEN {
        // A later fragment has no TCP header: whatever it carries cannot be judged.
        return if RESPONSE {
            Packet::Other
        } else {
            Packet::Unreadable(key)
        };
    }
    let fragmented = frags & IP_MORE_FRAGMENTS != 0;
    let l4 = EthHdr::LEN + ihl;
    let ip_len = u16::from_be_bytes(ip.tot_len) as u32;
    // A GSO packet may carry tot_len 0 (BIG TCP): fall back to the skb length.
    let l3_len = if ip_len != 0 {
        ip_len
    } else {
        ctx.len().saturating_sub(EthHdr::LEN as u32)
    };
    let packet = tcp_segment::<RESPONSE>(
        ctx,
        key,
        ip.ttl,
        watched_port,
        l4,
        l3_len.saturating_sub(ihl as u32),
    );
    match packet {
        // The first fragment: its TCP payload goes on in fragments not read.
        Packet::Segment(segment) if fragmented && !RESPONSE => Packet::Unreadable(segment.key),
        packet => packet,
    }
}

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DESTINATION: u8 = 60;
/// Extension headers followed before TCP (hop-by-hop, routing, destination).
const IPV6_MAX_EXTENSIONS: usize = 4;

#[inline(always)]
fn ipv6_segment<const RESPONSE: bool>(ctx: &TcContext) -> Packet {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN) else {
        return Packet::Other;
    };
    let ip = unsafe { &*ip };
    let (client, endpoint) = if RESPONSE {
        (ip.dst_addr, ip.src_addr)
    } else {
        (ip.src_addr, ip.dst_addr)
    };
    let Some(watched_port) = watched_v6_port(&endpoint) else {
        return Packet::Other;
    };
    let key = FlowKey {
        saddr: client,
        daddr: endpoint,
        sport: 0,
        dport: 0,
        family: AF_INET6,
        _pad: 0,
        _pad2: 0,
    };
    let payload_len = u16::from_be_bytes(ip.payload_len) as u32;
    let payload_len = if payload_len != 0 {
        payload_len
    } else {
        ctx.len()
            .saturating_sub((EthHdr::LEN + Ipv6Hdr::LEN) as u32)
    };
    // Extension headers before TCP: followed, so that they cannot carry a
    // request past the classifier; a fragment header cannot be judged.
    let mut next = ip.next_hdr;
    let mut offset = EthHdr::LEN + Ipv6Hdr::LEN;
    let mut i = 0;
    while i < IPV6_MAX_EXTENSIONS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION => {
                let Some(ext) = ptr_at::<[u8; 2]>(ctx, offset) else {
                    return unreadable::<RESPONSE>(key);
                };
                let ext = unsafe { *ext };
                next = ext[0];
                offset += (ext[1] as usize + 1) * 8;
            }
            _ => break,
        }
        i += 1;
    }
    match next {
        IPPROTO_TCP => {}
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION | IPV6_FRAGMENT => {
            return unreadable::<RESPONSE>(key);
        }
        _ => return Packet::Other,
    }
    let extensions = (offset - EthHdr::LEN - Ipv6Hdr::LEN) as u32;
    tcp_segment::<RESPONSE>(
        ctx,
        key,
        ip.hop_limit,
        watched_port,
        offset,
        payload_len.saturating_sub(extensions),
    )
}

/// What the request side makes of a packet it cannot read; responses are
/// only ever read, never judged.
#[inline(always)]
fn unreadable<const RESPONSE: bool>(key: FlowKey) -> Packet {
    if RESPONSE {
        Packet::Other
    } else {
        Packet::Unreadable(key)
    }
}

/// `l4_len`: bytes from the TCP header to the end of the IP payload.
#[inline(always)]
fn tcp_segment<const RESPONSE: bool>(
    ctx: &TcContext,
    mut key: FlowKey,
    ttl: u8,
    watched_port: u16,
    l4_offset: usize,
    l4_len: u32,
) -> Packet {
    // Bounds the offset for the verifier: IPv4 options or IPv6 extension
    // headers beyond it are not read.
    if l4_offset > 256 {
        return unreadable::<RESPONSE>(key);
    }
    let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4_offset) else {
        return unreadable::<RESPONSE>(key);
    };
    let tcp = unsafe { &*tcp };
    let (client_port, endpoint_port) = if RESPONSE {
        (tcp.dest, tcp.source)
    } else {
        (tcp.source, tcp.dest)
    };
    if u16::from_ne_bytes(endpoint_port) != watched_port {
        return Packet::Other;
    }
    key.sport = u16::from_be_bytes(client_port);
    key.dport = u16::from_be_bytes(endpoint_port);
    let doff = (tcp.doff() as u32) * 4;
    if doff < TcpHdr::LEN as u32 || doff > l4_len {
        return unreadable::<RESPONSE>(key);
    }
    Packet::Segment(Segment {
        key,
        ttl,
        seq: u32::from_be_bytes(tcp.seq),
        ack: u32::from_be_bytes(tcp.ack_seq),
        l3_offset: EthHdr::LEN as u32,
        syn: tcp.syn() != 0,
        fin_or_rst: tcp.fin() != 0 || tcp.rst() != 0,
        l4_offset: l4_offset as u32,
        payload_offset: l4_offset as u32 + doff,
        payload_len: l4_len - doff,
    })
}
