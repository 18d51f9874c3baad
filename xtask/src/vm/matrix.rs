//! The kernel matrix of `cargo xtask test`: in each kernel,
//! `imds-monitor check` and the integration test binaries of imds-sandbox,
//! built on the host and run directly in the guest.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{Matrix, VmRun, kernels};
use crate::cmd;
use crate::test::Tally;

/// Test binaries (tests/tests/*.rs of imds-sandbox) run in every kernel.
pub const GUEST_TESTS: &[&str] = &[
    "classify",
    "attribution",
    "enforce",
    "diagnostics",
    "lifecycle",
    "fail_closed",
    "verifier_budget",
    "host_faults",
    "kernel_log",
    "daemonset",
];

/// libtest arguments for a test binary in the guests, where TCG makes
/// everything several times slower than on the host. Empty: all tests run.
const GUEST_TEST_ARGS: &[(&str, &[&str])] = &[];

/// A VM running every step for one kernel may take this long.
const TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// What one kernel did.
#[derive(Debug)]
pub struct KernelResult {
    pub run: VmRun,
    pub tally: Tally,
    /// Exit code per step, in order (`check`, then the test binaries).
    pub steps: Vec<(String, i32)>,
    /// How many steps the guest script has.
    pub expected_steps: usize,
}

impl KernelResult {
    /// `Ok(detail)` when every step ran and succeeded, else why not.
    pub fn outcome(&self) -> Result<String, String> {
        let expected_steps = self.expected_steps;
        let failed: Vec<String> = self
            .steps
            .iter()
            .filter(|(_, rc)| *rc != 0)
            .map(|(name, rc)| format!("{name} (exit {rc})"))
            .collect();
        if let Some(why) = &self.run.problem {
            Err(format!(
                "{why}; steps finished: {}/{expected_steps}",
                self.steps.len()
            ))
        } else if !failed.is_empty() {
            Err(format!("failed: {}", failed.join(", ")))
        } else if self.run.exit != Some(0) || self.steps.len() != expected_steps {
            Err(format!(
                "exit {:?}, {}/{expected_steps} steps finished",
                self.run.exit,
                self.steps.len()
            ))
        } else {
            Ok(format!(
                " ({} tests, boot {:.1} s, total {:.1} s)",
                self.tally.executed(),
                self.run.boot.unwrap_or_default().as_secs_f64(),
                self.run.total.as_secs_f64()
            ))
        }
    }
}

/// The binaries the guests run, built on the host.
#[derive(Debug)]
pub struct Built {
    pub monitor: PathBuf,
    /// `imds-client`, which the tests run as their raw HTTP client.
    pub client: PathBuf,
    pub tests: Vec<(String, PathBuf)>,
}

impl Built {
    pub fn steps(&self) -> usize {
        1 + self.tests.len()
    }

    /// Copies the binaries into `dir`, laid out like `target/debug` (tests
    /// in `deps/`), so that a rebuild on the host during the matrix, which
    /// replaces the files (the guests' virtiofs view then fails with ESTALE),
    /// neither breaks nor changes what the guests run.
    pub fn snapshot(&self, dir: &Path) -> anyhow::Result<Self> {
        let copy = |from: &Path, to: PathBuf| -> anyhow::Result<PathBuf> {
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::copy(from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
            Ok(to)
        };
        let file_name = |p: &Path| p.file_name().map(PathBuf::from).unwrap_or_default();
        Ok(Self {
            monitor: copy(&self.monitor, dir.join("imds-monitor"))?,
            client: copy(&self.client, dir.join("imds-client"))?,
            tests: self
                .tests
                .iter()
                .map(|(name, exe)| {
                    Ok((
                        name.clone(),
                        copy(exe, dir.join("deps").join(file_name(exe)))?,
                    ))
                })
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

/// Builds `imds-monitor` (debug, the binary the integration tests look for)
/// and the test binaries, reading their paths from cargo's JSON messages.
pub fn build() -> anyhow::Result<Built> {
    let monitor = cargo_executables(&["build", "-p", "imds-monitor", "--bin", "imds-monitor"])?
        .into_iter()
        .find(|a| a.name == "imds-monitor" && a.kind == "bin" && !a.test)
        .context("cargo built no imds-monitor binary")?
        .executable;
    let artifacts = cargo_executables(&["test", "-p", "imds-sandbox", "--no-run"])?;
    let client = artifacts
        .iter()
        .find(|a| a.name == "imds-client" && a.kind == "bin" && !a.test)
        .context("cargo built no imds-client binary")?
        .executable
        .clone();
    let tests = GUEST_TESTS
        .iter()
        .map(|name| {
            artifacts
                .iter()
                .find(|a| a.name == *name && a.kind == "test")
                .map(|a| (name.to_string(), a.executable.clone()))
                .with_context(|| format!("cargo built no `{name}` test binary of imds-sandbox"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Built {
        monitor,
        client,
        tests,
    })
}

/// An executable cargo built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub name: String,
    /// First target kind: `bin`, `test`, `lib`...
    pub kind: String,
    /// Built with the test harness.
    pub test: bool,
    pub executable: PathBuf,
}

/// Executables in `cargo --message-format=json` output.
pub fn parse_artifacts(json_lines: &str) -> Vec<Artifact> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            Some(Artifact {
                name: m["target"]["name"].as_str()?.to_owned(),
                kind: m["target"]["kind"][0].as_str()?.to_owned(),
                test: m["profile"]["test"].as_bool().unwrap_or(false),
                executable: PathBuf::from(m["executable"].as_str()?),
            })
        })
        .collect()
}

fn cargo_executables(args: &[&str]) -> anyhow::Result<Vec<Artifact>> {
    let mut c = cmd::cargo();
    // Diagnostics still reach the terminal, rendered; stdout is JSON.
    c.args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    cmd::announce(&c);
    let out = c.output().context("cannot start cargo")?;
    cmd::check(&c, out.status)?;
    Ok(parse_artifacts(&String::from_utf8_lossy(&out.stdout)))
}

/// The guest's script: every step runs even when one fails, each followed
/// by a `--- step NAME exit=N` line the host reads back.
pub fn guest_script(built: &Built) -> String {
    let q = |p: &Path| cmd::shell_quote(&p.to_string_lossy());
    let mut s = String::new();
    // Where the tests look for the daemon and their client first.
    s.push_str(&format!("export IMDS_MONITOR_BIN={}\n", q(&built.monitor)));
    s.push_str(&format!("export IMDS_CLIENT_BIN={}\n", q(&built.client)));
    // TCG emulates the guest several times slower than the host: the tests
    // scale their waits (tests/src/util.rs `time_scale`), and the verifier
    // budget test its time limit.
    s.push_str("export IMDS_TEST_TIME_SCALE=8\n");
    s.push_str("fail=0\n");
    s.push_str(
        "step() { name=$1; shift; echo \"--- $name: $*\"; \"$@\"; rc=$?; \
         echo \"--- step $name exit=$rc\"; [ $rc -eq 0 ] || fail=1; }\n",
    );
    // The guest has no NIC, so nothing routes to IMDS and `check` would fail
    // on its interface check: lend it a dummy interface (which drops what it
    // is sent) with the IMDS routes, for the check only.
    s.push_str(
        "ip link add imds0 type dummy && ip link set imds0 up && \
         ip route add 169.254.169.254/32 dev imds0 && ip -6 route add fd00:ec2::254/128 dev imds0\n",
    );
    s.push_str(&format!(
        "step check {} check --verifier\n",
        q(&built.monitor)
    ));
    s.push_str("ip link del imds0\n");
    for (name, exe) in &built.tests {
        let mut line = format!("step {name} {}", q(exe));
        for arg in test_args(name) {
            line.push(' ');
            line.push_str(&cmd::shell_quote(arg));
        }
        s.push_str(&line);
        s.push('\n');
    }
    s.push_str("exit $fail\n");
    s
}

fn test_args(name: &str) -> &'static [&'static str] {
    GUEST_TEST_ARGS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(&[], |(_, a)| a)
}

/// A `--- step NAME exit=N` line.
pub fn parse_step(line: &str) -> Option<(String, i32)> {
    let (name, rc) = line
        .trim_end()
        .strip_prefix("--- step ")?
        .split_once(" exit=")?;
    Some((name.to_owned(), rc.parse().ok()?))
}

/// Builds, then runs every step in each selected kernel, adding the guests'
/// `test result:` lines to `tally`.
pub fn run(selection: &str, tally: &mut Tally) -> anyhow::Result<Vec<KernelResult>> {
    let lines = kernels::select(&[selection.to_owned()])?;
    let matrix = Matrix::prepare(&lines, false)?;
    let built = build()?;
    let filtered: Vec<_> = GUEST_TEST_ARGS
        .iter()
        .filter(|(_, a)| !a.is_empty())
        .collect();
    for (name, args) in &filtered {
        println!(
            "note: in the guests `{name}` runs with libtest arguments {:?} (TCG is slow)",
            args
        );
    }
    let snapshot = matrix.scratch_dir("bin")?;
    let built = built.snapshot(snapshot.path())?;
    let script = guest_script(&built);
    let mut results = Vec::new();
    for kernel in &matrix.kernels {
        println!("== kernel {} ({}) ==", kernel.line, kernel.version);
        let mut kernel_tally = Tally::default();
        let mut steps = Vec::new();
        let mut partial = Vec::new();
        let mut out = io::stdout();
        let mut on_line = |line: &[u8]| {
            let line = String::from_utf8_lossy(line);
            kernel_tally.add_line(&line);
            if let Some(step) = parse_step(&line) {
                steps.push(step);
            }
        };
        let run = matrix.run(kernel, &script, TIMEOUT, &mut |bytes| {
            let _ = out.write_all(bytes);
            let _ = out.flush();
            for &b in bytes {
                if b == b'\n' {
                    on_line(&partial);
                    partial.clear();
                } else {
                    partial.push(b);
                }
            }
        })?;
        if !partial.is_empty() {
            on_line(&partial);
        }
        tally.passed += kernel_tally.passed;
        tally.failed += kernel_tally.failed;
        tally.ignored += kernel_tally.ignored;
        tally.results += kernel_tally.results;
        results.push(KernelResult {
            run,
            tally: kernel_tally,
            steps,
            expected_steps: built.steps(),
        });
    }
    if results.is_empty() {
        bail!("no kernel ran");
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"imds_sandbox"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"classify"},"profile":{"test":true},"executable":"/w/target/debug/deps/classify-0cd1"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"imds-client"},"profile":{"test":false},"executable":"/w/target/debug/imds-client"}
{"reason":"build-finished","success":true}
not json"#;
        assert_eq!(
            parse_artifacts(json),
            [
                Artifact {
                    name: "classify".into(),
                    kind: "test".into(),
                    test: true,
                    executable: "/w/target/debug/deps/classify-0cd1".into()
                },
                Artifact {
                    name: "imds-client".into(),
                    kind: "bin".into(),
                    test: false,
                    executable: "/w/target/debug/imds-client".into()
                }
            ]
        );
    }

    #[test]
    fn step_lines() {
        assert_eq!(
            parse_step("--- step classify exit=101\r"),
            Some(("classify".into(), 101))
        );
        assert_eq!(
            parse_step("--- step check exit=0"),
            Some(("check".into(), 0))
        );
        assert_eq!(parse_step("--- check: /w/imds-monitor check"), None);
        assert_eq!(parse_step("--- step x exit="), None);
    }

    #[test]
    fn script_runs_every_step() {
        let built = Built {
            monitor: "/w/target/debug/imds-monitor".into(),
            client: "/w/target/debug/imds-client".into(),
            tests: vec![
                ("classify".into(), "/w/target/debug/deps/classify-1".into()),
                ("enforce".into(), "/w/target/debug/deps/enforce-2".into()),
            ],
        };
        let s = guest_script(&built);
        assert!(s.starts_with(
            "export IMDS_MONITOR_BIN=/w/target/debug/imds-monitor\n\
             export IMDS_CLIENT_BIN=/w/target/debug/imds-client\n"
        ));
        assert!(s.contains(
            "\nstep check /w/target/debug/imds-monitor check --verifier\nip link del imds0\n"
        ));
        assert!(s.contains("\nstep classify /w/target/debug/deps/classify-1\n"));
        assert!(s.contains("\nstep enforce /w/target/debug/deps/enforce-2\n"));
        assert!(s.ends_with("exit $fail\n"));
        assert_eq!(built.steps(), 3);
    }

    #[test]
    fn snapshot_keeps_the_target_layout() {
        let tmp = std::env::temp_dir().join(format!("xtask-snapshot-{}", std::process::id()));
        let src = tmp.join("src");
        fs::create_dir_all(src.join("deps")).unwrap();
        for f in ["imds-monitor", "imds-client", "deps/classify-1"] {
            fs::write(src.join(f), f).unwrap();
        }
        let built = Built {
            monitor: src.join("imds-monitor"),
            client: src.join("imds-client"),
            tests: vec![("classify".into(), src.join("deps/classify-1"))],
        };
        let snap = built.snapshot(&tmp.join("snap")).unwrap();
        assert_eq!(snap.monitor, tmp.join("snap/imds-monitor"));
        assert_eq!(snap.client, tmp.join("snap/imds-client"));
        assert_eq!(snap.tests[0].1, tmp.join("snap/deps/classify-1"));
        assert_eq!(
            fs::read_to_string(&snap.tests[0].1).unwrap(),
            "deps/classify-1"
        );
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn outcome_needs_every_step() {
        let run = VmRun {
            version: "6.1".into(),
            boot: Some(Duration::from_secs(4)),
            total: Duration::from_secs(100),
            exit: Some(0),
            problem: None,
        };
        let mut r = KernelResult {
            run,
            tally: Tally::default(),
            steps: vec![("check".into(), 0), ("classify".into(), 0)],
            expected_steps: 2,
        };
        assert!(r.outcome().is_ok());
        r.expected_steps = 3;
        assert!(r.outcome().is_err());
        r.expected_steps = 2;
        r.steps[1].1 = 101;
        assert_eq!(r.outcome().unwrap_err(), "failed: classify (exit 101)");
        r.run.exit = None;
        r.run.problem = Some("timed out after 900 s".into());
        assert!(r.outcome().unwrap_err().starts_with("timed out"));
    }
}
