//! `imds-client`: makes IMDS requests that curl cannot, and prints one line
//! per response with its status code.
//!
//! Exit codes: 0 success, 1 error, 2 a response timed out, 3 token refused.
//! It runs only inside a sandbox's network namespace (spawn it with
//! `Sandbox::command`), never in the machine's own.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use imds_sandbox::client::{self, ClientOptions, EXIT_ERROR, Mode};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "IMDS test client: segmented, pipelined, raw and paced requests"
)]
#[command(group(ArgGroup::new("mode").args(["v1", "v2", "raw"])))]
struct Args {
    /// Endpoint, e.g. `169.254.169.254:80` or `[fd00:ec2::254]:80`.
    #[arg(long, default_value = "169.254.169.254:80")]
    addr: SocketAddr,
    /// Reads without a token (the default).
    #[arg(long)]
    v1: bool,
    /// Token PUT first, then reads carrying the token.
    #[arg(long)]
    v2: bool,
    /// Send these bytes: a file name, or a string in which \r, \n, \t and \\
    /// are unescaped. May hold several requests.
    #[arg(long, value_name = "FILE-OR-STRING")]
    raw: Option<String>,
    /// Method of the reads.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Path of the reads.
    #[arg(long, default_value = "/latest/meta-data/instance-id")]
    path: String,
    /// Extra header `Name:Value` (repeatable).
    #[arg(long = "header", value_name = "K:V")]
    headers: Vec<String>,
    /// TTL asked for in the token PUT.
    #[arg(long, default_value_t = 21_600)]
    ttl: u32,
    /// Write each request in N pieces (TCP_NODELAY, pause between); the token
    /// header goes in the last piece.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    segments: u16,
    /// Pause between pieces, in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=5000))]
    segment_delay_ms: u64,
    /// K requests on one keep-alive connection, written in one write.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pipeline: u16,
    /// Repeat N times, one connection each (the token is fetched once).
    /// Default 1, or no limit but --duration-ms when that is given.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    count: Option<u32>,
    /// Pace the reads at N requests per second (with --pipeline K, a
    /// connection every K/N s), on a fixed schedule from the start.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate: Option<u32>,
    /// Start no connection after this many milliseconds.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=600_000))]
    duration_ms: Option<u64>,
    /// Limit for connecting and for each response, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    /// Send header names in lower case (as botocore and the Go/JS SDKs do).
    #[arg(long)]
    lowercase: bool,
    /// Like an AWS SDK (botocore): if the token PUT times out or is refused
    /// (403, 404, 405), go on without a token (IMDSv1) in this same process.
    #[arg(long, requires = "v2")]
    fallback_v1: bool,
    /// Like an SDK fetching credentials: after reading --path (the role
    /// list, e.g. /latest/meta-data/iam/security-credentials/), read the
    /// first role's credentials under it.
    #[arg(long)]
    role_credentials: bool,
    /// Print response bodies on stderr.
    #[arg(long, short)]
    verbose: bool,
}

fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let c = match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('r') => '\r',
                Some('n') => '\n',
                Some('t') => '\t',
                Some('\\') => '\\',
                Some(other) => {
                    out.push(b'\\');
                    other
                }
                None => '\\',
            },
            (c, false) => c,
        };
        let mut utf8 = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
    }
    out
}

fn options(args: Args) -> Result<ClientOptions, String> {
    let mode = match (&args.raw, args.v2) {
        (Some(raw), _) if Path::new(raw).is_file() => {
            Mode::Raw(std::fs::read(raw).map_err(|e| format!("cannot read {raw}: {e}"))?)
        }
        (Some(raw), _) => Mode::Raw(unescape(raw)),
        (None, true) => Mode::V2,
        (None, false) => Mode::V1,
    };
    let headers = args
        .headers
        .iter()
        .map(|h| {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| format!("header {h:?} is not K:V"))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect::<Result<_, String>>()?;
    Ok(ClientOptions {
        addr: args.addr,
        mode,
        method: args.method,
        path: args.path,
        headers,
        ttl: args.ttl,
        segments: usize::from(args.segments),
        segment_delay: Duration::from_millis(args.segment_delay_ms),
        pipeline: usize::from(args.pipeline),
        // A run with a duration is bounded by it; otherwise one connection.
        count: match (args.count, args.duration_ms) {
            (Some(n), _) => n as usize,
            (None, Some(_)) => usize::MAX,
            (None, None) => 1,
        },
        rate: args.rate,
        duration: args.duration_ms.map(Duration::from_millis),
        timeout: Duration::from_millis(args.timeout_ms),
        lowercase_headers: args.lowercase,
        fallback_v1: args.fallback_v1,
        role_credentials: args.role_credentials,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Only ever talk to a sandbox's mock: refuse to run anywhere but in a
    // sandbox namespace (in the machine's own, 169.254.169.254 may be real).
    match client::in_sandbox_netns() {
        Ok(true) => {}
        Ok(false) => {
            eprintln!(
                "imds-client: refusing to run outside an imds-sandbox network namespace; \
                 spawn it with Sandbox::command"
            );
            return ExitCode::from(EXIT_ERROR as u8);
        }
        Err(e) => {
            eprintln!("imds-client: cannot tell which network namespace this is: {e}");
            return ExitCode::from(EXIT_ERROR as u8);
        }
    }
    let verbose = args.verbose;
    let opts = match options(args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("imds-client: {e}");
            return ExitCode::from(EXIT_ERROR as u8);
        }
    };
    let mut print = |response: &imds_sandbox::http::Response| {
        // One line per response, flushed at once (stdout is a pipe), so a
        // caller sees the responses that came before a timeout.
        println!("{}", response.status);
        if verbose {
            eprintln!("{}", response.body_text());
        }
    };
    match client::run(&opts, &mut print) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imds-client: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ClientOptions {
        let argv = std::iter::once("imds-client").chain(args.iter().copied());
        options(Args::parse_from(argv)).unwrap()
    }

    #[test]
    fn one_connection_unless_a_count_or_duration_is_given() {
        let opts = parse(&[]);
        assert_eq!((opts.count, opts.rate, opts.duration), (1, None, None));
        assert_eq!(parse(&["--count", "7"]).count, 7);
    }

    #[test]
    fn a_duration_bounds_the_run_instead_of_the_count() {
        let opts = parse(&["--rate", "500", "--duration-ms", "2000"]);
        assert_eq!(opts.count, usize::MAX);
        assert_eq!(opts.rate, Some(500));
        assert_eq!(opts.duration, Some(Duration::from_secs(2)));
        let both = parse(&["--count", "3", "--duration-ms", "2000"]);
        assert_eq!(both.count, 3, "whichever ends first");
    }
}
