//! `imds-monitor report`: which workloads still use IMDSv1, from the events,
//! and whether `HttpTokens=required` is safe.
//!
//! [`input`] opens files and stdin, [`parse`] turns lines into events,
//! [`model`] counts them per workload and decides, [`render`] prints.

mod input;
mod model;
mod parse;
pub mod ratchet;
mod render;
#[cfg(test)]
mod tests;

use std::{
    io::{self, IsTerminal as _, Write as _},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use input::{Input, ReadError};
use parse::Log;

const EXIT_SAFE: u8 = 0;
const EXIT_NOT_SAFE: u8 = 1;
const EXIT_NO_INPUT: u8 = 2;

const AFTER_HELP: &str = "\
Examples:
  # Every file the monitor wrote: rotated ones and gzipped ones too
  imds-monitor report /var/log/imds-monitor/events.json*

  # Events kept by the journal (-o cat: the JSON lines alone)
  journalctl -u imds-monitor -o cat | imds-monitor report -

  # The last 7 days, as one JSON object for a script
  imds-monitor report --since 7d --format json /var/log/imds-monitor/events.json*

Notes:
  --since counts back from the newest event read, not from now, so an archived
  file gives the same answer later. Gzip input is recognised by its first
  bytes, whatever its name. Lines that are not events (not JSON, missing or
  mistyped fields) are skipped and counted, never fatal.
  Requests are counted from imds-request events; a host's imds-summary events
  are used only when it has no imds-request event (a dashboard export), so
  nothing is counted twice.
  HttpTokens=required is judged safe when no workload made an IMDSv1 request
  and none hit the token hop limit or fell back to IMDSv1. Requests of class
  invalid or other_cloud do not count against it.

Exit status:
  0  safe for the window read
  1  not safe: the workloads in the way are listed
  2  an input cannot be read, or holds no event";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table, findings and the verdict, for people
    #[default]
    Table,
    /// One JSON object, for scripts
    Json,
}

// No doc comment here: clap would take it as the subcommand's about text.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct ReportArgs {
    /// Event files written by `imds-monitor run` (plain, rotated or gzipped);
    /// `-` or none for stdin
    #[arg(value_name = "FILE|-")]
    pub files: Vec<PathBuf>,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// Only count events within DURATION before the newest event read, not
    /// before now, so an archive keeps its answer (e.g. 24h, 7d, 90m)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,

    /// IMDSv1 paths to list per workload, most requested first
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub top: u64,

    /// A policy (e.g. from `imds-monitor policy suggest`): after the report,
    /// its burn-down: which exceptions are still used, which can go
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<PathBuf>,

    /// With --policy: an exception with no IMDSv1 request for this long
    /// before the newest event can go
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub unused_for: Duration,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("imds-monitor report: {message}");
    ExitCode::from(EXIT_NO_INPUT)
}

/// Reads every input into one log; the first unreadable one ends the report,
/// since a verdict that silently left a file out could call a host safe.
fn read_all(inputs: &[Input]) -> Result<Log, ReadError> {
    let readers = inputs
        .iter()
        .map(|input| input::open(input).map(|r| (input, r)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut log = Log::default();
    for (input, raw) in readers {
        input::decompressed(raw)
            .and_then(|reader| {
                input::for_each_line(reader, |number, line| log.add_line(input, number, line))
            })
            .map_err(|error| ReadError {
                input: input.clone(),
                error,
            })?;
    }
    Ok(log)
}

pub fn main(args: ReportArgs) -> ExitCode {
    let inputs: Vec<Input> = if args.files.is_empty() {
        if io::stdin().is_terminal() {
            return fail(
                "no FILE given and stdin is a terminal: name the event files \
                 (e.g. /var/log/imds-monitor/events.json*) or pipe events in",
            );
        }
        vec![Input::Stdin]
    } else {
        args.files.iter().cloned().map(Input::from_arg).collect()
    };
    let log = match read_all(&inputs) {
        Ok(log) => log,
        Err(err) => return fail(err),
    };
    let options = model::Options {
        since: args.since,
        top: usize::try_from(args.top).unwrap_or(usize::MAX),
    };
    let Some(report) = model::build(&log, &options) else {
        let names = inputs.iter().map(ToString::to_string).collect::<Vec<_>>();
        let skipped = match &log.first_malformed {
            Some(first) => format!(
                " ({} skipped, the first {first}; from journalctl, use -o cat)",
                model::plural(log.malformed_lines, "malformed line"),
            ),
            None => String::new(),
        };
        return fail(format_args!(
            "no events read from {}{skipped}: nothing to judge",
            names.join(", ")
        ));
    };
    let mut text = match args.format {
        Format::Table => render::table(&report),
        Format::Json => render::json(&report),
    };
    if let Some(path) = &args.policy {
        let policy = match crate::policy::parse::load(path) {
            Ok(policy) => policy,
            Err(err) => return fail(err),
        };
        let files: Vec<PathBuf> = inputs
            .iter()
            .filter_map(|i| match i {
                Input::File(path) => Some(path.clone()),
                Input::Stdin => None,
            })
            .collect();
        match ratchet::burn_down(&policy, path, &files, args.unused_for) {
            Ok(burn) if args.format == Format::Table => text.push_str(&burn),
            Ok(_) => {}
            Err(err) => return fail(err),
        }
    }
    // `report ... | head` closes the pipe early; that is not an error.
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
            return fail(format_args!("cannot write the report: {err}"));
        }
        _ => {}
    }
    ExitCode::from(if report.verdict.safe {
        EXIT_SAFE
    } else {
        EXIT_NOT_SAFE
    })
}
