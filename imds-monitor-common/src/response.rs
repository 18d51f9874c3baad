//! Streaming HTTP/1.1 response-head reader, one byte at a time: the status
//! code of each response on a connection, and where the next one starts
//! (Content-Length bodies are skipped). Same constraints as [`crate::http`].

/// Where in a response the reader is.
pub mod phase {
    /// In "HTTP/1.1 " before the status code.
    pub const VERSION: u8 = 0;
    pub const STATUS: u8 = 1;
    /// Rest of the status line (reason phrase).
    pub const REASON: u8 = 2;
    pub const LINE_START: u8 = 3;
    pub const HEADER: u8 = 4;
    pub const END_CR: u8 = 5;
    pub const BODY: u8 = 6;
    /// Not a response we can follow (chunked body, junk): stop reading.
    pub const LOST: u8 = 7;
}

/// What the caller should do after a byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseStep {
    More,
    /// The status line ended: `status` holds the code.
    Status,
    /// The head and body ended: the next byte starts the next response.
    Done,
    /// Cannot follow this connection's responses any further.
    Lost,
}

/// The header name, padded to a power of two so that the kernel indexes it
/// with a mask the verifier can see (6.12 rejected the bound check alone).
use crate::http::swar;

const CONTENT_LENGTH: &[u8; 16] = b"content-length:\0";
const CONTENT_LENGTH_LEN: usize = 15;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseReader {
    pub body_left: u32,
    pub content_length: u32,
    pub status: u16,
    /// Bytes into the current line (saturating).
    line_pos: u16,
    pub phase: u8,
    /// The current header line still matches `content-length:`.
    matches_length: u8,
    /// Digits read after `content-length:`.
    in_length: u8,
    has_length: u8,
}

impl ResponseReader {
    pub const fn new() -> Self {
        Self {
            body_left: 0,
            content_length: 0,
            status: 0,
            line_pos: 0,
            phase: phase::VERSION,
            matches_length: 0,
            in_length: 0,
            has_length: 0,
        }
    }

    #[inline(always)]
    fn next_response(&mut self) {
        // Field by field: `*self = Self::new()` becomes a `memset` call.
        set_fields!(self, {
            body_left: 0,
            content_length: 0,
            status: 0,
            line_pos: 0,
            phase: phase::VERSION,
            matches_length: 0,
            in_length: 0,
            has_length: 0,
        });
    }

    #[inline(always)]
    pub fn feed(&mut self, b: u8) -> ResponseStep {
        match self.phase {
            phase::VERSION => {
                // "HTTP/1.1 ": any token up to the first space.
                if b == b' ' && self.line_pos > 0 {
                    self.phase = phase::STATUS;
                } else if !(0x20..=0x7e).contains(&b) || self.line_pos > 16 {
                    self.phase = phase::LOST;
                    return ResponseStep::Lost;
                }
                self.line_pos = self.line_pos.saturating_add(1);
                ResponseStep::More
            }
            phase::STATUS => {
                if b.is_ascii_digit() && self.status < 100 {
                    self.status = self.status * 10 + (b - b'0') as u16;
                    return ResponseStep::More;
                }
                if self.status < 100 {
                    self.phase = phase::LOST;
                    return ResponseStep::Lost;
                }
                self.phase = if b == b'\n' {
                    phase::LINE_START
                } else {
                    phase::REASON
                };
                ResponseStep::Status
            }
            phase::REASON => {
                if b == b'\n' {
                    self.phase = phase::LINE_START;
                }
                ResponseStep::More
            }
            phase::LINE_START => match b {
                b'\r' => {
                    self.phase = phase::END_CR;
                    ResponseStep::More
                }
                b'\n' => self.end_of_head(),
                _ => {
                    self.phase = phase::HEADER;
                    self.line_pos = 0;
                    self.matches_length = 1;
                    self.in_length = 0;
                    self.header_byte(b);
                    ResponseStep::More
                }
            },
            phase::HEADER => {
                if b == b'\n' {
                    self.phase = phase::LINE_START;
                } else {
                    self.header_byte(b);
                }
                ResponseStep::More
            }
            phase::END_CR => self.end_of_head(),
            phase::BODY => {
                self.body_left = self.body_left.saturating_sub(1);
                if self.body_left == 0 {
                    self.next_response();
                    return ResponseStep::Done;
                }
                ResponseStep::More
            }
            _ => ResponseStep::Lost,
        }
    }

    /// Consumes the bytes at the start of `word` (the next `avail` bytes of
    /// the stream, the first in the lowest bits) that [`Self::feed`] would
    /// take without a transition: body bytes (any number, `avail` may
    /// exceed 8 there), and the rest of a reason phrase or of a header line
    /// that is not `Content-Length`, up to its line feed. Returns how many;
    /// 0 when the next byte needs [`Self::feed`]. The state left is the
    /// one feeding the same bytes one at a time leaves (tests check it).
    #[inline(always)]
    pub fn feed_run(&mut self, word: u64, avail: u32) -> u32 {
        match self.phase {
            phase::BODY => {
                let n = if self.body_left < avail {
                    self.body_left
                } else {
                    avail
                };
                if n == 0 {
                    return 0;
                }
                self.body_left -= n;
                if self.body_left == 0 {
                    self.next_response();
                }
                n
            }
            phase::REASON | phase::HEADER => {
                if self.phase == phase::HEADER && (self.matches_length != 0 || self.in_length != 0)
                {
                    return 0;
                }
                let mut n = swar::first(swar::equal(word, b'\n'));
                if n > avail {
                    n = avail;
                }
                if self.phase == phase::HEADER {
                    self.line_pos = self.line_pos.saturating_add(n as u16);
                }
                n
            }
            _ => 0,
        }
    }

    #[inline(always)]
    fn header_byte(&mut self, b: u8) {
        let pos = self.line_pos as usize;
        self.line_pos = self.line_pos.saturating_add(1);
        if self.in_length != 0 {
            if b.is_ascii_digit() {
                let next = self
                    .content_length
                    .saturating_mul(10)
                    .saturating_add((b - b'0') as u32);
                self.content_length = next;
                self.has_length = 1;
            }
            return;
        }
        if self.matches_length == 0 {
            return;
        }
        // black_box: LLVM would drop the mask as implied by `pos < 15` and
        // the verifier, on a copy of the register, lose the bound.
        let at = core::hint::black_box(pos) & 15;
        if pos < CONTENT_LENGTH_LEN && CONTENT_LENGTH[at] == b.to_ascii_lowercase() {
            if pos == CONTENT_LENGTH_LEN - 1 {
                self.in_length = 1;
                self.content_length = 0;
            }
        } else {
            self.matches_length = 0;
        }
    }

    #[inline(always)]
    fn end_of_head(&mut self) -> ResponseStep {
        // HEAD responses and 1xx/204/304 have no body whatever Content-Length
        // says; IMDS sends neither, and a wrong guess only loses later statuses.
        if self.has_length != 0 && self.content_length > 0 {
            self.body_left = self.content_length;
            self.phase = phase::BODY;
            return ResponseStep::More;
        }
        if self.has_length == 0 {
            // No length: the body runs to the end of the connection.
            self.phase = phase::LOST;
            return ResponseStep::Done;
        }
        self.next_response();
        ResponseStep::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_response_starts_over_like_new() {
        let mut r = ResponseReader::new();
        for &b in b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nab" {
            r.feed(b);
        }
        r.next_response();
        assert_eq!(format!("{r:?}"), format!("{:?}", ResponseReader::new()));
    }

    fn statuses(stream: &[u8]) -> (Vec<u16>, usize) {
        let mut r = ResponseReader::new();
        let mut out = Vec::new();
        let mut done = 0;
        for &b in stream {
            match r.feed(b) {
                ResponseStep::Status => out.push(r.status),
                ResponseStep::Done => done += 1,
                ResponseStep::Lost => break,
                ResponseStep::More => {}
            }
        }
        (out, done)
    }

    #[test]
    fn pipelined_responses_with_bodies() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 401 Unauthorized\r\ncontent-length: 3\r\n\r\nabcHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(statuses(stream), (vec![200, 401, 404], 3));
    }

    #[test]
    fn split_anywhere() {
        let stream = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nnoHTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx";
        let whole = statuses(stream);
        for cut in 1..stream.len() {
            let mut r = ResponseReader::new();
            let mut got = Vec::new();
            for &b in stream[..cut].iter().chain(&stream[cut..]) {
                if r.feed(b) == ResponseStep::Status {
                    got.push(r.status);
                }
            }
            assert_eq!(got, whole.0, "cut {cut}");
        }
    }

    #[test]
    fn junk_and_chunked_are_lost_not_misread() {
        assert_eq!(statuses(b"\x16\x03\x01junk").0, Vec::<u16>::new());
        assert_eq!(statuses(b"HTTP/1.1 2x0 OK\r\n").0, Vec::<u16>::new());
        // No Content-Length: status read, then nothing more can be followed.
        let (codes, _) = statuses(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 500 X\r\n");
        assert_eq!(codes, vec![200]);
    }

    /// Feeds `stream` taking every run `feed_run` takes, the rest byte by
    /// byte; pushes the statuses to `out`. False once the reader is lost.
    fn feed_with_runs(r: &mut ResponseReader, stream: &[u8], out: &mut Vec<u16>) -> bool {
        let mut i = 0;
        while i < stream.len() {
            let rest = &stream[i..];
            let mut word = [0u8; 8];
            let n = rest.len().min(8);
            word[..n].copy_from_slice(&rest[..n]);
            let avail = if r.phase == phase::BODY {
                rest.len()
            } else {
                n
            };
            let taken = r.feed_run(u64::from_le_bytes(word), avail as u32);
            if taken > 0 {
                i += taken as usize;
                continue;
            }
            match r.feed(stream[i]) {
                ResponseStep::Status => out.push(r.status),
                ResponseStep::Lost => return false,
                _ => {}
            }
            i += 1;
        }
        true
    }

    #[test]
    fn runs_leave_the_state_bytes_leave() {
        let streams: [&[u8]; 5] = [
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nAccept-Ranges: none\r\nContent-Length: 5\r\nServer: EC2ws\r\n\r\nhelloHTTP/1.1 401 Unauthorized\r\ncontent-length: 3\r\n\r\nabc",
            b"HTTP/1.1 404 Not Found\nContent-Length: 1\n\nxHTTP/1.1 200 A very long reason phrase indeed\r\nX-Long-Header-Name: vvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Lengthy: 7\r\nContent-Length: 12\r\n\r\n0123456789ab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello",
            b"\x16\x03\x01junk",
        ];
        for stream in streams {
            let (want, _) = statuses(stream);
            let mut bytes = ResponseReader::new();
            for &x in stream {
                if bytes.feed(x) == ResponseStep::Lost {
                    break;
                }
            }
            // Split anywhere: a run must stop at the segment's end.
            for cut in 0..=stream.len() {
                let (a, b) = stream.split_at(cut);
                let mut r = ResponseReader::new();
                let mut got = Vec::new();
                if feed_with_runs(&mut r, a, &mut got) {
                    feed_with_runs(&mut r, b, &mut got);
                }
                let text = String::from_utf8_lossy(stream);
                assert_eq!(got, want, "cut {cut} of {text:?}");
                if bytes.phase != phase::LOST {
                    assert_eq!(
                        format!("{r:?}"),
                        format!("{bytes:?}"),
                        "cut {cut} of {text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn lf_only_lines() {
        assert_eq!(
            statuses(
                b"HTTP/1.1 200 OK\nContent-Length: 1\n\nxHTTP/1.1 404 N\nContent-Length: 0\n\n"
            ),
            (vec![200, 404], 2)
        );
    }
}
