//! `cargo xtask test`: setup, fmt, clippy and the workspace tests, with one
//! closing line `N passed, M failed` summed over every test binary.

use std::io::{self, Read as _, Write as _};
use std::process::Stdio;

use anyhow::Context as _;

use crate::cmd;
use crate::setup::{self, SetupArgs};
use crate::vm;

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Do not run `cargo xtask setup` first.
    #[arg(long)]
    pub no_setup: bool,

    /// Skip the kernel matrix (the checks and integration tests in qemu VMs
    /// of Debian's 5.10, 6.1 and 6.12 kernels).
    #[arg(long, conflicts_with = "kernels")]
    pub no_kernels: bool,

    /// Skip `cargo xtask dist` and the tests of what it builds (static
    /// binaries, packages, the OCI image).
    #[arg(long)]
    pub no_dist: bool,

    /// Kernel lines of the matrix: comma-separated 5.10, 6.1, 6.12, or all.
    #[arg(long, value_name = "LIST", default_value = "all")]
    pub kernels: String,

    /// Extra arguments for `cargo test`, after `--` (e.g. `-- -p imds-monitor-common`,
    /// `-- parse -- --nocapture`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CARGO_TEST_ARGS"
    )]
    pub cargo_test_args: Vec<String>,
}

/// Sum of the libtest `test result:` lines seen so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// How many `test result:` lines (test binaries, doctest runs) were seen.
    pub results: u64,
}

impl Tally {
    /// Adds one output line if it is a libtest summary such as
    /// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result:") else {
            return;
        };
        // Skip `ok.` / `FAILED.`, then read `N word` pairs separated by `;`.
        let rest = rest.split_once('.').map_or(rest, |(_, r)| r);
        let mut found = false;
        for part in rest.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => continue,
            }
            found = true;
        }
        if found {
            self.results += 1;
        }
    }

    /// Adds another run's counts.
    pub fn add(&mut self, other: &Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.results += other.results;
    }

    pub fn executed(&self) -> u64 {
        self.passed + self.failed
    }

    /// The closing line: `N passed, M failed[, K skipped]`.
    pub fn summary_line(&self) -> String {
        let mut s = format!("{} passed, {} failed", self.passed, self.failed);
        if self.ignored > 0 {
            s.push_str(&format!(", {} skipped", self.ignored));
        }
        s
    }
}

/// Feeds bytes to a [`Tally`] line by line.
#[derive(Debug, Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    fn feed(&mut self, bytes: &[u8], tally: &mut Tally) {
        for &b in bytes {
            if b == b'\n' {
                tally.add_line(&String::from_utf8_lossy(&self.partial));
                self.partial.clear();
            } else {
                self.partial.push(b);
            }
        }
    }

    fn finish(&mut self, tally: &mut Tally) {
        if !self.partial.is_empty() {
            tally.add_line(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
    }
}

struct Step {
    name: String,
    outcome: Result<String, String>,
}

pub fn test(args: &TestArgs) -> anyhow::Result<()> {
    if !cmd::is_root() {
        anyhow::bail!(
            "cargo xtask test must run as root: the integration tests create network \
             namespaces, veth pairs and nftables rules and load eBPF programs. \
             Run it as root (e.g. `sudo -E cargo xtask test`)."
        );
    }
    if !args.no_setup {
        println!("== setup ==");
        setup::setup(&SetupArgs { check: false }).context("setup failed; nothing was tested")?;
    }

    let mut steps: Vec<Step> = Vec::new();

    println!("== format ==");
    let mut fmt = cmd::cargo();
    fmt.args(["fmt", "--all", "--check"]);
    steps.push(run_step(&mut fmt));

    println!("== clippy ==");
    let mut clippy = cmd::cargo();
    clippy.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
    steps.push(run_step(&mut clippy));

    println!("== test ==");
    let mut test = cmd::cargo();
    test.args(["test", "--no-fail-fast"])
        .args(&args.cargo_test_args);
    let (step, mut tally) = run_tests(&mut test);
    steps.push(step);

    // What users install: the static binaries, packages and image, and the
    // tests that need them (ignored by plain `cargo test`).
    if args.no_dist {
        println!("== dist: skipped (--no-dist) ==");
    } else {
        println!("== dist ==");
        match crate::dist::dist(&crate::dist::DistArgs::everything()) {
            Ok(()) => {
                steps.push(Step {
                    name: "cargo xtask dist".into(),
                    outcome: Ok(String::new()),
                });
                let mut artifacts = cmd::cargo();
                artifacts.args(crate::dist::ARTIFACT_TESTS);
                let (step, dist_tally) = run_tests(&mut artifacts);
                steps.push(step);
                tally.add(&dist_tally);
            }
            Err(e) => steps.push(Step {
                name: "cargo xtask dist".into(),
                outcome: Err(format!("{e:#}")),
            }),
        }
    }

    // The same binaries, in VMs of the kernels EC2 hosts run.
    let mut kernels = Vec::new();
    if args.no_kernels {
        println!("== kernels: skipped (--no-kernels) ==");
    } else {
        println!("== kernels ==");
        match vm::matrix::run(&args.kernels, &mut tally) {
            Ok(results) => kernels = results,
            Err(e) => steps.push(Step {
                name: "kernel matrix".to_owned(),
                outcome: Err(format!("{e:#}")),
            }),
        }
    }
    for k in &kernels {
        steps.push(Step {
            name: format!("kernel {} (check + integration tests)", k.run.version),
            outcome: k.outcome(),
        });
    }

    println!("== summary ==");
    for step in &steps {
        match &step.outcome {
            Ok(detail) => println!("ok       {}{detail}", step.name),
            Err(why) => println!("FAILED   {}: {why}", step.name),
        }
    }
    if !kernels.is_empty() {
        println!();
        vm::print_table(kernels.iter().map(|k| (&k.run, Some(&k.tally))));
        println!();
    }
    println!(
        "note: imds-monitor-ebpf is not linted here (it builds only for bpfel-unknown-none \
         with nightly); imds-monitor's build script compiles it, so clippy/test above \
         fail if it does not build."
    );
    let failed = steps.iter().filter(|s| s.outcome.is_err()).count();
    // The closing line, alone and last on stdout.
    println!("{}", tally.summary_line());
    io::stdout().flush().ok();
    if failed > 0 {
        // Already reported above; keep the count line the last one printed.
        return Err(cmd::Silent(1).into());
    }
    Ok(())
}

fn run_step(c: &mut std::process::Command) -> Step {
    let name = cmd::display(c);
    let outcome = match cmd::status(c) {
        Ok(status) if status.success() => Ok(String::new()),
        Ok(status) => Err(format!("exit code {}", cmd::exit_code(status))),
        Err(e) => Err(format!("{e:#}")),
    };
    Step { name, outcome }
}

/// Runs `cargo test`, streaming its stdout through while summing the
/// `test result:` lines.
fn run_tests(c: &mut std::process::Command) -> (Step, Tally) {
    let name = cmd::display(c);
    let mut tally = Tally::default();
    let outcome = stream_and_tally(c, &mut tally).and_then(|status| {
        if !status.success() {
            Err(format!("exit code {}", cmd::exit_code(status)))
        } else if tally.executed() == 0 {
            Err("no test was executed".to_owned())
        } else {
            Ok(format!(
                " ({} test binaries/doctest runs, {} tests executed)",
                tally.results,
                tally.executed()
            ))
        }
    });
    (Step { name, outcome }, tally)
}

fn stream_and_tally(
    c: &mut std::process::Command,
    tally: &mut Tally,
) -> Result<std::process::ExitStatus, String> {
    cmd::announce(c);
    let mut child = c
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start cargo: {e}"))?;
    let mut pipe = child.stdout.take().expect("stdout is piped");
    let mut splitter = LineSplitter::default();
    let mut buf = [0u8; 8192];
    let mut out = io::stdout();
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Output goes straight through, also partial lines
                // (`test slow ... ` before its `ok`).
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
                splitter.feed(&buf[..n], tally);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("reading cargo test output: {e}"));
            }
        }
    }
    splitter.finish(tally);
    child
        .wait()
        .map_err(|e| format!("waiting for cargo test: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_sums_result_lines() {
        let mut t = Tally::default();
        for line in [
            "running 3 tests",
            "test a ... ok",
            "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
            "test result: FAILED. 2 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.20s",
            "   Doc-tests imds_monitor_common",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            t.add_line(line);
        }
        assert_eq!(
            t,
            Tally {
                passed: 5,
                failed: 1,
                ignored: 2,
                results: 3
            }
        );
        assert_eq!(t.summary_line(), "5 passed, 1 failed, 2 skipped");
    }

    #[test]
    fn tally_ignores_other_lines() {
        let mut t = Tally::default();
        t.add_line("test tests::result_parsing ... ok");
        t.add_line("test result: garbage");
        t.add_line("println!(\"test result: ok. 3 passed\")");
        assert_eq!(t, Tally::default());
        assert_eq!(t.summary_line(), "0 passed, 0 failed");
        assert_eq!(t.executed(), 0);
    }

    #[test]
    fn tally_accepts_indent_and_crlf() {
        let mut t = Tally::default();
        t.add_line(
            "  test result: ok. 7 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\r",
        );
        assert_eq!(t.passed, 7);
        assert_eq!(t.results, 1);
    }

    #[test]
    fn splitter_handles_chunks() {
        let mut t = Tally::default();
        let mut s = LineSplitter::default();
        s.feed(b"test result: ok. 1 pass", &mut t);
        assert_eq!(t.results, 0);
        s.feed(
            b"ed; 0 failed; 0 ignored\ntest result: ok. 2 passed; 1 failed;",
            &mut t,
        );
        assert_eq!(t.passed, 1);
        s.finish(&mut t);
        assert_eq!((t.passed, t.failed, t.results), (3, 1, 2));
    }
}
