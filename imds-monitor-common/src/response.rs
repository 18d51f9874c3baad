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

const CONTENT_LENGTH: &[u8; 15] = b"content-length:";

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
        if pos < CONTENT_LENGTH.len() && CONTENT_LENGTH[pos] == b.to_ascii_lowercase() {
            if pos == CONTENT_LENGTH.len() - 1 {
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
