//! Builds the JSON documents. Field names follow ECS; the tool's own fields
//! live under `imds.`. A field keeps one type forever: optional facts are
//! left out, never written as null or as another type. Documented in
//! docs/events.md.

use std::{net::SocketAddr, time::SystemTime};

use serde_json::{Map, Value, json};

use std::collections::BTreeMap;

use crate::{
    diagnose::{Finding, WorkloadCounts, WorkloadKey},
    enrich::Sender,
    event::{PathCategory, Request, Response},
    policy::{Decision, Mode},
    processes::ProcessInfo,
    stats::KernelStats,
};
use imds_monitor_common::{
    class::{InvalidReason, RequestClass, Verdict},
    http::flag,
};

pub const ECS_VERSION: &str = "8.11.0";

/// Facts shared by every event of this run.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub host_name: String,
    pub mode: Mode,
    pub interfaces: Vec<String>,
    pub endpoints: Vec<SocketAddr>,
    pub attach_method: &'static str,
    /// cgroup v2 subtree whose processes are attributed.
    pub cgroup: String,
    /// Enforce mode: the bpffs directory, and whether a predecessor's
    /// pinned enforcement was adopted.
    pub pinned: Option<(std::path::PathBuf, bool)>,
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn network_type(addr: &SocketAddr) -> &'static str {
    if addr.is_ipv4() { "ipv4" } else { "ipv6" }
}

fn base(t: SystemTime, action: &str, kind: &str, info: &RunInfo) -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert("@timestamp".into(), timestamp(t).into());
    doc.insert(
        "event".into(),
        json!({
            "kind": kind,
            "action": action,
            "module": "imds-monitor",
            "dataset": "imds_monitor.events",
        }),
    );
    doc.insert("host".into(), json!({ "name": info.host_name }));
    doc.insert("ecs".into(), json!({ "version": ECS_VERSION }));
    doc
}

fn process_summary(p: &ProcessInfo) -> Value {
    let mut m = Map::new();
    m.insert("pid".into(), p.pid.into());
    m.insert("name".into(), p.name.clone().into());
    if let Some(exe) = &p.executable {
        m.insert("executable".into(), exe.clone().into());
    }
    m.into()
}

/// ECS `process.*`, `container.*`, `orchestrator.*` and `imds.{cgroup,workload,ancestry}`.
fn add_sender(doc: &mut Map<String, Value>, imds: &mut Map<String, Value>, sender: &Sender) {
    match sender.partial {
        None => imds.insert("attribution".into(), "full".into()),
        Some(reason) => {
            imds.insert("attribution_reason".into(), reason.into());
            imds.insert("attribution".into(), "partial".into())
        }
    };
    if let Some(owner) = &sender.owner {
        imds.insert("attribution_method".into(), owner.method.into());
        imds.insert("cgroup".into(), {
            let mut cg = Map::new();
            cg.insert("id".into(), owner.cgroup_id.into());
            if let Some(path) = &sender.cgroup_path {
                cg.insert("path".into(), path.clone().into());
            }
            cg.into()
        });
    }
    if let Some(p) = &sender.process {
        let mut process = Map::new();
        process.insert("pid".into(), p.pid.into());
        process.insert("name".into(), p.name.clone().into());
        if let Some(exe) = &p.executable {
            process.insert("executable".into(), exe.clone().into());
        }
        if !p.args.is_empty() {
            process.insert("args".into(), p.args.clone().into());
            process.insert("args_count".into(), p.args.len().into());
            process.insert("command_line".into(), p.args.join(" ").into());
        }
        if let Some(owner) = &sender.owner {
            process.insert("thread".into(), json!({ "id": owner.tid }));
            process.insert("group".into(), json!({ "id": owner.gid.to_string() }));
        }
        if let Some(uid) = p.uid.or(sender.owner.as_ref().map(|o| o.uid)) {
            process.insert("user".into(), json!({ "id": uid.to_string() }));
        }
        if let Some(parent) = sender.ancestry.first() {
            process.insert("parent".into(), process_summary(parent));
        } else if let Some(ppid) = p.ppid {
            process.insert("parent".into(), json!({ "pid": ppid }));
        }
        doc.insert("process".into(), process.into());
        imds.insert(
            "ancestry".into(),
            sender
                .ancestry
                .iter()
                .map(process_summary)
                .collect::<Vec<_>>()
                .into(),
        );
    }
    let w = &sender.workload;
    if let Some(id) = &w.container_id {
        let mut container = Map::new();
        container.insert("id".into(), id.clone().into());
        if let Some(runtime) = w.container_runtime {
            container.insert("runtime".into(), runtime.into());
        }
        doc.insert("container".into(), container.into());
    }
    if let Some(uid) = &w.pod_uid {
        doc.insert(
            "orchestrator".into(),
            json!({ "type": "kubernetes", "resource": { "type": "pod", "id": uid } }),
        );
    }
    if let Some(unit) = &w.systemd_unit {
        imds.insert("systemd_unit".into(), unit.clone().into());
    }
    if let Some((kind, id)) = sender.workload_key() {
        imds.insert(
            "workload".into(),
            json!({ "kind": kind.as_str(), "id": id }),
        );
    }
}

/// `event.action: "imds-request"`: one classified request and who sent it.
pub fn request(
    req: &Request,
    sender: &Sender,
    decision: &Decision,
    interface: &str,
    info: &RunInfo,
) -> Value {
    let verdict = decision.verdict;
    let kind = if verdict == Verdict::Allowed {
        "event"
    } else {
        "alert"
    };
    let mut doc = base(req.time, "imds-request", kind, info);
    let event = doc["event"].as_object_mut().expect("event is an object");
    event.insert("category".into(), json!(["network"]));
    event.insert("type".into(), json!(["access", "connection"]));
    if verdict == Verdict::Dropped {
        event.insert("outcome".into(), "failure".into());
    }

    let mut imds = Map::new();
    imds.insert("class".into(), req.class.as_str().into());
    imds.insert("version".into(), req.class.version().into());
    imds.insert("verdict".into(), verdict.as_str().into());
    if decision.would_drop {
        imds.insert("would_drop".into(), true.into());
    }
    if let Some(rule) = &decision.rule {
        imds.insert("policy".into(), json!({ "rule": rule }));
    }
    imds.insert(
        "path_category".into(),
        PathCategory::of(&req.path).as_str().into(),
    );
    imds.insert("path_truncated".into(), req.path_truncated.into());
    imds.insert(
        "x_forwarded_for".into(),
        (req.flags & flag::FORWARDED_FOR != 0).into(),
    );
    if req.class == RequestClass::Invalid && req.reason != InvalidReason::None {
        imds.insert("invalid_reason".into(), req.reason.as_str().into());
    }
    if req.class == RequestClass::OtherCloud {
        let cloud = if req.flags & flag::GCP != 0 {
            "gcp"
        } else if req.flags & flag::AZURE != 0 {
            "azure"
        } else {
            "oracle"
        };
        imds.insert("other_cloud".into(), cloud.into());
    }
    if let Some(ttl) = req.token_ttl {
        imds.insert("token_ttl_seconds".into(), ttl.into());
    }
    imds.insert("interface".into(), interface.into());
    add_sender(&mut doc, &mut imds, sender);
    doc.insert("imds".into(), imds.into());

    add_connection(&mut doc, req);
    doc.insert(
        "observer".into(),
        json!({ "egress": { "interface": { "name": interface, "id": req.ifindex.to_string() } } }),
    );
    doc.into()
}

/// `http.request.method`, `url.path`, `source`, `destination`, `network`.
fn add_connection(doc: &mut Map<String, Value>, req: &Request) {
    if !req.method.is_empty() {
        doc.insert(
            "http".into(),
            json!({ "request": { "method": req.method } }),
        );
    }
    if !req.path.is_empty() {
        doc.insert("url".into(), json!({ "path": req.path }));
    }
    doc.insert(
        "source".into(),
        json!({ "ip": req.source.ip().to_string(), "port": req.source.port() }),
    );
    doc.insert(
        "destination".into(),
        json!({ "ip": req.destination.ip().to_string(), "port": req.destination.port() }),
    );
    doc.insert(
        "network".into(),
        json!({
            "type": network_type(&req.destination),
            "transport": "tcp",
            "protocol": "http",
            "direction": "egress",
        }),
    );
}

fn outcome(status: u16) -> &'static str {
    match status {
        200..=399 => "success",
        400..=599 => "failure",
        _ => "unknown",
    }
}

fn set_outcome(doc: &mut Map<String, Value>, outcome: &str) {
    doc["event"]
        .as_object_mut()
        .expect("event is an object")
        .insert("outcome".into(), outcome.into());
}

fn set_status(doc: &mut Map<String, Value>, status: u16) {
    let http = doc
        .entry("http")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("http is an object");
    http.insert("response".into(), json!({ "status_code": status }));
    set_outcome(doc, outcome(status));
}

/// `event.action: "imds-response"`: how IMDS answered a request (joined by
/// connection and position; the request's own event came first).
pub fn response(
    resp: &Response,
    req: &Request,
    sender: &Sender,
    interface: &str,
    info: &RunInfo,
) -> Value {
    let mut doc = base(resp.time, "imds-response", "event", info);
    let mut imds = Map::new();
    imds.insert("class".into(), req.class.as_str().into());
    imds.insert("version".into(), req.class.version().into());
    imds.insert(
        "path_category".into(),
        PathCategory::of(&req.path).as_str().into(),
    );
    imds.insert("response_ttl".into(), resp.ttl.into());
    imds.insert("interface".into(), interface.into());
    add_sender(&mut doc, &mut imds, sender);
    doc.insert("imds".into(), imds.into());
    add_connection(&mut doc, req);
    set_status(&mut doc, resp.status);
    doc.into()
}

/// A diagnosis (`imds-v1-rejected`, `imds-hop-limit`, ...): an alert saying
/// who, what happened, and the fix.
pub fn finding(f: &Finding, interface: &str, info: &RunInfo) -> Value {
    let mut doc = base(f.time, f.action, "alert", info);
    doc.insert("message".into(), f.message.clone().into());
    let mut imds = Map::new();
    imds.insert("class".into(), f.request.class.as_str().into());
    imds.insert(
        "path_category".into(),
        PathCategory::of(&f.request.path).as_str().into(),
    );
    imds.insert(
        "diagnostic".into(),
        json!({ "id": f.action.trim_start_matches("imds-").replace('-', "_"), "fix": f.fix }),
    );
    if let Some((observed, needed)) = f.hop_limit {
        imds.insert(
            "hop_limit".into(),
            json!({ "observed_ttl": observed, "needed": needed }),
        );
    }
    if let Some(delay) = f.fallback_delay_ms {
        imds.insert("fallback".into(), json!({ "delay_ms": delay }));
    }
    imds.insert("interface".into(), interface.into());
    add_sender(&mut doc, &mut imds, &f.sender);
    doc.insert("imds".into(), imds.into());
    add_connection(&mut doc, &f.request);
    match f.status {
        Some(status) => set_status(&mut doc, status),
        None => set_outcome(&mut doc, "unknown"),
    }
    doc.into()
}

/// `event.action: "imds-summary"`: per-workload counts since the last one.
pub fn summary(
    interval: std::time::Duration,
    counts: &BTreeMap<WorkloadKey, WorkloadCounts>,
    info: &RunInfo,
) -> Value {
    let mut doc = base(SystemTime::now(), "imds-summary", "event", info);
    let workloads: Vec<Value> = counts
        .iter()
        .map(|((kind, id), c)| {
            let mut w = Map::new();
            w.insert("kind".into(), kind.clone().into());
            w.insert("id".into(), id.clone().into());
            w.insert("v1".into(), c.v1.into());
            w.insert("v2".into(), c.v2.into());
            w.insert("invalid".into(), c.invalid.into());
            w.insert("other_cloud".into(), c.other_cloud.into());
            w.insert("rejected_401".into(), c.rejected_401.into());
            if let Some(t) = c.first_v1 {
                w.insert("first_v1".into(), timestamp(t).into());
            }
            if let Some(t) = c.last_v1 {
                w.insert("last_v1".into(), timestamp(t).into());
            }
            w.into()
        })
        .collect();
    doc.insert(
        "imds".into(),
        json!({ "summary": { "interval_seconds": interval.as_secs(), "workloads": workloads } }),
    );
    doc.into()
}

/// `policy-loaded` (a SIGHUP applied a new policy) or `policy-rejected`
/// (the file is bad: the old policy stays in force, and this says why).
pub fn policy_reload(
    info: &RunInfo,
    path: &std::path::Path,
    result: Result<usize, String>,
) -> Value {
    let (action, kind) = match &result {
        Ok(_) => ("policy-loaded", "event"),
        Err(_) => ("policy-rejected", "alert"),
    };
    let mut doc = base(SystemTime::now(), action, kind, info);
    let mut policy = Map::new();
    policy.insert("path".into(), path.to_string_lossy().into_owned().into());
    match result {
        Ok(exceptions) => {
            policy.insert("exceptions".into(), exceptions.into());
        }
        Err(reason) => {
            doc.insert(
                "message".into(),
                format!("policy not reloaded, the previous one stays in force: {reason}").into(),
            );
        }
    }
    doc.insert("imds".into(), json!({ "policy": policy }));
    doc.into()
}

/// `event.action: "monitor-started"`: the first line, once everything is attached.
pub fn started(info: &RunInfo) -> Value {
    let mut doc = base(SystemTime::now(), "monitor-started", "event", info);
    doc.insert(
        "imds".into(),
        json!({
            "mode": info.mode.as_str(),
            "interfaces": info.interfaces,
            "endpoints": info.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "attach_method": info.attach_method,
            "cgroup": { "path": info.cgroup },
        }),
    );
    doc.insert(
        "service".into(),
        json!({ "name": "imds-monitor", "version": env!("CARGO_PKG_VERSION") }),
    );
    if let Some((dir, adopted)) = &info.pinned {
        doc["imds"]
            .as_object_mut()
            .expect("imds is an object")
            .insert(
                "enforcement".into(),
                json!({ "pin_dir": dir.to_string_lossy(), "adopted": adopted }),
            );
    }
    doc.into()
}

/// `event.action: "monitor-stopped"`: the last line, with the run's counters.
pub fn stopped(info: &RunInfo, stats: &KernelStats, printed: u64, partial: u64) -> Value {
    let mut doc = base(SystemTime::now(), "monitor-stopped", "event", info);
    let mut requests = Map::new();
    for class in RequestClass::ALL {
        requests.insert(class.as_str().into(), stats.requests[class as usize].into());
    }
    doc.insert(
        "imds".into(),
        json!({
            "mode": info.mode.as_str(),
            "interfaces": info.interfaces,
            "counters": {
                "requests": requests,
                "events_written": printed,
            "attribution_partial": partial,
                "lost_events": stats.lost_events,
                "retransmitted_segments": stats.retransmits,
                "sequence_gaps": stats.sequence_gaps,
                "truncated_packets": stats.truncated_packets,
                "responses": stats.responses,
                "responses_not_followed": stats.responses_lost,
            },
        }),
    );
    doc.insert(
        "service".into(),
        json!({ "name": "imds-monitor", "version": env!("CARGO_PKG_VERSION") }),
    );
    doc.into()
}

/// `event.action: "events-lost"`: the ring buffer overflowed; never silent.
pub fn lost(info: &RunInfo, lost_since_last: u64, lost_total: u64) -> Value {
    let mut doc = base(SystemTime::now(), "events-lost", "alert", info);
    doc.insert(
        "imds".into(),
        json!({ "lost_events": lost_since_last, "lost_events_total": lost_total }),
    );
    doc.into()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn info(mode: Mode) -> RunInfo {
        RunInfo {
            host_name: "ip-10-0-0-1".into(),
            mode,
            interfaces: vec!["eth0".into()],
            endpoints: vec!["169.254.169.254:80".parse().unwrap()],
            attach_method: "tcx",
            cgroup: "/".into(),
            pinned: None,
        }
    }

    fn decide(req: &Request, mode: Mode) -> Decision {
        mode.decide(
            &crate::policy::model::Policy::default(),
            req.class,
            None,
            false,
        )
    }

    fn request_of(class: RequestClass, method: &str, path: &str) -> Request {
        Request {
            time: UNIX_EPOCH + Duration::from_micros(1_795_000_000_123_456),
            class,
            reason: InvalidReason::None,
            method: method.into(),
            path: path.into(),
            path_truncated: false,
            flags: 0,
            token_ttl: None,
            source: "198.18.0.10:41000".parse().unwrap(),
            destination: "169.254.169.254:80".parse().unwrap(),
            ifindex: 2,
            socket_cookie: 0,
            owner: None,
            request_index: 0,
            forwarded: false,
            kernel_verdict: Verdict::Allowed,
        }
    }

    #[test]
    fn v1_request_in_alert_mode_is_an_alert() {
        let req = request_of(
            RequestClass::V1Get,
            "GET",
            "/latest/meta-data/iam/security-credentials/role",
        );
        let doc = request(
            &req,
            &Sender::default(),
            &decide(&req, Mode::Alert),
            "eth0",
            &info(Mode::Alert),
        );
        assert_eq!(doc["event"]["kind"], "alert");
        assert_eq!(doc["event"]["action"], "imds-request");
        assert_eq!(doc["imds"]["class"], "v1_get");
        assert_eq!(doc["imds"]["version"], "v1");
        assert_eq!(doc["imds"]["verdict"], "alerted");
        assert_eq!(doc["imds"]["path_category"], "credentials");
        assert_eq!(doc["http"]["request"]["method"], "GET");
        assert_eq!(doc["source"]["ip"], "198.18.0.10");
        assert_eq!(doc["source"]["port"], 41000);
        assert_eq!(doc["destination"]["port"], 80);
        assert_eq!(doc["network"]["type"], "ipv4");
        assert_eq!(doc["network"]["transport"], "tcp");
        assert_eq!(doc["observer"]["egress"]["interface"]["name"], "eth0");
        assert_eq!(doc["host"]["name"], "ip-10-0-0-1");
        assert_eq!(doc["@timestamp"], "2026-11-18T11:06:40.123456Z");
        assert!(
            doc["imds"].get("token_ttl_seconds").is_none(),
            "absent, not null"
        );
    }

    #[test]
    fn monitor_mode_never_alerts() {
        for class in RequestClass::ALL {
            let req = request_of(class, "GET", "/");
            let decision = decide(&req, Mode::Monitor);
            let doc = request(
                &req,
                &Sender::default(),
                &decision,
                "eth0",
                &info(Mode::Monitor),
            );
            assert!(
                doc["imds"].get("policy").is_none(),
                "monitor mode names no rule"
            );
            assert_eq!(doc["event"]["kind"], "event", "{class:?}");
            assert_eq!(doc["imds"]["verdict"], "allowed");
        }
    }

    #[test]
    fn token_put_carries_ttl_and_invalid_carries_reason() {
        let mut put = request_of(RequestClass::V2TokenPut, "PUT", "/latest/api/token");
        put.token_ttl = Some(21600);
        let doc = request(
            &put,
            &Sender::default(),
            &decide(&put, Mode::Alert),
            "eth0",
            &info(Mode::Alert),
        );
        assert_eq!(doc["imds"]["token_ttl_seconds"], 21600);
        assert_eq!(doc["imds"]["path_category"], "token");
        assert_eq!(doc["event"]["kind"], "event");

        let mut bad = request_of(RequestClass::Invalid, "PUT", "/latest/api/token");
        bad.reason = InvalidReason::ForwardedFor;
        bad.flags = flag::FORWARDED_FOR;
        let doc = request(
            &bad,
            &Sender::default(),
            &decide(&bad, Mode::Alert),
            "eth0",
            &info(Mode::Alert),
        );
        assert_eq!(doc["imds"]["invalid_reason"], "x_forwarded_for");
        assert_eq!(doc["imds"]["x_forwarded_for"], true);
    }

    #[test]
    fn attacker_controlled_path_is_escaped() {
        let req = request_of(
            RequestClass::V1Get,
            "GET",
            "/latest/\"}\n{\"evil\":1\u{1b}[31m",
        );
        let decision = decide(&req, Mode::Monitor);
        let line = serde_json::to_string(&request(
            &req,
            &Sender::default(),
            &decision,
            "eth0",
            &info(Mode::Monitor),
        ))
        .unwrap();
        assert!(!line.contains('\n'), "one line");
        assert!(!line.contains('\u{1b}'), "no raw escape characters");
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["url"]["path"], req.path);
        assert!(back.get("evil").is_none());
    }

    #[test]
    fn stopped_reports_counters_per_class() {
        let mut stats = KernelStats::default();
        stats.requests[RequestClass::V1Get as usize] = 3;
        stats.lost_events = 1;
        let doc = stopped(&info(Mode::Monitor), &stats, 2, 1);
        assert_eq!(doc["event"]["action"], "monitor-stopped");
        assert_eq!(doc["imds"]["counters"]["requests"]["v1_get"], 3);
        assert_eq!(doc["imds"]["counters"]["requests"]["incomplete"], 0);
        assert_eq!(doc["imds"]["counters"]["lost_events"], 1);
        assert_eq!(doc["imds"]["counters"]["attribution_partial"], 1);
    }

    #[test]
    fn sender_fields_name_process_parent_container_and_pod() {
        use crate::{event::KernelOwner, workload::Workload};
        let id = "4f9c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";
        let path = format!(
            "/kubepods.slice/kubepods-pod0b7e2f5a_1c3d_4e5f_8a9b_0c1d2e3f4a5b.slice/cri-containerd-{id}.scope"
        );
        let sender = Sender {
            owner: Some(KernelOwner {
                tgid: 300,
                tid: 301,
                uid: 1000,
                gid: 1000,
                cgroup_id: 42,
                comm: "curl".into(),
                method: "sequence",
                exempt_rule: 0,
            }),
            process: Some(ProcessInfo {
                pid: 300,
                ppid: Some(200),
                name: "curl".into(),
                executable: Some("/usr/bin/curl".into()),
                args: vec!["curl".into(), "-s".into(), "http://169.254.169.254/".into()],
                args_truncated: false,
                uid: Some(1000),
            }),
            ancestry: vec![ProcessInfo {
                pid: 200,
                ppid: Some(100),
                name: "sh".into(),
                executable: Some("/bin/sh".into()),
                ..ProcessInfo::default()
            }],
            workload: Workload::from_cgroup_path(&path),
            cgroup_path: Some(path.clone()),
            partial: None,
        };
        let req = request_of(RequestClass::V1Get, "GET", "/");
        let doc = request(
            &req,
            &sender,
            &decide(&req, Mode::Alert),
            "eth0",
            &info(Mode::Alert),
        );
        assert_eq!(doc["process"]["pid"], 300);
        assert_eq!(doc["process"]["thread"]["id"], 301);
        assert_eq!(doc["process"]["executable"], "/usr/bin/curl");
        assert_eq!(doc["process"]["args"][1], "-s");
        assert_eq!(doc["process"]["args_count"], 3);
        assert_eq!(
            doc["process"]["command_line"],
            "curl -s http://169.254.169.254/"
        );
        assert_eq!(doc["process"]["user"]["id"], "1000");
        assert_eq!(doc["process"]["parent"]["pid"], 200);
        assert_eq!(doc["process"]["parent"]["name"], "sh");
        assert_eq!(doc["imds"]["ancestry"][0]["executable"], "/bin/sh");
        assert_eq!(doc["imds"]["cgroup"]["id"], 42);
        assert_eq!(doc["imds"]["cgroup"]["path"], path);
        assert_eq!(doc["container"]["id"], id);
        assert_eq!(doc["container"]["runtime"], "containerd");
        assert_eq!(
            doc["orchestrator"]["resource"]["id"],
            "0b7e2f5a-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
        );
        assert_eq!(doc["imds"]["workload"]["kind"], "pod");
        assert_eq!(doc["imds"]["attribution"], "full");
        assert_eq!(doc["imds"]["attribution_method"], "sequence");
        assert!(doc["imds"].get("attribution_reason").is_none());
    }

    #[test]
    fn unattributed_request_says_why() {
        let req = request_of(RequestClass::V1Get, "GET", "/");
        let sender = Sender {
            partial: Some("connection_not_seen"),
            ..Sender::default()
        };
        let doc = request(
            &req,
            &sender,
            &decide(&req, Mode::Alert),
            "eth0",
            &info(Mode::Alert),
        );
        assert_eq!(doc["imds"]["attribution"], "partial");
        assert_eq!(doc["imds"]["attribution_reason"], "connection_not_seen");
        assert!(doc.get("process").is_none());
    }
}
