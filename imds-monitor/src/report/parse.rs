//! One NDJSON line -> one compact [`Event`], or the reason it is malformed.
//!
//! Archives hold millions of lines, and `--since` needs the newest timestamp
//! before anything can be counted, so every event is kept until the end.
//! Strings that repeat (paths, executables, whole senders) are therefore
//! interned and events refer to them by number.

use std::{borrow::Borrow, collections::HashMap, hash::Hash, num::NonZeroU32, time::SystemTime};

use serde::Deserialize;

/// Values stored once, referred to by number.
#[derive(Debug)]
pub struct Interner<T> {
    ids: HashMap<T, NonZeroU32>,
    items: Vec<T>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self {
            ids: HashMap::new(),
            items: Vec::new(),
        }
    }
}

impl<T: Hash + Eq + Clone> Interner<T> {
    pub fn intern<Q>(&mut self, value: &Q) -> NonZeroU32
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ToOwned + ?Sized,
        Q::Owned: Into<T>,
    {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let owned: T = value.to_owned().into();
        self.items.push(owned.clone());
        let id = u32::try_from(self.items.len())
            .ok()
            .and_then(NonZeroU32::new)
            .expect("fewer than 4 billion distinct values");
        self.ids.insert(owned, id);
        id
    }

    pub fn get(&self, id: NonZeroU32) -> &T {
        &self.items[id.get() as usize - 1]
    }

    pub fn items(&self) -> &[T] {
        &self.items
    }
}

/// An interned string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(NonZeroU32);

/// An interned [`Sender`]; also its index into [`Tables::senders`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SenderId(NonZeroU32);

impl SenderId {
    pub fn index(self) -> usize {
        self.0.get() as usize - 1
    }
}

/// Who sent a request (or caused a diagnostic), as the event names them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sender {
    pub host: Option<Sym>,
    /// `imds.workload.kind` and `.id`, when both are there.
    pub workload: Option<(Sym, Sym)>,
    pub container_id: Option<Sym>,
    pub pod_uid: Option<Sym>,
    pub systemd_unit: Option<Sym>,
    pub executable: Option<Sym>,
    pub source_ip: Option<Sym>,
}

#[derive(Debug, Default)]
pub struct Tables {
    strings: Interner<Box<str>>,
    senders: Interner<Sender>,
}

impl Tables {
    pub fn str(&self, sym: Sym) -> &str {
        self.strings.get(sym.0)
    }

    pub fn sender(&self, id: SenderId) -> &Sender {
        self.senders.get(id.0)
    }

    pub fn senders(&self) -> &[Sender] {
        self.senders.items()
    }

    fn sym(&mut self, s: &str) -> Sym {
        Sym(self.strings.intern(s))
    }

    fn opt_sym(&mut self, s: Option<&str>) -> Option<Sym> {
        s.map(|s| self.sym(s))
    }
}

/// `imds.class`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    V1Get,
    V2TokenPut,
    V2Get,
    Invalid,
    OtherCloud,
    Incomplete,
}

impl Class {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "v1_get" => Self::V1Get,
            "v2_token_put" => Self::V2TokenPut,
            "v2_get" => Self::V2Get,
            "invalid" => Self::Invalid,
            "other_cloud" => Self::OtherCloud,
            "incomplete" => Self::Incomplete,
            other => return Err(format!("unknown imds.class {other:?}")),
        })
    }
}

/// The diagnostics `imds-monitor run` raises (each an `event.kind: alert`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiagnosticKind {
    /// `imds-v1-rejected`: a v1 request answered 401.
    V1Rejected,
    /// `imds-hop-limit`: the token response cannot reach the sender.
    HopLimit,
    /// `imds-v1-fallback`: an SDK gave up on a token and used v1.
    V1Fallback,
    /// `imds-token-proxy`.
    TokenProxy,
    /// `imds-credentials-v1`: role credentials fetched over v1.
    CredentialsV1,
}

impl DiagnosticKind {
    fn from_action(action: &str) -> Option<Self> {
        Some(match action {
            "imds-v1-rejected" => Self::V1Rejected,
            "imds-hop-limit" => Self::HopLimit,
            "imds-v1-fallback" => Self::V1Fallback,
            "imds-token-proxy" => Self::TokenProxy,
            "imds-credentials-v1" => Self::CredentialsV1,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1Rejected => "v1_rejected",
            Self::HopLimit => "hop_limit",
            Self::V1Fallback => "v1_fallback",
            Self::TokenProxy => "token_proxy",
            Self::CredentialsV1 => "credentials_v1",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub kind: DiagnosticKind,
    pub message: Option<Sym>,
    pub fix: Option<Sym>,
    pub path: Option<Sym>,
    /// `imds.hop_limit.observed_ttl` and `.needed` (hop-limit only).
    pub hop_limit: Option<(u64, u64)>,
    /// `imds.fallback.delay_ms` (fallback only).
    pub delay_ms: Option<u64>,
}

/// One workload's line of an `imds-summary`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryRow {
    pub kind: Sym,
    pub id: Sym,
    pub v1: u64,
    pub v2: u64,
    pub invalid: u64,
    pub other_cloud: u64,
    pub rejected_401: u64,
    pub first_v1: Option<SystemTime>,
    pub last_v1: Option<SystemTime>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    Request {
        class: Class,
        path: Option<Sym>,
    },
    Response {
        status: u64,
        class: Option<Class>,
        path: Option<Sym>,
    },
    Diagnostic(Box<Diagnostic>),
    Summary(Box<[SummaryRow]>),
    Started,
    /// `imds.counters.lost_events` of the run.
    Stopped {
        lost: u64,
    },
    /// `imds.lost_events`: lost since the previous `events-lost`.
    Lost {
        lost: u64,
    },
    /// An action this version does not know; read, not counted.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub time: SystemTime,
    pub sender: SenderId,
    pub what: What,
    /// The client by process id, as the daemon decides fallbacks
    /// (`diagnose::client_pid`): the process, or the script of a curl.
    pub client: Option<u32>,
}

// The shape of a line, as far as the report reads it. Serde checks every
// type; unknown fields are skipped. `Option` where a field may be absent.

#[derive(Deserialize)]
struct RawLine {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    event: RawEvent,
    #[serde(default)]
    host: RawHost,
    #[serde(default)]
    imds: RawImds,
    #[serde(default)]
    process: RawProcess,
    #[serde(default)]
    container: RawId,
    #[serde(default)]
    orchestrator: RawOrchestrator,
    #[serde(default)]
    source: RawSource,
    #[serde(default)]
    url: RawUrl,
    #[serde(default)]
    http: RawHttp,
    message: Option<String>,
}

#[derive(Deserialize)]
struct RawEvent {
    action: String,
}

#[derive(Default, Deserialize)]
struct RawHost {
    name: Option<String>,
}

#[derive(Default, Deserialize)]
struct RawProcess {
    executable: Option<String>,
    pid: Option<u32>,
    name: Option<String>,
    parent: Option<RawParent>,
}

#[derive(Deserialize)]
struct RawParent {
    pid: Option<u32>,
    name: Option<String>,
}

#[derive(Default, Deserialize)]
struct RawId {
    id: Option<String>,
}

#[derive(Default, Deserialize)]
struct RawOrchestrator {
    #[serde(default)]
    resource: RawId,
}

#[derive(Default, Deserialize)]
struct RawSource {
    ip: Option<String>,
}

#[derive(Default, Deserialize)]
struct RawUrl {
    path: Option<String>,
}

#[derive(Default, Deserialize)]
struct RawHttp {
    #[serde(default)]
    response: RawResponse,
}

#[derive(Default, Deserialize)]
struct RawResponse {
    status_code: Option<u64>,
}

#[derive(Default, Deserialize)]
struct RawImds {
    class: Option<String>,
    #[serde(default)]
    workload: RawWorkload,
    systemd_unit: Option<String>,
    #[serde(default)]
    diagnostic: RawDiagnostic,
    hop_limit: Option<RawHopLimit>,
    fallback: Option<RawFallback>,
    summary: Option<RawSummary>,
    lost_events: Option<u64>,
    #[serde(default)]
    counters: RawCounters,
}

#[derive(Default, Deserialize)]
struct RawWorkload {
    kind: Option<String>,
    id: Option<String>,
}

#[derive(Default, Deserialize)]
struct RawDiagnostic {
    fix: Option<String>,
}

#[derive(Deserialize)]
struct RawHopLimit {
    observed_ttl: u64,
    needed: u64,
}

#[derive(Deserialize)]
struct RawFallback {
    delay_ms: u64,
}

#[derive(Deserialize)]
struct RawSummary {
    workloads: Vec<RawSummaryRow>,
}

#[derive(Deserialize)]
struct RawSummaryRow {
    kind: String,
    id: String,
    v1: u64,
    v2: u64,
    invalid: u64,
    other_cloud: u64,
    rejected_401: u64,
    first_v1: Option<String>,
    last_v1: Option<String>,
}

#[derive(Default, Deserialize)]
struct RawCounters {
    lost_events: Option<u64>,
}

fn timestamp(s: &str, field: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(s).map_err(|e| format!("{field} {s:?}: {e}"))
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("missing field `{field}`"))
}

/// Everything read: the events, and what was skipped.
#[derive(Debug, Default)]
pub struct Log {
    pub tables: Tables,
    pub events: Vec<Event>,
    pub malformed_lines: u64,
    /// Where the first malformed line was, and why, to help find the cause.
    pub first_malformed: Option<String>,
}

impl Log {
    /// Adds one line of `input`. Blank lines are not events and not malformed.
    pub fn add_line(&mut self, input: &dyn std::fmt::Display, number: u64, bytes: &[u8]) {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match line(bytes, &mut self.tables) {
            Ok(event) => self.events.push(event),
            Err(why) => {
                self.malformed_lines += 1;
                self.first_malformed
                    .get_or_insert_with(|| format!("{input}:{number}: {why}"));
            }
        }
    }
}

/// Parses one non-blank line. The error says why it was skipped.
pub fn line(bytes: &[u8], tables: &mut Tables) -> Result<Event, String> {
    let raw: RawLine = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let time = timestamp(&raw.timestamp, "@timestamp")?;
    let path = tables.opt_sym(raw.url.path.as_deref());
    let imds = raw.imds;
    let what = match raw.event.action.as_str() {
        "imds-request" => What::Request {
            class: Class::parse(&required(imds.class, "imds.class")?)?,
            path,
        },
        "imds-response" => What::Response {
            status: required(raw.http.response.status_code, "http.response.status_code")?,
            class: imds.class.as_deref().map(Class::parse).transpose()?,
            path,
        },
        "imds-summary" => {
            let rows = required(imds.summary, "imds.summary")?.workloads;
            let rows = rows
                .into_iter()
                .map(|row| {
                    Ok(SummaryRow {
                        kind: tables.sym(&row.kind),
                        id: tables.sym(&row.id),
                        v1: row.v1,
                        v2: row.v2,
                        invalid: row.invalid,
                        other_cloud: row.other_cloud,
                        rejected_401: row.rejected_401,
                        first_v1: row
                            .first_v1
                            .map(|t| timestamp(&t, "first_v1"))
                            .transpose()?,
                        last_v1: row.last_v1.map(|t| timestamp(&t, "last_v1")).transpose()?,
                    })
                })
                .collect::<Result<_, String>>()?;
            What::Summary(rows)
        }
        "monitor-started" => What::Started,
        "monitor-stopped" => What::Stopped {
            lost: imds.counters.lost_events.unwrap_or(0),
        },
        "events-lost" => What::Lost {
            lost: required(imds.lost_events, "imds.lost_events")?,
        },
        action => match DiagnosticKind::from_action(action) {
            None => What::Other,
            Some(kind) => {
                let hop_limit = match kind {
                    DiagnosticKind::HopLimit => {
                        let h = required(imds.hop_limit, "imds.hop_limit")?;
                        Some((h.observed_ttl, h.needed))
                    }
                    _ => None,
                };
                let delay_ms = match kind {
                    DiagnosticKind::V1Fallback => {
                        Some(required(imds.fallback, "imds.fallback")?.delay_ms)
                    }
                    _ => None,
                };
                What::Diagnostic(Box::new(Diagnostic {
                    kind,
                    message: tables.opt_sym(raw.message.as_deref()),
                    fix: tables.opt_sym(imds.diagnostic.fix.as_deref()),
                    path,
                    hop_limit,
                    delay_ms,
                }))
            }
        },
    };
    let workload = match (imds.workload.kind, imds.workload.id) {
        (Some(kind), Some(id)) => Some((tables.sym(&kind), tables.sym(&id))),
        _ => None,
    };
    let process = &raw.process;
    let client = process.pid.map(|pid| {
        let parent = process
            .parent
            .as_ref()
            .and_then(|p| Some((p.pid?, p.name.as_deref().unwrap_or_default())));
        crate::diagnose::client_pid(process.name.as_deref().unwrap_or_default(), pid, parent)
    });
    let sender = Sender {
        host: tables.opt_sym(raw.host.name.as_deref()),
        workload,
        container_id: tables.opt_sym(raw.container.id.as_deref()),
        pod_uid: tables.opt_sym(raw.orchestrator.resource.id.as_deref()),
        systemd_unit: tables.opt_sym(imds.systemd_unit.as_deref()),
        executable: tables.opt_sym(raw.process.executable.as_deref()),
        source_ip: tables.opt_sym(raw.source.ip.as_deref()),
    };
    Ok(Event {
        time,
        sender: SenderId(tables.senders.intern(&sender)),
        what,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(Event, Tables), String> {
        let mut tables = Tables::default();
        line(text.as_bytes(), &mut tables).map(|e| (e, tables))
    }

    // From docs/events.md, with a workload.
    const V1: &str = r#"{"@timestamp":"2026-11-23T13:47:05.345312Z","destination":{"ip":"169.254.169.254","port":80},"ecs":{"version":"8.11.0"},"event":{"action":"imds-request","category":["network"],"dataset":"imds_monitor.events","kind":"alert","module":"imds-monitor","type":["access","connection"]},"host":{"name":"ip-10-0-1-17"},"http":{"request":{"method":"GET"}},"imds":{"class":"v1_get","interface":"eth0","path_category":"metadata","path_truncated":false,"verdict":"alerted","version":"v1","x_forwarded_for":false,"workload":{"kind":"unit","id":"cloud-init.service"},"systemd_unit":"cloud-init.service"},"network":{"direction":"egress","protocol":"http","transport":"tcp","type":"ipv4"},"process":{"pid":4242,"name":"python3","executable":"/usr/bin/python3.11"},"source":{"ip":"10.0.1.17","port":56002},"url":{"path":"/latest/meta-data/"}}"#;

    #[test]
    fn documented_request_is_read() {
        let (event, tables) = parse(V1).unwrap();
        assert_eq!(
            event.time,
            humantime::parse_rfc3339("2026-11-23T13:47:05.345312Z").unwrap()
        );
        let What::Request { class, path } = event.what else {
            panic!("{:?}", event.what)
        };
        assert_eq!(class, Class::V1Get);
        assert_eq!(tables.str(path.unwrap()), "/latest/meta-data/");
        let sender = tables.sender(event.sender);
        let (kind, id) = sender.workload.unwrap();
        assert_eq!(
            (tables.str(kind), tables.str(id)),
            ("unit", "cloud-init.service")
        );
        assert_eq!(
            tables.str(sender.executable.unwrap()),
            "/usr/bin/python3.11"
        );
        assert_eq!(tables.str(sender.source_ip.unwrap()), "10.0.1.17");
        assert_eq!(tables.str(sender.host.unwrap()), "ip-10-0-1-17");
    }

    #[test]
    fn the_same_sender_is_stored_once() {
        let mut tables = Tables::default();
        let a = line(V1.as_bytes(), &mut tables).unwrap();
        let b = line(V1.as_bytes(), &mut tables).unwrap();
        assert_eq!(a.sender, b.sender);
        assert_eq!(tables.senders().len(), 1);
    }

    #[test]
    fn diagnostics_carry_their_facts() {
        let (event, tables) = parse(
            r#"{"@timestamp":"2026-11-23T10:00:00Z","event":{"action":"imds-hop-limit","kind":"alert"},"message":"token response dropped","imds":{"hop_limit":{"observed_ttl":1,"needed":2},"diagnostic":{"fix":"raise it"}}}"#,
        )
        .unwrap();
        let What::Diagnostic(d) = event.what else {
            panic!()
        };
        assert_eq!(d.kind, DiagnosticKind::HopLimit);
        assert_eq!(d.hop_limit, Some((1, 2)));
        assert_eq!(tables.str(d.fix.unwrap()), "raise it");
        assert_eq!(tables.str(d.message.unwrap()), "token response dropped");
    }

    #[test]
    fn malformed_lines_say_why() {
        for (text, why) in [
            ("hello", "expected value"),
            ("[1,2]", "invalid type"),
            ("{}", "missing field `@timestamp`"),
            (
                r#"{"@timestamp":5,"event":{"action":"imds-request"}}"#,
                "invalid type",
            ),
            (
                r#"{"@timestamp":"yesterday","event":{"action":"imds-request"},"imds":{"class":"v1_get"}}"#,
                "@timestamp",
            ),
            (
                r#"{"@timestamp":"2026-11-23T10:00:00Z","event":{"action":"imds-request"}}"#,
                "missing field `imds.class`",
            ),
            (
                r#"{"@timestamp":"2026-11-23T10:00:00Z","event":{"action":"imds-request"},"imds":{"class":"v3"}}"#,
                "unknown imds.class",
            ),
            (
                r#"{"@timestamp":"2026-11-23T10:00:00Z","event":{"action":"imds-request"},"imds":{"class":"v1_get"},"process":{"executable":7}}"#,
                "invalid type",
            ),
            (
                r#"{"@timestamp":"2026-11-23T10:00:00Z","event":{"action":"imds-response"},"http":{"response":{"status_code":"401"}}}"#,
                "invalid type",
            ),
            (
                r#"{"@timestamp":"2026-11-23T10:00:00Z","event":{"action":"imds-hop-limit"}}"#,
                "missing field `imds.hop_limit`",
            ),
            (
                r#"{"@timestamp":"2026-11-23T10:00:00Z","event":{"action":"imds-summary"},"imds":{"summary":{"workloads":[{"kind":"unit","id":"a.service"}]}}}"#,
                "missing field `v1`",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
        let mut tables = Tables::default();
        assert!(line(b"{\"@timestamp\":\"\xff\"}", &mut tables).is_err());
    }

    #[test]
    fn unknown_actions_are_read_but_not_counted() {
        let (event, _) =
            parse(r#"{"@timestamp":"2026-11-23T10:00:00Z","event":{"action":"imds-future"}}"#)
                .unwrap();
        assert_eq!(event.what, What::Other);
    }
}
