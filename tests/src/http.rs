//! Minimal HTTP/1.1 framing shared by the mock IMDS (requests in, responses
//! out) and `imds-client` (requests out, responses in).
//!
//! Only what IMDS traffic needs: a header block, an optional `Content-Length`
//! body, keep-alive and pipelining. Chunked bodies are refused, as a mock has
//! no use for them and accepting them half-way would hide client bugs.

use std::fmt;

/// Largest header block accepted before the request is rejected.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest body accepted (IMDS requests carry none; this is a sanity bound).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a request or response could not be framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The header block exceeds [`MAX_HEADER_BYTES`].
    HeadersTooLarge,
    /// The start line is not `METHOD SP TARGET SP HTTP/x.y` (or the status line
    /// is not `HTTP/x.y SP CODE ...`).
    BadStartLine(String),
    /// A header line has no colon, an empty name or whitespace before the colon.
    BadHeader(String),
    /// `Content-Length` is not a number, appears twice with different values or
    /// exceeds [`MAX_BODY_BYTES`].
    BadContentLength,
    /// `Transfer-Encoding` is present (chunked framing is not supported).
    UnsupportedTransferEncoding,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeadersTooLarge => write!(f, "header block larger than {MAX_HEADER_BYTES} bytes"),
            Self::BadStartLine(line) => write!(f, "malformed start line {line:?}"),
            Self::BadHeader(line) => write!(f, "malformed header line {line:?}"),
            Self::BadContentLength => write!(f, "invalid Content-Length"),
            Self::UnsupportedTransferEncoding => write!(f, "Transfer-Encoding is not supported"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Header list in arrival order; names keep the case the peer sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// First value of the header whose whole name equals `name`, ignoring ASCII
    /// case. Whole-name matching matters for IMDS: `X-aws-ec2-metadata-token`
    /// is a prefix of `X-aws-ec2-metadata-token-ttl-seconds`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a header with this whole name (ASCII case-insensitive) is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Header names in arrival order, as sent.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Request target as sent, query string included.
    pub target: String,
    /// Minor version of `HTTP/1.x`.
    pub minor_version: u8,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Request {
    /// Target without the query string.
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or_default()
    }

    /// Whether the connection stays open after this request (HTTP/1.1 default
    /// unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub fn keep_alive(&self) -> bool {
        let connection = self.headers.get("connection").map(str::to_ascii_lowercase);
        match connection.as_deref() {
            Some(v) if v.split(',').any(|t| t.trim() == "close") => false,
            Some(v) if v.split(',').any(|t| t.trim() == "keep-alive") => true,
            _ => self.minor_version >= 1,
        }
    }
}

/// Splits `buf` at the end of its header block. Returns the header lines
/// (without the blank line) and the number of bytes the block used, or `None`
/// when the block is not complete yet. Bare `\n` line ends are tolerated.
fn split_header_block(buf: &[u8]) -> Result<Option<(Vec<String>, usize)>, ParseError> {
    // RFC 9112 2.2: ignore empty lines received before the start line.
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") || buf[start..].starts_with(b"\n") {
        start += if buf[start] == b'\r' { 2 } else { 1 };
    }
    let mut lines = Vec::new();
    let mut pos = start;
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        let raw = &buf[pos..pos + nl];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += nl + 1;
        if raw.is_empty() {
            return Ok(Some((lines, pos)));
        }
        if pos - start > MAX_HEADER_BYTES {
            return Err(ParseError::HeadersTooLarge);
        }
        lines.push(String::from_utf8_lossy(raw).into_owned());
    }
    if buf.len() - start > MAX_HEADER_BYTES {
        return Err(ParseError::HeadersTooLarge);
    }
    Ok(None)
}

fn parse_header_lines(lines: &[String]) -> Result<Headers, ParseError> {
    let mut headers = Vec::with_capacity(lines.len());
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| ParseError::BadHeader(line.clone()))?;
        // RFC 9112 5.1: no whitespace between name and colon; obsolete line
        // folding (a line starting with whitespace) is rejected too.
        if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(ParseError::BadHeader(line.clone()));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(Headers(headers))
}

fn content_length(headers: &Headers) -> Result<usize, ParseError> {
    if headers.contains("transfer-encoding") {
        return Err(ParseError::UnsupportedTransferEncoding);
    }
    let mut length: Option<usize> = None;
    for (name, value) in &headers.0 {
        if !name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        let parsed: usize = value.parse().map_err(|_| ParseError::BadContentLength)?;
        if length.is_some_and(|l| l != parsed) || parsed > MAX_BODY_BYTES {
            return Err(ParseError::BadContentLength);
        }
        length = Some(parsed);
    }
    Ok(length.unwrap_or(0))
}

fn parse_minor_version(version: &str) -> Option<u8> {
    version.strip_prefix("HTTP/1.")?.parse().ok()
}

/// Parses the first complete request in `buf`.
///
/// Returns the request and how many bytes of `buf` it used, `Ok(None)` when
/// more bytes are needed, or an error when the bytes cannot be a request.
/// Callers loop on this to serve pipelined requests in order.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    let Some((lines, head_len)) = split_header_block(buf)? else {
        return Ok(None);
    };
    let (start_line, header_lines) = lines
        .split_first()
        .ok_or_else(|| ParseError::BadStartLine(String::new()))?;
    let mut parts = start_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::BadStartLine(start_line.clone()));
    };
    let minor_version = parse_minor_version(version)
        .filter(|_| !method.is_empty() && !target.is_empty())
        .ok_or_else(|| ParseError::BadStartLine(start_line.clone()))?;
    let headers = parse_header_lines(header_lines)?;
    let body_len = content_length(&headers)?;
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    let request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        minor_version,
        headers,
        body: buf[head_len..head_len + body_len].to_vec(),
    };
    Ok(Some((request, head_len + body_len)))
}

/// One response, either built by the mock or parsed by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// Standard reason phrase for the status codes IMDS uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Headers(vec![("Content-Type".to_owned(), content_type.to_owned())]),
            body: body.into(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.0.push((name.to_owned(), value.into()));
        self
    }

    /// Serialises the response. `Content-Length` is always the body's length,
    /// also for HEAD, whose body is left out (`head_only`).
    pub fn to_bytes(&self, head_only: bool, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        for (name, value) in &self.headers.0 {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        out.push_str("Server: EC2ws\r\n");
        let connection = if keep_alive { "keep-alive" } else { "close" };
        out.push_str(&format!("Connection: {connection}\r\n\r\n"));
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses the first complete response in `buf`. `head_request` says the
/// request was HEAD, whose response has no body whatever its Content-Length.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
) -> Result<Option<(Response, usize)>, ParseError> {
    let Some((lines, head_len)) = split_header_block(buf)? else {
        return Ok(None);
    };
    let (status_line, header_lines) = lines
        .split_first()
        .ok_or_else(|| ParseError::BadStartLine(String::new()))?;
    let mut parts = status_line.splitn(3, ' ');
    let status = match (parts.next().and_then(parse_minor_version), parts.next()) {
        (Some(_), Some(code)) => code.parse::<u16>().ok(),
        _ => None,
    }
    .ok_or_else(|| ParseError::BadStartLine(status_line.clone()))?;
    let headers = parse_header_lines(header_lines)?;
    let body_len = if head_request {
        0
    } else {
        content_length(&headers)?
    };
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    let response = Response {
        status,
        headers,
        body: buf[head_len..head_len + body_len].to_vec(),
    };
    Ok(Some((response, head_len + body_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_simple_get() {
        let raw = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n";
        let (req, used) = parse_request(raw).unwrap().unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(req.method, "GET");
        assert_eq!(req.target, "/latest/meta-data/");
        assert_eq!(req.minor_version, 1);
        assert_eq!(req.headers.get("host"), Some("169.254.169.254"));
        assert!(req.body.is_empty());
        assert!(req.keep_alive());
    }

    #[test]
    fn incomplete_header_block_needs_more() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(parse_request(raw).unwrap(), None);
        assert_eq!(parse_request(b"").unwrap(), None);
        assert_eq!(parse_request(b"GE").unwrap(), None);
    }

    #[test]
    fn body_is_framed_by_content_length() {
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(parse_request(raw).unwrap(), None);
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET";
        let (req, used) = parse_request(raw).unwrap().unwrap();
        assert_eq!(req.body, b"hello");
        assert_eq!(&raw[used..], b"GET");
    }

    #[test]
    fn pipelined_requests_parse_in_order() {
        let raw = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nX: 1\r\n\r\nGET /c HTTP/1.1\r\n";
        let (first, used1) = parse_request(raw).unwrap().unwrap();
        let (second, used2) = parse_request(&raw[used1..]).unwrap().unwrap();
        assert_eq!(first.target, "/a");
        assert_eq!(second.target, "/b");
        assert_eq!(parse_request(&raw[used1 + used2..]).unwrap(), None);
    }

    #[test]
    fn header_names_match_whole_and_case_insensitively() {
        let raw = b"GET / HTTP/1.1\r\nx-AWS-ec2-metadata-token-ttl-seconds: 60\r\n\r\n";
        let (req, _) = parse_request(raw).unwrap().unwrap();
        assert!(!req.headers.contains("X-aws-ec2-metadata-token"));
        assert_eq!(
            req.headers.get("X-aws-ec2-metadata-token-ttl-seconds"),
            Some("60")
        );
        assert_eq!(
            req.headers.names(),
            vec!["x-AWS-ec2-metadata-token-ttl-seconds"]
        );
    }

    #[test]
    fn tolerates_bare_newlines_and_leading_blank_lines() {
        let raw = b"\r\n\nGET /x HTTP/1.0\nA:  b  \n\n";
        let (req, used) = parse_request(raw).unwrap().unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(req.headers.get("a"), Some("b"));
        assert!(!req.keep_alive(), "HTTP/1.0 closes by default");
    }

    #[test]
    fn connection_header_controls_keep_alive() {
        let close = parse_request(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").unwrap();
        assert!(!close.unwrap().0.keep_alive());
        let keep = parse_request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(keep.unwrap().0.keep_alive());
    }

    #[test]
    fn path_drops_query() {
        let (req, _) = parse_request(b"GET /latest/x?y=1 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.path(), "/latest/x");
        assert_eq!(req.target, "/latest/x?y=1");
    }

    #[test]
    fn rejects_malformed_requests() {
        let bad_start = parse_request(b"GET /\r\n\r\n");
        assert!(matches!(bad_start, Err(ParseError::BadStartLine(_))));
        let bad_version = parse_request(b"GET / HTTP/2.0\r\n\r\n");
        assert!(matches!(bad_version, Err(ParseError::BadStartLine(_))));
        let no_colon = parse_request(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n");
        assert!(matches!(no_colon, Err(ParseError::BadHeader(_))));
        let space = parse_request(b"GET / HTTP/1.1\r\nName : v\r\n\r\n");
        assert!(matches!(space, Err(ParseError::BadHeader(_))));
        let folded = parse_request(b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n");
        assert!(matches!(folded, Err(ParseError::BadHeader(_))));
        let length = parse_request(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n");
        assert_eq!(length, Err(ParseError::BadContentLength));
        let twice =
            parse_request(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n");
        assert_eq!(twice, Err(ParseError::BadContentLength));
        let chunked = parse_request(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked, Err(ParseError::UnsupportedTransferEncoding));
    }

    #[test]
    fn rejects_oversized_header_block() {
        let mut raw = b"GET / HTTP/1.1\r\nX: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 1));
        assert_eq!(parse_request(&raw), Err(ParseError::HeadersTooLarge));
    }

    #[test]
    fn response_round_trip() {
        let resp = Response::new(200, "text/plain", "i-0123").with_header("X-Test", "1");
        let bytes = resp.to_bytes(false, true);
        let (parsed, used) = parse_response(&bytes, false).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(parsed.status, 200);
        assert_eq!(parsed.body, b"i-0123");
        assert_eq!(parsed.headers.get("connection"), Some("keep-alive"));
    }

    #[test]
    fn head_response_has_no_body() {
        let bytes = Response::new(200, "text/plain", "abc").to_bytes(true, false);
        let (parsed, used) = parse_response(&bytes, true).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(parsed.headers.get("content-length"), Some("3"));
        assert!(parsed.body.is_empty());
    }
}
