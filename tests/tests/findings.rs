//! Precision and recall of the fallback and hop-limit findings, and the
//! report's counts per cause, with the real daemon and real clients:
//! (a) a mix of IMDSv1 and IMDSv2 clients, on the host and in containers,
//!     many processes per workload, thousands of requests, every token PUT
//!     answered: no fallback and no hop-limit finding at all;
//! (b) hop limit 1 and containers: exactly one fallback per SDK run that fell
//!     back (a curl script, `imds-client --fallback-v1`, botocore), naming
//!     that run's process, beside IMDSv1 clients that never tried IMDSv2;
//! (c) `imds-monitor report` counts per cause what the events say.
//!
//! botocore comes from PyPI: it is installed into `target/botocore-venv` the
//! first time (pip, with the machine's own network; the SDK itself only ever
//! runs inside a sandbox namespace).

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    thread,
    time::Duration,
};

use imds_sandbox::{ContainerSpec, Monitor, Place, Sandbox, Stopped, action, imds_monitor_bin};
use serde_json::Value;

const IMDS: &str = "http://169.254.169.254";
const CREDENTIALS: &str = "/latest/meta-data/iam/security-credentials/";
/// The botocore release the recall test runs (pinned: its IMDS code is the subject).
const BOTOCORE: &str = "botocore==1.44.18";

fn of_action<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| action(e) == name).collect()
}

fn stop(monitor: Monitor) -> Stopped {
    let stopped = monitor.stop().expect("stop");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(stopped.garbage.is_empty(), "{:?}", stopped.garbage);
    let counters = &stopped.stopped_event()["imds"]["counters"];
    assert_eq!(
        counters["lost_events"], 0,
        "events were lost; the counts below would be wrong: {counters}"
    );
    stopped
}

/// `imds.workload.{kind,id}` of an event.
fn workload(e: &Value) -> (String, String) {
    let w = &e["imds"]["workload"];
    (
        w["kind"].as_str().unwrap_or("unattributed").to_owned(),
        w["id"].as_str().unwrap_or_default().to_owned(),
    )
}

fn pid(e: &Value) -> Option<u64> {
    e["process"]["pid"].as_u64()
}

/// Runs `sh -c script` at `place`; returns the shell's pid and its output.
fn sh(sb: &Sandbox, place: &Place, script: &str) -> (u32, std::process::Output) {
    let child = sb
        .command(place, "sh")
        .unwrap()
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    let pid = child.id();
    (pid, child.wait_with_output().expect("sh"))
}

/// Runs `imds-client ARGS` at `place`; returns its pid and its output.
fn client(sb: &Sandbox, place: &Place, args: &[&str]) -> (u32, std::process::Output) {
    let child = sb
        .command(place, imds_sandbox::imds_client_bin().unwrap())
        .unwrap()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("imds-client");
    let pid = child.id();
    (pid, child.wait_with_output().expect("imds-client"))
}

/// A shell loop of `n` plain-curl IMDSv1 reads (a legacy script).
fn v1_curl_loop(n: u32) -> String {
    format!(
        "i=0; while [ $i -lt {n} ]; do \
         curl -s -o /dev/null --max-time 5 {IMDS}/latest/meta-data/instance-id; i=$((i+1)); done"
    )
}

/// Writes the events to a file and runs `imds-monitor report --format json`.
fn report_of(events: &[Value], dir: &Path) -> Value {
    let file = dir.join("events.json");
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let out = Command::new(imds_monitor_bin().unwrap())
        .args(["report", "--format", "json"])
        .arg(&file)
        .output()
        .expect("report");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report JSON")
}

fn report_workload<'a>(report: &'a Value, key: &(String, String)) -> &'a Value {
    report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["kind"] == key.0.as_str() && w["id"] == key.1.as_str())
        .unwrap_or_else(|| panic!("no workload {key:?} in {report:#}"))
}

fn finding_count(w: &Value, kind: &str) -> u64 {
    w["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == kind)
        .map_or(0, |f| f["count"].as_u64().unwrap())
}

/// The report's per-workload counts equal the events': requests by class,
/// and findings by kind (c).
fn assert_report_matches_events(report: &Value, events: &[Value]) {
    let mut expected: BTreeMap<(String, String), [u64; 5]> = BTreeMap::new();
    for e in events {
        let slot = match (action(e), e["imds"]["class"].as_str()) {
            ("imds-request", Some("v1_get")) => 0,
            ("imds-request", Some("v2_get" | "v2_token_put")) => 1,
            ("imds-v1-fallback", _) => 2,
            ("imds-hop-limit", _) => 3,
            ("imds-credentials-v1", _) => 4,
            _ => continue,
        };
        expected.entry(workload(e)).or_default()[slot] += 1;
    }
    for (key, [v1, v2, fallback, hop, creds]) in &expected {
        let w = report_workload(report, key);
        let seen = [
            w["v1"].as_u64().unwrap(),
            w["v2"].as_u64().unwrap(),
            finding_count(w, "v1_fallback"),
            finding_count(w, "hop_limit"),
            finding_count(w, "credentials_v1"),
        ];
        assert_eq!(
            seen,
            [*v1, *v2, *fallback, *hop, *creds],
            "{key:?}: report [v1, v2, fallbacks, hop limits, credentials] vs events"
        );
        let causes = ["v1_fallback", "v1_never_v2", "v1_also_v2"]
            .map(|k| w[k].as_u64().unwrap())
            .iter()
            .sum::<u64>();
        assert_eq!(
            causes, *v1,
            "{key:?}: every IMDSv1 request has a cause: {w:#}"
        );
    }
}

#[test]
fn mixed_clients_with_every_put_answered_raise_no_fallback_or_hop_limit() {
    let sb = Sandbox::builder()
        .hop_limit(2)
        .containers(&[ContainerSpec::docker(), ContainerSpec::kubernetes()])
        .build()
        .expect("sandbox");
    let monitor = Monitor::start(&sb, &[]).expect("monitor");
    let places = [
        Place::service("app"),
        Place::Container(0),
        Place::Container(1),
    ];
    // Per place, at once: two SDK-like loops of short IMDSv2 processes (a
    // token PUT and 2 reads each), two long IMDSv1 processes, and a legacy
    // script of plain curls: 60 + 60 PUTs, 240 v2 reads, 400 + 20 v1 reads.
    const SDK_RUNS: u32 = 60;
    const V1_READS: &str = "200";
    const CURLS: u32 = 20;
    let failures = Mutex::new(Vec::new());
    let (sb, failures_ref) = (&sb, &failures);
    thread::scope(|s| {
        for place in &places {
            let failures = failures_ref;
            for _ in 0..2 {
                s.spawn(move || {
                    for _ in 0..SDK_RUNS {
                        let (_, out) = client(sb, place, &["--v2", "--lowercase", "--count", "2"]);
                        if !out.status.success() {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("v2 {place:?}: {out:?}"));
                        }
                    }
                });
                s.spawn(move || {
                    let (_, out) = client(sb, place, &["--v1", "--count", V1_READS]);
                    if !out.status.success() {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("v1 {place:?}: {out:?}"));
                    }
                });
            }
            s.spawn(move || {
                let (_, out) = sh(sb, place, &v1_curl_loop(CURLS));
                if !out.status.success() {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("curl {place:?}: {out:?}"));
                }
            });
        }
    });
    assert_eq!(failures.into_inner().unwrap(), Vec::<String>::new());

    let log = sb.imds_log();
    let puts: Vec<_> = log.iter().filter(|r| r.method == "PUT").collect();
    let expected_requests = places.len() * (2 * SDK_RUNS as usize * 3 + 2 * 200 + CURLS as usize);
    assert_eq!(
        log.len(),
        expected_requests,
        "every request reached the mock"
    );
    assert_eq!(puts.len(), places.len() * 2 * SDK_RUNS as usize);
    assert!(
        puts.iter()
            .all(|r| r.status == 200 && r.hop_limit == Some(2)),
        "IMDS answered every token PUT with hop limit 2"
    );
    monitor
        .wait_for(Duration::from_secs(60), |events| {
            let n = |a: &str| events.iter().filter(|e| action(e) == a).count();
            n("imds-request") >= expected_requests && n("imds-response") >= expected_requests
        })
        .expect("every request and response reported");
    let stopped = stop(monitor);
    let events = &stopped.events;
    let answered_puts = of_action(events, "imds-response")
        .into_iter()
        .filter(|r| r["imds"]["class"] == "v2_token_put")
        .count();
    assert_eq!(answered_puts, puts.len(), "every PUT's answer was seen");
    let fallbacks = of_action(events, "imds-v1-fallback");
    let hops = of_action(events, "imds-hop-limit");
    eprintln!(
        "precision: {} requests ({} token PUTs, all answered), {} fallback and {} hop-limit findings (expected 0 and 0)",
        of_action(events, "imds-request").len(),
        puts.len(),
        fallbacks.len(),
        hops.len()
    );
    assert!(fallbacks.is_empty(), "false fallbacks: {fallbacks:#?}");
    assert!(hops.is_empty(), "false hop-limit findings: {hops:#?}");

    let dir = tempdir();
    let report = report_of(events, dir.path());
    assert_report_matches_events(&report, events);
    for w in report["workloads"].as_array().unwrap() {
        assert_eq!(w["v1_fallback"], 0, "{w:#}");
        assert_eq!(
            w["v1_never_v2"], w["v1"],
            "the IMDSv1 clients never tried IMDSv2: {w:#}"
        );
    }
    for b in report["verdict"]["blocking"].as_array().unwrap() {
        let fixes = b["fixes"].as_array().unwrap();
        assert!(
            !fixes
                .iter()
                .any(|f| f.as_str().unwrap().contains("hop-limit")),
            "no hop-limit fix without a hop-limit cause: {b:#}"
        );
    }
}

/// A botocore venv under target/, created the first time.
fn botocore_python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/botocore-venv");
    let python = venv.join("bin/python");
    let has_it = |python: &Path| {
        Command::new(python)
            .args(["-c", "import botocore"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_it(&python) {
        return python;
    }
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed (installing {BOTOCORE} needs python3 with venv and PyPI):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", BOTOCORE]));
    assert!(has_it(&python), "{BOTOCORE} installed but not importable");
    python
}

/// botocore's own IMDS client, as the SDK's credential chain calls it: a
/// token PUT with a 1 s timeout and one attempt, then the role and its
/// credentials (over IMDSv1 when the token never came).
const BOTOCORE_SCRIPT: &str = "\
from botocore.utils import InstanceMetadataFetcher
creds = InstanceMetadataFetcher(timeout=1, num_attempts=1).retrieve_iam_role_credentials()
print(creds.get('role_name', ''))
";

#[test]
fn hop_limit_1_gives_one_fallback_per_sdk_run_that_fell_back() {
    let python = botocore_python();
    let sb = Sandbox::builder()
        .hop_limit(1)
        .containers(&[ContainerSpec::docker(), ContainerSpec::kubernetes()])
        .build()
        .expect("sandbox");
    let monitor = Monitor::start(&sb, &[]).expect("monitor");
    let (docker, pod) = (Place::Container(0), Place::Container(1));
    // A script as the AWS docs write it: a token first, IMDSv1 without one.
    let script = format!(
        "TOKEN=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' --max-time 1 {IMDS}/latest/api/token)
         if [ -n \"$TOKEN\" ]; then
           curl -s -H \"X-aws-ec2-metadata-token: $TOKEN\" {IMDS}/latest/meta-data/instance-id
         else
           curl -s {IMDS}/latest/meta-data/instance-id
           curl -s {IMDS}/latest/meta-data/placement/availability-zone
         fi"
    );
    const NOISE: u32 = 60;
    let (script_pid, client_pid, boto_pid) = thread::scope(|s| {
        // IMDSv1 clients that never try IMDSv2, in both containers, and
        // IMDSv2 on the host (TTL 1 reaches it), all through the SDK runs.
        for place in [&docker, &pod] {
            let sb = &sb;
            s.spawn(move || {
                let (_, out) = sh(sb, place, &v1_curl_loop(NOISE));
                assert!(out.status.success(), "{out:?}");
            });
        }
        s.spawn(|| {
            for _ in 0..10 {
                let (_, out) = client(&sb, &Place::service("agent"), &["--v2", "--count", "2"]);
                assert!(out.status.success(), "{out:?}");
            }
        });
        let script = s.spawn(|| {
            let (pid, out) = sh(&sb, &docker, &script);
            assert!(out.status.success(), "{out:?}");
            pid
        });
        let sdk = s.spawn(|| {
            let (pid, out) = client(
                &sb,
                &pod,
                &[
                    "--v2",
                    "--fallback-v1",
                    "--role-credentials",
                    "--lowercase",
                    "--timeout-ms",
                    "1000",
                    "--path",
                    CREDENTIALS,
                ],
            );
            assert!(out.status.success(), "{out:?}");
            let statuses = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(
                statuses.lines().collect::<Vec<_>>(),
                ["200", "200"],
                "{out:?}"
            );
            pid
        });
        let boto = s.spawn(|| {
            let mut cmd = sb.command(&pod, &python).unwrap();
            for var in [
                "http_proxy",
                "HTTP_PROXY",
                "https_proxy",
                "HTTPS_PROXY",
                "ALL_PROXY",
                "all_proxy",
            ] {
                cmd.env_remove(var);
            }
            let child = cmd
                .args(["-c", BOTOCORE_SCRIPT])
                .env_remove("AWS_EC2_METADATA_DISABLED")
                .env("AWS_CONFIG_FILE", "/nonexistent")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("python");
            let pid = child.id();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{out:?}");
            let role = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            assert_eq!(
                role, "imds-sandbox-role",
                "botocore got the credentials over IMDSv1"
            );
            pid
        });
        (
            script.join().unwrap(),
            sdk.join().unwrap(),
            boto.join().unwrap(),
        )
    });

    let log = sb.imds_log();
    let expected_requests = log.len();
    monitor
        .wait_for(Duration::from_secs(30), |events| {
            events
                .iter()
                .filter(|e| action(e) == "imds-request")
                .count()
                >= expected_requests
                && events
                    .iter()
                    .filter(|e| action(e) == "imds-v1-fallback")
                    .count()
                    >= 3
        })
        .expect("every request and the three fallbacks reported");
    // Nothing more may come: give late decisions a chance to show up.
    thread::sleep(Duration::from_millis(500));
    let stopped = stop(monitor);
    let events = &stopped.events;

    let fallbacks = of_action(events, "imds-v1-fallback");
    let hops = of_action(events, "imds-hop-limit");
    eprintln!(
        "recall: {} requests, 3 SDK runs that fell back; {} fallback findings (expected 3), {} hop-limit findings (expected 3)",
        of_action(events, "imds-request").len(),
        fallbacks.len(),
        hops.len()
    );
    assert_eq!(fallbacks.len(), 3, "one per SDK run: {fallbacks:#?}");
    assert_eq!(hops.len(), 3, "one per container token PUT: {hops:#?}");
    let find = |what: &str, matches: &dyn Fn(&Value) -> bool| -> &Value {
        let found: Vec<_> = fallbacks.iter().filter(|f| matches(f)).collect();
        assert_eq!(found.len(), 1, "{what}: {fallbacks:#?}");
        found[0]
    };
    let by_script = find("the curl script", &|f| {
        f["process"]["name"] == "curl" && f["process"]["parent"]["pid"] == script_pid
    });
    assert_eq!(by_script["url"]["path"], "/latest/meta-data/instance-id");
    assert_eq!(by_script["container"]["id"], sb.container(0).id());
    let by_client = find("imds-client", &|f| pid(f) == Some(u64::from(client_pid)));
    assert_eq!(by_client["process"]["name"], "imds-client");
    assert_eq!(by_client["url"]["path"], CREDENTIALS);
    let by_boto = find("botocore", &|f| pid(f) == Some(u64::from(boto_pid)));
    assert!(
        by_boto["process"]["name"]
            .as_str()
            .unwrap()
            .starts_with("python"),
        "{by_boto:#}"
    );
    for f in &fallbacks {
        let delay = f["imds"]["fallback"]["delay_ms"].as_u64().unwrap();
        assert!(
            (900..3000).contains(&delay),
            "about the 1 s timeout: {delay} ms"
        );
        assert!(
            f["imds"]["diagnostic"]["fix"]
                .as_str()
                .unwrap()
                .contains("--http-put-response-hop-limit 2"),
            "{f:#}"
        );
    }

    // (c) The report: per cause, what the events say.
    let dir = tempdir();
    let report = report_of(events, dir.path());
    assert_report_matches_events(&report, events);
    let fell_back = |e: &Value| {
        pid(e) == Some(u64::from(client_pid))
            || pid(e) == Some(u64::from(boto_pid))
            || e["process"]["parent"]["pid"] == script_pid
    };
    let mut expected: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for r in of_action(events, "imds-request") {
        if r["imds"]["class"] == "v1_get" {
            let slot = expected.entry(workload(r)).or_default();
            if fell_back(r) {
                slot.0 += 1;
            } else {
                slot.1 += 1;
            }
        }
    }
    let containers: HashSet<(String, String)> = fallbacks.iter().map(|f| workload(f)).collect();
    assert_eq!(containers.len(), 2);
    for key in &containers {
        let w = report_workload(&report, key);
        let (fallback, never) = expected[key];
        assert_eq!(
            (
                w["v1_fallback"].as_u64().unwrap(),
                w["v1_never_v2"].as_u64().unwrap()
            ),
            (fallback, never),
            "{key:?}: IMDSv1 after a fallback, and from clients that never tried IMDSv2"
        );
        eprintln!(
            "report {key:?}: {fallback} IMDSv1 after fallbacks, {never} from never-v2 clients"
        );
        let blocker = report["verdict"]["blocking"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["kind"] == key.0.as_str() && b["id"] == key.1.as_str())
            .unwrap();
        let fixes: Vec<&str> = blocker["fixes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(
            fixes
                .iter()
                .any(|f| f.contains("--http-put-response-hop-limit 2")),
            "the fallbacks' cause: {blocker:#}"
        );
        assert!(
            fixes
                .iter()
                .any(|f| f.starts_with("Update these clients to IMDSv2")),
            "the never-v2 clients' cause: {blocker:#}"
        );
    }
    // Four fallback reads in the pod (imds-client and botocore: 2 each),
    // two in the Docker container (the script's).
    assert_eq!(
        expected.values().map(|(f, _)| f).sum::<u64>(),
        6,
        "{expected:?}"
    );
}

struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "imds-findings-{}-{:?}",
        std::process::id(),
        thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}
