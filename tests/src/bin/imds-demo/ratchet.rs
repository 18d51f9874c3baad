//! The ratchet with a real Docker: alert mode sees a legacy container use
//! IMDSv1; `imds-monitor policy suggest` writes a policy with an exception
//! for its image; enforce mode under it drops a new IMDSv1 user while the
//! legacy container, redeployed (new id, new tag), keeps its exception;
//! `imds-monitor report --policy` shows the burn-down.
//!
//! dockerd and containerd run in a sandbox of their own (its host network
//! namespace), removed at the end of the step.

use std::{fs, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use imds_sandbox::{Monitor, Sandbox, imds_monitor_bin, runtimes::Runtimes};
use serde_json::Value;

use crate::{Demo, display_path};

/// A container's one IMDSv1 read (busybox nc), after `wait_s` seconds.
fn v1_script(wait_s: u32) -> String {
    format!(
        "sleep {wait_s}; \
         if printf 'GET /latest/meta-data/iam/info HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\nConnection: close\\r\\n\\r\\n' \
            | nc -w 5 169.254.169.254 80 | grep -q '200 OK'; \
         then echo v1-ok; else echo v1-failed; fi; sleep 600"
    )
}

fn container_requests<'a>(events: &'a [Value], id: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"]["action"] == "imds-request" && e["container"]["id"] == id)
        .collect()
}

fn wait_logs(rt: &Runtimes, name: &str) -> Result<String> {
    for _ in 0..100 {
        let logs = rt.docker_ok(&["logs", name])?;
        if logs.contains("v1-") {
            return Ok(logs);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("container {name} made no request")
}

fn monitor_args<'a>(mode: &'a str, rt: &'a [String], extra: &'a [&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--mode", mode];
    v.extend(rt.iter().map(String::as_str));
    v.extend_from_slice(extra);
    v
}

fn write_events(path: &std::path::Path, events: &[Value]) -> Result<()> {
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

impl Demo {
    pub(crate) fn ratchet(&mut self) -> Result<()> {
        self.out.say(
            "Now with real containers: dockerd and containerd (Debian's packages) run inside \
             a second sandbox's host namespace; images come from a local busybox rootfs.",
        );
        let sb = Sandbox::builder().build()?;
        let rt = Runtimes::start(&sb)?;
        for image in ["legacy-agent:1.0", "legacy-agent:1.1", "newcomer:1.0"] {
            rt.import_busybox(image)?;
        }
        let rt_args = rt.monitor_args();
        let dir = self
            .events_path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let alert_file = dir.join("ratchet-alert.json");
        let policy_file = dir.join("ratchet-policy.toml");
        let enforce_file = dir.join("ratchet-enforce.json");

        // 1. Alert mode: who uses IMDSv1?
        self.out
            .topic("1. Alert mode: a legacy container reads IMDS with v1");
        let monitor = Monitor::start(&sb, &monitor_args("alert", &rt_args, &[]))?;
        self.out
            .command("docker run -d --name legacy legacy-agent:1.0 ...");
        let legacy = rt.docker_run("legacy", "legacy-agent:1.0", &v1_script(1))?;
        monitor.wait_for(Duration::from_secs(30), |events| {
            !container_requests(events, &legacy).is_empty()
        })?;
        let seen = monitor.stop()?;
        write_events(&alert_file, &seen.events)?;
        if let Some(e) = container_requests(&seen.events, &legacy).first() {
            self.out.labelled(
                2,
                "event: ",
                &format!(
                    "container.name={} container.image.name={} container.image.tag={} \
                     imds.enrichment={} imds.workload={}:{}",
                    e["container"]["name"],
                    e["container"]["image"]["name"],
                    e["container"]["image"]["tag"],
                    e["imds"]["enrichment"],
                    e["imds"]["workload"]["kind"],
                    e["imds"]["workload"]["id"]
                ),
            );
        }

        // 2. The suggested policy.
        self.out
            .topic("2. imds-monitor policy suggest: one exception per IMDSv1 user");
        self.out.command(&format!(
            "imds-monitor policy suggest {} -o {}",
            display_path(&alert_file),
            display_path(&policy_file)
        ));
        let bin = imds_monitor_bin()?;
        let out = Command::new(&bin)
            .args(["policy", "suggest"])
            .arg(&alert_file)
            .arg("-o")
            .arg(&policy_file)
            .output()?;
        if !out.status.success() {
            bail!("policy suggest: {}", String::from_utf8_lossy(&out.stderr));
        }
        let policy = fs::read_to_string(&policy_file)?;
        self.out.block(&policy);
        if !policy.contains("image = \"legacy-agent\"") {
            self.problems
                .push("the suggested policy has no exception for image legacy-agent".into());
        }

        // 3. Enforce; the legacy container is redeployed, a new one appears.
        self.out
            .topic("3. Enforce it; legacy is redeployed (new id, tag 1.1), a new workload appears");
        rt.docker_ok(&["rm", "-f", "legacy"])?;
        let policy_arg = policy_file.display().to_string();
        let monitor = Monitor::start(
            &sb,
            &monitor_args("enforce", &rt_args, &["--policy", &policy_arg]),
        )?;
        self.out
            .command("docker run -d --name legacy2 legacy-agent:1.1 ...");
        let redeployed = rt.docker_run("legacy2", "legacy-agent:1.1", &v1_script(2))?;
        self.out
            .command("docker run -d --name newcomer newcomer:1.0 ...");
        let newcomer = rt.docker_run("newcomer", "newcomer:1.0", &v1_script(2))?;
        let legacy_log = wait_logs(&rt, "legacy2")?;
        let newcomer_log = wait_logs(&rt, "newcomer")?;
        monitor.wait_for(Duration::from_secs(20), |events| {
            !container_requests(events, &newcomer).is_empty()
                && !container_requests(events, &redeployed).is_empty()
        })?;
        let enforced = monitor.stop()?;
        write_events(&enforce_file, &enforced.events)?;
        for (name, id, log, want_ok) in [
            ("legacy2", &redeployed, &legacy_log, true),
            ("newcomer", &newcomer, &newcomer_log, false),
        ] {
            let e = container_requests(&enforced.events, id);
            let e = e.first().context("no event")?;
            self.out.labelled(
                2,
                &format!("{name}: "),
                &format!(
                    "{} (image {}:{}) -> imds.verdict={} imds.policy.rule={}",
                    if log.contains("v1-ok") {
                        "IMDSv1 answered"
                    } else {
                        "IMDSv1 reset"
                    },
                    e["container"]["image"]["name"].as_str().unwrap_or("?"),
                    e["container"]["image"]["tag"].as_str().unwrap_or("?"),
                    e["imds"]["verdict"],
                    e["imds"]["policy"]["rule"]
                ),
            );
            if log.contains("v1-ok") != want_ok {
                self.problems.push(format!(
                    "{name}: IMDSv1 {} under the suggested policy",
                    if want_ok {
                        "was dropped"
                    } else {
                        "got through"
                    }
                ));
            }
        }

        // 4. The burn-down.
        self.out
            .topic("4. imds-monitor report --policy: the burn-down");
        self.out.command(&format!(
            "imds-monitor report --policy {} {}",
            display_path(&policy_file),
            display_path(&enforce_file)
        ));
        let out = Command::new(&bin)
            .arg("report")
            .arg("--policy")
            .arg(&policy_file)
            .arg(&enforce_file)
            .output()?;
        let report = String::from_utf8_lossy(&out.stdout);
        if let Some(at) = report.find("Burn-down of") {
            self.out.block(report[at..].trim_end());
        } else {
            self.problems
                .push("report --policy printed no burn-down".into());
        }
        drop(rt);
        drop(sb);
        Ok(())
    }
}
