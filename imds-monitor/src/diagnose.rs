//! Diagnosis: joins each response to its request and names the failures a
//! migration to IMDSv2 meets, per workload:
//! - `imds-v1-rejected`: an IMDSv1 request answered 401 (v2 is required; broken now);
//! - `imds-hop-limit`: a token response whose TTL cannot survive the hop to a container;
//! - `imds-v1-fallback`: a token PUT left unanswered, then IMDSv1 from the same process;
//! - `imds-token-proxy`: a token PUT with X-Forwarded-For (a proxy or SSRF path);
//! - `imds-credentials-v1`: the role's credentials fetched over IMDSv1.
//!
//! It also keeps the per-workload counts of `imds-summary`.

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
/// A v1 request this soon after an unanswered token PUT is a fallback.
/// SDKs wait 250 ms (Go v2) to 5 s (Go v1) before falling back.
const FALLBACK_WINDOW: Duration = Duration::from_secs(6);
/// The TTL a token response needs on arrival at the host to reach a
/// container one forwarding hop further.
const TTL_NEEDED_FORWARDED: u8 = 2;

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
    /// `imds-v1-fallback`: ms from the unanswered PUT to the v1 request.
    pub fallback_delay_ms: Option<u64>,
}

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    request: Request,
    sender: Rc<Sender>,
    since: Instant,
}

/// A token PUT the client has not seen answered yet.
#[derive(Debug)]
struct OpenPut {
    time: SystemTime,
    key: (SocketAddr, SocketAddr, u16),
    /// Its answer arrived with a TTL too low to reach the client.
    hop_limited: bool,
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
    pending: HashMap<(SocketAddr, SocketAddr, u16), Pending>,
    order: VecDeque<((SocketAddr, SocketAddr, u16), Instant)>,
    /// Open token PUTs by actor (workload, else process, else source address).
    open_puts: HashMap<String, OpenPut>,
    summary: BTreeMap<WorkloadKey, WorkloadCounts>,
}

fn key_of(
    source: SocketAddr,
    destination: SocketAddr,
    index: u16,
) -> (SocketAddr, SocketAddr, u16) {
    (source, destination, index)
}

/// Who is falling back: the same workload (a pod, container or unit: an
/// SDK may retry from another process of it), else the same process.
fn actor(request: &Request, sender: &Sender) -> String {
    if let Some((kind, id)) = sender.workload.key() {
        return format!("{}:{id}", kind.as_str());
    }
    match &sender.owner {
        Some(owner) => format!("pid:{}", owner.tgid),
        None => format!("ip:{}", request.source.ip()),
    }
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

impl Diagnoser {
    /// Findings a request raises by itself; remembers it for its response.
    pub fn on_request(
        &mut self,
        request: &Request,
        sender: &Rc<Sender>,
        now: Instant,
    ) -> Vec<Finding> {
        let mut findings = Vec::new();
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
        let actor = actor(request, sender);
        match request.class {
            RequestClass::V2TokenPut => {
                self.open_puts.insert(
                    actor,
                    OpenPut {
                        time: request.time,
                        key: key_of(request.source, request.destination, request.request_index),
                        hop_limited: false,
                    },
                );
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
                if let Some(put) = self.open_puts.remove(&actor)
                    && let Ok(delay) = request.time.duration_since(put.time)
                    && delay <= FALLBACK_WINDOW
                {
                    let fix = if put.hop_limited {
                        HOP_LIMIT_FIX.to_owned()
                    } else {
                        format!(
                            "If it runs in a container, raise the hop limit: {HOP_LIMIT_FIX}; otherwise find what drops the token PUT or its answer (a proxy, a firewall rule)."
                        )
                    };
                    let mut f = finding(
                        "imds-v1-fallback",
                        format!(
                            "{} asked for an IMDSv2 token, got no answer, and {} ms later used IMDSv1 ({}): an SDK falling back.",
                            *who,
                            delay.as_millis(),
                            request.path
                        ),
                        &fix,
                    );
                    f.fallback_delay_ms = Some(delay.as_millis() as u64);
                    findings.push(f);
                }
            }
            _ => {}
        }
        // Wait for the response: incomplete heads get none.
        if request.class != RequestClass::Incomplete {
            let key = key_of(request.source, request.destination, request.request_index);
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
                let actor = actor(&request, &sender);
                let hop_limited = response.forwarded && response.ttl < TTL_NEEDED_FORWARDED;
                if hop_limited {
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
                    if let Some(put) = self.open_puts.get_mut(&actor) {
                        put.hop_limited = true;
                    }
                } else if self.open_puts.get(&actor).is_some_and(|p| p.key == key) {
                    // Answered and deliverable: no fallback will follow.
                    self.open_puts.remove(&actor);
                }
            }
            _ => {}
        }
        (Some((request, sender)), findings)
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

    /// Forgets requests whose response never came, and stale open PUTs.
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
        if self.open_puts.len() > MAX_PENDING {
            self.open_puts.clear();
        }
    }
}

#[cfg(test)]
mod tests;
