//! `imds-monitor report` over hand-written event files
//! (tests/fixtures/report/), as a user runs it: exit codes, table, JSON.

mod common;

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use common::{stderr, stdout};
use flate2::{Compression, write::GzEncoder};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/report")
        .join(name)
}

fn report(args: &[&Path], extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imds-monitor"))
        .arg("report")
        .args(extra)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run imds-monitor report")
}

fn report_stdin(input: &[u8], args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imds-monitor"))
        .arg("report")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run imds-monitor report");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(out), stderr(out)))
}

fn workload<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id)
        .unwrap_or_else(|| panic!("no workload {id} in {doc:#}"))
}

const LEGACY: &str = "4f9c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";
const POD: &str = "0b7e2f5a-1c3d-4e5f-8a9b-0c1d2e3f4a5b";

/// A fresh directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("report-{test}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// events.json, events.json.1 and events.json.2.gz as `run --output` rotates them.
fn rotated_set(test: &str) -> (PathBuf, Vec<PathBuf>) {
    let dir = scratch(test);
    let mut files = Vec::new();
    for name in ["events.json", "events.json.1"] {
        let to = dir.join(name);
        fs::copy(fixture(&format!("rotated/{name}")), &to).unwrap();
        files.push(to);
    }
    let gz = dir.join("events.json.2.gz");
    fs::write(
        &gz,
        gzip(&fs::read(fixture("rotated/events.json.2")).unwrap()),
    )
    .unwrap();
    files.push(gz);
    (dir, files)
}

#[test]
fn safe_window_exits_0() {
    let out = report(&[&fixture("safe.ndjson")], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("SAFE: HttpTokens=required"), "{text}");
    assert!(!text.contains("NOT SAFE"), "{text}");
    assert!(
        text.contains("also 2 invalid requests, 2 other-cloud requests: these do not block"),
        "{text}"
    );
    assert!(
        text.contains("[token proxy] container a3f1c2d4e5b6"),
        "{text}"
    );

    let doc = json(&report(&[&fixture("safe.ndjson")], &["--format", "json"]));
    assert_eq!(doc["verdict"]["safe"], true);
    assert_eq!(doc["verdict"]["blocking"], Value::Array(vec![]));
    assert_eq!(doc["events_read"], 21);
    let dd = workload(&doc, "/opt/datadog-agent/bin/agent/agent");
    assert_eq!(
        (dd["other_cloud"].as_u64(), dd["v1"].as_u64()),
        (Some(2), Some(0))
    );
    let curl = workload(
        &doc,
        "a3f1c2d4e5b6a7980f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4a3b2",
    );
    assert_eq!(curl["invalid"], 2);
    assert_eq!(
        curl["findings"][0]["type"], "token_proxy",
        "reported, not blocking"
    );
    assert_eq!(workload(&doc, POD)["v2"], 4);
}

#[test]
fn unsafe_window_lists_broken_workloads_first_and_exits_1() {
    let out = report(&[&fixture("unsafe.ndjson")], &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains("warning: 3 events were lost; counts are lower bounds"),
        "{text}"
    );
    let verdict = &text[text.find("NOT SAFE").expect("a verdict")..];
    let broken = verdict.find("broken now").unwrap();
    let legacy = verdict.find("container 4f9c1a2b3c4d:").unwrap();
    let cloud_init = verdict.find("unit cloud-init.service:").unwrap();
    let pod = verdict.find(&format!("pod {POD}:")).unwrap();
    assert!(
        broken < legacy && legacy < cloud_init && cloud_init < pod,
        "{verdict}"
    );
    assert!(
        verdict.contains("token response hop limit 1 < 2 needed"),
        "{verdict}"
    );
    assert!(
        verdict.contains("      fix: aws ec2 modify-instance-metadata-options"),
        "the hop limit's fix under the pod: {verdict}"
    );
    assert!(text.contains("[token hop limit]"), "{text}");
}

#[test]
fn unsafe_window_as_json() {
    let out = report(
        &[&fixture("unsafe.ndjson")],
        &["--format", "json", "--top", "2"],
    );
    assert_eq!(out.status.code(), Some(1));
    let doc = json(&out);
    assert_eq!(doc["window"]["from"], "2026-11-23T08:00:00.000102Z");
    assert_eq!(doc["window"]["to"], "2026-11-23T10:00:00.000000Z");
    assert_eq!(doc["malformed_lines"], 0);
    assert_eq!(
        doc["lost_events"], 3,
        "events-lost and monitor-stopped tell the same loss"
    );

    let ids: Vec<&str> = doc["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "cloud-init.service",
            LEGACY,
            POD,
            "amazon-ssm-agent.service"
        ],
        "most v1 first"
    );
    let cloud_init = workload(&doc, "cloud-init.service");
    assert_eq!(cloud_init["v1"], 4, "the imds-summary is not counted again");
    assert_eq!(
        cloud_init["executables"],
        serde_json::json!(["/usr/bin/python3.11"])
    );
    assert_eq!(cloud_init["last_v1"], "2026-11-23T09:30:00.000400Z");
    assert_eq!(
        cloud_init["top_v1_paths"].as_array().unwrap().len(),
        2,
        "--top 2"
    );
    assert_eq!(
        cloud_init["top_v1_paths"][0],
        serde_json::json!({ "path": "/latest/meta-data/iam/security-credentials/web-role", "count": 2 })
    );
    let legacy = workload(&doc, LEGACY);
    assert_eq!(
        (
            legacy["v1_rejected"].as_u64(),
            legacy["responses_401"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(legacy["container_id"], LEGACY);
    let pod = workload(&doc, POD);
    assert_eq!(pod["pod_uid"], POD);
    let kinds: Vec<&str> = pod["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["hop_limit", "v1_fallback", "credentials_v1"]);
    assert_eq!(pod["findings"][0]["needed"], 2);
    assert_eq!(pod["findings"][1]["delay_ms"], 1002);

    assert_eq!(doc["verdict"]["safe"], false);
    let blocking = doc["verdict"]["blocking"].as_array().unwrap();
    let order: Vec<(&str, bool)> = blocking
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap(),
                b["broken_now"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [(LEGACY, true), ("cloud-init.service", false), (POD, false)],
        "broken now first; amazon-ssm-agent (v2 only) does not block"
    );
    assert_eq!(
        blocking[1]["reason"],
        "4 IMDSv1 requests (last 2026-11-23T09:30:00Z, /latest/meta-data/iam/security-credentials/web-role): \
         4 from clients that never tried IMDSv2"
    );
    assert!(
        blocking[1]["fixes"][0]
            .as_str()
            .unwrap()
            .starts_with("Update these clients to IMDSv2"),
        "{}",
        blocking[1]
    );
    assert!(
        blocking[2]["reason"]
            .as_str()
            .unwrap()
            .contains("token response hop limit 1 < 2 needed"),
        "{}",
        blocking[2]
    );
    assert!(
        blocking[2]["fixes"].as_array().unwrap().iter().any(|f| f
            .as_str()
            .unwrap()
            .contains("--http-put-response-hop-limit 2")),
        "{}",
        blocking[2]
    );
}

#[test]
fn malformed_lines_are_counted_not_fatal() {
    let out = report(&[&fixture("malformed.ndjson")], &["--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["malformed_lines"], 7, "the blank line is not one");
    assert_eq!(doc["events_read"], 9);

    let text = stdout(&report(&[&fixture("malformed.ndjson")], &[]));
    assert!(text.contains("7 malformed lines skipped"), "{text}");
    assert!(
        text.contains("malformed.ndjson:6:"),
        "names the first: {text}"
    );
}

#[test]
fn rotated_and_gzipped_files_are_read_together() {
    let (_dir, files) = rotated_set("rotated");
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = report(&paths, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["events_read"], 20);
    // The only IMDSv1 request is in the gzipped, oldest file.
    let backup = workload(&doc, "backup.service");
    assert_eq!(backup["v1"], 1);
    assert_eq!(doc["window"]["from"], "2026-11-21T09:00:00.000102Z");
    assert_eq!(doc["window"]["to"], "2026-11-23T10:06:00.000000Z");
}

#[test]
fn gzip_is_recognised_by_content_not_name() {
    let dir = scratch("gzip-names");
    let text = fs::read(fixture("rotated/events.json.2")).unwrap();
    let gz_unnamed = dir.join("archive");
    let plain_named_gz = dir.join("plain.gz");
    fs::write(&gz_unnamed, gzip(&text)).unwrap();
    fs::write(&plain_named_gz, &text).unwrap();
    for file in [gz_unnamed, plain_named_gz] {
        let doc = json(&report(&[&file], &["--format", "json"]));
        assert_eq!(doc["events_read"], 7, "{}", file.display());
        assert_eq!(doc["malformed_lines"], 0, "{}", file.display());
    }
}

#[test]
fn since_counts_back_from_the_newest_event() {
    let (_dir, files) = rotated_set("since");
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    // The v1 request is two days before the newest event: out of a 36h window.
    let out = report(&paths, &["--since", "36h", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let doc = json(&out);
    assert_eq!(
        (
            doc["events_read"].as_u64(),
            doc["events_in_window"].as_u64()
        ),
        (Some(20), Some(13))
    );
    assert_eq!(doc["window"]["from"], "2026-11-22T10:05:00.000000Z");
    assert!(
        doc["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["id"] != "backup.service")
    );

    let out = report(&paths, &["--since", "7d"]);
    assert_eq!(out.status.code(), Some(1), "a week reaches the v1 request");
}

#[test]
fn stdin_with_dash_or_no_file() {
    let events = fs::read(fixture("unsafe.ndjson")).unwrap();
    for args in [&["-"][..], &[][..]] {
        let out = report_stdin(&events, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).contains("NOT SAFE"));
    }
    let out = report_stdin(&gzip(&fs::read(fixture("safe.ndjson")).unwrap()), &["-"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "gzip on stdin: {}",
        stderr(&out)
    );
}

#[test]
fn missing_file_exits_2_naming_it() {
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-dir/events.json.3.gz");
    let out = report(&[&fixture("safe.ndjson"), &missing], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(out.stdout.is_empty(), "no verdict without every file");
}

#[test]
fn no_events_exits_2_and_says_so() {
    let dir = scratch("empty");
    let empty = dir.join("events.json");
    fs::write(&empty, "").unwrap();
    let out = report(&[&empty], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no events"), "{}", stderr(&out));

    let out = report_stdin(
        b"Nov 23 08:00:05 ip-10-0-1-17 imds-monitor[991]: {\"a\":1}\n",
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("no events") && err.contains("1 malformed line"),
        "{err}"
    );
}

#[test]
fn bad_since_is_a_usage_error() {
    let out = report(&[&fixture("safe.ndjson")], &["--since", "a while"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--since"), "{}", stderr(&out));
}

#[test]
fn help_shows_examples_and_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_imds-monitor"))
        .args(["report", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = stdout(&out);
    for needle in [
        "imds-monitor report /var/log/imds-monitor/events.json*",
        "journalctl -u imds-monitor -o cat | imds-monitor report -",
        "--since 7d --format json",
        "newest event read, not from now",
        "Exit status:",
        "--top",
        "Read the events",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }
}
