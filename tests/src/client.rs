//! The logic of the `imds-client` binary: IMDS requests that curl cannot
//! make (split over several TCP segments, pipelined, raw bytes), and a way for
//! other crates to find the binary.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result as AnyResult, bail};

use crate::http::{Response, parse_request, parse_response};
use crate::mock_imds::{TOKEN_HEADER, TOKEN_TTL_HEADER};

/// Exit code of `imds-client` when a response did not arrive in time.
pub const EXIT_TIMEOUT: i32 = 2;
/// Exit code when the token PUT was answered with something other than 200.
pub const EXIT_TOKEN_REFUSED: i32 = 3;
/// Exit code for other errors (connection refused, malformed response...).
pub const EXIT_ERROR: i32 = 1;

/// Environment variable that overrides where [`imds_client_bin`] looks.
pub const CLIENT_BIN_ENV: &str = "IMDS_CLIENT_BIN";

/// Path of the `imds-client` binary: `$IMDS_CLIENT_BIN` if set, else next to
/// the running executable or one directory up (test binaries live in
/// `target/<profile>/deps/`, binaries in `target/<profile>/`).
///
/// Another crate's tests only get the binary built if something builds it,
/// e.g. `cargo build -p imds-sandbox --bin imds-client` before `cargo test`.
pub fn imds_client_bin() -> AnyResult<PathBuf> {
    if let Some(path) = std::env::var_os(CLIENT_BIN_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{CLIENT_BIN_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot find the current executable")?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("imds-client"))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "imds-client not found (looked at {candidates:?}); build it with \
             `cargo build -p imds-sandbox --bin imds-client` or set {CLIENT_BIN_ENV}"
            )
        })
}

/// Whether the calling thread is inside a network namespace of some
/// [`crate::Sandbox`] (one named `/run/netns/imdssb-*`). `imds-client` runs
/// only there: in the machine's own namespace its default address could be a
/// real metadata service.
pub fn in_sandbox_netns() -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/thread-self/ns/net")?;
    let dir = match std::fs::read_dir(crate::netns::NETNS_RUN_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in dir {
        let entry = entry?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(crate::NETNS_PREFIX)
        {
            continue;
        }
        // A vanished namespace (another sandbox's teardown) is not ours.
        if let Ok(ns) = std::fs::metadata(entry.path())
            && (ns.dev(), ns.ino()) == (own.dev(), own.ino())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Reads without a token.
    V1,
    /// A token PUT first (once per run), then reads carrying the token.
    V2,
    /// These bytes, as they are (may hold several pipelined requests).
    Raw(Vec<u8>),
}

/// Options of one client run.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub addr: SocketAddr,
    pub mode: Mode,
    pub method: String,
    pub path: String,
    /// Extra headers, sent before the token header.
    pub headers: Vec<(String, String)>,
    /// TTL asked for in the token PUT.
    pub ttl: u32,
    /// Write each request buffer (the token PUT, then the reads) in this many
    /// pieces; a token header goes in the last piece.
    pub segments: usize,
    pub segment_delay: Duration,
    /// Requests per connection, written with one write.
    pub pipeline: usize,
    /// Connections to make, one after the other.
    pub count: usize,
    /// Pace the reads at this many requests per second (each connection
    /// carries `pipeline` of them); `None` sends as fast as responses come.
    pub rate: Option<u32>,
    /// Start no connection once this much time has passed since the run
    /// started, even if fewer than `count` were made.
    pub duration: Option<Duration>,
    /// Limit for connecting and for each response.
    pub timeout: Duration,
    /// Send header names in lower case, as botocore and the Go and JS SDKs do.
    pub lowercase_headers: bool,
    /// Like an AWS SDK: when the token PUT times out or is refused with
    /// 403, 404 or 405, read without a token instead of failing (botocore).
    pub fallback_v1: bool,
    /// Like an SDK fetching the role's credentials: after each read of
    /// `path` (the role list), read `path` + the first role named in it.
    pub role_credentials: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((crate::topology::IMDS_V4, 80)),
            mode: Mode::V1,
            method: "GET".to_owned(),
            path: "/latest/meta-data/instance-id".to_owned(),
            headers: Vec::new(),
            ttl: 21_600,
            segments: 1,
            segment_delay: Duration::from_millis(20),
            pipeline: 1,
            count: 1,
            rate: None,
            duration: None,
            timeout: Duration::from_secs(5),
            lowercase_headers: false,
            fallback_v1: false,
            role_credentials: false,
        }
    }
}

/// Why a run stopped early.
#[derive(Debug)]
pub enum ClientError {
    Timeout(String),
    TokenRefused(u16),
    Io(std::io::Error),
    Protocol(String),
}

impl ClientError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Timeout(_) => EXIT_TIMEOUT,
            Self::TokenRefused(_) => EXIT_TOKEN_REFUSED,
            Self::Io(_) | Self::Protocol(_) => EXIT_ERROR,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout(what) => write!(f, "timed out {what}"),
            Self::TokenRefused(status) => write!(f, "token PUT answered {status}"),
            Self::Io(e) => write!(f, "{e}"),
            Self::Protocol(what) => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            Self::Timeout(format!("({e})"))
        } else {
            Self::Io(e)
        }
    }
}

fn host_header(addr: SocketAddr) -> String {
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    if addr.port() == 80 {
        host
    } else {
        format!("{host}:{}", addr.port())
    }
}

/// Builds one request. The token header, if any, comes last, so that a
/// segmented write delivers it in the final piece.
pub fn build_request(
    opts: &ClientOptions,
    method: &str,
    path: &str,
    extra: &[(String, String)],
) -> Vec<u8> {
    let name = |n: &str| {
        if opts.lowercase_headers {
            n.to_ascii_lowercase()
        } else {
            n.to_owned()
        }
    };
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    out.push_str(&format!("{}: {}\r\n", name("Host"), host_header(opts.addr)));
    out.push_str(&format!(
        "{}: imds-client/{}\r\n",
        name("User-Agent"),
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str(&format!("{}: */*\r\n", name("Accept")));
    for (k, v) in opts.headers.iter().chain(extra) {
        out.push_str(&format!("{}: {v}\r\n", name(k)));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Splits `bytes` into at most `n` non-empty pieces. If a line starting with
/// the token header is present, the last piece starts at the last such line,
/// so the token arrives only in the final segment.
pub fn split_segments(bytes: &[u8], n: usize) -> Vec<&[u8]> {
    if n <= 1 || bytes.len() < 2 {
        return vec![bytes];
    }
    let needle = format!("\n{TOKEN_HEADER}:")
        .to_ascii_lowercase()
        .into_bytes();
    let lower = bytes.to_ascii_lowercase();
    let token_line = lower
        .windows(needle.len())
        .rposition(|w| w == needle.as_slice())
        .map(|p| p + 1);
    let (head, tail, head_pieces) = match token_line {
        Some(p) if p > 0 => (&bytes[..p], Some(&bytes[p..]), n - 1),
        _ => (bytes, None, n),
    };
    let size = head.len().div_ceil(head_pieces).max(1);
    let mut pieces: Vec<&[u8]> = head.chunks(size).collect();
    pieces.extend(tail);
    pieces
}

/// Number of requests in `raw` and whether each is a HEAD, as far as they
/// parse; unparseable bytes count as one request (IMDS answers 400).
fn raw_expectations(raw: &[u8]) -> Vec<bool> {
    let mut heads = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        match parse_request(rest) {
            Ok(Some((req, used))) => {
                heads.push(req.method == "HEAD");
                rest = &rest[used..];
            }
            _ => {
                if heads.is_empty() {
                    heads.push(false);
                }
                break;
            }
        }
    }
    heads
}

struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Connection {
    fn open(addr: SocketAddr, timeout: Duration) -> Result<Self, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                ClientError::Timeout(format!("connecting to {addr}"))
            }
            _ => ClientError::Io(e),
        })?;
        // Each write must leave as its own segment.
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            timeout,
        })
    }

    fn send(&mut self, bytes: &[u8], segments: usize, delay: Duration) -> Result<(), ClientError> {
        let pieces = split_segments(bytes, segments);
        let last = pieces.len() - 1;
        for (i, piece) in pieces.into_iter().enumerate() {
            self.stream.write_all(piece)?;
            if i < last {
                std::thread::sleep(delay);
            }
        }
        Ok(())
    }

    fn read_response(&mut self, head: bool) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut chunk = [0u8; 8192];
        loop {
            match parse_response(&self.buf, head) {
                Ok(Some((response, used))) => {
                    self.buf.drain(..used);
                    return Ok(response);
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(format!("bad response: {e}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout("waiting for a response".to_owned()));
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(ClientError::Protocol(
                        "connection closed mid-response".into(),
                    ));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ClientError::Timeout("waiting for a response".to_owned()));
                }
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
    }
}

/// When connection `i` is due after the start, with `rate` set: the
/// schedule is fixed in advance (open loop), so a late response does not
/// lower the rate the run asked for.
fn connection_due(opts: &ClientOptions, i: usize) -> Option<Duration> {
    let rate = f64::from(opts.rate?.max(1));
    Some(Duration::from_secs_f64((i * opts.pipeline) as f64 / rate))
}

/// Runs the client, calling `on_response` for each response as it arrives.
pub fn run(
    opts: &ClientOptions,
    on_response: &mut dyn FnMut(&Response),
) -> Result<(), ClientError> {
    let mut token: Option<String> = None;
    // Set once the token PUT failed and the run went on without a token.
    let mut fell_back = false;
    let start = Instant::now();
    for i in 0..opts.count {
        if let Some(due) = connection_due(opts, i) {
            let due = start + due;
            if opts.duration.is_some_and(|d| due >= start + d) {
                break;
            }
            // Behind schedule (a slow response): no sleep, catch up.
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        if opts.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let mut conn = Connection::open(opts.addr, opts.timeout)?;
        let (bytes, heads) = match &opts.mode {
            Mode::Raw(raw) => (
                raw.repeat(opts.pipeline),
                raw_expectations(raw).repeat(opts.pipeline),
            ),
            Mode::V1 | Mode::V2 => {
                if opts.mode == Mode::V2 && token.is_none() && !fell_back {
                    match fetch_token(opts, &mut conn, on_response) {
                        Ok(t) => token = Some(t),
                        Err(e) if opts.fallback_v1 && falls_back_on(&e) => {
                            eprintln!(
                                "imds-client: token PUT failed ({e}); falling back to IMDSv1"
                            );
                            fell_back = true;
                            // The PUT's connection is spent: a new one, as SDKs do.
                            conn = Connection::open(opts.addr, opts.timeout)?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                let request = read_request(opts, &opts.path, token.as_deref());
                (
                    request.repeat(opts.pipeline),
                    vec![opts.method == "HEAD"; opts.pipeline],
                )
            }
        };
        conn.send(&bytes, opts.segments, opts.segment_delay)?;
        let mut last = None;
        for head in heads {
            let response = conn.read_response(head)?;
            on_response(&response);
            last = Some(response);
        }
        if opts.role_credentials
            && let Some(role) = last
                .filter(|r| r.status == 200)
                .and_then(|r| r.body_text().lines().next().map(str::to_owned))
                .filter(|role| !role.trim().is_empty())
        {
            let path = format!("{}{}", opts.path, role.trim());
            let mut conn = Connection::open(opts.addr, opts.timeout)?;
            let request = read_request(opts, &path, token.as_deref());
            conn.send(&request, opts.segments, opts.segment_delay)?;
            on_response(&conn.read_response(opts.method == "HEAD")?);
        }
    }
    Ok(())
}

/// The token PUT on `conn`; its response goes to `on_response`.
fn fetch_token(
    opts: &ClientOptions,
    conn: &mut Connection,
    on_response: &mut dyn FnMut(&Response),
) -> Result<String, ClientError> {
    let ttl = [(TOKEN_TTL_HEADER.to_owned(), opts.ttl.to_string())];
    let put = build_request(opts, "PUT", "/latest/api/token", &ttl);
    conn.send(&put, opts.segments, opts.segment_delay)?;
    let response = conn.read_response(false)?;
    on_response(&response);
    if response.status != 200 {
        return Err(ClientError::TokenRefused(response.status));
    }
    Ok(response.body_text())
}

/// What botocore falls back to IMDSv1 on: a timeout, or 403/404/405.
fn falls_back_on(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Timeout(_) | ClientError::TokenRefused(403..=405)
    )
}

/// A read of `path`, with the token when there is one.
fn read_request(opts: &ClientOptions, path: &str, token: Option<&str>) -> Vec<u8> {
    let extra: Vec<(String, String)> = token
        .iter()
        .map(|t| (TOKEN_HEADER.to_owned(), (*t).to_owned()))
        .collect();
    build_request(opts, &opts.method, path, &extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_put_token_header_last() {
        let opts = ClientOptions::default();
        let extra = [(TOKEN_HEADER.to_owned(), "tok".to_owned())];
        let req = build_request(&opts, "GET", "/latest/meta-data/", &extra);
        let pieces = split_segments(&req, 3);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.concat(), req);
        assert!(pieces[2].starts_with(b"X-aws-ec2-metadata-token: tok\r\n"));
        assert!(!pieces[..2].concat().windows(3).any(|w| w == b"tok"));
    }

    #[test]
    fn segments_without_token_split_evenly() {
        let req = b"GET /latest/meta-data/ HTTP/1.1\r\n\r\n";
        let pieces = split_segments(req, 4);
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces.concat(), req);
        assert_eq!(split_segments(req, 1), vec![&req[..]]);
        assert_eq!(split_segments(b"ab", 10).len(), 2, "never empty pieces");
    }

    #[test]
    fn lowercase_headers_and_ipv6_host() {
        let opts = ClientOptions {
            addr: "[fd00:ec2::254]:80".parse().unwrap(),
            lowercase_headers: true,
            ..ClientOptions::default()
        };
        let extra = [(TOKEN_TTL_HEADER.to_owned(), "60".to_owned())];
        let req =
            String::from_utf8(build_request(&opts, "PUT", "/latest/api/token", &extra)).unwrap();
        assert!(req.contains("host: [fd00:ec2::254]\r\n"));
        assert!(req.contains("x-aws-ec2-metadata-token-ttl-seconds: 60\r\n"));
    }

    #[test]
    fn rate_spreads_connections_evenly() {
        let opts = ClientOptions {
            rate: Some(1000),
            pipeline: 4,
            ..ClientOptions::default()
        };
        assert_eq!(connection_due(&opts, 0), Some(Duration::ZERO));
        assert_eq!(connection_due(&opts, 250), Some(Duration::from_secs(1)));
        assert_eq!(connection_due(&ClientOptions::default(), 7), None);
    }

    #[test]
    fn raw_expectations_count_pipelined_requests() {
        let raw = b"GET / HTTP/1.1\r\n\r\nHEAD / HTTP/1.1\r\n\r\n";
        assert_eq!(raw_expectations(raw), vec![false, true]);
        assert_eq!(raw_expectations(b"garbage\r\n\r\n"), vec![false]);
    }
}
