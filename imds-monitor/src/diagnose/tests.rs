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
fn another_process_of_the_same_container_is_not_a_fallback() {
    let mut d = Diagnoser::default();
    let now = Instant::now();
    let put = request(RequestClass::V2TokenPut, "/latest/api/token", 40000, 0, 0);
    d.on_request(&put, &sender(10), now);
    assert_eq!(
        actions(&d.on_response(&response(&put, 200, 1)).1),
        ["imds-hop-limit"]
    );
    // A legacy script beside the SDK, in the same container.
    let v1 = request(RequestClass::V1Get, "/latest/meta-data/", 40001, 0, 1200);
    assert!(d.on_request(&v1, &sender(11), now).is_empty());
    assert!(d.decide_due(v1.time + FATE_WAIT * 2).is_empty());
}

/// A process whose parent is `parent` (pid, name), e.g. curl run by a script.
fn child_of(pid: u32, name: &str, parent: (u32, &str)) -> Rc<Sender> {
    let mut s = (*sender(pid)).clone();
    if let Some(o) = s.owner.as_mut() {
        o.comm = name.into();
    }
    if let Some(p) = s.process.as_mut() {
        p.name = name.into();
        p.ppid = Some(parent.0);
    }
    s.ancestry = vec![ProcessInfo {
        pid: parent.0,
        name: parent.1.into(),
        ..ProcessInfo::default()
    }];
    Rc::new(s)
}

#[test]
fn an_unanswered_put_is_decided_when_its_wait_ends() {
    let mut d = Diagnoser::default();
    let now = Instant::now();
    let s = sender(10);
    let put = request(RequestClass::V2TokenPut, "/latest/api/token", 40000, 0, 0);
    d.on_request(&put, &s, now);
    let v1 = request(RequestClass::V1Get, "/latest/meta-data/", 40002, 0, 1000);
    assert!(
        d.on_request(&v1, &s, now).is_empty(),
        "held until the PUT's fate is known"
    );
    let again = request(
        RequestClass::V1Get,
        "/latest/meta-data/ami-id",
        40004,
        0,
        1100,
    );
    assert!(d.on_request(&again, &s, now).is_empty());
    assert!(d.decide_due(v1.time + FATE_WAIT / 2).is_empty(), "not yet");
    let findings = d.decide_due(v1.time + FATE_WAIT);
    assert_eq!(actions(&findings), ["imds-v1-fallback"], "once per run");
    let f = &findings[0];
    assert_eq!(f.fallback_delay_ms, Some(1000));
    assert_eq!(f.time, v1.time, "the time of the IMDSv1 request");
    assert_eq!(f.request.path, "/latest/meta-data/");
    assert!(f.message.contains("got no answer"), "{}", f.message);
    assert!(f.fix.contains("NO_PROXY"), "not the hop limit: {}", f.fix);
    assert!(d.decide_due(v1.time + FATE_WAIT * 3).is_empty());
}

#[test]
fn an_answer_after_the_v1_request_clears_the_candidate() {
    let mut d = Diagnoser::default();
    let now = Instant::now();
    let s = sender(10);
    let put = request(RequestClass::V2TokenPut, "/latest/api/token", 40000, 0, 0);
    d.on_request(&put, &s, now);
    // Another thread of the same process reads without a token meanwhile.
    let v1 = request(RequestClass::V1Get, "/latest/meta-data/", 40002, 0, 3);
    assert!(d.on_request(&v1, &s, now).is_empty());
    let mut late = response(&put, 200, 64);
    late.time = v1.time + Duration::from_millis(5);
    late.forwarded = false;
    let mut put_host = put.clone();
    put_host.forwarded = false;
    let _ = put_host;
    assert!(d.on_response(&late).1.is_empty());
    assert!(d.decide_due(v1.time + FATE_WAIT * 2).is_empty());
}

#[test]
fn a_late_hop_limited_answer_decides_at_once() {
    let mut d = Diagnoser::default();
    let now = Instant::now();
    let s = sender(10);
    let put = request(RequestClass::V2TokenPut, "/latest/api/token", 40000, 0, 0);
    d.on_request(&put, &s, now);
    let v1 = request(RequestClass::V1Get, "/latest/meta-data/", 40002, 0, 1000);
    assert!(d.on_request(&v1, &s, now).is_empty());
    let mut late = response(&put, 200, 1);
    late.time = v1.time + Duration::from_millis(1);
    assert_eq!(
        actions(&d.on_response(&late).1),
        ["imds-hop-limit", "imds-v1-fallback"]
    );
}

#[test]
fn retries_fall_back_once_measured_from_the_first_put() {
    let mut d = Diagnoser::default();
    let now = Instant::now();
    let s = sender(10);
    for (i, ms) in [0, 750, 1500].into_iter().enumerate() {
        let put = request(
            RequestClass::V2TokenPut,
            "/latest/api/token",
            40000 + i as u16,
            0,
            ms,
        );
        d.on_request(&put, &s, now);
        assert_eq!(
            actions(&d.on_response(&response(&put, 200, 1)).1),
            ["imds-hop-limit"]
        );
    }
    let v1 = request(RequestClass::V1Get, "/latest/meta-data/", 40010, 0, 2250);
    let findings = d.on_request(&v1, &s, now);
    assert_eq!(actions(&findings), ["imds-v1-fallback"]);
    assert_eq!(findings[0].fallback_delay_ms, Some(2250));
    assert!(
        findings[0].message.contains("3 times"),
        "{}",
        findings[0].message
    );
}

#[test]
fn a_script_is_the_client_of_its_curls() {
    let mut d = Diagnoser::default();
    let now = Instant::now();
    let put = request(RequestClass::V2TokenPut, "/latest/api/token", 40000, 0, 0);
    d.on_request(&put, &child_of(21, "curl", (20, "sh")), now);
    d.on_response(&response(&put, 200, 1));
    // Another script's curl in the same container: not this one's fallback.
    let other = request(RequestClass::V1Get, "/latest/meta-data/", 40001, 0, 400);
    assert!(
        d.on_request(&other, &child_of(31, "curl", (30, "sh")), now)
            .is_empty()
    );
    let v1 = request(RequestClass::V1Get, "/latest/meta-data/", 40002, 0, 1000);
    let findings = d.on_request(&v1, &child_of(22, "curl", (20, "sh")), now);
    assert_eq!(actions(&findings), ["imds-v1-fallback"]);
    assert!(
        findings[0]
            .message
            .starts_with("the script sh (pid 20), through curl (pid 22)"),
        "{}",
        findings[0].message
    );
    // curl started by systemd (a unit's ExecStart) is its own client.
    assert_eq!(client_pid("curl", 40, Some((1, "systemd"))), 40);
    assert_eq!(client_pid("curl", 40, Some((7, "containerd-shim"))), 40);
    assert_eq!(client_pid("python3", 40, Some((20, "sh"))), 40);
    assert_eq!(client_pid("wget", 40, Some((20, "ash"))), 20);
}

#[test]
fn many_processes_of_one_workload_with_answered_puts_raise_nothing() {
    // The issue's mix: SDK processes whose PUTs are all answered, and legacy
    // IMDSv1 processes of the same container, interleaved.
    let mut d = Diagnoser::default();
    let now = Instant::now();
    let mut findings = Vec::new();
    let mut port = 30000;
    for i in 0..300u32 {
        let ms = u64::from(i) * 10;
        port += 1;
        let mut put = request(RequestClass::V2TokenPut, "/latest/api/token", port, 0, ms);
        put.forwarded = true;
        let sdk = sender(1000 + i);
        findings.extend(d.on_request(&put, &sdk, now));
        // A v1 request of a legacy process lands before the PUT's answer.
        port += 1;
        let v1 = request(RequestClass::V1Get, "/latest/meta-data/", port, 0, ms + 1);
        findings.extend(d.on_request(&v1, &sender(10 + i % 4), now));
        let (_, f) = d.on_response(&response(&put, 200, 2));
        findings.extend(f);
        port += 1;
        let get = request(RequestClass::V2Get, "/latest/meta-data/", port, 0, ms + 3);
        findings.extend(d.on_request(&get, &sdk, now));
    }
    findings.extend(d.decide_due(UNIX_EPOCH + Duration::from_secs(2_000_000)));
    assert!(
        findings.is_empty(),
        "{:?}",
        findings.iter().map(|f| &f.message).collect::<Vec<_>>()
    );
}

#[test]
fn a_put_that_reached_its_client_is_no_hop_limit() {
    let mut d = Diagnoser::default();
    let now = Instant::now();
    // A host process: TTL 1 reaches it.
    let mut put = request(RequestClass::V2TokenPut, "/latest/api/token", 40000, 0, 0);
    put.forwarded = false;
    d.on_request(&put, &sender(10), now);
    assert!(d.on_response(&response(&put, 200, 1)).1.is_empty());
    // A container at hop limit 2.
    let put = request(RequestClass::V2TokenPut, "/latest/api/token", 40001, 0, 0);
    d.on_request(&put, &sender(11), now);
    assert!(d.on_response(&response(&put, 200, 2)).1.is_empty());
}

#[test]
fn held_candidates_are_capped_and_counted() {
    let mut d = Diagnoser::default();
    let now = Instant::now();
    for i in 0..=MAX_HELD as u32 {
        let s = sender(100 + i);
        let port = u16::try_from(1000 + 2 * i).unwrap();
        d.on_request(
            &request(RequestClass::V2TokenPut, "/latest/api/token", port, 0, 0),
            &s,
            now,
        );
        d.on_request(
            &request(RequestClass::V1Get, "/latest/", port + 1, 0, 1000),
            &s,
            now,
        );
    }
    assert_eq!(d.dropped_candidates(), 1, "the oldest went");
    let decided = d.decide_due(UNIX_EPOCH + Duration::from_secs(2_000_000));
    assert_eq!(decided.len(), MAX_HELD);
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
