//! One workload of the `workloads` and `soak` phases: `imds-bench worker`,
//! a process of its own (so every workload has its own pid), spawned by the
//! bench into a sandbox cgroup and network namespace.
//!
//! It sends IMDS requests at a fixed pace: IMDSv1 GETs, and every
//! `--v2-every`th time an IMDSv2 pair (token PUT, then a GET with the token,
//! on one connection). Every GET's target carries a tag, `?bench=W.P.S`
//! (workload, the sender's own pid, sequence), which the daemon reports in
//! `url.path` and the mock IMDS logs: that is how the bench matches each
//! event to the one request it stands for and to the process that sent it.
//! A token PUT cannot carry a tag (only `/latest/api/token` is a token
//! path); it is matched through the tagged GET that follows it on its
//! connection. Prints one summary line at the end.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use imds_sandbox::client::in_sandbox_netns;
use imds_sandbox::http::parse_response;
use imds_sandbox::topology::IMDS_V4;

/// Name of the query parameter that tags a request.
pub const TAG_PARAM: &str = "?bench=";
/// The path every tagged GET reads (a real IMDS path: 200 from the mock).
pub const TAG_PATH: &str = "/latest/meta-data/instance-id";
/// First argument that turns `imds-bench` into a worker.
pub const WORKER_ARG: &str = "worker";
/// Prefix of the worker's summary line on stdout.
pub const SUMMARY_PREFIX: &str = "imds-bench-worker ";

/// Limit for connecting, each write and each read.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A pace that fell this far behind skips ahead instead of bursting.
const MAX_LAG: Duration = Duration::from_millis(500);

#[derive(Debug, Parser)]
#[command(name = "imds-bench worker", about = "One load workload (internal)")]
pub struct WorkerArgs {
    /// Workload number, carried in every tag.
    #[arg(long)]
    pub id: u32,
    /// Requests per second (an IMDSv2 pair counts as two).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long to send, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub duration_ms: u64,
    /// Stop after this many operations (a v1 GET or a v2 pair) at most.
    #[arg(long)]
    pub max_ops: Option<u64>,
    /// Keep one connection open for all requests (else one per operation).
    #[arg(long)]
    pub keep_alive: bool,
    /// Every Nth operation is an IMDSv2 pair (0: never).
    #[arg(long, default_value_t = 4)]
    pub v2_every: u64,
}

/// What a worker did, as printed on its summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    pub id: u32,
    pub pid: u32,
    /// Requests answered (any status), of which token PUTs.
    pub answered: u64,
    pub puts: u64,
    /// Requests that got no answer (the connection failed or timed out).
    pub failed: u64,
    pub last_error: String,
}

impl WorkerSummary {
    pub fn line(&self) -> String {
        format!(
            "{SUMMARY_PREFIX}id={} pid={} answered={} puts={} failed={} error={}",
            self.id,
            self.pid,
            self.answered,
            self.puts,
            self.failed,
            self.last_error.replace(['\n', ' '], "_")
        )
    }

    pub fn parse(stdout: &str) -> Option<Self> {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(SUMMARY_PREFIX))?;
        let mut s = Self::default();
        for field in line.split(' ') {
            let (k, v) = field.split_once('=')?;
            match k {
                "id" => s.id = v.parse().ok()?,
                "pid" => s.pid = v.parse().ok()?,
                "answered" => s.answered = v.parse().ok()?,
                "puts" => s.puts = v.parse().ok()?,
                "failed" => s.failed = v.parse().ok()?,
                "error" => s.last_error = v.to_owned(),
                _ => {}
            }
        }
        Some(s)
    }
}

/// The tag of request `seq` of workload `id` sent by `pid`.
pub fn tag(id: u32, pid: u32, seq: u64) -> String {
    format!("{id}.{pid}.{seq}")
}

/// (workload, pid, sequence) from a request target or `url.path`.
pub fn parse_tag(target: &str) -> Option<(u32, u32, u64)> {
    let (_, tag) = target.split_once(TAG_PARAM)?;
    let mut parts = tag.splitn(3, '.');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

/// `imds-bench worker ARGS`: runs the workload, prints its summary.
pub fn main(args: &[String]) -> Result<()> {
    let args = WorkerArgs::try_parse_from(args).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Only ever talk to a sandbox's mock (169.254.169.254 may be real here).
    if !in_sandbox_netns().context("cannot tell which network namespace this is")? {
        bail!("refusing to send IMDS requests outside an imds-sandbox network namespace");
    }
    let summary = run(&args);
    println!("{}", summary.line());
    Ok(())
}

fn run(args: &WorkerArgs) -> WorkerSummary {
    let pid = std::process::id();
    let mut summary = WorkerSummary {
        id: args.id,
        pid,
        ..WorkerSummary::default()
    };
    let endpoint = SocketAddr::from((IMDS_V4, 80));
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let start = Instant::now();
    let end = start + Duration::from_millis(args.duration_ms);
    let max_ops = args.max_ops.unwrap_or(u64::MAX);
    let mut conn: Option<Conn> = None;
    let mut next = start;
    let mut seq = 0u64;
    let mut op = 0u64;
    while op < max_ops {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > MAX_LAG {
            next = now;
        }
        let v2 = args.v2_every > 0 && op % args.v2_every == args.v2_every - 1;
        op += 1;
        // An IMDSv2 pair takes two requests' worth of the pace.
        next += if v2 { interval * 2 } else { interval };
        if conn.is_none() {
            match Conn::open(endpoint) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    summary.failed += if v2 { 2 } else { 1 };
                    summary.last_error = format!("{e:#}");
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let result = if v2 {
            c.v2_pair(pid, args.id, seq, args.keep_alive, &mut summary)
        } else {
            c.get(&tag(args.id, pid, seq), None, args.keep_alive)
                .map(|_| summary.answered += 1)
        };
        seq += 1;
        match result {
            Ok(()) if args.keep_alive => {}
            Ok(()) => conn = None,
            Err(e) => {
                summary.failed += 1;
                summary.last_error = format!("{e:#}");
                conn = None;
            }
        }
    }
    summary
}

/// One connection to the mock and the bytes read ahead on it.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(endpoint: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&endpoint, IO_TIMEOUT)
            .with_context(|| format!("connecting to {endpoint}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(2048),
        })
    }

    /// Token PUT, then a GET with the token; the last closes the connection
    /// unless `keep_alive`.
    fn v2_pair(
        &mut self,
        pid: u32,
        id: u32,
        seq: u64,
        keep_alive: bool,
        summary: &mut WorkerSummary,
    ) -> Result<()> {
        let put = "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
                   X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n";
        let (status, token) = self.exchange(put.as_bytes())?;
        summary.answered += 1;
        summary.puts += 1;
        if status != 200 {
            bail!("the token PUT was answered {status}");
        }
        let token = String::from_utf8(token).context("the token is not text")?;
        self.get(&tag(id, pid, seq), Some(token.trim()), keep_alive)?;
        summary.answered += 1;
        Ok(())
    }

    fn get(&mut self, tag: &str, token: Option<&str>, keep_alive: bool) -> Result<u16> {
        let mut req =
            format!("GET {TAG_PATH}{TAG_PARAM}{tag} HTTP/1.1\r\nHost: 169.254.169.254\r\n");
        if let Some(token) = token {
            req.push_str("X-aws-ec2-metadata-token: ");
            req.push_str(token);
            req.push_str("\r\n");
        }
        if !keep_alive {
            req.push_str("Connection: close\r\n");
        }
        req.push_str("\r\n");
        Ok(self.exchange(req.as_bytes())?.0)
    }

    /// Writes one request and reads its response: (status, body).
    fn exchange(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>)> {
        self.stream
            .write_all(request)
            .context("writing a request")?;
        let mut chunk = [0u8; 4096];
        // At most 64 reads per response (IMDS's answers here are small).
        for _ in 0..64 {
            if let Some((response, used)) =
                parse_response(&self.buf, false).map_err(|e| anyhow::anyhow!("{e:?}"))?
            {
                self.buf.drain(..used);
                return Ok((response.status, response.body));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("the connection closed before the response"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading a response"),
            }
        }
        bail!("no complete response after 64 reads")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let t = tag(7, 4242, 99);
        assert_eq!(
            parse_tag(&format!("{TAG_PATH}{TAG_PARAM}{t}")),
            Some((7, 4242, 99))
        );
        assert_eq!(parse_tag("/latest/meta-data/"), None);
        assert_eq!(parse_tag("/x?bench=1.2"), None);
    }

    #[test]
    fn summary_round_trips() {
        let s = WorkerSummary {
            id: 3,
            pid: 17,
            answered: 10,
            puts: 2,
            failed: 1,
            last_error: "reading a response: timed out".into(),
        };
        let parsed = WorkerSummary::parse(&format!("noise\n{}\n", s.line())).unwrap();
        assert_eq!(parsed.answered, 10);
        assert_eq!(parsed.last_error, "reading_a_response:_timed_out");
    }
}
