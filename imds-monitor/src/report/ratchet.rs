//! The ratchet: `imds-monitor policy suggest` writes a policy that drops
//! IMDSv1 for everyone but the workloads seen using it (one exception each,
//! by its most stable identity), and `imds-monitor report --policy` shows
//! its burn-down: the exceptions still used, and those unused long enough
//! to go.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde_json::Value;

use super::input::{self, Input};
use crate::{
    policy::{
        decide::WorkloadFacts,
        model::{Matcher, Policy},
    },
    runtime::{ContainerMeta, Ecs, Image, Kubernetes},
};

/// One IMDSv1 request as the events tell it.
struct V1Request {
    time: Option<SystemTime>,
    path: String,
    rule: Option<String>,
    identity: Option<Identity>,
    container_id: Option<String>,
    facts: OwnedFacts,
}

/// What an exception is written with, most stable first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Identity {
    K8s { namespace: String, owner: String },
    EcsTaskFamily(String),
    Image(String),
    Unit(String),
    Executable(String),
    ContainerId(String),
}

impl Identity {
    /// 0 is the most stable.
    fn rank(&self) -> u8 {
        match self {
            Self::K8s { .. } => 0,
            Self::EcsTaskFamily(_) => 1,
            Self::Image(_) => 2,
            Self::Unit(_) => 3,
            Self::Executable(_) => 4,
            Self::ContainerId(_) => 5,
        }
    }

    fn name(&self) -> String {
        let raw = match self {
            Self::K8s { namespace, owner } => {
                let owner = owner.rsplit('/').next().unwrap_or(owner);
                format!("k8s-{namespace}-{owner}")
            }
            Self::EcsTaskFamily(f) => format!("ecs-{f}"),
            Self::Image(i) => format!("image-{}", i.rsplit('/').next().unwrap_or(i)),
            Self::Unit(u) => u.trim_end_matches(".service").to_owned(),
            Self::Executable(e) => format!("exe-{}", e.rsplit('/').next().unwrap_or(e)),
            Self::ContainerId(id) => format!("container-{}", &id[..id.len().min(12)]),
        };
        let name: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .take(56)
            .collect();
        if name.is_empty() {
            "workload".into()
        } else {
            name
        }
    }

    fn toml(&self) -> String {
        match self {
            Self::K8s { namespace, owner } => {
                format!("k8s_namespace = {namespace:?}\nk8s_owner = {owner:?}\n")
            }
            Self::EcsTaskFamily(f) => format!("ecs_task_family = {f:?}\n"),
            Self::Image(i) => format!("image = {i:?}\n"),
            Self::Unit(u) => format!("systemd_unit = {u:?}\n"),
            Self::Executable(e) => format!("executable = {e:?}\n"),
            Self::ContainerId(id) => format!(
                "# the container's runtime was not reachable: its id changes at redeploy\n\
                 container_id = {id:?}\n"
            ),
        }
    }
}

#[derive(Default)]
struct OwnedFacts {
    cgroup_path: Option<String>,
    container_id: Option<String>,
    systemd_unit: Option<String>,
    executable: Option<String>,
    container: Option<ContainerMeta>,
}

impl OwnedFacts {
    fn facts(&self) -> WorkloadFacts<'_> {
        WorkloadFacts {
            cgroup_path: self.cgroup_path.as_deref(),
            container_id: self.container_id.as_deref(),
            systemd_unit: self.systemd_unit.as_deref(),
            executable: self.executable.as_deref(),
            container: self.container.as_ref(),
        }
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn parse_request(event: &Value) -> Option<V1Request> {
    if event["event"]["action"] != "imds-request" || event["imds"]["class"] != "v1_get" {
        return None;
    }
    let imds = &event["imds"];
    let image = text(&event["container"]["image"]["name"]).map(|name| Image {
        name,
        tag: text(&event["container"]["image"]["tag"]),
        digests: event["container"]["image"]["hash"]["all"]
            .as_array()
            .map(|a| a.iter().filter_map(text).collect())
            .unwrap_or_default(),
    });
    let kubernetes = match (
        text(&event["orchestrator"]["namespace"]),
        text(&imds["kubernetes"]["owner"]["kind"]),
        text(&imds["kubernetes"]["owner"]["name"]),
    ) {
        (Some(namespace), Some(owner_kind), Some(owner_name)) => Some(Kubernetes {
            namespace,
            pod_name: text(&event["orchestrator"]["resource"]["name"]).unwrap_or_default(),
            container_name: text(&imds["kubernetes"]["container_name"]),
            owner_kind,
            owner_name,
        }),
        _ => None,
    };
    let ecs = text(&imds["ecs"]["task_family"]).map(|task_family| Ecs {
        task_family,
        ..Ecs::default()
    });
    let container_id = text(&event["container"]["id"]);
    let systemd_unit = text(&imds["systemd_unit"]);
    let executable = text(&event["process"]["executable"]);
    let identity = if let Some(k) = &kubernetes {
        Some(Identity::K8s {
            namespace: k.namespace.clone(),
            owner: format!("{}/{}", k.owner_kind, k.owner_name),
        })
    } else if let Some(e) = &ecs {
        Some(Identity::EcsTaskFamily(e.task_family.clone()))
    } else if let Some(i) = &image {
        Some(Identity::Image(i.name.clone()))
    } else if container_id.is_some() {
        // Resolved (or not) from another event of the same container.
        container_id.clone().map(Identity::ContainerId)
    } else if let Some(unit) = &systemd_unit {
        Some(Identity::Unit(unit.clone()))
    } else {
        executable.clone().map(Identity::Executable)
    };
    let has_meta = image.is_some() || kubernetes.is_some() || ecs.is_some();
    Some(V1Request {
        time: event["@timestamp"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok()),
        path: text(&event["url"]["path"]).unwrap_or_default(),
        rule: text(&imds["policy"]["rule"]),
        identity,
        facts: OwnedFacts {
            cgroup_path: text(&imds["cgroup"]["path"]),
            container_id: container_id.clone(),
            systemd_unit,
            executable,
            container: has_meta.then_some(ContainerMeta {
                name: text(&event["container"]["name"]),
                image,
                kubernetes,
                ecs,
                stable_key: None,
            }),
        },
        container_id,
    })
}

/// Every IMDSv1 request in the files, and the newest event time.
fn read(files: &[PathBuf]) -> Result<(Vec<V1Request>, Option<SystemTime>, usize), String> {
    let mut requests = Vec::new();
    let mut newest: Option<SystemTime> = None;
    let mut events = 0;
    for file in files {
        let input = Input::from_arg(file.clone());
        let raw = input::open(&input).map_err(|e| e.to_string())?;
        let reader = input::decompressed(raw).map_err(|e| format!("{input}: {e}"))?;
        input::for_each_line(reader, |_, line| {
            let Ok(event) = serde_json::from_slice::<Value>(line) else {
                return;
            };
            events += 1;
            if let Some(t) = event["@timestamp"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
            {
                newest = Some(newest.map_or(t, |n| n.max(t)));
            }
            requests.extend(parse_request(&event));
        })
        .map_err(|e| format!("{input}: {e}"))?;
    }
    // A container's requests before its runtime answered carry only its
    // id: give them the identity its other requests have.
    let mut best: HashMap<String, Identity> = HashMap::new();
    for r in &requests {
        if let (Some(id), Some(identity)) = (&r.container_id, &r.identity)
            && !matches!(identity, Identity::ContainerId(_))
        {
            best.entry(id.clone())
                .and_modify(|b| {
                    if identity.rank() < b.rank() {
                        *b = identity.clone();
                    }
                })
                .or_insert_with(|| identity.clone());
        }
    }
    for r in &mut requests {
        if let Some(id) = &r.container_id
            && let Some(identity) = best.get(id)
        {
            r.identity = Some(identity.clone());
        }
    }
    Ok((requests, newest, events))
}

fn time(t: Option<SystemTime>) -> String {
    t.map_or_else(
        || "?".into(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}

fn top_paths(requests: &[&V1Request], n: usize) -> String {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for r in requests {
        *counts.entry(r.path.as_str()).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts
        .iter()
        .take(n)
        .map(|(p, c)| format!("{p} ({c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `imds-monitor policy suggest FILES`: the policy text.
pub fn suggest(files: &[PathBuf]) -> Result<String, String> {
    let (requests, newest, events) = read(files)?;
    if events == 0 {
        return Err("no events read: nothing to suggest from".into());
    }
    let mut groups: BTreeMap<(u8, Identity), Vec<&V1Request>> = BTreeMap::new();
    let mut unattributed = 0;
    for r in &requests {
        match &r.identity {
            Some(id) => groups.entry((id.rank(), id.clone())).or_default().push(r),
            None => unattributed += 1,
        }
    }
    let mut out = String::new();
    let sources: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let _ = writeln!(
        out,
        "# Written by `imds-monitor policy suggest` from {} ({events} events, up to {}).\n\
         # IMDSv1 is dropped for every workload but the ones below, which were seen\n\
         # using it: deploy in enforce mode and no new IMDSv1 user can appear while\n\
         # these migrate. `imds-monitor report --policy FILE` shows which can go.",
        sources.join(", "),
        time(newest)
    );
    if unattributed > 0 {
        let _ = writeln!(
            out,
            "# {unattributed} IMDSv1 requests had no sender to name (connections opened \
             before the monitor): they get no exception."
        );
    }
    out.push_str("\n[actions]\nv1_get = \"drop\"\n");
    let mut names: HashMap<String, usize> = HashMap::new();
    for ((_, identity), reqs) in &groups {
        let mut name = identity.name();
        let n = names.entry(name.clone()).or_default();
        *n += 1;
        if *n > 1 {
            name = format!("{name}-{n}");
        }
        let first = reqs.iter().filter_map(|r| r.time).min();
        let last = reqs.iter().filter_map(|r| r.time).max();
        let _ = write!(
            out,
            "\n# {} IMDSv1 requests, first {}, last {}\n# top paths: {}\n[[exception]]\nname = {name:?}\n{}",
            reqs.len(),
            time(first),
            time(last),
            top_paths(reqs, 3),
            identity.toml()
        );
    }
    Ok(out)
}

/// `imds-monitor report --policy FILE`: each exception, used or not.
pub fn burn_down(
    policy: &Policy,
    policy_path: &Path,
    files: &[PathBuf],
    unused_for: Duration,
) -> Result<String, String> {
    let (requests, newest, _) = read(files)?;
    let oldest = requests.iter().filter_map(|r| r.time).min();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nBurn-down of {} ({} exceptions; unused for {} means it can go):",
        policy_path.display(),
        policy.exceptions.len(),
        humantime::format_duration(unused_for)
    );
    let covered = match (oldest, newest) {
        (Some(o), Some(n)) => n.duration_since(o).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    let (mut used, mut gone) = (0, 0);
    for e in &policy.exceptions {
        let rule = format!("exception:{}", e.name);
        let hits: Vec<&V1Request> = requests
            .iter()
            .filter(|r| {
                r.rule.as_deref() == Some(rule.as_str())
                    || (r.rule.is_none() && e.matchers.iter().all(|m| m.matches(&r.facts.facts())))
            })
            .collect();
        let last = hits.iter().filter_map(|r| r.time).max();
        let idle = match (newest, last) {
            (Some(n), Some(l)) => n.duration_since(l).unwrap_or_default(),
            _ => covered,
        };
        let matchers: Vec<String> = e
            .matchers
            .iter()
            .map(|m: &Matcher| format!("{} = {:?}", m.key(), m.value()))
            .collect();
        let status = if hits.is_empty() && covered >= unused_for {
            gone += 1;
            format!(
                "CAN GO: no IMDSv1 request in the {} read",
                humantime::format_duration(round(covered))
            )
        } else if hits.is_empty() {
            format!(
                "unused so far, but the events cover only {}",
                humantime::format_duration(round(covered))
            )
        } else if idle >= unused_for {
            gone += 1;
            format!(
                "CAN GO: last IMDSv1 request {} before the newest event",
                humantime::format_duration(round(idle))
            )
        } else {
            used += 1;
            format!(
                "still used: {} IMDSv1 requests, last {}; top paths: {}",
                hits.len(),
                time(last),
                top_paths(&hits, 3)
            )
        };
        let _ = writeln!(
            out,
            "  {:<28} {}\n      {status}",
            e.name,
            matchers.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "{used} still used, {gone} can go, {} waiting",
        policy.exceptions.len() - used - gone
    );
    Ok(out)
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time: &str, extra: &str) -> String {
        format!(
            r#"{{"@timestamp":"{time}","event":{{"action":"imds-request"}},"url":{{"path":"/latest/meta-data/instance-id"}},{extra}}}"#
        )
    }

    #[test]
    fn suggest_then_burn_down() {
        let dir = std::env::temp_dir().join(format!("imds-ratchet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = "4f9c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";
        let lines = [
            // Before the runtime answered: the container's id only.
            event(
                "2026-11-20T10:00:00Z",
                &format!(
                    r#""container":{{"id":"{id}"}},"imds":{{"class":"v1_get","enrichment":"pending"}}"#
                ),
            ),
            event(
                "2026-11-20T10:00:05Z",
                &format!(
                    r#""container":{{"id":"{id}","image":{{"name":"payments-api","tag":"1.4"}}}},"imds":{{"class":"v1_get","enrichment":"done"}}"#
                ),
            ),
            event(
                "2026-11-21T10:00:00Z",
                r#""imds":{"class":"v1_get","systemd_unit":"cron.service"},"process":{"executable":"/usr/bin/curl"}"#,
            ),
            event(
                "2026-11-28T10:00:00Z",
                r#""imds":{"class":"v2_get","systemd_unit":"web.service"}"#,
            ),
        ];
        let file = dir.join("events.json");
        std::fs::write(&file, lines.join("\n")).unwrap();
        let text = suggest(std::slice::from_ref(&file)).unwrap();
        let policy = crate::policy::parse::parse(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(policy.exceptions.len(), 2, "{text}");
        assert!(text.contains("image = \"payments-api\""), "{text}");
        assert!(
            text.contains("# 2 IMDSv1 requests, first 2026-11-20T10:00:00Z"),
            "{text}"
        );
        assert!(text.contains("systemd_unit = \"cron.service\""), "{text}");
        let report = burn_down(
            &policy,
            Path::new("p.toml"),
            &[file],
            Duration::from_secs(5 * 86400),
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // payments-api: 8 days idle; cron: 7 days idle; both can go at 5 days.
        assert!(report.contains("0 still used, 2 can go"), "{report}");
    }
}
