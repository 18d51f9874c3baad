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
