//! `imds-monitor report`: which workloads still use IMDSv1, from the events.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ReportArgs {}

pub fn main(_args: ReportArgs) -> ExitCode {
    eprintln!("imds-monitor report: not implemented yet");
    ExitCode::from(2)
}
