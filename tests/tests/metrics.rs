//! `run --metrics ADDR`: the daemon serves Prometheus metrics, scraped here
//! in the sandbox's host namespace (where the daemon and its listener run)
//! and parsed by the reference parser, the Python `prometheus-client`
//! (installed from PyPI into a venv kept under target/). The counts must
//! equal what the events say and what the mock IMDS served.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use imds_sandbox::{ContainerSpec, Monitor, Place, Sandbox, Stopped, action};
use serde_json::Value;

/// The parser's version, pinned: the venv is made once and reused.
const PROMETHEUS_CLIENT: &str = "prometheus-client==0.26.0";
const PORT: u16 = 9464;
const V1: &str = "http://169.254.169.254/latest/meta-data/instance-id";
const CREDENTIALS: &str = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";
const TOKEN: &str = "http://169.254.169.254/latest/api/token";

/// The venv's python, made on first use (target/imds-sandbox/...).
fn parser_python() -> PathBuf {
    static MADE: Mutex<()> = Mutex::new(());
    let _made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/imds-sandbox")
        .join(format!("venv-{}", PROMETHEUS_CLIENT.replace("==", "-")));
    let python = dir.join("bin/python");
    if python.is_file() {
        return python;
    }
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.parent().unwrap()).unwrap();
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&tmp)
        .status()
        .expect("python3 -m venv")
        .success();
    assert!(ok, "python3 -m venv {} failed", tmp.display());
    let out = Command::new(tmp.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PROMETHEUS_CLIENT,
        ])
        .output()
        .expect("pip");
    assert!(
        out.status.success(),
        "pip install {PROMETHEUS_CLIENT}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &dir).unwrap();
    python
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type,
                    "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// One sample as the reference parser read it.
#[derive(Debug, Clone)]
struct Sample {
    family: String,
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses exposition text with `prometheus_client.parser`.
fn parse(text: &str) -> Vec<Sample> {
    let mut child = Command::new(parser_python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .map(|s| Sample {
            family: s["family"].as_str().unwrap().to_owned(),
            kind: s["type"].as_str().unwrap().to_owned(),
            name: s["name"].as_str().unwrap().to_owned(),
            labels: serde_json::from_value(s["labels"].clone()).unwrap(),
            value: s["value"].as_f64().unwrap(),
        })
        .collect()
}

/// (status, content type, body) of `GET path` on the daemon's listener,
/// from the sandbox's host namespace.
fn get(sb: &Sandbox, path: &str) -> (u16, String, String) {
    let path = path.to_owned();
    sb.run_in_host_netns(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", PORT)).expect("connect to --metrics");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        assert!(
            !head.to_ascii_lowercase().contains("chunked"),
            "sized response: {head}"
        );
        (status, content_type, body.to_owned())
    })
    .expect("host netns")
}

fn scrape(sb: &Sandbox) -> Vec<Sample> {
    let (status, content_type, body) = get(sb, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let samples = parse(&body);
    for s in &samples {
        assert!(s.name.starts_with("imds_monitor_"), "{s:?}");
        assert!(
            !s.labels.contains_key("pid"),
            "no per-process labels: {s:?}"
        );
    }
    samples
}

/// Samples of one metric (sample name), with the labels given.
fn values<'a>(samples: &'a [Sample], name: &str) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name).collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// `requests_total` as (class, verdict, workload_kind) -> count.
fn request_counts(samples: &[Sample]) -> BTreeMap<(String, String, String), u64> {
    values(samples, "imds_monitor_requests_total")
        .into_iter()
        .map(|s| {
            assert_eq!(s.kind, "counter");
            assert_eq!(s.family, "imds_monitor_requests");
            (
                (
                    s.labels["class"].clone(),
                    s.labels["verdict"].clone(),
                    s.labels["workload_kind"].clone(),
                ),
                s.value as u64,
            )
        })
        .collect()
}

/// The same, counted from the `imds-request` events.
fn event_counts(requests: &[&Value]) -> BTreeMap<(String, String, String), u64> {
    let mut counts = BTreeMap::new();
    for r in requests {
        let kind = r["imds"]["workload"]["kind"]
            .as_str()
            .unwrap_or("unattributed");
        *counts
            .entry((
                r["imds"]["class"].as_str().unwrap().to_owned(),
                r["imds"]["verdict"].as_str().unwrap().to_owned(),
                kind.to_owned(),
            ))
            .or_default() += 1;
    }
    counts
}

/// `workload_requests_total` as (kind, workload, class) -> count.
fn workload_counts(samples: &[Sample]) -> BTreeMap<(String, String, String), u64> {
    values(samples, "imds_monitor_workload_requests_total")
        .into_iter()
        .map(|s| {
            (
                (
                    s.labels["workload_kind"].clone(),
                    s.labels["workload"].clone(),
                    s.labels["class"].clone(),
                ),
                s.value as u64,
            )
        })
        .collect()
}

fn stop(monitor: Monitor) -> Stopped {
    let stopped = monitor.stop().expect("stop");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    stopped
}

fn sandbox() -> Sandbox {
    Sandbox::builder()
        .hop_limit(2)
        .containers(&[ContainerSpec::docker()])
        .build()
        .expect("sandbox")
}

/// A known mix from host units and a container.
fn drive_mix(sb: &Sandbox) -> usize {
    let legacy = Place::service("legacy");
    let container = Place::Container(0);
    sb.curl(&legacy, &[V1]).expect("curl");
    sb.curl(&legacy, &[CREDENTIALS]).expect("curl");
    sb.curl(&container, &[V1]).expect("curl");
    let v2 = sb
        .imds_client(
            &Place::service("agent"),
            &[
                "--addr",
                "169.254.169.254:80",
                "--v2",
                "--timeout-ms",
                "3000",
            ],
        )
        .expect("client");
    assert!(v2.success(), "{v2:?}");
    // A token PUT without its TTL header: invalid (missing_ttl).
    sb.curl(&Place::service("broken"), &["-X", "PUT", TOKEN])
        .expect("curl");
    6
}

#[test]
fn alert_mode_counts_match_the_events_and_the_imds_log() {
    let sb = sandbox();
    let addr = format!("127.0.0.1:{PORT}");
    let monitor = Monitor::start(&sb, &["--mode", "alert", "--metrics", &addr]).expect("monitor");

    // Before any request: the static metrics.
    let samples = scrape(&sb);
    assert!(values(&samples, "imds_monitor_requests_total").is_empty());
    assert_eq!(
        value(
            &samples,
            "imds_monitor_interface_attached",
            &[("interface", sb.host_ifname())]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "imds_monitor_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let started = value(&samples, "imds_monitor_start_time_seconds", &[]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now && started > now - 120.0,
        "{started} vs {now}"
    );
    assert_eq!(
        value(&samples, "imds_monitor_ring_buffer_size_bytes", &[]),
        Some(4.0 * 1024.0 * 1024.0)
    );
    assert_eq!(
        value(&samples, "imds_monitor_policy_generation", &[]),
        Some(0.0)
    );
    // Only /metrics is served.
    assert_eq!(get(&sb, "/").0, 404);
    assert_eq!(get(&sb, "/metrics/x").0, 404);

    let n = drive_mix(&sb);
    monitor.wait_for_requests(n).expect("events");
    // The diagnosis of the credentials read comes with its request.
    monitor
        .wait_for(Duration::from_secs(10), |events| {
            events.iter().any(|e| action(e) == "imds-credentials-v1")
        })
        .expect("imds-credentials-v1");
    let samples = scrape(&sb);
    let stopped = stop(monitor);
    let requests = stopped.requests();
    assert_eq!(requests.len(), n, "{requests:#?}");

    // requests_total equals the events, series for series.
    let metrics = request_counts(&samples);
    assert_eq!(metrics, event_counts(&requests), "{samples:#?}");
    let total = |class: &str, verdict: Option<&str>| -> u64 {
        metrics
            .iter()
            .filter(|((c, v, _), _)| c == class && verdict.is_none_or(|x| x == v))
            .map(|(_, n)| n)
            .sum()
    };
    // ... and what IMDS served: alert mode lets everything through.
    let log = sb.imds_log();
    let served = |f: &dyn Fn(&imds_sandbox::mock_imds::ImdsRequest) -> bool| {
        log.iter().filter(|r| f(r)).count() as u64
    };
    let has_ttl = |r: &imds_sandbox::mock_imds::ImdsRequest| {
        r.header_names
            .iter()
            .any(|h| h.eq_ignore_ascii_case("x-aws-ec2-metadata-token-ttl-seconds"))
    };
    assert_eq!(
        total("v1_get", Some("alerted")),
        served(&|r| r.method == "GET" && !r.token_present)
    );
    assert_eq!(total("v1_get", None), 3);
    assert_eq!(
        total("v2_get", Some("allowed")),
        served(&|r| r.method == "GET" && r.token_present)
    );
    assert_eq!(
        total("v2_token_put", Some("allowed")),
        served(&|r| r.method == "PUT" && has_ttl(r))
    );
    assert_eq!(
        total("invalid", None),
        served(&|r| r.method == "PUT" && !has_ttl(r))
    );
    assert_eq!(total("invalid", None), 1);
    assert_eq!(
        metrics.values().sum::<u64>(),
        log.len() as u64,
        "every request reached IMDS and was counted once: {log:#?}"
    );
    // The container's request is counted under its workload kind.
    let container_kind = requests
        .iter()
        .find(|r| r["container"]["id"] == sb.container(0).id())
        .expect("the container's request")["imds"]["workload"]["kind"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        metrics.get(&("v1_get".into(), "alerted".into(), container_kind)),
        Some(&1)
    );

    // Per workload (fewer workloads than the default top 20: all of them).
    let mut by_workload = BTreeMap::new();
    for r in &requests {
        *by_workload
            .entry((
                r["imds"]["workload"]["kind"].as_str().unwrap().to_owned(),
                r["imds"]["workload"]["id"].as_str().unwrap().to_owned(),
                r["imds"]["class"].as_str().unwrap().to_owned(),
            ))
            .or_default() += 1u64;
    }
    assert_eq!(workload_counts(&samples), by_workload);

    // Diagnostics: one per diagnosis record.
    let mut diagnoses = BTreeMap::new();
    for e in &stopped.events {
        if let Some(id) = e["imds"]["diagnostic"]["id"].as_str() {
            *diagnoses.entry(id.to_owned()).or_default() += 1u64;
        }
    }
    let diagnostics: BTreeMap<String, u64> = values(&samples, "imds_monitor_diagnostics_total")
        .into_iter()
        .map(|s| (s.labels["kind"].clone(), s.value as u64))
        .collect();
    assert_eq!(diagnostics, diagnoses);
    assert_eq!(diagnostics.get("credentials_v1"), Some(&1));

    // Nothing lost; the buffers were used and are reported.
    for stage in ["ring_buffer", "output"] {
        assert_eq!(
            value(
                &samples,
                "imds_monitor_events_lost_total",
                &[("stage", stage)]
            ),
            Some(0.0),
            "{stage}"
        );
    }
    let high = value(&samples, "imds_monitor_ring_buffer_high_water_bytes", &[]).unwrap();
    assert!(
        high >= 8.0,
        "records waited in the ring buffer at some collection: {high}"
    );
    assert!(value(&samples, "imds_monitor_ring_buffer_used_bytes", &[]).is_some());
    assert!(value(&samples, "imds_monitor_output_queue_bytes", &[]).is_some());
    assert!(value(&samples, "imds_monitor_output_queue_high_water_bytes", &[]).unwrap() > 0.0);
}

#[test]
fn enforce_mode_counts_drops_and_sighup_reloads() {
    let sb = sandbox();
    let dir = std::env::temp_dir().join(format!("imds-metrics-{}", sb.id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "[actions]\nv1_get = \"drop\"\n").unwrap();
    let policy_arg = policy.to_string_lossy().into_owned();
    let addr = format!("127.0.0.1:{PORT}");
    let monitor = Monitor::start(
        &sb,
        &[
            "--mode",
            "enforce",
            "--policy",
            &policy_arg,
            "--metrics",
            &addr,
        ],
    )
    .expect("monitor");
    for place in [Place::service("legacy"), Place::Container(0)] {
        let out = sb.curl(&place, &["--max-time", "5", V1]).expect("curl");
        assert_eq!(out.status, None, "dropped: {out:?}");
        let v2 = sb
            .imds_client(
                &place,
                &[
                    "--addr",
                    "169.254.169.254:80",
                    "--v2",
                    "--timeout-ms",
                    "3000",
                ],
            )
            .expect("client");
        assert!(v2.success(), "{v2:?}");
    }
    monitor.wait_for_requests(6).expect("events");
    let samples = scrape(&sb);
    let metrics = request_counts(&samples);
    let events = monitor.events();
    let requests: Vec<&Value> = events
        .iter()
        .filter(|e| action(e) == "imds-request")
        .collect();
    assert_eq!(metrics, event_counts(&requests));
    let dropped: u64 = metrics
        .iter()
        .filter(|((c, v, _), _)| c == "v1_get" && v == "dropped")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(dropped, 2);
    let log = sb.imds_log();
    assert!(
        log.iter().all(|r| r.token_present || r.method == "PUT"),
        "no IMDSv1 request reached IMDS: {log:#?}"
    );
    let allowed: u64 = metrics
        .iter()
        .filter(|((_, v, _), _)| v == "allowed")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        allowed,
        log.len() as u64,
        "what was let through reached IMDS"
    );
    assert_eq!(
        value(&samples, "imds_monitor_policy_generation", &[]),
        Some(0.0)
    );

    // Two good reloads and a bad one.
    let reload = |text: &str, expect: &str, count: usize| {
        std::fs::write(&policy, text).unwrap();
        monitor.signal(libc::SIGHUP).unwrap();
        monitor
            .wait_for(Duration::from_secs(10), |e| {
                e.iter().filter(|e| action(e) == expect).count() >= count
            })
            .expect(expect);
    };
    reload("[actions]\nv1_get = \"drop\"\n", "policy-loaded", 1);
    reload("[actions]\nv1_get = \"explode\"\n", "policy-rejected", 1);
    reload("[actions]\nv1_get = \"alert\"\n", "policy-loaded", 2);
    let samples = scrape(&sb);
    assert_eq!(
        value(&samples, "imds_monitor_policy_generation", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(&samples, "imds_monitor_policy_rejected_total", &[]),
        Some(1.0)
    );
    stop(monitor);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn per_workload_series_are_bounded_to_the_top_n() {
    let sb = Sandbox::builder().hop_limit(2).build().expect("sandbox");
    let addr = format!("127.0.0.1:{PORT}");
    let monitor = Monitor::start(&sb, &["--metrics", &addr, "--metrics-top-workloads", "2"])
        .expect("monitor");
    // a and b take the two series; c, busier than twice the least busy,
    // takes a's; a's count and its later request go to "other".
    let mut sent = 0;
    for (unit, times) in [("a", 1), ("b", 1), ("c", 3), ("a", 1)] {
        for _ in 0..times {
            sb.curl(&Place::service(unit), &[V1]).expect("curl");
            sent += 1;
        }
    }
    monitor.wait_for_requests(sent).expect("events");
    let samples = scrape(&sb);
    stop(monitor);
    let workloads = workload_counts(&samples);
    let named: std::collections::BTreeSet<&str> = workloads
        .keys()
        .filter(|(k, _, _)| k != "other")
        .map(|(_, w, _)| w.as_str())
        .collect();
    assert!(named.len() <= 2, "at most N workloads: {workloads:#?}");
    assert_eq!(
        named.into_iter().collect::<Vec<_>>(),
        ["b.service", "c.service"]
    );
    let other = workloads
        .get(&("other".into(), "other".into(), "v1_get".into()))
        .copied();
    // a's two requests and c's two before it got its series.
    assert_eq!(other, Some(4), "{workloads:#?}");
    assert_eq!(
        workloads.values().sum::<u64>(),
        sent as u64,
        "every request counted once"
    );
    // The class totals are complete whatever the bound.
    assert_eq!(request_counts(&samples).values().sum::<u64>(), sent as u64);
}

#[test]
fn zero_top_workloads_turns_per_workload_series_off() {
    let sb = Sandbox::builder().hop_limit(2).build().expect("sandbox");
    let addr = format!("127.0.0.1:{PORT}");
    let monitor = Monitor::start(&sb, &["--metrics", &addr, "--metrics-top-workloads", "0"])
        .expect("monitor");
    sb.curl(&Place::service("a"), &[V1]).expect("curl");
    monitor.wait_for_requests(1).expect("events");
    let samples = scrape(&sb);
    stop(monitor);
    assert!(values(&samples, "imds_monitor_workload_requests_total").is_empty());
    assert_eq!(request_counts(&samples).values().sum::<u64>(), 1);
}

#[test]
fn a_port_in_use_fails_the_start_naming_the_address() {
    let sb = Sandbox::builder().build().expect("sandbox");
    let taken = sb
        .run_in_host_netns(|| std::net::TcpListener::bind(("127.0.0.1", PORT)))
        .expect("host netns")
        .expect("bind");
    let addr = format!("127.0.0.1:{PORT}");
    let monitor =
        Monitor::spawn(&sb, &Place::service("imds-monitor"), &["--metrics", &addr]).expect("spawn");
    let err = monitor
        .wait_for(Duration::from_secs(20), |_| false)
        .expect_err("the daemon exits");
    assert!(err.to_string().contains("exited"), "{err}");
    let stopped = monitor.stop().expect("stopped");
    assert!(!stopped.status.success());
    assert!(
        stopped.events.is_empty(),
        "nothing started: {:?}",
        stopped.events
    );
    assert!(
        stopped.stderr.contains(&format!("--metrics {addr}")) && stopped.stderr.contains("in use"),
        "{}",
        stopped.stderr
    );
    drop(taken);
}
