//! Counting: the events of the window -> one row per workload, its findings,
//! the events lost, and the verdict on `HttpTokens=required`.

use std::{
    cmp::{Reverse, max},
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::{Duration, SystemTime},
};

use super::parse::{Class, DiagnosticKind, Event, Log, SenderId, Sym, Tables, What};

/// Kind given to events that name no workload (`imds.workload` absent).
pub const UNATTRIBUTED: &str = "unattributed";

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Keep events this close to the newest one read.
    pub since: Option<Duration>,
    /// IMDSv1 paths listed per workload.
    pub top: usize,
}

/// All diagnostics of one kind for one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: DiagnosticKind,
    pub count: u64,
    pub first: SystemTime,
    pub last: SystemTime,
    // The newest event's words and numbers: the current state of affairs.
    pub message: Option<String>,
    pub fix: Option<String>,
    /// Observed TTL and the hop limit needed (hop-limit findings).
    pub hop_limit: Option<(u64, u64)>,
    pub delay_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub kind: String,
    pub id: String,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub systemd_unit: Option<String>,
    pub hosts: BTreeSet<String>,
    pub executables: BTreeSet<String>,
    pub v1: u64,
    /// `v2_get` and `v2_token_put`.
    pub v2: u64,
    pub invalid: u64,
    pub other_cloud: u64,
    pub incomplete: u64,
    pub first_v1: Option<SystemTime>,
    pub last_v1: Option<SystemTime>,
    /// IMDSv1 requests of clients that had fallen back from IMDSv2: from an
    /// `imds-v1-fallback` of the client (process, or script of a curl) to
    /// its next token PUT.
    pub v1_fallback: u64,
    /// IMDSv1 requests of clients that never tried IMDSv2 in the window.
    pub v1_never_v2: u64,
    /// IMDSv1 requests of clients that also used IMDSv2 and did not fall back.
    pub v1_also_v2: u64,
    /// Most requested first, then by path.
    pub top_v1_paths: Vec<(String, u64)>,
    pub responses_401: u64,
    /// IMDSv1 requests answered 401: the workload is broken now.
    pub v1_rejected: u64,
    pub last_v1_rejected: Option<SystemTime>,
    pub last_v1_rejected_path: Option<String>,
    /// Every diagnostic but `v1_rejected` (counted above), by kind.
    pub findings: Vec<Finding>,
    /// Some counts come from `imds-summary` events (no paths then).
    pub from_summaries: bool,
}

impl Workload {
    pub fn finding(&self, kind: DiagnosticKind) -> Option<&Finding> {
        self.findings.iter().find(|f| f.kind == kind)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    pub kind: String,
    pub id: String,
    pub reason: String,
    /// What to do, one line per cause found, in the order of the reason.
    pub fixes: Vec<String>,
    /// IMDSv1 already answers this workload with 401.
    pub broken_now: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub safe: bool,
    /// Broken-now first, then in workload order.
    pub blocking: Vec<Blocker>,
}

#[derive(Clone, Debug)]
pub struct Report {
    /// Oldest and newest event counted.
    pub from: SystemTime,
    pub to: SystemTime,
    pub since: Option<Duration>,
    pub events_read: u64,
    pub events_in_window: u64,
    pub malformed_lines: u64,
    pub first_malformed: Option<String>,
    pub lost_events: u64,
    pub hosts: Vec<String>,
    /// Hosts with no `imds-request` event, whose counts come from summaries.
    pub summary_only_hosts: Vec<String>,
    /// Most IMDSv1 first, then by id.
    pub workloads: Vec<Workload>,
    pub verdict: Verdict,
}

impl Report {
    pub fn totals(&self) -> Workload {
        let mut t = Workload::default();
        for w in &self.workloads {
            t.v1 += w.v1;
            t.v2 += w.v2;
            t.invalid += w.invalid;
            t.other_cloud += w.other_cloud;
            t.incomplete += w.incomplete;
            t.responses_401 += w.responses_401;
            t.v1_rejected += w.v1_rejected;
            t.v1_fallback += w.v1_fallback;
            t.v1_never_v2 += w.v1_never_v2;
            t.v1_also_v2 += w.v1_also_v2;
        }
        t
    }
}

/// `None` when the log holds no event at all.
pub fn build(log: &Log, options: &Options) -> Option<Report> {
    let to = log.events.iter().map(|e| e.time).max()?;
    // Relative to the newest event, not to now: an archive gives the same
    // answer next month.
    let cutoff = options.since.and_then(|d| to.checked_sub(d));
    let window: Vec<&Event> = log
        .events
        .iter()
        .filter(|e| cutoff.is_none_or(|c| e.time >= c))
        .collect();
    let from = window.iter().map(|e| e.time).min().unwrap_or(to);

    let tables = &log.tables;
    // Summaries are for dashboards and repeat what the requests say: a host's
    // counts come from its imds-request events, and from its summaries only
    // when it has none (summaries alone, e.g. a SIEM export), never both.
    let request_hosts: HashSet<Option<Sym>> = window
        .iter()
        .filter(|e| matches!(e.what, What::Request { .. }))
        .map(|e| tables.sender(e.sender).host)
        .collect();

    let mut counter = Counter::new(tables);
    let mut lifecycle = Vec::new();
    let mut hosts = BTreeSet::new();
    let mut summary_only_hosts = BTreeSet::new();
    for event in &window {
        let host = tables.sender(event.sender).host;
        if let Some(h) = host {
            hosts.insert(tables.str(h));
        }
        match &event.what {
            What::Summary(rows) if !request_hosts.contains(&host) => {
                summary_only_hosts.insert(host.map_or("unknown", |h| tables.str(h)));
                counter.summary(host, rows);
            }
            What::Summary(_) | What::Other => {}
            What::Started | What::Stopped { .. } | What::Lost { .. } => {
                lifecycle.push((host, event.time, &event.what));
            }
            _ => counter.event(event),
        }
    }

    counter.causes();
    let mut workloads: Vec<Workload> = counter
        .tallies
        .into_iter()
        .map(|t| t.finish(tables, options.top))
        .collect();
    workloads.sort_by(|a, b| (Reverse(a.v1), &a.id, &a.kind).cmp(&(Reverse(b.v1), &b.id, &b.kind)));
    let verdict = verdict(&workloads);
    Some(Report {
        from,
        to,
        since: options.since,
        events_read: log.events.len() as u64,
        events_in_window: window.len() as u64,
        malformed_lines: log.malformed_lines,
        first_malformed: log.first_malformed.clone(),
        lost_events: lost_events(lifecycle),
        hosts: hosts.into_iter().map(str::to_owned).collect(),
        summary_only_hosts: summary_only_hosts.into_iter().map(str::to_owned).collect(),
        workloads,
        verdict,
    })
}

/// Events lost in the window. `events-lost` lines carry the loss since the
/// previous one; `monitor-stopped` carries its run's total. Per run (per
/// host, between `monitor-started` lines) the larger of the two is taken, so
/// a run with both is not counted twice. A run that began before the window
/// brings its earlier losses along: that overstates, never hides, a loss.
fn lost_events(mut lifecycle: Vec<(Option<Sym>, SystemTime, &What)>) -> u64 {
    // Rotated files are given newest first: order by host and time.
    lifecycle.sort_by_key(|&(host, time, _)| (host, time));
    let mut total = 0;
    let (mut reported, mut stopped) = (0, 0);
    let mut run_host = None;
    for (host, _, what) in lifecycle {
        if Some(host) != run_host || matches!(what, What::Started) {
            total += max(reported, stopped);
            (reported, stopped) = (0, 0);
            run_host = Some(host);
        }
        match what {
            What::Lost { lost } => reported += lost,
            What::Stopped { lost } => stopped = max(stopped, *lost),
            _ => {}
        }
    }
    total + max(reported, stopped)
}

fn earliest(slot: &mut Option<SystemTime>, t: SystemTime) {
    *slot = Some(slot.map_or(t, |old| old.min(t)));
}

fn latest(slot: &mut Option<SystemTime>, t: SystemTime) {
    *slot = Some(slot.map_or(t, |old| old.max(t)));
}

/// Per-workload counts while reading.
struct Tally {
    workload: Workload,
    v1_paths: HashMap<Sym, u64>,
    rejected_by_diagnostic: u64,
    rejected_by_response: u64,
    rejected_by_summary: u64,
    last_rejected: Option<(SystemTime, Option<Sym>)>,
    findings: BTreeMap<DiagnosticKind, Finding>,
}

impl Tally {
    fn rejected(&mut self, time: SystemTime, path: Option<Sym>) {
        if self.last_rejected.is_none_or(|(t, _)| time >= t) {
            self.last_rejected = Some((time, path));
        }
    }

    fn finish(mut self, tables: &Tables, top: usize) -> Workload {
        let w = &mut self.workload;
        // A rejected v1 request may be told twice, as a 401 `imds-response`
        // and as an `imds-v1-rejected` diagnostic: count the larger.
        w.v1_rejected =
            max(self.rejected_by_diagnostic, self.rejected_by_response) + self.rejected_by_summary;
        w.responses_401 = max(w.responses_401, w.v1_rejected);
        if let Some((time, path)) = self.last_rejected {
            w.last_v1_rejected = Some(time);
            w.last_v1_rejected_path = path.map(|p| tables.str(p).to_owned());
        }
        let mut paths: Vec<(String, u64)> = self
            .v1_paths
            .into_iter()
            .map(|(p, n)| (tables.str(p).to_owned(), n))
            .collect();
        paths.sort_by(|a, b| (Reverse(a.1), &a.0).cmp(&(Reverse(b.1), &b.0)));
        paths.truncate(top);
        w.top_v1_paths = paths;
        w.findings = self.findings.into_values().collect();
        self.workload
    }
}

struct Counter<'a> {
    tables: &'a Tables,
    tallies: Vec<Tally>,
    by_key: HashMap<(&'a str, &'a str), usize>,
    /// Tally of each sender, found once per sender rather than per event.
    by_sender: Vec<Option<usize>>,
    /// Per client (host, client pid): its requests and fallbacks, to tell
    /// why its IMDSv1 requests were made.
    clients: HashMap<ClientKey, Vec<Step>>,
}

/// A client: host, workload, client pid (`diagnose::client_pid`).
type ClientKey = (Option<Sym>, Option<(Sym, Sym)>, u32);

/// One event in a client's story. The order breaks ties in time: a
/// fallback finding carries the time of its IMDSv1 request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum StepKind {
    Fallback,
    TokenPut,
    V2Get,
    V1 { tally: usize },
}

#[derive(Clone, Copy, Debug)]
struct Step {
    time: SystemTime,
    kind: StepKind,
}

impl<'a> Counter<'a> {
    fn new(tables: &'a Tables) -> Self {
        Self {
            tables,
            tallies: Vec::new(),
            by_key: HashMap::new(),
            by_sender: vec![None; tables.senders().len()],
            clients: HashMap::new(),
        }
    }

    /// Splits each workload's IMDSv1 requests by why they were made.
    fn causes(&mut self) {
        for steps in self.clients.values_mut() {
            steps.sort_by_key(|s| (s.time, s.kind));
            let tried_v2 = steps
                .iter()
                .any(|s| matches!(s.kind, StepKind::TokenPut | StepKind::V2Get));
            let mut fell_back = false;
            for step in steps.iter() {
                match step.kind {
                    StepKind::Fallback => fell_back = true,
                    StepKind::TokenPut => fell_back = false,
                    StepKind::V2Get => {}
                    StepKind::V1 { tally } => {
                        let w = &mut self.tallies[tally].workload;
                        if fell_back {
                            w.v1_fallback += 1;
                        } else if tried_v2 {
                            w.v1_also_v2 += 1;
                        } else {
                            w.v1_never_v2 += 1;
                        }
                    }
                }
            }
        }
    }

    fn tally(&mut self, kind: &'a str, id: &'a str) -> usize {
        *self.by_key.entry((kind, id)).or_insert_with(|| {
            self.tallies.push(Tally {
                workload: Workload {
                    kind: kind.to_owned(),
                    id: id.to_owned(),
                    ..Workload::default()
                },
                v1_paths: HashMap::new(),
                rejected_by_diagnostic: 0,
                rejected_by_response: 0,
                rejected_by_summary: 0,
                last_rejected: None,
                findings: BTreeMap::new(),
            });
            self.tallies.len() - 1
        })
    }

    fn sender_tally(&mut self, sender_id: SenderId) -> &mut Tally {
        let i = self.sender_tally_index(sender_id);
        &mut self.tallies[i]
    }

    fn sender_tally_index(&mut self, sender_id: SenderId) -> usize {
        if let Some(i) = self.by_sender[sender_id.index()] {
            return i;
        }
        let t = self.tables;
        let sender = t.sender(sender_id);
        let (kind, id) = match sender.workload {
            Some((kind, id)) => (t.str(kind), t.str(id)),
            None => (
                UNATTRIBUTED,
                sender.source_ip.map_or("unknown", |ip| t.str(ip)),
            ),
        };
        let i = self.tally(kind, id);
        self.by_sender[sender_id.index()] = Some(i);
        let w = &mut self.tallies[i].workload;
        let text = |s: Option<Sym>| s.map(|s| t.str(s).to_owned());
        w.container_id = w.container_id.take().or_else(|| text(sender.container_id));
        w.pod_uid = w.pod_uid.take().or_else(|| text(sender.pod_uid));
        w.systemd_unit = w.systemd_unit.take().or_else(|| text(sender.systemd_unit));
        w.hosts.extend(text(sender.host));
        w.executables.extend(text(sender.executable));
        i
    }

    fn event(&mut self, event: &Event) {
        let tables = self.tables;
        if let Some(client) = event.client {
            let step = match &event.what {
                What::Request { class, .. } => match class {
                    Class::V1Get => Some(StepKind::V1 {
                        tally: self.sender_tally_index(event.sender),
                    }),
                    Class::V2TokenPut => Some(StepKind::TokenPut),
                    Class::V2Get => Some(StepKind::V2Get),
                    _ => None,
                },
                What::Diagnostic(d) if d.kind == DiagnosticKind::V1Fallback => {
                    Some(StepKind::Fallback)
                }
                _ => None,
            };
            if let Some(kind) = step {
                let sender = tables.sender(event.sender);
                let key = (sender.host, sender.workload, client);
                self.clients.entry(key).or_default().push(Step {
                    time: event.time,
                    kind,
                });
            }
        }
        let tally = self.sender_tally(event.sender);
        let w = &mut tally.workload;
        match &event.what {
            What::Request { class, path } => match class {
                Class::V1Get => {
                    w.v1 += 1;
                    earliest(&mut w.first_v1, event.time);
                    latest(&mut w.last_v1, event.time);
                    if let Some(path) = path {
                        *tally.v1_paths.entry(*path).or_default() += 1;
                    }
                }
                Class::V2Get | Class::V2TokenPut => w.v2 += 1,
                Class::Invalid => w.invalid += 1,
                Class::OtherCloud => w.other_cloud += 1,
                Class::Incomplete => w.incomplete += 1,
            },
            What::Response {
                status: 401,
                class,
                path,
            } => {
                w.responses_401 += 1;
                if *class == Some(Class::V1Get) {
                    tally.rejected_by_response += 1;
                    tally.rejected(event.time, *path);
                }
            }
            What::Diagnostic(d) if d.kind == DiagnosticKind::V1Rejected => {
                tally.rejected_by_diagnostic += 1;
                tally.rejected(event.time, d.path);
            }
            What::Diagnostic(d) => {
                let text = |s: Option<Sym>| s.map(|s| tables.str(s).to_owned());
                let f = tally.findings.entry(d.kind).or_insert(Finding {
                    kind: d.kind,
                    count: 0,
                    first: event.time,
                    last: event.time,
                    message: None,
                    fix: None,
                    hop_limit: None,
                    delay_ms: None,
                });
                f.count += 1;
                f.first = f.first.min(event.time);
                if event.time >= f.last || f.count == 1 {
                    f.last = event.time;
                    f.message = text(d.message);
                    f.fix = text(d.fix);
                    f.hop_limit = d.hop_limit;
                    f.delay_ms = d.delay_ms;
                }
            }
            _ => {}
        }
    }

    fn summary(&mut self, host: Option<Sym>, rows: &[super::parse::SummaryRow]) {
        let t = self.tables;
        for row in rows {
            let i = self.tally(t.str(row.kind), t.str(row.id));
            let tally = &mut self.tallies[i];
            let w = &mut tally.workload;
            w.from_summaries = true;
            w.hosts.extend(host.map(|h| t.str(h).to_owned()));
            w.v1 += row.v1;
            w.v2 += row.v2;
            w.invalid += row.invalid;
            w.other_cloud += row.other_cloud;
            tally.rejected_by_summary += row.rejected_401;
            // Each summary counts its own interval, so they add up.
            if let Some(first) = row.first_v1 {
                earliest(&mut w.first_v1, first);
            }
            if let Some(last) = row.last_v1 {
                latest(&mut w.last_v1, last);
            }
        }
    }
}

pub fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub fn seconds(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// "(last T, PATH)", "(last T)" or "".
fn last_and_path(time: Option<SystemTime>, path: Option<&str>) -> String {
    match (time, path) {
        (Some(t), Some(p)) => format!(" (last {}, {p})", seconds(t)),
        (Some(t), None) => format!(" (last {})", seconds(t)),
        (None, Some(p)) => format!(" ({p})"),
        (None, None) => String::new(),
    }
}

/// What to run when a token response does not reach the workload.
pub fn hop_limit_fix(needed: u64) -> String {
    format!(
        "aws ec2 modify-instance-metadata-options --instance-id <instance-id> \
         --http-put-response-hop-limit {needed}"
    )
}

/// The fix for IMDSv1 requests a client makes by itself.
pub const CLIENT_FIX: &str = "Update these clients to IMDSv2: a current AWS SDK or CLI, or a \
     script that asks for a token first (PUT /latest/api/token)";

/// "N IMDSv1 requests ...: F after falling back from IMDSv2, M from clients
/// that never tried IMDSv2, ...": why the requests were made.
fn causes(w: &Workload) -> String {
    let known = w.v1_fallback + w.v1_never_v2 + w.v1_also_v2;
    let parts: Vec<String> = [
        (w.v1_fallback, "after falling back from IMDSv2"),
        (w.v1_never_v2, "from clients that never tried IMDSv2"),
        (w.v1_also_v2, "from clients that also use IMDSv2"),
        (w.v1.saturating_sub(known), "whose client is not known"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() || known == 0 && w.from_summaries {
        String::new()
    } else {
        format!(": {}", parts.join(", "))
    }
}

/// `HttpTokens=required` is safe iff no workload used IMDSv1 and none has a
/// hop-limit or fallback finding: a workload whose token PUT dies on the hop
/// limit falls back to v1, and with v1 off it breaks. `invalid` and
/// `other_cloud` requests do not block: IMDS rejects or ignores them anyway.
/// The fixes follow the causes: the hop limit for fallbacks it caused, the
/// client for IMDSv1 requests a client made by itself.
pub fn verdict(workloads: &[Workload]) -> Verdict {
    let mut blocking = Vec::new();
    for w in workloads {
        let mut reasons = Vec::new();
        let mut fixes: Vec<String> = Vec::new();
        let mut fix = |f: String| {
            if !fixes.contains(&f) {
                fixes.push(f);
            }
        };
        let top_path = w.top_v1_paths.first().map(|(p, _)| p.as_str());
        if w.v1_rejected > 0 {
            let what = if w.v1 > w.v1_rejected {
                format!("{} of {} IMDSv1 requests", w.v1_rejected, w.v1)
            } else {
                plural(w.v1_rejected, "IMDSv1 request")
            };
            let path = w.last_v1_rejected_path.as_deref().or(top_path);
            reasons.push(format!(
                "broken now: {what} answered 401{}{}",
                last_and_path(w.last_v1_rejected.or(w.last_v1), path),
                causes(w)
            ));
        } else if w.v1 > 0 {
            reasons.push(format!(
                "{}{}{}",
                plural(w.v1, "IMDSv1 request"),
                last_and_path(w.last_v1, top_path),
                causes(w)
            ));
        } else if let Some(f) = w.finding(DiagnosticKind::CredentialsV1) {
            // The requests themselves were lost or filtered; the diagnostic
            // still proves IMDSv1 use.
            reasons.push(format!(
                "fetched role credentials over IMDSv1 {}{}",
                plural(f.count, "time"),
                last_and_path(Some(f.last), None)
            ));
        }
        let fallback = w.finding(DiagnosticKind::V1Fallback);
        // IMDSv1 a client chose (not after a fallback): change the client.
        // Requests whose client is unknown count as chosen unless the
        // workload fell back (then they are most likely the fallback's).
        let chosen = w.v1_never_v2 + w.v1_also_v2;
        let unknown = w.v1.saturating_sub(chosen + w.v1_fallback);
        let credentials_only = w.v1 == 0 && !reasons.is_empty();
        if chosen > 0 || unknown > 0 && fallback.is_none() || credentials_only {
            fix(CLIENT_FIX.to_owned());
        }
        if let Some(f) = w.finding(DiagnosticKind::HopLimit) {
            let needed = f.hop_limit.map_or(2, |(_, needed)| needed);
            let limits = match f.hop_limit {
                Some((observed, needed)) => format!("{observed} < {needed} needed"),
                None => "too low".to_owned(),
            };
            reasons.push(format!(
                "token response hop limit {limits} ({})",
                plural(f.count, "token PUT")
            ));
            fix(f.fix.clone().unwrap_or_else(|| hop_limit_fix(needed)));
        }
        if let Some(f) = fallback {
            let mut reason = match f.count {
                1 => "fell back to IMDSv1 once".to_owned(),
                n => format!("fell back to IMDSv1 {n} times"),
            };
            if let Some(ms) = f.delay_ms {
                let last = if f.count == 1 { "" } else { "the last " };
                reason += &format!(" ({last}after {ms} ms without a token)");
            }
            reasons.push(reason);
            fix(f.fix.clone().unwrap_or_else(|| hop_limit_fix(2)));
        }
        if !reasons.is_empty() {
            blocking.push(Blocker {
                kind: w.kind.clone(),
                id: w.id.clone(),
                reason: reasons.join("; "),
                fixes,
                broken_now: w.v1_rejected > 0,
            });
        }
    }
    // Stable: within each group the workloads keep their order.
    blocking.sort_by_key(|b| !b.broken_now);
    Verdict {
        safe: blocking.is_empty(),
        blocking,
    }
}
