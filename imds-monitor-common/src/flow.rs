//! Per-connection state the classifier keeps between TCP segments.

use crate::{event::Owner, http::RequestParser, response::ResponseReader};

/// A TCP connection to an IMDS endpoint, as seen on the classifier's interface.
/// 8-byte aligned so that the kernel copies its addresses a word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    // Not one `[u8; 3]`: zeroing that is a `memset` call on eBPF.
    pub _pad: u8,
    pub _pad2: u16,
}

/// Bits of [`FlowState::flags`].
pub mod flow_flag {
    /// The stream position is unknown (junk, an overlong head, a gap inside a
    /// head): ignore payload until the connection ends.
    pub const DESYNC: u8 = 1 << 0;
    /// The responses cannot be followed any more (chunked body, a gap).
    pub const RESPONSES_LOST: u8 = 1 << 1;
    /// A request on this connection was dropped: every later segment is
    /// dropped too, and the client was sent a reset.
    pub const BLOCKED: u8 = 1 << 2;
}

/// Value of the per-connection map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FlowState {
    pub parser: RequestParser,
    /// Who opened the connection, once found (`attribution` != NONE).
    pub owner: Owner,
    /// The server's side: status codes, in request order.
    pub response: ResponseReader,
    /// Sequence number of the next payload byte not yet fed to the parser.
    pub next_seq: u32,
    /// Sequence number of the first payload byte seen: the initial sequence
    /// number + 1, unless the connection was open before the monitor saw it.
    pub first_seq: u32,
    /// Body bytes of the last request still to skip (Content-Length).
    pub body_left: u32,
    /// Next response byte not yet read (0 until the first one is seen).
    pub response_next_seq: u32,
    /// Requests the server will answer (complete or malformed heads), and
    /// responses read: response n answers request n.
    pub requests: u16,
    pub responses: u16,
    pub flags: u8,
    /// [`crate::event::attribution`] of `owner`.
    pub attribution: u8,
    /// The requests were forwarded (no local socket): a container or VM
    /// behind this host, one more hop from IMDS.
    pub forwarded: u8,
    pub _pad: u8,
    /// `bpf_ktime_get_boot_ns` of the last payload segment: the daemon
    /// removes entries idle for long (connections that vanished unseen).
    pub last_seen_ns: u64,
}

/// Key of the map that finds a forwarded connection's owner: destination
/// and initial sequence number + 1, both unchanged by masquerade.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqKey {
    pub daddr: [u8; 16],
    /// Host byte order.
    pub dport: u16,
    pub family: u8,
    pub _pad: u8,
    pub seq: u32,
}

impl FlowState {
    pub const fn new(next_seq: u32) -> Self {
        Self {
            parser: RequestParser::new(),
            owner: Owner::zeroed(),
            response: ResponseReader::new(),
            next_seq,
            first_seq: 0,
            body_left: 0,
            response_next_seq: 0,
            requests: 0,
            responses: 0,
            flags: 0,
            attribution: 0,
            forwarded: 0,
            _pad: 0,
            last_seen_ns: 0,
        }
    }
}
