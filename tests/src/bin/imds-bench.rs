//! `imds-bench`: what imds-monitor costs, measured in an EC2-like sandbox.
//!
//! 1. Kernel time per packet of the classifier and of an empty TC program
//!    attached beside it (`--baseline-passthrough`), for non-IMDS TCP,
//!    IMDSv1 and IMDSv2 traffic, from the kernel's BPF run-time statistics.
//! 2. The daemon's CPU and peak RSS while clients keep 1,000 requests/s up.
//! 3. Lost events at 5,000 requests/s.
//! 4. The classifier per packet type, in isolation: the daemon's eBPF object
//!    run with `BPF_PROG_TEST_RUN` on hand-made packets, caches warm and cold.
//!
//! Targets are reported as PASS or FAIL, never enforced: the exit code is 0
//! unless something could not be measured. Run it with `cargo xtask bench`
//! (as root), which builds the release daemon and sets `IMDS_MONITOR_BIN`.

#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use imds_sandbox::{Sandbox, imds_monitor_bin, is_root};

use bench::phases::{self, Plan};
use bench::procfs::{self, Machine};
use bench::report::{self, Report};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Benchmark of imds-monitor in an EC2-like sandbox (needs root)"
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
    /// The file --write-md rewrites.
    #[arg(long, value_name = "PATH", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md"))]
    md_path: PathBuf,
}

fn main() -> ExitCode {
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

    let load_at_start = procfs::load_average();
    let sandbox = Sandbox::builder().build().context("building the sandbox")?;
    eprintln!("imds-bench: [1/4] kernel cost per packet and per request");
    let kernel = phases::kernel_cost(&sandbox, &plan)?;
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
    let isolated = bench::isolated::measure(&monitor, plan.isolated_iterations)?;

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
