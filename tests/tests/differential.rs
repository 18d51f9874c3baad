//! Differential test of the kernel classifier: the real `imds_classify`, as
//! embedded in the daemon binary, loaded on its own and run with
//! `BPF_PROG_TEST_RUN` on generated TCP segment sequences, against a
//! userspace model of what it must do.
//!
//! The model ([`model`]) is the classifier's per-connection logic written
//! again in Rust over the shared parser (`RequestParser`, driven with
//! `feed`/`feed_run` exactly as the kernel's scan step drives it, so the
//! per-packet step budget is modelled exactly), with the byte-at-a-time
//! reference parser (`imds_monitor_common::reference`) as a second opinion
//! on every request head. Both must agree on every packet: the TC return
//! code (pass, drop, or redirect of a reset whose headers are checked), and
//! every event's class, reason, verdict, request index, method, path,
//! flags, TTL and attribution.
//!
//! Each run replays the corpus (`tests/corpus/differential/*.txt`: every
//! case that ever disagreed, minimal), then generates `IMDS_DIFF_CASES`
//! cases (default 100,000) from `IMDS_DIFF_SEED` (default: random, printed).
//! A disagreement prints the case in corpus format (shrunk) and how to
//! replay it: `IMDS_DIFF_SEED=S IMDS_DIFF_CASE=I cargo test -p imds-sandbox
//! --test differential -- --nocapture` runs that one case.
//!
//! Where the model says what the kernel must do rather than what its code
//! does, it says so: a FIN after a dropped head reports nothing more, a
//! malformed head is dropped when `invalid` is, and a packet whose last
//! step took its last byte left nothing unread.
//!
//! What `BPF_PROG_TEST_RUN` cannot show: every run has a socket of its own,
//! so owners (and policy exceptions) are never found and `forwarded` is 0;
//! `BY_SEQUENCE` is written here to stand for the sock_ops hook (`known`
//! cases); packets stay below a page (no GSO).
//!
//! Needs root (loading eBPF programs); skipped with a message otherwise.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use imds_monitor_common::{
    class::{InvalidReason, RequestClass, Verdict},
    event::{AF_INET, AF_INET6, Owner, RequestEvent, attribution},
    flow::{FlowKey, SeqKey, flow_flag},
    http::{MAX_HEAD_BYTES, PATH_CAP, RequestParser, Step, flag},
    reference::Reference,
};
use imds_sandbox::bpf_run::{self, ACK, Actions, Classifier, FIN, Ip, PSH, RST, SYN, Tcp, tc};

const IMDS_V4: [u8; 4] = [169, 254, 169, 254];
const IMDS_V6: [u8; 16] = [
    0xfd, 0, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54,
];

/// The kernel's limits (imds-monitor-ebpf/src/{maps,scan}.rs).
const SCAN_CAP: usize = 2048;
const STEPS: u64 = 512;
/// Payload bytes per generated packet: `BPF_PROG_TEST_RUN` takes a packet
/// of at most a page less the skb's head and tail room.
const MAX_PAYLOAD: usize = 3400;

/// IPv4 options: a router alert (4 bytes), NOPs, end of list.
const V4_OPTIONS: &[u8] = &[0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00];
/// IPv6 destination options header (PadN), 8 bytes.
const V6_DEST_OPTS: &[u8] = &[60, 0, 0x01, 0x04, 0, 0, 0, 0];
/// IPv6 fragment header (first fragment, more to come): unreadable.
const V6_FRAGMENT: &[u8] = &[44, 0, 0x00, 0x01, 0, 0, 0, 1];

// ------------------------------------------------------------------ rng

/// SplitMix64: small, reproducible, no dependency.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// The generator of case `index` of a run with `seed`.
    fn for_case(seed: u64, index: u64) -> Self {
        let mut mix = Rng(seed ^ index.wrapping_mul(0xd134_2543_de82_ef95));
        Rng(mix.next())
    }
}

// ----------------------------------------------------------------- case

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// Which `ACTIONS` the classifier runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// All PASS (alert mode, or no policy).
    Alert,
    /// The default policy in enforce mode: v1_get and incomplete dropped.
    Enforce,
    /// Enforce with `invalid = "drop"` as well.
    Strict,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Alert, Mode::Enforce, Mode::Strict];

    fn actions(self) -> Actions {
        match self {
            Mode::Alert => bpf_run::ALERT,
            Mode::Enforce => bpf_run::ENFORCE,
            Mode::Strict => {
                let mut a = bpf_run::ENFORCE;
                a[RequestClass::Invalid as usize] = imds_monitor_common::config::action::DROP;
                a
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Alert => "alert",
            Mode::Enforce => "enforce",
            Mode::Strict => "strict",
        }
    }
}

/// One packet of a case.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seg {
    /// Sequence number relative to the connection's first payload byte
    /// (the initial sequence number + 1): a SYN has -1.
    seq: i64,
    flags: u8,
    /// Sent as an IP fragment (IPv4 more-fragments, an IPv6 fragment
    /// header): a packet the classifier cannot read.
    frag: bool,
    /// The connection's entry is evicted from `FLOWS` before this packet
    /// (the LRU table full of other connections).
    evict: bool,
    payload: Vec<u8>,
}

/// A generated (or corpus) connection: its packets, in the order sent.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Case {
    family: Family,
    mode: Mode,
    isn: u32,
    /// The sock_ops hook recorded the connection (`BY_SEQUENCE`), so its
    /// first payload byte is known; in TEST_RUN only this entry tells.
    known: bool,
    /// IPv4 options or an IPv6 destination options header on every packet.
    extra: bool,
    dport: u16,
    segs: Vec<Seg>,
}

impl Case {
    fn ack(&self) -> u32 {
        self.isn.rotate_left(13) ^ 0x5a5a_0001
    }

    fn abs_seq(&self, rel: i64) -> u32 {
        self.isn.wrapping_add(1).wrapping_add(rel as u32)
    }
}

// ------------------------------------------------------- corpus format

mod text {
    use super::*;

    fn flags_str(f: u8) -> String {
        let mut s = String::new();
        for (bit, c) in [(SYN, 'S'), (FIN, 'F'), (RST, 'R'), (PSH, 'P'), (ACK, 'A')] {
            if f & bit != 0 {
                s.push(c);
            }
        }
        if s.is_empty() {
            s.push('-');
        }
        s
    }

    fn escape(out: &mut String, bytes: &[u8]) {
        out.push('"');
        for &b in bytes {
            match b {
                b'\r' => out.push_str("\\r"),
                b'\n' => out.push_str("\\n"),
                b'\t' => out.push_str("\\t"),
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                0x20..=0x7e => out.push(b as char),
                _ => {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
        }
        out.push('"');
    }

    /// Pieces of `"..."`; a unit of 1 to 4 bytes repeated to 16 bytes or
    /// more as `"unit"*N`.
    fn payload(out: &mut String, bytes: &[u8]) {
        let repeats = |at: usize, unit: usize| {
            let pattern = &bytes[at..at + unit];
            bytes[at..]
                .chunks(unit)
                .take_while(|chunk| *chunk == pattern)
                .count()
        };
        let mut i = 0;
        let mut literal_start = 0;
        while i < bytes.len() {
            let best = (1..=4)
                .filter(|&unit| i + unit <= bytes.len())
                .map(|unit| (unit, repeats(i, unit)))
                .find(|&(unit, n)| n * unit >= 16 && n >= 4);
            match best {
                Some((unit, n)) => {
                    if literal_start < i {
                        out.push(' ');
                        escape(out, &bytes[literal_start..i]);
                    }
                    out.push(' ');
                    escape(out, &bytes[i..i + unit]);
                    let _ = write!(out, "*{n}");
                    i += unit * n;
                    literal_start = i;
                }
                None => i += 1,
            }
        }
        if literal_start < bytes.len() {
            out.push(' ');
            escape(out, &bytes[literal_start..]);
        }
    }

    pub fn format(case: &Case) -> String {
        let mut s = format!(
            "case {} {} isn={} known={} extra={} port={}\n",
            match case.family {
                Family::V4 => "v4",
                Family::V6 => "v6",
            },
            case.mode.name(),
            case.isn,
            case.known as u8,
            case.extra as u8,
            case.dport,
        );
        for seg in &case.segs {
            let _ = write!(s, "seg {} {}", seg.seq, flags_str(seg.flags));
            if seg.frag {
                s.push_str(" frag");
            }
            if seg.evict {
                s.push_str(" evict");
            }
            payload(&mut s, &seg.payload);
            s.push('\n');
        }
        s.push_str("end\n");
        s
    }

    fn unescape(s: &str) -> Result<(Vec<u8>, &str), String> {
        let mut out = Vec::new();
        let mut chars = s.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Ok((out, &s[i + 1..])),
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('r') => out.push(b'\r'),
                    Some('n') => out.push(b'\n'),
                    Some('t') => out.push(b'\t'),
                    Some('"') => out.push(b'"'),
                    Some('\\') => out.push(b'\\'),
                    Some('x') => {
                        let hex: String = (0..2)
                            .filter_map(|_| chars.next().map(|(_, c)| c))
                            .collect();
                        out.push(
                            u8::from_str_radix(&hex, 16).map_err(|e| format!("\\x{hex}: {e}"))?,
                        );
                    }
                    other => return Err(format!("bad escape \\{other:?}")),
                },
                c if c.is_ascii() => out.push(c as u8),
                c => return Err(format!("non-ASCII {c:?} in a string: write it as \\x..")),
            }
        }
        Err("unterminated string".into())
    }

    fn seg_line(rest: &str) -> Result<Seg, String> {
        let mut words = rest.splitn(3, ' ');
        let seq: i64 = words
            .next()
            .ok_or("no sequence number")?
            .parse()
            .map_err(|e| format!("sequence number: {e}"))?;
        let mut flags = 0;
        for c in words.next().ok_or("no flags")?.chars() {
            flags |= match c {
                'S' => SYN,
                'F' => FIN,
                'R' => RST,
                'P' => PSH,
                'A' => ACK,
                '-' => 0,
                _ => return Err(format!("flag {c:?}")),
            };
        }
        let mut rest = words.next().unwrap_or("").trim_start();
        let (mut frag, mut evict) = (false, false);
        loop {
            if let Some(r) = rest.strip_prefix("frag") {
                frag = true;
                rest = r.trim_start();
            } else if let Some(r) = rest.strip_prefix("evict") {
                evict = true;
                rest = r.trim_start();
            } else {
                break;
            }
        }
        let mut payload = Vec::new();
        while !rest.is_empty() {
            let r = rest
                .strip_prefix('"')
                .ok_or_else(|| format!("expected a string at {rest:?}"))?;
            let (bytes, r) = unescape(r)?;
            let mut r = r;
            let mut times = 1;
            if let Some(t) = r.strip_prefix('*') {
                let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
                times = digits.parse().map_err(|e| format!("repeat count: {e}"))?;
                r = &t[digits.len()..];
            }
            for _ in 0..times {
                payload.extend_from_slice(&bytes);
            }
            rest = r.trim_start();
        }
        Ok(Seg {
            seq,
            flags,
            frag,
            evict,
            payload,
        })
    }

    fn case_line(rest: &str) -> Result<Case, String> {
        let mut words = rest.split_whitespace();
        let family = match words.next() {
            Some("v4") => Family::V4,
            Some("v6") => Family::V6,
            other => return Err(format!("family {other:?}")),
        };
        let mode = match words.next() {
            Some("alert") => Mode::Alert,
            Some("enforce") => Mode::Enforce,
            Some("strict") => Mode::Strict,
            other => return Err(format!("mode {other:?}")),
        };
        let mut case = Case {
            family,
            mode,
            isn: 1000,
            known: false,
            extra: false,
            dport: 80,
            segs: Vec::new(),
        };
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(|| format!("{word:?}"))?;
            let n: u64 = value.parse().map_err(|e| format!("{word}: {e}"))?;
            match key {
                "isn" => case.isn = n as u32,
                "known" => case.known = n != 0,
                "extra" => case.extra = n != 0,
                "port" => case.dport = n as u16,
                _ => return Err(format!("unknown key {key:?}")),
            }
        }
        Ok(case)
    }

    /// Cases of a corpus file; `#` starts a comment line.
    pub fn parse(text: &str) -> Result<Vec<Case>, String> {
        let mut cases = Vec::new();
        let mut current: Option<Case> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            let at = |e: String| format!("line {}: {e}", n + 1);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix("case ") {
                if current.is_some() {
                    return Err(at("case inside a case".into()));
                }
                current = Some(case_line(rest).map_err(at)?);
            } else if let Some(rest) = line.strip_prefix("seg ") {
                let case = current
                    .as_mut()
                    .ok_or_else(|| at("seg outside a case".into()))?;
                case.segs.push(seg_line(rest).map_err(at)?);
            } else if line == "end" {
                cases.push(
                    current
                        .take()
                        .ok_or_else(|| at("end outside a case".into()))?,
                );
            } else {
                return Err(at(format!("unknown line {line:?}")));
            }
        }
        if current.is_some() {
            return Err("last case has no end".into());
        }
        Ok(cases)
    }
}

// ------------------------------------------------------------ generator

mod generate {
    use super::*;

    const NAMES: &[&str] = &[
        "x-aws-ec2-metadata-token",
        "x-aws-ec2-metadata-token-ttl-seconds",
        "x-forwarded-for",
        "metadata-flavor",
        "metadata",
        "authorization",
        "content-length",
        "x-aws-ec2-metadata-tok",
        "x-aws-ec2-metadata-tokens",
        "x-aws-ec2-metadata-token-",
        "x-aws-ec2-metadata-token-ttl-second",
        "x-aws-ec2-metadata-token-ttl-secondsx",
        "x-forwarded-fo",
        "x-forwarded-forx",
        "x-f",
        "x-",
        "metadat",
        "metadata-",
        "metadata-flavorx",
        "authorizatio",
        "content-lengthy",
        "host",
        "user-agent",
        "accept",
        "accept-encoding",
        "connection",
        "x-aws-ec2-metadata token",
    ];

    const VALUES: &[&str] = &[
        "21600",
        "0",
        "1",
        " 1 2",
        "1 ",
        "6O",
        "",
        "99999999999999999999",
        "21601",
        "300",
        "Google",
        "google ",
        "googlers",
        "true",
        "TRUE",
        "false",
        "Bearer Oracle",
        "bearer oracle",
        "Bearer abc",
        "AQAEAFake==",
        "169.254.169.254",
        "*/*",
        "keep-alive",
        "close",
        "curl/8.5.0",
        "Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux",
    ];

    const PATHS: &[&str] = &[
        "/latest/meta-data/",
        "/latest/meta-data/instance-id",
        "/latest/meta-data/iam/security-credentials/",
        "/latest/meta-data/iam/security-credentials/my-role",
        "/latest/user-data",
        "/latest/dynamic/instance-identity/document",
        "/latest/api/token",
        "/2021-03-23/api/token",
        "/1.0/meta-data/",
        "/latest/api/tokens",
        "/latest/api/token/",
        "/a/b/api/token",
        "latest/api/token",
        "/",
        "*",
        "/computeMetadata/v1/instance/id",
        "/metadata/instance?api-version=2021-02-01",
        "/opc/v2/instance/",
    ];

    /// Bytes that move the parser.
    const SPICE: &[u8] = b":\r\n \t/\x00\x01\x7f\x80\xffxXmMaAcCGET PUT-0123456789";

    fn mixed_case(s: &str, rng: &mut Rng) -> Vec<u8> {
        match rng.below(4) {
            0 => s.as_bytes().to_vec(),
            1 => s.to_ascii_uppercase().into_bytes(),
            _ => s
                .bytes()
                .map(|b| {
                    if rng.chance(40) {
                        b.to_ascii_uppercase()
                    } else {
                        b
                    }
                })
                .collect(),
        }
    }

    fn filler(rng: &mut Rng, out: &mut Vec<u8>, len: usize) {
        let kind = rng.below(3);
        out.extend((0..len).map(|i| match kind {
            0 => b'a' + (i % 26) as u8,
            1 => b'!' + rng.below(94) as u8,
            _ => *rng.pick(b"abcdefABCDEF0123456789+/=-_."),
        }));
    }

    /// What SDKs and curl send, in their header order and case.
    fn sdk_request(rng: &mut Rng, out: &mut Vec<u8>) {
        let host = "Host: 169.254.169.254\r\n";
        let agent = *rng.pick(&[
            "User-Agent: curl/8.5.0\r\nAccept: */*\r\n",
            "user-agent: Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux#6.1\r\naccept-encoding: identity\r\n",
            "User-Agent: aws-sdk-go-v2/1.30.0 os/linux lang/go#1.22\r\nAccept-Encoding: gzip\r\n",
            "",
        ]);
        let token = "AQAEAHhYN2rCm5wTf1cXMXNJ0dpZ4DvJ6OJuE3DsEnO4PYuAFgvj3gUYVw==";
        let path = *rng.pick(&PATHS[..6]);
        let request = match rng.below(5) {
            0 => format!("GET {path} HTTP/1.1\r\n{host}{agent}\r\n"),
            1 => format!(
                "GET {path} HTTP/1.1\r\n{host}{agent}X-aws-ec2-metadata-token: {token}\r\n\r\n"
            ),
            2 => format!(
                "GET {path} HTTP/1.1\r\n{host}{agent}x-aws-ec2-metadata-token: {token}\r\n\r\n"
            ),
            3 => format!(
                "PUT /latest/api/token HTTP/1.1\r\n{host}{agent}X-aws-ec2-metadata-token-ttl-seconds: {}\r\n\r\n",
                rng.range(1, 21600)
            ),
            _ => format!(
                "PUT /latest/api/token HTTP/1.1\r\n{host}{agent}x-aws-ec2-metadata-token-ttl-seconds: 21600\r\ncontent-length: 0\r\n\r\n"
            ),
        };
        out.extend_from_slice(request.as_bytes());
    }

    fn request(rng: &mut Rng, out: &mut Vec<u8>) {
        if rng.chance(35) {
            return sdk_request(rng, out);
        }
        let eol: &[u8] = if rng.chance(88) { b"\r\n" } else { b"\n" };
        if rng.chance(5) {
            for _ in 0..rng.range(1, 3) {
                out.extend_from_slice(if rng.chance(50) { b"\r\n" } else { b"\n" });
            }
        }
        let method = match rng.below(100) {
            0..45 => "GET",
            45..70 => "PUT",
            70..76 => "HEAD",
            _ => *rng.pick(&[
                "get",
                "POST",
                "OPTIONS",
                "DELETE",
                "GETGETGETGET",
                "G",
                "PUTT",
                "Get",
            ]),
        };
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        match rng.below(10) {
            0..6 => out.extend_from_slice(rng.pick(PATHS).as_bytes()),
            6 => {
                // Around PATH_CAP.
                let len = PATH_CAP - 12 + rng.below(24);
                out.extend((0..len).map(|i| {
                    if i % 7 == 0 {
                        b'/'
                    } else {
                        b'a' + (i % 26) as u8
                    }
                }));
                if rng.chance(50) {
                    out.extend_from_slice(b"/api/token");
                }
            }
            7 => {
                // Long enough to fill a scan or a head on its own.
                out.push(b'/');
                let len = *rng.pick(&[1000, 2000, 2040, 3000, 4000, 4090, 5000]) + rng.below(64);
                filler(rng, out, len);
            }
            _ => {
                out.push(b'/');
                let len = rng.below(80);
                filler(rng, out, len);
            }
        }
        out.extend_from_slice(match rng.below(20) {
            0 => b" HTTP/1.0",
            1 => b" HTTP/1.1 junk",
            2 => b" HTTP/1.1\x01",
            _ => b" HTTP/1.1",
        });
        out.extend_from_slice(eol);
        let mut body = None;
        for _ in 0..rng.below(9) {
            match rng.below(30) {
                0 => out.extend_from_slice(if rng.chance(50) {
                    b"  folded value"
                } else {
                    b"\tx-aws-ec2-metadata-token: folded"
                }),
                1 => out.extend_from_slice(b"no colon here"),
                2 => {
                    // Long values: limits land anywhere near them.
                    out.extend_from_slice(b"X-Pad: ");
                    let len = *rng.pick(&[500, 1000, 1900, 2000, 2030, 3500, 4000, 4050])
                        + rng.below(100);
                    filler(rng, out, len);
                }
                3 => {
                    out.extend_from_slice(b"User-Agent: ");
                    let len = rng.below(400);
                    filler(rng, out, len);
                }
                4..8 => {
                    out.extend(mixed_case("x-aws-ec2-metadata-token", rng));
                    out.extend_from_slice(b": ");
                    let len = rng.range(0, 120);
                    filler(rng, out, len);
                }
                8..11 => {
                    out.extend(mixed_case("x-aws-ec2-metadata-token-ttl-seconds", rng));
                    out.extend_from_slice(rng.pick(&[":", ": ", ":\t", ":  "]).as_bytes());
                    out.extend_from_slice(rng.pick(VALUES).as_bytes());
                }
                11 => {
                    out.extend(mixed_case("content-length", rng));
                    out.extend_from_slice(b": ");
                    if rng.chance(85) {
                        let n = *rng.pick(&[0, 1, 5, 10, 100, 2000, 2500]) + rng.below(10);
                        out.extend_from_slice(n.to_string().as_bytes());
                        body = Some(n);
                    } else {
                        out.extend_from_slice(rng.pick(&["x", "1 2", ""]).as_bytes());
                    }
                }
                12 => {
                    let (name, value) = *rng.pick(&[
                        ("Metadata-Flavor", "Google"),
                        ("Metadata", "true"),
                        ("Authorization", "Bearer Oracle"),
                        ("X-Forwarded-For", "203.0.113.9"),
                    ]);
                    out.extend(mixed_case(name, rng));
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(value.as_bytes());
                }
                _ => {
                    let name = *rng.pick(NAMES);
                    out.extend(mixed_case(name, rng));
                    out.extend_from_slice(rng.pick(&[":", ": ", " :", ":\t"]).as_bytes());
                    out.extend_from_slice(rng.pick(VALUES).as_bytes());
                }
            }
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(eol);
        if let Some(n) = body {
            // A body, sometimes shaped like a request.
            let start = out.len();
            if rng.chance(30) {
                out.extend_from_slice(b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n");
            }
            filler(rng, out, n);
            out.truncate(start + n);
        }
    }

    /// A connection's bytes.
    fn stream(rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        match rng.below(100) {
            0..85 => {
                let n = match rng.below(10) {
                    0..6 => 1,
                    6..8 => 2,
                    _ => rng.range(3, 6),
                };
                for _ in 0..n {
                    request(rng, &mut out);
                }
            }
            85..92 => {
                // Random bytes, sometimes behind a request line.
                if rng.chance(50) {
                    out.extend_from_slice(b"GET /x HTTP/1.1\r\n");
                }
                for _ in 0..rng.range(1, 600) {
                    out.push(if rng.chance(50) {
                        *rng.pick(SPICE)
                    } else {
                        rng.next() as u8
                    });
                }
            }
            _ => {
                // A head right at the limits: MAX_HEAD_BYTES, the scan window,
                // the step budget (one step per blank line or value digit).
                match rng.below(3) {
                    0 => {
                        let target = MAX_HEAD_BYTES as usize - 4 + rng.below(8);
                        out.extend_from_slice(b"GET / HTTP/1.1\r\nX-Pad: ");
                        let pad = target.saturating_sub(out.len() + 4);
                        filler(rng, &mut out, pad);
                        out.extend_from_slice(b"\r\n\r\n");
                    }
                    1 => {
                        let lines = STEPS as usize / 2 - 4 + rng.below(8);
                        for _ in 0..lines {
                            out.extend_from_slice(b"\r\n");
                        }
                        request(rng, &mut out);
                    }
                    _ => {
                        out.extend_from_slice(b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: ");
                        let digits = STEPS as usize - 60 + rng.below(120);
                        out.extend((0..digits).map(|_| b'0' + rng.below(10) as u8));
                        out.extend_from_slice(b"\r\n\r\n");
                    }
                }
            }
        }
        for _ in 0..if rng.chance(15) { rng.range(1, 3) } else { 0 } {
            if out.is_empty() {
                break;
            }
            let at = rng.below(out.len());
            out[at] = if rng.chance(70) {
                *rng.pick(SPICE)
            } else {
                rng.next() as u8
            };
        }
        out
    }

    /// Cuts `len` bytes into consecutive (start, end) pieces.
    fn cuts(rng: &mut Rng, len: usize) -> Vec<(usize, usize)> {
        let style = rng.below(10);
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < len {
            let size = match style {
                0..3 => MAX_PAYLOAD,
                3 => rng.range(1, 8),
                4 => *rng.pick(&[536, 1448, 1460, 2048, 2049, 3400]),
                5 => rng.range(1, 3400),
                _ => match rng.below(4) {
                    0 => rng.range(1, 8),
                    1 => rng.range(9, 200),
                    2 => rng.range(200, 1500),
                    _ => rng.range(1500, MAX_PAYLOAD),
                },
            };
            let end = (at + size.min(MAX_PAYLOAD)).min(len);
            pieces.push((at, end));
            at = end;
        }
        // Many tiny pieces: merge the tail so a case stays short.
        while pieces.len() > 48 {
            let (s, _) = pieces[pieces.len() - 2];
            let (_, e) = pieces.pop().expect("two pieces");
            let last = pieces.len() - 1;
            pieces[last] = (s, e);
            if e - s > MAX_PAYLOAD {
                pieces[last] = (s, s + MAX_PAYLOAD);
                pieces.push((s + MAX_PAYLOAD, e));
                break;
            }
        }
        pieces
    }

    pub fn case(rng: &mut Rng) -> Case {
        let family = if rng.chance(30) {
            Family::V6
        } else {
            Family::V4
        };
        let mode = *rng.pick(&Mode::ALL);
        let isn = if rng.chance(10) {
            u32::MAX - rng.below(4000) as u32
        } else {
            rng.next() as u32
        };
        let known = rng.chance(65);
        let mut case = Case {
            family,
            mode,
            isn,
            known,
            extra: rng.chance(5),
            dport: if rng.chance(2) { 8080 } else { 80 },
            segs: Vec::new(),
        };
        let bytes = stream(rng);
        let data = |s: usize, e: usize, flags: u8| Seg {
            seq: s as i64,
            flags,
            frag: false,
            evict: false,
            payload: bytes[s..e].to_vec(),
        };
        let pieces = cuts(rng, bytes.len());
        let segs = &mut case.segs;
        if rng.chance(60) {
            segs.push(Seg {
                seq: -1,
                flags: SYN,
                frag: false,
                evict: false,
                payload: Vec::new(),
            });
            segs.push(data(0, 0, ACK));
        } else if rng.chance(3) && !pieces.is_empty() {
            // TCP Fast Open: data in the SYN.
            let (s, e) = pieces[0];
            segs.push(Seg {
                seq: -1,
                flags: SYN,
                frag: false,
                evict: false,
                payload: bytes[s..e].to_vec(),
            });
        }
        let late = if rng.chance(5) {
            rng.below(pieces.len().max(1))
        } else {
            0
        };
        let mut sent: Vec<(usize, usize)> = Vec::new();
        let mut i = late;
        while i < pieces.len() {
            let (mut s, e) = pieces[i];
            if rng.chance(3) {
                i += 1;
                continue; // lost before the hook: a gap
            }
            if rng.chance(3) && i + 1 < pieces.len() {
                // Out of order: the next piece first.
                let (s2, e2) = pieces[i + 1];
                segs.push(data(s2, e2, ACK | PSH));
                segs.push(data(s, e, ACK | PSH));
                i += 2;
                continue;
            }
            if rng.chance(4) && !sent.is_empty() {
                // A re-segmented retransmission reaching into new bytes.
                let (ps, _) = *rng.pick(&sent);
                s = ps.max(e.saturating_sub(MAX_PAYLOAD));
            }
            let mut seg = data(s, e, ACK | PSH);
            if rng.chance(2) {
                seg.frag = true;
            }
            if rng.chance(2) {
                seg.evict = true;
            }
            segs.push(seg);
            sent.push((s, e));
            if rng.chance(6) {
                let (ps, pe) = *rng.pick(&sent);
                segs.push(data(ps, pe, ACK | PSH)); // a retransmission
            }
            if rng.chance(4) {
                segs.push(data(e, e, ACK)); // a bare ACK
            }
            if rng.chance(1) {
                // The connection ends early, or a new one on the same ports.
                let flags = *rng.pick(&[FIN | ACK, RST, SYN]);
                segs.push(Seg {
                    seq: e as i64,
                    flags,
                    frag: false,
                    evict: false,
                    payload: Vec::new(),
                });
            }
            i += 1;
        }
        let end = bytes.len();
        match rng.below(10) {
            0..4 => {
                if let Some(last) = segs.last_mut()
                    && !last.payload.is_empty()
                {
                    last.flags |= FIN;
                }
            }
            4..7 => segs.push(data(end, end, FIN | ACK)),
            7 => segs.push(data(end, end, RST | ACK)),
            _ => {}
        }
        for seg in segs.iter_mut() {
            seg.payload.truncate(MAX_PAYLOAD);
        }
        case
    }
}

// ---------------------------------------------------------------- model

/// What the classifier must report, field by field (the parts of a
/// `RequestEvent` that do not depend on time or the machine).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Event {
    class: RequestClass,
    reason: InvalidReason,
    verdict: Verdict,
    request_index: u16,
    forwarded: u8,
    attribution: u8,
    family: u8,
    sport: u16,
    dport: u16,
    method: Vec<u8>,
    path_len: u16,
    path: Vec<u8>,
    flags: u16,
    ttl: u32,
    /// `(tgid, exempt_rule)` of the owner, when attribution found one.
    owner: Option<(u32, u32)>,
}

impl Event {
    fn from_kernel(e: &RequestEvent) -> Self {
        Event {
            class: RequestClass::from_u8(e.class).unwrap_or(RequestClass::Incomplete),
            reason: InvalidReason::from_u8(e.reason),
            verdict: Verdict::from_u8(e.verdict),
            request_index: e.request_index,
            forwarded: e.forwarded,
            attribution: e.attribution,
            family: e.family,
            sport: e.sport,
            dport: e.dport,
            method: e.method[..(e.method_len as usize).min(e.method.len())].to_vec(),
            path_len: e.path_len,
            path: e.path[..(e.path_len as usize).min(PATH_CAP)].to_vec(),
            flags: e.flags,
            ttl: e.ttl,
            owner: (e.attribution != attribution::NONE)
                .then_some((e.owner.tgid, e.owner.exempt_rule)),
        }
    }

    fn short(&self) -> String {
        format!(
            "{}/{} {} #{}",
            self.class.as_str(),
            self.reason.as_str(),
            self.verdict.as_str(),
            self.request_index
        )
    }
}

/// What one packet must come to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    retval: u32,
    events: Vec<Event>,
}

mod model {
    use super::*;

    const ACT_DROP: u8 = imds_monitor_common::config::action::DROP;

    /// One connection's state, as `FlowState` holds it in the kernel.
    ///
    /// Who opened it is never found here: `BPF_PROG_TEST_RUN` gives every
    /// packet a socket of its own (a new cookie each run), so the kernel
    /// looks the owner up by cookie in `CONNECTS`, which is empty. Events
    /// have no attribution and `forwarded` 0, and no policy exception
    /// applies.
    #[derive(Clone)]
    struct Flow {
        parser: RequestParser,
        reference: Reference,
        next_seq: u32,
        body_left: u32,
        requests: u16,
        flags: u8,
    }

    /// What a packet of the case looks like to the classifier.
    pub struct Packet<'a> {
        pub seq: u32,
        pub flags: u8,
        pub frag: bool,
        pub evict: bool,
        pub payload: &'a [u8],
    }

    pub struct Model {
        actions: Actions,
        family: u8,
        sport: u16,
        dport: u16,
        watched: bool,
        /// `BY_SEQUENCE`: the connection's first payload byte, when sock_ops
        /// recorded it.
        first_payload: Option<u32>,
        flow: Option<Flow>,
        events: Vec<Event>,
        /// The parser and the reference parser disagreed (a bug in the
        /// shared parser, not in the kernel program).
        pub parser_bugs: Vec<String>,
    }

    enum Fate {
        Pass,
        Drop,
        Reset,
    }

    impl Model {
        pub fn new(
            actions: Actions,
            family: u8,
            sport: u16,
            dport: u16,
            first_payload: Option<u32>,
        ) -> Self {
            Model {
                actions,
                family,
                sport,
                dport,
                watched: dport == 80,
                first_payload,
                flow: None,
                events: Vec::new(),
                parser_bugs: Vec::new(),
            }
        }

        fn drops(&self, class: RequestClass) -> bool {
            self.actions[class as usize] == ACT_DROP
        }

        pub fn packet(&mut self, p: &Packet) -> Outcome {
            self.events.clear();
            let fate = self.fate(p);
            Outcome {
                retval: match fate {
                    Fate::Pass => tc::UNSPEC,
                    Fate::Drop => tc::SHOT,
                    Fate::Reset => tc::REDIRECT,
                },
                events: std::mem::take(&mut self.events),
            }
        }

        fn fate(&mut self, p: &Packet) -> Fate {
            if p.evict {
                self.flow = None;
            }
            if p.frag && self.family == AF_INET6 {
                // A fragment header ends the walk before TCP: no ports in
                // the event, whatever the port.
                return self.unreadable(InvalidReason::IpHeader, 0);
            }
            if !self.watched {
                return Fate::Pass;
            }
            if p.frag {
                // An IPv4 first fragment: its TCP header is read.
                return self.unreadable(InvalidReason::IpHeader, self.sport);
            }
            if p.flags & SYN != 0 {
                self.flow = None;
                if p.payload.is_empty() {
                    return Fate::Pass;
                }
                return self.unreadable(InvalidReason::SynData, self.sport);
            }
            let fin_or_rst = p.flags & (FIN | RST) != 0;
            if p.payload.is_empty() && !fin_or_rst {
                return Fate::Pass;
            }
            let mut fate = Fate::Pass;
            if !p.payload.is_empty() {
                fate = self.payload(p);
            }
            if fin_or_rst {
                if let Some(flow) = &self.flow {
                    // Ended inside a head not yet reported. (A head that was
                    // complete and dropped has been reported already.)
                    if flow.flags & (flow_flag::DESYNC | flow_flag::BLOCKED) == 0
                        && flow.parser.in_request()
                    {
                        let flow = flow.clone();
                        self.emit(
                            &flow,
                            RequestClass::Incomplete,
                            InvalidReason::ConnectionClosed,
                        );
                    }
                }
                if !matches!(fate, Fate::Reset) {
                    self.flow = None;
                }
            }
            fate
        }

        /// A packet not read (SYN data, a fragment): reported from a fresh
        /// state without an owner (a socket lookup, which finds none here).
        fn unreadable(&mut self, reason: InvalidReason, sport: u16) -> Fate {
            let blocks = self.drops(RequestClass::Incomplete);
            self.events.push(Event {
                class: RequestClass::Incomplete,
                reason,
                verdict: if blocks {
                    Verdict::Dropped
                } else {
                    Verdict::Allowed
                },
                request_index: 0,
                forwarded: 0,
                attribution: attribution::NONE,
                family: self.family,
                sport,
                dport: if sport == 0 { 0 } else { self.dport },
                method: Vec::new(),
                path_len: 0,
                path: Vec::new(),
                flags: 0,
                ttl: 0,
                owner: None,
            });
            if blocks { Fate::Drop } else { Fate::Pass }
        }

        fn emit(&mut self, flow: &Flow, class: RequestClass, reason: InvalidReason) {
            let p = &flow.parser;
            self.events.push(Event {
                class,
                reason,
                verdict: if flow.flags & flow_flag::BLOCKED != 0 {
                    Verdict::Dropped
                } else {
                    Verdict::Allowed
                },
                request_index: flow.requests,
                forwarded: 0,
                attribution: attribution::NONE,
                family: self.family,
                sport: self.sport,
                dport: self.dport,
                method: p.method().to_vec(),
                path_len: p.path_len,
                path: p.path().to_vec(),
                flags: p.flags,
                ttl: p.ttl,
                owner: None,
            });
        }

        /// Enforce mode resets what it cannot judge (no owner is exempt here).
        fn fails_closed(&self) -> bool {
            self.drops(RequestClass::Incomplete)
        }

        fn unjudged(&mut self, flow: &mut Flow, reason: InvalidReason) -> Fate {
            let blocks = self.fails_closed();
            if blocks {
                flow.flags |= flow_flag::BLOCKED;
            }
            if flow.flags & flow_flag::DESYNC == 0 || blocks {
                self.emit(flow, RequestClass::Incomplete, reason);
            }
            flow.flags |= flow_flag::DESYNC;
            if blocks { Fate::Reset } else { Fate::Pass }
        }

        fn payload(&mut self, p: &Packet) -> Fate {
            let mut flow = match self.flow.take() {
                Some(flow) => flow,
                None => {
                    let mut word = [0u8; 8];
                    let n = p.payload.len().min(8);
                    word[..n].copy_from_slice(&p.payload[..n]);
                    let starts = imds_monitor_common::http::starts_request(
                        u64::from_le_bytes(word),
                        n as u32,
                    );
                    let first = self.first_payload == Some(p.seq);
                    let mut flow = Flow {
                        parser: RequestParser::new(),
                        reference: Reference::new(),
                        next_seq: p.seq,
                        body_left: 0,
                        requests: 0,
                        flags: 0,
                    };
                    if !(starts || first) {
                        let fate = self.unjudged(&mut flow, InvalidReason::UntrackedConnection);
                        self.flow = Some(flow);
                        return fate;
                    }
                    flow
                }
            };
            let fate = self.tracked(&mut flow, p);
            self.flow = Some(flow);
            fate
        }

        fn tracked(&mut self, flow: &mut Flow, p: &Packet) -> Fate {
            if flow.flags & flow_flag::BLOCKED != 0 {
                return Fate::Reset;
            }
            if flow.flags & flow_flag::DESYNC != 0 {
                return if self.fails_closed() {
                    self.unjudged(flow, InvalidReason::Unfollowed)
                } else {
                    Fate::Pass
                };
            }
            let len = p.payload.len() as u32;
            let ahead = p.seq.wrapping_sub(flow.next_seq) as i32;
            if ahead > 0 {
                return self.unjudged(flow, InvalidReason::SequenceGap);
            }
            let seen = ahead.unsigned_abs();
            if seen >= len {
                return Fate::Pass; // a retransmission
            }
            flow.next_seq = p.seq.wrapping_add(len);
            self.scan(flow, &p.payload[seen as usize..]);
            if flow.flags & flow_flag::BLOCKED != 0 {
                Fate::Reset
            } else {
                Fate::Pass
            }
        }

        /// `scan_payload` and `imds_scan`: at most SCAN_CAP bytes, at most
        /// STEPS steps; what is left unread is not judged.
        fn scan(&mut self, flow: &mut Flow, new: &[u8]) {
            let n = new.len().min(SCAN_CAP);
            let truncated = n < new.len();
            let bytes = &new[..n];
            let mut skipped = 0u64;
            let mut steps = 0;
            while steps < STEPS {
                if self.step(flow, bytes, steps, &mut skipped) {
                    break;
                }
                steps += 1;
            }
            // Bytes are unread when the packet was cut, or when the steps
            // ran out before the end (not when the last step took the last
            // byte).
            let unread = truncated || (steps >= STEPS && steps + skipped < n as u64);
            if unread && flow.flags & (flow_flag::DESYNC | flow_flag::BLOCKED) == 0 {
                if self.fails_closed() {
                    flow.flags |= flow_flag::BLOCKED;
                }
                let reason = if truncated {
                    InvalidReason::PacketTooLong
                } else {
                    InvalidReason::TooManySteps
                };
                self.emit(flow, RequestClass::Incomplete, reason);
                flow.flags |= flow_flag::DESYNC;
            }
        }

        fn reference_feed(&mut self, flow: &mut Flow, b: u8, expected: Step) {
            let got = flow.reference.feed(b);
            if got != expected {
                self.parser_bugs.push(format!(
                    "byte {b:#04x}: parser {expected:?}, reference {got:?}"
                ));
            }
        }

        /// `imds_scan_step`; returns whether the scan stops.
        fn step(&mut self, flow: &mut Flow, bytes: &[u8], index: u64, skipped: &mut u64) -> bool {
            let len = bytes.len() as u64;
            let pos = index + *skipped;
            if pos >= len {
                return true;
            }
            if flow.body_left != 0 {
                let skip = (flow.body_left as u64).min(len - pos);
                flow.body_left -= skip as u32;
                *skipped += skip - 1;
                return false;
            }
            let b = bytes[pos as usize];
            let step = flow.parser.feed(b);
            self.reference_feed(flow, b, step);
            if step == Step::More {
                let next = pos + 1;
                if next < SCAN_CAP as u64 {
                    let avail = (len - next).min(8) as usize;
                    // Bytes past `avail` are whatever the buffer held: junk.
                    let mut word =
                        (index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 0x8080).to_le_bytes();
                    word[..avail].copy_from_slice(&bytes[next as usize..next as usize + avail]);
                    let taken = flow.parser.feed_run(u64::from_le_bytes(word), avail as u32);
                    for &b in &word[..taken as usize] {
                        self.reference_feed(flow, b, Step::More);
                    }
                    *skipped += taken as u64;
                }
            }
            match step {
                Step::More => false,
                Step::Complete => {
                    let (class, reason) = flow.parser.classify();
                    let by_reference = flow.reference.classify();
                    if by_reference != (class, reason) {
                        self.parser_bugs.push(format!(
                            "class: parser {class:?}/{reason:?}, reference {by_reference:?}"
                        ));
                    }
                    if self.drops(class) {
                        flow.flags |= flow_flag::BLOCKED;
                        self.emit(flow, class, reason);
                        return true;
                    }
                    self.emit(flow, class, reason);
                    flow.requests = flow.requests.wrapping_add(1);
                    if flow.parser.flags & flag::CONTENT_LENGTH != 0 {
                        flow.body_left = flow.parser.content_length;
                    }
                    flow.parser.reset();
                    flow.reference.reset();
                    false
                }
                Step::Malformed => {
                    // Its class is `invalid`: a policy that drops invalid
                    // requests drops it too.
                    if self.drops(RequestClass::Invalid) {
                        flow.flags |= flow_flag::BLOCKED;
                    }
                    self.emit(flow, RequestClass::Invalid, InvalidReason::Malformed);
                    flow.requests = flow.requests.wrapping_add(1);
                    flow.flags |= flow_flag::DESYNC;
                    true
                }
                Step::Overflow => {
                    if self.fails_closed() {
                        flow.flags |= flow_flag::BLOCKED;
                    }
                    self.emit(flow, RequestClass::Incomplete, InvalidReason::HeadTooLong);
                    flow.flags |= flow_flag::DESYNC;
                    true
                }
            }
        }
    }
}

// --------------------------------------------------------------- runner

struct Runner {
    classifiers: Vec<Classifier>,
    /// What the kernel did, over the run: events by class, reason and
    /// verdict, packets by verdict (the coverage of the generator).
    seen: std::collections::BTreeMap<String, u64>,
    /// Next connection: each case has its own client address and port.
    next: u32,
}

/// How a case came out: the first disagreement, if any.
struct Report {
    disagreement: Option<String>,
    /// What kind of disagreement (see [`kind_of`]).
    kind: String,
    packets: usize,
}

fn key_of(case: &Case, client: &Client) -> FlowKey {
    let mut key = FlowKey {
        saddr: [0; 16],
        daddr: [0; 16],
        sport: client.sport,
        dport: case.dport,
        family: 0,
        _pad: 0,
        _pad2: 0,
    };
    match case.family {
        Family::V4 => {
            key.saddr[..4].copy_from_slice(&client.v4);
            key.daddr[..4].copy_from_slice(&IMDS_V4);
            key.family = AF_INET;
        }
        Family::V6 => {
            key.saddr = client.v6;
            key.daddr = IMDS_V6;
            key.family = AF_INET6;
        }
    }
    key
}

struct Client {
    v4: [u8; 4],
    v6: [u8; 16],
    sport: u16,
}

impl Runner {
    fn new() -> Self {
        let daemon = imds_sandbox::imds_monitor_bin().expect("the imds-monitor binary");
        let object = bpf_run::daemon_object(&daemon).expect("the daemon's eBPF object");
        let endpoints = bpf_run::endpoints(&[IMDS_V4], &[IMDS_V6]);
        let classifiers = Mode::ALL
            .iter()
            .map(|mode| {
                Classifier::load(&object, &endpoints, &mode.actions())
                    .unwrap_or_else(|e| panic!("loading the classifier ({}): {e:#}", mode.name()))
            })
            .collect();
        Runner {
            classifiers,
            seen: Default::default(),
            next: 1,
        }
    }

    fn client(&mut self) -> Client {
        let n = self.next;
        self.next = self.next.wrapping_add(1);
        let mut v6 = [0u8; 16];
        v6[..4].copy_from_slice(&[0xfd, 0x00, 0xd1, 0xff]);
        v6[12..].copy_from_slice(&n.to_be_bytes());
        Client {
            v4: [10, (n >> 16) as u8, (n >> 8) as u8, n as u8],
            v6,
            sport: 1024 + (n % 60000) as u16,
        }
    }

    fn packet_bytes(case: &Case, client: &Client, seg: &Seg) -> Vec<u8> {
        let ip = match case.family {
            Family::V4 => Ip::V4 {
                src: client.v4,
                dst: IMDS_V4,
                options: if case.extra { V4_OPTIONS } else { &[] },
                // More fragments, or don't fragment.
                frags: if seg.frag { 0x2000 } else { 0x4000 },
            },
            Family::V6 => Ip::V6 {
                src: client.v6,
                dst: IMDS_V6,
                extensions: match (case.extra, seg.frag) {
                    (false, false) => &[],
                    (true, false) => &[V6_DEST_OPTS],
                    (false, true) => &[V6_FRAGMENT],
                    (true, true) => &[V6_DEST_OPTS, V6_FRAGMENT],
                },
            },
        };
        let tcp = Tcp {
            sport: client.sport,
            dport: case.dport,
            seq: case.abs_seq(seg.seq),
            ack: case.ack(),
            flags: seg.flags,
        };
        bpf_run::tcp_packet(&ip, &tcp, &seg.payload)
    }

    /// The reset the classifier must have made of `seg`: a plain IP header
    /// from the endpoint to the client, RST|ACK with seq = the segment's
    /// ack and ack = its end, valid checksums, MAC addresses swapped.
    fn check_reset(
        case: &Case,
        client: &Client,
        seg: &Seg,
        sent: &[u8],
        out: &[u8],
    ) -> Result<(), String> {
        let ip_len = match case.family {
            Family::V4 => 20,
            Family::V6 => 40,
        };
        if out.len() != bpf_run::ETH_LEN + ip_len + 20 {
            return Err(format!("reset of {} bytes", out.len()));
        }
        if out[..6] != sent[6..12] || out[6..12] != sent[..6] {
            return Err("reset's MAC addresses not swapped".into());
        }
        let ip = &out[14..14 + ip_len];
        let tcp = &out[14 + ip_len..];
        let mut pseudo = Vec::new();
        match case.family {
            Family::V4 => {
                if ip[0] != 0x45 || ip[9] != 6 || ip[12..16] != IMDS_V4 || ip[16..20] != client.v4 {
                    return Err(format!("reset's IPv4 header {ip:02x?}"));
                }
                if u16::from_be_bytes([ip[2], ip[3]]) != 40 || bpf_run::ones_sum(ip) != 0xffff {
                    return Err(format!("reset's IPv4 length or checksum {ip:02x?}"));
                }
                pseudo.extend_from_slice(&IMDS_V4);
                pseudo.extend_from_slice(&client.v4);
                pseudo.extend_from_slice(&[0, 6, 0, 20]);
            }
            Family::V6 => {
                if ip[0] >> 4 != 6 || ip[6] != 6 || ip[8..24] != IMDS_V6 || ip[24..40] != client.v6
                {
                    return Err(format!("reset's IPv6 header {ip:02x?}"));
                }
                if u16::from_be_bytes([ip[4], ip[5]]) != 20 {
                    return Err("reset's IPv6 payload length".into());
                }
                pseudo.extend_from_slice(&IMDS_V6);
                pseudo.extend_from_slice(&client.v6);
                pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
            }
        }
        pseudo.extend_from_slice(tcp);
        let field = |o: usize| u32::from_be_bytes([tcp[o], tcp[o + 1], tcp[o + 2], tcp[o + 3]]);
        let end = case.abs_seq(seg.seq).wrapping_add(seg.payload.len() as u32);
        let expected = (case.dport, client.sport, case.ack(), end, 0x14);
        let got = (
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
            field(4),
            field(8),
            tcp[13],
        );
        if got != expected {
            return Err(format!(
                "reset's TCP header (ports, seq, ack, flags) {got:?}, expected {expected:?}"
            ));
        }
        if bpf_run::ones_sum(&pseudo) != 0xffff {
            return Err("reset's TCP checksum".into());
        }
        Ok(())
    }

    /// Runs `case` through the kernel and the model, packet by packet.
    fn run(&mut self, case: &Case) -> Report {
        let client = self.client();
        let key = key_of(case, &client);
        let mode_index = Mode::ALL
            .iter()
            .position(|m| *m == case.mode)
            .expect("mode");
        let seq_key = SeqKey {
            daddr: key.daddr,
            dport: key.dport,
            family: key.family,
            _pad: 0,
            seq: case.abs_seq(0),
        };
        let classifier = &mut self.classifiers[mode_index];
        classifier.drain_events();
        if case.known {
            classifier
                .set_by_sequence(&seq_key, &Owner::zeroed())
                .expect("BY_SEQUENCE");
        }
        let mut model = model::Model::new(
            case.mode.actions(),
            key.family,
            key.sport,
            key.dport,
            case.known.then_some(seq_key.seq),
        );
        let mut report = Report {
            disagreement: None,
            kind: String::new(),
            packets: 0,
        };
        for (i, seg) in case.segs.iter().enumerate() {
            let bytes = Self::packet_bytes(case, &client, seg);
            if seg.evict {
                classifier.remove_flow(&key);
            }
            let run = bpf_run::test_run(&classifier.classify, &bytes).expect("BPF_PROG_TEST_RUN");
            report.packets += 1;
            let kernel = Outcome {
                retval: run.retval,
                events: classifier
                    .request_events()
                    .iter()
                    .map(Event::from_kernel)
                    .collect(),
            };
            let expected = model.packet(&model::Packet {
                seq: case.abs_seq(seg.seq),
                flags: seg.flags,
                frag: seg.frag,
                evict: seg.evict,
                payload: &seg.payload,
            });
            let verdict = match kernel.retval {
                tc::UNSPEC => "packets passed",
                tc::SHOT => "packets dropped",
                tc::REDIRECT => "packets reset",
                _ => "packets with another verdict",
            };
            *self.seen.entry(verdict.to_owned()).or_default() += 1;
            for e in &kernel.events {
                let label = format!(
                    "event {}/{} {}",
                    e.class.as_str(),
                    e.reason.as_str(),
                    e.verdict.as_str()
                );
                *self.seen.entry(label).or_default() += 1;
            }
            let mut why = None;
            if !model.parser_bugs.is_empty() {
                report.kind = "parser and reference parser".into();
                why = Some(format!(
                    "the shared parser and the reference parser disagree: {}",
                    model.parser_bugs.join("; ")
                ));
            } else if kernel != expected {
                report.kind = kind_of(&kernel, &expected);
                why = Some(describe(&kernel, &expected));
            } else if run.retval == tc::REDIRECT
                && let Err(e) = Self::check_reset(case, &client, seg, &bytes, &run.packet)
            {
                report.kind = format!(
                    "reset packet: {}",
                    e.split(' ').take(3).collect::<Vec<_>>().join(" ")
                );
                why = Some(e);
            }
            if let Some(why) = why {
                report.disagreement = Some(format!("packet {i} (seg {}): {why}", seg.seq));
                break;
            }
        }
        classifier.remove_flow(&key);
        if case.known {
            classifier.remove_by_sequence(&seq_key);
        }
        classifier.drain_events();
        report
    }
}

fn describe(kernel: &Outcome, model: &Outcome) -> String {
    let name = |r: u32| match r {
        tc::UNSPEC => "pass".to_owned(),
        tc::SHOT => "drop".to_owned(),
        tc::REDIRECT => "reset".to_owned(),
        other => format!("retval {other}"),
    };
    let short = |o: &Outcome| {
        format!(
            "{} [{}]",
            name(o.retval),
            o.events
                .iter()
                .map(Event::short)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut s = format!("kernel {}, model {}", short(kernel), short(model));
    if kernel.retval == model.retval && kernel.events.len() == model.events.len() {
        for (k, m) in kernel.events.iter().zip(&model.events) {
            if k != m {
                let _ = write!(s, "; event differs: kernel {k:?}, model {m:?}");
                break;
            }
        }
    }
    s
}

/// The kind of a disagreement, to shrink a case to one of the same kind
/// and to count them: what the kernel did that the model did not, and the
/// reverse, without request indexes and packet positions.
fn kind_of(kernel: &Outcome, model: &Outcome) -> String {
    let mut s = String::new();
    if kernel.retval != model.retval {
        let _ = write!(
            s,
            "retval {} instead of {}; ",
            kernel.retval as i32, model.retval as i32
        );
    }
    let label = |e: &Event| {
        format!(
            "{}/{} {}",
            e.class.as_str(),
            e.reason.as_str(),
            e.verdict.as_str()
        )
    };
    let (k, m): (Vec<_>, Vec<_>) = (
        kernel.events.iter().map(label).collect(),
        model.events.iter().map(label).collect(),
    );
    let only = |a: &[String], b: &[String]| {
        a.iter()
            .filter(|x| !b.contains(x))
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (k_only, m_only) = (only(&k, &m), only(&m, &k));
    if !k_only.is_empty() || !m_only.is_empty() {
        let _ = write!(s, "kernel only [{k_only}], model only [{m_only}]");
    } else if k != m {
        s.push_str("events in another order or number");
    } else if kernel.events != model.events {
        s.push_str("event fields differ");
    }
    s
}

/// A smaller case that still disagrees the same way: packets dropped, then
/// payload bytes cut (later sequence numbers moved down with them).
fn shrink(runner: &mut Runner, case: &Case) -> Case {
    let target = runner.run(case).kind;
    let mut best = case.clone();
    let mut budget = 3000;
    let still = |runner: &mut Runner, c: &Case, budget: &mut i32| -> bool {
        *budget -= 1;
        let report = runner.run(c);
        report.disagreement.is_some() && report.kind == target
    };
    let mut progress = true;
    while progress && budget > 0 {
        progress = false;
        let mut i = 0;
        while i < best.segs.len() && budget > 0 {
            let mut c = best.clone();
            c.segs.remove(i);
            if still(runner, &c, &mut budget) {
                best = c;
                progress = true;
            } else {
                i += 1;
            }
        }
        for i in 0..best.segs.len() {
            let mut chunk = best.segs[i].payload.len() / 2;
            while chunk > 0 && budget > 0 {
                let mut at = 0;
                while at + chunk <= best.segs[i].payload.len() && budget > 0 {
                    let mut c = best.clone();
                    let cut_seq = c.segs[i].seq + at as i64;
                    c.segs[i].payload.drain(at..at + chunk);
                    for (j, seg) in c.segs.iter_mut().enumerate() {
                        if j != i && seg.seq > cut_seq {
                            seg.seq -= (chunk as i64).min(seg.seq - cut_seq);
                        }
                    }
                    if still(runner, &c, &mut budget) {
                        best = c;
                        progress = true;
                    } else {
                        at += chunk;
                    }
                }
                chunk /= 2;
            }
        }
    }
    best
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/differential")
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={value}: {e}")))
}

fn skip_unless_root() -> bool {
    if imds_sandbox::is_root() {
        return false;
    }
    eprintln!("skipped: loading eBPF programs needs root");
    true
}

#[test]
fn corpus_cases_parse_and_print_back() {
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let case = generate::case(&mut rng);
        let text = text::format(&case);
        let back = text::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, vec![case], "{text}");
    }
}

/// Every case that ever disagreed, then the generated ones.
#[test]
fn kernel_classifier_agrees_with_the_model() {
    if skip_unless_root() {
        return;
    }
    let mut runner = Runner::new();
    let mut failures = Vec::new();

    let started = Instant::now();
    let mut corpus = 0;
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
    files.sort();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("corpus file");
        let cases = text::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (i, case) in cases.iter().enumerate() {
            corpus += 1;
            if let Some(why) = runner.run(case).disagreement {
                failures.push(format!(
                    "corpus {} case {}: {why}\n{}",
                    path.file_name().unwrap_or_default().to_string_lossy(),
                    i + 1,
                    text::format(case)
                ));
            }
        }
    }
    println!(
        "differential: {corpus} corpus cases in {:.1?}",
        started.elapsed()
    );

    let seed = env_number("IMDS_DIFF_SEED").unwrap_or_else(|| {
        let mut rng = Rng(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ ((std::process::id() as u64) << 32));
        rng.next()
    });
    let only = env_number("IMDS_DIFF_CASE");
    let count = env_number("IMDS_DIFF_CASES").unwrap_or(100_000);
    println!("differential: seed {seed:#x} (replay with IMDS_DIFF_SEED={seed:#x})");
    let started = Instant::now();
    let (mut cases, mut packets) = (0u64, 0usize);
    // Disagreements by kind: the first of each is shrunk and shown.
    let mut kinds: Vec<(String, u64)> = Vec::new();
    let indexes: Box<dyn Iterator<Item = u64>> = match only {
        Some(i) => Box::new(std::iter::once(i)),
        None => Box::new(0..count),
    };
    for index in indexes {
        let case = generate::case(&mut Rng::for_case(seed, index));
        let report = runner.run(&case);
        cases += 1;
        packets += report.packets;
        if let Some(why) = report.disagreement {
            let kind = report.kind;
            if let Some((_, n)) = kinds.iter_mut().find(|(k, _)| *k == kind) {
                *n += 1;
                continue;
            }
            kinds.push((kind, 1));
            if kinds.len() > 8 {
                continue;
            }
            let small = shrink(&mut runner, &case);
            let small_why = runner.run(&small).disagreement.unwrap_or(why.clone());
            failures.push(format!(
                "case {index} (IMDS_DIFF_SEED={seed:#x} IMDS_DIFF_CASE={index}): {why}\n\
                 shrunk: {small_why}\n{}",
                text::format(&small)
            ));
        }
    }
    for (what, n) in &runner.seen {
        println!("differential: {n:>9} {what}");
    }
    for (kind, n) in &kinds {
        failures.push(format!("{n} generated cases disagreed so: {kind}"));
    }
    let elapsed = started.elapsed();
    println!(
        "differential: {cases} generated cases, {packets} packets in {elapsed:.1?} \
         ({:.1} µs a packet)",
        elapsed.as_secs_f64() * 1e6 / packets.max(1) as f64
    );
    assert!(
        failures.is_empty(),
        "the kernel classifier and the model disagree (seed {seed:#x}); add each \
         shrunk case to {}/ and fix the kernel (or the model):\n\n{}",
        corpus_dir().display(),
        failures.join("\n")
    );
    if only.is_none() {
        assert!(cases >= count, "{cases} of {count} cases ran");
    }
}
