//! Enforce mode fails closed: a request the classifier cannot judge (a head
//! too long for its scan, a connection it holds no state for, IP options or
//! IPv6 extension headers) never reaches IMDS, and its client is reset at
//! once; alert mode reports the same requests as `would_drop`. A keep-alive
//! IMDSv2 connection older than the monitor keeps working.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use imds_sandbox::{ContainerSpec, Monitor, Place, Sandbox, Stopped};
use serde_json::Value;

const V4: &str = "169.254.169.254:80";
const V6: &str = "[fd00:ec2::254]:80";
const CREDENTIALS: &str = "/latest/meta-data/iam/security-credentials/";

/// What a raw client saw after sending its bytes.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// ECONNRESET: what enforce mode's reset gives, at once.
    Reset,
    /// An HTTP status line arrived.
    Status(u16),
    /// The server closed without answering.
    Closed,
    /// Nothing within the read timeout.
    Timeout,
}

/// How a raw connection's packets are sent.
#[derive(Clone, Copy)]
enum Wire {
    Plain,
    /// IPv4 options (four bytes: NOP NOP NOP EOL): a 24-byte IP header.
    Ipv4Options,
    /// An IPv6 hop-by-hop header (PadN) before TCP.
    Ipv6HopByHop,
}

fn connect(addr: &str, wire: Wire) -> TcpStream {
    let addr: SocketAddr = addr.parse().unwrap();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let fd = stream.as_raw_fd();
    let set = |level: i32, name: i32, value: &[u8]| {
        // SAFETY: a valid socket and a buffer of the given length.
        let ret = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                value.as_ptr().cast(),
                value.len() as libc::socklen_t,
            )
        };
        assert_eq!(ret, 0, "setsockopt: {}", std::io::Error::last_os_error());
    };
    match wire {
        Wire::Plain => {}
        Wire::Ipv4Options => set(libc::IPPROTO_IP, libc::IP_OPTIONS, &[1, 1, 1, 0]),
        // Next header (filled in by the kernel), length 0 (8 bytes), PadN of 4.
        Wire::Ipv6HopByHop => set(
            libc::IPPROTO_IPV6,
            libc::IPV6_HOPOPTS,
            &[0, 0, 1, 4, 0, 0, 0, 0],
        ),
    }
    stream
}

fn send(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), ErrorKind> {
    stream.write_all(bytes).map_err(|e| e.kind())
}

fn outcome(stream: &mut TcpStream) -> Outcome {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => Outcome::Closed,
        Ok(n) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            let status = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Outcome::Status(status)
        }
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Outcome::Reset,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Outcome::Timeout
        }
        Err(e) => panic!("read: {e}"),
    }
}

/// Sends `pieces` on one connection from the sandbox host (a pause between
/// them) and reports what came back.
fn exchange(sb: &Sandbox, addr: &str, wire: Wire, pieces: &[Vec<u8>]) -> Outcome {
    let addr = addr.to_owned();
    let pieces = pieces.to_vec();
    sb.run_in_host_netns(move || {
        let mut stream = connect(&addr, wire);
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(30));
            }
            if send(&mut stream, piece) == Err(ErrorKind::ConnectionReset) {
                return Outcome::Reset;
            }
        }
        let seen = outcome(&mut stream);
        let _ = stream.shutdown(Shutdown::Both);
        seen
    })
    .expect("host namespace")
}

/// A v1 GET of the role credentials with `padding` bytes of ordinary
/// headers (a legacy client's cookies and user agent).
fn long_v1_get(host: &str, padding: usize) -> Vec<u8> {
    let mut head = format!("GET {CREDENTIALS} HTTP/1.1\r\nHost: {host}\r\n");
    let mut i = 0;
    while head.len() < padding {
        head.push_str(&format!("X-Pad-{i}: {}\r\n", "p".repeat(90)));
        i += 1;
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn plain_v1_get() -> Vec<u8> {
    format!("GET {CREDENTIALS} HTTP/1.1\r\nHost: imds\r\nUser-Agent: legacy/1.0\r\n\r\n")
        .into_bytes()
}

fn stop(monitor: Monitor) -> Stopped {
    let stopped = monitor.stop().expect("stop");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    stopped
}

/// The request events of a class, as the daemon printed them.
fn of_class<'a>(stopped: &'a Stopped, class: &str) -> Vec<&'a Value> {
    stopped
        .requests()
        .into_iter()
        .filter(|r| r["imds"]["class"] == class)
        .collect()
}

/// The requests IMDS served: every one it logged a method for.
fn served_credentials(sb: &Sandbox) -> usize {
    sb.imds_log()
        .iter()
        .filter(|r| r.path.starts_with(CREDENTIALS))
        .count()
}

#[test]
fn heads_longer_than_the_scan_are_reset_in_enforce_and_flagged_in_alert() {
    let sb = Sandbox::builder()
        .hop_limit(2)
        .containers(&[ContainerSpec::docker()])
        .build()
        .expect("sandbox");
    let monitor = Monitor::start(&sb, &["--mode", "enforce"]).expect("monitor");
    // ~3 KB in one write (one GSO packet past the 2 KB scan) and ~6 KB
    // (past the 4 KB head limit), over IPv4 and IPv6.
    for addr in [V4, V6] {
        for padding in [3_000, 6_000] {
            let seen = exchange(&sb, addr, Wire::Plain, &[long_v1_get("imds", padding)]);
            assert_eq!(seen, Outcome::Reset, "{addr}, {padding} bytes");
        }
    }
    // From a container behind the host's NAT, the same.
    let file = std::env::temp_dir().join(format!("imds-long-head-{}", sb.id()));
    std::fs::write(&file, long_v1_get("imds", 6_000)).unwrap();
    let out = sb
        .imds_client(
            &Place::Container(0),
            &["--raw", file.to_str().unwrap(), "--timeout-ms", "3000"],
        )
        .expect("client");
    let _ = std::fs::remove_file(&file);
    assert!(!out.timed_out(), "reset, not a hang: {out:?}");
    assert!(out.statuses.is_empty(), "{out:?}");
    monitor.wait_for_requests(5).expect("events");
    let stopped = stop(monitor);
    assert_eq!(served_credentials(&sb), 0, "{:#?}", sb.imds_log());
    let unjudged = of_class(&stopped, "incomplete");
    assert!(unjudged.len() >= 5, "{:#?}", stopped.requests());
    for r in &unjudged {
        assert_eq!(r["imds"]["verdict"], "dropped", "{r:#}");
        let reason = r["imds"]["incomplete_reason"].as_str().unwrap_or_default();
        assert!(
            ["packet_too_long", "head_too_long"].contains(&reason),
            "{r:#}"
        );
    }
    assert!(
        of_class(&stopped, "v1_get")
            .iter()
            .all(|r| r["imds"]["verdict"] == "dropped")
    );

    // Alert mode lets them through and says enforce would not have.
    let monitor = Monitor::start(&sb, &["--mode", "alert"]).expect("monitor");
    let seen = exchange(&sb, V4, Wire::Plain, &[long_v1_get("imds", 6_000)]);
    assert!(matches!(seen, Outcome::Status(_)), "{seen:?}");
    monitor.wait_for_requests(1).expect("events");
    let stopped = stop(monitor);
    let unjudged = of_class(&stopped, "incomplete");
    assert!(!unjudged.is_empty(), "{:#?}", stopped.requests());
    for r in unjudged {
        assert_eq!(r["imds"]["would_drop"], true, "{r:#}");
        assert_eq!(r["imds"]["verdict"], "alerted", "{r:#}");
        assert!(r["imds"]["incomplete_reason"].is_string(), "{r:#}");
    }
}

#[test]
fn ip_options_and_ipv6_extension_headers_are_judged_and_reset() {
    let sb = Sandbox::builder().hop_limit(2).build().expect("sandbox");
    let monitor = Monitor::start(&sb, &["--mode", "enforce"]).expect("monitor");
    let seen = exchange(&sb, V4, Wire::Ipv4Options, &[plain_v1_get()]);
    assert_eq!(seen, Outcome::Reset, "IPv4 options: reset, not a hang");
    let seen = exchange(&sb, V6, Wire::Ipv6HopByHop, &[plain_v1_get()]);
    assert_eq!(seen, Outcome::Reset, "IPv6 hop-by-hop header: reset");
    monitor.wait_for_requests(2).expect("events");
    let stopped = stop(monitor);
    assert_eq!(served_credentials(&sb), 0, "{:#?}", sb.imds_log());
    let v1 = of_class(&stopped, "v1_get");
    assert_eq!(
        v1.len(),
        2,
        "classified through the options: {:#?}",
        stopped.requests()
    );
    assert!(v1.iter().all(|r| r["imds"]["verdict"] == "dropped"));
}

#[test]
fn a_connection_without_state_is_judged_from_a_request_start_only() {
    let sb = Sandbox::builder().hop_limit(2).build().expect("sandbox");
    // Opened before the monitor: a keep-alive IMDSv2 connection that has its
    // token, and a v1 GET whose head is half sent.
    let (mut keepalive, token, mut half) = sb
        .run_in_host_netns(|| {
            let mut keepalive = connect(V4, Wire::Plain);
            let put = "PUT /latest/api/token HTTP/1.1\r\nHost: imds\r\n\
                       X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n";
            send(&mut keepalive, put.as_bytes()).unwrap();
            let mut buf = [0u8; 4096];
            let n = keepalive.read(&mut buf).expect("token response");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let token = text.rsplit("\r\n\r\n").next().unwrap().to_owned();
            let mut half = connect(V4, Wire::Plain);
            send(
                &mut half,
                format!("GET {CREDENTIALS} HTTP/1.1\r\n").as_bytes(),
            )
            .unwrap();
            (keepalive, token, half)
        })
        .expect("host namespace");
    assert!(!token.is_empty());
    let monitor = Monitor::start(&sb, &["--mode", "enforce"]).expect("monitor");
    let (v2, rest) = sb
        .run_in_host_netns(move || {
            let get = format!(
                "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: imds\r\n\
                 X-aws-ec2-metadata-token: {token}\r\n\r\n"
            );
            send(&mut keepalive, get.as_bytes()).unwrap();
            let v2 = outcome(&mut keepalive);
            let rest = match send(&mut half, b"Host: imds\r\n\r\n") {
                Err(ErrorKind::ConnectionReset) => Outcome::Reset,
                _ => outcome(&mut half),
            };
            (v2, rest)
        })
        .expect("host namespace");
    assert_eq!(
        v2,
        Outcome::Status(200),
        "a healthy keep-alive v2 connection goes on"
    );
    assert_eq!(
        rest,
        Outcome::Reset,
        "the second half of a head is not judged: reset"
    );
    monitor.wait_for_requests(2).expect("events");
    let stopped = stop(monitor);
    assert_eq!(served_credentials(&sb), 0, "{:#?}", sb.imds_log());
    let untracked = of_class(&stopped, "incomplete");
    assert_eq!(untracked.len(), 1, "{:#?}", stopped.requests());
    assert_eq!(
        untracked[0]["imds"]["incomplete_reason"],
        "untracked_connection"
    );
    assert_eq!(untracked[0]["imds"]["verdict"], "dropped");
    let v2 = of_class(&stopped, "v2_get");
    assert_eq!(v2.len(), 1, "{:#?}", stopped.requests());
    assert_eq!(v2[0]["imds"]["verdict"], "allowed");
}

#[test]
fn a_full_flow_table_resets_new_connections_and_keeps_the_old_ones() {
    const TABLE: &str = "64";
    const OTHERS: usize = 300;
    let sb = Sandbox::builder().hop_limit(2).build().expect("sandbox");
    let monitor = Monitor::start(&sb, &["--mode", "enforce", "--flow-table-entries", TABLE])
        .expect("monitor");
    let (first, others_reset) = sb
        .run_in_host_netns(|| {
            let mut first = connect(V4, Wire::Plain);
            send(
                &mut first,
                format!("GET {CREDENTIALS} HTTP/1.1\r\n").as_bytes(),
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            // Many other connections, each with a head still open, fill the
            // small table: those that find it full are reset, none pushes
            // the first one's state out.
            let mut others = Vec::new();
            for i in 0..OTHERS {
                let mut other = connect(V4, Wire::Plain);
                let head = format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-Pressure: {i}\r\n");
                let _ = send(&mut other, head.as_bytes());
                others.push(other);
            }
            std::thread::sleep(Duration::from_millis(100));
            let first = match send(&mut first, b"Host: imds\r\n\r\n") {
                Err(ErrorKind::ConnectionReset) => Outcome::Reset,
                _ => outcome(&mut first),
            };
            let mut reset = 0;
            for other in &mut others {
                other
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                if outcome(other) == Outcome::Reset {
                    reset += 1;
                }
            }
            (first, reset)
        })
        .expect("host namespace");
    assert_eq!(first, Outcome::Reset, "its IMDSv1 GET judged and dropped");
    assert!(
        others_reset >= OTHERS - 64,
        "{others_reset} of {OTHERS} reset"
    );
    monitor.wait_for_requests(1).expect("events");
    let stopped = stop(monitor);
    assert_eq!(served_credentials(&sb), 0, "{:#?}", sb.imds_log());
    let v1 = of_class(&stopped, "v1_get");
    assert!(
        v1.iter()
            .any(|r| r["url"]["path"] == CREDENTIALS && r["imds"]["verdict"] == "dropped"),
        "{v1:#?}"
    );
    let full: Vec<_> = of_class(&stopped, "incomplete")
        .into_iter()
        .filter(|r| r["imds"]["incomplete_reason"] == "flow_table_full")
        .collect();
    assert!(!full.is_empty(), "{:#?}", stopped.requests());
    assert!(full.iter().all(|r| r["imds"]["verdict"] == "dropped"));
    let counters = &stopped.stopped_event()["imds"]["counters"];
    let not_followed = counters["flow_table_full"].as_u64().unwrap();
    assert!(not_followed >= (OTHERS - 64) as u64, "{counters:#}");
    eprintln!(
        "flow table of {TABLE} entries, {OTHERS} more open heads: {others_reset} reset, \
         {not_followed} segments not followed"
    );
}
