//! Records the kernel sends to the daemon through the ring buffer.

use crate::http::{METHOD_CAP, PATH_CAP};

/// First byte of every ring-buffer record: which struct follows.
pub mod kind {
    pub const REQUEST: u8 = 1;
    pub const EXEC: u8 = 2;
    pub const FORK: u8 = 3;
    pub const EXIT: u8 = 4;
    pub const RESPONSE: u8 = 5;
}

/// Who opened a connection, captured in the kernel when connect() ran, so a
/// process that exits right after its request is still named.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub cgroup_id: u64,
    /// `bpf_ktime_get_boot_ns` at connect().
    pub boot_ns: u64,
    /// Process id (thread group id) and thread id, as the host sees them.
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    /// Policy exception that covers this process: its index + 1, 0 for none.
    /// Decided at connect(), so a process's first request already has it.
    pub exempt_rule: u32,
    pub _pad: u32,
}

impl Owner {
    pub const fn zeroed() -> Self {
        Self {
            cgroup_id: 0,
            boot_ns: 0,
            tgid: 0,
            pid: 0,
            uid: 0,
            gid: 0,
            comm: [0; 16],
            exempt_rule: 0,
            _pad: 0,
        }
    }
}

/// How a request's [`Owner`] was found (`RequestEvent::attribution`).
pub mod attribution {
    /// Not found: the connection predates the monitor, or its socket lives
    /// outside the watched cgroup subtree.
    pub const NONE: u8 = 0;
    /// The packet's own socket (a host process).
    pub const SOCKET: u8 = 1;
    /// A forwarded packet (a container behind NAT), matched by destination
    /// and initial sequence number, which NAT leaves alone.
    pub const SEQUENCE: u8 = 2;
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
    /// How `owner` was found: [`attribution`].
    pub attribution: u8,
    pub _pad: u8,
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
    pub owner: Owner,
    /// Position of this request on its connection (0, 1, ...): the response
    /// with the same index answers it.
    pub request_index: u16,
    /// 1 when the request was forwarded (no local socket).
    pub forwarded: u8,
    pub _pad2: u8,
    pub _pad3: u32,
}

/// The status line of a response from an endpoint, seen on the way in.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ResponseEvent {
    pub kind: u8,
    pub family: u8,
    /// IP TTL / IPv6 hop limit of the packet carrying the status line, as it
    /// reached this host (before forwarding to a container).
    pub ttl: u8,
    /// 1 when the connection's requests were forwarded (a container).
    pub forwarded: u8,
    pub status: u16,
    /// Index of the request this answers (see `RequestEvent::request_index`).
    pub request_index: u16,
    /// The client's side as in the request: source is the client.
    pub sport: u16,
    pub dport: u16,
    pub attribution: u8,
    // Not one `[u8; 3]`: zeroing that is a `memset` call on eBPF.
    pub _pad: u8,
    pub _pad1: u16,
    pub ifindex: u32,
    pub _pad2: u32,
    /// 8-byte aligned, like `FlowKey`'s, so they copy a word at a time.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub boot_ns: u64,
    pub owner: Owner,
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
            attribution: 0,
            _pad: 0,
            ifindex: 0,
            ttl: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            boot_ns: 0,
            socket_cookie: 0,
            method: [0; METHOD_CAP],
            path: [0; PATH_CAP],
            owner: Owner::zeroed(),
            request_index: 0,
            forwarded: 0,
            _pad2: 0,
            _pad3: 0,
        }
    }
}

/// Bytes of an executable's path kept.
pub const FILENAME_CAP: usize = 256;
/// Bytes of the NUL-separated argument list kept.
pub const ARGS_CAP: usize = 1024;
/// Arguments read at most.
pub const MAX_ARGS: usize = 24;

/// Bits of [`ExecEvent::flags`].
pub mod exec_flag {
    /// More arguments (or longer ones) than were kept.
    pub const ARGS_TRUNCATED: u8 = 1 << 0;
    /// The arguments could not be read from the process's memory.
    pub const ARGS_UNREADABLE: u8 = 1 << 1;
}

/// A successful execve(): the new program and its arguments, read from the
/// caller's memory at sys_enter_execve (a short-lived process keeps them).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub kind: u8,
    pub flags: u8,
    pub argc: u16,
    /// Bytes used in `args` (arguments, each NUL-terminated).
    pub args_len: u16,
    pub _pad: u16,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub boot_ns: u64,
    /// The name after exec.
    pub comm: [u8; 16],
    /// The path given to execve, NUL-terminated.
    pub filename: [u8; FILENAME_CAP],
    pub args: [u8; ARGS_CAP],
}

/// A new task (`FORK`: `tgid` forked `child`) or a process that ended
/// (`EXIT`: `tgid`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskEvent {
    pub kind: u8,
    // Not one `[u8; 3]`: zeroing that is a `memset` call on eBPF.
    pub _pad: u8,
    pub _pad1: u16,
    pub tgid: u32,
    pub child: u32,
    pub _pad2: u32,
    pub boot_ns: u64,
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
    /// Responses read (status lines), and connections whose responses could
    /// not be followed to the end.
    pub const RESPONSES: u32 = 4;
    pub const RESPONSES_LOST: u32 = 5;
    /// Segments of connections without state that did not start a request
    /// (their entry evicted, or opened before the monitor started).
    pub const UNTRACKED_SEGMENTS: u32 = 6;
    /// Packets to an endpoint the classifier could not read: IP fragments,
    /// IPv6 extension headers, data in a SYN.
    pub const UNREADABLE_PACKETS: u32 = 7;
    /// New connections not followed because the flow table was full.
    pub const FLOW_TABLE_FULL: u32 = 14;
    /// Requests classified, by class: `CLASS_BASE + class`.
    pub const CLASS_BASE: u32 = 8;
    pub const COUNT: u32 = 16;
}
