//! The report as text for people (`--format table`) or as one JSON object
//! for scripts (`--format json`).

use std::{fmt::Write as _, time::SystemTime};

use serde_json::{Map, Value, json};

use super::{
    model::{Finding, Report, Workload, plural, seconds},
    parse::DiagnosticKind,
};

fn micros(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// `--format json`. Absent facts are left out, never null (as in the events).
pub fn json(report: &Report) -> String {
    let doc = json!({
        "window": { "from": micros(report.from), "to": micros(report.to) },
        "events_read": report.events_read,
        "events_in_window": report.events_in_window,
        "malformed_lines": report.malformed_lines,
        "lost_events": report.lost_events,
        "hosts": report.hosts,
        "summary_only_hosts": report.summary_only_hosts,
        "workloads": report.workloads.iter().map(workload_json).collect::<Vec<_>>(),
        "verdict": {
            "safe": report.verdict.safe,
            "blocking": report.verdict.blocking.iter().map(|b| json!({
                "kind": b.kind,
                "id": b.id,
                "reason": b.reason,
                "fixes": b.fixes,
                "broken_now": b.broken_now,
            })).collect::<Vec<_>>(),
        },
    });
    let mut text = doc.to_string();
    text.push('\n');
    text
}

fn insert_some(map: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        map.insert(key.into(), v.into());
    }
}

fn workload_json(w: &Workload) -> Value {
    let mut m = Map::new();
    m.insert("kind".into(), w.kind.clone().into());
    m.insert("id".into(), w.id.clone().into());
    insert_some(&mut m, "container_id", w.container_id.clone());
    insert_some(&mut m, "pod_uid", w.pod_uid.clone());
    insert_some(&mut m, "systemd_unit", w.systemd_unit.clone());
    m.insert("hosts".into(), json!(w.hosts));
    m.insert("executables".into(), json!(w.executables));
    for (key, n) in [
        ("v1", w.v1),
        ("v2", w.v2),
        ("invalid", w.invalid),
        ("other_cloud", w.other_cloud),
        ("incomplete", w.incomplete),
        ("responses_401", w.responses_401),
        ("v1_rejected", w.v1_rejected),
        ("v1_fallback", w.v1_fallback),
        ("v1_never_v2", w.v1_never_v2),
        ("v1_also_v2", w.v1_also_v2),
    ] {
        m.insert(key.into(), n.into());
    }
    insert_some(&mut m, "first_v1", w.first_v1.map(micros));
    insert_some(&mut m, "last_v1", w.last_v1.map(micros));
    m.insert(
        "top_v1_paths".into(),
        w.top_v1_paths
            .iter()
            .map(|(path, count)| json!({ "path": path, "count": count }))
            .collect::<Vec<_>>()
            .into(),
    );
    m.insert(
        "findings".into(),
        w.findings
            .iter()
            .map(finding_json)
            .collect::<Vec<_>>()
            .into(),
    );
    m.insert("from_summaries".into(), w.from_summaries.into());
    m.into()
}

fn finding_json(f: &Finding) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), f.kind.as_str().into());
    m.insert("count".into(), f.count.into());
    m.insert("first".into(), micros(f.first).into());
    m.insert("last".into(), micros(f.last).into());
    insert_some(&mut m, "message", f.message.clone());
    insert_some(&mut m, "fix", f.fix.clone());
    insert_some(&mut m, "observed_ttl", f.hop_limit.map(|h| h.0));
    insert_some(&mut m, "needed", f.hop_limit.map(|h| h.1));
    insert_some(&mut m, "delay_ms", f.delay_ms);
    m.into()
}

/// Paths, executables and messages come from the watched host (a path is
/// whatever a client sent): control characters are shown escaped so they
/// cannot move the cursor or recolour the terminal.
fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped = c.is_control().then(|| c.escape_debug().to_string());
            escaped
                .unwrap_or_else(|| c.to_string())
                .chars()
                .collect::<Vec<_>>()
        })
        .collect()
}

fn shorten(s: &str, max: usize) -> String {
    let s = clean(s);
    if s.chars().count() <= max {
        s
    } else {
        let head: String = s.chars().take(max - 1).collect();
        head + "…"
    }
}

/// Container ids are 64 hex digits; the first 12 are what `docker ps` shows
/// (and what `docker inspect` accepts). The JSON keeps them whole.
fn short_id(kind: &str, id: &str) -> String {
    if kind == "container" && id.len() == 64 && id.is_ascii() {
        id[..12].to_owned()
    } else {
        shorten(id, 40)
    }
}

fn name(kind: &str, id: &str) -> String {
    format!("{} {}", clean(kind), short_id(kind, id))
}

fn dash_if_none<T>(value: Option<T>, f: impl FnOnce(T) -> String) -> String {
    value.map_or_else(|| "-".to_owned(), f)
}

/// Left-aligned text columns, right-aligned numbers; the last column is not padded.
fn aligned(rows: &[Vec<String>], numeric: &[bool]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let width = widths[c];
            if c + 1 == columns {
                line += cell;
            } else if numeric[c] {
                let _ = write!(line, "{cell:>width$}  ");
            } else {
                let _ = write!(line, "{cell:<width$}  ");
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

fn finding_title(kind: DiagnosticKind) -> &'static str {
    match kind {
        DiagnosticKind::HopLimit => "token hop limit",
        DiagnosticKind::V1Fallback => "fallback to IMDSv1",
        DiagnosticKind::TokenProxy => "token proxy",
        DiagnosticKind::CredentialsV1 => "credentials over IMDSv1",
        DiagnosticKind::V1Rejected => "IMDSv1 answered 401",
    }
}

fn window(report: &Report) -> String {
    format!("{} to {}", seconds(report.from), seconds(report.to))
}

/// `--format table`: a header, the table, the paths, the findings, the verdict.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    header(report, &mut out);
    workloads(report, &mut out);
    paths(report, &mut out);
    findings(report, &mut out);
    verdict(report, &mut out);
    out
}

/// What was read, and what may make the counts incomplete.
fn header(report: &Report, out: &mut String) {
    let window = window(report);
    let _ = match report.since {
        None => writeln!(out, "{} events from {window}", report.events_read),
        Some(since) => writeln!(
            out,
            "{} events read; {} within {} of the newest, from {window}",
            report.events_read,
            report.events_in_window,
            humantime::format_duration(since)
        ),
    };
    if report.malformed_lines > 0 {
        let first = report.first_malformed.as_deref().unwrap_or_default();
        let _ = writeln!(
            out,
            "{} skipped (the first {})",
            plural(report.malformed_lines, "malformed line"),
            shorten(first, 160)
        );
    }
    if report.lost_events > 0 {
        let _ = writeln!(
            out,
            "warning: {} events were lost; counts are lower bounds",
            report.lost_events
        );
    }
    if report.hosts.len() > 1 {
        let _ = writeln!(
            out,
            "note: events from {} hosts ({}); HttpTokens is set per instance, so this \
             verdict holds for all of them together",
            report.hosts.len(),
            clean(&report.hosts.join(", "))
        );
    }
    if !report.summary_only_hosts.is_empty() {
        let _ = writeln!(
            out,
            "note: no imds-request events from {}: counted from imds-summary events \
             (no paths or executables)",
            clean(&report.summary_only_hosts.join(", "))
        );
    }
    out.push('\n');
}

/// One row per workload, and the totals.
fn workloads(report: &Report, out: &mut String) {
    let mut rows = vec![
        [
            "WORKLOAD",
            "KIND",
            "EXECUTABLES",
            "V1",
            "V2",
            "401",
            "LAST V1",
            "TOP V1 PATH",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for w in &report.workloads {
        let executables = match (w.executables.first(), w.executables.len()) {
            (None, _) => "-".to_owned(),
            (Some(exe), 1) => shorten(exe, 40),
            (Some(exe), n) => format!("{} +{}", shorten(exe, 36), n - 1),
        };
        rows.push(vec![
            short_id(&w.kind, &w.id),
            clean(&w.kind),
            executables,
            w.v1.to_string(),
            w.v2.to_string(),
            w.responses_401.to_string(),
            dash_if_none(w.last_v1, seconds),
            dash_if_none(w.top_v1_paths.first(), |(p, n)| {
                format!("{} ({n})", shorten(p, 80))
            }),
        ]);
    }
    let t = report.totals();
    rows.push(vec![
        "total".into(),
        String::new(),
        String::new(),
        t.v1.to_string(),
        t.v2.to_string(),
        t.responses_401.to_string(),
        String::new(),
        String::new(),
    ]);
    *out += &aligned(
        &rows,
        &[false, false, false, true, true, true, false, false],
    );
    let harmless: Vec<String> = [
        (t.invalid, "invalid"),
        (t.other_cloud, "other-cloud"),
        (t.incomplete, "incomplete"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|&(n, what)| plural(n, &format!("{what} request")))
    .collect();
    if !harmless.is_empty() {
        let _ = writeln!(out, "also {}: these do not block", harmless.join(", "));
    }
}

fn paths(report: &Report, out: &mut String) {
    let with_paths: Vec<&Workload> = report
        .workloads
        .iter()
        .filter(|w| !w.top_v1_paths.is_empty())
        .collect();
    if !with_paths.is_empty() {
        *out += "\nIMDSv1 paths, most requested first:\n";
        for w in with_paths {
            let _ = writeln!(out, "  {}", name(&w.kind, &w.id));
            for (path, n) in &w.top_v1_paths {
                let _ = writeln!(out, "    {n:>7}  {}", clean(path));
            }
        }
    }
}

/// The diagnostics in their own words, with their fixes.
fn findings(report: &Report, out: &mut String) {
    let findings: Vec<(&Workload, &Finding)> = report
        .workloads
        .iter()
        .flat_map(|w| w.findings.iter().map(move |f| (w, f)))
        .collect();
    if !findings.is_empty() {
        *out += "\nFindings:\n";
        for (w, f) in findings {
            let what = f
                .message
                .as_deref()
                .map_or_else(|| finding_title(f.kind).to_owned(), clean);
            let _ = writeln!(
                out,
                "  [{}] {}: {what} ({}, last {})",
                finding_title(f.kind),
                name(&w.kind, &w.id),
                if f.count == 1 {
                    "once".to_owned()
                } else {
                    format!("{} times", f.count)
                },
                seconds(f.last)
            );
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "      fix: {}", clean(fix));
            }
        }
    }
}

/// Last, where the eye lands: safe or not, and who stands in the way.
fn verdict(report: &Report, out: &mut String) {
    let window = window(report);
    out.push('\n');
    let verdict = &report.verdict;
    if verdict.safe {
        let _ = writeln!(
            out,
            "SAFE: HttpTokens=required breaks nothing seen from {window}: no IMDSv1 \
             request and no token hop-limit or fallback problem."
        );
        return;
    }
    let _ = writeln!(
        out,
        "NOT SAFE: HttpTokens=required would break {} seen from {window}:",
        plural(verdict.blocking.len() as u64, "workload")
    );
    let (broken, rest): (Vec<_>, Vec<_>) = verdict.blocking.iter().partition(|b| b.broken_now);
    if !broken.is_empty() {
        *out += "  broken now (IMDSv1 already answered 401 - Unauthorized):\n";
        for b in broken {
            let reason = b.reason.strip_prefix("broken now: ").unwrap_or(&b.reason);
            let _ = writeln!(out, "    {}: {}", name(&b.kind, &b.id), clean(reason));
            fixes(b, out);
        }
    }
    if !rest.is_empty() {
        *out += "  still in the way:\n";
        for b in rest {
            let _ = writeln!(out, "    {}: {}", name(&b.kind, &b.id), clean(&b.reason));
            fixes(b, out);
        }
    }
}

/// A blocker's fixes, one per cause, under it.
fn fixes(b: &super::model::Blocker, out: &mut String) {
    for fix in &b.fixes {
        let _ = writeln!(out, "      fix: {}", clean(fix));
    }
}
