//! Records the kernel sends to the daemon through the ring buffer.

use crate::http::{METHOD_CAP, PATH_CAP};

/// First byte of every ring-buffer record: which struct follows.
pub mod kind {
    pub const REQUEST: u8 = 1;
}

/// Address family of a [`crate::flow::FlowKey`] and of events.
pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

/// One classified IMDS request, emitted exactly once per request head.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RequestEvent {
    pub kind: u8,
    /// [`crate::class::RequestClass`] as `u8`.
    pub class: u8,
    /// [`crate::class::InvalidReason`] as `u8`.
    pub reason: u8,
    /// [`crate::class::Verdict`] as `u8`.
    pub verdict: u8,
    pub method_len: u8,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
    /// Bits of [`crate::http::flag`].
    pub flags: u16,
    /// Path length as sent (may exceed `PATH_CAP`; then the path is truncated).
    pub path_len: u16,
    /// Source and destination port, host byte order.
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    /// Interface the classifier saw the request on.
    pub ifindex: u32,
    /// Token TTL of a token PUT, seconds.
    pub ttl: u32,
    /// Source and destination address; IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// `bpf_ktime_get_boot_ns` when the head completed.
    pub boot_ns: u64,
    /// Socket cookie of the sending socket, 0 for forwarded packets.
    pub socket_cookie: u64,
    pub method: [u8; METHOD_CAP],
    pub path: [u8; PATH_CAP],
}

impl RequestEvent {
    pub const fn zeroed() -> Self {
        Self {
            kind: kind::REQUEST,
            class: 0,
            reason: 0,
            verdict: 0,
            method_len: 0,
            family: 0,
            flags: 0,
            path_len: 0,
            sport: 0,
            dport: 0,
            _pad: 0,
            ifindex: 0,
            ttl: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            boot_ns: 0,
            socket_cookie: 0,
            method: [0; METHOD_CAP],
            path: [0; PATH_CAP],
        }
    }
}

/// Indexes of the kernel's per-CPU statistics array.
pub mod stat {
    /// Records dropped because the ring buffer was full.
    pub const LOST_EVENTS: u32 = 0;
    /// Segments the classifier had already seen (TCP retransmissions), skipped.
    pub const RETRANSMITS: u32 = 1;
    /// Segments after a sequence gap (a lost segment or a connection seen mid-way).
    pub const SEQUENCE_GAPS: u32 = 2;
    /// Payload bytes past what the classifier inspects in one packet.
    pub const TRUNCATED_PACKETS: u32 = 3;
    /// Requests classified, by class: `CLASS_BASE + class`.
    pub const CLASS_BASE: u32 = 8;
    pub const COUNT: u32 = 16;
}
