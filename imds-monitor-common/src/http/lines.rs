//! Whole lines at a time: the request line and the header lines of an
//! ordinary request, eight bytes per step.
//!
//! [`RequestParser::feed_line`] takes a line only when it can tell, from
//! whole words, that the byte-at-a-time parser would take it without a
//! surprise: a request line of an upper-case method, a path of printable
//! bytes and a version; a header line whose value the parser does not read.
//! It leaves the parser as [`RequestParser::feed`] would after the same
//! bytes (the tests check it against the reference parser), and anything
//! else (a line cut by the end of the segment, blank lines before a
//! request, control bytes, folded or colon-less lines, the headers whose
//! values are read, a head about to overflow) to `feed`, at the line's start.

use super::{
    MAX_HEAD_BYTES, RequestParser, Step, flag, low_bytes, phase,
    swar::{self, HIGH},
};

/// Where [`RequestParser::feed_line`] reads the stream: the 8 bytes from
/// position `at` (the first in the lowest bits), `None` past the buffer.
pub trait Words {
    fn word(&self, at: u32) -> Option<u64>;
}

/// A byte slice as [`Words`], zeros past its end.
pub(super) struct Padded<'a>(pub &'a [u8]);

impl Words for Padded<'_> {
    fn word(&self, at: u32) -> Option<u64> {
        let rest = self.0.get(at as usize..)?;
        let mut word = [0u8; 8];
        let n = rest.len().min(8);
        word[..n].copy_from_slice(&rest[..n]);
        Some(u64::from_le_bytes(word))
    }
}

// How far a line may run to be taken whole: the verifier follows every
// word of these loops, and with room for 248-byte paths and 256-byte header
// lines it gave up after a million instructions. Longer lines go through
// `feed`.

/// Longest header line taken, in words (SDK tokens take 10).
const LINE_WORDS: u32 = 16;
/// Longest path taken, in words (IMDS paths are mostly under 64 bytes).
const PATH_WORDS: u32 = 12;
/// Longest version taken, in words (`HTTP/1.1\r` is 9 bytes).
const VERSION_WORDS: u32 = 2;

/// First words of the header names whose values the parser reads, lower case
/// (the token TTL shares its first word with the token header).
const READ_VALUE_WORDS: [u64; 4] = [
    u64::from_le_bytes(*b"x-aws-ec"),
    u64::from_le_bytes(*b"metadata"),
    u64::from_le_bytes(*b"authoriz"),
    u64::from_le_bytes(*b"content-"),
];
const TOKEN: [u64; 3] = [
    u64::from_le_bytes(*b"x-aws-ec"),
    u64::from_le_bytes(*b"2-metada"),
    u64::from_le_bytes(*b"ta-token"),
];
const FORWARDED_FOR: [u64; 2] = [
    u64::from_le_bytes(*b"x-forwar"),
    u64::from_le_bytes(*b"ded-for\0"),
];

/// The marks of `mask` in the first `n` bytes (all of them from 8 on).
#[inline(always)]
fn within(mask: u64, n: u32) -> u64 {
    mask & low_bytes(n)
}

impl RequestParser {
    /// Consumes the line starting at `at` (`avail` bytes of the stream
    /// from there) when it is an ordinary one; returns how many bytes it
    /// took with the step they end in ([`Step::Complete`] for the empty
    /// line ending the head, [`Step::More`] otherwise), or `None` when the
    /// line is for [`Self::feed`]. Call it only at the start of a request
    /// or of a header line ([`Self::at_line_start`]).
    #[inline(always)]
    pub fn feed_line<W: Words>(&mut self, src: &W, at: u32, avail: u32) -> Option<(u32, Step)> {
        if self.phase == phase::LINE_START {
            self.header_line(src, at, avail)
        } else {
            self.request_line(src, at, avail)
        }
    }

    /// At the start of a request (no byte of it yet) or of a header line.
    #[inline(always)]
    pub fn at_line_start(&self) -> bool {
        self.phase == phase::LINE_START || (self.phase == phase::METHOD && self.method_len == 0)
    }

    #[inline(always)]
    fn request_line<W: Words>(&mut self, src: &W, at: u32, avail: u32) -> Option<(u32, Step)> {
        // The method: upper-case letters, then a space, within the first word.
        let first = src.word(at)?;
        let space = within(swar::equal(first, b' '), avail);
        let method_len = swar::first(space);
        if method_len == 0 || method_len >= 8 {
            return None;
        }
        let letters = low_bytes(method_len) & HIGH;
        if swar::upper(first) & letters != letters {
            return None;
        }

        // The path, whole words into the buffer, up to the space before the
        // version; a control byte (CR and LF too) is for `feed` to judge.
        let path_at = at + method_len + 1;
        let mut path_len = 0u32;
        let mut slashes = 0u32;
        let mut ended = false;
        let mut j = 0;
        while j < PATH_WORDS {
            let off = j * 8;
            if off >= avail.saturating_sub(method_len + 1) {
                return None;
            }
            let word = src.word(path_at + off)?;
            let left = avail - (method_len + 1) - off;
            let stops = within(swar::below(word, b' ' + 1) | swar::equal(word, 0x7f), left);
            let n = swar::first(stops);
            let stopped = n < 8 || left < 8;
            if stopped && (n >= left || (word >> (8 * n)) as u8 != b' ') {
                // Cut by the segment's end, or a control byte.
                return None;
            }
            let keep = low_bytes(n);
            let start = off as usize;
            self.path[start..start + 8].copy_from_slice(&(word & keep).to_le_bytes());
            slashes += swar::count(swar::equal(word, b'/') & keep & HIGH);
            path_len = off + n;
            if n < 8 {
                ended = true;
                break;
            }
            j += 1;
        }
        if !ended || path_len == 0 {
            return None;
        }

        // The version: anything up to the line feed but control bytes other
        // than CR.
        let version_at = path_at + path_len + 1;
        let used = method_len + 1 + path_len + 1;
        let mut line_len = 0;
        let mut k = 0;
        while k < VERSION_WORDS {
            let off = k * 8;
            if used + off >= avail {
                return None;
            }
            let word = src.word(version_at + off)?;
            let left = avail - used - off;
            let lf = within(swar::equal(word, b'\n'), left);
            let end = swar::first(lf);
            let bad =
                (swar::below(word, b' ') & !swar::equal(word, b'\r')) | swar::equal(word, 0x7f);
            if within(bad, end) != 0 {
                return None;
            }
            if end < 8 {
                line_len = used + off + end + 1;
                break;
            }
            if left <= 8 {
                return None;
            }
            k += 1;
        }
        if line_len == 0 {
            return None;
        }

        self.method = (first & low_bytes(method_len)).to_le_bytes();
        self.method_len = method_len as u8;
        self.path_len = path_len as u16;
        self.path_slashes = slashes as u8;
        // The last 8 path bytes big-endian, and the 2 before them.
        self.path_tail = if path_len >= 8 {
            src.word(path_at + path_len - 8)?.swap_bytes()
        } else {
            (src.word(path_at)? & low_bytes(path_len)).swap_bytes() >> (64 - 8 * path_len)
        };
        self.path_tail_hi = if path_len >= 10 {
            (src.word(path_at + path_len - 10)? as u16).swap_bytes()
        } else if path_len == 9 {
            src.word(path_at)? as u8 as u16
        } else {
            0
        };
        self.head_bytes = line_len as u16;
        self.phase = phase::LINE_START;
        Some((line_len, Step::More))
    }

    #[inline(always)]
    fn header_line<W: Words>(&mut self, src: &W, at: u32, avail: u32) -> Option<(u32, Step)> {
        let first = src.word(at)?;
        let b = first as u8;
        if b == b'\r' {
            // The empty line that ends the head.
            if avail < 2 || (first >> 8) as u8 != b'\n' {
                return None;
            }
            if self.head_bytes as u32 + 2 > MAX_HEAD_BYTES as u32 {
                return None;
            }
            self.head_bytes += 2;
            self.phase = phase::DONE;
            return Some((2, Step::Complete));
        }
        if b == b'\n' || b == b' ' || b == b'\t' || b == b':' {
            return None;
        }
        // The name runs to the first colon; a line feed before it, or a CR
        // in it (which `feed` would skip inside a name), is for `feed`.
        let mut colon = 0;
        let mut line_len = 0;
        let mut j = 0;
        while j < LINE_WORDS {
            let off = j * 8;
            if off >= avail {
                return None;
            }
            let word = if j == 0 { first } else { src.word(at + off)? };
            let left = avail - off;
            if colon == 0 {
                let stops = within(
                    swar::equal(word, b':') | swar::equal(word, b'\n') | swar::equal(word, b'\r'),
                    left,
                );
                let n = swar::first(stops);
                if n < 8 {
                    if (word >> (8 * n)) as u8 != b':' {
                        return None;
                    }
                    colon = off + n;
                }
            }
            if colon != 0 {
                // The value is not read: only its end matters (no line feed
                // came before the colon).
                let lf = within(swar::equal(word, b'\n'), left);
                let end = swar::first(lf);
                if end < 8 {
                    line_len = off + end + 1;
                    break;
                }
            }
            if left <= 8 {
                return None;
            }
            j += 1;
        }
        if line_len == 0 || self.head_bytes as u32 + line_len > MAX_HEAD_BYTES as u32 {
            return None;
        }
        let name0 = swar::to_lower(first);
        let mut seen = 0;
        if colon == 24 {
            let name1 = swar::to_lower(src.word(at + 8)?);
            let name2 = swar::to_lower(src.word(at + 16)?);
            // Word by word: an array compare becomes a byte-loop memcmp in eBPF.
            if name0 == TOKEN[0] && name1 == TOKEN[1] && name2 == TOKEN[2] {
                seen = flag::TOKEN;
            }
        } else if colon == 15 {
            let name1 = swar::to_lower(src.word(at + 8)?) & low_bytes(7);
            if name0 == FORWARDED_FOR[0] && name1 == FORWARDED_FOR[1] {
                seen = flag::FORWARDED_FOR;
            }
        }
        let read_value = READ_VALUE_WORDS[0] == name0
            || READ_VALUE_WORDS[1] == name0
            || READ_VALUE_WORDS[2] == name0
            || READ_VALUE_WORDS[3] == name0;
        if seen == 0 && colon >= 8 && read_value {
            // A header whose value is read, or a name close to one.
            return None;
        }
        self.flags |= seen;
        self.head_bytes += line_len as u16;
        Some((line_len, Step::More))
    }
}
