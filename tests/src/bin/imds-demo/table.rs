//! Turning the monitor's JSON lines into something a person reads at a glance.
//!
//! Everything here works on the events alone (`&[Value]`).

use serde_json::Value;

/// A plain text table: a header row, a rule, and left-aligned columns.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                if i + 1 == columns {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<width$}  "));
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

/// A string field by its dotted ECS path, e.g. `imds.class`.
pub fn field<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(event, |v, key| v.get(key))
}

/// A field as display text: strings bare, other values as JSON, `-` if absent.
pub fn text(event: &Value, path: &str) -> String {
    match field(event, path) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "-".to_owned(),
    }
}

/// The path, its start cut off when longer than `max_chars` (the end of a
/// path says more: the role name, the tag key).
pub fn path(event: &Value, max_chars: usize) -> String {
    let path = text(event, "url.path");
    let len = path.chars().count();
    if len <= max_chars {
        return path;
    }
    let tail: String = path
        .chars()
        .skip(len - max_chars.saturating_sub(1))
        .collect();
    format!("\u{2026}{tail}")
}

/// The class, with what makes an odd request odd: `other_cloud (gcp)`,
/// `invalid (missing_ttl)`.
pub fn class(event: &Value) -> String {
    let class = text(event, "imds.class");
    let why = ["imds.other_cloud", "imds.invalid_reason"]
        .iter()
        .find_map(|f| field(event, f).and_then(Value::as_str));
    match why {
        Some(why) => format!("{class} ({why})"),
        None => class,
    }
}

/// The workload an event names (`imds.workload`) as `(kind, id)`, ids whole.
pub fn workload_key(event: &Value) -> Option<(String, String)> {
    let kind = field(event, "imds.workload.kind").and_then(Value::as_str)?;
    let id = field(event, "imds.workload.id").and_then(Value::as_str)?;
    Some((kind.to_owned(), id.to_owned()))
}

/// A workload for people: `unit cloud-init.service`, `container 7aad6254aaa1`
/// (12 digits, as `docker ps` and the report show them), a pod's UID cut to
/// `id_chars` (0: whole), a process's executable by its file name.
pub fn workload_name(kind: &str, id: &str, id_chars: usize) -> String {
    let id = match kind {
        "container" if id.len() == 64 && id.is_ascii() => id[..12].to_owned(),
        "pod" if id_chars > 0 => shorten(id, id_chars),
        "process" => id.rsplit('/').next().unwrap_or(id).to_owned(),
        _ => id.to_owned(),
    };
    format!("{kind} {id}")
}

/// The workload an event names, for a table column; `-` when it names none.
pub fn workload(event: &Value, id_chars: usize) -> String {
    workload_key(event).map_or_else(
        || "-".to_owned(),
        |(kind, id)| workload_name(&kind, &id, id_chars),
    )
}

/// The process an event names, e.g. `curl[4242]`, with why attribution is
/// partial when it is; `-` when it names none.
pub fn process(event: &Value) -> String {
    let mut out = match field(event, "process.name").and_then(Value::as_str) {
        Some(name) => match field(event, "process.pid") {
            Some(pid) => format!("{name}[{pid}]"),
            None => name.to_owned(),
        },
        None => "-".to_owned(),
    };
    if text(event, "imds.attribution") == "partial" {
        out.push_str(&format!(
            " (partial: {})",
            text(event, "imds.attribution_reason")
        ));
    }
    out
}

fn shorten(id: &str, chars: usize) -> String {
    if id.chars().count() <= chars {
        id.to_owned()
    } else {
        format!("{}\u{2026}", id.chars().take(chars).collect::<String>())
    }
}

/// `verdict`, upper-cased when it is an alert so it stands out.
pub fn verdict(event: &Value) -> String {
    let verdict = text(event, "imds.verdict");
    if text(event, "event.kind") == "alert" {
        verdict.to_uppercase()
    } else {
        verdict
    }
}

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp as the daemon
/// writes them (`2026-11-23T13:47:05.345312Z`).
pub fn parse_timestamp(ts: &str) -> Option<f64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.splitn(3, ':').map(str::parse::<i64>);
    let (h, m, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + h * 3_600 + m * 60 + s) as f64 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `+1.234s` relative to `start` (seconds since the epoch).
pub fn relative_time(event: &Value, start: Option<f64>) -> String {
    let ts = text(event, "@timestamp");
    match (parse_timestamp(&ts), start) {
        (Some(t), Some(start)) => format!("+{:.3}s", t - start),
        _ => ts,
    }
}

/// The `monitor-stopped` counters as short lines: requests per class (the
/// non-zero ones, then the zero ones), and every other counter.
pub fn counters(stopped: &Value) -> Vec<String> {
    let Some(Value::Object(counters)) = field(stopped, "imds.counters") else {
        return vec!["(the monitor-stopped line has no counters)".to_owned()];
    };
    let mut lines = Vec::new();
    if let Some(Value::Object(requests)) = counters.get("requests") {
        let (seen, zero): (Vec<_>, Vec<_>) = requests
            .iter()
            .partition(|(_, n)| n.as_u64().is_some_and(|n| n > 0));
        let mut line = format!(
            "requests by class: {}",
            join_pairs(seen.iter().map(|(k, v)| (k.as_str(), *v)))
        );
        if !zero.is_empty() {
            let names: Vec<&str> = zero.iter().map(|(k, _)| k.as_str()).collect();
            line.push_str(&format!("  (0: {})", names.join(", ")));
        }
        lines.push(line);
    }
    let others = counters.iter().filter(|(k, _)| k.as_str() != "requests");
    lines.push(join_pairs(others.map(|(k, v)| (k.as_str(), v))));
    lines
}

fn join_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a Value)>) -> String {
    let parts: Vec<String> = pairs.map(|(k, v)| format!("{k}={v}")).collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_parse_across_days() {
        let a = parse_timestamp("1970-01-01T00:00:01.5Z").unwrap();
        assert!((a - 1.5).abs() < 1e-9);
        let b = parse_timestamp("2026-11-23T23:59:59.900000Z").unwrap();
        let c = parse_timestamp("2026-11-24T00:00:00.100000Z").unwrap();
        assert!((c - b - 0.2).abs() < 1e-6);
        assert_eq!(parse_timestamp("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        assert_eq!(parse_timestamp("not a time"), None);
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["a", "long header"]);
        t.row(vec!["wide cell".into(), "x".into()]);
        assert_eq!(
            t.render(),
            "a          long header\n---------  -----------\nwide cell  x\n"
        );
    }

    #[test]
    fn cells_describe_odd_requests() {
        let e = json!({"url": {"path": "/computeMetadata/v1/instance/id"},
            "imds": {"other_cloud": "gcp", "verdict": "allowed"},
            "event": {"kind": "event"},
            "source": {"ip": "fd00::1", "port": 80}});
        assert_eq!(path(&e, 60), "/computeMetadata/v1/instance/id");
        assert_eq!(path(&e, 10), "\u{2026}stance/id");
        assert_eq!(class(&e), "- (gcp)");
        assert_eq!(verdict(&e), "allowed");
    }

    #[test]
    fn senders_are_named_by_workload_and_process() {
        let id = "ab".repeat(32);
        let e = json!({"process": {"name": "curl", "pid": 42},
            "imds": {"attribution": "full",
                     "workload": {"kind": "container", "id": id}}});
        assert_eq!(workload(&e, 8), "container abababababab");
        assert_eq!(workload_key(&e), Some(("container".to_owned(), id)));
        assert_eq!(process(&e), "curl[42]");
        let e = json!({"process": {"name": "agent", "pid": 7},
            "imds": {"attribution": "partial", "attribution_reason": "cgroup_removed",
                     "workload": {"kind": "process", "id": "/usr/bin/agent"}}});
        assert_eq!(workload(&e, 8), "process agent");
        assert_eq!(process(&e), "agent[7] (partial: cgroup_removed)");
        let pod = "0b7e2f5a-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(workload_name("pod", pod, 8), "pod 0b7e2f5a\u{2026}");
        assert_eq!(workload_name("pod", pod, 0), format!("pod {pod}"));
        let none = json!({"imds": {"class": "v1_get"}});
        assert_eq!(
            (workload(&none, 8), process(&none)),
            ("-".into(), "-".into())
        );
    }

    #[test]
    fn counters_list_nonzero_classes_first() {
        let e = json!({"imds": {"counters": {
            "requests": {"v1_get": 2, "invalid": 0},
            "events_written": 2, "lost_events": 0}}});
        assert_eq!(
            counters(&e),
            [
                "requests by class: v1_get=2  (0: invalid)",
                "events_written=2 lost_events=0"
            ]
        );
    }
}
