//! The classifier per packet type, in isolation: the eBPF object embedded in
//! the daemon under test, loaded on its own and run with `BPF_PROG_TEST_RUN`
//! on hand-made packets of IMDS connections. Nothing is attached and no
//! packet goes anywhere: the kernel runs the program on a copy of the bytes
//! and returns its verdict and run time.
//!
//! The live measurement (`phases::kernel_cost`) gives one figure per
//! workload; this one says where a connection's time goes (handshake,
//! request, close), and how much of it is cache misses: each workload runs
//! once with warm caches and once with 1 MiB of other memory touched before
//! every packet, as a busy host does between two packets of a connection.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use aya::{
    EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{ProgramFd, SchedClassifier},
};
use imds_monitor_common::config::Endpoints;

/// The endpoint the hand-made packets go to, as far as the program knows
/// (a benchmarking address: these bytes are never sent).
const ENDPOINT: [u8; 4] = [198, 18, 0, 254];
const CLIENT: [u8; 4] = [198, 18, 0, 2];
/// Memory touched before each packet in the cold runs.
const COLD_BYTES: usize = 1 << 20;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// What an SDK sends: IMDSv1, then IMDSv2 with a token of the real length.
const V1_REQUEST: &[u8] = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: imds-client/0.1.0\r\nAccept: */*\r\n\r\n";
const V2_REQUEST: &[u8] = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nUser-Agent: imds-client/0.1.0\r\nAccept: */*\r\nX-aws-ec2-metadata-token: AQAEAHhYN2rCm5wTf1cXMXNJ0dpZ4DvJ6OJuE3DsEnO4PYuAFgvj3gUYVw==\r\n\r\n";

/// Median run time (ns) of each packet of a one-request connection.
pub struct ConnectionRow {
    pub label: String,
    pub request_bytes: usize,
    pub cold: bool,
    pub syn: u32,
    pub handshake_ack: u32,
    pub request: u32,
    pub ack: u32,
    pub fin: u32,
}

impl ConnectionRow {
    /// The sum of the medians: one connection's packets.
    pub fn connection(&self) -> u32 {
        self.syn + self.handshake_ack + self.request + self.ack + self.fin
    }
}

pub struct Isolated {
    pub rows: Vec<ConnectionRow>,
    /// Median ns of a 1 KiB non-IMDS packet: classifier, empty program.
    pub non_imds: (u32, u32),
    pub iterations: u32,
}

/// Runs every packet type `iterations` times (a third of that when cold).
pub fn measure(daemon: &Path, iterations: u32) -> Result<Isolated> {
    let binary = std::fs::read(daemon).with_context(|| format!("reading {}", daemon.display()))?;
    let object = embedded_object(&binary).context("finding the eBPF object in the daemon")?;
    let mut loaded = Loaded::new(object)?;

    let other = packet([198, 18, 0, 1], 5555, 1, ACK | PSH, &[b'x'; 1024]);
    let non_imds = (
        median(runs(&loaded.classify, &other, iterations)?)?,
        median(runs(&loaded.passthrough, &other, iterations)?)?,
    );
    // IMDSv1 and IMDSv2 connections take turns, one connection each, so
    // that the machine's load changing during the run (other guests on the
    // host) weighs on both alike. Warm runs come first, on their own: a
    // cold run's eviction would cool the warm run after it. Cold runs take
    // longer (the eviction): a third as many.
    let mut cold_memory = vec![0u8; COLD_BYTES];
    let mut rows = Vec::new();
    for (cold, runs) in [(false, iterations), (true, (iterations / 3).max(1))] {
        let mut pair = [("IMDSv1 GET", V1_REQUEST), ("IMDSv2 GET", V2_REQUEST)]
            .map(|(label, request)| Samples::new(label, request, cold));
        for i in 0..runs {
            for row in &mut pair {
                let memory = cold.then_some(&mut cold_memory[..]);
                loaded.connection(row, i, memory)?;
            }
        }
        rows.extend(pair);
    }
    // The report's order: each request warm, then cold.
    rows.sort_by_key(|row| (row.label, row.cold));
    let rows = rows
        .into_iter()
        .map(Samples::finish)
        .collect::<Result<_>>()?;
    Ok(Isolated {
        rows,
        non_imds,
        iterations,
    })
}

struct Loaded {
    // Owns the programs and maps the descriptors below refer to.
    _ebpf: aya::Ebpf,
    classify: ProgramFd,
    passthrough: ProgramFd,
    events: RingBuf<MapData>,
    /// Next source port: each connection has its own flow entry.
    port: u16,
}

impl Loaded {
    fn new(object: &[u8]) -> Result<Self> {
        let mut endpoints = Endpoints::empty();
        endpoints.v4_addrs[0] = u32::from_ne_bytes(ENDPOINT);
        endpoints.v4_ports[0] = 80u16.to_be();
        endpoints.v4_count = 1;
        let mut ebpf = EbpfLoader::new()
            .override_global("ENDPOINTS", &endpoints, true)
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
        let events = RingBuf::try_from(ebpf.take_map("EVENTS").context("no map EVENTS")?)?;
        Ok(Self {
            _ebpf: ebpf,
            classify,
            passthrough,
            events,
            port: 10_000,
        })
    }

    /// One connection of `row`'s kind, its run times added to `row`.
    fn connection(
        &mut self,
        row: &mut Samples,
        i: u32,
        mut cold_memory: Option<&mut [u8]>,
    ) -> Result<()> {
        self.port = if self.port == u16::MAX {
            10_000
        } else {
            self.port + 1
        };
        let seq = 1_000u32.wrapping_add(i.wrapping_mul(7_919));
        let end = seq.wrapping_add(1 + row.request.len() as u32);
        let packets = [
            packet(ENDPOINT, self.port, seq, SYN, &[]),
            packet(ENDPOINT, self.port, seq.wrapping_add(1), ACK, &[]),
            packet(
                ENDPOINT,
                self.port,
                seq.wrapping_add(1),
                ACK | PSH,
                row.request,
            ),
            packet(ENDPOINT, self.port, end, ACK, &[]),
            packet(ENDPOINT, self.port, end, FIN | ACK, &[]),
        ];
        for (packet, times) in packets.iter().zip(&mut row.times) {
            if let Some(memory) = cold_memory.as_deref_mut() {
                evict_caches(memory);
            }
            times.push(test_run(&self.classify, packet)?);
        }
        row.connections += 1;
        while self.events.next().is_some() {
            row.events += 1;
        }
        Ok(())
    }
}

/// Run times of one kind of connection, per packet.
struct Samples {
    label: &'static str,
    request: &'static [u8],
    cold: bool,
    times: [Vec<u32>; 5],
    connections: u32,
    events: u32,
}

impl Samples {
    fn new(label: &'static str, request: &'static [u8], cold: bool) -> Self {
        Self {
            label,
            request,
            cold,
            times: Default::default(),
            connections: 0,
            events: 0,
        }
    }

    fn finish(self) -> Result<ConnectionRow> {
        // The program must have classified every request, or it did not
        // take the path being measured.
        ensure!(
            self.events == self.connections,
            "{}: {} events for {} requests",
            self.label,
            self.events,
            self.connections
        );
        let [syn, handshake_ack, request, ack, fin] = self.times.map(median);
        Ok(ConnectionRow {
            label: self.label.to_owned(),
            request_bytes: self.request.len(),
            cold: self.cold,
            syn: syn?,
            handshake_ack: handshake_ack?,
            request: request?,
            ack: ack?,
            fin: fin?,
        })
    }
}

/// Writes one byte per cache line of `memory`.
fn evict_caches(memory: &mut [u8]) {
    for line in memory.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    std::hint::black_box(memory);
}

/// `n` runs of `program` on `packet`: their times.
fn runs(program: &ProgramFd, packet: &[u8], n: u32) -> Result<Vec<u32>> {
    (0..n).map(|_| test_run(program, packet)).collect()
}

fn median(mut values: Vec<u32>) -> Result<u32> {
    if values.is_empty() {
        bail!("no runs to take the median of");
    }
    values.sort_unstable();
    Ok(values[values.len() / 2])
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

/// Runs the program once on `packet`; the kernel's time for it, in ns.
fn test_run(program: &ProgramFd, packet: &[u8]) -> Result<u32> {
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
        bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    }
    // A run faster than the clock's resolution reads 0: count it as 1.
    Ok(attr.duration.max(1))
}

/// An Ethernet/IPv4/TCP packet from the client to `dst`:80 (checksums are
/// not checked by the classifier and left 0).
fn packet(dst: [u8; 4], sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(54 + payload.len());
    p.extend_from_slice(&[0; 12]);
    p.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 20 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 6; // TCP
    ip[12..16].copy_from_slice(&CLIENT);
    ip[16..20].copy_from_slice(&dst);
    p.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    p.extend_from_slice(&tcp);
    p.extend_from_slice(payload);
    p
}

/// The eBPF object the daemon embeds (aya-build's `include_bytes_aligned!`),
/// found by its ELF header: little-endian ELF64 for machine EM_BPF.
fn embedded_object(binary: &[u8]) -> Result<&[u8]> {
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
    fn packets_carry_their_payload_behind_54_bytes_of_headers() {
        let p = packet(ENDPOINT, 4242, 7, ACK | PSH, b"GET");
        assert_eq!(p.len(), 57);
        assert_eq!(&p[30..34], &ENDPOINT);
        assert_eq!(u16::from_be_bytes([p[16], p[17]]), 43);
        assert_eq!(&p[54..], b"GET");
    }
}
