//! imds-monitor: finds which workloads on an EC2 host still use IMDSv1.
//!
//! Data path: packet -> kernel classifier (`imds-monitor-ebpf`) -> ring buffer
//! -> [`event`] decode -> [`enrich`] (process, cgroup, workload) ->
//! [`output::ecs`] JSON -> [`output::sink`].

mod cgroups;
mod check;
mod cli;
mod clock;
mod config_file;
mod diagnose;
mod endpoints;
mod enrich;
mod event;
mod interfaces;
mod kernel;
mod kernel_log;
mod links;
mod metrics;
mod output;
mod policy;
mod processes;
mod report;
mod run;
mod runtime;
mod stats;
mod tc_filters;
mod tick;
mod verifier;
mod workload;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Run(args) => config_file::resolve(args).and_then(run::run),
        cli::Command::Detach(args) => run::detach(&args.pin_dir),
        // These choose their own exit codes (documented in their --help).
        cli::Command::Report(args) => return report::main(args),
        cli::Command::Check(args) => return check::main(args),
        cli::Command::Policy(args) => return policy::main(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("imds-monitor: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
