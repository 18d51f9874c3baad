//! The classifier run without attaching it: the eBPF object embedded in the
//! daemon binary, loaded on its own and run with `BPF_PROG_TEST_RUN` on
//! hand-made packets. The kernel runs the program on a copy of the bytes and
//! returns its verdict, its run time and the packet as the program left it
//! (a reset, when it rewrote one); nothing is sent anywhere. The events it
//! emits are read from its ring buffer.
//!
//! Used by the benchmark (`bench::isolated`) and the differential test of
//! the classifier (`tests/differential.rs`).

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::{
    EbpfLoader,
    maps::{Array, HashMap, MapData, RingBuf},
    programs::{ProgramFd, SchedClassifier},
};
use imds_monitor_common::{
    class::RequestClass,
    config::{Endpoints, action},
    event::{Owner, RequestEvent, kind},
    flow::{FlowKey, SeqKey},
};

/// TC verdicts as `BPF_PROG_TEST_RUN` reports them (`retval`).
pub mod tc {
    /// `TC_ACT_UNSPEC` (-1): the next program or the default action decides.
    pub const UNSPEC: u32 = u32::MAX;
    pub const SHOT: u32 = 2;
    /// `bpf_redirect`'s return value: the (rewritten) packet goes elsewhere.
    pub const REDIRECT: u32 = 7;
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// Ethernet header length.
pub const ETH_LEN: usize = 14;

/// The eBPF object of the daemon at `daemon`, read into memory.
pub fn daemon_object(daemon: &Path) -> Result<Vec<u8>> {
    let binary = std::fs::read(daemon).with_context(|| format!("reading {}", daemon.display()))?;
    let object = embedded_object(&binary).context("finding the eBPF object in the daemon")?;
    Ok(object.to_vec())
}

/// The eBPF object the daemon embeds (aya-build's `include_bytes_aligned!`),
/// found by its ELF header: little-endian ELF64 for machine EM_BPF.
pub fn embedded_object(binary: &[u8]) -> Result<&[u8]> {
    const EM_BPF: u16 = 247;
    let mut at = 0;
    while let Some(found) = find(&binary[at..], b"\x7fELF\x02\x01") {
        let start = at + found;
        if let Some(object) = elf_at(&binary[start..])
            && u16::from_le_bytes([object[18], object[19]]) == EM_BPF
        {
            return Ok(object);
        }
        at = start + 1;
    }
    bail!("no EM_BPF ELF object in the binary")
}

/// The ELF64 file starting at `bytes[0]`, cut to its length: the end of the
/// section header table or of the last section, whichever is later.
fn elf_at(bytes: &[u8]) -> Option<&[u8]> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    let shoff = usize::try_from(u64_at(40)?).ok()?;
    let shentsize = usize::from(u16_at(58)?);
    let shnum = usize::from(u16_at(60)?);
    if shentsize != 64 || shnum == 0 {
        return None;
    }
    let mut end = shoff.checked_add(shentsize * shnum)?;
    for i in 0..shnum {
        let header = shoff + i * shentsize;
        const SHT_NOBITS: u32 = 8;
        let kind = u32::from_le_bytes(bytes.get(header + 4..header + 8)?.try_into().ok()?);
        if kind == SHT_NOBITS {
            continue;
        }
        let offset = usize::try_from(u64_at(header + 24)?).ok()?;
        let size = usize::try_from(u64_at(header + 32)?).ok()?;
        end = end.max(offset.checked_add(size)?);
    }
    bytes.get(..end)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Endpoints for `ENDPOINTS`: IPv4 addresses and IPv6 addresses, all on port 80.
pub fn endpoints(v4: &[[u8; 4]], v6: &[[u8; 16]]) -> Endpoints {
    let mut endpoints = Endpoints::empty();
    for (i, addr) in v4.iter().enumerate() {
        endpoints.v4_addrs[i] = u32::from_ne_bytes(*addr);
        endpoints.v4_ports[i] = 80u16.to_be();
    }
    endpoints.v4_count = v4.len() as u32;
    for (i, addr) in v6.iter().enumerate() {
        endpoints.v6_addrs[i] = *addr;
        endpoints.v6_ports[i] = 80u16.to_be();
    }
    endpoints.v6_count = v6.len() as u32;
    endpoints
}

/// Class actions as the daemon writes them into `ACTIONS`.
pub type Actions = [u8; RequestClass::COUNT];

/// Alert mode (and the daemon without a policy): everything passes.
pub const ALERT: Actions = [action::PASS; RequestClass::COUNT];

/// Enforce mode with the default policy: IMDSv1 reads, and what the
/// classifier cannot judge, are dropped.
pub const ENFORCE: Actions = {
    let mut actions = ALERT;
    actions[RequestClass::V1Get as usize] = action::DROP;
    actions[RequestClass::Incomplete as usize] = action::DROP;
    actions
};

/// The object's classifier programs, loaded (not attached), with the maps
/// a test reads and writes.
pub struct Classifier {
    // Owns the programs and maps the descriptors below refer to.
    ebpf: aya::Ebpf,
    pub classify: ProgramFd,
    pub passthrough: ProgramFd,
    events: RingBuf<MapData>,
}

impl Classifier {
    /// Loads `object` with `endpoints` watched and `actions` in `ACTIONS`.
    pub fn load(object: &[u8], endpoints: &Endpoints, actions: &Actions) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .override_global("ENDPOINTS", endpoints, true)
            .load(object)
            .context("loading the eBPF object")?;
        let mut fd = |name: &str| -> Result<ProgramFd> {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()?;
            program.load().with_context(|| format!("loading {name}"))?;
            Ok(program.fd()?.try_clone()?)
        };
        let classify = fd("imds_classify")?;
        let passthrough = fd("imds_passthrough")?;
        {
            let mut map: Array<_, u8> =
                Array::try_from(ebpf.map_mut("ACTIONS").context("no map ACTIONS")?)?;
            for (class, &act) in actions.iter().enumerate() {
                map.set(class as u32, act, 0).context("writing ACTIONS")?;
            }
        }
        let events = RingBuf::try_from(ebpf.take_map("EVENTS").context("no map EVENTS")?)?;
        Ok(Self {
            ebpf,
            classify,
            passthrough,
            events,
        })
    }

    /// The request events emitted since the last call, in order. Other
    /// records (there are none from this program) are skipped.
    pub fn request_events(&mut self) -> Vec<RequestEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if let Some(event) = request_event(&item) {
                out.push(event);
            }
        }
        out
    }

    /// Events waiting in the ring buffer, counted and discarded.
    pub fn drain_events(&mut self) -> usize {
        let mut n = 0;
        while self.events.next().is_some() {
            n += 1;
        }
        n
    }

    /// What the sock_ops hook records for a connection whose initial
    /// sequence number + 1 is `key.seq` (`BY_SEQUENCE`): the classifier then
    /// knows that sequence number as the connection's first payload byte.
    pub fn set_by_sequence(&mut self, key: &SeqKey, owner: &Owner) -> Result<()> {
        let mut map: HashMap<_, SeqKey, Owner> =
            HashMap::try_from(self.ebpf.map_mut("BY_SEQUENCE").context("no BY_SEQUENCE")?)?;
        map.insert(key, owner, 0).context("writing BY_SEQUENCE")
    }

    pub fn remove_by_sequence(&mut self, key: &SeqKey) {
        if let Some(map) = self.ebpf.map_mut("BY_SEQUENCE")
            && let Ok(mut map) = HashMap::<_, SeqKey, Owner>::try_from(map)
        {
            let _ = map.remove(key);
        }
    }

    /// Forgets a connection's state (`FLOWS`).
    pub fn remove_flow(&mut self, key: &FlowKey) {
        if let Some(map) = self.ebpf.map_mut("FLOWS")
            && let Ok(mut map) =
                HashMap::<_, FlowKey, imds_monitor_common::flow::FlowState>::try_from(map)
        {
            let _ = map.remove(key);
        }
    }
}

/// A ring-buffer record as a request event, if it is one.
pub fn request_event(bytes: &[u8]) -> Option<RequestEvent> {
    if bytes.len() < size_of::<RequestEvent>() || bytes[0] != kind::REQUEST {
        return None;
    }
    // SAFETY: long enough, and every bit pattern is a valid RequestEvent
    // (integers and byte arrays only).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RequestEvent>()) })
}

/// One run of a program on a packet.
#[derive(Debug, Clone)]
pub struct Run {
    /// The program's return value (see [`tc`]).
    pub retval: u32,
    /// The kernel's time for the run, ns (at least 1).
    pub duration: u32,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN` (aya has no wrapper for it).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs `program` once on `packet` (an Ethernet frame).
pub fn test_run(program: &ProgramFd, packet: &[u8]) -> Result<Run> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: program.as_fd().as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; the
    // buffers it points to outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        bail!(
            "BPF_PROG_TEST_RUN on a {}-byte packet: {}",
            packet.len(),
            std::io::Error::last_os_error()
        );
    }
    out.truncate((attr.data_size_out as usize).min(out.len()));
    Ok(Run {
        retval: attr.retval,
        // A run faster than the clock's resolution reads 0: count it as 1.
        duration: attr.duration.max(1),
        packet: out,
    })
}

/// The IP layer of a hand-made TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ip {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        /// IPv4 options (a multiple of 4 bytes, at most 40).
        options: &'static [u8],
        /// IP flags and fragment offset field (host order), e.g. 0x4000 (DF).
        frags: u16,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        /// Extension headers before TCP, each whole (next-header bytes are
        /// filled in).
        extensions: &'static [&'static [u8]],
    },
}

/// A TCP segment's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
}

const IPPROTO_TCP: u8 = 6;

/// An Ethernet/IP/TCP packet (checksums are not checked by the classifier
/// and left 0; MAC addresses 0).
pub fn tcp_packet(ip: &Ip, tcp: &Tcp, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(ETH_LEN + 60 + 20 + payload.len());
    p.extend_from_slice(&[0; 12]);
    match ip {
        Ip::V4 {
            src,
            dst,
            options,
            frags,
        } => {
            p.extend_from_slice(&0x0800u16.to_be_bytes());
            let ihl = 20 + options.len();
            let total = (ihl + 20 + payload.len()) as u16;
            let mut h = [0u8; 20];
            h[0] = 0x40 | (ihl / 4) as u8;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[6..8].copy_from_slice(&frags.to_be_bytes());
            h[8] = 64;
            h[9] = IPPROTO_TCP;
            h[12..16].copy_from_slice(src);
            h[16..20].copy_from_slice(dst);
            p.extend_from_slice(&h);
            p.extend_from_slice(options);
        }
        Ip::V6 {
            src,
            dst,
            extensions,
        } => {
            p.extend_from_slice(&0x86ddu16.to_be_bytes());
            let ext_len: usize = extensions.iter().map(|e| e.len()).sum();
            let mut h = [0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&((ext_len + 20 + payload.len()) as u16).to_be_bytes());
            h[6] = extensions.first().map_or(IPPROTO_TCP, |e| e[0]);
            h[7] = 64;
            h[8..24].copy_from_slice(src);
            h[24..40].copy_from_slice(dst);
            p.extend_from_slice(&h);
            // Each extension header names the next one: its own first byte
            // says what it is, replaced by the next one's kind.
            for (i, ext) in extensions.iter().enumerate() {
                let mut e = ext.to_vec();
                e[0] = extensions.get(i + 1).map_or(IPPROTO_TCP, |n| n[0]);
                p.extend_from_slice(&e);
            }
        }
    }
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&tcp.sport.to_be_bytes());
    h[2..4].copy_from_slice(&tcp.dport.to_be_bytes());
    h[4..8].copy_from_slice(&tcp.seq.to_be_bytes());
    h[8..12].copy_from_slice(&tcp.ack.to_be_bytes());
    h[12] = 5 << 4;
    h[13] = tcp.flags;
    h[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    p.extend_from_slice(&h);
    p.extend_from_slice(payload);
    p
}

/// The Internet checksum's one's-complement sum of `bytes` (not inverted).
pub fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header plus one section header, at `shoff`.
    fn tiny_elf(machine: u16) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 8 + 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[18..20].copy_from_slice(&machine.to_le_bytes());
        elf[40..48].copy_from_slice(&72u64.to_le_bytes());
        elf[58..60].copy_from_slice(&64u16.to_le_bytes());
        elf[60..62].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn finds_the_bpf_object_among_other_elf_bytes() {
        let mut binary = b"host code".to_vec();
        binary.extend(tiny_elf(62)); // x86-64: not it
        let start = binary.len();
        binary.extend(tiny_elf(247));
        binary.extend(b"trailing data");
        let object = embedded_object(&binary).unwrap();
        assert_eq!(object, &binary[start..start + 136]);
        assert!(embedded_object(b"\x7fELF\x02\x01 cut short").is_err());
    }

    #[test]
    fn ipv4_packets_carry_their_payload_behind_their_headers() {
        let ip = Ip::V4 {
            src: [198, 18, 0, 2],
            dst: [198, 18, 0, 254],
            options: &[],
            frags: 0x4000,
        };
        let tcp = Tcp {
            sport: 4242,
            dport: 80,
            seq: 7,
            ack: 1,
            flags: ACK | PSH,
        };
        let p = tcp_packet(&ip, &tcp, b"GET");
        assert_eq!(p.len(), 57);
        assert_eq!(&p[30..34], &[198, 18, 0, 254]);
        assert_eq!(u16::from_be_bytes([p[16], p[17]]), 43);
        assert_eq!(&p[54..], b"GET");
        let with_options = Ip::V4 {
            src: [1; 4],
            dst: [2; 4],
            options: &[1, 1, 1, 0],
            frags: 0,
        };
        let p = tcp_packet(&with_options, &tcp, b"x");
        assert_eq!(p[14], 0x46);
        assert_eq!(p.len(), 14 + 24 + 20 + 1);
    }

    #[test]
    fn ipv6_extension_headers_chain_to_tcp() {
        const DEST: &[u8] = &[60, 0, 1, 4, 0, 0, 0, 0];
        let ip = Ip::V6 {
            src: [1; 16],
            dst: [2; 16],
            extensions: &[DEST, DEST],
        };
        let tcp = Tcp {
            sport: 1,
            dport: 80,
            seq: 0,
            ack: 0,
            flags: ACK,
        };
        let p = tcp_packet(&ip, &tcp, b"ab");
        assert_eq!(p[14 + 6], 60);
        assert_eq!(p[54], 60);
        assert_eq!(p[62], IPPROTO_TCP);
        assert_eq!(u16::from_be_bytes([p[18], p[19]]), 16 + 20 + 2);
        assert_eq!(&p[p.len() - 2..], b"ab");
    }

    #[test]
    fn ones_sum_folds_carries() {
        assert_eq!(ones_sum(&[0xff, 0xff, 0x00, 0x02]), 0x0002);
        assert_eq!(ones_sum(&[0x12]), 0x1200);
    }
}
