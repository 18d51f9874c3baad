//! Diagnosis: joins each response to its request and names the failures a
//! migration to IMDSv2 meets, per workload:
//! - `imds-v1-rejected`: an IMDSv1 request answered 401 (v2 is required; broken now);
//! - `imds-hop-limit`: a token response whose TTL cannot survive the hop to a container;
//! - `imds-v1-fallback`: one client's token PUT got no usable answer, then the
//!   same client used IMDSv1 (decided once the PUT's fate is known);
//! - `imds-token-proxy`: a token PUT with X-Forwarded-For (a proxy or SSRF path);
//! - `imds-credentials-v1`: the role's credentials fetched over IMDSv1.
//!
//! It also keeps the per-workload counts of `imds-summary`.
//!
//! A fallback is one client's story, never a workload's: a pod may run a
//! current SDK beside a legacy script, and the script's IMDSv1 requests are
//! no fallback of the SDK. The client is the process (its thread group), or,
//! for one-shot tools such as curl, the script that ran them (see
//! [`client_pid`]). A candidate (an IMDSv1 request after the client's token
//! PUT that is not answered yet) is held until the PUT's fate is known: an
//! answer that reaches the client clears it; an answer whose TTL cannot
//! reach the client, or none within [`FATE_WAIT`], makes it a fallback.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    rc::Rc,
    time::{Duration, Instant, SystemTime},
};

use imds_monitor_common::class::{InvalidReason, RequestClass};

use crate::{
    enrich::Sender,
    event::{PathCategory, Request, Response},
};

/// How long a request waits for its response before it is forgotten.
const RESPONSE_WAIT: Duration = Duration::from_secs(30);
/// Requests kept waiting at most (a bound on memory under load).
const MAX_PENDING: usize = 65_536;
/// A v1 request this soon after the client's last unanswered token PUT is
/// a fallback. SDKs wait 250 ms (Go v2) to 5 s (Go v1) before falling back.
const FALLBACK_WINDOW: Duration = Duration::from_secs(6);
/// How long a fallback candidate waits for its PUT's fate (an answer, which
/// clears it) after the IMDSv1 request; then the PUT counts as unanswered.
/// IMDS answers in milliseconds: an answer this late never reached an SDK.
pub const FATE_WAIT: Duration = Duration::from_secs(2);
/// Fallback candidates held at most; the oldest is dropped (and counted).
const MAX_HELD: usize = 4096;
/// Clients whose recent token PUTs are remembered at most.
const MAX_ATTEMPTS: usize = 65_536;
/// Token PUTs remembered per client attempt (SDKs retry up to 3 times).
const MAX_PUTS_PER_ATTEMPT: usize = 8;
/// The TTL a token response needs on arrival at the host to reach a
/// container one forwarding hop further.
const TTL_NEEDED_FORWARDED: u8 = 2;
/// Programs that make one request per run: a script runs them once for the
/// token and again for each read, so the script (their parent) is the client.
const ONE_SHOT_TOOLS: [&str; 2] = ["curl", "wget"];
/// Parents that start programs for many unrelated owners: never a client.
const NOT_A_SCRIPT: [&str; 8] = [
    "systemd",
    "init",
    "tini",
    "dumb-init",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "conmon",
    "runc",
];

const HOP_LIMIT_FIX: &str = "aws ec2 modify-instance-metadata-options --instance-id <instance-id> --http-put-response-hop-limit 2 (or HttpPutResponseHopLimit=2 in the launch template or AMI)";

/// One diagnosis, rendered by `output::traffic::finding`.
#[derive(Clone, Debug)]
pub struct Finding {
    /// `event.action`.
    pub action: &'static str,
    pub time: SystemTime,
    pub message: String,
    pub fix: String,
    pub request: Request,
    pub sender: Rc<Sender>,
    pub status: Option<u16>,
    /// `imds-hop-limit`: (observed TTL, needed).
    pub hop_limit: Option<(u8, u8)>,
    /// `imds-v1-fallback`: ms from the client's (first) unanswered token PUT
    /// to its IMDSv1 request.
    pub fallback_delay_ms: Option<u64>,
}

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    request: Request,
    sender: Rc<Sender>,
    since: Instant,
}

/// A request's place: its connection and its position on it.
type ConnKey = (SocketAddr, SocketAddr, u16);

/// What became of one token PUT, as far as the client is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PutFate {
    /// No answer seen yet.
    Waiting,
    /// Answered (any status) with a TTL that reaches the client.
    Delivered,
    /// Answered, but with a TTL below the hops to the client.
    HopLimited { ttl: u8, needed: u8 },
}

/// A client's token PUTs since its last token or IMDSv1 request (an SDK
/// may try several times before it falls back).
#[derive(Clone, Debug)]
struct Attempt {
    first: SystemTime,
    last: SystemTime,
    puts: Vec<(ConnKey, PutFate)>,
}

/// What an attempt amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A token reached the client: whatever it does next is no fallback.
    Delivered,
    /// Some PUT is still unanswered.
    Waiting,
    /// Every PUT was answered, none reached the client.
    HopLimited { ttl: u8, needed: u8 },
}

impl Attempt {
    fn outcome(&self) -> Outcome {
        let mut outcome = None;
        for (_, fate) in &self.puts {
            match *fate {
                PutFate::Delivered => return Outcome::Delivered,
                PutFate::Waiting => outcome = Some(Outcome::Waiting),
                PutFate::HopLimited { ttl, needed } => {
                    outcome.get_or_insert(Outcome::HopLimited { ttl, needed });
                }
            }
        }
        outcome.unwrap_or(Outcome::Waiting)
    }

    /// Records a PUT's answer; whether the PUT was one of this attempt's.
    fn answer(&mut self, key: ConnKey, fate: PutFate) -> bool {
        match self.puts.iter_mut().find(|(k, _)| *k == key) {
            Some(put) => {
                put.1 = fate;
                true
            }
            None => false,
        }
    }
}

/// An IMDSv1 request waiting for the fate of its client's token PUTs.
#[derive(Debug)]
struct Held {
    attempt: Attempt,
    request: Request,
    sender: Rc<Sender>,
    /// Tells this hold from a later one of the same client in `held_order`.
    seq: u64,
}

/// Per-workload counts for `imds-summary`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadCounts {
    pub v1: u64,
    pub v2: u64,
    pub invalid: u64,
    pub other_cloud: u64,
    pub rejected_401: u64,
    pub first_v1: Option<SystemTime>,
    pub last_v1: Option<SystemTime>,
}

/// (kind, id) of a workload; unattributed requests are keyed by source address.
pub type WorkloadKey = (String, String);

#[derive(Debug, Default)]
pub struct Diagnoser {
    pending: HashMap<ConnKey, Pending>,
    order: VecDeque<(ConnKey, Instant)>,
    /// Recent token PUTs per client ([`client_pid`]).
    attempts: HashMap<u32, Attempt>,
    /// The client of each token PUT still waiting for its answer.
    put_client: HashMap<ConnKey, u32>,
    /// Fallback candidates per client, and their deadlines in order.
    held: HashMap<u32, Held>,
    held_order: VecDeque<(SystemTime, u32, u64)>,
    next_seq: u64,
    /// The newest event time seen: the clock of the fallback decisions.
    clock: Option<SystemTime>,
    /// Candidates (held IMDSv1 requests or remembered PUT attempts) the caps
    /// dropped before their fate was known.
    dropped: u64,
    summary: BTreeMap<WorkloadKey, WorkloadCounts>,
}

fn key_of(source: SocketAddr, destination: SocketAddr, index: u16) -> ConnKey {
    (source, destination, index)
}

/// The client a fallback belongs to, by process id: the process's own
/// (thread group) id, or, when the process is a one-shot tool (curl, wget)
/// started by a script, the script's. `None` when the process is unknown.
///
/// Shared with `report`, which counts the IMDSv1 requests after a fallback
/// per client the same way.
pub fn client_pid(name: &str, pid: u32, parent: Option<(u32, &str)>) -> u32 {
    let tool = ONE_SHOT_TOOLS
        .iter()
        .any(|t| name == *t || name.rsplit('/').next() == Some(t));
    match parent {
        Some((ppid, parent_name)) if tool && ppid > 1 && !NOT_A_SCRIPT.contains(&parent_name) => {
            ppid
        }
        _ => pid,
    }
}

fn client_of(sender: &Sender) -> Option<u32> {
    let owner = sender.owner.as_ref()?;
    let name = sender
        .process
        .as_ref()
        .map_or(owner.comm.as_str(), |p| p.name.as_str());
    let parent = sender.ancestry.first().map(|p| (p.pid, p.name.as_str()));
    Some(client_pid(name, owner.tgid, parent))
}

pub fn workload_key(request: &Request, sender: &Sender) -> WorkloadKey {
    match sender.workload_key() {
        Some((kind, id)) => (kind.as_str().to_owned(), id.to_owned()),
        None => ("unattributed".to_owned(), request.source.ip().to_string()),
    }
}

/// "curl (pid 4242) in container 4f9c1a2b3c4d", for messages.
pub fn describe(sender: &Sender, request: &Request) -> String {
    let process = match &sender.process {
        Some(p) => format!("{} (pid {})", p.name, p.pid),
        None => format!("a process at {}", request.source),
    };
    let w = &sender.workload;
    if let Some(uid) = &w.pod_uid {
        format!("{process} in pod {uid}")
    } else if let Some(id) = &w.container_id {
        format!("{process} in container {}", &id[..id.len().min(12)])
    } else if let Some(unit) = &w.systemd_unit {
        format!("{process} of {unit}")
    } else {
        process
    }
}

/// [`describe`], naming the script when the client is one.
fn describe_client(sender: &Sender, request: &Request, client: u32) -> String {
    let who = describe(sender, request);
    match sender.ancestry.first() {
        Some(parent)
            if parent.pid == client && sender.owner.as_ref().map(|o| o.tgid) != Some(client) =>
        {
            format!(
                "the script {} (pid {}), through {who},",
                parent.name, parent.pid
            )
        }
        _ => who,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Diagnoser {
    /// Findings a request raises (and fallbacks whose time has come);
    /// remembers it for its response.
    pub fn on_request(
        &mut self,
        request: &Request,
        sender: &Rc<Sender>,
        now: Instant,
    ) -> Vec<Finding> {
        let mut findings = Vec::new();
        self.tick(request.time, &mut findings);
        self.count(request, sender);
        // Only for messages: most requests raise none.
        let who = std::cell::LazyCell::new(|| describe(sender, request));
        let finding = |action, message: String, fix: &str| Finding {
            action,
            time: request.time,
            message,
            fix: fix.to_owned(),
            request: request.clone(),
            sender: Rc::clone(sender),
            status: None,
            hop_limit: None,
            fallback_delay_ms: None,
        };
        let key = key_of(request.source, request.destination, request.request_index);
        match request.class {
            RequestClass::V2TokenPut => {
                if let Some(client) = client_of(sender) {
                    self.on_put(client, key, request.time);
                }
            }
            RequestClass::Invalid if request.reason == InvalidReason::ForwardedFor => {
                findings.push(finding(
                    "imds-token-proxy",
                    format!(
                        "{} sent a token PUT with X-Forwarded-For, which IMDS rejects: the request came through a proxy or an SSRF path.",
                        *who
                    ),
                    "Call IMDS directly, not through the proxy (NO_PROXY=169.254.169.254,fd00:ec2::254); if no proxy is expected here, investigate the sender for SSRF.",
                ));
            }
            RequestClass::V1Get => {
                if PathCategory::of(&request.path) == PathCategory::Credentials {
                    findings.push(finding(
                        "imds-credentials-v1",
                        format!(
                            "{} fetched the instance role's credentials over IMDSv1 ({}), the request SSRF attacks make.",
                            *who,
                            request.path
                        ),
                        "Move it to IMDSv2 (a current AWS SDK or CLI, or a token from PUT /latest/api/token first), then set HttpTokens=required.",
                    ));
                }
                if let Some(client) = client_of(sender) {
                    self.on_v1(client, request, sender, &mut findings);
                }
            }
            _ => {}
        }
        // Wait for the response: incomplete heads get none.
        if request.class != RequestClass::Incomplete {
            self.pending.insert(
                key,
                Pending {
                    request: request.clone(),
                    sender: Rc::clone(sender),
                    since: now,
                },
            );
            self.order.push_back((key, now));
            self.expire(now);
        }
        findings
    }

    /// The request a response answers (if still known), and the findings.
    pub fn on_response(
        &mut self,
        response: &Response,
    ) -> (Option<(Request, Rc<Sender>)>, Vec<Finding>) {
        let key = key_of(
            response.source,
            response.destination,
            response.request_index,
        );
        let Some(pending) = self.pending.remove(&key) else {
            return (None, Vec::new());
        };
        let Pending {
            request, sender, ..
        } = pending;
        let mut findings = Vec::new();
        // Findings are written only for a joined response: decide here.
        self.tick(response.time, &mut findings);
        let who = describe(&sender, &request);
        let mut finding = |action, message: String, fix: &str| {
            findings.push(Finding {
                action,
                time: response.time,
                message,
                fix: fix.to_owned(),
                request: request.clone(),
                sender: Rc::clone(&sender),
                status: Some(response.status),
                hop_limit: None,
                fallback_delay_ms: None,
            })
        };
        match request.class {
            RequestClass::V1Get if response.status == 401 => {
                self.count_rejected(&request, &sender);
                finding(
                    "imds-v1-rejected",
                    format!(
                        "{who} made an IMDSv1 request ({} {}) and IMDS answered 401: this instance requires IMDSv2, so this workload is broken now.",
                        request.method, request.path
                    ),
                    "Update it to IMDSv2 (a current AWS SDK or CLI, or curl with a token from PUT /latest/api/token); until then, `aws ec2 modify-instance-metadata-options --instance-id <instance-id> --http-tokens optional` allows IMDSv1 again.",
                );
            }
            RequestClass::V2TokenPut => {
                // Only a forwarded PUT has a hop beyond the host: a TTL that
                // arrived here reaches a local client. 0 means not read.
                let hop_limited = request.forwarded
                    && response.forwarded
                    && response.ttl != 0
                    && response.ttl < TTL_NEEDED_FORWARDED;
                let fate = if hop_limited {
                    finding(
                        "imds-hop-limit",
                        format!(
                            "The token response to {who} left IMDS with IP TTL {}, too small for the one more hop to its container: the client never gets it, waits, and falls back to IMDSv1.",
                            response.ttl
                        ),
                        HOP_LIMIT_FIX,
                    );
                    if let Some(last) = findings.last_mut() {
                        last.hop_limit = Some((response.ttl, TTL_NEEDED_FORWARDED));
                    }
                    PutFate::HopLimited {
                        ttl: response.ttl,
                        needed: TTL_NEEDED_FORWARDED,
                    }
                } else {
                    PutFate::Delivered
                };
                self.on_put_answer(key, fate, &mut findings);
            }
            _ => {}
        }
        (Some((request, sender)), findings)
    }

    /// Decides the fallback candidates whose wait ended by `now` (wall
    /// time, as in the events). `on_request` and `on_response` call it with
    /// their event's time; a periodic caller makes the decision timely when
    /// no other event comes.
    // The daemon's event loop (run.rs) is to call it every second.
    pub fn decide_due(&mut self, now: SystemTime) -> Vec<Finding> {
        let mut findings = Vec::new();
        self.tick(now, &mut findings);
        findings
    }

    /// Fallback candidates and remembered PUT attempts dropped by the caps
    /// before their fate was known, since the start.
    // For `monitor-stopped`'s counters, once ecs.rs writes it.
    pub fn dropped_candidates(&self) -> u64 {
        self.dropped
    }

    fn tick(&mut self, now: SystemTime, findings: &mut Vec<Finding>) {
        let now = self.clock.map_or(now, |c| c.max(now));
        self.clock = Some(now);
        while let Some(&(deadline, client, seq)) = self.held_order.front() {
            if deadline > now && self.held.len() <= MAX_HELD {
                break;
            }
            self.held_order.pop_front();
            if self.held.get(&client).is_none_or(|h| h.seq != seq) {
                continue;
            }
            let held = self.held.remove(&client).expect("just looked up");
            if deadline > now {
                // Over the cap, before its time.
                self.dropped += 1;
                log::warn!(
                    "a fallback candidate of pid {client} was dropped undecided ({MAX_HELD} held)"
                );
                continue;
            }
            for (key, _) in &held.attempt.puts {
                self.put_client.remove(key);
            }
            match held.attempt.outcome() {
                Outcome::Delivered => {}
                outcome => findings.push(fallback(client, &held, outcome)),
            }
        }
    }

    fn on_put(&mut self, client: u32, key: ConnKey, time: SystemTime) {
        let fresh = Attempt {
            first: time,
            last: time,
            puts: Vec::new(),
        };
        let attempt = self.attempts.entry(client).or_insert_with(|| fresh.clone());
        let stale = time.duration_since(attempt.last).unwrap_or_default() > FALLBACK_WINDOW;
        if stale || attempt.outcome() == Outcome::Delivered {
            for (old, _) in &attempt.puts {
                self.put_client.remove(old);
            }
            *attempt = fresh;
        }
        attempt.last = attempt.last.max(time);
        if attempt.puts.len() == MAX_PUTS_PER_ATTEMPT {
            let (old, _) = attempt.puts.remove(0);
            self.put_client.remove(&old);
        }
        attempt.puts.push((key, PutFate::Waiting));
        self.put_client.insert(key, client);
        if self.attempts.len() > MAX_ATTEMPTS {
            let before = self.attempts.len();
            self.attempts
                .retain(|_, a| time.duration_since(a.last).unwrap_or_default() <= FALLBACK_WINDOW);
            if self.attempts.len() > MAX_ATTEMPTS {
                self.attempts.clear();
            }
            self.dropped += (before - self.attempts.len()) as u64;
            let (attempts, held) = (&self.attempts, &self.held);
            self.put_client
                .retain(|_, c| attempts.contains_key(c) || held.contains_key(c));
        }
    }

    fn on_put_answer(&mut self, key: ConnKey, fate: PutFate, findings: &mut Vec<Finding>) {
        let Some(client) = self.put_client.remove(&key) else {
            return;
        };
        if let Some(attempt) = self.attempts.get_mut(&client) {
            attempt.answer(key, fate);
        }
        let Some(held) = self.held.get_mut(&client) else {
            return;
        };
        if !held.attempt.answer(key, fate) {
            return;
        }
        match held.attempt.outcome() {
            Outcome::Waiting => {}
            Outcome::Delivered => {
                // The token came: the IMDSv1 request was the client's choice.
                self.held.remove(&client);
            }
            outcome => {
                let held = self.held.remove(&client).expect("just looked up");
                findings.push(fallback(client, &held, outcome));
            }
        }
    }

    fn on_v1(
        &mut self,
        client: u32,
        request: &Request,
        sender: &Rc<Sender>,
        findings: &mut Vec<Finding>,
    ) {
        if self.held.contains_key(&client) {
            // A later read of a client already being decided: one fallback.
            return;
        }
        let Some(attempt) = self.attempts.remove(&client) else {
            return;
        };
        let recent = request
            .time
            .duration_since(attempt.last)
            .is_ok_and(|d| d <= FALLBACK_WINDOW);
        if !recent {
            for (key, _) in &attempt.puts {
                self.put_client.remove(key);
            }
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let held = Held {
            attempt,
            request: request.clone(),
            sender: Rc::clone(sender),
            seq,
        };
        match held.attempt.outcome() {
            Outcome::Waiting => {
                self.held_order
                    .push_back((request.time + FATE_WAIT, client, seq));
                self.held.insert(client, held);
                if self.held.len() > MAX_HELD {
                    // Over the cap: `tick` drops the oldest undecided.
                    self.tick(request.time, findings);
                }
            }
            outcome => {
                for (key, _) in &held.attempt.puts {
                    self.put_client.remove(key);
                }
                if outcome != Outcome::Delivered {
                    findings.push(fallback(client, &held, outcome));
                }
            }
        }
    }

    fn count(&mut self, request: &Request, sender: &Sender) {
        let counts = self
            .summary
            .entry(workload_key(request, sender))
            .or_default();
        match request.class {
            RequestClass::V1Get => {
                counts.v1 += 1;
                counts.first_v1.get_or_insert(request.time);
                counts.last_v1 = Some(request.time);
            }
            RequestClass::V2Get | RequestClass::V2TokenPut => counts.v2 += 1,
            RequestClass::OtherCloud => counts.other_cloud += 1,
            RequestClass::Invalid | RequestClass::Incomplete => counts.invalid += 1,
        }
    }

    fn count_rejected(&mut self, request: &Request, sender: &Sender) {
        self.summary
            .entry(workload_key(request, sender))
            .or_default()
            .rejected_401 += 1;
    }

    /// The counts since the last call, and a fresh start.
    pub fn take_summary(&mut self) -> BTreeMap<WorkloadKey, WorkloadCounts> {
        std::mem::take(&mut self.summary)
    }

    /// Forgets requests whose response never came.
    fn expire(&mut self, now: Instant) {
        while let Some((key, since)) = self.order.front().copied() {
            let too_old = now.duration_since(since) > RESPONSE_WAIT;
            if !too_old && self.order.len() <= MAX_PENDING {
                break;
            }
            self.order.pop_front();
            if self.pending.get(&key).is_some_and(|p| p.since == since) {
                self.pending.remove(&key);
            }
        }
        if self.put_client.len() > MAX_PENDING {
            let (attempts, held) = (&self.attempts, &self.held);
            self.put_client
                .retain(|_, c| attempts.contains_key(c) || held.contains_key(c));
        }
    }
}

/// The `imds-v1-fallback` finding of a decided candidate.
fn fallback(client: u32, held: &Held, outcome: Outcome) -> Finding {
    let request = &held.request;
    let who = describe_client(&held.sender, request, client);
    let delay = millis(
        request
            .time
            .duration_since(held.attempt.first)
            .unwrap_or_default(),
    );
    let puts = match held.attempt.puts.len() {
        1 => "an IMDSv2 token".to_owned(),
        n => format!("an IMDSv2 token {n} times"),
    };
    let (message, fix) = match outcome {
        Outcome::HopLimited { ttl, .. } => (
            format!(
                "{who} asked for {puts}; IMDS answered with IP TTL {ttl}, which dies before the answer reaches it, and {delay} ms after the first PUT it used IMDSv1 ({}): an SDK falling back.",
                request.path
            ),
            HOP_LIMIT_FIX.to_owned(),
        ),
        _ => (
            format!(
                "{who} asked for {puts}, got no answer, and {delay} ms after the first PUT used IMDSv1 ({}): an SDK falling back.",
                request.path
            ),
            "Find what keeps IMDS's answer to the token PUT from this client: a proxy (set NO_PROXY=169.254.169.254,fd00:ec2::254), a firewall or NAT rule, or IMDS's endpoint options (HttpEndpoint, HttpProtocolIpv6); with a token it stays on IMDSv2.".to_owned(),
        ),
    };
    Finding {
        action: "imds-v1-fallback",
        time: request.time,
        message,
        fix,
        request: request.clone(),
        sender: Rc::clone(&held.sender),
        status: None,
        hop_limit: None,
        fallback_delay_ms: Some(delay),
    }
}

#[cfg(test)]
mod tests;
