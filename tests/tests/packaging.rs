//! The systemd unit, config and logrotate file under packaging/, and the
//! .deb and .rpm that `cargo xtask dist` builds from them: the unit passes
//! `systemd-analyze verify`, the packages hold what they should, and the .deb
//! installs on this machine, `imds-monitor check` passes, and a purge leaves
//! nothing behind (files, config, logs, and the enforcement an installed
//! daemon left pinned with `--persist`).
//!
//! Tests of a package that is absent say so and pass: `cargo xtask dist`
//! builds them (a cargo build cannot be started from inside `cargo test`).

use imds_sandbox::artifacts::{dist_dir, text, workspace};
use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

fn packaging(name: &str) -> String {
    fs::read_to_string(workspace().join("packaging").join(name)).expect("packaging file")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    out
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `Key=` values of a unit file (all occurrences, words split).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect()
}

/// The one package in target/dist/ ending in `suffix`, or `None` after saying
/// why the test is skipped.
fn package(suffix: &str) -> Option<PathBuf> {
    let dir = dist_dir();
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    if found.is_empty() {
        eprintln!(
            "SKIPPED: no *{suffix} in {}; `cargo xtask dist` builds it",
            dir.display()
        );
    }
    found.pop()
}

/// What the packages install, as absolute paths.
const INSTALLED: &[&str] = &[
    "/usr/bin/imds-monitor",
    "/etc/imds-monitor/config.toml",
    "/etc/logrotate.d/imds-monitor",
    "/usr/share/doc/imds-monitor/README.md",
    "/usr/share/doc/imds-monitor/policy.example.toml",
    "/usr/lib/systemd/system/imds-monitor.service",
];

#[test]
fn unit_is_hardened_and_runs_the_config() {
    let unit = packaging("imds-monitor.service");
    assert_eq!(
        unit_values(&unit, "ExecStart"),
        [
            "/usr/bin/imds-monitor",
            "run",
            "--config",
            "/etc/imds-monitor/config.toml"
        ]
    );
    // Exactly the capabilities `imds-monitor check` asks for (CAPS_FIX), and
    // CAP_SYS_PTRACE for other users' executables.
    let caps: BTreeSet<String> = unit_values(&unit, "CapabilityBoundingSet")
        .into_iter()
        .collect();
    let want: BTreeSet<String> = [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_NET_ADMIN",
        "CAP_SYS_ADMIN",
        "CAP_SYS_PTRACE",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(caps, want);
    assert_eq!(unit_values(&unit, "ProtectSystem"), ["strict"]);
    assert_eq!(
        unit_values(&unit, "ReadWritePaths"),
        ["/var/log/imds-monitor", "/sys/fs/bpf"]
    );
    assert_eq!(unit_values(&unit, "Restart"), ["on-failure"]);
    assert_eq!(unit_values(&unit, "NoNewPrivileges"), ["yes"]);
    assert_eq!(unit_values(&unit, "LimitMEMLOCK"), ["infinity"]);
    assert!(unit_values(&unit, "ExecReload").contains(&"-HUP".to_owned()));
    assert!(
        !unit
            .lines()
            .any(|l| l.starts_with("ProtectKernelTunables=")),
        "ProtectKernelTunables makes /sys/fs/bpf read-only"
    );

    // The config it runs: alert mode, output under /var/log/imds-monitor.
    let config = packaging("config.toml");
    assert!(config.lines().any(|l| l == "mode = \"alert\""), "{config}");
    assert!(
        config
            .lines()
            .any(|l| l == "output = \"/var/log/imds-monitor/events.json\""),
        "{config}"
    );
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    if !found("systemd-analyze") {
        eprintln!("SKIPPED: systemd-analyze not installed (apt-get install systemd)");
        return;
    }
    // verify needs ExecStart's program to exist: point it at any executable
    // (the dist binary when built), in a copy named like the real unit.
    let dir = std::env::temp_dir().join(format!("imds-unit-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let bin = dist_dir().join("imds-monitor-x86_64-linux-musl");
    let bin = if bin.is_file() {
        bin
    } else {
        PathBuf::from("/bin/true")
    };
    let unit = packaging("imds-monitor.service").replace(
        "ExecStart=/usr/bin/imds-monitor",
        &format!("ExecStart={}", bin.display()),
    );
    let path = dir.join("imds-monitor.service");
    fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    // Any output is a warning about the unit (unknown key, bad value).
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        text(&out)
    );
    // Which this check does see: systemd only warns, and exits 0.
    let bad = fs::read_to_string(&path)
        .unwrap()
        .replace("ProtectSystem=strict", "ProtectSystem=strickt");
    fs::write(&path, bad).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("strickt"),
        "{}",
        text(&out)
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn logrotate_matches_the_config() {
    let rotate = packaging("logrotate");
    let config = packaging("config.toml");
    assert!(rotate.starts_with('#'));
    assert!(
        rotate.contains("/var/log/imds-monitor/events.json {"),
        "{rotate}"
    );
    // The daemon's own rotation names files the same way: .1 plain, .2.gz on.
    for word in ["compress", "delaycompress", "missingok", "notifempty"] {
        assert!(rotate.lines().any(|l| l.trim() == word), "{word}: {rotate}");
    }
    let keep = config
        .lines()
        .find_map(|l| l.strip_prefix("rotate_keep = "))
        .expect("rotate_keep in config.toml");
    assert!(
        rotate.lines().any(|l| l.trim() == format!("rotate {keep}")),
        "{rotate}"
    );
    // SIGHUP to the daemon only (not ExecStartPre's helpers).
    assert!(
        rotate.contains("systemctl kill --kill-whom=main --signal=HUP imds-monitor.service"),
        "{rotate}"
    );
    if found("logrotate") {
        let out = Command::new("logrotate")
            .arg("-d")
            .arg(workspace().join("packaging/logrotate"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
}

#[test]
#[ignore = "needs the artifacts of `cargo xtask dist` (run: cargo xtask dist --test)"]
fn rpm_holds_the_binary_unit_config_and_scripts() {
    let Some(rpm) = package(".x86_64.rpm") else {
        return;
    };
    if !found("rpm") {
        eprintln!("SKIPPED: rpm not installed (apt-get install rpm)");
        return;
    }
    let list = run(Command::new("rpm").arg("-qlp").arg(&rpm));
    let list: BTreeSet<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    for path in INSTALLED {
        assert!(
            list.contains(*path),
            "{path} missing from {}: {list:?}",
            rpm.display()
        );
    }
    let config = run(Command::new("rpm").arg("-qcp").arg(&rpm));
    let config = String::from_utf8_lossy(&config.stdout);
    assert!(config.contains("/etc/imds-monitor/config.toml"), "{config}");
    assert!(config.contains("/etc/logrotate.d/imds-monitor"), "{config}");
    // A static binary: no shared library among the requirements.
    let requires = run(Command::new("rpm").arg("-qpR").arg(&rpm));
    let requires = String::from_utf8_lossy(&requires.stdout);
    assert!(!requires.contains(".so"), "{requires}");
    // gzip: Amazon Linux 2's rpm 4.11 reads no zstd payload.
    let payload = run(Command::new("rpm")
        .args(["-qp", "--qf", "%{PAYLOADCOMPRESSOR} %{ARCH}"])
        .arg(&rpm));
    assert_eq!(String::from_utf8_lossy(&payload.stdout), "gzip x86_64");
    // rpm itself installs it (into a scratch root: no scripts, no deps).
    let root = std::env::temp_dir().join(format!("imds-rpm-root-{}", std::process::id()));
    fs::create_dir_all(&root).unwrap();
    run(Command::new("rpm").arg("--root").arg(&root).arg("--initdb"));
    run(Command::new("rpm")
        .arg("--root")
        .arg(&root)
        .args(["-i", "--nodeps", "--noscripts"])
        .arg(&rpm));
    for path in INSTALLED {
        assert!(
            root.join(&path[1..]).exists(),
            "{path} not installed by rpm"
        );
    }
    fs::remove_dir_all(&root).unwrap();
    let scripts = run(Command::new("rpm").arg("-qp").arg("--scripts").arg(&rpm));
    let scripts = String::from_utf8_lossy(&scripts.stdout);
    assert!(scripts.contains("imds-monitor detach"), "{scripts}");
    assert!(
        scripts.contains("systemctl enable imds-monitor.service"),
        "{scripts}"
    );
}

/// Purges the package when dropped, so a failed test leaves nothing installed
/// (and removes pinned enforcement first, while the binary is there).
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("/usr/bin/imds-monitor").arg("detach").output();
        let _ = Command::new("dpkg").args(["-P", "imds-monitor"]).output();
    }
}

#[test]
#[ignore = "needs the artifacts of `cargo xtask dist` (run: cargo xtask dist --test)"]
fn deb_installs_checks_and_purges_cleanly() {
    let Some(deb) = package("_amd64.deb") else {
        return;
    };
    let list = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let list = String::from_utf8_lossy(&list.stdout);
    for path in INSTALLED {
        assert!(
            list.lines().any(|l| l.ends_with(&format!(".{path}"))),
            "{path} missing from {}:\n{list}",
            deb.display()
        );
    }
    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Architecture: amd64"), "{info}");
    assert!(
        !info.contains("Depends: libc"),
        "static: no libc dependency\n{info}"
    );
    let conffiles = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Package"));
    assert_eq!(
        String::from_utf8_lossy(&conffiles.stdout).trim(),
        "imds-monitor"
    );

    if !nix_root() {
        eprintln!("SKIPPED: installing the .deb needs root");
        return;
    }
    let status = Command::new("dpkg")
        .args(["-s", "imds-monitor"])
        .output()
        .unwrap();
    if status.status.success() {
        eprintln!("SKIPPED install: imds-monitor is already installed here; not touching it");
        return;
    }
    let _purge = Purge;
    run(Command::new("dpkg").arg("-i").arg(&deb));
    for path in INSTALLED {
        assert!(Path::new(path).exists(), "{path} not installed");
    }
    // The static binary of `cargo xtask dist`, not a glibc build.
    let dist_bin = dist_dir().join("imds-monitor-x86_64-linux-musl");
    assert!(
        fs::read("/usr/bin/imds-monitor").unwrap() == fs::read(&dist_bin).unwrap(),
        "/usr/bin/imds-monitor is not {}",
        dist_bin.display()
    );
    let check = Command::new("/usr/bin/imds-monitor")
        .arg("check")
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&check.stdout));
    assert!(
        check.status.success(),
        "imds-monitor check: {}",
        text(&check)
    );
    // The packaged config parses as `run` reads it: a bad key would show here.
    let help = run(Command::new("/usr/bin/imds-monitor").args(["run", "--help"]));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config"));

    // Enforcement left pinned by the installed daemon (run as the unit runs
    // it, with the packaged config) is what an uninstall must remove.
    let pins = persisted_enforcement();

    run(Command::new("dpkg").args(["-P", "imds-monitor"]));
    assert!(
        !pins.exists(),
        "{} left attached by dpkg -P",
        pins.display()
    );
    for path in INSTALLED.iter().chain(&[
        "/etc/imds-monitor",
        "/var/log/imds-monitor",
        "/sys/fs/bpf/imds-monitor",
    ]) {
        assert!(!Path::new(path).exists(), "{path} left behind by dpkg -P");
    }
    let status = Command::new("dpkg")
        .args(["-s", "imds-monitor"])
        .output()
        .unwrap();
    assert!(
        !status.status.success(),
        "still known to dpkg: {}",
        text(&status)
    );
}

/// Runs the installed `/usr/bin/imds-monitor run --config
/// /etc/imds-monitor/config.toml --mode enforce --persist` in a sandbox's
/// host namespace until `monitor-started`, stops it with SIGTERM (which
/// leaves enforcement pinned), and returns the pin directory, checked to hold
/// the pinned links. Nothing is sent to any endpoint.
fn persisted_enforcement() -> PathBuf {
    let pins = PathBuf::from("/sys/fs/bpf/imds-monitor");
    assert!(
        !pins.exists(),
        "{} exists before the test: another daemon's enforcement",
        pins.display()
    );
    let sb = imds_sandbox::Sandbox::builder().build().expect("sandbox");
    let mut child = sb
        .command(
            &imds_sandbox::Place::service("imds-monitor"),
            "/usr/bin/imds-monitor",
        )
        .expect("command in the sandbox")
        .args(["run", "--config", "/etc/imds-monitor/config.toml"])
        .args(["--mode", "enforce", "--persist", "--output", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the installed imds-monitor");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let started = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let started = line.contains("\"monitor-started\"");
                seen.push(line);
                if started {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    assert!(
        started && out.status.success(),
        "installed daemon: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        seen.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    let pinned = fs::read_dir(&pins).map(|d| d.count()).unwrap_or(0);
    assert!(pinned > 0, "--persist left nothing in {}", pins.display());
    pins
}

fn nix_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
#[ignore = "needs the artifacts of `cargo xtask dist` (run: cargo xtask dist --test)"]
fn arm64_packages_hold_the_aarch64_binary() {
    let (Some(deb), Some(rpm)) = (package("_arm64.deb"), package(".aarch64.rpm")) else {
        return;
    };
    let bin = fs::read(dist_dir().join("imds-monitor-aarch64-linux-musl")).unwrap();
    let dir = std::env::temp_dir().join(format!("imds-arm64-pkg-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let info = run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(&deb)
        .arg("Architecture"));
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "arm64");
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("deb")));
    assert!(fs::read(dir.join("deb/usr/bin/imds-monitor")).unwrap() == bin);
    if found("rpm") {
        let arch = run(Command::new("rpm")
            .args(["-qp", "--qf", "%{ARCH}"])
            .arg(&rpm));
        assert_eq!(String::from_utf8_lossy(&arch.stdout), "aarch64");
        let root = dir.join("rpm");
        fs::create_dir_all(&root).unwrap();
        run(Command::new("rpm").arg("--root").arg(&root).arg("--initdb"));
        run(Command::new("rpm")
            .arg("--root")
            .arg(&root)
            .args(["-i", "--nodeps", "--noscripts", "--ignorearch"])
            .arg(&rpm));
        assert!(fs::read(root.join("usr/bin/imds-monitor")).unwrap() == bin);
    }
    fs::remove_dir_all(&dir).unwrap();
}
