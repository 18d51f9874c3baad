//! `run --config FILE`: a TOML file of `run`'s options, for the packages'
//! `/etc/imds-monitor/config.toml` and the systemd unit.
//!
//! Each key is a long option of `run` with `_` or `-` between words (`mode`,
//! `policy`, `output`, `rotate_mib`, `iface`, `endpoint`, ...): a string or
//! integer for an option that takes a value, an array for a repeatable one,
//! `true`/`false` for a switch. Values go through the same parsers as the
//! command line, so a bad value reads as it would there, prefixed with the
//! file's name. An option given on the command line replaces the file's
//! (a repeatable one as a whole: `--iface eth1` drops the file's `iface`).

use std::{ffi::OsString, path::Path};

use anyhow::{Context as _, anyhow, bail};
use clap::{ArgAction, CommandFactory as _, FromArgMatches as _, parser::ValueSource};

use crate::cli::{Cli, Command, RunArgs};

/// Options a config file may not set: the file itself and the hidden ones
/// that exist for tests and benchmarks.
const NOT_IN_FILE: &[&str] = &["config", "help"];

/// `args` with the config file's options filled in where the command line
/// did not give them; `args` unchanged without `--config`.
pub fn resolve(args: RunArgs) -> anyhow::Result<RunArgs> {
    let Some(path) = args.config.clone() else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    merge(&path, &text, &std::env::args_os().collect::<Vec<_>>())
}

/// The `run` options of `argv` (the whole command line, program first) over
/// those of the config file `text`.
pub fn merge(path: &Path, text: &str, argv: &[OsString]) -> anyhow::Result<RunArgs> {
    let at = argv
        .iter()
        .position(|a| a == "run")
        .context("no `run` on the command line")?;
    let (head, cmdline) = argv.split_at(at + 1);
    let from_file = file_options(text).map_err(|e| anyhow!("{}: {e}", path.display()))?;

    // The file alone must make a valid command line.
    let alone: Vec<OsString> = head
        .iter()
        .cloned()
        .chain(from_file.iter().flat_map(|(_, a)| a.iter().cloned()))
        .collect();
    parse(&alone).map_err(|e| anyhow!("{}: {e}", path.display()))?;

    let given = Cli::command()
        .try_get_matches_from(argv)
        .context("parsing the command line")?;
    let given = given
        .subcommand_matches("run")
        .context("no `run` on the command line")?;
    let merged: Vec<OsString> = head
        .iter()
        .cloned()
        .chain(
            from_file
                .iter()
                .filter(|(id, _)| given.value_source(id) != Some(ValueSource::CommandLine))
                .flat_map(|(_, a)| a.iter().cloned()),
        )
        .chain(cmdline.iter().cloned())
        .collect();
    parse(&merged)
}

fn parse(argv: &[OsString]) -> anyhow::Result<RunArgs> {
    let matches = Cli::command()
        .try_get_matches_from(argv)
        .map_err(|e| anyhow!("{}", first_line(&e.to_string())))?;
    match Cli::from_arg_matches(&matches)?.command {
        Command::Run(args) => Ok(args),
        _ => bail!("not a `run` command line"),
    }
}

fn first_line(s: &str) -> &str {
    let s = s.trim_start_matches("error: ");
    s.lines().next().unwrap_or(s)
}

/// The file's options as (arg id, command-line words), in file order.
fn file_options(text: &str) -> anyhow::Result<Vec<(String, Vec<OsString>)>> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
    let cli = Cli::command();
    let run = cli.find_subcommand("run").context("no run subcommand")?;
    let settable: Vec<&clap::Arg> = run
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !NOT_IN_FILE.contains(&a.get_id().as_str()))
        .filter(|a| a.get_long().is_some())
        .collect();
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = settable
            .iter()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            let keys: Vec<String> = settable
                .iter()
                .filter_map(|a| a.get_long().map(|l| l.replace('-', "_")))
                .collect();
            bail!("unknown key `{key}`; keys are {}", keys.join(", "));
        };
        let flag = OsString::from(format!("--{long}"));
        let scalar = |v: &toml::Value| -> anyhow::Result<OsString> {
            match v {
                toml::Value::String(s) => Ok(s.into()),
                toml::Value::Integer(i) => Ok(i.to_string().into()),
                other => bail!(
                    "`{key}`: expected a string or an integer, not {}",
                    other.type_str()
                ),
            }
        };
        let words = match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(b)) => {
                if *b {
                    vec![flag]
                } else {
                    vec![]
                }
            }
            (ArgAction::SetTrue, other) => {
                bail!("`{key}`: expected true or false, not {}", other.type_str())
            }
            (ArgAction::Append, toml::Value::Array(items)) => items
                .iter()
                .map(|v| Ok([flag.clone(), scalar(v)?]))
                .collect::<anyhow::Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect(),
            (ArgAction::Append | ArgAction::Set, v) => vec![flag, scalar(v)?],
            (action, _) => bail!("`{key}`: cannot be set in a file ({action:?})"),
        };
        out.push((arg.get_id().to_string(), words));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Mode;

    fn argv(words: &str) -> Vec<OsString> {
        words.split_whitespace().map(OsString::from).collect()
    }

    const FILE: &str = r#"
# /etc/imds-monitor/config.toml
mode = "alert"
output = "/var/log/imds-monitor/events.json"
rotate_mib = 50
rotate-keep = 3
summary_interval = "1m"
iface = ["ens5", "ens6"]
endpoint = ["169.254.169.254", "169.254.170.2:80"]
persist = true
"#;

    #[test]
    fn file_fills_in_what_the_command_line_does_not_say() {
        let p = Path::new("c.toml");
        let a = merge(p, FILE, &argv("imds-monitor run --config c.toml")).unwrap();
        assert_eq!(a.mode, Mode::Alert);
        assert_eq!(a.output, "/var/log/imds-monitor/events.json");
        assert_eq!((a.rotate_mib, a.rotate_keep), (50, 3));
        assert_eq!(a.summary_interval, std::time::Duration::from_secs(60));
        assert_eq!(a.ifaces, ["ens5", "ens6"]);
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!(a.endpoints[1].to_string(), "169.254.170.2:80");
        assert!(a.persist);
        assert!(a.policy.is_none());
    }

    #[test]
    fn kernel_log_from_the_file_and_off_by_default() {
        use crate::kernel_log::KernelLog;
        let p = Path::new("c.toml");
        let run = argv("imds-monitor run --config c.toml");
        let a = merge(p, "kernel_log = \"debug\"\n", &run).unwrap();
        assert_eq!(a.kernel_log, KernelLog::Debug);
        assert_eq!(merge(p, FILE, &run).unwrap().kernel_log, KernelLog::Off);
        let err = format!(
            "{:#}",
            merge(p, "kernel-log = \"trace\"\n", &run).unwrap_err()
        );
        assert!(err.contains("trace"), "{err}");
    }

    #[test]
    fn command_line_wins() {
        let p = Path::new("c.toml");
        let a = merge(
            p,
            FILE,
            &argv("imds-monitor run --mode enforce --config c.toml --iface eth9 -o -"),
        )
        .unwrap();
        assert_eq!(a.mode, Mode::Enforce);
        assert_eq!(a.ifaces, ["eth9"]);
        assert_eq!(a.output, "-");
        assert_eq!(a.rotate_mib, 50);
    }

    #[test]
    fn bad_files_say_what_and_where() {
        let p = Path::new("/etc/imds-monitor/config.toml");
        let err = |text: &str| {
            format!(
                "{:#}",
                merge(p, text, &argv("imds-monitor run --config x")).unwrap_err()
            )
        };
        let e = err("mdoe = \"alert\"");
        assert!(
            e.starts_with("/etc/imds-monitor/config.toml: unknown key `mdoe`"),
            "{e}"
        );
        assert!(e.contains("mode"), "{e}");
        let e = err("mode = \"loud\"");
        assert!(e.contains("loud") && e.contains("--mode"), "{e}");
        let e = err("rotate_mib = 0");
        assert!(e.contains("--rotate-mib"), "{e}");
        let e = err("persist = \"yes\"");
        assert!(e.contains("expected true or false"), "{e}");
        let e = err("mode = ");
        assert!(e.contains("line 1"), "{e}");
        let e = err("pin_dir = \"/tmp\"");
        assert!(e.contains("unknown key `pin_dir`"), "{e}");
        let e = err("config = \"/x\"");
        assert!(e.contains("unknown key `config`"), "{e}");
    }

    #[test]
    fn metrics_options_from_the_file() {
        let p = Path::new("c.toml");
        let text = "metrics = \"127.0.0.1:9464\"\nmetrics_top_workloads = 5\n";
        let a = merge(p, text, &argv("imds-monitor run --config c.toml")).unwrap();
        assert_eq!(
            a.metrics.map(|m| m.to_string()).as_deref(),
            Some("127.0.0.1:9464")
        );
        assert_eq!(a.metrics_top_workloads, 5);
        let e = format!(
            "{:#}",
            merge(
                p,
                "metrics = \"9464\"",
                &argv("imds-monitor run --config x")
            )
            .unwrap_err()
        );
        assert!(e.starts_with("c.toml: ") && e.contains("--metrics"), "{e}");
    }

    #[test]
    fn packaged_config_is_valid() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../packaging/config.toml"
        ));
        let text = std::fs::read_to_string(path).unwrap();
        let a = merge(path, &text, &argv("imds-monitor run --config x")).unwrap();
        assert_eq!(a.mode, Mode::Alert);
        assert_eq!(a.output, "/var/log/imds-monitor/events.json");
    }
}
