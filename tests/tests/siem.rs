//! docs/siem.md's shipper configurations: each reads the file the packaged
//! config writes (`output` in packaging/config.toml) and nothing rotated,
//! each parser it names is defined and is a JSON parser, and each timestamp
//! format reads a real event's `@timestamp` (checked with Python's strptime).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// `@timestamp` as the daemon writes it (humantime's RFC 3339, microseconds).
const TIMESTAMP: &str = "2026-12-06T08:55:00.123456Z";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `output` of the packaged config.
fn packaged_output() -> String {
    let config = fs::read_to_string(workspace().join("packaging/config.toml")).unwrap();
    config
        .lines()
        .find_map(|l| l.strip_prefix("output = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("output in packaging/config.toml")
        .to_owned()
}

/// The fenced blocks of docs/siem.md, by the file their first line names
/// (`# /etc/...`); blocks without one are left out.
fn blocks() -> BTreeMap<String, String> {
    let doc = fs::read_to_string(workspace().join("docs/siem.md")).unwrap();
    let mut out = BTreeMap::new();
    let mut current: Option<Vec<&str>> = None;
    for line in doc.lines() {
        match (&mut current, line.starts_with("```")) {
            (None, true) => current = Some(Vec::new()),
            (Some(lines), true) => {
                if let Some(name) = lines.first().and_then(|f| f.strip_prefix("# ")) {
                    let name = name.split_whitespace().next().unwrap().to_owned();
                    out.insert(name, lines[1..].join("\n"));
                }
                current = None;
            }
            (Some(lines), false) => lines.push(line),
            (None, false) => {}
        }
    }
    // The JSON block has no comment line: find it by its key.
    let json = doc
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a json block");
    out.insert("amazon-cloudwatch-agent.json".into(), json.to_owned());
    out
}

fn block(name: &str) -> String {
    blocks()
        .remove(name)
        .unwrap_or_else(|| panic!("no block `# {name}` in docs/siem.md"))
}

/// Fluent Bit's classic format: `[SECTION]` then `Key value` lines.
fn fluent_bit_sections(text: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut sections: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.to_owned(), BTreeMap::new()));
            continue;
        }
        let (key, value) = line.split_once(char::is_whitespace).expect("Key value");
        sections
            .last_mut()
            .expect("a key before any section")
            .1
            .insert(key.to_owned(), value.trim().to_owned());
    }
    sections
}

fn section<'a>(
    sections: &'a [(String, BTreeMap<String, String>)],
    name: &str,
) -> &'a BTreeMap<String, String> {
    sections
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no [{name}]"))
}

/// Python's strptime of `value` with `format`.
fn strptime(value: &str, format: &str) -> Result<(), String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, datetime; datetime.datetime.strptime(sys.argv[1], sys.argv[2])",
            value,
            format,
        ])
        .output()
        .expect("python3");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn no_shipper_reads_the_rotated_files() {
    for (name, text) in blocks() {
        assert!(
            !text.contains("events.json*"),
            "{name} reads rotated files again"
        );
    }
}

#[test]
fn fluent_bit_tails_the_output_with_the_json_parser() {
    let main = fluent_bit_sections(&block("/etc/fluent-bit/fluent-bit.conf"));
    let parsers_file = "/etc/fluent-bit/parsers-imds-monitor.conf";
    let parsers = fluent_bit_sections(&block(parsers_file));
    assert_eq!(section(&main, "SERVICE")["Parsers_File"], parsers_file);

    let input = section(&main, "INPUT");
    assert_eq!(input["Name"], "tail");
    assert_eq!(input["Path"], packaged_output());
    let parser = section(&parsers, "PARSER");
    assert_eq!(input["Parser"], parser["Name"]);
    assert_eq!(parser["Format"], "json");
    assert_eq!(parser["Time_Key"], "@timestamp");
    // Fluent Bit's %L (fraction of a second) is Python's %f.
    strptime(TIMESTAMP, &parser["Time_Format"].replace("%L", "%f")).unwrap();
    assert_eq!(section(&main, "OUTPUT")["Match"], input["Tag"]);

    // Kubernetes: the DaemonSet's container log, then the same parser.
    let kube = fluent_bit_sections(&block("/etc/fluent-bit/imds-monitor-kubernetes.conf"));
    let input = section(&kube, "INPUT");
    let filter = section(&kube, "FILTER");
    assert_eq!(filter["Parser"], parser["Name"]);
    assert_eq!(filter["Key_Name"], "log");
    assert_eq!(filter["Match"], input["Tag"]);
    assert_eq!(input["multiline.parser"], "cri");
    // kubelet names it POD_NAMESPACE_CONTAINER-ID.log; pods of the DaemonSet
    // are named after it.
    let ds = fs::read_to_string(workspace().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let (name, namespace, container) = ("imds-monitor", "imds-monitor", "imds-monitor");
    assert!(ds.contains(&format!(
        "kind: DaemonSet\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
    )));
    assert!(ds.contains(&format!("containers:\n        - name: {container}\n")));
    assert_eq!(
        input["Path"],
        format!("/var/log/containers/{name}-*_{namespace}_{container}-*.log")
    );
}

#[test]
fn vector_reads_the_output_and_parses_json() {
    let text = block("/etc/vector/imds-monitor.toml");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, tomllib; print(json.dumps(tomllib.loads(sys.stdin.read())))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("python3 tomllib");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sources = config["sources"].as_object().unwrap();
    assert_eq!(sources.len(), 1);
    let (source_name, source) = sources.iter().next().unwrap();
    assert_eq!(source["type"], "file");
    assert_eq!(source["include"], serde_json::json!([packaged_output()]));

    let transforms = config["transforms"].as_object().unwrap();
    let (transform_name, transform) = transforms.iter().next().unwrap();
    assert_eq!(transform["type"], "remap");
    assert_eq!(transform["inputs"], serde_json::json!([source_name]));
    let vrl = transform["source"].as_str().unwrap();
    assert!(vrl.contains("parse_json!(string!(.message))"), "{vrl}");
    assert!(vrl.contains(r#"."@timestamp""#), "{vrl}");
    for (name, sink) in config["sinks"].as_object().unwrap() {
        assert_eq!(
            sink["inputs"],
            serde_json::json!([transform_name]),
            "sink {name}"
        );
    }
}

#[test]
fn cloudwatch_agent_reads_the_output_with_its_timestamp() {
    let config: Value =
        serde_json::from_str(&block("amazon-cloudwatch-agent.json")).expect("valid JSON");
    let list = config["logs"]["logs_collected"]["files"]["collect_list"]
        .as_array()
        .unwrap();
    assert_eq!(list.len(), 1);
    let file = &list[0];
    assert_eq!(file["file_path"], packaged_output());
    assert_eq!(file["timezone"], "UTC");
    strptime(TIMESTAMP, file["timestamp_format"].as_str().unwrap()).unwrap();
    assert!(file["log_group_name"].as_str().unwrap().starts_with('/'));
}

#[test]
fn splunk_monitors_the_output_with_json_extraction() {
    let inputs = block("$SPLUNK_HOME/etc/apps/imds_monitor/local/inputs.conf");
    let props = block("$SPLUNK_HOME/etc/apps/imds_monitor/local/props.conf");
    let output = packaged_output();
    assert_eq!(
        inputs.lines().next().unwrap(),
        format!("[monitor://{output}]")
    );
    let sourcetype = inputs
        .lines()
        .find_map(|l| l.strip_prefix("sourcetype = "))
        .expect("sourcetype");
    assert_eq!(props.lines().next().unwrap(), format!("[{sourcetype}]"));
    for setting in [
        "INDEXED_EXTRACTIONS = json",
        "KV_MODE = none",
        "TIMESTAMP_FIELDS = @timestamp",
        "SHOULD_LINEMERGE = false",
    ] {
        assert!(
            props.lines().any(|l| l == setting),
            "{setting} in props.conf"
        );
    }
}
