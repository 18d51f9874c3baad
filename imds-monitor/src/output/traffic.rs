//! The documents about one request: `imds-request`, `imds-response` and the
//! findings (`imds-v1-rejected`, ...). There is one of these or two per
//! IMDS request, so they are serialized straight from borrowed data: no
//! `serde_json::Value` tree, no map per object, no key strings allocated.
//! serde_json escapes every string, attacker-controlled paths included.
//! Keys keep the order they had as sorted maps.

use std::fmt::{self, Display};
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use imds_monitor_common::{
    class::{InvalidReason, RequestClass, Verdict},
    http::flag,
};
use serde::{Serialize, Serializer};

use super::{
    ecs::{ECS_VERSION, RunInfo},
    runtime_fields,
};
use crate::{
    diagnose::Finding,
    enrich::Sender,
    event::{PathCategory, Request, Response},
    policy::Decision,
    processes::ProcessInfo,
};

/// Serializes a value with its `Display` form (addresses, ids, times).
fn display<T: Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// `event.action: "imds-request"`: one classified request and who sent it.
pub fn request<'a>(
    req: &'a Request,
    sender: &'a Sender,
    decision: &'a Decision,
    interface: &'a str,
    info: &'a RunInfo,
) -> impl Serialize + 'a {
    let verdict = decision.verdict;
    let kind = if verdict == Verdict::Allowed {
        "event"
    } else {
        "alert"
    };
    let own = RequestImds {
        class: req.class.as_str(),
        incomplete_reason: (req.class == RequestClass::Incomplete
            && req.reason != InvalidReason::None)
            .then(|| req.reason.as_str()),
        invalid_reason: (req.class == RequestClass::Invalid && req.reason != InvalidReason::None)
            .then(|| req.reason.as_str()),
        other_cloud: (req.class == RequestClass::OtherCloud).then(|| other_cloud(req.flags)),
        path_category: PathCategory::of(&req.path).as_str(),
        path_truncated: req.path_truncated,
        policy: decision.rule.as_deref().map(|rule| Rule { rule }),
        token_ttl_seconds: req.token_ttl,
        verdict: verdict.as_str(),
        version: req.class.version(),
        would_drop: decision.would_drop.then_some(true),
        x_forwarded_for: req.flags & flag::FORWARDED_FOR != 0,
    };
    let mut doc = Doc::new(
        req.time,
        "imds-request",
        kind,
        info,
        req,
        sender,
        interface,
        own,
    );
    doc.event.category = Some(["network"]);
    doc.event.kind_of_access = Some(["access", "connection"]);
    if verdict == Verdict::Dropped {
        doc.event.outcome = Some("failure");
    }
    doc.observer = Some(Observer {
        egress: Egress {
            interface: Interface {
                id: req.ifindex,
                name: interface,
            },
        },
    });
    doc
}

/// `event.action: "imds-response"`: how IMDS answered a request (joined by
/// connection and position; the request's own event came first).
pub fn response<'a>(
    resp: &'a Response,
    req: &'a Request,
    sender: &'a Sender,
    interface: &'a str,
    info: &'a RunInfo,
) -> impl Serialize + 'a {
    let own = ResponseImds {
        class: req.class.as_str(),
        path_category: PathCategory::of(&req.path).as_str(),
        response_ttl: resp.ttl,
        version: req.class.version(),
    };
    let mut doc = Doc::new(
        resp.time,
        "imds-response",
        "event",
        info,
        req,
        sender,
        interface,
        own,
    );
    doc.set_status(resp.status);
    doc
}

/// A diagnosis (`imds-v1-rejected`, `imds-hop-limit`, ...): an alert saying
/// who, what happened, and the fix.
pub fn finding<'a>(f: &'a Finding, interface: &'a str, info: &'a RunInfo) -> impl Serialize + 'a {
    let own = FindingImds {
        class: f.request.class.as_str(),
        diagnostic: Diagnostic {
            fix: &f.fix,
            id: f.action.trim_start_matches("imds-").replace('-', "_"),
        },
        fallback: f.fallback_delay_ms.map(|delay_ms| Fallback { delay_ms }),
        hop_limit: f.hop_limit.map(|(observed_ttl, needed)| HopLimit {
            needed,
            observed_ttl,
        }),
        path_category: PathCategory::of(&f.request.path).as_str(),
    };
    let mut doc = Doc::new(
        f.time, f.action, "alert", info, &f.request, &f.sender, interface, own,
    );
    doc.message = Some(&f.message);
    match f.status {
        Some(status) => doc.set_status(status),
        None => doc.event.outcome = Some("unknown"),
    }
    doc
}

fn other_cloud(flags: u16) -> &'static str {
    if flags & flag::GCP != 0 {
        "gcp"
    } else if flags & flag::AZURE != 0 {
        "azure"
    } else {
        "oracle"
    }
}

fn outcome(status: u16) -> &'static str {
    match status {
        200..=399 => "success",
        400..=599 => "failure",
        _ => "unknown",
    }
}

/// Top level: ECS `event`, `host`, the sender (`process`, `container`,
/// `orchestrator`), the connection (`http`, `url`, `source`, `destination`,
/// `network`) and `imds`, whose own part `I` depends on the event.
#[derive(Serialize)]
struct Doc<'a, I: Serialize> {
    #[serde(rename = "@timestamp", serialize_with = "display")]
    timestamp: humantime::Rfc3339Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<Container<'a>>,
    destination: Endpoint,
    ecs: Ecs,
    event: Event<'a>,
    host: Host<'a>,
    #[serde(skip_serializing_if = "Http::is_empty")]
    http: Http<'a>,
    imds: Imds<'a, I>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    network: Network,
    #[serde(skip_serializing_if = "Option::is_none")]
    observer: Option<Observer<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    orchestrator: Option<runtime_fields::Orchestrator<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<Process<'a>>,
    source: Endpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<Url<'a>>,
}

impl<'a, I: Serialize> Doc<'a, I> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        time: SystemTime,
        action: &'a str,
        kind: &'a str,
        info: &'a RunInfo,
        req: &'a Request,
        sender: &'a Sender,
        interface: &'a str,
        own: I,
    ) -> Self {
        let workload = &sender.workload;
        Self {
            timestamp: humantime::format_rfc3339_micros(time),
            container: workload.container_id.as_deref().map(|id| Container {
                id,
                runtime: workload.container_runtime,
                meta: runtime_fields::container(sender),
            }),
            destination: Endpoint::of(req.destination),
            ecs: Ecs {
                version: ECS_VERSION,
            },
            event: Event {
                action,
                category: None,
                dataset: "imds_monitor.events",
                kind,
                module: "imds-monitor",
                outcome: None,
                kind_of_access: None,
            },
            host: Host {
                name: &info.host_name,
            },
            http: Http {
                request: (!req.method.is_empty()).then_some(Method {
                    method: &req.method,
                }),
                response: None,
            },
            imds: Imds {
                own,
                sender: SenderImds::of(sender),
                interface,
            },
            message: None,
            network: Network {
                direction: "egress",
                protocol: "http",
                transport: "tcp",
                kind: if req.destination.is_ipv4() {
                    "ipv4"
                } else {
                    "ipv6"
                },
            },
            observer: None,
            orchestrator: runtime_fields::orchestrator(sender),
            process: sender.process.as_ref().map(|p| Process::of(p, sender)),
            source: Endpoint::of(req.source),
            url: (!req.path.is_empty()).then_some(Url { path: &req.path }),
        }
    }

    fn set_status(&mut self, status: u16) {
        self.http.response = Some(Status {
            status_code: status,
        });
        self.event.outcome = Some(outcome(status));
    }
}

#[derive(Serialize)]
struct Event<'a> {
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<[&'static str; 1]>,
    dataset: &'static str,
    kind: &'a str,
    module: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind_of_access: Option<[&'static str; 2]>,
}

#[derive(Serialize)]
struct Ecs {
    version: &'static str,
}

#[derive(Serialize)]
struct Host<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Endpoint {
    #[serde(serialize_with = "display")]
    ip: IpAddr,
    port: u16,
}

impl Endpoint {
    fn of(addr: SocketAddr) -> Self {
        Self {
            ip: addr.ip(),
            port: addr.port(),
        }
    }
}

#[derive(Serialize)]
struct Http<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<Method<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Status>,
}

impl Http<'_> {
    fn is_empty(&self) -> bool {
        self.request.is_none() && self.response.is_none()
    }
}

#[derive(Serialize)]
struct Method<'a> {
    method: &'a str,
}

#[derive(Serialize)]
struct Status {
    status_code: u16,
}

#[derive(Serialize)]
struct Url<'a> {
    path: &'a str,
}

#[derive(Serialize)]
struct Network {
    direction: &'static str,
    protocol: &'static str,
    transport: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Observer<'a> {
    egress: Egress<'a>,
}

#[derive(Serialize)]
struct Egress<'a> {
    interface: Interface<'a>,
}

#[derive(Serialize)]
struct Interface<'a> {
    /// A string in ECS (`observer.egress.interface.id`).
    #[serde(serialize_with = "display")]
    id: u32,
    name: &'a str,
}

#[derive(Serialize)]
struct Container<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<&'static str>,
    #[serde(flatten)]
    meta: runtime_fields::ContainerFields<'a>,
}

/// ECS `process.*`.
#[derive(Serialize)]
struct Process<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    args: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    args_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_line: Option<CommandLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    executable: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<TextId>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<ProcessSummary<'a>>,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread: Option<NumberId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<TextId>,
}

impl<'a> Process<'a> {
    fn of(p: &'a ProcessInfo, sender: &'a Sender) -> Self {
        let owner = sender.owner.as_ref();
        let has_args = !p.args.is_empty();
        Self {
            args: &p.args,
            args_count: has_args.then_some(p.args.len()),
            command_line: has_args.then_some(CommandLine(&p.args)),
            executable: p.executable.as_deref(),
            group: owner.map(|o| TextId { id: o.gid }),
            name: &p.name,
            parent: match sender.ancestry.first() {
                Some(parent) => Some(ProcessSummary::of(parent)),
                None => p.ppid.map(|pid| ProcessSummary {
                    executable: None,
                    name: None,
                    pid,
                }),
            },
            pid: p.pid,
            thread: owner.map(|o| NumberId { id: o.tid }),
            user: p.uid.or(owner.map(|o| o.uid)).map(|id| TextId { id }),
        }
    }
}

/// `process.command_line`: the arguments joined by spaces, written as they
/// are serialized.
struct CommandLine<'a>(&'a [String]);

impl Display for CommandLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, arg) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(arg)?;
        }
        Ok(())
    }
}

impl Serialize for CommandLine<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `{ "id": "1000" }`: ECS keeps user and group ids as strings.
#[derive(Serialize)]
struct TextId {
    #[serde(serialize_with = "display")]
    id: u32,
}

#[derive(Serialize)]
struct NumberId {
    id: u32,
}

/// A parent in `process.parent` and `imds.ancestry`.
#[derive(Serialize)]
struct ProcessSummary<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    executable: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    pid: u32,
}

impl<'a> ProcessSummary<'a> {
    fn of(p: &'a ProcessInfo) -> Self {
        Self {
            executable: p.executable.as_deref(),
            name: Some(&p.name),
            pid: p.pid,
        }
    }
}

struct Ancestry<'a>(&'a [ProcessInfo]);

impl Serialize for Ancestry<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(ProcessSummary::of))
    }
}

/// `imds`: the event's own fields, then the sender's, then the interface.
#[derive(Serialize)]
struct Imds<'a, I: Serialize> {
    #[serde(flatten)]
    own: I,
    #[serde(flatten)]
    sender: SenderImds<'a>,
    interface: &'a str,
}

/// `imds.{ancestry,attribution*,cgroup,systemd_unit,workload}`.
#[derive(Serialize)]
struct SenderImds<'a> {
    /// With the process: its parents, nearest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    ancestry: Option<Ancestry<'a>>,
    attribution: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    attribution_method: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attribution_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<Cgroup<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    systemd_unit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<WorkloadId<'a>>,
    #[serde(flatten)]
    runtime: runtime_fields::ImdsFields<'a>,
}

impl<'a> SenderImds<'a> {
    fn of(sender: &'a Sender) -> Self {
        let owner = sender.owner.as_ref();
        Self {
            ancestry: sender.process.as_ref().map(|_| Ancestry(&sender.ancestry)),
            attribution: if sender.partial.is_some() {
                "partial"
            } else {
                "full"
            },
            attribution_method: owner.map(|o| o.method),
            attribution_reason: sender.partial,
            cgroup: owner.map(|o| Cgroup {
                id: o.cgroup_id,
                path: sender.cgroup_path.as_deref(),
            }),
            systemd_unit: sender.workload.systemd_unit.as_deref(),
            workload: sender.workload_key().map(|(kind, id)| WorkloadId {
                id,
                kind: kind.as_str(),
            }),
            runtime: runtime_fields::imds(sender),
        }
    }
}

#[derive(Serialize)]
struct Cgroup<'a> {
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
}

#[derive(Serialize)]
struct WorkloadId<'a> {
    id: &'a str,
    kind: &'static str,
}

#[derive(Serialize)]
struct RequestImds<'a> {
    class: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    incomplete_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invalid_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    other_cloud: Option<&'static str>,
    path_category: &'static str,
    path_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<Rule<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_ttl_seconds: Option<u32>,
    verdict: &'static str,
    version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    would_drop: Option<bool>,
    x_forwarded_for: bool,
}

#[derive(Serialize)]
struct Rule<'a> {
    rule: &'a str,
}

#[derive(Serialize)]
struct ResponseImds {
    class: &'static str,
    path_category: &'static str,
    response_ttl: u8,
    version: &'static str,
}

#[derive(Serialize)]
struct FindingImds<'a> {
    class: &'static str,
    diagnostic: Diagnostic<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<Fallback>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hop_limit: Option<HopLimit>,
    path_category: &'static str,
}

#[derive(Serialize)]
struct Diagnostic<'a> {
    fix: &'a str,
    id: String,
}

#[derive(Serialize)]
struct Fallback {
    delay_ms: u64,
}

#[derive(Serialize)]
struct HopLimit {
    needed: u8,
    observed_ttl: u8,
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::Value;

    use super::*;
    use crate::{event::KernelOwner, policy::Mode};

    /// The request's line as the daemon writes it: on `eth0`, decided by
    /// `mode` with the default policy.
    fn line_of(req: &Request, sender: &Sender, mode: Mode) -> String {
        let decision = mode.decide(
            &crate::policy::model::Policy::default(),
            req.class,
            req.reason,
            None,
            false,
        );
        serde_json::to_string(&request(
            req,
            sender,
            &decision,
            "eth0",
            &RunInfo::for_tests(mode),
        ))
        .unwrap()
    }

    /// The same line as a JSON value, to index.
    fn doc_of(req: &Request, sender: &Sender, mode: Mode) -> Value {
        serde_json::from_str(&line_of(req, sender, mode)).unwrap()
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
        let doc = doc_of(&req, &Sender::default(), Mode::Alert);
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
            let doc = doc_of(&req, &Sender::default(), Mode::Monitor);
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
        let doc = doc_of(&put, &Sender::default(), Mode::Alert);
        assert_eq!(doc["imds"]["token_ttl_seconds"], 21600);
        assert_eq!(doc["imds"]["path_category"], "token");
        assert_eq!(doc["event"]["kind"], "event");

        let mut bad = request_of(RequestClass::Invalid, "PUT", "/latest/api/token");
        bad.reason = InvalidReason::ForwardedFor;
        bad.flags = flag::FORWARDED_FOR;
        let doc = doc_of(&bad, &Sender::default(), Mode::Alert);
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
        let line = line_of(&req, &Sender::default(), Mode::Monitor);
        assert!(!line.contains('\n'), "one line");
        assert!(!line.contains('\u{1b}'), "no raw escape characters");
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["url"]["path"], req.path);
        assert!(back.get("evil").is_none());
    }

    #[test]
    fn sender_fields_name_process_parent_container_and_pod() {
        use crate::workload::Workload;
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
            runtime: None,
        };
        let req = request_of(RequestClass::V1Get, "GET", "/");
        let doc = doc_of(&req, &sender, Mode::Alert);
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
    fn attacker_controlled_process_strings_are_escaped() {
        let evil = "x\"}\n{\"evil\":1\u{1b}[31m";
        let sender = Sender {
            process: Some(ProcessInfo {
                pid: 7,
                name: evil.into(),
                executable: Some(format!("/tmp/{evil}")),
                args: vec![evil.into(), "--flag=\\".into()],
                ..ProcessInfo::default()
            }),
            cgroup_path: Some(format!("/system.slice/{evil}.service")),
            ..Sender::default()
        };
        let req = request_of(RequestClass::V1Get, "GET", "/");
        let line = line_of(&req, &sender, Mode::Alert);
        assert!(!line.contains('\n'), "one line");
        assert!(!line.contains('\u{1b}'), "no raw escape characters");
        let doc: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(doc["process"]["name"], evil);
        assert_eq!(doc["process"]["args"][0], evil);
        assert_eq!(doc["process"]["command_line"], format!("{evil} --flag=\\"));
        assert!(doc.get("evil").is_none());
    }

    #[test]
    fn unattributed_request_says_why() {
        let req = request_of(RequestClass::V1Get, "GET", "/");
        let sender = Sender {
            partial: Some("connection_not_seen"),
            ..Sender::default()
        };
        let doc = doc_of(&req, &sender, Mode::Alert);
        assert_eq!(doc["imds"]["attribution"], "partial");
        assert_eq!(doc["imds"]["attribution_reason"], "connection_not_seen");
        assert!(doc.get("process").is_none());
    }

    #[test]
    fn response_joins_status_outcome_and_ttl_to_the_request() {
        let req = request_of(RequestClass::V2TokenPut, "PUT", "/latest/api/token");
        let resp = Response {
            time: req.time,
            status: 401,
            ttl: 1,
            forwarded: false,
            request_index: 0,
            source: req.source,
            destination: req.destination,
            ifindex: req.ifindex,
            owner: None,
        };
        let doc = serde_json::to_value(response(
            &resp,
            &req,
            &Sender::default(),
            "eth0",
            &RunInfo::for_tests(Mode::Alert),
        ))
        .unwrap();
        assert_eq!(doc["event"]["action"], "imds-response");
        assert_eq!(doc["event"]["outcome"], "failure");
        assert_eq!(doc["http"]["response"]["status_code"], 401);
        assert_eq!(doc["http"]["request"]["method"], "PUT");
        assert_eq!(doc["imds"]["response_ttl"], 1);
        assert_eq!(doc["imds"]["path_category"], "token");
        assert_eq!(doc["imds"]["attribution"], "full");
        assert!(doc.get("observer").is_none());
        assert!(doc["event"].get("category").is_none());
    }
}
