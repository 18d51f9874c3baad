//! Exactly-once and attribution, request by request: the mock IMDS's log
//! (what was served) against the daemon's `imds-request` events (what was
//! reported), matched by the tag each workload puts in its GETs (see
//! [`super::worker`]); a token PUT is matched through the tagged GET that
//! follows it on its connection.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result};
use imds_sandbox::mock_imds::ImdsRequest;
use serde_json::Value;

use super::worker::parse_tag;

/// What a workload's events must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// `imds.cgroup.path`: relative to the cgroup2 mount, as the daemon
    /// writes it (`Cgroup::rel`).
    pub cgroup: String,
    /// `container.id`, for container workloads; absent on host workloads.
    pub container: Option<String>,
}

/// The outcome of the match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Requests in the mock's log, and `imds-request` events.
    pub logged: u64,
    pub events: u64,
    /// Logged requests with exactly one event.
    pub exactly_once: u64,
    /// Logged requests without an event.
    pub missing: u64,
    /// Events beyond one per logged request (a request reported twice, or
    /// an event for a request the mock never served).
    pub extra: u64,
    /// Logged requests that carry no tag and follow no tagged request
    /// (none expected: every workload tags), and such events.
    pub untagged_logged: u64,
    pub untagged_events: u64,
    /// Events whose `process.pid` is not the pid that the request's tag
    /// names (the sender's own pid).
    pub wrong_pid: u64,
    /// Events whose pid is not among the pids of any sender at all.
    pub foreign_pid: u64,
    /// Events whose cgroup path or container id is not the workload's.
    pub wrong_cgroup: u64,
    pub wrong_container: u64,
    /// Events with no cgroup path at all (`imds.attribution_reason`
    /// `cgroup_removed`: the cgroup was gone before the daemon named it),
    /// which therefore name no container either: unknown, not wrong.
    pub unknown_cgroup: u64,
    /// Events with `imds.attribution: partial`.
    pub partial: u64,
    /// A few of the mismatches, for the report.
    pub examples: Vec<String>,
}

impl Verification {
    pub fn exactly_once_ok(&self) -> bool {
        self.logged > 0
            && self.missing == 0
            && self.extra == 0
            && self.untagged_logged == 0
            && self.untagged_events == 0
            && self.exactly_once == self.logged
    }

    pub fn attribution_ok(&self) -> bool {
        self.wrong_pid == 0
            && self.foreign_pid == 0
            && self.wrong_cgroup == 0
            && self.wrong_container == 0
    }

    fn example(&mut self, what: String) {
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }
}

/// (token PUT?, workload, pid, sequence).
type Key = (bool, u32, u32, u64);

/// What an event said about its sender.
struct Sender {
    pid: u32,
    cgroup: String,
    container: Option<String>,
}

const REQUEST_MARK: &[u8] = br#""action":"imds-request""#;

/// Matches `log` against the events file. `expect` maps a workload to
/// what its events must name; `senders` are the pids of every process
/// that sent a request.
pub fn verify(
    log: &[ImdsRequest],
    events: &Path,
    expect: &HashMap<u32, Expect>,
    senders: &HashSet<u32>,
) -> Result<Verification> {
    let mut v = Verification {
        logged: log.len() as u64,
        ..Verification::default()
    };
    // (logged, reported) per request.
    let mut counts: HashMap<Key, (u32, u32)> = HashMap::with_capacity(log.len());
    let mut puts: HashMap<u64, u32> = HashMap::new();
    for r in log {
        if r.method == "PUT" {
            *puts.entry(r.connection).or_default() += 1;
            continue;
        }
        let Some((id, pid, seq)) = parse_tag(&r.path) else {
            v.untagged_logged += 1;
            continue;
        };
        counts.entry((false, id, pid, seq)).or_default().0 += 1;
        if let Some(n) = puts.remove(&r.connection) {
            counts.entry((true, id, pid, seq)).or_default().0 += n;
        }
    }
    v.untagged_logged += puts.values().map(|n| u64::from(*n)).sum::<u64>();

    let file = File::open(events).with_context(|| format!("cannot open {}", events.display()))?;
    let mut pending_puts: HashMap<(String, u64), Vec<Sender>> = HashMap::new();
    let mut line = Vec::with_capacity(4096);
    let mut reader = BufReader::with_capacity(1 << 20, file);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if !line.windows(REQUEST_MARK.len()).any(|w| w == REQUEST_MARK) {
            continue;
        }
        let e: Value = serde_json::from_slice(&line).context("an event is not JSON")?;
        v.events += 1;
        let sender = Sender {
            pid: e["process"]["pid"].as_u64().unwrap_or(0) as u32,
            cgroup: e["imds"]["cgroup"]["path"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            container: e["container"]["id"].as_str().map(str::to_owned),
        };
        if e["imds"]["attribution"] == "partial" {
            v.partial += 1;
        }
        if !senders.contains(&sender.pid) {
            v.foreign_pid += 1;
            v.example(format!("pid {} sent nothing: {}", sender.pid, brief(&e)));
        }
        let conn = (
            e["source"]["ip"].as_str().unwrap_or_default().to_owned(),
            e["source"]["port"].as_u64().unwrap_or(0),
        );
        if e["http"]["request"]["method"] == "PUT" {
            pending_puts.entry(conn).or_default().push(sender);
            continue;
        }
        let path = e["url"]["path"].as_str().unwrap_or_default();
        let Some((id, pid, seq)) = parse_tag(path) else {
            v.untagged_events += 1;
            v.example(format!("untagged event: {}", brief(&e)));
            continue;
        };
        counts.entry((false, id, pid, seq)).or_default().1 += 1;
        check(&mut v, &sender, id, pid, expect, &e);
        for put in pending_puts.remove(&conn).unwrap_or_default() {
            counts.entry((true, id, pid, seq)).or_default().1 += 1;
            check(&mut v, &put, id, pid, expect, &e);
        }
    }
    v.untagged_events += pending_puts.values().map(|p| p.len() as u64).sum::<u64>();

    for (key, (logged, reported)) in &counts {
        let (logged, reported) = (u64::from(*logged), u64::from(*reported));
        if logged == 1 && reported == 1 {
            v.exactly_once += 1;
            continue;
        }
        v.missing += logged.saturating_sub(reported);
        v.extra += reported.saturating_sub(logged);
        // A request logged twice (never expected: tags are unique) counts
        // as neither matched nor missing when reported twice.
        v.example(format!(
            "request {key:?}: served {logged}×, reported {reported}×"
        ));
    }
    Ok(v)
}

/// Checks one event's sender against the tag's workload and pid.
fn check(
    v: &mut Verification,
    sender: &Sender,
    id: u32,
    pid: u32,
    expect: &HashMap<u32, Expect>,
    e: &Value,
) {
    if sender.pid != pid {
        v.wrong_pid += 1;
        v.example(format!(
            "sent by pid {pid}, reported as {}: {}",
            sender.pid,
            brief(e)
        ));
    }
    let Some(want) = expect.get(&id) else {
        v.wrong_cgroup += 1;
        v.example(format!("unknown workload {id}"));
        return;
    };
    if sender.cgroup.is_empty() {
        v.unknown_cgroup += 1;
        v.example(format!(
            "workload {id}: no cgroup path ({}), expected {:?}",
            e["imds"]["attribution_reason"].as_str().unwrap_or("?"),
            want.cgroup
        ));
        return;
    }
    if sender.cgroup != want.cgroup {
        v.wrong_cgroup += 1;
        v.example(format!(
            "workload {id}: cgroup {:?}, expected {:?}",
            sender.cgroup, want.cgroup
        ));
    }
    if sender.container != want.container {
        v.wrong_container += 1;
        v.example(format!(
            "workload {id}: container {:?}, expected {:?}",
            sender.container, want.container
        ));
    }
}

fn brief(e: &Value) -> String {
    format!(
        "{} {} pid {} from {}:{}",
        e["http"]["request"]["method"].as_str().unwrap_or("?"),
        e["url"]["path"].as_str().unwrap_or("?"),
        e["process"]["pid"],
        e["source"]["ip"].as_str().unwrap_or("?"),
        e["source"]["port"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::SocketAddr;
    use std::time::SystemTime;

    use imds_sandbox::mock_imds::IpVersion;

    fn logged(connection: u64, method: &str, path: &str) -> ImdsRequest {
        ImdsRequest {
            time: SystemTime::now(),
            connection,
            peer: SocketAddr::from(([198, 18, 0, 10], 40_000)),
            local: SocketAddr::from(([169, 254, 169, 254], 80)),
            ip_version: IpVersion::V4,
            method: method.to_owned(),
            path: path.to_owned(),
            header_names: Vec::new(),
            token_present: false,
            status: 200,
            hop_limit: None,
        }
    }

    fn event(method: &str, path: &str, pid: u32, port: u16, cgroup: &str) -> String {
        serde_json::json!({
            "event": {"action": "imds-request"},
            "http": {"request": {"method": method}},
            "url": {"path": path},
            "process": {"pid": pid},
            "source": {"ip": "198.18.0.10", "port": port},
            "imds": {"cgroup": {"path": cgroup}, "attribution": "full"},
        })
        .to_string()
    }

    #[test]
    fn matches_requests_and_puts_through_their_gets() {
        let get = |seq: u64| format!("/latest/meta-data/instance-id?bench=1.100.{seq}");
        let log = vec![
            logged(1, "GET", &get(0)),
            logged(2, "PUT", "/latest/api/token"),
            logged(2, "GET", &get(1)),
            logged(3, "GET", &get(2)),
        ];
        let lines = [
            r#"{"event":{"action":"monitor-started"}}"#.to_owned(),
            event("GET", &get(0), 100, 1, "/a"),
            event("PUT", "/latest/api/token", 100, 2, "/a"),
            event("GET", &get(1), 100, 2, "/a"),
            // seq 2 reported twice, the second time as another pid.
            event("GET", &get(2), 100, 3, "/a"),
            event("GET", &get(2), 999, 3, "/b"),
        ];
        let dir = std::env::temp_dir().join(format!("imds-bench-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.json");
        let mut f = File::create(&path).unwrap();
        for l in &lines {
            writeln!(f, "{l}").unwrap();
        }
        let expect = HashMap::from([(
            1,
            Expect {
                cgroup: "/a".into(),
                container: None,
            },
        )]);
        let v = verify(&log, &path, &expect, &HashSet::from([100])).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((v.logged, v.events), (4, 5));
        // GET 0, the PUT and GET 1: once each; GET 2 twice.
        assert_eq!((v.exactly_once, v.missing, v.extra), (3, 0, 1));
        assert_eq!((v.wrong_pid, v.foreign_pid, v.wrong_cgroup), (1, 1, 1));
        assert!(!v.exactly_once_ok());
        assert!(!v.attribution_ok());
    }
}
