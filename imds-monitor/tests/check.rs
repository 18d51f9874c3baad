//! `imds-monitor check` on this machine (root, a 6.x kernel with BTF and
//! cgroup v2): it passes, in both formats, with the documented JSON shape.
//! It reads files and makes a bpf() probe; it attaches nothing and sends no
//! packet.

mod common;

use std::process::Output;

use common::describe;
use serde_json::Value;

fn check(args: &[&str]) -> Output {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    common::imds_monitor(&all)
}

const CHECKS: [&str; 13] = [
    "kernel",
    "btf",
    "privileges",
    "bpf-syscall",
    "unprivileged-bpf",
    "lockdown",
    "cgroup2",
    "bpffs",
    "tracefs",
    "programs",
    "interface",
    "containers",
    "kprobes",
];

#[test]
fn json_lists_every_check_and_this_host_passes() {
    let out = check(&["--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "check must pass on a root 6.x host with BTF and cgroup v2:\n{}",
        describe(&out)
    );
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", describe(&out)));
    let items = json.as_array().expect("a JSON array");
    let names: Vec<&str> = items
        .iter()
        .map(|item| {
            let obj = item.as_object().expect("each item is an object");
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            // programs adds what the verifier said (verifier_budget.rs reads it).
            if obj["check"] == "programs" {
                assert_eq!(
                    keys,
                    ["check", "detail", "fix", "status", "verifier"],
                    "{item}"
                );
            } else {
                assert_eq!(keys, ["check", "detail", "fix", "status"], "{item}");
            }
            let status = obj["status"].as_str().expect("status is a string");
            assert!(["ok", "warn", "fail"].contains(&status), "{item}");
            assert!(
                obj["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{item}"
            );
            assert!(obj["fix"].is_null() || obj["fix"].is_string(), "{item}");
            if status == "fail" {
                assert!(obj["fix"].is_string(), "a failure names its fix: {item}");
            }
            obj["check"].as_str().expect("check is a string")
        })
        .collect();
    assert_eq!(names, CHECKS);

    let status_of = |name: &str| {
        items
            .iter()
            .find(|i| i["check"] == name)
            .map(|i| i["status"].as_str().unwrap())
            .unwrap()
    };
    for name in ["kernel", "btf", "cgroup2", "kprobes"] {
        assert_eq!(status_of(name), "ok", "{name}:\n{json:#}");
    }
    assert!(!items.iter().any(|i| i["status"] == "fail"), "{json:#}");
}

#[test]
fn text_is_one_line_per_check_then_a_verdict() {
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), CHECKS.len() + 1, "{text}");
    for (line, name) in lines.iter().zip(CHECKS) {
        let mut words = line.split_whitespace();
        let status = words.next().unwrap();
        assert!(["ok", "warn", "FAIL"].contains(&status), "{line}");
        assert_eq!(words.next(), Some(name), "{line}");
    }
    assert!(
        lines[CHECKS.len()].contains("`imds-monitor run` can work on this host"),
        "{text}"
    );
    assert!(
        text.contains("nothing sent"),
        "routes are read, not probed:\n{text}"
    );
}

#[test]
fn verifier_table_follows_the_programs_line() {
    let out = check(&["--verifier"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.split_whitespace().nth(1) == Some("programs"))
        .unwrap_or_else(|| panic!("no programs line:\n{}", describe(&out)));
    assert!(
        lines[at].contains("programs verified in"),
        "{}",
        describe(&out)
    );
    let header = lines[at + 1].split_whitespace().collect::<Vec<_>>();
    assert_eq!(&header[..3], ["program", "type", "insns"], "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("imds_classify ")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("budget: 200,000")),
        "{text}"
    );
    // --json is --format json.
    let json = check(&["--json"]);
    let json: Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert!(json.as_array().is_some_and(|a| a.len() == CHECKS.len()));
}

#[test]
fn a_missing_interface_fails_and_names_the_ones_here() {
    let out = check(&["--format", "json", "--iface", "no-such-if0"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let iface = json
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["check"] == "interface")
        .unwrap();
    assert_eq!(iface["status"], "fail", "{iface}");
    let fix = iface["fix"].as_str().unwrap();
    assert!(fix.contains("--iface") && fix.contains("lo"), "{fix}");
}

#[test]
fn help_has_examples_and_bad_format_is_rejected() {
    let help = check(&["--help"]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "Examples:",
        "sudo imds-monitor check",
        "--format",
        "--verifier",
        "--json",
        "Exit status",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }
    let bad = check(&["--format", "yaml"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
}
