//! Every kernel program verifies in at most 200,000 processed instructions
//! (a fifth of the verifier's 1M limit) and all of them in under 1 s of
//! verification time, on the kernel this runs on. Run it on each kernel of
//! the matrix (5.10, 6.1, 6.12, 6.18): the verifier differs between them,
//! and between builds of one release.
//!
//! It runs `imds-monitor check --json` (root: it loads the programs, never
//! attaches them) and reads the programs check's `verifier` figures, once
//! as `run` loads them by default and once with `--kernel-log debug`, whose
//! log calls the verifier then checks too (off, it skips them). Set
//! `IMDS_MONITOR_BIN` to measure another build than this one's. The kernel
//! matrix runs it in each guest, where emulation slows the verifier by
//! `IMDS_TEST_TIME_SCALE`: the time limit is scaled by it, the instruction
//! budget never is.

use std::{path::PathBuf, process::Command};

use imds_sandbox::{imds_monitor_bin, time_scale};

use serde_json::Value;

const BUDGET_INSNS: u64 = 200_000;
const BUDGET_TOTAL_US: u64 = 1_000_000;

fn binary() -> PathBuf {
    imds_monitor_bin().expect("the imds-monitor binary")
}

#[test]
fn every_program_verifies_within_the_budget() {
    within_the_budget(&[]);
}

#[test]
fn every_program_verifies_within_the_budget_with_kernel_log_debug() {
    within_the_budget(&["--kernel-log", "debug"]);
}

/// `check --json ARGS`: every program measured, none over the budget.
fn within_the_budget(args: &[&str]) {
    let bin = binary();
    let config = if args.is_empty() {
        "default".to_owned()
    } else {
        args.join(" ")
    };
    let out = Command::new(&bin)
        .args(["check", "--json"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let describe = || {
        format!(
            "{} check --json {}: exit {:?}\n--- stdout\n{stdout}--- stderr\n{}",
            bin.display(),
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let json: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", describe()));
    let programs = json
        .as_array()
        .and_then(|a| a.iter().find(|f| f["check"] == "programs"))
        .unwrap_or_else(|| panic!("no programs check:\n{}", describe()));
    let Some(verifier) = programs.get("verifier") else {
        panic!(
            "the programs were not measured ({}): {}",
            programs["status"], programs["detail"]
        );
    };
    let kernel = verifier["kernel"].as_str().unwrap_or("?");
    if let Some(rejected) = verifier.get("rejected") {
        panic!(
            "Linux {kernel} rejected a program ({config}): {}\nfix: {}\nrejection: {rejected:#}",
            programs["detail"], programs["fix"]
        );
    }
    let list = verifier["programs"].as_array().expect("programs array");
    assert!(!list.is_empty(), "no program measured: {verifier:#}");

    let mut problems = Vec::new();
    for p in list {
        let name = p["name"].as_str().unwrap_or("?");
        if let Some(error) = p.get("error") {
            problems.push(format!("{name}: not measured: {error}"));
            continue;
        }
        match p["processed_insns"].as_u64() {
            Some(n) if n > BUDGET_INSNS => {
                problems.push(format!("{name}: {n} processed insns > {BUDGET_INSNS}"));
            }
            Some(_) => {}
            None => problems.push(format!("{name}: no processed insns in the log")),
        }
    }
    let total = verifier["total_verification_us"]
        .as_u64()
        .expect("total_verification_us");
    let budget_total_us = BUDGET_TOTAL_US * u64::from(time_scale());
    if total >= budget_total_us {
        problems.push(format!(
            "all programs: {total} us of verification >= {budget_total_us} us"
        ));
    }
    let table: Vec<String> = list
        .iter()
        .map(|p| {
            format!(
                "  {:<20} {:>9} insns {:>9} us",
                p["name"].as_str().unwrap_or("?"),
                p["processed_insns"],
                p["verification_us"]
            )
        })
        .collect();
    assert!(
        problems.is_empty(),
        "over the verifier budget on Linux {kernel} ({config}):\n{}\nall programs:\n{}",
        problems.join("\n"),
        table.join("\n")
    );
    eprintln!(
        "Linux {kernel} ({config}): {} programs, {total} us in all\n{}",
        list.len(),
        table.join("\n")
    );
}
