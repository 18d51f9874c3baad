//! `run --kernel-log debug`: the kernel programs' debug lines (aya-log) reach
//! the daemon's stderr, name a drop by class, verdict and reason with the
//! client's port, and carry no path, header or token; stdout keeps only the
//! JSON events; a full flow table is logged too. Without the flag no kernel
//! line is printed.

use std::{io::Write as _, net::TcpStream, time::Duration};

use imds_sandbox::{Monitor, Place, Sandbox, Stopped};
use serde_json::Value;

/// A path no kernel line may carry (the lines hold numbers only).
const SECRET_PATH: &str = "/latest/meta-data/iam/security-credentials/kernel-log-role";

fn stop(monitor: Monitor) -> Stopped {
    let stopped = monitor.stop().expect("stop");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        stopped.garbage.is_empty(),
        "stdout holds only JSON events: {:#?}",
        stopped.garbage
    );
    stopped
}

/// The kernel's lines of the daemon's stderr.
fn kernel_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(" kernel:")).collect()
}

fn port(event: &Value) -> u64 {
    event["source"]["port"].as_u64().expect("source.port")
}

/// A v1 GET of [`SECRET_PATH`] and a token PUT and read with the token,
/// from a host service; returns the token.
fn requests(sb: &Sandbox) -> String {
    let place = Place::service("kernel-log");
    let url = format!("http://169.254.169.254{SECRET_PATH}");
    let v1 = sb
        .curl(&place, &["-g", "--max-time", "5", &url])
        .expect("curl");
    assert_eq!(v1.status, None, "the v1 GET is dropped: {v1:?}");
    let put = sb
        .curl(
            &place,
            &[
                "--max-time",
                "5",
                "-X",
                "PUT",
                "-H",
                "X-aws-ec2-metadata-token-ttl-seconds: 60",
                "http://169.254.169.254/latest/api/token",
            ],
        )
        .expect("curl");
    assert_eq!(put.status, Some(200), "{put:?}");
    let token = put.body.trim().to_owned();
    assert!(!token.is_empty(), "a token: {put:?}");
    let read = sb
        .curl(
            &place,
            &[
                "--max-time",
                "5",
                "-H",
                &format!("X-aws-ec2-metadata-token: {token}"),
                "http://169.254.169.254/latest/meta-data/instance-id",
            ],
        )
        .expect("curl");
    assert_eq!(read.status, Some(200), "{read:?}");
    token
}

#[test]
fn debug_lines_name_the_drop_and_carry_no_path_or_token() {
    let sb = Sandbox::builder().build().expect("sandbox");
    let monitor =
        Monitor::start(&sb, &["--mode", "enforce", "--kernel-log", "debug"]).expect("monitor");
    let token = requests(&sb);
    monitor.wait_for_requests(3).expect("events");
    let stopped = stop(monitor);
    let requests = stopped.requests();
    let dropped = requests
        .iter()
        .find(|r| r["imds"]["verdict"] == "dropped")
        .unwrap_or_else(|| panic!("a dropped request: {requests:#?}"));
    assert_eq!(dropped["imds"]["class"], "v1_get");
    let lines = kernel_lines(&stopped.stderr);
    let sport = format!("sport={} ", port(dropped));
    assert!(
        lines.iter().any(|l| l.contains("DEBUG kernel:classify]")
            && l.contains("request class=v1_get verdict=dropped reason=none ")
            && l.contains(&sport)),
        "a debug line about the dropped v1 GET ({sport}):\n{}",
        stopped.stderr
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("connection event=reset_sent ") && l.contains(&sport)),
        "a debug line about the reset sent to its client:\n{}",
        stopped.stderr
    );
    for r in requests
        .iter()
        .filter(|r| r["imds"]["verdict"] == "allowed")
    {
        let sport = format!("sport={} ", port(r));
        assert!(
            lines
                .iter()
                .any(|l| l.contains("verdict=allowed") && l.contains(&sport)),
            "a debug line about the allowed {} ({sport}):\n{}",
            r["imds"]["class"],
            stopped.stderr
        );
    }
    eprintln!("kernel lines:\n{}", lines.join("\n"));
    for secret in [
        SECRET_PATH,
        "security-credentials",
        "kernel-log-role",
        "X-aws-ec2-metadata-token",
        token.as_str(),
    ] {
        assert!(
            !stopped.stderr.contains(secret),
            "stderr carries `{secret}`:\n{}",
            stopped.stderr
        );
    }
}

#[test]
fn a_full_flow_table_is_logged() {
    const TABLE: usize = 16;
    const OPEN: usize = TABLE + 8;
    let sb = Sandbox::builder().build().expect("sandbox");
    let monitor = Monitor::start(
        &sb,
        &[
            "--mode",
            "enforce",
            "--kernel-log",
            "debug",
            "--flow-table-entries",
            &TABLE.to_string(),
        ],
    )
    .expect("monitor");
    // Connections each with a head still open fill the table; the rest
    // find it full. Only inside the sandbox's host namespace.
    sb.run_in_host_netns(|| {
        let mut open = Vec::new();
        for i in 0..OPEN {
            let mut c = TcpStream::connect_timeout(
                &"169.254.169.254:80".parse().unwrap(),
                Duration::from_secs(5),
            )
            .expect("connect");
            let head = format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-Fill: {i}\r\n");
            let _ = c.write_all(head.as_bytes());
            open.push(c);
        }
        std::thread::sleep(Duration::from_millis(300));
    })
    .expect("host namespace");
    monitor.wait_for_requests(1).expect("events");
    let stopped = stop(monitor);
    let full: Vec<&Value> = stopped
        .requests()
        .into_iter()
        .filter(|r| r["imds"]["incomplete_reason"] == "flow_table_full")
        .collect();
    assert!(!full.is_empty(), "{:#?}", stopped.requests());
    let lines = kernel_lines(&stopped.stderr);
    for r in &full {
        let sport = format!("sport={} ", port(r));
        assert!(
            lines
                .iter()
                .any(|l| l.contains("connection event=flow_table_full ") && l.contains(&sport)),
            "a flow-table-full line for {sport}:\n{}",
            stopped.stderr
        );
        assert!(
            lines.iter().any(|l| l
                .contains("request class=incomplete verdict=dropped reason=flow_table_full ")
                && l.contains(&sport)),
            "its verdict line ({sport}):\n{}",
            stopped.stderr
        );
    }
}

#[test]
fn without_the_flag_no_kernel_line_is_printed() {
    let sb = Sandbox::builder().build().expect("sandbox");
    let monitor = Monitor::start(&sb, &["--mode", "enforce"]).expect("monitor");
    requests(&sb);
    monitor.wait_for_requests(3).expect("events");
    let stopped = stop(monitor);
    assert!(
        stopped
            .requests()
            .iter()
            .any(|r| r["imds"]["verdict"] == "dropped"),
        "{:#?}",
        stopped.requests()
    );
    let lines = kernel_lines(&stopped.stderr);
    assert!(
        lines.is_empty(),
        "kernel lines without --kernel-log: {lines:#?}"
    );
}
