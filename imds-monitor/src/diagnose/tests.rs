use std::{rc::Rc, time::UNIX_EPOCH};

use super::*;
use crate::{event::KernelOwner, processes::ProcessInfo, workload::Workload};

const CONTAINER: &str = "4f9c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";

fn sender(pid: u32) -> Rc<Sender> {
    Rc::new(Sender {
        owner: Some(KernelOwner {
            tgid: pid,
            tid: pid,
            uid: 0,
            gid: 0,
            cgroup_id: 7,
            comm: "sdk".into(),
            method: "sequence",
            exempt_rule: 0,
        }),
        process: Some(ProcessInfo {
            pid,
            name: "sdk".into(),
            ..ProcessInfo::default()
        }),
        workload: Workload::from_cgroup_path(&format!("/system.slice/docker-{CONTAINER}.scope")),
        ..Sender::default()
    })
}

fn request(class: RequestClass, path: &str, port: u16, index: u16, ms: u64) -> Request {
    Request {
        time: UNIX_EPOCH + Duration::from_millis(1_000_000 + ms),
        class,
        reason: InvalidReason::None,
        method: if class == RequestClass::V2TokenPut {
            "PUT"
        } else {
            "GET"
        }
        .into(),
        path: path.into(),
        path_truncated: false,
        flags: 0,
        token_ttl: None,
        source: SocketAddr::from(([198, 18, 0, 10], port)),
        destination: "169.254.169.254:80".parse().unwrap(),
        ifindex: 2,
        socket_cookie: 0,
        owner: None,
        request_index: index,
        forwarded: true,
        kernel_verdict: imds_monitor_common::class::Verdict::Allowed,
    }
}

fn response(req: &Request, status: u16, ttl: u8) -> Response {
    Response {
        time: req.time + Duration::from_millis(1),
        status,
        ttl,
        forwarded: req.forwarded,
        request_index: req.request_index,
        source: req.source,
        destination: req.destination,
        ifindex: 2,
        owner: None,
    }
}

fn actions(findings: &[Finding]) -> Vec<&'static str> {
    findings.iter().map(|f| f.action).collect()
}

#[test]
fn hop_limit_then_fallback_in_the_same_process() {
    let mut d = Diagnoser::default();
    let now = Instant::now();
    let s = sender(10);
    let put = request(RequestClass::V2TokenPut, "/latest/api/token", 40000, 0, 0);
    assert!(d.on_request(&put, &s, now).is_empty());
    let (joined, findings) = d.on_response(&response(&put, 200, 1));
    assert_eq!(joined.unwrap().0.class, RequestClass::V2TokenPut);
    assert_eq!(actions(&findings), ["imds-hop-limit"]);
    assert_eq!(findings[0].hop_limit, Some((1, 2)));
    assert!(findings[0].fix.contains("--http-put-response-hop-limit 2"));
    assert!(
        findings[0].message.contains("container 4f9c1a2b3c4d"),
        "{}",
        findings[0].message
    );
    // One second later the SDK falls back to v1 (for the credentials).
    let v1 = request(
        RequestClass::V1Get,
        "/latest/meta-data/iam/security-credentials/r",
        40002,
        0,
        1000,
    );
    let findings = d.on_request(&v1, &s, now);
    assert_eq!(
        actions(&findings),
        ["imds-credentials-v1", "imds-v1-fallback"]
    );
    assert_eq!(findings[1].fallback_delay_ms, Some(1000));
    assert!(
        findings[1]
            .fix
            .starts_with("aws ec2 modify-instance-metadata-options")
    );
}

fn plain_process(pid: u32) -> Rc<Sender> {
    Rc::new(Sender {
        workload: Workload::default(),
        ..(*sender(pid)).clone()
    })
}

#[test]
fn an_answered_put_is_no_fallback_and_other_workloads_do_not_count() {
    let mut d = Diagnoser::default();
    let now = Instant::now();
    let put = request(RequestClass::V2TokenPut, "/latest/api/token", 40000, 0, 0);
    d.on_request(&put, &plain_process(10), now);
    // Another process's v1 request is not this one's fallback.
    let other = request(RequestClass::V1Get, "/latest/meta-data/", 40001, 0, 500);
    assert!(d.on_request(&other, &plain_process(11), now).is_empty());
    // The PUT is answered with a TTL the host-side client gets.
    let mut host_put = put.clone();
    host_put.forwarded = false;
    let (_, findings) = d.on_response(&response(&host_put, 200, 1));
    assert!(findings.is_empty());
    let v1 = request(RequestClass::V1Get, "/latest/meta-data/", 40003, 0, 900);
    assert!(d.on_request(&v1, &plain_process(10), now).is_empty());
}

#[test]
fn another_process_of_the_same_container_falling_back_counts() {
    let mut d = Diagnoser::default();
    let now = Instant::now();
    let put = request(RequestClass::V2TokenPut, "/latest/api/token", 40000, 0, 0);
    d.on_request(&put, &sender(10), now);
    let v1 = request(RequestClass::V1Get, "/latest/meta-data/", 40001, 0, 1200);
    assert_eq!(
        actions(&d.on_request(&v1, &sender(11), now)),
        ["imds-v1-fallback"]
    );
}

#[test]
fn v1_answered_401_is_broken_now_and_counted() {
    let mut d = Diagnoser::default();
    let s = sender(10);
    let v1 = request(
        RequestClass::V1Get,
        "/latest/meta-data/instance-id",
        40000,
        0,
        0,
    );
    d.on_request(&v1, &s, Instant::now());
    let (_, findings) = d.on_response(&response(&v1, 401, 64));
    assert_eq!(actions(&findings), ["imds-v1-rejected"]);
    assert_eq!(findings[0].status, Some(401));
    assert!(findings[0].message.contains("broken now"));
    let summary = d.take_summary();
    let counts = &summary[&("container".to_owned(), CONTAINER.to_owned())];
    assert_eq!((counts.v1, counts.rejected_401), (1, 1));
    assert!(
        d.take_summary().is_empty(),
        "counts restart after each summary"
    );
}

#[test]
fn proxy_put_is_named() {
    let mut d = Diagnoser::default();
    let mut put = request(RequestClass::Invalid, "/latest/api/token", 40000, 0, 0);
    put.reason = InvalidReason::ForwardedFor;
    let findings = d.on_request(&put, &sender(10), Instant::now());
    assert_eq!(actions(&findings), ["imds-token-proxy"]);
}

#[test]
fn responses_join_by_connection_and_position() {
    let mut d = Diagnoser::default();
    let now = Instant::now();
    let s = sender(10);
    let first = request(RequestClass::V2Get, "/a", 40000, 0, 0);
    let second = request(RequestClass::V2Get, "/b", 40000, 1, 1);
    d.on_request(&first, &s, now);
    d.on_request(&second, &s, now);
    let (joined, _) = d.on_response(&response(&second, 404, 64));
    assert_eq!(joined.unwrap().0.path, "/b");
    let (joined, _) = d.on_response(&response(&first, 200, 64));
    assert_eq!(joined.unwrap().0.path, "/a");
    assert!(
        d.on_response(&response(&first, 200, 64)).0.is_none(),
        "once"
    );
}

#[test]
fn unanswered_requests_are_forgotten() {
    let mut d = Diagnoser::default();
    let start = Instant::now();
    let s = sender(10);
    let old = request(RequestClass::V2Get, "/a", 40000, 0, 0);
    d.on_request(&old, &s, start);
    let later = start + RESPONSE_WAIT + Duration::from_secs(1);
    d.on_request(&request(RequestClass::V2Get, "/b", 40001, 0, 0), &s, later);
    assert!(d.on_response(&response(&old, 200, 64)).0.is_none());
}
