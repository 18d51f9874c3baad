//! Counting and the verdict, over events built like `imds-monitor run` writes them.

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    model::{self, Options, Report, UNATTRIBUTED},
    parse::{DiagnosticKind, Log},
    render,
};

const T0: &str = "2026-11-23T10:00:00";

/// `2026-11-23T10:00:00Z` plus `secs`.
fn at(secs: u64) -> String {
    let t = humantime::parse_rfc3339(&format!("{T0}Z")).unwrap() + Duration::from_secs(secs);
    humantime::format_rfc3339_micros(t).to_string()
}

fn base(secs: u64, action: &str, kind: &str) -> Value {
    json!({
        "@timestamp": at(secs),
        "event": { "action": action, "kind": kind, "module": "imds-monitor", "dataset": "imds_monitor.events" },
        "host": { "name": "ip-10-0-1-17" },
        "ecs": { "version": "8.11.0" },
    })
}

/// Sender fields of a workload `kind`/`id`, as `imds-monitor run` writes them.
fn with_sender(mut doc: Value, kind: &str, id: &str, exe: &str) -> Value {
    doc["process"] = json!({ "pid": 4242, "name": "app", "executable": exe });
    doc["source"] = json!({ "ip": "10.0.1.17", "port": 41000 });
    doc["imds"]["workload"] = json!({ "kind": kind, "id": id });
    match kind {
        "container" => doc["container"] = json!({ "id": id, "runtime": "docker" }),
        "unit" => doc["imds"]["systemd_unit"] = json!(id),
        _ => {}
    }
    doc
}

fn request(secs: u64, kind: &str, id: &str, class: &str, path: &str) -> Value {
    let mut doc = base(secs, "imds-request", "event");
    doc["imds"] = json!({ "class": class, "interface": "eth0", "verdict": "allowed" });
    doc["url"] = json!({ "path": path });
    with_sender(doc, kind, id, "/usr/bin/app")
}

fn response(secs: u64, kind: &str, id: &str, class: &str, status: u64) -> Value {
    let mut doc = base(secs, "imds-response", "event");
    doc["imds"] = json!({ "class": class });
    doc["http"] = json!({ "response": { "status_code": status } });
    doc["event"]["outcome"] = json!(if status < 400 { "success" } else { "failure" });
    doc["url"] = json!({ "path": "/latest/meta-data/instance-id" });
    with_sender(doc, kind, id, "/usr/bin/app")
}

fn diagnostic(secs: u64, action: &str, kind: &str, id: &str, imds: Value) -> Value {
    let mut doc = base(secs, action, "alert");
    doc["imds"] = imds;
    doc["message"] = json!(format!("{action} seen"));
    doc["url"] = json!({ "path": "/latest/meta-data/iam/security-credentials/web" });
    with_sender(doc, kind, id, "/usr/bin/app")
}

fn hop_limit(secs: u64, kind: &str, id: &str) -> Value {
    diagnostic(
        secs,
        "imds-hop-limit",
        kind,
        id,
        json!({ "hop_limit": { "observed_ttl": 1, "needed": 2 } }),
    )
}

fn log_of(lines: &[Value]) -> Log {
    let mut log = Log::default();
    for (i, line) in lines.iter().enumerate() {
        log.add_line(&"test", i as u64 + 1, line.to_string().as_bytes());
    }
    log
}

fn report(lines: &[Value]) -> Report {
    report_with(lines, None)
}

fn report_with(lines: &[Value], since: Option<Duration>) -> Report {
    let log = log_of(lines);
    assert_eq!(log.first_malformed, None);
    model::build(&log, &Options { since, top: 5 }).expect("events")
}

fn workload<'r>(r: &'r Report, id: &str) -> &'r model::Workload {
    r.workloads
        .iter()
        .find(|w| w.id == id)
        .unwrap_or_else(|| panic!("no workload {id}: {:?}", r.workloads))
}

#[test]
fn v2_other_cloud_and_invalid_only_is_safe() {
    let r = report(&[
        request(0, "pod", "pod-a", "v2_token_put", "/latest/api/token"),
        request(1, "pod", "pod-a", "v2_get", "/latest/meta-data/"),
        request(
            2,
            "process",
            "/usr/bin/gcloud",
            "other_cloud",
            "/computeMetadata/v1/",
        ),
        request(3, "unit", "x.service", "invalid", "/latest/api/token"),
        request(4, "unit", "x.service", "incomplete", "/latest/"),
    ]);
    assert!(r.verdict.safe, "{:?}", r.verdict);
    assert!(r.verdict.blocking.is_empty());
    let pod = workload(&r, "pod-a");
    assert_eq!((pod.v1, pod.v2), (0, 2));
    assert_eq!(workload(&r, "/usr/bin/gcloud").other_cloud, 1);
    assert_eq!(workload(&r, "x.service").invalid, 1);
    assert_eq!(workload(&r, "x.service").incomplete, 1);
}

#[test]
fn v1_counts_times_and_top_paths() {
    let creds = "/latest/meta-data/iam/security-credentials/web";
    let mut lines = vec![
        request(
            50,
            "unit",
            "cloud-init.service",
            "v1_get",
            "/latest/meta-data/instance-id",
        ),
        request(10, "unit", "cloud-init.service", "v1_get", creds),
        request(30, "unit", "cloud-init.service", "v1_get", creds),
        request(
            20,
            "unit",
            "cloud-init.service",
            "v2_get",
            "/latest/meta-data/",
        ),
    ];
    for i in 0..6 {
        lines.push(request(
            40,
            "unit",
            "cloud-init.service",
            "v1_get",
            &format!("/latest/p{i}"),
        ));
    }
    let log = log_of(&lines);
    let r = model::build(
        &log,
        &Options {
            since: None,
            top: 3,
        },
    )
    .unwrap();
    let w = workload(&r, "cloud-init.service");
    assert_eq!((w.v1, w.v2), (9, 1));
    assert_eq!(
        w.first_v1.map(model::seconds).unwrap(),
        "2026-11-23T10:00:10Z"
    );
    assert_eq!(
        w.last_v1.map(model::seconds).unwrap(),
        "2026-11-23T10:00:50Z"
    );
    assert_eq!(w.systemd_unit.as_deref(), Some("cloud-init.service"));
    assert_eq!(
        w.top_v1_paths,
        [
            (creds.to_owned(), 2),
            ("/latest/meta-data/instance-id".to_owned(), 1),
            ("/latest/p0".to_owned(), 1),
        ],
        "--top 3, most requested first, then by path"
    );
    assert!(!r.verdict.safe);
    assert_eq!(
        r.verdict.blocking[0].reason,
        format!(
            "9 IMDSv1 requests (last 2026-11-23T10:00:50Z, {creds}): \
             9 from clients that also use IMDSv2"
        )
    );
    assert_eq!((w.v1_fallback, w.v1_never_v2, w.v1_also_v2), (0, 0, 9));
    assert_eq!(r.verdict.blocking[0].fixes, [model::CLIENT_FIX]);
}

#[test]
fn workloads_are_ordered_by_v1_then_id() {
    let r = report(&[
        request(0, "unit", "b.service", "v1_get", "/latest/"),
        request(0, "unit", "a.service", "v1_get", "/latest/"),
        request(0, "unit", "c.service", "v1_get", "/latest/"),
        request(1, "unit", "c.service", "v1_get", "/latest/"),
        request(0, "pod", "0-pod", "v2_get", "/latest/"),
    ]);
    let ids: Vec<&str> = r.workloads.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["c.service", "a.service", "b.service", "0-pod"]);
    let blocking: Vec<&str> = r.verdict.blocking.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(blocking, ["c.service", "a.service", "b.service"]);
}

#[test]
fn events_without_a_workload_are_unattributed_by_source_ip() {
    let mut by_ip = request(0, "pod", "x", "v1_get", "/latest/");
    by_ip["imds"].as_object_mut().unwrap().remove("workload");
    let mut nothing = by_ip.clone();
    nothing.as_object_mut().unwrap().remove("source");
    let r = report(&[by_ip, nothing]);
    let ips: Vec<(&str, &str)> = r
        .workloads
        .iter()
        .map(|w| (w.kind.as_str(), w.id.as_str()))
        .collect();
    assert_eq!(
        ips,
        [(UNATTRIBUTED, "10.0.1.17"), (UNATTRIBUTED, "unknown")]
    );
}

#[test]
fn rejected_v1_is_broken_now_and_listed_first() {
    let r = report(&[
        request(0, "unit", "a.service", "v1_get", "/latest/"),
        request(0, "unit", "a.service", "v1_get", "/latest/"),
        request(
            5,
            "container",
            "c1",
            "v1_get",
            "/latest/meta-data/instance-id",
        ),
        response(5, "container", "c1", "v1_get", 401),
        diagnostic(5, "imds-v1-rejected", "container", "c1", json!({})),
        response(6, "container", "c1", "v2_get", 401),
    ]);
    let c1 = workload(&r, "c1");
    assert_eq!(c1.v1_rejected, 1, "a 401 told twice is one rejection");
    assert_eq!(c1.responses_401, 2);
    assert_eq!(c1.container_id.as_deref(), Some("c1"));
    let first = &r.verdict.blocking[0];
    assert!(first.broken_now);
    assert_eq!(first.id, "c1");
    assert!(
        first
            .reason
            .starts_with("broken now: 1 IMDSv1 request answered 401 (last "),
        "{}",
        first.reason
    );
    assert!(
        first.reason.ends_with(
            "/latest/meta-data/iam/security-credentials/web): \
             1 from clients that never tried IMDSv2"
        ),
        "the rejected path and the cause: {}",
        first.reason
    );
    assert_eq!(first.fixes, [model::CLIENT_FIX]);
    assert!(!r.verdict.blocking[1].broken_now);
    assert_eq!(r.verdict.blocking[1].id, "a.service");
}

#[test]
fn hop_limit_or_fallback_blocks_without_any_v1() {
    let r = report(&[
        request(0, "pod", "pod-a", "v2_token_put", "/latest/api/token"),
        hop_limit(1, "pod", "pod-a"),
        request(2, "container", "c2", "v2_get", "/latest/"),
        diagnostic(
            3,
            "imds-v1-fallback",
            "container",
            "c2",
            json!({ "fallback": { "delay_ms": 1000 }, "diagnostic": { "fix": "set the hop limit to 2" } }),
        ),
    ]);
    assert!(!r.verdict.safe);
    let reasons: Vec<(&str, &str)> = r
        .verdict
        .blocking
        .iter()
        .map(|b| (b.id.as_str(), b.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "c2",
                "fell back to IMDSv1 once (after 1000 ms without a token)"
            ),
            (
                "pod-a",
                "token response hop limit 1 < 2 needed (1 token PUT)"
            ),
        ]
    );
    let fixes: Vec<&[String]> = r.verdict.blocking.iter().map(|b| &b.fixes[..]).collect();
    assert_eq!(
        fixes,
        [
            &["set the hop limit to 2".to_owned()][..],
            &[model::hop_limit_fix(2)][..]
        ],
        "the fix of the cause, never the client's when it did try IMDSv2"
    );
    let f = workload(&r, "pod-a")
        .finding(DiagnosticKind::HopLimit)
        .unwrap();
    assert_eq!((f.count, f.hop_limit), (1, Some((1, 2))));
}

#[test]
fn fallback_after_hop_limit_names_the_fix_once() {
    let mut hop = hop_limit(0, "pod", "p");
    hop["imds"]["diagnostic"] = json!({ "fix": "raise it" });
    let fallback = diagnostic(
        1,
        "imds-v1-fallback",
        "pod",
        "p",
        json!({ "fallback": { "delay_ms": 750 }, "diagnostic": { "fix": "raise it" } }),
    );
    let r = report(&[hop, fallback, request(1, "pod", "p", "v1_get", "/latest/")]);
    assert_eq!(
        r.verdict.blocking[0].reason,
        "1 IMDSv1 request (last 2026-11-23T10:00:01Z, /latest/): 1 after falling back from IMDSv2; \
         token response hop limit 1 < 2 needed (1 token PUT); \
         fell back to IMDSv1 once (after 750 ms without a token)"
    );
    assert_eq!(r.verdict.blocking[0].fixes, ["raise it"], "said once");
}

#[test]
fn token_proxy_is_reported_but_does_not_block() {
    let r = report(&[
        request(
            0,
            "unit",
            "proxy.service",
            "v2_token_put",
            "/latest/api/token",
        ),
        diagnostic(1, "imds-token-proxy", "unit", "proxy.service", json!({})),
    ]);
    assert!(r.verdict.safe);
    assert_eq!(
        workload(&r, "proxy.service").findings[0].kind,
        DiagnosticKind::TokenProxy
    );
}

#[test]
fn credentials_over_v1_block_even_when_the_requests_are_missing() {
    let r = report(&[diagnostic(
        7,
        "imds-credentials-v1",
        "process",
        "/usr/bin/aws",
        json!({}),
    )]);
    assert_eq!(
        r.verdict.blocking[0].reason,
        "fetched role credentials over IMDSv1 1 time (last 2026-11-23T10:00:07Z)"
    );
}

#[test]
fn since_counts_back_from_the_newest_event() {
    let day = 24 * 3600;
    let lines = [
        request(0, "unit", "old.service", "v1_get", "/latest/"),
        request(8 * day, "pod", "p", "v2_get", "/latest/"),
        request(9 * day, "pod", "p", "v2_get", "/latest/"),
    ];
    let all = report(&lines);
    assert!(!all.verdict.safe);
    let week = report_with(&lines, Some(Duration::from_secs(7 * day)));
    assert!(
        week.verdict.safe,
        "the v1 request is 9 days before the newest"
    );
    assert_eq!((week.events_read, week.events_in_window), (3, 2));
    assert_eq!(model::seconds(week.from), "2026-12-01T10:00:00Z");
    assert_eq!(model::seconds(week.to), "2026-12-02T10:00:00Z");
    assert!(week.workloads.iter().all(|w| w.id != "old.service"));
    // A window longer than the whole log keeps everything.
    let long = report_with(&lines, Some(Duration::from_secs(1000 * day)));
    assert_eq!(long.events_in_window, 3);
}

fn summary(secs: u64, host: &str, rows: Value) -> Value {
    let mut doc = base(secs, "imds-summary", "event");
    doc["host"]["name"] = json!(host);
    doc["imds"] = json!({ "summary": { "workloads": rows } });
    doc
}

#[test]
fn summaries_count_only_for_hosts_without_requests() {
    let row = |v1: u64| {
        json!([{ "kind": "unit", "id": "cloud-init.service", "v1": v1, "v2": 4, "invalid": 0,
                 "other_cloud": 0, "rejected_401": 0,
                 "first_v1": "2026-11-23T09:00:00Z", "last_v1": "2026-11-23T09:30:00Z" }])
    };
    // Host with requests: its summary repeats them and is ignored.
    let with_requests = report(&[
        request(0, "unit", "cloud-init.service", "v1_get", "/latest/"),
        summary(60, "ip-10-0-1-17", row(1)),
    ]);
    let w = workload(&with_requests, "cloud-init.service");
    assert_eq!((w.v1, w.v2, w.from_summaries), (1, 0, false));
    assert!(with_requests.summary_only_hosts.is_empty());

    // Summaries alone: each counts its own interval.
    let alone = report(&[summary(60, "ip-b", row(2)), summary(120, "ip-b", row(3))]);
    let w = workload(&alone, "cloud-init.service");
    assert_eq!((w.v1, w.v2, w.from_summaries), (5, 8, true));
    assert_eq!(
        w.last_v1.map(model::seconds).as_deref(),
        Some("2026-11-23T09:30:00Z")
    );
    assert_eq!(alone.summary_only_hosts, ["ip-b"]);
    assert!(!alone.verdict.safe);
}

fn lifecycle(secs: u64, action: &str, host: &str, imds: Value) -> Value {
    let mut doc = base(
        secs,
        action,
        if action == "events-lost" {
            "alert"
        } else {
            "event"
        },
    );
    doc["host"]["name"] = json!(host);
    doc["imds"] = imds;
    doc
}

#[test]
fn lost_events_are_not_counted_twice_per_run() {
    let r = report(&[
        // Given newest first, as `events.json*` globs rotated files.
        lifecycle(
            90,
            "monitor-stopped",
            "a",
            json!({ "counters": { "lost_events": 7 } }),
        ),
        lifecycle(
            20,
            "events-lost",
            "a",
            json!({ "lost_events": 4, "lost_events_total": 7 }),
        ),
        lifecycle(
            10,
            "events-lost",
            "a",
            json!({ "lost_events": 3, "lost_events_total": 3 }),
        ),
        lifecycle(0, "monitor-started", "a", json!({ "mode": "alert" })),
        // A second run on the same host: the stop counter includes a loss
        // after the last check.
        lifecycle(100, "monitor-started", "a", json!({ "mode": "alert" })),
        lifecycle(
            110,
            "events-lost",
            "a",
            json!({ "lost_events": 2, "lost_events_total": 2 }),
        ),
        lifecycle(
            120,
            "monitor-stopped",
            "a",
            json!({ "counters": { "lost_events": 5 } }),
        ),
        // Another host, events-lost only (still running).
        lifecycle(
            30,
            "events-lost",
            "b",
            json!({ "lost_events": 1, "lost_events_total": 1 }),
        ),
        request(40, "pod", "p", "v2_get", "/latest/"),
    ]);
    assert_eq!(r.lost_events, 7 + 5 + 1);
    assert!(
        r.workloads.iter().all(|w| w.kind != UNATTRIBUTED),
        "lifecycle events name no workload"
    );
}

#[test]
fn no_events_means_no_report() {
    let mut log = Log::default();
    log.add_line(&"f", 1, b"not json");
    log.add_line(&"f", 2, b"   ");
    assert_eq!(log.malformed_lines, 1, "blank lines are not malformed");
    assert_eq!(
        log.first_malformed.as_deref().map(|s| &s[..4]),
        Some("f:1:")
    );
    assert!(
        model::build(
            &log,
            &Options {
                since: None,
                top: 5
            }
        )
        .is_none()
    );
}

#[test]
fn json_output_has_the_documented_shape() {
    let r = report(&[
        request(
            0,
            "container",
            &"4f".repeat(32),
            "v1_get",
            "/latest/meta-data/",
        ),
        hop_limit(1, "pod", "pod-a"),
    ]);
    let doc: Value = serde_json::from_str(&render::json(&r)).unwrap();
    assert_eq!(doc["window"]["from"], "2026-11-23T10:00:00.000000Z");
    assert_eq!(doc["window"]["to"], "2026-11-23T10:00:01.000000Z");
    assert_eq!(doc["events_read"], 2);
    assert_eq!(doc["malformed_lines"], 0);
    assert_eq!(doc["lost_events"], 0);
    let w = &doc["workloads"][0];
    assert_eq!(w["kind"], "container");
    assert_eq!(w["v1"], 1);
    assert_eq!(w["executables"], json!(["/usr/bin/app"]));
    assert_eq!(
        w["top_v1_paths"],
        json!([{ "path": "/latest/meta-data/", "count": 1 }])
    );
    assert!(w.get("pod_uid").is_none(), "absent, not null");
    let pod = &doc["workloads"][1];
    assert_eq!(pod["findings"][0]["type"], "hop_limit");
    assert_eq!(pod["findings"][0]["observed_ttl"], 1);
    assert!(pod.get("last_v1").is_none());
    assert_eq!(doc["verdict"]["safe"], false);
    assert_eq!(doc["verdict"]["blocking"].as_array().unwrap().len(), 2);
}

#[test]
fn table_escapes_what_the_host_sent() {
    let r = report(&[request(
        0,
        "unit",
        "a.service",
        "v1_get",
        "/latest/\u{1b}[31mred",
    )]);
    let text = render::table(&r);
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("/latest/\\u{1b}[31mred"), "{text}");
}

#[test]
fn table_shows_short_container_ids_and_the_verdict_last() {
    let id = "4f9c1a2b".repeat(8);
    let r = report(&[
        request(0, "container", &id, "v1_get", "/latest/meta-data/"),
        response(0, "container", &id, "v1_get", 401),
    ]);
    let text = render::table(&r);
    let header = text.lines().find(|l| l.starts_with("WORKLOAD")).unwrap();
    for column in [
        "KIND",
        "EXECUTABLES",
        "V1",
        "V2",
        "401",
        "LAST V1",
        "TOP V1 PATH",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert!(
        text.contains("\n4f9c1a2b4f9c  container  /usr/bin/app"),
        "{text}"
    );
    assert!(text.contains("broken now"), "{text}");
    let mut last = text.trim_end().lines().rev();
    assert!(
        last.next()
            .unwrap()
            .starts_with("      fix: Update these clients to IMDSv2"),
        "{text}"
    );
    assert!(
        last.next().unwrap().contains("IMDSv1 request answered 401"),
        "{text}"
    );
}

/// The issue's mix in one container: an SDK whose token PUTs are answered,
/// a legacy script on IMDSv1, and an SDK run (its own process) that fell
/// back and went on reading over IMDSv1 until its next token PUT.
#[test]
fn v1_requests_are_split_by_cause_per_client() {
    let pid = |mut doc: Value, pid: u32| {
        doc["process"]["pid"] = json!(pid);
        doc
    };
    let c = |secs, class, path| request(secs, "container", "c", class, path);
    let fallback = diagnostic(
        12,
        "imds-v1-fallback",
        "container",
        "c",
        json!({ "fallback": { "delay_ms": 1000 }, "diagnostic": { "fix": "raise the hop limit" } }),
    );
    let mut curl_script = Vec::new();
    // A script's curls (pids 60, 61, 62) whose parent is sh 59: one client.
    for (i, (secs, class)) in [(20, "v2_token_put"), (21, "v1_get"), (22, "v1_get")]
        .into_iter()
        .enumerate()
    {
        let mut doc = pid(c(secs, class, "/latest/meta-data/"), 60 + i as u32);
        doc["process"]["name"] = json!("curl");
        doc["process"]["parent"] = json!({ "pid": 59, "name": "sh" });
        curl_script.push(doc);
    }
    let mut script_fallback = pid(fallback.clone(), 61);
    script_fallback["@timestamp"] = json!(at(21));
    script_fallback["process"]["name"] = json!("curl");
    script_fallback["process"]["parent"] = json!({ "pid": 59, "name": "sh" });
    let mut lines = vec![
        // The SDK with answered PUTs, pid 10, and a legacy loop, pid 11.
        pid(c(0, "v2_token_put", "/latest/api/token"), 10),
        pid(c(1, "v2_get", "/latest/meta-data/"), 10),
        pid(c(2, "v1_get", "/latest/meta-data/"), 11),
        pid(c(3, "v1_get", "/latest/meta-data/"), 11),
        // Pid 12: a PUT that got nowhere, the fallback and two reads, then a
        // PUT that worked and one more IMDSv1 read of its own choosing.
        pid(c(11, "v2_token_put", "/latest/api/token"), 12),
        pid(fallback, 12),
        pid(
            c(12, "v1_get", "/latest/meta-data/iam/security-credentials/"),
            12,
        ),
        pid(
            c(13, "v1_get", "/latest/meta-data/iam/security-credentials/r"),
            12,
        ),
        pid(c(30, "v2_token_put", "/latest/api/token"), 12),
        pid(c(31, "v1_get", "/latest/meta-data/"), 12),
        script_fallback,
    ];
    // Rotated files come newest first: order must not matter.
    lines.extend(curl_script.into_iter().rev());
    let r = report(&lines);
    let w = workload(&r, "c");
    assert_eq!(w.v1, 7);
    assert_eq!(
        (w.v1_fallback, w.v1_never_v2, w.v1_also_v2),
        (4, 2, 1),
        "pid 12's two reads and the script's two; pid 11's two; pid 12's last"
    );
    assert_eq!(w.finding(DiagnosticKind::V1Fallback).unwrap().count, 2);
    let b = &r.verdict.blocking[0];
    assert!(
        b.reason.contains(
            ": 4 after falling back from IMDSv2, 2 from clients that never tried IMDSv2, \
             1 from clients that also use IMDSv2"
        ),
        "{}",
        b.reason
    );
    assert_eq!(b.fixes, [model::CLIENT_FIX, "raise the hop limit"]);
    let json: Value = serde_json::from_str(&render::json(&r)).unwrap();
    assert_eq!(json["workloads"][0]["v1_fallback"], 4);
    assert_eq!(json["workloads"][0]["v1_never_v2"], 2);
    assert_eq!(
        json["verdict"]["blocking"][0]["fixes"][1],
        "raise the hop limit"
    );
}

#[test]
fn only_fallbacks_ask_for_the_hop_limit_alone() {
    let mut put = request(0, "pod", "p", "v2_token_put", "/latest/api/token");
    put["process"]["pid"] = json!(7);
    let mut fallback = diagnostic(
        1,
        "imds-v1-fallback",
        "pod",
        "p",
        json!({ "fallback": { "delay_ms": 1000 }, "diagnostic": { "fix": "raise the hop limit" } }),
    );
    fallback["process"]["pid"] = json!(7);
    let mut v1 = request(1, "pod", "p", "v1_get", "/latest/meta-data/");
    v1["process"]["pid"] = json!(7);
    let r = report(&[v1, fallback, put]);
    let b = &r.verdict.blocking[0];
    assert_eq!(b.fixes, ["raise the hop limit"], "{}", b.reason);
    assert!(
        b.reason.contains(": 1 after falling back from IMDSv2;"),
        "{}",
        b.reason
    );
}
