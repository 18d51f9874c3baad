//! Load-time configuration of the classifier: which endpoints to watch.
//!
//! Set as a read-only global before the program is loaded, so the verifier
//! knows the counts and non-IMDS packets leave after a few compares.

/// Endpoints per family the classifier can watch.
pub const MAX_V4_ENDPOINTS: usize = 8;
pub const MAX_V6_ENDPOINTS: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// IPv4 addresses in network byte order, as read from a packet.
    pub v4_addrs: [u32; MAX_V4_ENDPOINTS],
    /// Ports in network byte order.
    pub v4_ports: [u16; MAX_V4_ENDPOINTS],
    pub v6_addrs: [[u8; 16]; MAX_V6_ENDPOINTS],
    pub v6_ports: [u16; MAX_V6_ENDPOINTS],
    pub v4_count: u32,
    pub v6_count: u32,
}

impl Endpoints {
    pub const fn empty() -> Self {
        Self {
            v4_addrs: [0; MAX_V4_ENDPOINTS],
            v4_ports: [0; MAX_V4_ENDPOINTS],
            v6_addrs: [[0; 16]; MAX_V6_ENDPOINTS],
            v6_ports: [0; MAX_V6_ENDPOINTS],
            v4_count: 0,
            v6_count: 0,
        }
    }
}

/// What the classifier does with a request of a class (`ACTIONS` map, by class).
pub mod action {
    /// Let it through.
    pub const PASS: u8 = 0;
    /// Drop it before it reaches IMDS and reset the client's connection.
    pub const DROP: u8 = 2;
}

/// Policy exceptions the kernel can evaluate: at most this many.
pub const MAX_EXCEPTIONS: usize = 64;
/// Bytes of a cgroup path, and of an executable path, used as map keys.
pub const EXEMPT_PATH_CAP: usize = 256;
/// Bytes of a cgroup directory name (a systemd unit) used as a map key.
pub const EXEMPT_LEAF_CAP: usize = 128;
/// Hex digits of a container id used as a map key (Docker's short id).
pub const EXEMPT_CONTAINER_ID_CAP: usize = 12;

/// Which exceptions (bit i = exception i) a cgroup matches, per kind of
/// matcher: an exception applies when every kind it uses matched, on the
/// cgroup or any ancestor (a rule on a unit also covers its sub-cgroups).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExemptBits {
    pub cgroup_prefix: u64,
    pub container_id: u64,
    pub systemd_unit: u64,
}

/// Indexes of the `EXCEPTION_NEEDS` array: per kind, which exceptions use it.
pub mod needs {
    pub const CGROUP_PREFIX: u32 = 0;
    pub const CONTAINER_ID: u32 = 1;
    pub const SYSTEMD_UNIT: u32 = 2;
    pub const EXECUTABLE: u32 = 3;
    /// Bits of the exceptions that exist.
    pub const DEFINED: u32 = 4;
    pub const COUNT: u32 = 5;
}
