//! `imds-demo`: the IMDSv1 migration story, told in an EC2-like sandbox.
//!
//! Brings up network namespaces wired like an EC2 instance (mock IMDS, host,
//! a Docker container and a Kubernetes pod container), starts the real
//! `imds-monitor` daemon in alert mode, runs the workloads a typical host
//! has, stops the daemon and shows what it saw. `cargo xtask demo` builds
//! everything and runs this with `IMDS_MONITOR_BIN` set.
//!
//! The story is a list of [`STEPS`]; each step is a function on [`Demo`].
//! Later steps (attribution, a report, enforce mode) are appended there.
//!
//! Nothing is sent from this machine's own network namespace: every workload
//! runs inside the sandbox, whose namespaces are linked only to each other.

mod narrate;
mod table;
mod workloads;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

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

/// What the summary says about attribution, when the events do not name
/// the sender. Update both notes as attribution lands.
const ATTRIBUTION_NOTE: &str = "\
Today an event says where a request left the host (source address and port,
after NAT), not who sent it: host services and containers alike show up with
the host's address. The next releases name the process (pid, command line,
systemd unit) and the container (Docker id, Kubernetes pod) of every request;
attribution is being built.";

/// The same when this build of the daemon already names senders.
const ATTRIBUTION_PREVIEW_NOTE: &str = "\
Source addresses cannot tell these callers apart: after NAT, host services and
containers alike leave with the host's address. This build of the daemon
already names the sender of each request (process, systemd unit, container,
pod; the second table above). Attribution is still being built: the next
releases complete it and report per workload.";

/// Arguments of the daemon: alert on every IMDSv1 request.
const MONITOR_ARGS: &[&str] = &["--mode", "alert"];

/// Longest path shown in the table.
const PATH_COLUMN_CHARS: usize = 46;

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
        title: "Stop the monitor and look at what it saw",
        run: Demo::stop_and_show,
    },
    Step {
        title: "What this tells you",
        run: Demo::summarize,
    },
];

/// What one workload did: its requests as the mock IMDS received them.
struct WorkloadRun {
    workload: Workload,
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
    /// Whether the events name their senders (`process.*`, `imds.workload`).
    attributed: bool,
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
        attributed: false,
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
        eprintln!("\nimds-demo: the monitor's events did not match what the workloads did:");
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
        let ns = match place {
            Place::Container(i) => format!("container {i}"),
            Place::Host(_) | Place::HostRoot => "host".to_owned(),
        };
        format!("{ns}, cgroup {}", abbreviate_ids(rel))
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
        out.say(&format!(
            "mock IMDS   {} and {} (port 80), in netns {}",
            topology::IMDS_V4,
            topology::IMDS_V6,
            ns("-imds")
        ));
        out.say(&format!(
            "            instance {} ({}), role {}",
            config.instance_id,
            config.instance_type,
            config.role_name.as_deref().unwrap_or("(none)")
        ));
        out.say(&format!(
            "            HttpTokens={}, HttpPutResponseHopLimit={}: an instance launched with the defaults",
            if config.tokens_required {
                "required"
            } else {
                "optional"
            },
            config.hop_limit
        ));
        out.say(&format!(
            "EC2 host    netns {}: {} {} / {} (route to IMDS),",
            ns("-host"),
            sb.host_ifname(),
            topology::HOST_V4,
            topology::HOST_V6
        ));
        out.say(&format!(
            "            {} {} / {}, forwarding and masquerade like Docker",
            sb.bridge_ifname(),
            topology::BRIDGE_V4,
            topology::BRIDGE_V6
        ));
        for c in sb.containers() {
            let kind = match c.runtime() {
                imds_sandbox::Runtime::Docker => "Docker container".to_owned(),
                imds_sandbox::Runtime::Kubernetes(qos) => format!("Kubernetes pod ({qos:?})"),
            };
            out.say(&format!(
                "container {} {kind}: netns {}, {} / {} behind {}",
                c.index(),
                c.netns().name(),
                c.ipv4(),
                c.ipv6(),
                c.host_veth()
            ));
            out.say(&format!(
                "            cgroup {}",
                abbreviate_ids(c.cgroup().rel())
            ));
        }
        out.say(&format!(
            "cgroups     below {} (systemd, Docker and kubelet naming)",
            sb.root_cgroup().path().display()
        ));
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
        self.out.quote("json>", &started.to_string());
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
        for workload in workloads::workloads() {
            check_interrupted()?;
            let place = workload.place.clone();
            self.out.topic(&format!(
                "{} [{}]",
                workload.title,
                self.describe_place(&place)
            ));
            self.out.say(&indent(workload.story, "  "));
            let before = self.sandbox().imds_log().len();
            let sb = self.sandbox.as_ref().context("no sandbox")?;
            (workload.run)(sb, &place, &mut self.out)
                .with_context(|| format!("workload {:?}", workload.label))?;
            let requests = self.sandbox().imds_log().split_off(before);
            self.runs.push(WorkloadRun { workload, requests });
        }
        Ok(())
    }

    fn stop_and_show(&mut self) -> Result<()> {
        let stopped = self.stop_monitor()?;
        let requests: Vec<&Value> = stopped.requests();
        self.ran_by = attribute(&requests, &self.runs);
        self.check(&requests, &stopped);
        let start = stopped
            .events
            .iter()
            .find(|e| action(e) == "monitor-started")
            .and_then(|e| table::parse_timestamp(&table::text(e, "@timestamp")));
        self.show_requests(&requests, start);
        self.show_senders(&requests, start);
        self.show_counters(&stopped);
        self.write_events(&stopped.events)?;
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

    /// Waits for the daemon to print every request IMDS received, then
    /// SIGINT; notes what went wrong in `problems`.
    fn stop_monitor(&mut self) -> Result<Stopped> {
        let total: usize = self.runs.iter().map(|r| r.requests.len()).sum();
        let monitor = self.monitor.take().context("the monitor is not running")?;
        // The kernel saw every request before its answer went out; give the
        // daemon's ring buffer reader a moment to print them.
        if let Err(e) = monitor.wait_for_requests(total) {
            self.problems.push(format!(
                "IMDS received {total} requests but the monitor printed fewer: {e}"
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

    fn ran_by_label(&self, index: usize) -> String {
        self.ran_by
            .get(index)
            .copied()
            .flatten()
            .map_or("?", |i| self.runs[i].workload.label)
            .to_owned()
    }

    /// The main table: one row per `imds-request` event.
    fn show_requests(&mut self, requests: &[&Value], start: Option<f64>) {
        let mut t = Table::new(&[
            "time", "class", "verdict", "method", "path", "source", "ran by*",
        ]);
        for (i, event) in requests.iter().enumerate() {
            t.row(vec![
                table::relative_time(event, start),
                table::class(event),
                table::verdict(event),
                table::text(event, "http.request.method"),
                table::path(event, PATH_COLUMN_CHARS),
                table::source(event),
                self.ran_by_label(i),
            ]);
        }
        self.out.topic(&format!(
            "{} imds-request events (time from monitor-started; ALERTED = an alert event)",
            requests.len()
        ));
        self.out.blank();
        if t.is_empty() {
            self.out.block("(none)");
        } else {
            self.out.block(&t.render());
        }
    }

    /// What the events say about their senders, next to what the demo
    /// knows; only when this build of the daemon attributes requests.
    fn show_senders(&mut self, requests: &[&Value], start: Option<f64>) {
        let senders: Vec<Option<String>> = requests.iter().map(|e| table::sender(e)).collect();
        self.attributed = senders.iter().any(Option::is_some);
        if !self.attributed {
            self.out.say(
                "* ran by: known to the demo, which started each workload, and matched to the\n  \
                 events by source port. The events do not carry it yet.",
            );
            return;
        }
        self.out.say(
            "* ran by: known to the demo, which started each workload, and matched to the\n  \
             events by source port. Compare with what the events themselves say, below.",
        );
        let mut t = Table::new(&["time", "class", "ran by*", "sender, according to the event"]);
        for (i, (event, sender)) in requests.iter().zip(senders).enumerate() {
            t.row(vec![
                table::relative_time(event, start),
                table::class(event),
                self.ran_by_label(i),
                sender.unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        self.out
            .topic("Who sent them, according to the events (attribution preview)");
        self.out.blank();
        self.out.block(&t.render());
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
                    self.out.detail(&line);
                }
            }
            None => self
                .problems
                .push("the daemon's last line is not monitor-stopped".to_owned()),
        }
    }

    /// Writes every JSON line to the events file, replacing an older one.
    fn write_events(&mut self, events: &[Value]) -> Result<()> {
        let path = &self.events_path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let mut text = String::new();
        for event in events {
            text.push_str(&event.to_string());
            text.push('\n');
        }
        fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        self.out.topic(&format!(
            "All {} JSON lines (started, requests, stopped) are in {}{}",
            events.len(),
            display_path(path),
            if self.out.json_on_stdout() {
                " and on stdout"
            } else {
                " (--json prints them)"
            }
        ));
        Ok(())
    }

    /// Compares what the monitor reported with what the workloads did.
    fn check(&mut self, requests: &[&Value], stopped: &Stopped) {
        for (event, by) in requests.iter().zip(&self.ran_by) {
            if by.is_none() {
                self.problems.push(format!(
                    "an event matches no request IMDS received: {event}"
                ));
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

    fn summarize(&mut self) -> Result<()> {
        let stopped = self
            .stopped
            .as_ref()
            .context("the monitor was not stopped")?;
        let requests = stopped.requests();
        let mut classes: BTreeMap<String, usize> = BTreeMap::new();
        for e in &requests {
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
        let class_list: Vec<String> = ordered.iter().map(|(c, n)| format!("{n} {c}")).collect();
        let v1 = classes.get("v1_get").copied().unwrap_or(0);
        let alerts = requests
            .iter()
            .filter(|e| table::text(e, "event.kind") == "alert")
            .count();
        let mut lines = vec![format!(
            "The monitor saw {} IMDS requests ({}): {v1} of them IMDSv1, {alerts} alert{}.",
            requests.len(),
            class_list.join(", "),
            if alerts == 1 { "" } else { "s" }
        )];

        // Per workload: its v1 requests (alerted or not), or why it is fine.
        let mut alerted = Table::new(&["ran by", "v1 requests", "what it read"]);
        let mut quiet = Vec::new();
        let mut fallback = Vec::new();
        for (i, run) in self.runs.iter().enumerate() {
            let mine: Vec<&&Value> = requests
                .iter()
                .zip(&self.ran_by)
                .filter(|(_, by)| **by == Some(i))
                .map(|(e, _)| e)
                .collect();
            let v1s: Vec<&&Value> = mine
                .iter()
                .copied()
                .filter(|e| table::text(e, "imds.class") == "v1_get")
                .collect();
            let label = run.workload.label;
            if v1s.is_empty() {
                let classes: Vec<String> =
                    mine.iter().map(|e| table::text(e, "imds.class")).collect();
                quiet.push(format!("{label} ({})", dedup(classes).join(", ")));
                continue;
            }
            let n_alerted = v1s
                .iter()
                .filter(|e| table::text(e, "event.kind") == "alert")
                .count();
            let paths: Vec<String> = v1s
                .iter()
                .map(|e| table::text(e, "imds.path_category"))
                .collect();
            alerted.row(vec![
                label.to_owned(),
                format!("{} ({n_alerted} alerted)", v1s.len()),
                dedup(paths).join(", "),
            ]);
            if mine
                .iter()
                .any(|e| table::text(e, "imds.class") == "v2_token_put")
            {
                fallback.push(label);
            }
        }
        if !alerted.is_empty() {
            lines.push(
                "These callers would get \"401 - Unauthorized\" once the instance requires IMDSv2:"
                    .to_owned(),
            );
        }
        self.out.say(&lines.join("\n"));
        if !alerted.is_empty() {
            self.out.blank();
            self.out.block(&alerted.render());
        }
        if !quiet.is_empty() {
            self.out
                .say(&format!("No alert for: {}.", quiet.join("; ")));
        }
        let hop_limit = self.sandbox().imds().config().hop_limit;
        for label in fallback {
            self.out.say(&format!(
                "{label}: it asked for a token first, got no answer within {:.0} s (hop limit \
                 {hop_limit},\none hop short) and fell back to IMDSv1. Its fix is on the instance, \
                 not in the code:\n\
                 aws ec2 modify-instance-metadata-options --instance-id ID --http-put-response-hop-limit {}",
                workloads::SDK_TOKEN_TIMEOUT_MS as f64 / 1000.0,
                hop_limit.saturating_add(1)
            ));
        }
        self.out.blank();
        self.out.say(if self.attributed {
            ATTRIBUTION_PREVIEW_NOTE
        } else {
            ATTRIBUTION_NOTE
        });
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
}
