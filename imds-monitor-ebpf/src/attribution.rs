//! Who sent it: cgroup socket hooks record the process behind every
//! connection to a watched endpoint, for the classifier to attach to events.
//!
//! - `imds_connect4`/`imds_connect6` run in connect(), in the caller's
//!   context: pid, uid, comm and cgroup are the caller's. Keyed by socket
//!   cookie, which the classifier reads from a host process's packets.
//! - `imds_sockops` runs when the handshake completes and re-keys the owner by
//!   destination and initial sequence number: a container's packet reaches
//!   the host's interface forwarded (no socket) and masqueraded (other
//!   source), but with the same sequence numbers.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::LruHashMap,
    programs::{SockAddrContext, SockOpsContext},
};
use imds_monitor_common::{
    event::{AF_INET, AF_INET6, Owner},
    flow::SeqKey,
};

use crate::packet::{watched_v4, watched_v6};

/// Owner by socket cookie, written at connect().
#[map]
pub static CONNECTS: LruHashMap<u64, Owner> = LruHashMap::with_max_entries(16384, 0);

/// Owner by destination and initial sequence number + 1.
#[map]
pub static BY_SEQUENCE: LruHashMap<SeqKey, Owner> = LruHashMap::with_max_entries(16384, 0);

/// A connection's BY_SEQUENCE key by socket cookie, so that its close can
/// remove it (the sequence number is long past its initial one by then).
#[map]
pub static SEQ_KEYS: LruHashMap<u64, SeqKey> = LruHashMap::with_max_entries(16384, 0);

const ALLOW: i32 = 1;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_STATE_CB_FLAG: u32 = 1 << 2;
const BPF_TCP_CLOSE: u32 = 7;
const LINUX_AF_INET: u32 = 2;
const LINUX_AF_INET6: u32 = 10;

#[cgroup_sock_addr(connect4)]
pub fn imds_connect4(ctx: SockAddrContext) -> i32 {
    let addr = unsafe { &*ctx.sock_addr };
    // user_port holds the port in network byte order in its low 16 bits.
    if watched_v4(addr.user_ip4, addr.user_port as u16) {
        record_connect(&ctx);
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn imds_connect6(ctx: SockAddrContext) -> i32 {
    let addr = unsafe { &*ctx.sock_addr };
    if watched_v6(&ip6_bytes(addr.user_ip6), addr.user_port as u16) {
        record_connect(&ctx);
    }
    ALLOW
}

#[inline(always)]
fn ip6_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[inline(always)]
fn record_connect(ctx: &SockAddrContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let tgid = (pid_tgid >> 32) as u32;
    let mut owner = Owner {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        tgid,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        comm: [0; 16],
        exempt_rule: crate::exempt::owner_exemption(tgid),
        _pad: 0,
    };
    crate::copy::current_comm(&mut owner.comm);
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Err(e) = CONNECTS.insert(&cookie, &owner, 0) {
        crate::debug::owner_lost(0, e, tgid);
    }
}

#[sock_ops]
pub fn imds_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        // Only for the connections on_established asked it for.
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            // The socket is gone: so are its owner and its entry by initial
            // sequence number (the maps keep live connections instead of
            // filling up until LRU eviction).
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            if let Some(key) = unsafe { SEQ_KEYS.get(&cookie) } {
                let _ = BY_SEQUENCE.remove(key);
            }
            let _ = SEQ_KEYS.remove(&cookie);
            let _ = CONNECTS.remove(&cookie);
        }
        _ => {}
    }
    0
}

#[inline(always)]
fn on_established(ctx: &SockOpsContext) {
    // remote_port: network byte order in the upper 16 bits (little-endian hosts).
    let port_be = (ctx.remote_port() >> 16) as u16;
    let mut key = SeqKey {
        daddr: [0; 16],
        dport: u16::from_be(port_be),
        family: 0,
        _pad: 0,
        // Right after the handshake, snd_una = initial sequence number + 1.
        seq: unsafe { (*ctx.ops).snd_una },
    };
    match ctx.family() {
        LINUX_AF_INET => {
            let ip = ctx.remote_ip4();
            if !watched_v4(ip, port_be) {
                return;
            }
            key.family = AF_INET;
            let b = ip.to_ne_bytes();
            key.daddr[0] = b[0];
            key.daddr[1] = b[1];
            key.daddr[2] = b[2];
            key.daddr[3] = b[3];
        }
        LINUX_AF_INET6 => {
            let ip = ip6_bytes(ctx.remote_ip6());
            if !watched_v6(&ip, port_be) {
                return;
            }
            key.family = AF_INET6;
            key.daddr = ip;
        }
        _ => return,
    }
    // Tell this connection's close (BPF_SOCK_OPS_STATE_CB) to remove its owner.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(owner) = unsafe { CONNECTS.get(&cookie) } {
        match BY_SEQUENCE.insert(&key, owner, 0) {
            Ok(()) => {
                let _ = SEQ_KEYS.insert(&cookie, &key, 0);
            }
            Err(e) => crate::debug::owner_lost(1, e, owner.tgid),
        }
    }
}
