//! `imds-monitor check`: a preflight of the host.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {}

pub fn main(_args: CheckArgs) -> ExitCode {
    eprintln!("imds-monitor check: not implemented yet");
    ExitCode::from(1)
}
