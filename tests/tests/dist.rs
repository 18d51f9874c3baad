//! The static binaries of `cargo xtask dist` (target/dist/): each is a static
//! ELF with no interpreter, and runs its userspace commands (`--version`,
//! `policy check`, `report`): x86_64 natively, aarch64 under qemu-user.
//!
//! A test whose binary is absent says so and passes: `cargo xtask dist`
//! builds them (a cargo build cannot be started from inside `cargo test`,
//! which holds the target directory's lock).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use imds_sandbox::artifacts::{dist_dir, text, workspace};
use serde_json::{Value, json};

/// The dist binary for `arch`, or `None` after saying why the test is skipped.
fn dist_binary(arch: &str) -> Option<PathBuf> {
    let bin = dist_dir().join(format!("imds-monitor-{arch}-linux-musl"));
    if bin.is_file() {
        Some(bin)
    } else {
        eprintln!(
            "SKIPPED: {} is absent; `cargo xtask dist` builds it",
            bin.display()
        );
        None
    }
}

/// `file -b` on `bin`: static, for `machine`.
fn assert_static(bin: &Path, machine: &str) {
    let out = Command::new("file")
        .arg("-b")
        .arg(bin)
        .output()
        .expect("run file(1) (apt-get install file)");
    let desc = String::from_utf8_lossy(&out.stdout);
    println!("{}: {}", bin.display(), desc.trim());
    assert!(
        desc.contains("statically linked") || desc.contains("static-pie linked"),
        "{desc}"
    );
    assert!(
        !desc.contains("dynamically linked") && !desc.contains("interpreter"),
        "{desc}"
    );
    assert!(desc.contains(machine), "{desc}");
}

/// Runs the userspace commands of `bin` (through `runner`, e.g. qemu-user).
fn userspace_commands(runner: &[&str], bin: &Path) {
    let dir = std::env::temp_dir().join(format!(
        "imds-dist-{}-{}",
        std::process::id(),
        bin.file_name().unwrap().to_string_lossy()
    ));
    fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| -> Output {
        let mut cmd = match runner.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args).output().expect("run the dist binary")
    };

    let out = run(&["--version"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("imds-monitor {}", env!("CARGO_PKG_VERSION"))
    );

    let policy = workspace().join("packaging/policy.example.toml");
    let out = run(&["policy", "check", policy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("valid"), "{stdout}");
    assert!(stdout.contains("legacy-backup-agent"), "{stdout}");
    let bad = dir.join("bad-policy.toml");
    fs::write(&bad, "[actions]\nv1_get = \"explode\"\n").unwrap();
    let out = run(&["policy", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(":2:") || text(&out).contains(":2:"),
        "{}",
        text(&out)
    );

    // Two workloads: a cron job still on IMDSv1, an app on IMDSv2.
    let event = |secs: u64, class: &str, unit: &str| {
        json!({
            "@timestamp": format!("2026-12-01T10:00:{secs:02}.000Z"),
            "event": {"action": "imds-request", "kind": "event", "module": "imds-monitor", "dataset": "imds_monitor.events"},
            "host": {"name": "ip-10-0-1-17"},
            "ecs": {"version": "8.11.0"},
            "imds": {"class": class, "interface": "eth0", "verdict": "allowed",
                     "systemd_unit": unit, "workload": {"kind": "unit", "id": unit}},
            "url": {"path": "/latest/meta-data/instance-id"},
            "process": {"pid": 4242, "name": "app", "executable": "/usr/bin/app"},
            "source": {"ip": "10.0.1.17", "port": 41000},
        })
    };
    let lines: Vec<Value> = vec![
        event(1, "v1_get", "cron.service"),
        event(2, "v2_token_put", "app.service"),
        event(3, "v2_get", "app.service"),
    ];
    let events = dir.join("events.json");
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    fs::write(&events, body).unwrap();
    let out = run(&["report", "--format", "json", events.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "not safe: {}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    let dump = report.to_string();
    assert!(dump.contains("cron.service"), "{dump}");
    let out = run(&["report", events.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cron.service"),
        "{}",
        text(&out)
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[ignore = "needs the artifacts of `cargo xtask dist` (run: cargo xtask dist --test)"]
fn x86_64_static_binary_runs() {
    let Some(bin) = dist_binary("x86_64") else {
        return;
    };
    assert_static(&bin, "x86-64");
    userspace_commands(&[], &bin);
}

#[test]
#[ignore = "needs the artifacts of `cargo xtask dist` (run: cargo xtask dist --test)"]
fn aarch64_static_binary_runs_under_qemu_user() {
    let Some(bin) = dist_binary("aarch64") else {
        return;
    };
    assert_static(&bin, "ARM aarch64");
    let qemu = ["/usr/bin/qemu-aarch64-static", "/usr/bin/qemu-aarch64"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("qemu-user: apt-get install qemu-user-static");
    userspace_commands(&[qemu], &bin);
}
