//! `imds-bench`: what imds-monitor costs, measured in an EC2-like sandbox.
//!
//! 1. Kernel time per packet of the classifier and of an empty TC program
//!    attached beside it (`--baseline-passthrough`), for non-IMDS TCP,
//!    IMDSv1 and IMDSv2 traffic, from the kernel's BPF run-time statistics.
//! 2. The daemon's CPU and peak RSS while clients keep 1,000 requests/s up.
//! 3. Lost events at 5,000 requests/s.
//! 4. The classifier per packet type, in isolation: the daemon's eBPF object
//!    run with `BPF_PROG_TEST_RUN` on hand-made packets, caches warm and cold.
//! 5. `workloads`: 50 concurrent workloads (host services and NATed
//!    containers, new and keep-alive connections) at 5,000 and 10,000 req/s:
//!    exactly-once and attribution per request, ring-buffer and output-queue
//!    high-water marks, lost events.
//! 6. `--soak` only (not in CI, not by default): 200 req/s for 10 minutes
//!    while containers and processes come and go; RSS and the eBPF maps must
//!    stay bounded.
//!
//! Targets are reported as PASS or FAIL, never enforced: the exit code is 0
//! unless something could not be measured. Run it with `cargo xtask bench`
//! (as root), which builds the release daemon and sets `IMDS_MONITOR_BIN`.

#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use imds_sandbox::{Sandbox, imds_monitor_bin, is_root};

use bench::phases::{self, Plan};
use bench::procfs::{self, Machine};
use bench::report::{self, Report};
use bench::report_load::{self, Header};
use bench::workloads;

/// Parts of the benchmark `--phase` picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Kernel cost, the daemon under load, lost events, the isolated classifier (1-4).
    Core,
    /// 50 concurrent workloads at 5,000 and 10,000 req/s.
    Workloads,
    /// The soak with churn (same as --soak).
    Soak,
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Benchmark of imds-monitor in an EC2-like sandbox (needs root)",
    after_help = "\
Examples:
  imds-bench                                   core and workloads phases
  imds-bench --quick                           the same, a few seconds each
  imds-bench --phase workloads --write-md      50 workloads at 5,000 and 10,000 req/s
  imds-bench --phase workloads --workloads-duration 5 --workloads-rates 1000
  imds-bench --phase soak --soak-duration 180  the soak with churn, 3 minutes
  imds-bench --soak --write-md                 everything, the soak 10 minutes"
)]
struct Args {
    /// Shorter loads (a few seconds in all) for a quick check.
    #[arg(long)]
    quick: bool,
    /// Rewrite the results section of BENCHMARKS.md with this run's figures.
    #[arg(long)]
    write_md: bool,
    /// Parallel clients for the lost-events load (default 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    burst_clients: Option<u32>,
    /// Requests per keep-alive connection in the lost-events load, written
    /// at once (default 8; 1 = a new connection per request).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=10))]
    burst_pipeline: Option<u32>,
    /// Run only these phases (repeatable; default: core and workloads, and
    /// soak with --soak).
    #[arg(long, value_enum, value_name = "NAME")]
    phase: Vec<Phase>,
    /// Seconds each rate of the workloads phase lasts (default 60; 3 with --quick).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    workloads_duration: Option<u64>,
    /// Total request rates of the workloads phase (default 5000,10000).
    #[arg(long, value_name = "RATES", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(50..=100_000))]
    workloads_rates: Vec<u32>,
    /// Also run the soak with churn (10 minutes by default; not in CI).
    #[arg(long)]
    soak: bool,
    /// Seconds the soak lasts (default 600).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(10..=86_400))]
    soak_duration: Option<u64>,
    /// The file --write-md rewrites.
    #[arg(long, value_name = "PATH", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md"))]
    md_path: PathBuf,
}

fn main() -> ExitCode {
    // `imds-bench worker ...`: one workload process of phases 5 and 6.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(bench::worker::WORKER_ARG) {
        return match bench::worker::main(&argv[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("imds-bench worker: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imds-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if !is_root() {
        bail!("needs root: network namespaces, cgroups and eBPF");
    }
    let monitor = imds_monitor_bin()?;
    // imds-client must exist before the first phase, not fail in the middle.
    imds_sandbox::imds_client_bin()?;
    let mut plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    plan.burst_clients = args.burst_clients.unwrap_or(plan.burst_clients);
    plan.burst_pipeline = args.burst_pipeline.unwrap_or(plan.burst_pipeline);
    eprintln!("imds-bench: daemon {}", monitor.display());
    let selected = |p: Phase| {
        if args.phase.is_empty() {
            p != Phase::Soak || args.soak
        } else {
            args.phase.contains(&p) || (p == Phase::Soak && args.soak)
        }
    };
    let load_at_start = procfs::load_average();
    let header = Header {
        machine: Machine::read(),
        date: report::today(),
        command: command_line(),
        load_at_start: load_at_start.clone(),
    };
    if selected(Phase::Core) {
        core(args, &plan, &monitor, load_at_start)?;
    }
    if selected(Phase::Workloads) {
        let duration =
            Duration::from_secs(
                args.workloads_duration
                    .unwrap_or(if args.quick { 3 } else { 60 }),
            );
        let rates = if args.workloads_rates.is_empty() {
            vec![5_000, 10_000]
        } else {
            args.workloads_rates.clone()
        };
        let sandbox = workloads::build(workloads::containers_needed())?;
        let mut runs = Vec::new();
        for rate in rates {
            eprintln!(
                "imds-bench: [workloads] {} workloads at {rate} req/s for {duration:?}",
                workloads::WORKLOADS
            );
            runs.push(workloads::load(&sandbox, rate, duration)?);
        }
        drop(sandbox);
        print!("{}", report_load::workloads_text(&runs));
        if args.write_md {
            write_md(
                args,
                &report_load::workloads_markdown(&header, &runs),
                report_load::WORKLOADS_START,
                report_load::WORKLOADS_END,
            )?;
        }
    }
    if selected(Phase::Soak) {
        let duration = Duration::from_secs(args.soak_duration.unwrap_or(600));
        let plan = workloads::SoakPlan::new(duration);
        eprintln!(
            "imds-bench: [soak] {} req/s for {duration:?}, a container a second, {} processes a second",
            plan.rate, plan.process_rate
        );
        let sandbox = workloads::build(4)?;
        let run = workloads::soak(&sandbox, &plan)?;
        drop(sandbox);
        print!("{}", report_load::soak_text(&run));
        if args.write_md {
            write_md(
                args,
                &report_load::soak_markdown(&header, &run),
                report_load::SOAK_START,
                report_load::SOAK_END,
            )?;
        }
    }
    Ok(())
}

fn write_md(args: &Args, section: &str, start: &str, end: &str) -> Result<()> {
    report::write_section(&args.md_path, section, start, end)?;
    let path = args.md_path.canonicalize().unwrap_or(args.md_path.clone());
    eprintln!("imds-bench: wrote {}", path.display());
    Ok(())
}

/// Phases 1-4 and their report.
fn core(args: &Args, plan: &Plan, monitor: &std::path::Path, load_at_start: String) -> Result<()> {
    let sandbox = Sandbox::builder().build().context("building the sandbox")?;
    eprintln!("imds-bench: [1/4] kernel cost per packet and per request");
    let kernel = phases::kernel_cost(&sandbox, plan)?;
    eprintln!(
        "imds-bench: [2/4] daemon at {} req/s for {:?}",
        plan.steady_rate, plan.steady_duration
    );
    // New connection per request: the costliest shape for every part.
    let steady = phases::under_load(&sandbox, plan.steady_rate, plan.steady_duration, 2, 1)?;
    eprintln!(
        "imds-bench: [3/4] lost events at {} req/s for {:?}",
        plan.burst_rate, plan.burst_duration
    );
    let burst = phases::under_load(
        &sandbox,
        plan.burst_rate,
        plan.burst_duration,
        plan.burst_clients,
        plan.burst_pipeline,
    )?;
    drop(sandbox);
    eprintln!("imds-bench: [4/4] the classifier per packet type, in isolation");
    let isolated = bench::isolated::measure(monitor, plan.isolated_iterations)?;

    let report = Report {
        machine: Machine::read(),
        date: report::today(),
        command: command_line(),
        quick: args.quick,
        load_at_start,
        kernel,
        steady,
        burst,
        isolated,
    };
    print!("{}", report.text());
    if args.write_md {
        report::write_results(&args.md_path, &report.markdown())?;
        let path = args.md_path.canonicalize().unwrap_or(args.md_path.clone());
        eprintln!("imds-bench: wrote {}", path.display());
    }
    Ok(())
}

/// How this run was started, for BENCHMARKS.md: `cargo xtask bench` sets
/// IMDS_MONITOR_BIN, a direct start usually does not.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let via_xtask = std::env::var_os(imds_sandbox::monitor::MONITOR_BIN_ENV).is_some();
    match (via_xtask, args.is_empty()) {
        (true, true) => "cargo xtask bench".to_owned(),
        (true, false) => format!("cargo xtask bench -- {}", args.join(" ")),
        (false, _) => std::iter::once("imds-bench".to_owned())
            .chain(args)
            .collect::<Vec<_>>()
            .join(" "),
    }
}
