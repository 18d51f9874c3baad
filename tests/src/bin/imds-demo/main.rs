//! `imds-demo`: the IMDSv1 migration story, told in an EC2-like sandbox.
//!
//! Brings up network namespaces wired like an EC2 instance (mock IMDS, host,
//! a Docker container and a Kubernetes pod container), starts the real
//! `imds-monitor` daemon in alert mode, runs the workloads a typical host
//! has, lets the team try `HttpTokens=required` (and roll back), stops the
//! daemon, shows who sent each request and the diagnostics it raised, and
//! runs the real `imds-monitor report` over the events. Then it rolls out
//! enforce mode as the README says: a policy with an exception for the
//! legacy UserData script, a dry run in alert mode that marks what would be
//! dropped, then enforce mode, where the Docker app's IMDSv1 read is reset in
//! the kernel. It ends with the fixes.
//! `cargo xtask demo` builds everything and runs this with
//! `IMDS_MONITOR_BIN` set.
//!
//! The story is a list of [`STEPS`]; each step is a function on [`Demo`].
//! Anything that does not go as the story says (a sender, a diagnostic or a
//! verdict other than expected) makes the demo exit non-zero.
//!
//! Nothing is sent from this machine's own network namespace: every workload
//! runs inside the sandbox, whose namespaces are linked only to each other.

mod narrate;
mod ratchet;
mod rollout;
mod table;
mod workloads;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use imds_sandbox::{
    ImdsRequest, Monitor, Place, Sandbox, Stopped, action, imds_client_bin, imds_monitor_bin,
    is_root, topology,
};
use serde_json::Value;

use crate::narrate::Narrator;
use crate::table::Table;
use crate::workloads::Workload;

/// The last word of the summary: enforce mode, and how to roll it out.
const ENFORCE_NOTE: &str = "Until then, enforce mode protects the instance: `imds-monitor run \
--mode enforce --policy FILE` drops IMDSv1 requests in the kernel (the client's connection is \
reset at once), except those of the workloads the policy's exceptions name. Roll it out as above: \
run --mode alert --policy FILE, read what would be dropped (imds.would_drop in the events), then \
switch to --mode enforce.";

/// How a script reads IMDS with a token (IMDSv2), for the summary.
const TOKEN_SCRIPT: &str = "\
TOKEN=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' \\
        http://169.254.169.254/latest/api/token)
ID=$(curl -s -H \"X-aws-ec2-metadata-token: $TOKEN\" \\
        http://169.254.169.254/latest/meta-data/instance-id)";

/// Arguments of the daemon: alert on every IMDSv1 request.
const MONITOR_ARGS: &[&str] = &["--mode", "alert"];

/// Longest path shown in the table.
const PATH_COLUMN_CHARS: usize = 46;

/// Characters of a pod UID shown in tables (the report shows it whole).
const POD_ID_CHARS: usize = 8;

/// How far the report's wrapped lines are indented further.
const REPORT_HANG: usize = 6;

/// How long to wait for the `imds-v1-rejected` alerts while the daemon runs.
const LIVE_ALERT_WAIT: Duration = Duration::from_secs(2);

/// How long to wait for the last events before stopping the daemon.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Tolerance between the demo's clock and the events' timestamps, seconds.
const CLOCK_SLACK: f64 = 0.05;

/// Order of classes in summaries: the ones that matter for the migration first.
const CLASS_ORDER: &[&str] = &[
    "v1_get",
    "v2_token_put",
    "v2_get",
    "other_cloud",
    "invalid",
    "incomplete",
];

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Shows imds-monitor finding IMDSv1 callers in an EC2-like sandbox \
             (network namespaces on this machine; needs root)",
    after_help = "Run it through `cargo xtask demo [-- ARGS]`, which builds imds-monitor and \
                  sets IMDS_MONITOR_BIN."
)]
struct Args {
    /// Where to write every JSON line the monitor printed
    /// [default: <target dir>/imds-demo/events.json]
    #[arg(long, value_name = "PATH")]
    events: Option<PathBuf>,

    /// Also print the monitor's raw JSON lines, on stdout; the narration and
    /// the table then go to stderr (so `imds-demo --json | jq` works).
    #[arg(long)]
    json: bool,

    /// Also show the daemon's own log (its stderr).
    #[arg(long)]
    verbose: bool,
}

/// One step of the story.
struct Step {
    title: &'static str,
    run: fn(&mut Demo) -> Result<()>,
}

const STEPS: &[Step] = &[
    Step {
        title: "An EC2-like instance, in network namespaces on this machine",
        run: Demo::bring_up_sandbox,
    },
    Step {
        title: "Start imds-monitor in alert mode",
        run: Demo::start_monitor,
    },
    Step {
        title: "The workloads of a typical instance call IMDS",
        run: Demo::run_workloads,
    },
    Step {
        title: "The team tries HttpTokens=required",
        run: Demo::try_v2_only,
    },
    Step {
        title: "Stop the monitor: every request, and who sent it",
        run: Demo::stop_and_show,
    },
    Step {
        title: "The diagnostics it raised, and their fixes",
        run: Demo::show_diagnostics,
    },
    Step {
        title: "imds-monitor report: who is in the way, is v2-only safe?",
        run: Demo::run_report,
    },
    Step {
        title: "Enforce mode, 1: a policy with an exception for the UserData script",
        run: Demo::write_policy,
    },
    Step {
        title: "Enforce mode, 2: a dry run in alert mode: what would be dropped?",
        run: Demo::dry_run,
    },
    Step {
        title: "Enforce mode, 3: IMDSv1 dropped in the kernel, the exception alerted",
        run: Demo::enforce,
    },
    Step {
        title: "The ratchet, with real Docker: suggest, enforce, redeploy, burn down",
        run: Demo::ratchet,
    },
    Step {
        title: "What this tells you",
        run: Demo::summarize,
    },
];

/// What one workload did: its requests as the mock IMDS received them.
struct WorkloadRun {
    workload: Workload,
    /// The sender the daemon must name: `(imds.workload.kind, .id)`.
    expected: Option<(String, String)>,
    /// When it started, in seconds since the Unix epoch.
    started: f64,
    requests: Vec<ImdsRequest>,
}

/// State carried from step to step. Field order is drop order: the daemon
/// stops before the sandbox goes away.
struct Demo {
    args: Args,
    out: Narrator,
    monitor: Option<Monitor>,
    stopped: Option<Stopped>,
    runs: Vec<WorkloadRun>,
    /// For each `imds-request` event (in order), the index of the run that
    /// made it, as far as the mock's log tells.
    ran_by: Vec<Option<usize>>,
    /// Things that did not go as the story says; any of them fails the demo.
    problems: Vec<String>,
    events_path: PathBuf,
    /// `imds-monitor report --format json` of the events.
    report: Option<Value>,
    sandbox: Option<Sandbox>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut out = Narrator::new(args.json);
    catch_interrupts();
    if let Err(e) = preflight() {
        let _ = writeln!(std::io::stderr(), "imds-demo: {e:#}");
        return ExitCode::FAILURE;
    }
    out.banner(
        "imds-monitor demo: who still calls IMDSv1 on this instance?",
        "Before setting HttpTokens=required, find every caller that would then get \
         \"401 - Unauthorized\".",
    );
    let events_path = args.events.clone().unwrap_or_else(default_events_path);
    let mut demo = Demo {
        args,
        out,
        monitor: None,
        stopped: None,
        runs: Vec::new(),
        ran_by: Vec::new(),
        problems: Vec::new(),
        events_path,
        report: None,
        sandbox: None,
    };
    let started = Instant::now();
    for (i, step) in STEPS.iter().enumerate() {
        demo.out.step(i + 1, STEPS.len(), step.title);
        if let Err(e) = check_interrupted().and_then(|()| (step.run)(&mut demo)) {
            demo.out.flush();
            drop(demo);
            if INTERRUPTED.load(Ordering::SeqCst) {
                eprintln!("\nimds-demo: interrupted; the sandbox is removed");
            } else {
                eprintln!(
                    "\nimds-demo: failed at step {} ({}): {e:#}",
                    i + 1,
                    step.title
                );
            }
            return ExitCode::FAILURE;
        }
    }
    demo.out.blank();
    demo.out.say(&format!(
        "(demo took {:.1} s; the sandbox is removed on exit)",
        started.elapsed().as_secs_f64()
    ));
    demo.out.flush();
    let problems = std::mem::take(&mut demo.problems);
    drop(demo);
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "\nimds-demo: the monitor's events or report did not match what the workloads did:"
        );
        for p in &problems {
            eprintln!("  - {p}");
        }
        ExitCode::FAILURE
    }
}

/// Set by SIGINT or SIGTERM. The daemon and the workloads get Ctrl-C too
/// (same process group) and stop; the demo then stops at the next check and
/// removes the sandbox instead of leaving it for the next run to clean.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        // Handlers are reset to the default on exec, so the daemon and the
        // workloads keep the default behaviour. A signal that was ignored
        // when the demo started (a background job) stays ignored.
        unsafe {
            let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
            if libc::signal(signal, handler) == libc::SIG_IGN {
                libc::signal(signal, libc::SIG_IGN);
            }
        }
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Fails early, with a hint, when the demo cannot work.
fn preflight() -> Result<()> {
    if !is_root() {
        bail!(
            "needs root: it creates network namespaces and cgroups and the monitor loads eBPF \
             programs. Run `cargo xtask demo` as root."
        );
    }
    let monitor = imds_monitor_bin().context("run `cargo xtask demo`, which builds it")?;
    if !monitor.is_file() {
        bail!(
            "the imds-monitor daemon is not built ({} does not exist): run `cargo xtask demo`, \
             which builds it and sets IMDS_MONITOR_BIN",
            monitor.display()
        );
    }
    imds_client_bin().context("run `cargo xtask demo`, which builds it")?;
    let missing: Vec<&str> = ["ip", "nft", "curl", "sh"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing on PATH: {} (`cargo xtask setup` installs them)",
            missing.join(", ")
        );
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// `<target dir>/imds-demo/events.json`, the target directory being the one
/// this binary was built into (`target/release/imds-demo`).
fn default_events_path() -> PathBuf {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let profile_dir = exe.parent()?;
        let name = profile_dir.file_name()?.to_str()?;
        matches!(name, "release" | "debug").then(|| profile_dir.parent().map(Path::to_path_buf))?
    });
    from_exe
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("imds-demo/events.json")
}

/// `path` relative to the working directory when it is below it.
fn display_path(path: &Path) -> String {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Shortens 32+ digit hex ids (container ids) to 12 digits, as `docker ps` does.
fn abbreviate_ids(s: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 32 {
            out.push_str(&run[..12]);
            out.push('…');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in s.chars() {
        if c.is_ascii_hexdigit() && !c.is_ascii_uppercase() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

impl Demo {
    fn sandbox(&self) -> &Sandbox {
        self.sandbox.as_ref().expect("step 1 built the sandbox")
    }

    /// A place's cgroup below the sandbox root, ids shortened.
    fn describe_place(&self, place: &Place) -> String {
        let sb = self.sandbox();
        let cgroup = sb
            .cgroup(place)
            .map(|c| c.rel().to_owned())
            .unwrap_or_default();
        let rel = cgroup
            .strip_prefix(sb.root_cgroup().rel())
            .unwrap_or(&cgroup)
            .trim_start_matches('/');
        // A container's cgroup is long and shown in step 1: name it instead.
        if let Place::Container(i) = place
            && let Some(c) = sb.containers().get(*i)
        {
            return match c.runtime() {
                imds_sandbox::Runtime::Docker => {
                    format!("container {i}: Docker {}", abbreviate_ids(c.id()))
                }
                imds_sandbox::Runtime::Kubernetes(_) => format!(
                    "container {i}: {}",
                    table::workload_name("pod", c.pod_uid().unwrap_or("?"), POD_ID_CHARS)
                ),
            };
        }
        format!("host, cgroup {}", abbreviate_ids(rel))
    }

    fn bring_up_sandbox(&mut self) -> Result<()> {
        let started = Instant::now();
        let sb = Sandbox::builder()
            .hop_limit(1)
            .tokens_required(false)
            .containers(&workloads::containers())
            .build()
            .context("cannot build the sandbox")?;
        let config = sb.imds().config();
        let ns = |suffix: &str| {
            sb.netns_names()
                .into_iter()
                .find(|n| n.ends_with(suffix))
                .unwrap_or_default()
        };
        let out = &mut self.out;
        out.say(&format!(
            "Built in {:.2} s, sandbox id {}:",
            started.elapsed().as_secs_f64(),
            sb.id()
        ));
        out.blank();
        // A label column of 12, then the facts, wrapped under it.
        let cont = " ".repeat(12);
        out.labelled(
            2,
            "mock IMDS   ",
            &format!(
                "{} and {} (port 80), in netns {}",
                topology::IMDS_V4,
                topology::IMDS_V6,
                ns("-imds")
            ),
        );
        out.labelled(
            2,
            &cont,
            &format!(
                "instance {} ({}), role {}",
                config.instance_id,
                config.instance_type,
                config.role_name.as_deref().unwrap_or("(none)")
            ),
        );
        out.labelled(
            2,
            &cont,
            &format!(
                "HttpTokens={}, HttpPutResponseHopLimit={}: an instance launched with the defaults",
                if config.tokens_required {
                    "required"
                } else {
                    "optional"
                },
                config.hop_limit
            ),
        );
        out.labelled(
            2,
            "EC2 host    ",
            &format!(
                "netns {}: {} {} / {} (route to IMDS),",
                ns("-host"),
                sb.host_ifname(),
                topology::HOST_V4,
                topology::HOST_V6
            ),
        );
        out.labelled(
            2,
            &cont,
            &format!(
                "{} {} / {}, forwarding and masquerade like Docker",
                sb.bridge_ifname(),
                topology::BRIDGE_V4,
                topology::BRIDGE_V6
            ),
        );
        for c in sb.containers() {
            let kind = match c.runtime() {
                imds_sandbox::Runtime::Docker => "Docker container".to_owned(),
                imds_sandbox::Runtime::Kubernetes(qos) => format!("Kubernetes pod ({qos:?})"),
            };
            out.labelled(
                2,
                &format!("{:<12}", format!("container {}", c.index())),
                &format!(
                    "{kind}: netns {}, {} / {} behind {}",
                    c.netns().name(),
                    c.ipv4(),
                    c.ipv6(),
                    c.host_veth()
                ),
            );
            // Cgroup paths have no spaces: broken after a `/`.
            let path = abbreviate_ids(c.cgroup().rel());
            for (i, part) in narrate::chop(&path, narrate::MAX_WIDTH - 21, &['/'])
                .iter()
                .enumerate()
            {
                let label = if i == 0 { "cgroup " } else { "       " };
                out.say(&format!("{cont}{label}{part}"));
            }
        }
        out.labelled(
            2,
            "cgroups     ",
            &format!(
                "below {} (systemd, Docker and kubelet naming)",
                sb.root_cgroup().path().display()
            ),
        );
        out.blank();
        out.say(
            "These namespaces are linked only to each other: nothing reaches this machine's\n\
             network, and 169.254.169.254 here is the mock.",
        );
        self.sandbox = Some(sb);
        Ok(())
    }

    fn start_monitor(&mut self) -> Result<()> {
        let bin = imds_monitor_bin()?;
        self.out.say(&format!(
            "{} run {}",
            display_path(&bin),
            MONITOR_ARGS.join(" ")
        ));
        self.out.say(&format!(
            "in the EC2 host ({}).\n\
             It finds the interface that routes to IMDS and attaches an eBPF TC egress\n\
             classifier there; requests are classified in the kernel.",
            self.describe_place(&Place::service("imds-monitor"))
        ));
        let monitor =
            Monitor::start(self.sandbox(), MONITOR_ARGS).context("imds-monitor did not start")?;
        let started = monitor.started_event();
        self.out.blank();
        self.out.say("Its first line:");
        // One JSON line, shown broken after commas to fit the screen.
        let parts = narrate::chop(&started.to_string(), narrate::MAX_WIDTH - 12, &[',']);
        for (i, part) in parts.iter().enumerate() {
            self.out.quote(if i == 0 { "json>" } else { "     " }, part);
        }
        self.out.blank();
        self.out.say(&format!(
            "mode {}, watching {} on {} (attached with {})",
            table::text(&started, "imds.mode"),
            list(&started, "imds.endpoints"),
            list(&started, "imds.interfaces"),
            table::text(&started, "imds.attach_method"),
        ));
        self.monitor = Some(monitor);
        Ok(())
    }

    fn run_workloads(&mut self) -> Result<()> {
        self.run_list(workloads::workloads())
    }

    /// Runs `list` one after the other, keeping what IMDS received from each.
    fn run_list(&mut self, list: Vec<Workload>) -> Result<()> {
        let runs = self.run_each(list)?;
        self.runs.extend(runs);
        Ok(())
    }

    /// Runs `list` one after the other; returns what IMDS received from each.
    fn run_each(&mut self, list: Vec<Workload>) -> Result<Vec<WorkloadRun>> {
        let mut runs = Vec::new();
        for workload in list {
            check_interrupted()?;
            let place = workload.place.clone();
            self.out.topic(&format!(
                "{} [{}]",
                workload.title,
                self.describe_place(&place)
            ));
            self.out.say(&indent(workload.story, "  "));
            let sb = self.sandbox.as_ref().context("no sandbox")?;
            let expected = expected_workload(sb, &place);
            let started = unix_now();
            let before = sb.imds_log().len();
            (workload.run)(sb, &place, &mut self.out)
                .with_context(|| format!("workload {:?}", workload.label))?;
            let requests = self.sandbox().imds_log().split_off(before);
            runs.push(WorkloadRun {
                workload,
                expected,
                started,
                requests,
            });
        }
        Ok(runs)
    }

    /// Flips the mock to `HttpTokens=required`, runs the v2-only trial, and
    /// flips it back, as a team that sees things break rolls back.
    fn try_v2_only(&mut self) -> Result<()> {
        let instance = self.sandbox().imds().config().instance_id;
        self.out.say(
            "Sure that everything on the instance uses current SDKs, the team requires IMDSv2:",
        );
        self.out.command(&format!(
            "aws ec2 modify-instance-metadata-options --instance-id {instance} --http-tokens required"
        ));
        self.sandbox()
            .imds()
            .update_config(|c| c.tokens_required = true);
        let first = self.runs.len();
        let ran = self.run_list(workloads::v2_only_trial());
        // Back to HttpTokens=optional whatever happened: the rest of the
        // demo, and the next run, start from an instance's defaults.
        self.sandbox()
            .imds()
            .update_config(|c| c.tokens_required = false);
        ran?;

        // The monitor is still running: its alerts are there already.
        let want = self.runs[first..]
            .iter()
            .flat_map(|r| r.workload.diagnostics)
            .filter(|d| **d == workloads::V1_REJECTED)
            .count();
        let monitor = self
            .monitor
            .as_ref()
            .context("the monitor is not running")?;
        let events = monitor
            .wait_for(LIVE_ALERT_WAIT, |events| {
                events
                    .iter()
                    .filter(|e| action(e) == workloads::V1_REJECTED)
                    .count()
                    >= want
            })
            .unwrap_or_else(|_| monitor.events());
        let rejected: Vec<&Value> = events
            .iter()
            .filter(|e| action(e) == workloads::V1_REJECTED)
            .collect();
        self.out.blank();
        match rejected.first() {
            Some(first) => {
                let processes: Vec<String> = rejected.iter().map(|e| table::process(e)).collect();
                self.out.say(&format!(
                    "The monitor, still running, alerted at once: {} ×{} naming {} ({}).",
                    workloads::V1_REJECTED,
                    rejected.len(),
                    table::workload(first, 0),
                    dedup(processes).join(", ")
                ));
            }
            None => self.out.say(&format!(
                "The monitor has not raised {} yet (checked after it stops).",
                workloads::V1_REJECTED
            )),
        }
        self.out
            .say("The team rolls back (the mock is HttpTokens=optional again from here on):");
        self.out.command(&format!(
            "aws ec2 modify-instance-metadata-options --instance-id {instance} --http-tokens optional"
        ));
        Ok(())
    }

    fn stop_and_show(&mut self) -> Result<()> {
        let stopped = self.stop_monitor()?;
        let requests: Vec<&Value> = stopped.requests();
        self.ran_by = attribute(&requests, &self.runs);
        self.check_requests(&requests, &stopped);
        let start = stopped
            .events
            .iter()
            .find(|e| action(e) == "monitor-started")
            .and_then(|e| table::parse_timestamp(&table::text(e, "@timestamp")));
        self.show_requests(&requests, start);
        self.show_senders(&requests, start);
        self.show_counters(&stopped);
        self.write_events(&self.events_path.clone(), &stopped.events)?;
        for event in &stopped.events {
            self.out.json(event);
        }
        if self.args.verbose {
            self.out.topic("The daemon's log (stderr)");
            self.out.quote("log>", stopped.stderr.trim_end());
        }
        self.stopped = Some(stopped);
        Ok(())
    }

    /// Waits for the daemon to print every request IMDS received and every
    /// diagnostic expected, then SIGINT; notes what went wrong in `problems`.
    fn stop_monitor(&mut self) -> Result<Stopped> {
        let total: usize = self.runs.iter().map(|r| r.requests.len()).sum();
        let diagnostics: usize = self.runs.iter().map(|r| r.workload.diagnostics.len()).sum();
        let monitor = self.monitor.take().context("the monitor is not running")?;
        // The kernel saw every request and response before the workloads
        // finished; give the daemon's ring buffer reader a moment to print
        // them. Missing diagnostics are reported by the checks after.
        let _ = monitor.wait_for(STOP_WAIT, |events| {
            let requests = events
                .iter()
                .filter(|e| action(e) == "imds-request")
                .count();
            let diags = events.iter().filter(|e| is_diagnostic(e)).count();
            requests >= total && diags >= diagnostics
        });
        let printed = monitor
            .events()
            .iter()
            .filter(|e| action(e) == "imds-request")
            .count();
        if printed < total {
            self.problems.push(format!(
                "IMDS received {total} requests but the monitor printed {printed} within {STOP_WAIT:?}"
            ));
        }
        self.out.say(&format!(
            "SIGINT to the daemon (pid {}); it detaches and prints its counters.",
            monitor.pid()
        ));
        let stopped = monitor.stop().context("stopping imds-monitor")?;
        if !stopped.status.success() {
            self.problems
                .push(format!("imds-monitor exited with {}", stopped.status));
        }
        if !stopped.garbage.is_empty() {
            self.problems.push(format!(
                "imds-monitor printed lines that are not JSON: {:?}",
                stopped.garbage
            ));
        }
        Ok(stopped)
    }

    /// What was asked: one row per `imds-request` event.
    fn show_requests(&mut self, requests: &[&Value], start: Option<f64>) {
        let mut t = Table::new(&["time", "class", "verdict", "method", "path"]);
        for event in requests {
            t.row(vec![
                table::relative_time(event, start),
                table::class(event),
                table::verdict(event),
                table::text(event, "http.request.method"),
                table::path(event, PATH_COLUMN_CHARS),
            ]);
        }
        let mut classes: BTreeMap<String, usize> = BTreeMap::new();
        for e in requests {
            *classes.entry(table::text(e, "imds.class")).or_default() += 1;
        }
        let rank = |c: &str| {
            CLASS_ORDER
                .iter()
                .position(|k| *k == c)
                .unwrap_or(usize::MAX)
        };
        let mut ordered: Vec<(&String, &usize)> = classes.iter().collect();
        ordered.sort_by_key(|(c, _)| rank(c));
        let counts: Vec<String> = ordered.iter().map(|(c, n)| format!("{n} {c}")).collect();
        self.out.topic(&format!(
            "{} imds-request events: {} (ALERTED = an alert event)",
            requests.len(),
            counts.join(", ")
        ));
        self.out.blank();
        if t.is_empty() {
            self.out.block("(none)");
        } else {
            self.out.block(&t.render());
        }
    }

    /// Who asked, in the events' own words; mismatches with what the demo
    /// started are marked (and fail the demo, see `check_requests`).
    fn show_senders(&mut self, requests: &[&Value], start: Option<f64>) {
        let sources: Vec<String> = dedup(
            requests
                .iter()
                .map(|e| table::text(e, "source.ip"))
                .collect(),
        );
        self.out.topic("Who sent them, according to the events");
        self.out.say(&format!(
            "They all left with source address {} (the host's; the containers' after NAT),\n\
             which tells nothing. Each event names its sender instead:",
            sources.join(", ")
        ));
        self.out.blank();
        let mut t = Table::new(&["time", "workload (imds.workload)", "process", "executable"]);
        let mut mismatches = 0;
        for (i, event) in requests.iter().enumerate() {
            let mut executable = short_executable(&table::text(event, "process.executable"));
            if let Some(want) = self.sender_mismatch(event, self.ran_by.get(i).copied().flatten()) {
                mismatches += 1;
                executable.push_str(&format!("  <- NOT {want}"));
            }
            t.row(vec![
                table::relative_time(event, start),
                table::workload(event, POD_ID_CHARS),
                table::process(event),
                executable,
            ]);
        }
        self.out.block(&t.render());
        self.out.say(&if mismatches == 0 {
            format!(
                "Each is the workload the demo started the request in ({} of {}; the demo\n\
                 matches events to its workloads by the connections the mock IMDS logged).",
                requests.len(),
                requests.len()
            )
        } else {
            format!(
                "{mismatches} of {} events name a sender other than the workload the demo \
                 started (marked <- NOT): attribution is wrong.",
                requests.len()
            )
        });
    }

    /// The workload the demo started `event`'s request in, when the event
    /// names another (or none).
    fn sender_mismatch(&self, event: &Value, run: Option<usize>) -> Option<String> {
        let want = self.runs[run?].expected.as_ref()?;
        let got = table::workload_key(event);
        (got.as_ref() != Some(want)).then(|| table::workload_name(&want.0, &want.1, POD_ID_CHARS))
    }

    fn show_counters(&mut self, stopped: &Stopped) {
        match stopped
            .events
            .last()
            .filter(|e| action(e) == "monitor-stopped")
        {
            Some(last) => {
                self.out.topic("Counters from the monitor-stopped line");
                for line in table::counters(last) {
                    for part in narrate::wrap(&line, narrate::MAX_WIDTH - 6, 2) {
                        self.out.detail(&part);
                    }
                }
            }
            None => self
                .problems
                .push("the daemon's last line is not monitor-stopped".to_owned()),
        }
    }

    /// Writes every JSON line to an events file, replacing an older one.
    fn write_events(&mut self, path: &Path, events: &[Value]) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut text = String::new();
        for event in events {
            text.push_str(&event.to_string());
            text.push('\n');
        }
        fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        let mut actions: BTreeMap<&str, usize> = BTreeMap::new();
        for event in events {
            *actions.entry(action(event)).or_default() += 1;
        }
        self.out.topic(&format!(
            "All {} JSON lines are in {}{}",
            events.len(),
            display_path(path),
            if self.out.json_on_stdout() {
                " and on stdout"
            } else {
                " (--json prints them)"
            }
        ));
        let counts: Vec<String> = actions.iter().map(|(a, n)| format!("{a}={n}")).collect();
        for part in narrate::wrap(&counts.join(", "), narrate::MAX_WIDTH - 6, 0) {
            self.out.detail(&part);
        }
        Ok(())
    }

    /// Compares the requests the monitor reported with what the workloads
    /// did: classes per workload, and the sender each event names.
    fn check_requests(&mut self, requests: &[&Value], stopped: &Stopped) {
        for (event, by) in requests.iter().zip(&self.ran_by) {
            match by {
                None => self.problems.push(format!(
                    "an imds-request event matches no request IMDS received: {event}"
                )),
                Some(i) => {
                    if let Some(want) = self.sender_mismatch(event, Some(*i)) {
                        self.problems.push(format!(
                            "{}: the event of {} {} names {} ({}), not {want}",
                            self.runs[*i].workload.label,
                            table::text(event, "http.request.method"),
                            table::text(event, "url.path"),
                            table::workload(event, 0),
                            table::process(event),
                        ));
                    }
                }
            }
        }
        for (i, run) in self.runs.iter().enumerate() {
            let mut got: Vec<String> = requests
                .iter()
                .zip(&self.ran_by)
                .filter(|(_, by)| **by == Some(i))
                .map(|(e, _)| table::text(e, "imds.class"))
                .collect();
            let mut want: Vec<String> = run
                .workload
                .expect
                .iter()
                .map(|c| (*c).to_owned())
                .collect();
            got.sort();
            want.sort();
            if got != want {
                self.problems.push(format!(
                    "{}: expected classes {want:?}, the monitor reported {got:?} \
                     (IMDS received {} requests)",
                    run.workload.label,
                    run.requests.len()
                ));
            }
        }
        if let Some(last) = stopped.events.last() {
            let lost = table::field(last, "imds.counters.lost_events").and_then(Value::as_u64);
            if lost.is_some_and(|n| n > 0) {
                self.problems
                    .push(format!("the monitor lost {} events", lost.unwrap_or(0)));
            }
        }
    }

    /// The run that made the request an event is about: the latest one
    /// whose logged requests include its connection, method and path.
    fn run_of(&self, event: &Value) -> Option<usize> {
        let ip: Option<IpAddr> = table::text(event, "source.ip").parse().ok();
        let port = table::field(event, "source.port").and_then(Value::as_u64);
        let method = table::text(event, "http.request.method");
        let path = table::text(event, "url.path");
        let time = table::parse_timestamp(&table::text(event, "@timestamp"));
        let matches: Vec<usize> = (0..self.runs.len())
            .filter(|&i| {
                self.runs[i].requests.iter().any(|r| {
                    Some(r.peer.ip()) == ip
                        && Some(u64::from(r.peer.port())) == port
                        && r.method == method
                        && r.path == path
                })
            })
            .collect();
        // A port reused by a later workload: the one running at the time.
        matches
            .iter()
            .rev()
            .find(|&&i| time.is_none_or(|t| self.runs[i].started <= t + CLOCK_SLACK))
            .or(matches.first())
            .copied()
    }

    /// The diagnostics, grouped by workload and kind, each with its message
    /// and fix; then checked against what each workload should raise.
    fn show_diagnostics(&mut self) -> Result<()> {
        let stopped = self.stopped.take().context("the monitor was not stopped")?;
        let diagnostics: Vec<&Value> = stopped.events.iter().filter(|e| is_diagnostic(e)).collect();
        self.out.say(&format!(
            "Besides a line per request, the monitor joined requests to IMDS's answers and\n\
             raised {} diagnostics: what breaks the migration, for whom, and the fix.",
            diagnostics.len()
        ));

        // Groups in order of first appearance: (workload, action) -> events.
        let mut groups: Vec<(GroupKey, Vec<&Value>)> = Vec::new();
        for event in &diagnostics {
            let key = (table::workload_key(event), action(event).to_owned());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, events)) => events.push(event),
                None => groups.push((key, vec![event])),
            }
        }
        for ((_, name), events) in &groups {
            let first = events[0];
            let processes: Vec<String> = events.iter().map(|e| table::process(e)).collect();
            let times = if events.len() == 1 {
                String::new()
            } else {
                format!(" ×{}", events.len())
            };
            self.out.blank();
            self.out.labelled(
                4,
                &format!("{name}{times}  "),
                &format!(
                    "{}, {}",
                    table::workload(first, POD_ID_CHARS),
                    dedup(processes).join(", ")
                ),
            );
            self.out.labelled(6, "", &table::text(first, "message"));
            self.out
                .labelled(6, "fix: ", &table::text(first, "imds.diagnostic.fix"));
        }

        // Per workload the demo ran: exactly the diagnostics it should raise.
        let mut got: Vec<Vec<String>> = vec![Vec::new(); self.runs.len()];
        for event in &diagnostics {
            let Some(i) = self.run_of(event) else {
                self.problems.push(format!(
                    "a {} diagnostic matches no request IMDS received: {}",
                    action(event),
                    table::text(event, "message")
                ));
                continue;
            };
            if let Some(want) = self.sender_mismatch(event, Some(i)) {
                self.problems.push(format!(
                    "{}: its {} diagnostic names {}, not {want}",
                    self.runs[i].workload.label,
                    action(event),
                    table::workload(event, 0)
                ));
            }
            got[i].push(action(event).to_owned());
        }
        let mut bad = 0;
        for (run, mut got) in self.runs.iter().zip(got) {
            let mut want: Vec<String> = run
                .workload
                .diagnostics
                .iter()
                .map(|d| (*d).to_owned())
                .collect();
            got.sort();
            want.sort();
            if got != want {
                bad += 1;
                self.problems.push(format!(
                    "{}: expected the diagnostics {want:?}, the monitor raised {got:?}",
                    run.workload.label
                ));
            }
        }
        self.out.blank();
        let quiet: Vec<&str> = self
            .runs
            .iter()
            .filter(|r| r.workload.diagnostics.is_empty())
            .map(|r| r.workload.label)
            .collect();
        self.out.say(&if bad == 0 {
            format!(
                "These are exactly the diagnostics each workload should raise, none missing and\n\
                 none extra ({} raise none).",
                quiet.join(" and ")
            )
        } else {
            format!("{bad} workload(s) did not get the diagnostics they should: see the end.")
        });
        self.stopped = Some(stopped);
        Ok(())
    }

    /// Runs the real `imds-monitor report` over the events file, as a team
    /// would over a day or a week of them, and checks its answer.
    fn run_report(&mut self) -> Result<()> {
        let bin = imds_monitor_bin()?;
        let file = display_path(&self.events_path);
        self.out.say(
            "On an instance the monitor runs for a day or a week (--output FILE, rotated);\n\
             then the team asks the events the migration questions: who still uses IMDSv1,\n\
             and is HttpTokens=required safe? Here, over this demo's few seconds:",
        );
        self.out.command(&format!("imds-monitor report {file}"));
        let table_out = report(&bin, &self.events_path, &[])?;
        self.out.blank();
        self.out.block(&fit_report(&table_out.stdout));
        if !table_out.stderr.trim().is_empty() {
            self.out.quote("stderr>", table_out.stderr.trim_end());
        }
        self.out.blank();
        self.out.say(&format!(
            "Exit status {}: 1 is \"not safe\" (0 safe, 2 unreadable input), for scripts and CI.",
            table_out
                .code
                .map_or_else(|| "(killed)".to_owned(), |c| c.to_string())
        ));
        if table_out.code != Some(1) {
            self.problems.push(format!(
                "imds-monitor report exited with {:?}, expected 1 (not safe)",
                table_out.code
            ));
        }
        let v1_workloads = self.v1_workloads();
        for (kind, id) in &v1_workloads {
            // The table shows a container's id as `docker ps` does.
            let shown = if kind == "container" && id.len() > 12 {
                &id[..12]
            } else {
                id.as_str()
            };
            if !table_out.stdout.contains(shown) {
                self.problems.push(format!(
                    "imds-monitor report does not name the IMDSv1 caller {kind} {shown}"
                ));
            }
        }

        self.out.blank();
        self.out.say("The same as one JSON object, for scripts:");
        self.out
            .command(&format!("imds-monitor report --format json {file}"));
        let json_out = report(&bin, &self.events_path, &["--format", "json"])?;
        let doc: Value = serde_json::from_str(&json_out.stdout)
            .with_context(|| format!("the report's JSON: {}", json_out.stdout.trim()))?;
        let safe = table::field(&doc, "verdict.safe").and_then(Value::as_bool);
        let blocking = blockers(&doc);
        let names: Vec<String> = blocking
            .iter()
            .map(|b| {
                let name = table::workload_name(&b.kind, &b.id, POD_ID_CHARS);
                if b.broken_now {
                    format!("{name}: broken now")
                } else {
                    name
                }
            })
            .collect();
        self.out.labelled(
            6,
            "-> ",
            &format!(
                "verdict: safe: {}, blocking: {} workloads ({})",
                safe.map_or_else(|| "?".to_owned(), |s| s.to_string()),
                blocking.len(),
                names.join(", ")
            ),
        );
        if json_out.code != Some(1) || safe != Some(false) {
            self.problems.push(format!(
                "imds-monitor report --format json: exit {:?}, safe {safe:?}; expected 1, false",
                json_out.code
            ));
        }
        let mut got: Vec<(String, String, bool)> = blocking
            .iter()
            .map(|b| (b.kind.clone(), b.id.clone(), b.broken_now))
            .collect();
        let broken = self.broken_workloads();
        let mut want: Vec<(String, String, bool)> = v1_workloads
            .into_iter()
            .map(|(kind, id)| {
                let now = broken.contains(&(kind.clone(), id.clone()));
                (kind, id, now)
            })
            .collect();
        got.sort();
        want.sort();
        if got != want {
            self.problems.push(format!(
                "the report's verdict blocks (kind, id, broken now) {got:?}, expected {want:?}"
            ));
        }
        self.report = Some(doc);
        Ok(())
    }

    /// The workloads the demo ran that use IMDSv1, as the daemon should
    /// name them, each once.
    fn v1_workloads(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for run in &self.runs {
            if let Some(w) = &run.expected
                && run.workload.expect.contains(&"v1_get")
                && !out.contains(w)
            {
                out.push(w.clone());
            }
        }
        out
    }

    /// Those IMDS already answered 401.
    fn broken_workloads(&self) -> Vec<(String, String)> {
        self.runs
            .iter()
            .filter(|r| r.workload.diagnostics.contains(&workloads::V1_REJECTED))
            .filter_map(|r| r.expected.clone())
            .collect()
    }

    /// From the report's JSON: who stands in the way and why, the fixes,
    /// and what comes next.
    fn summarize(&mut self) -> Result<()> {
        let doc = self.report.take().context("the report did not run")?;
        let blocking = blockers(&doc);
        let empty = Vec::new();
        let workloads = table::field(&doc, "workloads")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        let findings = |kind: &str, id: &str| -> Vec<String> {
            workloads
                .iter()
                .find(|w| table::text(w, "kind") == kind && table::text(w, "id") == id)
                .and_then(|w| w.get("findings"))
                .and_then(Value::as_array)
                .map(|f| f.iter().map(|f| table::text(f, "type")).collect())
                .unwrap_or_default()
        };
        let runs = &self.runs;
        let name = |kind: &str, id: &str| {
            let shown = table::workload_name(kind, id, POD_ID_CHARS);
            match label_of(runs, kind, id) {
                Some(label) => format!("{shown} ({label})"),
                None => shown,
            }
        };

        if blocking.is_empty() {
            self.out.say(
                "The report found nothing in the way of HttpTokens=required (unexpected here).",
            );
        } else {
            self.out.say(&format!(
                "The report's verdict: not safe. {} workloads stand in the way of HttpTokens=required:",
                blocking.len()
            ));
        }
        let mut code_fix = Vec::new();
        let mut hop_fix = Vec::new();
        for b in &blocking {
            self.out.blank();
            self.out
                .labelled(4, "", &format!("{}:", name(&b.kind, &b.id)));
            self.out.labelled(6, "", &b.reason);
            let found = findings(&b.kind, &b.id);
            if found.iter().any(|f| f == "hop_limit" || f == "v1_fallback") {
                hop_fix.push(name(&b.kind, &b.id));
            } else {
                code_fix.push(name(&b.kind, &b.id));
            }
        }
        let fine: Vec<String> = workloads
            .iter()
            .filter(|w| table::field(w, "v1").and_then(Value::as_u64) == Some(0))
            .filter(|w| {
                let (kind, id) = (table::text(w, "kind"), table::text(w, "id"));
                !blocking.iter().any(|b| b.kind == kind && b.id == id)
            })
            .map(|w| {
                let why = if table::field(w, "v2").and_then(Value::as_u64) > Some(0) {
                    "IMDSv2 already"
                } else {
                    "another cloud's probe"
                };
                format!(
                    "{} ({why})",
                    table::workload_name(&table::text(w, "kind"), &table::text(w, "id"), 0)
                )
            })
            .collect();
        if !fine.is_empty() {
            self.out.blank();
            self.out
                .labelled(2, "Not in the way: ", &format!("{}.", fine.join(", ")));
        }

        let instance = self.sandbox().imds().config().instance_id;
        self.out.blank();
        let fixes = usize::from(!code_fix.is_empty()) + usize::from(!hop_fix.is_empty());
        self.out.say(match fixes {
            0 => "Nothing to fix.",
            1 => "One fix clears the way:",
            _ => "Two fixes clear the way:",
        });
        let mut number = 0;
        if !code_fix.is_empty() {
            number += 1;
            self.out.labelled(
                2,
                &format!("{number}. "),
                &format!(
                    "Update the scripts and apps to IMDSv2: {}. A current AWS SDK or CLI does \
                     it; a script asks for a token first:",
                    code_fix.join(", ")
                ),
            );
            self.out.quote("|", TOKEN_SCRIPT);
        }
        if !hop_fix.is_empty() {
            number += 1;
            self.out.labelled(
                2,
                &format!("{number}. "),
                &format!(
                    "Raise the hop limit to 2, so token answers survive the hop to containers: \
                     {}. The SDK there already tries IMDSv2 and needs no change:",
                    hop_fix.join(", ")
                ),
            );
            self.out.command(&format!(
                "aws ec2 modify-instance-metadata-options --instance-id {instance} \
                 --http-put-response-hop-limit 2"
            ));
        }
        self.out.labelled(
            2,
            "",
            "Then keep the monitor running; when `imds-monitor report` exits 0 (SAFE) over a \
             representative window, set HttpTokens=required, in the launch template too.",
        );
        self.out.blank();
        let mut note = ENFORCE_NOTE.to_owned();
        if !hop_fix.is_empty() {
            note.push_str(&format!(
                " Raise the hop limit first: enforce mode would drop the IMDSv1 fallback of {}.",
                hop_fix.join(", ")
            ));
        }
        self.out.labelled(2, "", &note);
        if !self.problems.is_empty() {
            self.out.blank();
            self.out.say(&format!(
                "NOTE: {} check(s) failed; see the end of the output.",
                self.problems.len()
            ));
        }
        Ok(())
    }
}

/// Diagnostics are shown grouped by workload (`(kind, id)`) and action.
type GroupKey = (Option<(String, String)>, String);

/// The demo's name for a workload the daemon names `(kind, id)`.
fn label_of(runs: &[WorkloadRun], kind: &str, id: &str) -> Option<&'static str> {
    runs.iter()
        .find(|r| {
            r.expected
                .as_ref()
                .is_some_and(|(k, i)| k == kind && i == id)
        })
        .map(|r| r.workload.label)
}

/// A `verdict.blocking` entry of the report's JSON.
struct Blocker {
    kind: String,
    id: String,
    reason: String,
    broken_now: bool,
}

fn blockers(doc: &Value) -> Vec<Blocker> {
    table::field(doc, "verdict.blocking")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|b| Blocker {
                    kind: table::text(b, "kind"),
                    id: table::text(b, "id"),
                    reason: table::text(b, "reason"),
                    broken_now: b.get("broken_now").and_then(Value::as_bool) == Some(true),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What `imds-monitor report` printed, and its exit code.
struct ReportOutput {
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

/// `imds-monitor report ARGS EVENTS`: reads a file, sends nothing anywhere.
fn report(bin: &Path, events: &Path, args: &[&str]) -> Result<ReportOutput> {
    let output = Command::new(bin)
        .arg("report")
        .args(args)
        .arg(events)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {} report", bin.display()))?;
    Ok(ReportOutput {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        code: output.status.code(),
    })
}

/// The report's text fitted to the screen: its workload table (from the
/// `WORKLOAD` header to the `total` row) split at a column so that both
/// parts stay aligned, every other line wrapped at spaces.
fn fit_report(text: &str) -> String {
    let width = narrate::MAX_WIDTH - 4;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].starts_with("WORKLOAD")
            && let Some(end) = lines[i..].iter().position(|l| l.starts_with("total"))
            && let Some(split) = narrate::split_table(&lines[i..=i + end], width, REPORT_HANG)
        {
            out.extend(split);
            i += end + 1;
            continue;
        }
        out.extend(narrate::wrap(lines[i], width, REPORT_HANG));
        i += 1;
    }
    out.join("\n")
}

/// Whether an event is one of the daemon's diagnostics.
fn is_diagnostic(event: &Value) -> bool {
    table::field(event, "imds.diagnostic.id").is_some()
}

/// The workload the daemon should name for a request sent from `place`, as
/// `(imds.workload.kind, imds.workload.id)`: the systemd unit of a host
/// service, the Docker container's id, the pod's UID.
fn expected_workload(sb: &Sandbox, place: &Place) -> Option<(String, String)> {
    match place {
        Place::HostRoot => None,
        Place::Host(cgroup) => {
            let unit = cgroup.rsplit('/').next()?;
            unit.ends_with(".service")
                .then(|| ("unit".to_owned(), unit.to_owned()))
        }
        Place::Container(i) => {
            let c = sb.containers().get(*i)?;
            match c.runtime() {
                imds_sandbox::Runtime::Docker => Some(("container".to_owned(), c.id().to_owned())),
                imds_sandbox::Runtime::Kubernetes(_) => {
                    Some(("pod".to_owned(), c.pod_uid()?.to_owned()))
                }
            }
        }
    }
}

/// Seconds since the Unix epoch, as the events' timestamps count them.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An executable path below the working directory, relative to it (the
/// demo's own `target/release/imds-client`).
fn short_executable(path: &str) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            Path::new(path)
                .strip_prefix(cwd)
                .ok()
                .map(Path::to_path_buf)
        })
        .map_or_else(|| path.to_owned(), |p| p.display().to_string())
}

/// For each event, the run whose request (as IMDS logged it) has the same
/// source address, port, method and path. Each logged request is used once.
fn attribute(events: &[&Value], runs: &[WorkloadRun]) -> Vec<Option<usize>> {
    let mut unused: Vec<(usize, &ImdsRequest)> = runs
        .iter()
        .enumerate()
        .flat_map(|(i, run)| run.requests.iter().map(move |r| (i, r)))
        .collect();
    events
        .iter()
        .map(|event| {
            let ip: Option<IpAddr> = table::text(event, "source.ip").parse().ok();
            let port = table::field(event, "source.port").and_then(Value::as_u64);
            let method = table::text(event, "http.request.method");
            let path = table::text(event, "url.path");
            let pos = unused.iter().position(|(_, r)| {
                Some(r.peer.ip()) == ip
                    && Some(u64::from(r.peer.port())) == port
                    && r.method == method
                    && r.path == path
            })?;
            Some(unused.remove(pos).0)
        })
        .collect()
}

/// A keyword array field as `a, b`.
fn list(event: &Value, path: &str) -> String {
    match table::field(event, path) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(", "),
        _ => table::text(event, path),
    }
}

fn dedup(mut items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items.retain(|i| seen.insert(i.clone()));
    items
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_shortened() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(
            abbreviate_ids(&format!("system.slice/docker-{id}.scope")),
            "system.slice/docker-0123456789ab….scope"
        );
        assert_eq!(
            abbreviate_ids("system.slice/cloud-init.service"),
            "system.slice/cloud-init.service"
        );
    }

    #[test]
    fn report_blockers_are_read() {
        let doc = serde_json::json!({"verdict": {"safe": false, "blocking": [
            {"kind": "unit", "id": "cloud-init.service", "reason": "broken now: 2 requests",
             "broken_now": true},
            {"kind": "pod", "id": "0b7e2f5a", "reason": "hop limit"}]}});
        let b = blockers(&doc);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].kind.as_str(), b[0].broken_now), ("unit", true));
        assert_eq!((b[1].id.as_str(), b[1].broken_now), ("0b7e2f5a", false));
        assert!(blockers(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn the_report_fits_the_screen() {
        let pad = "x".repeat(80);
        let text = [
            "1 events".to_owned(),
            String::new(),
            "WORKLOAD      KIND  V1  TOP V1 PATH".to_owned(),
            format!("unit.service  unit   4  /{pad}"),
            "total                4".to_owned(),
            format!("NOT SAFE: {pad} {pad}"),
        ]
        .join("\n");
        let fitted = fit_report(&text);
        assert!(fitted.lines().all(|l| l.chars().count() <= 96), "{fitted}");
        let hang = " ".repeat(REPORT_HANG);
        assert!(
            fitted.contains(&format!(
                "WORKLOAD      KIND  V1\n{hang}TOP V1 PATH\nunit.service  unit   4\n{hang}/{pad}\n\
                 total                4\n"
            )),
            "{fitted}"
        );
    }

    #[test]
    fn enforce_note_fits_the_screen() {
        for line in narrate::wrap(ENFORCE_NOTE, narrate::MAX_WIDTH - 2, 0) {
            assert!(line.chars().count() <= narrate::MAX_WIDTH - 2, "{line}");
        }
    }
}
