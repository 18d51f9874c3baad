//! `imds-monitor policy check FILE`: validates a policy file and prints the
//! rules it amounts to, defaults included, so a person sees what enforce mode
//! would do before it drops anything.

use std::{
    fmt::Write as _,
    io::{self, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use imds_monitor_common::class::RequestClass;

use super::{
    model::{Action, Origin, Policy},
    parse::{self, LoadError},
};

const EXIT_VALID: u8 = 0;
const EXIT_INVALID: u8 = 1;
const EXIT_UNREADABLE: u8 = 2;

const CHECK_HELP: &str = "\
Example policy (docs/policy.md describes every key):

  # action per class: allow | alert | drop; unset classes keep the
  # defaults (v1_get = drop, everything else allow)
  [actions]
  v1_get = \"drop\"
  invalid = \"alert\"

  # this workload's v1_get requests are alerted on, not dropped
  [[exception]]
  name = \"legacy-backup-agent\"
  cgroup_prefix = \"/system.slice/legacy-backup.service\"
  action = \"alert\"

Examples:
  imds-monitor policy check /etc/imds-monitor/policy.toml

  # In CI, before shipping a policy
  imds-monitor policy check policy.toml >/dev/null || exit 1

Exit status:
  0  the file is valid; its rules are printed
  1  the file is invalid: FILE:LINE: reason on stderr
  2  the file cannot be read, or bad command line";

// No doc comments on these two: clap would take them as about texts.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  imds-monitor policy check /etc/imds-monitor/policy.toml")]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and print the rules it amounts to
    #[command(after_help = CHECK_HELP)]
    Check {
        /// The policy file (TOML)
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Write a policy that drops IMDSv1 for all but the workloads seen using
    /// it in the events, one exception each by its most stable identity
    #[command(after_help = SUGGEST_HELP)]
    Suggest {
        /// Event files written by `imds-monitor run` (plain, rotated or gzipped)
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        /// Write the policy here instead of stdout
        #[arg(short, long, value_name = "POLICY")]
        output: Option<PathBuf>,
    },
}

const SUGGEST_HELP: &str = "\
Each exception names its workload by what survives a redeploy: Kubernetes
namespace and owner (k8s_namespace, k8s_owner), ECS task family, image
repository, systemd unit, executable; a container id only when its runtime
could not be asked. A comment says how many IMDSv1 requests it made, when,
and to which paths.

Examples:
  imds-monitor policy suggest /var/log/imds-monitor/events.json* -o policy.toml
  imds-monitor policy check policy.toml
  sudo imds-monitor run --mode enforce --policy policy.toml
  imds-monitor report --policy policy.toml /var/log/imds-monitor/events.json*";

pub fn main(args: PolicyArgs) -> ExitCode {
    match args.command {
        PolicyCommand::Check { file } => check(&file),
        PolicyCommand::Suggest { files, output } => match crate::report::ratchet::suggest(&files) {
            Ok(text) => {
                let written = match &output {
                    Some(path) => std::fs::write(path, &text),
                    None => io::stdout().lock().write_all(text.as_bytes()),
                };
                match written {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("imds-monitor policy suggest: cannot write: {e}");
                        ExitCode::from(EXIT_UNREADABLE)
                    }
                }
            }
            Err(e) => {
                eprintln!("imds-monitor policy suggest: {e}");
                ExitCode::from(EXIT_UNREADABLE)
            }
        },
    }
}

fn check(file: &std::path::Path) -> ExitCode {
    let policy = match parse::load(file) {
        Ok(policy) => policy,
        Err(err @ LoadError::Invalid { .. }) => {
            eprintln!("{err}");
            return ExitCode::from(EXIT_INVALID);
        }
        Err(err @ LoadError::Unreadable { .. }) => {
            eprintln!("imds-monitor policy check: {err}");
            return ExitCode::from(EXIT_UNREADABLE);
        }
    };
    let text = render(&file.display().to_string(), &policy);
    // `policy check ... | head` closes the pipe early; that is not an error.
    match io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
            eprintln!("imds-monitor policy check: cannot write: {err}");
            ExitCode::from(EXIT_UNREADABLE)
        }
        _ => ExitCode::from(EXIT_VALID),
    }
}

/// The effective rules, in the order [`super::decide`] uses them.
pub fn render(file: &str, policy: &Policy) -> String {
    let mut out = format!("{file}: valid\n\nclass actions:\n");
    for class in RequestClass::ALL {
        let from = match policy.origin(class) {
            Origin::Default => "default".to_owned(),
            Origin::File { line } => format!("file, line {line}"),
        };
        let action = policy.action(class).as_str();
        let _ = writeln!(out, "  {:<13} {action:<6} {from}", class.as_str());
    }

    if policy.exceptions.is_empty() {
        out.push_str("\nexceptions: none\n");
        return out;
    }
    out.push_str(
        "\nexceptions, first match wins, for requests a class action alerts on or drops:\n",
    );
    for (i, exception) in policy.exceptions.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {}. {} (line {}): {}",
            i + 1,
            exception.name,
            exception.line,
            exception.action
        );
        for matcher in &exception.matchers {
            let _ = writeln!(out, "       {:<13} = {:?}", matcher.key(), matcher.value());
        }
    }
    // Unjudged requests are always dropped, so an exception always has
    // something to apply to; say when that is all it applies to.
    if !policy.exceptions.is_empty()
        && RequestClass::ALL
            .into_iter()
            .all(|c| c == RequestClass::Incomplete || policy.action(c) == Action::Allow)
    {
        out.push_str(
            "\nnote: every class but incomplete is allowed, so the exceptions only let \
             requests the classifier could not judge through\n",
        );
    }
    out
}
