//! Streaming HTTP/1.1 request-head parser, one byte at a time.
//!
//! The kernel classifier feeds it every payload byte of a connection to an IMDS
//! endpoint (through `bpf_loop`), so it keeps all state in one fixed-size,
//! `Copy` struct that lives in a per-connection map value, uses fixed bounds
//! only, and never panics. The same code runs in the daemon's unit tests.
//! Bytes that change no state but counters (most of the path, header values
//! it does not read, names of headers it does not know) it also takes eight
//! at a time ([`RequestParser::feed_run`]), with the same result.
//!
//! It remembers only what classification needs: the method, the path (first
//! [`PATH_CAP`] bytes), which of a few known headers were present, the token
//! TTL and the Content-Length. Header values are never stored, so no token or
//! credential can leave the kernel.

use crate::class::{InvalidReason, RequestClass};

/// Bytes of the path kept for the event; longer paths are truncated (and flagged).
pub const PATH_CAP: usize = 256;
/// Bytes of the method kept; IMDS methods are at most 4 long.
pub const METHOD_CAP: usize = 8;
/// Bytes of one request's head (request line plus headers) the parser inspects.
/// A head still open after this many bytes is reported as `incomplete`.
pub const MAX_HEAD_BYTES: u16 = 4096;
/// The largest token TTL IMDS accepts, in seconds.
pub const MAX_TOKEN_TTL: u32 = 21_600;
/// Numbers in header values saturate here: larger values only need to be "too large".
const NUMBER_CAP: u32 = 100_000_000;

/// Where in the request head the parser is.
pub mod phase {
    pub const METHOD: u8 = 0;
    pub const PATH: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const LINE_START: u8 = 3;
    pub const HEADER_NAME: u8 = 4;
    pub const HEADER_VALUE: u8 = 5;
    pub const END_CR: u8 = 6;
    /// The head ended with an empty line: the request can be classified.
    pub const DONE: u8 = 7;
    /// Not HTTP (binary junk, control bytes in the request line, ...).
    pub const MALFORMED: u8 = 8;
    /// The head did not end within [`super::MAX_HEAD_BYTES`].
    pub const OVERFLOW: u8 = 9;
}

/// Facts seen in a request head, as bits of [`RequestParser::flags`].
pub mod flag {
    /// `X-aws-ec2-metadata-token` present.
    pub const TOKEN: u16 = 1 << 0;
    /// `X-aws-ec2-metadata-token-ttl-seconds` present.
    pub const TTL: u16 = 1 << 1;
    /// The TTL value was empty or not a plain decimal number.
    pub const TTL_NOT_NUMBER: u16 = 1 << 2;
    /// `X-Forwarded-For` present (a proxy in the path; IMDS rejects token PUTs with it).
    pub const FORWARDED_FOR: u16 = 1 << 3;
    /// `Metadata-Flavor: Google` (GCP metadata client).
    pub const GCP: u16 = 1 << 4;
    /// `Metadata: true` (Azure IMDS client).
    pub const AZURE: u16 = 1 << 5;
    /// `Authorization: Bearer Oracle` (Oracle Cloud IMDS client).
    pub const ORACLE: u16 = 1 << 6;
    /// The path was longer than [`super::PATH_CAP`].
    pub const PATH_TRUNCATED: u16 = 1 << 7;
    /// The method was longer than [`super::METHOD_CAP`].
    pub const METHOD_TRUNCATED: u16 = 1 << 8;
    /// A header line without a colon was skipped.
    pub const BAD_HEADER_LINE: u16 = 1 << 9;
    /// The head ended with a bare LF instead of CRLF.
    pub const LF_ONLY: u16 = 1 << 10;
    /// `Content-Length` present.
    pub const CONTENT_LENGTH: u16 = 1 << 11;

    /// Headers only other clouds' metadata clients send.
    pub const OTHER_CLOUD: u16 = GCP | AZURE | ORACLE;
}

/// The headers the parser recognises, lower case.
const HEADER_COUNT: usize = 7;
const H_TOKEN: u8 = 0;
const H_TTL: u8 = 1;
const H_FORWARDED_FOR: u8 = 2;
const H_METADATA_FLAVOR: u8 = 3;
const H_METADATA: u8 = 4;
const H_AUTHORIZATION: u8 = 5;
const H_CONTENT_LENGTH: u8 = 6;
const H_NONE: u8 = 0xff;
/// Row width of [`HEADER_NAMES`]: the longest name (36) plus a word to read
/// past it, so the kernel indexes rows with constant bounds.
const NAME_ROW: usize = 48;
/// Pads the rows: an upper-case letter, which a lower-cased name byte never is.
const NAME_PAD: u8 = b'A';

static HEADER_NAMES: [[u8; NAME_ROW]; HEADER_COUNT] = [
    pad_with(b"x-aws-ec2-metadata-token", NAME_PAD),
    pad_with(b"x-aws-ec2-metadata-token-ttl-seconds", NAME_PAD),
    pad_with(b"x-forwarded-for", NAME_PAD),
    pad_with(b"metadata-flavor", NAME_PAD),
    pad_with(b"metadata", NAME_PAD),
    pad_with(b"authorization", NAME_PAD),
    pad_with(b"content-length", NAME_PAD),
];
static HEADER_LENS: [u8; HEADER_COUNT] = [24, 36, 15, 15, 8, 13, 14];

// A header name is matched exactly, one comparison per byte: it is followed
// along the longest known name it can still become (`name_ref`), chosen by
// its first byte (`name_start`). That works because of how the names
// overlap, which a test checks: `x-aws-ec2-metadata-token` is a prefix of
// the TTL header's name and `metadata` one of `metadata-flavor` (both found
// by their length at the colon, `matched_header`), and `x-forwarded-for`
// leaves the TTL header's name at its third byte (`on_header_name`).

/// Where `x-forwarded-for` leaves `x-aws-ec2-...`.
const FORWARDED_FOR_FORK: u8 = 2;

/// Whether `on_header_value` looks at the value of header `h`.
#[inline(always)]
const fn reads_value(h: u8) -> bool {
    matches!(
        h,
        H_TTL | H_CONTENT_LENGTH | H_METADATA_FLAVOR | H_METADATA | H_AUTHORIZATION
    )
}

/// The longest known name a header name starting with `b` can become.
#[inline(always)]
const fn name_start(b: u8) -> u8 {
    match b.to_ascii_lowercase() {
        b'x' => H_TTL,
        b'm' => H_METADATA_FLAVOR,
        b'a' => H_AUTHORIZATION,
        b'c' => H_CONTENT_LENGTH,
        _ => H_NONE,
    }
}

/// Values (compared case-insensitively) that mark another cloud's metadata client.
const VALUE_CAP: usize = 16;
static GCP_VALUE: [u8; VALUE_CAP] = pad(b"google");
static AZURE_VALUE: [u8; VALUE_CAP] = pad(b"true");
static ORACLE_VALUE: [u8; VALUE_CAP] = pad(b"bearer oracle");

const fn pad<const N: usize>(s: &[u8]) -> [u8; N] {
    pad_with(s, 0)
}

const fn pad_with<const N: usize>(s: &[u8], fill: u8) -> [u8; N] {
    let mut out = [fill; N];
    let mut i = 0;
    while i < s.len() {
        out[i] = s[i];
        i += 1;
    }
    out
}

/// What the caller should do after feeding a byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep feeding.
    More,
    /// The head is complete: classify, then [`RequestParser::reset`] for the next request.
    Complete,
    /// Not HTTP: report `invalid`; nothing later on this connection can be trusted.
    Malformed,
    /// The head did not end within [`MAX_HEAD_BYTES`]: report `incomplete`.
    Overflow,
}

/// Parser state for one request head. `Copy` and `repr(C)` so it can sit in a map value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RequestParser {
    pub path: [u8; PATH_CAP],
    pub method: [u8; METHOD_CAP],
    /// Last 8 path bytes, big-endian, so the token path is checked without
    /// indexing by length (and past `PATH_CAP`).
    path_tail: u64,
    pub ttl: u32,
    pub content_length: u32,
    pub flags: u16,
    /// Path bytes seen, saturating at `u16::MAX` (may exceed `PATH_CAP`).
    pub path_len: u16,
    /// Head bytes consumed for this request, including leading empty lines.
    pub head_bytes: u16,
    value_len: u16,
    /// The two path bytes before `path_tail`.
    path_tail_hi: u16,
    pub phase: u8,
    pub method_len: u8,
    name_len: u8,
    /// The longest known header name the current name is still a prefix of
    /// (lower-cased), or `H_NONE`.
    name_ref: u8,
    /// Known header whose value is being read, or `H_NONE`.
    current: u8,
    /// The value still equals the literal it is compared with.
    value_matches: u8,
    /// Digits seen then whitespace: further digits make the number invalid.
    number_ended: u8,
    path_slashes: u8,
    _pad: [u8; 6],
}

impl Default for RequestParser {
    fn default() -> Self {
        Self::new()
    }
}

#[inline(always)]
const fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~')
}

#[inline(always)]
const fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

impl RequestParser {
    pub const fn new() -> Self {
        Self {
            path: [0; PATH_CAP],
            method: [0; METHOD_CAP],
            path_tail: 0,
            ttl: 0,
            content_length: 0,
            flags: 0,
            path_len: 0,
            head_bytes: 0,
            value_len: 0,
            path_tail_hi: 0,
            phase: phase::METHOD,
            method_len: 0,
            name_len: 0,
            name_ref: H_NONE,
            current: H_NONE,
            value_matches: 0,
            number_ended: 0,
            path_slashes: 0,
            _pad: [0; 6],
        }
    }

    /// Ready for the next request on the same connection. Cheaper than
    /// `*self = Self::new()`: the path and method buffers are overwritten as
    /// they are filled and only read up to their lengths.
    #[inline(always)]
    pub fn reset(&mut self) {
        set_fields!(self, {
            path_tail: 0,
            path_tail_hi: 0,
            path_slashes: 0,
            ttl: 0,
            content_length: 0,
            flags: 0,
            path_len: 0,
            head_bytes: 0,
            value_len: 0,
            phase: phase::METHOD,
            method_len: 0,
            name_len: 0,
            name_ref: H_NONE,
            current: H_NONE,
            value_matches: 0,
            number_ended: 0,
        });
    }

    /// True once any byte of a request (not just blank lines) has been seen.
    #[inline(always)]
    pub fn in_request(&self) -> bool {
        self.method_len != 0
    }

    /// The method bytes kept (at most [`METHOD_CAP`]).
    pub fn method(&self) -> &[u8] {
        let n = (self.method_len as usize).min(METHOD_CAP);
        &self.method[..n]
    }

    /// The path bytes kept (at most [`PATH_CAP`]).
    pub fn path(&self) -> &[u8] {
        let n = (self.path_len as usize).min(PATH_CAP);
        &self.path[..n]
    }

    /// Feeds every byte of `bytes`, stopping at the first byte that ends the head.
    /// Returns the step and how many bytes were consumed. Host-side helper; the
    /// kernel drives [`Self::feed`] and [`Self::feed_run`] itself, the same way:
    /// one byte, then a run of up to 8 bytes that change nothing but counters.
    pub fn feed_slice(&mut self, bytes: &[u8]) -> (Step, usize) {
        let mut i = 0;
        while i < bytes.len() {
            let step = self.feed(bytes[i]);
            i += 1;
            if step != Step::More {
                return (step, i);
            }
            let rest = &bytes[i..];
            let n = rest.len().min(8);
            let mut word = [0u8; 8];
            word[..n].copy_from_slice(&rest[..n]);
            i += self.feed_run(u64::from_le_bytes(word), n as u32) as usize;
        }
        (Step::More, bytes.len())
    }

    /// Consumes one byte of the request head.
    #[inline(always)]
    pub fn feed(&mut self, b: u8) -> Step {
        match self.phase {
            phase::DONE => return Step::Complete,
            phase::MALFORMED => return Step::Malformed,
            phase::OVERFLOW => return Step::Overflow,
            _ => {}
        }
        self.head_bytes = self.head_bytes.saturating_add(1);
        if self.head_bytes > MAX_HEAD_BYTES {
            self.phase = phase::OVERFLOW;
            return Step::Overflow;
        }
        match self.phase {
            phase::METHOD => self.on_method(b),
            phase::PATH => self.on_path(b),
            phase::VERSION => self.on_version(b),
            phase::LINE_START => self.on_line_start(b),
            phase::HEADER_NAME => self.on_header_name(b),
            phase::HEADER_VALUE => self.on_header_value(b),
            _ => self.on_end_cr(b),
        }
        match self.phase {
            phase::DONE => Step::Complete,
            phase::MALFORMED => Step::Malformed,
            _ => Step::More,
        }
    }

    /// Consumes the bytes at the start of `word` (the next `avail` bytes of
    /// the stream, the first in the lowest bits; bytes past `avail` are
    /// ignored) that [`Self::feed`] would take without a transition, eight
    /// at a time: method letters, path bytes, the rest of the request line,
    /// a header name as long as it stays a known one's prefix or once it
    /// cannot be one, the value of a header whose value is not read.
    /// Returns how many (at most 8); 0 when the next byte needs
    /// [`Self::feed`]. Feeding the same bytes one at a time leaves the same
    /// state (the tests check it against the byte-at-a-time parser). Call it
    /// only while the last step was [`Step::More`].
    #[inline(always)]
    pub fn feed_run(&mut self, word: u64, avail: u32) -> u32 {
        let stops = match self.phase {
            phase::METHOD => {
                // More upper-case letters, as far as the method buffer goes.
                let len = self.method_len as usize;
                if len == 0 || len >= METHOD_CAP {
                    return 0;
                }
                (!swar::upper(word) & swar::HIGH) | swar::from(METHOD_CAP - len)
            }
            phase::PATH => {
                let len = self.path_len as usize;
                if len < PATH_CAP && len + 8 > PATH_CAP {
                    return 0;
                }
                // The space before the version, and control bytes.
                swar::below(word, b' ' + 1) | swar::equal(word, 0x7f)
            }
            // LF and control bytes other than CR.
            phase::VERSION => {
                (swar::below(word, b' ') & !swar::equal(word, b'\r')) | swar::equal(word, 0x7f)
            }
            phase::HEADER_NAME => {
                let r = self.name_ref as usize;
                if r == H_NONE as usize {
                    swar::equal(word, b':') | swar::equal(word, b'\n')
                } else {
                    // Up to the first byte that leaves the known name
                    // (colon, CR and LF included: names never hold them).
                    let pos = self.name_len as usize;
                    if r >= HEADER_COUNT || pos > NAME_ROW - 8 {
                        return 0;
                    }
                    let row = &HEADER_NAMES[r];
                    let name = u64::from_le_bytes([
                        row[pos],
                        row[pos + 1],
                        row[pos + 2],
                        row[pos + 3],
                        row[pos + 4],
                        row[pos + 5],
                        row[pos + 6],
                        row[pos + 7],
                    ]);
                    swar::nonzero(swar::to_lower(word) ^ name)
                }
            }
            // Values of unknown headers, tokens and X-Forwarded-For are not read.
            phase::HEADER_VALUE if !reads_value(self.current) => swar::equal(word, b'\n'),
            _ => return 0,
        };
        let room = (MAX_HEAD_BYTES as u32).saturating_sub(self.head_bytes as u32);
        let mut n = swar::first(stops);
        if n > avail {
            n = avail;
        }
        if n > room {
            n = room;
        }
        if n == 0 {
            return 0;
        }
        self.head_bytes += n as u16;
        match self.phase {
            phase::METHOD => {
                let len = self.method_len as u32;
                let method = u64::from_le_bytes(self.method) & low_bytes(len);
                self.method = (method | ((word & low_bytes(n)) << (8 * len))).to_le_bytes();
                self.method_len += n as u8;
            }
            phase::PATH => self.path_run(word, n),
            phase::HEADER_NAME if self.name_ref != H_NONE => {
                self.name_len = self.name_len.saturating_add(n as u8);
            }
            _ => {}
        }
        n
    }

    /// `n` (1 to 8) path bytes at the start of `word`, none of them special.
    #[inline(always)]
    fn path_run(&mut self, word: u64, n: u32) {
        let keep = low_bytes(n);
        let bytes = word & keep;
        let len = self.path_len as usize;
        if len + 8 <= PATH_CAP {
            // Whole words; only the `n` bytes kept are path (the rest zero).
            self.path[len..len + 8].copy_from_slice(&bytes.to_le_bytes());
        } else {
            // `feed_run` leaves the last few bytes before the cap to `feed`.
            self.flags |= flag::PATH_TRUNCATED;
        }
        self.path_len = self.path_len.saturating_add(n as u16);
        // The new bytes, big-endian, shifted in below the last 10.
        let tail = self.path_tail;
        let fresh = bytes.swap_bytes();
        if n >= 8 {
            self.path_tail_hi = tail as u16;
            self.path_tail = fresh;
        } else {
            let bits = 8 * n;
            self.path_tail_hi = if n >= 2 {
                (tail >> (64 - bits)) as u16
            } else {
                (self.path_tail_hi << 8) | (tail >> 56) as u16
            };
            self.path_tail = (tail << bits) | (fresh >> (64 - bits));
        }
        let slashes = swar::count(swar::equal(bytes, b'/') & keep);
        self.path_slashes = self.path_slashes.saturating_add(slashes as u8);
    }

    #[inline(always)]
    fn on_method(&mut self, b: u8) {
        if self.method_len == 0 && (b == b'\r' || b == b'\n') {
            // Blank lines before a request are allowed (RFC 9112 2.2); they
            // follow bodies on keep-alive connections.
            self.head_bytes = 0;
            return;
        }
        if b == b' ' && self.method_len != 0 {
            self.phase = phase::PATH;
        } else if is_tchar(b) {
            let i = self.method_len as usize;
            if i < METHOD_CAP {
                self.method[i] = b;
                self.method_len += 1;
            } else {
                self.flags |= flag::METHOD_TRUNCATED;
            }
        } else {
            self.phase = phase::MALFORMED;
        }
    }

    #[inline(always)]
    fn on_path(&mut self, b: u8) {
        if b == b' ' {
            self.phase = if self.path_len == 0 {
                phase::MALFORMED
            } else {
                phase::VERSION
            };
        } else if is_ctl(b) {
            // Includes CR/LF: a request line without a version is HTTP/0.9, not IMDS.
            self.phase = phase::MALFORMED;
        } else {
            let i = self.path_len as usize;
            if i < PATH_CAP {
                self.path[i] = b;
            } else {
                self.flags |= flag::PATH_TRUNCATED;
            }
            self.path_len = self.path_len.saturating_add(1);
            self.path_tail_hi = (self.path_tail_hi << 8) | (self.path_tail >> 56) as u16;
            self.path_tail = (self.path_tail << 8) | b as u64;
            if b == b'/' {
                self.path_slashes = self.path_slashes.saturating_add(1);
            }
        }
    }

    #[inline(always)]
    fn on_version(&mut self, b: u8) {
        if b == b'\n' {
            self.end_line();
        } else if b != b'\r' && is_ctl(b) {
            self.phase = phase::MALFORMED;
        }
    }

    #[inline(always)]
    fn end_line(&mut self) {
        self.phase = phase::LINE_START;
    }

    #[inline(always)]
    fn on_line_start(&mut self, b: u8) {
        match b {
            b'\r' => self.phase = phase::END_CR,
            b'\n' => {
                self.flags |= flag::LF_ONLY;
                self.phase = phase::DONE;
            }
            b' ' | b'\t' => {
                // Obsolete line folding: more of the previous value; ignore it.
                self.current = H_NONE;
                self.value_len = 1;
                self.phase = phase::HEADER_VALUE;
            }
            _ => {
                self.name_len = 0;
                self.name_ref = name_start(b);
                self.phase = phase::HEADER_NAME;
                self.on_header_name(b);
            }
        }
    }

    #[inline(always)]
    fn on_header_name(&mut self, b: u8) {
        if b == b':' {
            self.current = self.matched_header();
            self.value_len = 0;
            self.value_matches = 1;
            self.number_ended = 0;
            self.phase = phase::HEADER_VALUE;
            match self.current {
                H_TOKEN => self.flags |= flag::TOKEN,
                H_TTL => {
                    self.flags |= flag::TTL;
                    self.ttl = 0;
                }
                H_FORWARDED_FOR => self.flags |= flag::FORWARDED_FOR,
                H_CONTENT_LENGTH => {
                    self.flags |= flag::CONTENT_LENGTH;
                    self.content_length = 0;
                }
                _ => {}
            }
            return;
        }
        if b == b'\n' {
            // A line without a colon: skip it rather than guess.
            self.flags |= flag::BAD_HEADER_LINE;
            self.end_line();
            return;
        }
        if b == b'\r' {
            return;
        }
        // Bytes that are not tokens (RFC 9112 5.1: no whitespace before the
        // colon) never equal a byte of a known name, so they end the match.
        let r = self.name_ref;
        if r == H_NONE {
            return;
        }
        let lower = b.to_ascii_lowercase();
        let pos = self.name_len as usize;
        let matches =
            (r as usize) < HEADER_COUNT && pos < NAME_ROW && HEADER_NAMES[r as usize][pos] == lower;
        if !matches {
            self.name_ref = if r == H_TTL
                && pos == FORWARDED_FOR_FORK as usize
                && lower == HEADER_NAMES[H_FORWARDED_FOR as usize][FORWARDED_FOR_FORK as usize]
            {
                H_FORWARDED_FOR
            } else {
                H_NONE
            };
        }
        self.name_len = self.name_len.saturating_add(1);
    }

    /// The known header whose whole name equals the name just read.
    #[inline(always)]
    fn matched_header(&self) -> u8 {
        let r = self.name_ref;
        if r as usize >= HEADER_COUNT {
            return H_NONE;
        }
        let len = self.name_len;
        if HEADER_LENS[r as usize] == len {
            r
        } else if r == H_TTL && len == HEADER_LENS[H_TOKEN as usize] {
            H_TOKEN
        } else if r == H_METADATA_FLAVOR && len == HEADER_LENS[H_METADATA as usize] {
            H_METADATA
        } else {
            H_NONE
        }
    }

    #[inline(always)]
    fn on_header_value(&mut self, b: u8) {
        if b == b'\n' {
            self.finish_value();
            self.end_line();
            return;
        }
        if b == b'\r' {
            return;
        }
        let is_space = b == b' ' || b == b'\t';
        if is_space && self.value_len == 0 {
            return; // leading whitespace
        }
        match self.current {
            H_TTL => {
                let mut ttl = self.ttl;
                self.number_byte(b, is_space, &mut ttl);
                self.ttl = ttl;
            }
            H_CONTENT_LENGTH => {
                let mut length = self.content_length;
                self.number_byte(b, is_space, &mut length);
                self.content_length = length;
            }
            H_METADATA_FLAVOR => self.literal_byte(b, &GCP_VALUE, 6),
            H_METADATA => self.literal_byte(b, &AZURE_VALUE, 4),
            H_AUTHORIZATION => self.literal_byte(b, &ORACLE_VALUE, 13),
            _ => {}
        }
        self.value_len = self.value_len.saturating_add(1);
    }

    #[inline(always)]
    fn number_byte(&mut self, b: u8, is_space: bool, value: &mut u32) {
        if b.is_ascii_digit() && self.number_ended == 0 {
            let next = *value * 10 + (b - b'0') as u32;
            *value = if next > NUMBER_CAP { NUMBER_CAP } else { next };
        } else if is_space {
            self.number_ended = 1;
        } else {
            self.value_matches = 0;
        }
    }

    #[inline(always)]
    fn literal_byte(&mut self, b: u8, literal: &[u8; VALUE_CAP], len: u16) {
        let pos = self.value_len as usize;
        if pos >= len as usize || pos >= VALUE_CAP || literal[pos] != b.to_ascii_lowercase() {
            self.value_matches = 0;
        }
    }

    #[inline(always)]
    fn finish_value(&mut self) {
        let whole = self.value_matches != 0;
        match self.current {
            H_TTL if !whole || self.value_len == 0 => self.flags |= flag::TTL_NOT_NUMBER,
            H_CONTENT_LENGTH if !whole || self.value_len == 0 => {
                // An unparsable length: body boundaries are unknown.
                self.content_length = NUMBER_CAP;
            }
            H_METADATA_FLAVOR if whole && self.value_len == 6 => self.flags |= flag::GCP,
            H_METADATA if whole && self.value_len == 4 => self.flags |= flag::AZURE,
            H_AUTHORIZATION if whole && self.value_len == 13 => self.flags |= flag::ORACLE,
            _ => {}
        }
        self.current = H_NONE;
    }

    #[inline(always)]
    fn on_end_cr(&mut self, b: u8) {
        self.phase = if b == b'\n' {
            phase::DONE
        } else {
            phase::MALFORMED
        };
    }

    /// Classifies a request whose head is complete ([`Step::Complete`]).
    #[inline(always)]
    pub fn classify(&self) -> (RequestClass, InvalidReason) {
        let aws_headers = self.flags & (flag::TOKEN | flag::TTL) != 0;
        if !aws_headers && self.flags & flag::OTHER_CLOUD != 0 {
            return (RequestClass::OtherCloud, InvalidReason::None);
        }
        if self.flags & flag::METHOD_TRUNCATED != 0 {
            return (RequestClass::Invalid, InvalidReason::Method);
        }
        let m = &self.method;
        let len = self.method_len;
        // Methods are case-sensitive (RFC 9110 9.1): "get" is not GET.
        let is_get = len == 3 && m[0] == b'G' && m[1] == b'E' && m[2] == b'T';
        let is_head = len == 4 && m[0] == b'H' && m[1] == b'E' && m[2] == b'A' && m[3] == b'D';
        let is_put = len == 3 && m[0] == b'P' && m[1] == b'U' && m[2] == b'T';
        if is_get || is_head {
            let class = if self.flags & flag::TOKEN != 0 {
                RequestClass::V2Get
            } else {
                RequestClass::V1Get
            };
            return (class, InvalidReason::None);
        }
        if !is_put {
            return (RequestClass::Invalid, InvalidReason::Method);
        }
        match self.token_path() {
            TokenPath::Latest => {}
            TokenPath::Dated => return (RequestClass::Invalid, InvalidReason::DatedTokenPath),
            TokenPath::No => return (RequestClass::Invalid, InvalidReason::PutNotToken),
        }
        if self.flags & flag::FORWARDED_FOR != 0 {
            return (RequestClass::Invalid, InvalidReason::ForwardedFor);
        }
        if self.flags & flag::TTL == 0 {
            return (RequestClass::Invalid, InvalidReason::MissingTtl);
        }
        if self.flags & flag::TTL_NOT_NUMBER != 0 || self.ttl == 0 || self.ttl > MAX_TOKEN_TTL {
            return (RequestClass::Invalid, InvalidReason::TtlOutOfRange);
        }
        (RequestClass::V2TokenPut, InvalidReason::None)
    }
}

/// Whether the first `avail` bytes of the stream, `word` (the first byte in
/// the lowest bits), start a request line: 1 to 7 upper-case letters, then
/// a space. The classifier parses a connection it holds no state for from
/// such a segment on (a keep-alive connection older than the monitor), and
/// judges nothing else it sends: a header line never starts like this
/// (no space before its colon).
#[inline(always)]
pub const fn starts_request(word: u64, avail: u32) -> bool {
    let n = if avail < 8 { avail } else { 8 };
    let space = swar::equal(word, b' ') & low_bytes(n);
    let method_len = swar::first(space);
    if method_len == 0 || method_len >= 8 {
        return false;
    }
    let letters = low_bytes(method_len) & swar::HIGH;
    swar::upper(word) & letters == letters
}

/// A mask of the first `n` bytes of a word (`n` at most 8).
#[inline(always)]
const fn low_bytes(n: u32) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    }
}

/// Eight bytes at a time in a `u64`, the first byte in the lowest bits.
/// Every mask has 0x80 set in exactly the bytes it names: no borrows or
/// carries cross bytes.
pub(crate) mod swar {
    const ONES: u64 = 0x0101_0101_0101_0101;
    pub const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = !HIGH;

    /// Bytes that are not zero.
    #[inline(always)]
    pub const fn nonzero(x: u64) -> u64 {
        ((x & LOW7).wrapping_add(LOW7) | x) & HIGH
    }

    /// Bytes equal to `c`.
    #[inline(always)]
    pub const fn equal(x: u64, c: u8) -> u64 {
        !nonzero(x ^ (ONES * c as u64)) & HIGH
    }

    /// Bytes below `n` (at most 0x80).
    #[inline(always)]
    pub const fn below(x: u64, n: u8) -> u64 {
        // The high bit of a byte's low 7 bits plus (0x80 - n) is set when
        // they are at least n.
        !((x & LOW7).wrapping_add(ONES * (0x80 - n as u64)) | x) & HIGH
    }

    /// Index of the first byte in `mask`, 8 when it is empty.
    #[inline(always)]
    pub const fn first(mask: u64) -> u32 {
        if mask == 0 {
            return 8;
        }
        // The lowest marked byte's bit alone, moved to the byte's bit 0, then
        // a multiply that sums the byte's index into the top byte.
        let low = (mask & mask.wrapping_neg()) >> 7;
        (low.wrapping_mul(0x0001_0203_0405_0607) >> 56) as u32
    }

    /// How many bytes `mask` marks.
    #[inline(always)]
    pub const fn count(mask: u64) -> u32 {
        ((mask >> 7).wrapping_mul(ONES) >> 56) as u32
    }

    /// Bytes from byte `n` on (`n` at most 8).
    #[inline(always)]
    pub const fn from(n: usize) -> u64 {
        if n >= 8 { 0 } else { HIGH << (8 * n) }
    }

    /// ASCII upper-case letters.
    #[inline(always)]
    pub const fn upper(x: u64) -> u64 {
        let low = x & LOW7;
        let from_a = low.wrapping_add(ONES * (0x80 - b'A' as u64));
        let past_z = low.wrapping_add(ONES * (0x80 - b'Z' as u64 - 1));
        from_a & !past_z & !x & HIGH
    }

    /// ASCII upper-case letters to lower case, like `u8::to_ascii_lowercase`.
    #[inline(always)]
    pub const fn to_lower(x: u64) -> u64 {
        x | (upper(x) >> 2)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenPath {
    /// `/latest/api/token`
    Latest,
    /// `/<version>/api/token`, which IMDS answers 403.
    Dated,
    No,
}

impl RequestParser {
    /// Classifies a PUT path from the streamed tail, slash count and fixed
    /// leading bytes: no index depends on the length (verifier-friendly).
    #[inline(always)]
    fn token_path(&self) -> TokenPath {
        const TAIL: u64 = u64::from_be_bytes(*b"pi/token");
        const TAIL_HI: u16 = u16::from_be_bytes(*b"/a");
        // "/<segment>/api/token": three slashes, a non-empty segment.
        if self.path[0] != b'/'
            || self.path_slashes != 3
            || self.path_len < 12
            || self.path_tail != TAIL
            || self.path_tail_hi != TAIL_HI
        {
            return TokenPath::No;
        }
        let p = &self.path;
        let latest = self.path_len == 17
            && p[1] == b'l'
            && p[2] == b'a'
            && p[3] == b't'
            && p[4] == b'e'
            && p[5] == b's'
            && p[6] == b't';
        if latest {
            TokenPath::Latest
        } else {
            TokenPath::Dated
        }
    }
}

#[cfg(test)]
mod tests;
