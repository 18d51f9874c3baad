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

use std::path::Path;

use anyhow::{Result, bail, ensure};
use aya::programs::ProgramFd;
use imds_sandbox::bpf_run::{self, ACK, ALERT, Classifier, FIN, Ip, PSH, SYN, Tcp};

/// The endpoint the hand-made packets go to, as far as the program knows
/// (a benchmarking address: these bytes are never sent).
const ENDPOINT: [u8; 4] = [198, 18, 0, 254];
const CLIENT: [u8; 4] = [198, 18, 0, 2];
/// Memory touched before each packet in the cold runs.
const COLD_BYTES: usize = 1 << 20;

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
    let object = bpf_run::daemon_object(daemon)?;
    let mut loaded = Loaded::new(&object)?;

    let other = packet([198, 18, 0, 1], 5555, 1, ACK | PSH, &[b'x'; 1024]);
    let non_imds = (
        median(runs(&loaded.classifier.classify, &other, iterations)?)?,
        median(runs(&loaded.classifier.passthrough, &other, iterations)?)?,
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
    classifier: Classifier,
    /// Next source port: each connection has its own flow entry.
    port: u16,
}

impl Loaded {
    fn new(object: &[u8]) -> Result<Self> {
        let endpoints = bpf_run::endpoints(&[ENDPOINT], &[]);
        Ok(Self {
            classifier: Classifier::load(object, &endpoints, &ALERT)?,
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
            times.push(bpf_run::test_run(&self.classifier.classify, packet)?.duration);
        }
        row.connections += 1;
        row.events += self.classifier.drain_events() as u32;
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
    (0..n)
        .map(|_| Ok(bpf_run::test_run(program, packet)?.duration))
        .collect()
}

fn median(mut values: Vec<u32>) -> Result<u32> {
    if values.is_empty() {
        bail!("no runs to take the median of");
    }
    values.sort_unstable();
    Ok(values[values.len() / 2])
}

/// An Ethernet/IPv4/TCP packet from the client to `dst`:80.
fn packet(dst: [u8; 4], sport: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let ip = Ip::V4 {
        src: CLIENT,
        dst,
        options: &[],
        frags: 0x4000, // don't fragment
    };
    let tcp = Tcp {
        sport,
        dport: 80,
        seq,
        ack: 1,
        flags,
    };
    bpf_run::tcp_packet(&ip, &tcp, payload)
}
