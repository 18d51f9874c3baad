//! Helpers shared by the command-line tests: running the built binary and
//! describing what it did when an assertion fails.
// Each test crate includes this module and uses only part of it.
#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs `imds-monitor ARGS` and waits for it.
pub fn imds_monitor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imds-monitor"))
        .args(args)
        .output()
        .expect("run imds-monitor")
}

/// Exit code, stdout and stderr, for an assertion message.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
