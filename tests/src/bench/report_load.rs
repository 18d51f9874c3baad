//! The `workloads` and `soak` figures: console tables, target checks and
//! their own sections of BENCHMARKS.md (between their own markers, so a run
//! of only these phases leaves the other results alone).

use std::fmt::Write as _;

use super::procfs::Machine;
use super::report::{Check, md_table, mib, pass, text_table, thousands};
use super::workloads::{LoadRun, SoakRun};

/// The rate at which no event may be lost (issue 14).
const NO_LOSS_RATE: u32 = 5_000;
/// Most RSS growth from the end of the warm-up to the end of the soak.
const MAX_RSS_GROWTH: i64 = 2 << 20;

pub const WORKLOADS_START: &str =
    "<!-- imds-bench workloads: start (rewritten by `imds-bench --write-md`) -->";
pub const WORKLOADS_END: &str = "<!-- imds-bench workloads: end -->";
pub const SOAK_START: &str =
    "<!-- imds-bench soak: start (rewritten by `imds-bench --soak --write-md`) -->";
pub const SOAK_END: &str = "<!-- imds-bench soak: end -->";

/// Where and how a run was made, for both sections.
pub struct Header {
    pub machine: Machine,
    pub date: String,
    pub command: String,
    pub load_at_start: String,
}

impl Header {
    fn line(&self) -> String {
        format!(
            "Measured {} on {} × {}, Linux {}, load average at start {}, with `{}`.",
            self.date,
            self.machine.cpus,
            self.machine.model,
            self.machine.kernel,
            self.load_at_start,
            self.command
        )
    }
}

const WORKLOADS_METHOD: &str = "50 workloads at once, each an `imds-bench worker` process of its own: \
     25 host services (a cgroup `system.slice/bench-wN.service` each) and 25 processes in 12 NATed \
     containers (Docker and Kubernetes cgroup naming, one routed hop behind the host); half open a \
     new connection per request, half keep one open. Every fourth operation is an IMDSv2 pair (token \
     PUT, then a GET with the token), the rest IMDSv1 GETs. Each GET carries a tag (workload, the \
     sender's own pid, sequence) in its query string, so every request the mock IMDS served is \
     matched to its event: exactly once means one event per served request and no other event; \
     attribution means the event's `process.pid` is the pid in the tag and its cgroup path and \
     container id are the workload's. A token PUT is matched through the tagged GET after it on its \
     connection. The ring buffer's fill (producer minus consumer position, mapped read-only from the \
     daemon's map) is sampled every millisecond; the output queue's high-water mark is the daemon's \
     `output_queue_peak_bytes`. conntrack's TIME_WAIT is 2 s in the sandbox host's namespace (else \
     thousands of NATed connections a second fill the machine's conntrack table).";

const SOAK_METHOD: &str = "A steady 200 req/s from 8 workloads (4 on the host, 4 in containers, \
     half keep-alive, a quarter of the operations IMDSv2 pairs) while, every second, a container \
     cgroup (`system.slice/docker-<id>.scope`) is created, a process in it (behind the NAT) makes a \
     request (IMDSv1 or an IMDSv2 pair, alternately), and the cgroup is removed; and 50 short-lived \
     processes a second (`/bin/true`) start and exit in a host service. The daemon's RSS (VmRSS) and \
     the entries of its eBPF maps (walked from outside) are sampled every 5 s; the sizes of its \
     user-space caches (process cache, cgroup paths) are read from its `monitor-stopped` record \
     at the end.";

fn load_table(runs: &[LoadRun]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "target",
        "workloads",
        "achieved",
        "requests served / events",
        "exactly once",
        "attribution wrong (pid / cgroup / container / no such sender), cgroup unknown",
        "ring buffer peak (sampled each ms)",
        "output queue peak",
        "lost (ring buffer / output)",
        "daemon CPU, % of one core",
        "peak RSS",
    ];
    let rows = runs
        .iter()
        .map(|r| {
            let v = &r.verification;
            vec![
                format!(
                    "{} req/s for {} s",
                    thousands(u64::from(r.target)),
                    r.duration.as_secs()
                ),
                format!(
                    "{} ({} host, {} in containers; {} keep-alive)",
                    r.workloads,
                    r.host_workloads,
                    r.workloads - r.host_workloads,
                    r.keep_alive_workloads
                ),
                format!(
                    "{} req/s (workers ran {:.1} s)",
                    thousands(r.achieved.round() as u64),
                    r.elapsed.as_secs_f64()
                ),
                format!("{} / {}", thousands(v.logged), thousands(v.events)),
                if v.exactly_once_ok() {
                    format!("all {}", thousands(v.exactly_once))
                } else {
                    format!(
                        "{} (missing {}, extra {}, untagged {})",
                        thousands(v.exactly_once),
                        thousands(v.missing),
                        thousands(v.extra),
                        thousands(v.untagged_logged + v.untagged_events)
                    )
                },
                format!(
                    "{} / {} / {} / {}, {}",
                    v.wrong_pid, v.wrong_cgroup, v.wrong_container, v.foreign_pid, v.unknown_cgroup
                ),
                format!(
                    "{} of {} ({:.1} %, {} samples)",
                    kib(r.ring_peak),
                    mib(r.ring_size),
                    100.0 * r.ring_peak as f64 / (r.ring_size.max(1)) as f64,
                    thousands(r.ring_samples)
                ),
                kib(r.counters.output_queue_peak_bytes),
                format!(
                    "{} / {}",
                    thousands(r.counters.lost_events),
                    thousands(r.counters.output_lost_events)
                ),
                format!("{:.1} %", r.cpu_percent),
                mib(r.peak_rss),
            ]
        })
        .collect();
    (header, rows)
}

fn kib(bytes: u64) -> String {
    format!("{} KiB", thousands(bytes.div_ceil(1024)))
}

pub fn load_checks(runs: &[LoadRun]) -> Vec<Check> {
    let mut checks = Vec::new();
    for r in runs {
        let v = &r.verification;
        let at = format!(
            "{} req/s ({} achieved)",
            thousands(u64::from(r.target)),
            thousands(r.achieved.round() as u64)
        );
        checks.push(Check {
            target: format!("{at}: every served request is exactly one event"),
            got: format!(
                "{} of {} (missing {}, extra {})",
                thousands(v.exactly_once),
                thousands(v.logged),
                thousands(v.missing),
                thousands(v.extra)
            ),
            pass: v.exactly_once_ok(),
        });
        checks.push(Check {
            target: format!("{at}: each event names the pid, cgroup and container that sent it"),
            got: format!(
                "{} wrong pid, {} wrong cgroup, {} wrong container, {} not a sender, {} no cgroup",
                v.wrong_pid, v.wrong_cgroup, v.wrong_container, v.foreign_pid, v.unknown_cgroup
            ),
            pass: v.attribution_ok() && v.unknown_cgroup == 0 && v.events > 0,
        });
        let lost = r.counters.lost_events + r.counters.output_lost_events;
        if r.target <= NO_LOSS_RATE {
            checks.push(Check {
                target: format!("{at}: no event lost"),
                got: format!("{lost} lost"),
                pass: lost == 0,
            });
        }
    }
    checks
}

pub fn load_notes(runs: &[LoadRun]) -> Vec<String> {
    let mut notes = Vec::new();
    for r in runs {
        let at = format!("at {} req/s", thousands(u64::from(r.target)));
        if r.achieved < 0.95 * f64::from(r.target) {
            notes.push(format!(
                "{at} the workloads reached {} req/s: the 50 senders, the mock IMDS (a thread \
                 per connection), the NAT and the daemon share the machine's CPUs with whatever \
                 else runs (see the load average) and did not go faster; the figures are for the \
                 rate achieved",
                thousands(r.achieved.round() as u64)
            ));
        }
        let lost = r.counters.lost_events + r.counters.output_lost_events;
        if r.target > NO_LOSS_RATE && lost > 0 {
            notes.push(format!(
                "{at} {lost} events were lost ({} ring buffer, {} output), each reported in an \
                 events-lost record",
                r.counters.lost_events, r.counters.output_lost_events
            ));
        }
        if r.worker_failures > 0 {
            notes.push(format!(
                "{at} {} requests got no answer (last: {})",
                r.worker_failures,
                r.worker_error.as_deref().unwrap_or("?")
            ));
        }
        if !r.caught_up {
            notes.push(format!(
                "{at} the daemon had not written every event 10 s after the load"
            ));
        }
        if r.verification.partial > 0 || r.counters.attribution_partial > 0 {
            notes.push(format!(
                "{at} {} events had partial attribution ({} by the daemon's count)",
                r.verification.partial, r.counters.attribution_partial
            ));
        }
        for e in &r.verification.examples {
            notes.push(format!("{at}: {e}"));
        }
    }
    notes
}

fn soak_summary(s: &SoakRun) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec!["", "value"];
    let v = &s.verification;
    let mut rows = vec![
        vec![
            "duration, requests".to_owned(),
            format!(
                "{} s, {} served ({:.0} req/s), {} events",
                s.elapsed.as_secs(),
                thousands(v.logged),
                s.achieved,
                thousands(v.events)
            ),
        ],
        vec![
            "churn".to_owned(),
            format!(
                "{} containers created and removed ({} failed), {} short-lived processes",
                thousands(s.containers),
                s.container_failures,
                thousands(s.processes)
            ),
        ],
    ];
    if let (Some(w), Some(l)) = (s.warm(), s.last()) {
        rows.push(vec![
            "daemon RSS".to_owned(),
            format!(
                "{} at {} s (after warm-up), {} at {} s (end), growth {}; peak {}",
                mib(w.rss),
                w.at.as_secs(),
                mib(l.rss),
                l.at.as_secs(),
                signed_kib(s.rss_growth().unwrap_or(0)),
                mib(s.peak_rss)
            ),
        ]);
    }
    rows.push(vec![
        "daemon CPU".to_owned(),
        format!("{:.1} % of one core", s.cpu_percent),
    ]);
    for (name, warm, peak, end) in s.map_rows() {
        let lru = if s.lru_maps.contains(&name) {
            " (LRU)"
        } else {
            ""
        };
        rows.push(vec![
            format!("map {name}{lru} entries"),
            format!(
                "{} after warm-up, at most {} after, {} at the end (size {})",
                thousands(warm),
                thousands(peak),
                thousands(end),
                thousands(u64::from(s.map_sizes.get(&name).copied().unwrap_or(0)))
            ),
        ]);
    }
    let cache = |v: Option<u64>| v.map_or_else(|| "not reported".to_owned(), thousands);
    rows.push(vec![
        "daemon caches at the end".to_owned(),
        format!(
            "process cache {} entries ({} processes on the machine then), cgroup cache {} \
             entries, after {} processes and {} containers came and went",
            cache(s.counters.process_cache_entries),
            thousands(s.machine_processes as u64),
            cache(s.counters.cgroup_cache_entries),
            thousands(s.processes),
            thousands(s.containers)
        ),
    ]);
    rows.push(vec![
        "lost (ring buffer / output)".to_owned(),
        format!(
            "{} / {}",
            s.counters.lost_events, s.counters.output_lost_events
        ),
    ]);
    (header, rows)
}

/// The samples, at most about a dozen rows.
fn soak_samples(s: &SoakRun) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec![
        "time".to_owned(),
        "RSS".to_owned(),
        "containers".to_owned(),
        "processes".to_owned(),
    ];
    let names: Vec<String> = s
        .samples
        .first()
        .map(|f| f.maps.keys().cloned().collect())
        .unwrap_or_default();
    header.extend(names.iter().cloned());
    let step = s.samples.len().div_ceil(12).max(1);
    let rows = s
        .samples
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == s.samples.len())
        .map(|(_, x)| {
            let mut row = vec![
                format!("{} s", x.at.as_secs()),
                mib(x.rss),
                thousands(x.containers),
                thousands(x.processes),
            ];
            row.extend(
                names
                    .iter()
                    .map(|n| thousands(x.maps.get(n).copied().unwrap_or(0))),
            );
            row
        })
        .collect();
    (header, rows)
}

fn signed_kib(bytes: i64) -> String {
    let k = bytes as f64 / 1024.0;
    format!("{k:+.0} KiB")
}

pub fn soak_checks(s: &SoakRun) -> Vec<Check> {
    let v = &s.verification;
    vec![
        Check {
            target: format!(
                "soak: RSS growth after warm-up ({} s) < {} MiB",
                s.plan.warm_up.as_secs(),
                MAX_RSS_GROWTH >> 20
            ),
            got: s
                .rss_growth()
                .map_or_else(|| "not measured".to_owned(), signed_kib),
            pass: s.rss_growth().is_some_and(|g| g < MAX_RSS_GROWTH),
        },
        Check {
            target: "soak: the eBPF hash maps (not LRU) stay on a plateau after warm-up".to_owned(),
            got: s
                .map_rows()
                .iter()
                .filter(|(n, ..)| !s.lru_maps.contains(n))
                .map(|(n, w, p, _)| format!("{n} {w}→{p}"))
                .collect::<Vec<_>>()
                .join(", "),
            pass: s.maps_bounded() && !s.map_rows().is_empty(),
        },
        Check {
            target: "soak: no event names a pid that did not send it".to_owned(),
            got: format!(
                "{} of {} events: {} not a sender, {} another sender's pid",
                thousands(v.events - v.foreign_pid.min(v.events)),
                thousands(v.events),
                v.foreign_pid,
                v.wrong_pid
            ),
            pass: v.foreign_pid == 0 && v.wrong_pid == 0 && v.events > 0,
        },
        Check {
            target: "soak: every served request is exactly one event, no wrong cgroup/container"
                .to_owned(),
            got: format!(
                "{} of {} (missing {}, extra {}; wrong cgroup {}, container {}; unknown {})",
                thousands(v.exactly_once),
                thousands(v.logged),
                v.missing,
                v.extra,
                v.wrong_cgroup,
                v.wrong_container,
                v.unknown_cgroup
            ),
            pass: v.exactly_once_ok() && v.attribution_ok(),
        },
    ]
}

pub fn soak_notes(s: &SoakRun) -> Vec<String> {
    let mut notes = Vec::new();
    if s.worker_failures > 0 || s.container_failures > 0 {
        notes.push(format!(
            "{} requests got no answer, {} churned containers failed (last: {})",
            s.worker_failures,
            s.container_failures,
            s.worker_error.as_deref().unwrap_or("?")
        ));
    }
    for (name, rate, full_in) in s.growing_lru() {
        notes.push(format!(
            "the LRU map {name} grew by {rate:.0} entries/s after the warm-up{}: nothing \
             removes its entries, the kernel's LRU eviction is what bounds it (at its size)",
            full_in.map_or_else(String::new, |t| format!(", full in about {t:.0} s more"))
        ));
    }
    if let Some(n) = s.counters.process_cache_entries
        && n > s.machine_processes as u64
    {
        notes.push(format!(
            "the process cache held {} entries for {} live processes: it also keeps exited \
             processes for a while, to name their last requests, so under this churn it holds \
             thousands; that is one figure at the end, not a plateau: the RSS samples are \
             what shows whether the daemon's memory keeps growing",
            thousands(n),
            thousands(s.machine_processes as u64)
        ));
    }
    if s.verification.partial > 0 {
        notes.push(format!(
            "{} events had partial attribution; {} named no cgroup (and so no container): a \
             churned container's cgroup is removed milliseconds after its request, which can be \
             before the daemon resolves the cgroup id to a path",
            s.verification.partial, s.verification.unknown_cgroup
        ));
    }
    notes.extend(s.verification.examples.iter().cloned());
    notes
}

fn checks_rows(checks: Vec<Check>) -> Vec<Vec<String>> {
    checks
        .into_iter()
        .map(|c| vec![pass(c.pass).to_owned(), c.target, c.got])
        .collect()
}

pub fn workloads_text(runs: &[LoadRun]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n50 concurrent workloads (host and NATed containers)");
    let (h, r) = load_table(runs);
    out.push_str(&text_table(&h, &r));
    let _ = writeln!(out, "\nTargets (workloads)");
    out.push_str(&text_table(
        &["", "target", "result"],
        &checks_rows(load_checks(runs)),
    ));
    for n in load_notes(runs) {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

pub fn workloads_markdown(header: &Header, runs: &[LoadRun]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{WORKLOADS_START}");
    let _ = writeln!(out, "## Results: 50 concurrent workloads\n");
    let _ = writeln!(out, "{}\n", header.line());
    let _ = writeln!(out, "{WORKLOADS_METHOD}\n");
    let (h, r) = load_table(runs);
    out.push_str(&md_table(&h, &r));
    let _ = writeln!(out);
    out.push_str(&md_table(
        &["", "target", "result"],
        &checks_rows(load_checks(runs)),
    ));
    let notes = load_notes(runs);
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    let _ = writeln!(out, "{WORKLOADS_END}");
    out
}

pub fn soak_text(s: &SoakRun) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nSoak with churn");
    let (h, r) = soak_summary(s);
    out.push_str(&text_table(&h, &r));
    let (h, r) = soak_samples(s);
    out.push_str(&text_table(&h, &r));
    let _ = writeln!(out, "\nTargets (soak)");
    out.push_str(&text_table(
        &["", "target", "result"],
        &checks_rows(soak_checks(s)),
    ));
    for n in soak_notes(s) {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

pub fn soak_markdown(header: &Header, s: &SoakRun) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{SOAK_START}");
    let _ = writeln!(out, "## Results: soak with churn\n");
    let _ = writeln!(out, "{}\n", header.line());
    let _ = writeln!(out, "{SOAK_METHOD}\n");
    let (h, r) = soak_summary(s);
    out.push_str(&md_table(&h, &r));
    let _ = writeln!(out, "\nSamples:\n");
    let (h, r) = soak_samples(s);
    out.push_str(&md_table(&h, &r));
    let _ = writeln!(out);
    out.push_str(&md_table(
        &["", "target", "result"],
        &checks_rows(soak_checks(s)),
    ));
    let notes = soak_notes(s);
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    let _ = writeln!(out, "{SOAK_END}");
    out
}
