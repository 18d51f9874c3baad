//! The three measurements. Each starts its own daemon in the sandbox, so one
//! phase's events, memory or programs never leak into the next.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use imds_sandbox::{Place, Sandbox};
use serde_json::Value;

use super::daemon::Daemon;
use super::load::{self, Bulk, TcpSink, args};
use super::procfs::{self, CpuSample, MachineCpu};
use super::progstats::{self, Counters, HookKind, Programs};

/// Sizes and durations of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub bulk: Bulk,
    /// IMDSv1 GETs, one connection each, one client after the other.
    pub v1_requests: u32,
    /// IMDSv2 clients, each a token PUT and one GET on one connection.
    pub v2_clients: usize,
    pub steady_rate: u32,
    pub steady_duration: Duration,
    pub burst_rate: u32,
    pub burst_duration: Duration,
    /// Parallel clients for the burst, and requests per connection.
    pub burst_clients: u32,
    pub burst_pipeline: u32,
    /// Connections per workload in the isolated runs (warm; a third cold).
    pub isolated_iterations: u32,
}

impl Plan {
    pub fn full() -> Self {
        Self {
            bulk: Bulk {
                connections: 200,
                writes: 64,
                write_size: 1024,
            },
            v1_requests: 2_000,
            v2_clients: 200,
            steady_rate: 1_000,
            steady_duration: Duration::from_secs(10),
            burst_rate: 5_000,
            burst_duration: Duration::from_secs(5),
            burst_clients: 4,
            burst_pipeline: 8,
            isolated_iterations: 3_000,
        }
    }

    pub fn quick() -> Self {
        Self {
            bulk: Bulk {
                connections: 40,
                ..Self::full().bulk
            },
            v1_requests: 300,
            v2_clients: 40,
            steady_duration: Duration::from_secs(3),
            burst_duration: Duration::from_secs(2),
            isolated_iterations: 600,
            ..Self::full()
        }
    }
}

/// Where the load generators run: a host service, like an agent would.
fn load_place() -> Place {
    Place::service("imds-bench-load")
}

pub const MONITOR_ARGS: [&str; 4] = ["--iface", "eth0", "--mode", "alert"];

/// The counters of the daemon's `monitor-stopped` line.
#[derive(Debug, Clone, Copy, Default)]
pub struct DaemonCounters {
    /// Requests the kernel classified, all classes.
    pub classified: u64,
    pub events_written: u64,
    pub lost_events: u64,
    /// Events the output could not take, and the most bytes ever queued
    /// for it (the daemon's output queue high-water mark).
    pub output_lost_events: u64,
    pub output_queue_peak_bytes: u64,
    pub attribution_partial: u64,
    /// The daemon's caches at its end (daemons that report them).
    pub process_cache_entries: Option<u64>,
    pub cgroup_cache_entries: Option<u64>,
}

impl DaemonCounters {
    pub fn of(last: &Value) -> Result<Self> {
        if last["event"]["action"] != "monitor-stopped" {
            bail!("the daemon's last line is not monitor-stopped: {last}");
        }
        let counters = &last["imds"]["counters"];
        let num = |v: &Value| v.as_u64().unwrap_or(0);
        let classified = counters["requests"]
            .as_object()
            .map(|m| m.values().map(num).sum())
            .unwrap_or(0);
        Ok(Self {
            classified,
            events_written: num(&counters["events_written"]),
            lost_events: num(&counters["lost_events"]),
            output_lost_events: num(&counters["output_lost_events"]),
            output_queue_peak_bytes: num(&counters["output_queue_peak_bytes"]),
            attribution_partial: num(&counters["attribution_partial"]),
            process_cache_entries: counters["process_cache_entries"].as_u64(),
            cgroup_cache_entries: counters["cgroup_cache_entries"].as_u64(),
        })
    }
}

/// How long the daemon may take, after the load, to write what it owes.
pub const CATCH_UP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- kernel cost

/// One workload's cost in the kernel.
#[derive(Debug, Clone)]
pub struct KernelRow {
    pub workload: String,
    pub classifier: Counters,
    pub passthrough: Option<Counters>,
    /// The daemon's other programs, by name.
    pub hooks: BTreeMap<String, (HookKind, Counters)>,
    /// IMDS requests the mock answered during the workload.
    pub requests: Option<u64>,
}

impl KernelRow {
    /// Classifier time per packet over pass-through time per packet.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.classifier.ns_per_run()? / self.passthrough?.ns_per_run()?)
    }

    /// What the classifier costs per packet over the empty program.
    pub fn added_ns_per_packet(&self) -> Option<f64> {
        Some(self.classifier.ns_per_run()? - self.passthrough?.ns_per_run()?)
    }

    pub fn classifier_ns_per_request(&self) -> Option<f64> {
        let r = self.requests.filter(|r| *r > 0)?;
        Some(self.classifier.run_time_ns as f64 / r as f64)
    }

    /// Time per request of the daemon's other programs that every request
    /// passes (other TC programs, connect and sock_ops hooks); process
    /// tracepoints fire per process, not per request.
    pub fn other_hooks_ns_per_request(&self) -> Option<f64> {
        let r = self.requests.filter(|r| *r > 0)?;
        let ns: u64 = self
            .hooks
            .values()
            .filter(|(kind, _)| kind.per_request())
            .map(|(_, c)| c.run_time_ns)
            .sum();
        Some(ns as f64 / r as f64)
    }
}

#[derive(Debug, Clone)]
pub struct KernelCost {
    pub attach_method: String,
    pub rows: Vec<KernelRow>,
    /// IMDS requests the mock logged and the daemon classified, over all rows.
    pub logged: u64,
    pub classified: u64,
    /// The daemon's start-up: spawn to `monitor-started`.
    pub startup: Duration,
}

/// Kernel cost per packet of the classifier and the empty program attached
/// beside it, for non-IMDS TCP, IMDSv1 and IMDSv2 traffic.
pub fn kernel_cost(sandbox: &Sandbox, plan: &Plan) -> Result<KernelCost> {
    let _stats = progstats::enable_stats()?;
    let before = progstats::loaded_ids();
    let mut monitor_args = MONITOR_ARGS.to_vec();
    monitor_args.push("--baseline-passthrough");
    let mut daemon = Daemon::start(sandbox, &monitor_args).context("starting imds-monitor")?;
    let startup = daemon.startup;
    let attach_method = daemon.started()?["imds"]["attach_method"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    let programs = Programs::locate(sandbox, &before)?;
    if programs.passthrough.is_none() {
        bail!(
            "imds_passthrough is not attached: does this imds-monitor know --baseline-passthrough?"
        );
    }
    let place = load_place();
    let sink = TcpSink::start(sandbox.imds_netns())?;
    let mut rows = Vec::new();
    let mut logged = 0;

    let bulk = plan.bulk;
    rows.push(measure(
        &programs,
        format!(
            "non-IMDS TCP, {} connections × {} KiB",
            bulk.connections,
            bulk.writes * bulk.write_size / 1024,
        ),
        || {
            let sent = load::send_bulk(sandbox, &sink, bulk)?;
            // The sender waited for the sink's close, so it read everything.
            if sink.received() != sent {
                bail!("sent {sent} bytes, the sink read {}", sink.received());
            }
            Ok(None)
        },
    )?);
    drop(sink);

    sandbox.imds().clear_log();
    let count = plan.v1_requests.to_string();
    rows.push(measure(
        &programs,
        format!("IMDSv1 GET ×{count}, a connection each"),
        || {
            load::run_clients(sandbox, &place, &[args(&["--v1", "--count", &count])])?.check()?;
            Ok(Some(sandbox.imds_log().len() as u64))
        },
    )?);
    logged += rows.last().and_then(|r| r.requests).unwrap_or(0);

    sandbox.imds().clear_log();
    rows.push(measure(
        &programs,
        format!("IMDSv2 PUT + GET ×{}, a connection each", plan.v2_clients),
        || {
            // Two clients at a time: the two cores stay busy.
            let job = args(&["--v2", "--count", "1"]);
            for _ in 0..plan.v2_clients.div_ceil(2) {
                load::run_clients(sandbox, &place, &[job.clone(), job.clone()])?.check()?;
            }
            Ok(Some(sandbox.imds_log().len() as u64))
        },
    )?);
    logged += rows.last().and_then(|r| r.requests).unwrap_or(0);
    sandbox.imds().clear_log();

    daemon.wait_for_requests(logged, CATCH_UP)?;
    let counters = DaemonCounters::of(&daemon.stop()?)?;
    Ok(KernelCost {
        attach_method,
        rows,
        logged,
        classified: counters.classified,
        startup,
    })
}

/// Runs `work` between two snapshots of the programs' counters.
fn measure(
    programs: &Programs,
    workload: String,
    work: impl FnOnce() -> Result<Option<u64>>,
) -> Result<KernelRow> {
    let before = programs.snapshot()?;
    let requests = work().with_context(|| format!("workload {workload:?}"))?;
    let after = programs.snapshot()?;
    let hooks = programs
        .hooks
        .iter()
        .map(|(name, hook)| (name.clone(), (hook.kind, after.since(&before, hook.id))))
        .collect();
    Ok(KernelRow {
        workload,
        classifier: after.since(&before, programs.classifier),
        passthrough: programs.passthrough.map(|id| after.since(&before, id)),
        hooks,
        requests,
    })
}

// ------------------------------------------------------------- daemon under load

/// The daemon while clients keep a request rate up.
#[derive(Debug, Clone)]
pub struct Load {
    pub rate: u32,
    pub duration: Duration,
    pub clients: u32,
    pub pipeline: u32,
    /// Requests the mock answered, and per second of the clients' run.
    pub logged: u64,
    pub achieved: f64,
    /// Daemon CPU as % of one core over `window` (load plus catching up).
    pub cpu_percent: f64,
    pub window: Duration,
    /// The whole machine over the same window, % of one core, and its CPUs.
    pub machine_percent: f64,
    /// Of which stolen by the hypervisor for other guests.
    pub stolen_percent: f64,
    pub cpus: usize,
    pub peak_rss: u64,
    pub rss_after: u64,
    pub counters: DaemonCounters,
    /// Whether the daemon had printed an event per request before the window closed.
    pub caught_up: bool,
    pub client_failures: Vec<String>,
    /// The daemon's start-up: spawn to `monitor-started`.
    pub startup: Duration,
}

/// Runs `clients` v1 clients in parallel for `duration`, together asking for
/// `rate` requests/s with `pipeline` requests per connection, against a fresh
/// daemon; measures its CPU and memory and reads its final counters.
pub fn under_load(
    sandbox: &Sandbox,
    rate: u32,
    duration: Duration,
    clients: u32,
    pipeline: u32,
) -> Result<Load> {
    let mut daemon = Daemon::start(sandbox, &MONITOR_ARGS).context("starting imds-monitor")?;
    let startup = daemon.startup;
    let pid = daemon.pid();
    sandbox.imds().clear_log();
    let per_client = (rate / clients).max(1).to_string();
    let duration_ms = duration.as_millis().to_string();
    let pipeline_arg = pipeline.to_string();
    let job = args(&[
        "--v1",
        "--rate",
        &per_client,
        "--duration-ms",
        &duration_ms,
        "--pipeline",
        &pipeline_arg,
    ]);
    let jobs = vec![job; clients as usize];

    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let machine_start = MachineCpu::take()?;
    let cpu_start = CpuSample::take(pid)?;
    let run = load::run_clients(sandbox, &load_place(), &jobs)?;
    let logged = sandbox.imds_log().len() as u64;
    let caught_up = daemon.wait_for_requests(logged, CATCH_UP)?;
    let cpu_end = CpuSample::take(pid)?;
    let machine_end = MachineCpu::take()?;
    let machine_percent = machine_end.percent_since(&machine_start, cpus);
    let stolen_percent = machine_end.stolen_percent_since(&machine_start, cpus);
    let peak_rss = procfs::vm_bytes(pid, "VmHWM")?;
    let rss_after = procfs::vm_bytes(pid, "VmRSS")?;
    let (cpu_percent, window) = cpu_end.percent_since(&cpu_start);
    let counters = DaemonCounters::of(&daemon.stop()?)?;
    sandbox.imds().clear_log();
    Ok(Load {
        rate,
        duration,
        clients,
        pipeline,
        logged,
        achieved: logged as f64 / run.elapsed.as_secs_f64().max(1e-9),
        cpu_percent,
        window,
        machine_percent,
        stolen_percent,
        cpus,
        peak_rss,
        rss_after,
        counters,
        caught_up,
        client_failures: run.failures(),
        startup,
    })
}
