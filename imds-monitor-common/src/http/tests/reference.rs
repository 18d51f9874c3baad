//! The request parser as it was before `feed_run` and the name trie: one
//! byte at a time, every known header name compared at every byte. The tests
//! check that the parser gives the same results on any input.
#![allow(dead_code)]

use crate::class::{InvalidReason, RequestClass};
use crate::http::{MAX_HEAD_BYTES, MAX_TOKEN_TTL, METHOD_CAP, PATH_CAP, Step, flag, phase};

const NUMBER_CAP: u32 = 100_000_000;

const HEADER_COUNT: usize = 7;
const H_TOKEN: u8 = 0;
const H_TTL: u8 = 1;
const H_FORWARDED_FOR: u8 = 2;
const H_METADATA_FLAVOR: u8 = 3;
const H_METADATA: u8 = 4;
const H_AUTHORIZATION: u8 = 5;
const H_CONTENT_LENGTH: u8 = 6;
const H_NONE: u8 = 0xff;
const NAME_CAP: usize = 40;

/// Fixed-width rows so the kernel indexes them with constant bounds.
static HEADER_NAMES: [[u8; NAME_CAP]; HEADER_COUNT] = [
    pad(b"x-aws-ec2-metadata-token"),
    pad(b"x-aws-ec2-metadata-token-ttl-seconds"),
    pad(b"x-forwarded-for"),
    pad(b"metadata-flavor"),
    pad(b"metadata"),
    pad(b"authorization"),
    pad(b"content-length"),
];
static HEADER_LENS: [u8; HEADER_COUNT] = [24, 36, 15, 15, 8, 13, 14];
const ALL_HEADERS: u8 = (1 << HEADER_COUNT) - 1;

/// Values (compared case-insensitively) that mark another cloud's metadata client.
const VALUE_CAP: usize = 16;
static GCP_VALUE: [u8; VALUE_CAP] = pad(b"google");
static AZURE_VALUE: [u8; VALUE_CAP] = pad(b"true");
static ORACLE_VALUE: [u8; VALUE_CAP] = pad(b"bearer oracle");

const fn pad<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < s.len() {
        out[i] = s[i];
        i += 1;
    }
    out
}

/// Parser state for one request head. `Copy` and `repr(C)` so it can sit in a map value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Reference {
    pub path: [u8; PATH_CAP],
    pub method: [u8; METHOD_CAP],
    /// Last 8 path bytes, big-endian, so the token path is checked without
    /// indexing by length (and past `PATH_CAP`).
    pub path_tail: u64,
    pub ttl: u32,
    pub content_length: u32,
    pub flags: u16,
    /// Path bytes seen, saturating at `u16::MAX` (may exceed `PATH_CAP`).
    pub path_len: u16,
    /// Head bytes consumed for this request, including leading empty lines.
    pub head_bytes: u16,
    pub value_len: u16,
    /// The two path bytes before `path_tail`.
    pub path_tail_hi: u16,
    pub phase: u8,
    pub method_len: u8,
    pub name_len: u8,
    /// Known headers the current name still matches, one bit each.
    pub candidates: u8,
    /// Known header whose value is being read, or `H_NONE`.
    pub current: u8,
    /// The value still equals the literal it is compared with.
    pub value_matches: u8,
    /// Digits seen then whitespace: further digits make the number invalid.
    pub number_ended: u8,
    pub path_slashes: u8,
    pub _pad: [u8; 6],
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

impl Reference {
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
            candidates: 0,
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
        self.path_tail = 0;
        self.path_tail_hi = 0;
        self.path_slashes = 0;
        self.ttl = 0;
        self.content_length = 0;
        self.flags = 0;
        self.path_len = 0;
        self.head_bytes = 0;
        self.value_len = 0;
        self.phase = phase::METHOD;
        self.method_len = 0;
        self.name_len = 0;
        self.candidates = 0;
        self.current = H_NONE;
        self.value_matches = 0;
        self.number_ended = 0;
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
    /// kernel drives [`Self::feed`] itself.
    pub fn feed_slice(&mut self, bytes: &[u8]) -> (Step, usize) {
        for (i, &b) in bytes.iter().enumerate() {
            let step = self.feed(b);
            if step != Step::More {
                return (step, i + 1);
            }
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
                self.candidates = ALL_HEADERS;
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
        if !is_tchar(b) {
            // Whitespace before the colon is not a valid field name (RFC 9112 5.1).
            self.candidates = 0;
        }
        let lower = b.to_ascii_lowercase();
        let pos = self.name_len as usize;
        let mut remaining = self.candidates;
        let mut i = 0;
        while i < HEADER_COUNT {
            let bit = 1u8 << i;
            if remaining & bit != 0 {
                let matches = pos < HEADER_LENS[i] as usize
                    && pos < NAME_CAP
                    && HEADER_NAMES[i][pos] == lower;
                if !matches {
                    remaining &= !bit;
                }
            }
            i += 1;
        }
        self.candidates = remaining;
        self.name_len = self.name_len.saturating_add(1);
    }

    /// The known header whose whole name equals the name just read.
    #[inline(always)]
    pub fn matched_header(&self) -> u8 {
        let mut i = 0;
        while i < HEADER_COUNT {
            if self.candidates & (1 << i) != 0 && HEADER_LENS[i] == self.name_len {
                return i as u8;
            }
            i += 1;
        }
        H_NONE
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenPath {
    /// `/latest/api/token`
    Latest,
    /// `/<version>/api/token`, which IMDS answers 403.
    Dated,
    No,
}

impl Reference {
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
