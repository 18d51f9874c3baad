//! Enforce mode, rolled out as the README says: write a policy with an
//! exception for what cannot move yet, run alert mode with it and read what
//! would be dropped, then enforce.
//!
//! Each phase starts its own daemon, writes its own events file next to the
//! first one, and checks every request's verdict and rule (and, in the dry
//! run, `imds.would_drop`) against what [`workloads::Judged`] says.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use imds_sandbox::{Monitor, Place, Stopped, action, imds_monitor_bin};
use serde_json::Value;

use crate::table::{self, Table};
use crate::workloads::{self, Judged};
use crate::{Demo, STOP_WAIT, WorkloadRun, display_path};

/// File names next to the events file.
const POLICY_FILE: &str = "policy.toml";
const DRY_RUN_FILE: &str = "dry-run.json";
const ENFORCE_FILE: &str = "enforce.json";

/// The policy: drop IMDSv1 everywhere, except alert for the UserData script.
fn policy_text() -> String {
    format!(
        "# Enforce mode: drop IMDSv1 reads in the kernel.\n\
         [actions]\n\
         v1_get = \"drop\"\n\
         \n\
         # The launch template's UserData script still reads with plain curl:\n\
         # alert, don't drop, until it asks for a token first.\n\
         [[exception]]\n\
         name = \"{}\"\n\
         systemd_unit = \"cloud-init.service\"\n\
         action = \"alert\"\n",
        workloads::LEGACY_EXCEPTION
    )
}

impl Demo {
    /// A file next to the events file.
    fn sibling(&self, name: &str) -> PathBuf {
        self.events_path.with_file_name(name)
    }

    /// Writes the policy, shows it, and has `imds-monitor policy check` read it.
    pub(crate) fn write_policy(&mut self) -> Result<()> {
        self.out.say(
            "HttpTokens=required is all or nothing for the instance. Enforce mode is per workload:\n\
             the monitor drops IMDSv1 requests in the kernel, except those of the workloads a\n\
             policy names. The UserData script is in launch templates and will take a while to\n\
             rewrite, so the team writes a policy that drops IMDSv1 everywhere else and only\n\
             alerts for the script:",
        );
        let path = self.sibling(POLICY_FILE);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = policy_text();
        fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        let shown = display_path(&path);
        self.out.topic(&shown);
        self.out.quote("|", text.trim_end());
        self.out.blank();
        self.out.say(
            "(systemd_unit names the unit as events do, in imds.workload; cgroup_prefix, \
             container_id and executable name other kinds of workload: docs/policy.md.)",
        );
        self.out.blank();
        self.out
            .say("Checked before anything is dropped: the rules the file amounts to.");
        self.out
            .command(&format!("imds-monitor policy check {shown}"));
        let bin = imds_monitor_bin()?;
        let output = Command::new(&bin)
            .args(["policy", "check"])
            .arg(&shown)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {} policy check", bin.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        self.out.blank();
        self.out.block(stdout.trim_end());
        if !stderr.trim().is_empty() {
            self.out.quote("stderr>", stderr.trim_end());
        }
        let code = output.status.code();
        self.out.blank();
        self.out.say(&format!(
            "Exit status {}: 0 is valid (1 invalid, with FILE:LINE: reason).",
            code.map_or_else(|| "(killed)".to_owned(), |c| c.to_string())
        ));
        if code != Some(0) || !stdout.contains(workloads::LEGACY_EXCEPTION) {
            self.problems.push(format!(
                "imds-monitor policy check exited with {code:?} (expected 0) or does not list \
                 the exception {}: {}{}",
                workloads::LEGACY_EXCEPTION,
                stdout.trim(),
                stderr.trim()
            ));
        }
        Ok(())
    }

    /// Alert mode with the policy: nothing dropped, what enforce mode would
    /// drop marked `imds.would_drop`.
    pub(crate) fn dry_run(&mut self) -> Result<()> {
        self.out.say(
            "Before anything is dropped, the team runs the monitor with the policy in alert\n\
             mode for a while (a day or a week on an instance): nothing is dropped, and every\n\
             request enforce mode would drop is marked imds.would_drop.",
        );
        let judged = workloads::dry_run();
        let (runs, stopped) = self.run_phase("alert", &judged, DRY_RUN_FILE)?;
        let requests = stopped.requests();
        let failed = self.check_judged("dry run", &judged, &runs, &requests);
        self.out
            .topic("What enforce mode would do, from the events");
        self.out.blank();
        self.out
            .block(&requests_table(&runs, &requests, "would_drop", |e| {
                would_drop(e).to_string()
            }));
        let dropped: Vec<&str> = judged
            .iter()
            .filter(|j| j.would_drop)
            .map(|j| j.workload.label)
            .collect();
        let kept: Vec<&str> = judged
            .iter()
            .filter(|j| !j.would_drop)
            .map(|j| j.workload.label)
            .collect();
        self.out.say(&if failed > 0 {
            format!("{failed} check(s) of these events failed: see the end.")
        } else {
            format!(
                "Enforce mode would drop the {}'s reads (the role's credentials, what an SSRF\n\
                 attack asks for) and none of {}'s: the exception holds. On an instance,\n\
                 `jq -c 'select(.imds.would_drop)' EVENTS` lists every request it would drop.",
                dropped.join(" and "),
                kept.join(" and ")
            )
        });
        Ok(())
    }

    /// Enforce mode with the policy: the Docker app is reset, the UserData
    /// script excepted, IMDSv2 untouched; then SIGTERM ends enforcement.
    pub(crate) fn enforce(&mut self) -> Result<()> {
        self.out.say(
            "The Docker app's credential reads are the ones an SSRF attack would make, and its\n\
             owners have the report: the team switches to enforce mode.",
        );
        let judged = workloads::enforced();
        let (runs, stopped) = self.run_phase("enforce", &judged, ENFORCE_FILE)?;
        let requests = stopped.requests();
        let failed = self.check_judged("enforce", &judged, &runs, &requests);
        self.out.topic("Each workload's requests, from the events");
        self.out.blank();
        self.out
            .block(&requests_table(&runs, &requests, "verdict", table::verdict));
        self.out.say(if failed > 0 {
            "These events do not match what the policy says: see the end."
        } else {
            "The dropped read is an alert with event.outcome: failure, its sender named as\n\
             before; the UserData script's reads went through as alerts, by its exception;\n\
             IMDSv2 is never dropped."
        });

        // Enforcement lives as long as the daemon: after SIGTERM, IMDSv1
        // works again.
        self.out.blank();
        self.out.say(
            "SIGTERM (or SIGINT) detaches the monitor, and enforcement ends with it. The Docker\n\
             app once more:",
        );
        let url = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";
        self.out.command(&format!("curl {url}"));
        let res = self.sandbox().curl(
            &Place::Container(workloads::DOCKER),
            &["--max-time", "2", url],
        )?;
        let status = res
            .status
            .map_or_else(|| "no answer".to_owned(), |s| s.to_string());
        self.out.detail(&format!(
            "-> {status}  {}",
            res.body.lines().next().unwrap_or("").trim()
        ));
        if res.status != Some(200) {
            self.problems.push(format!(
                "after the enforcing daemon stopped, the Docker app's IMDSv1 read got {status} \
                 (curl exit {:?}), expected 200: enforcement outlived the daemon",
                res.exit_code
            ));
        }
        if supports_persist() {
            self.out.say(
                "(To keep IMDSv1 blocked across a restart or an upgrade of the daemon, run it\n\
                 with --persist: enforcement then stays until `imds-monitor detach`.)",
            );
        }
        Ok(())
    }

    /// Starts the daemon in `mode` with the policy, runs the workloads,
    /// stops it (SIGTERM) once it printed their requests, writes its events
    /// to `file` next to the events file, and checks how it stopped.
    fn run_phase(
        &mut self,
        mode: &str,
        judged: &[Judged],
        file: &str,
    ) -> Result<(Vec<WorkloadRun>, Stopped)> {
        let policy = self.sibling(POLICY_FILE);
        let policy_arg = policy.to_string_lossy().into_owned();
        let bin = imds_monitor_bin()?;
        self.out.command(&format!(
            "{} run --mode {mode} --policy {}",
            display_path(&bin),
            display_path(&policy)
        ));
        let monitor = Monitor::start(self.sandbox(), &["--mode", mode, "--policy", &policy_arg])
            .with_context(|| format!("imds-monitor --mode {mode} did not start"))?;
        let started = monitor.started_event();
        self.out.detail(&format!(
            "-> started: pid {}, mode {} on {}",
            monitor.pid(),
            table::text(&started, "imds.mode"),
            crate::list(&started, "imds.interfaces"),
        ));
        if table::text(&started, "imds.mode") != mode {
            self.problems.push(format!(
                "imds-monitor --mode {mode} started in mode {}",
                table::text(&started, "imds.mode")
            ));
        }
        let list: Vec<workloads::Workload> = judged.iter().map(|j| j.workload.clone()).collect();
        let want: usize = list.iter().map(|w| w.expect.len()).sum();
        let runs = self.run_each(list)?;

        let _ = monitor.wait_for(STOP_WAIT, |events| {
            events
                .iter()
                .filter(|e| action(e) == "imds-request")
                .count()
                >= want
        });
        self.out.blank();
        self.out.say(&format!(
            "SIGTERM to the daemon (pid {}); it detaches and exits.",
            monitor.pid()
        ));
        let stopped = monitor
            .stop_with(libc::SIGTERM)
            .with_context(|| format!("stopping imds-monitor --mode {mode}"))?;
        if !stopped.status.success() {
            self.problems.push(format!(
                "imds-monitor --mode {mode} exited with {}",
                stopped.status
            ));
        }
        if !stopped.garbage.is_empty() {
            self.problems.push(format!(
                "imds-monitor --mode {mode} printed lines that are not JSON: {:?}",
                stopped.garbage
            ));
        }
        let lost = stopped
            .events
            .last()
            .filter(|e| action(e) == "monitor-stopped")
            .and_then(|e| table::field(e, "imds.counters.lost_events"))
            .and_then(Value::as_u64);
        if lost != Some(0) {
            self.problems.push(format!(
                "imds-monitor --mode {mode}: lost events {lost:?} (or no monitor-stopped line)"
            ));
        }
        self.write_events(&self.sibling(file), &stopped.events)?;
        for event in &stopped.events {
            self.out.json(event);
        }
        if self.args.verbose {
            self.out.topic("The daemon's log (stderr)");
            self.out.quote("log>", stopped.stderr.trim_end());
        }
        Ok((runs, stopped))
    }

    /// Every request's verdict, rule and `would_drop` against what `judged`
    /// says of the workload that sent it; the classes per workload; and that
    /// IMDS never saw a dropped request. Mismatches go to `problems`; returns
    /// how many.
    fn check_judged(
        &mut self,
        phase: &str,
        judged: &[Judged],
        runs: &[WorkloadRun],
        requests: &[&Value],
    ) -> usize {
        let mut problems = Vec::new();
        for event in requests {
            let key = table::workload_key(event);
            if key.is_none() || !runs.iter().any(|r| r.expected == key) {
                problems.push(format!(
                    "an event names {}, which the demo did not run: {event}",
                    table::workload(event, 0)
                ));
            }
        }
        for ((j, run), events) in judged.iter().zip(runs).zip(events_of(runs, requests)) {
            let label = j.workload.label;
            let mut got: Vec<String> = events
                .iter()
                .map(|e| table::text(e, "imds.class"))
                .collect();
            let mut want: Vec<String> = j.workload.expect.iter().map(|c| (*c).to_owned()).collect();
            got.sort();
            want.sort();
            if got != want {
                problems.push(format!(
                    "{label}: expected classes {want:?}, the events say {got:?}"
                ));
            }
            for e in &events {
                let what = format!(
                    "{label}: {} {}",
                    table::text(e, "http.request.method"),
                    table::text(e, "url.path")
                );
                let verdict = table::text(e, "imds.verdict");
                let rule = table::text(e, "imds.policy.rule");
                if verdict != j.verdict || rule != j.rule || would_drop(e) != j.would_drop {
                    problems.push(format!(
                        "{what}: verdict {verdict}, rule {rule}, would_drop {}; expected {}, \
                         {}, {}",
                        would_drop(e),
                        j.verdict,
                        j.rule,
                        j.would_drop
                    ));
                }
                let failed = table::text(e, "event.outcome") == "failure";
                if failed != (verdict == "dropped") {
                    problems.push(format!(
                        "{what}: verdict {verdict} with event.outcome {}",
                        table::text(e, "event.outcome")
                    ));
                }
            }
            let reached = run.requests.len();
            let expected_at_imds = if j.verdict == "dropped" {
                0
            } else {
                j.workload.expect.len()
            };
            if reached != expected_at_imds {
                problems.push(format!(
                    "{label}: IMDS received {reached} requests, expected {expected_at_imds}"
                ));
            }
        }
        let failed = problems.len();
        self.problems
            .extend(problems.into_iter().map(|p| format!("{phase}: {p}")));
        failed
    }
}

/// For each run, the request events that name its workload.
/// Each workload's requests in a phase: classes, IMDS's answers, `column`
/// (the field the phase is about) and the policy rule that decided.
fn requests_table(
    runs: &[WorkloadRun],
    requests: &[&Value],
    column: &str,
    value: fn(&Value) -> String,
) -> String {
    let mut t = Table::new(&[
        "workload",
        "requests",
        "IMDS answered",
        column,
        "imds.policy.rule",
    ]);
    for (run, events) in runs.iter().zip(events_of(runs, requests)) {
        t.row(vec![
            run.workload.label.to_owned(),
            classes(&events),
            answers(run),
            values(&events, value),
            values(&events, |e| table::text(e, "imds.policy.rule")),
        ]);
    }
    t.render()
}

fn events_of<'a>(runs: &[WorkloadRun], requests: &[&'a Value]) -> Vec<Vec<&'a Value>> {
    runs.iter()
        .map(|run| {
            requests
                .iter()
                .copied()
                .filter(|e| run.expected.is_some() && table::workload_key(e) == run.expected)
                .collect()
        })
        .collect()
}

/// `imds.would_drop`, false when absent.
fn would_drop(event: &Value) -> bool {
    table::field(event, "imds.would_drop").and_then(Value::as_bool) == Some(true)
}

/// The events' classes, counted in order: `v1_get ×2`, `v2_token_put, v2_get`.
fn classes(events: &[&Value]) -> String {
    counted(events.iter().map(|e| table::text(e, "imds.class")))
}

/// The statuses IMDS answered a run's requests with; `nothing` when none
/// reached it.
fn answers(run: &WorkloadRun) -> String {
    if run.requests.is_empty() {
        "nothing".to_owned()
    } else {
        counted(run.requests.iter().map(|r| r.status.to_string()))
    }
}

/// The distinct values of `f` over the events, in order; `-` for none.
fn values(events: &[&Value], f: impl Fn(&Value) -> String) -> String {
    let all: Vec<String> = crate::dedup(events.iter().map(|e| f(e)).collect());
    if all.is_empty() {
        "-".to_owned()
    } else {
        all.join(", ")
    }
}

/// Items counted in order of first appearance: `a ×2, b`; `-` for none.
fn counted(items: impl Iterator<Item = String>) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for item in items {
        match counts.iter_mut().find(|(i, _)| *i == item) {
            Some((_, n)) => *n += 1,
            None => counts.push((item, 1)),
        }
    }
    if counts.is_empty() {
        return "-".to_owned();
    }
    counts
        .iter()
        .map(|(i, n)| {
            if *n == 1 {
                i.clone()
            } else {
                format!("{i} ×{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether this build of the daemon has `run --persist` (enforcement that
/// outlives it).
fn supports_persist() -> bool {
    let Ok(bin) = imds_monitor_bin() else {
        return false;
    };
    Command::new(bin)
        .args(["run", "--help"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--persist"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exception_rule_names_the_exception() {
        assert_eq!(
            workloads::LEGACY_RULE,
            format!("exception:{}", workloads::LEGACY_EXCEPTION)
        );
        assert!(policy_text().contains(&format!("name = \"{}\"", workloads::LEGACY_EXCEPTION)));
    }

    #[test]
    fn items_are_counted_in_order() {
        let items = ["v1_get", "v2_get", "v1_get"].map(str::to_owned);
        assert_eq!(counted(items.into_iter()), "v1_get ×2, v2_get");
        assert_eq!(counted(std::iter::empty()), "-");
    }

    #[test]
    fn the_policy_fits_the_screen() {
        for line in policy_text().lines() {
            assert!(
                line.chars().count() <= crate::narrate::MAX_WIDTH - 8,
                "{line}"
            );
        }
    }
}
