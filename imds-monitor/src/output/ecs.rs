//! Builds the JSON documents of the run itself (started, stopped, summaries,
//! policy reloads, lost events); those about a request are in `traffic`.
//! Field names follow ECS; the tool's own fields live under `imds.`. A field
//! keeps one type forever: optional facts are left out, never written as
//! null or as another type. Documented in docs/events.md.

use std::{net::SocketAddr, time::SystemTime};

use serde_json::{Map, Value, json};

use std::collections::BTreeMap;

use super::queue::{Loss, Totals};
use crate::{
    diagnose::{WorkloadCounts, WorkloadKey},
    policy::Mode,
    stats::KernelStats,
};
use imds_monitor_common::class::RequestClass;

pub const ECS_VERSION: &str = "8.11.0";

/// Facts shared by every event of this run.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub host_name: String,
    pub mode: Mode,
    pub interfaces: Vec<String>,
    pub endpoints: Vec<SocketAddr>,
    pub attach_method: &'static str,
    /// What works less well on this kernel besides the attach method.
    pub degraded: Vec<&'static str>,
    /// cgroup v2 subtree whose processes are attributed.
    pub cgroup: String,
    /// Enforce mode: the bpffs directory, and whether a predecessor's
    /// pinned enforcement was adopted.
    pub pinned: Option<(std::path::PathBuf, bool)>,
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

#[cfg(test)]
impl RunInfo {
    /// A run in `mode` on `eth0` of host `ip-10-0-0-1`, watching IMDS's IPv4 address.
    pub fn for_tests(mode: Mode) -> Self {
        Self {
            host_name: "ip-10-0-0-1".into(),
            mode,
            interfaces: vec!["eth0".into()],
            endpoints: vec!["169.254.169.254:80".parse().unwrap()],
            attach_method: "tcx",
            degraded: Vec::new(),
            cgroup: "/".into(),
            pinned: None,
        }
    }
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

/// What works less well on this kernel than on the newest, one sentence
/// each; empty when nothing does. Everything else loads and runs from 5.10
/// on (the kernel matrix tests it).
fn degraded(info: &RunInfo) -> Vec<&'static str> {
    let mut out = Vec::new();
    if info.attach_method != "tcx" {
        out.push(
            "tc attach: clsact qdisc and netlink filter (no TCX before Linux 6.6): \
             pinned enforcement is re-attached on restart, with a gap of milliseconds",
        );
    }
    out.extend(&info.degraded);
    out
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
            "degraded": degraded(info),
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
/// `printed` is the `imds-request` lines written or queued before this
/// record: if this record is read, they were written too.
pub fn stopped(
    info: &RunInfo,
    stats: &KernelStats,
    printed: u64,
    partial: u64,
    fallback_candidates_dropped: u64,
    output: &Totals,
) -> Value {
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
                "fallback_candidates_dropped": fallback_candidates_dropped,
                "output_lost_events": output.lost,
                "output_write_errors": output.write_errors,
                "output_queue_peak_bytes": output.peak_bytes,
                "lost_events": stats.lost_events,
                "retransmitted_segments": stats.retransmits,
                "sequence_gaps": stats.sequence_gaps,
                "truncated_packets": stats.truncated_packets,
                "responses": stats.responses,
                "responses_not_followed": stats.responses_lost,
                "untracked_segments": stats.untracked_segments,
                "unreadable_packets": stats.unreadable_packets,
                "flow_table_full": stats.flow_table_full,
            },
        }),
    );
    doc.insert(
        "service".into(),
        json!({ "name": "imds-monitor", "version": env!("CARGO_PKG_VERSION") }),
    );
    doc.into()
}

/// Adds the sizes of the daemon's caches at the end of the run to a
/// `monitor-stopped` record (`imds.counters.process_cache_entries`,
/// `imds.counters.cgroup_cache_entries`), so a soak can see them bounded.
pub fn with_cache_sizes(mut doc: Value, process_cache: usize, cgroup_cache: usize) -> Value {
    if let Some(counters) = doc["imds"]["counters"].as_object_mut() {
        counters.insert("process_cache_entries".into(), process_cache.into());
        counters.insert("cgroup_cache_entries".into(), cgroup_cache.into());
    }
    doc
}

/// `event.action: "events-lost"`, `event.reason: "ring_buffer_full"`: the
/// ring buffer overflowed; never silent.
pub fn lost(info: &RunInfo, lost_since_last: u64, lost_total: u64) -> Value {
    let mut doc = base(SystemTime::now(), "events-lost", "alert", info);
    doc["event"]["reason"] = "ring_buffer_full".into();
    doc.insert(
        "message".into(),
        format!(
            "{} lost: the kernel's ring buffer was full \
             (the daemon did not read it fast enough)",
            events(lost_since_last)
        )
        .into(),
    );
    doc.insert(
        "imds".into(),
        json!({ "lost_events": lost_since_last, "lost_events_total": lost_total }),
    );
    doc.into()
}

/// `event.action: "events-lost"`, `event.reason: "output_error"` or
/// `"output_blocked"`: lines the output could not take (a failing write, or
/// a reader that did not read) while the queue in front of it was full.
/// Written first when writing works again; `event.start` and `event.end` are
/// when the first and the last of them were produced.
pub fn output_lost(info: &RunInfo, output: &str, loss: &Loss, lost_total: u64) -> Value {
    let mut doc = base(SystemTime::now(), "events-lost", "alert", info);
    doc["event"]["reason"] = loss.reason().into();
    doc["event"]["start"] = timestamp(loss.first).into();
    doc["event"]["end"] = timestamp(loss.last).into();
    let why = match &loss.error {
        Some(error) => {
            doc.insert("error".into(), json!({ "message": error }));
            format!("writing failed: {error}")
        }
        None => "it was not read fast enough".into(),
    };
    doc.insert(
        "message".into(),
        format!(
            "{} could not be written to {output} between {} and {}: {why}",
            events(loss.count),
            timestamp(loss.first),
            timestamp(loss.last)
        )
        .into(),
    );
    doc.insert(
        "imds".into(),
        json!({
            "lost_events": loss.count,
            "lost_events_total": lost_total,
            "output": output,
        }),
    );
    doc.into()
}

/// `interface-down`, `interface-up`, `interface-attached` and
/// `interface-attach-failed`: what happened to a watched interface (see
/// `links`). Only a failed attach is an alert: its traffic is not watched.
pub fn link_change(info: &RunInfo, change: &crate::links::Change) -> Value {
    use crate::links::Change;
    let (action, kind) = match change {
        Change::Down { .. } => ("interface-down", "event"),
        Change::Up { .. } => ("interface-up", "event"),
        Change::Attached { .. } => ("interface-attached", "event"),
        Change::AttachFailed { .. } => ("interface-attach-failed", "alert"),
    };
    let (link, attached) = (change.link(), change.attached());
    let mut doc = base(SystemTime::now(), action, kind, info);
    let name = &link.name;
    let index = link.index;
    let (reason, message) = match change {
        Change::Down { deleted: true, .. } => (
            Some("deleted"),
            format!(
                "{name} (index {index}) was deleted: what was attached to it went with it; \
                 an interface named {name} is attached to as soon as it appears"
            ),
        ),
        Change::Down { .. } => (
            Some("down"),
            format!(
                "{name} (index {index}) is down (administratively {}, operational state {}): \
                 no traffic passes it; the programs stay attached",
                if link.admin_up { "up" } else { "down" },
                link.oper_state
            ),
        ),
        Change::Up { .. } => (None, format!("{name} (index {index}) is up again")),
        Change::Attached {
            previous_index,
            reason,
            ..
        } => (
            Some(reason.as_str()),
            match previous_index {
                Some(previous) => format!(
                    "{name} was re-created (index {index}, was {previous}): attached to it again"
                ),
                None => format!(
                    "{name} (index {index}) now carries traffic to an endpoint: attached to it"
                ),
            },
        ),
        Change::AttachFailed { reason, error, .. } => {
            doc.insert("error".into(), json!({ "message": error }));
            (
                Some(reason.as_str()),
                format!(
                    "attaching to {name} (index {index}) failed, its IMDS traffic is not \
                     watched: {error}; tried again at its next change and every 30 s"
                ),
            )
        }
    };
    if let Some(reason) = reason {
        doc["event"]["reason"] = reason.into();
    }
    doc.insert("message".into(), message.into());
    let mut details = Map::new();
    details.insert("index".into(), index.into());
    details.insert("admin_up".into(), link.admin_up.into());
    details.insert("oper_state".into(), link.oper_state.clone().into());
    details.insert("attached".into(), attached.into());
    if let Change::Attached {
        previous_index: Some(previous),
        ..
    } = change
    {
        details.insert("previous_index".into(), (*previous).into());
    }
    let mut imds = Map::new();
    imds.insert("interface".into(), name.clone().into());
    imds.insert("link".into(), details.into());
    if matches!(change, Change::Attached { .. }) {
        imds.insert("attach_method".into(), info.attach_method.into());
    }
    doc.insert("imds".into(), imds.into());
    doc.insert(
        "observer".into(),
        json!({ "egress": { "interface": { "name": name, "id": index.to_string() } } }),
    );
    doc.into()
}

/// `1 event`, `2 events`.
pub fn events(n: u64) -> String {
    if n == 1 {
        "1 event".into()
    } else {
        format!("{n} events")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_reports_counters_per_class() {
        let mut stats = KernelStats::default();
        stats.requests[RequestClass::V1Get as usize] = 3;
        stats.lost_events = 1;
        stats.untracked_segments = 5;
        let output = Totals {
            lost: 4,
            write_errors: 2,
            peak_bytes: 1000,
            ..Totals::default()
        };
        let doc = stopped(&RunInfo::for_tests(Mode::Monitor), &stats, 2, 1, 7, &output);
        assert_eq!(doc["event"]["action"], "monitor-stopped");
        assert_eq!(doc["imds"]["counters"]["requests"]["v1_get"], 3);
        assert_eq!(doc["imds"]["counters"]["requests"]["incomplete"], 0);
        assert_eq!(doc["imds"]["counters"]["lost_events"], 1);
        assert_eq!(doc["imds"]["counters"]["attribution_partial"], 1);
        assert_eq!(doc["imds"]["counters"]["output_lost_events"], 4);
        assert_eq!(doc["imds"]["counters"]["output_write_errors"], 2);
        assert_eq!(doc["imds"]["counters"]["output_queue_peak_bytes"], 1000);
        assert_eq!(doc["imds"]["counters"]["fallback_candidates_dropped"], 7);
        assert_eq!(doc["imds"]["counters"]["untracked_segments"], 5);
        assert_eq!(doc["imds"]["counters"]["unreadable_packets"], 0);
        let doc = with_cache_sizes(doc, 120, 35);
        assert_eq!(doc["imds"]["counters"]["process_cache_entries"], 120);
        assert_eq!(doc["imds"]["counters"]["cgroup_cache_entries"], 35);
        assert_eq!(doc["imds"]["counters"]["lost_events"], 1);
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }

    #[test]
    fn output_loss_has_the_count_the_span_and_the_reason() {
        let info = RunInfo::for_tests(Mode::Enforce);
        let loss = Loss {
            count: 7,
            first: at(1_800_000_000),
            last: at(1_800_000_060),
            error: Some("no space left on device".into()),
        };
        let doc = output_lost(&info, "/var/log/imds-monitor/events.json", &loss, 9);
        assert_eq!(doc["event"]["action"], "events-lost");
        assert_eq!(doc["event"]["kind"], "alert");
        assert_eq!(doc["event"]["reason"], "output_error");
        assert_eq!(doc["event"]["start"], "2027-01-15T08:00:00.000000Z");
        assert_eq!(doc["event"]["end"], "2027-01-15T08:01:00.000000Z");
        assert_eq!(doc["error"]["message"], "no space left on device");
        assert_eq!(doc["imds"]["lost_events"], 7);
        assert_eq!(doc["imds"]["lost_events_total"], 9);
        assert_eq!(doc["imds"]["output"], "/var/log/imds-monitor/events.json");
        let message = doc["message"].as_str().unwrap();
        assert!(
            message.starts_with("7 events could not be written to /var/log/"),
            "{message}"
        );

        let blocked = Loss {
            error: None,
            ..loss
        };
        let doc = output_lost(&info, "stdout", &blocked, 7);
        assert_eq!(doc["event"]["reason"], "output_blocked");
        assert!(doc.get("error").is_none(), "left out, never null");
    }

    #[test]
    fn ring_buffer_loss_says_so() {
        let doc = lost(&RunInfo::for_tests(Mode::Monitor), 3, 5);
        assert_eq!(doc["event"]["reason"], "ring_buffer_full");
        assert_eq!(doc["imds"]["lost_events"], 3);
        assert_eq!(doc["imds"]["lost_events_total"], 5);
    }

    #[test]
    fn link_changes_name_the_interface_and_say_what_happened() {
        use crate::links::{AttachReason, Change, Link};
        let info = RunInfo::for_tests(Mode::Enforce);
        let link = |index, up: bool| Link {
            index,
            name: "eth0".into(),
            admin_up: up,
            running: up,
            oper_state: if up { "up" } else { "down" }.into(),
        };
        let doc = link_change(
            &info,
            &Change::Down {
                link: link(2, false),
                deleted: true,
                attached: false,
            },
        );
        assert_eq!(doc["event"]["action"], "interface-down");
        assert_eq!(doc["event"]["kind"], "event");
        assert_eq!(doc["event"]["reason"], "deleted");
        assert_eq!(doc["imds"]["interface"], "eth0");
        assert_eq!(doc["imds"]["link"]["index"], 2);
        assert_eq!(doc["imds"]["link"]["attached"], false);
        assert_eq!(doc["observer"]["egress"]["interface"]["id"], "2");
        let doc = link_change(
            &info,
            &Change::Down {
                link: link(2, false),
                deleted: false,
                attached: true,
            },
        );
        assert_eq!(doc["event"]["reason"], "down");
        assert_eq!(doc["imds"]["link"]["attached"], true);
        assert_eq!(doc["imds"]["link"]["oper_state"], "down");
        let doc = link_change(
            &info,
            &Change::Attached {
                link: link(7, false),
                previous_index: Some(2),
                reason: AttachReason::Recreated,
            },
        );
        assert_eq!(doc["event"]["action"], "interface-attached");
        assert_eq!(doc["event"]["reason"], "recreated");
        assert_eq!(doc["imds"]["link"]["previous_index"], 2);
        assert_eq!(doc["imds"]["attach_method"], "tcx");
        let doc = link_change(
            &info,
            &Change::Up {
                link: link(7, true),
                attached: true,
            },
        );
        assert_eq!(doc["event"]["action"], "interface-up");
        assert!(doc["event"].get("reason").is_none(), "left out, never null");
        let doc = link_change(
            &info,
            &Change::AttachFailed {
                link: link(7, false),
                reason: AttachReason::Route,
                error: "no such device".into(),
            },
        );
        assert_eq!(doc["event"]["kind"], "alert");
        assert_eq!(doc["error"]["message"], "no such device");
        assert!(doc["imds"]["link"].get("previous_index").is_none());
    }

    #[test]
    fn started_says_what_is_degraded_always_as_an_array() {
        let mut info = RunInfo::for_tests(Mode::Alert);
        assert_eq!(started(&info)["imds"]["degraded"], json!([]));
        info.attach_method = "netlink";
        let degraded = &started(&info)["imds"]["degraded"];
        assert_eq!(degraded.as_array().map(Vec::len), Some(1));
        assert!(degraded[0].as_str().unwrap().contains("6.6"), "{degraded}");
    }
}
