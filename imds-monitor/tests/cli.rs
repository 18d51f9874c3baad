//! The command line as a user meets it: help with examples, and bad input
//! that names the problem. None of these attach anything.
//!
//! Also makes `cargo test` build the `imds-monitor` binary that the sandbox's
//! integration tests (crate `imds-sandbox`) run.

mod common;

use common::{imds_monitor, stderr};

#[test]
fn help_shows_examples() {
    let out = imds_monitor(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--mode",
        "--output",
        "--endpoint",
        "--iface",
        "Examples:",
        "sudo imds-monitor run",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn bad_mode_names_the_choices() {
    let out = imds_monitor(&["run", "--mode", "block"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("'block'") && err.contains("monitor") && err.contains("alert"),
        "{err}"
    );
}

#[test]
fn bad_endpoint_says_what_is_expected() {
    let out = imds_monitor(&["run", "--endpoint", "metadata.google.internal"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("not an address") && err.contains("ADDR:PORT"),
        "{err}"
    );
}

#[test]
fn unknown_interface_is_named_before_anything_is_attached() {
    let out = imds_monitor(&["run", "--iface", "nosuchif9"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("--iface nosuchif9: no such interface; interfaces here: ")
            && err.contains("lo"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no event before a failed start");
}

#[test]
fn output_below_a_file_says_it_is_not_a_directory() {
    let out = imds_monitor(&["run", "--iface", "lo", "--output", "/dev/null/events.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "imds-monitor: error: --output /dev/null/events.json: /dev/null is not a directory"
    );
}

#[test]
fn unwritable_output_is_named() {
    let out = imds_monitor(&[
        "run",
        "--iface",
        "lo",
        "--output",
        "/proc/imds-monitor/events.json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/proc/imds-monitor"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn persist_and_policy_need_the_right_mode() {
    let out = imds_monitor(&["run", "--iface", "lo", "--persist"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--persist") && stderr(&out).contains("--mode enforce"),
        "{}",
        stderr(&out)
    );
    let out = imds_monitor(&["run", "--iface", "lo", "--policy", "/nonexistent.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--policy needs --mode enforce"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_policy_is_named_before_anything_is_attached() {
    let dir = std::env::temp_dir().join(format!("imds-cli-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("p.toml");
    std::fs::write(&file, "[actions]\nv2_get = \"drop\"\n").unwrap();
    let out = imds_monitor(&[
        "run",
        "--iface",
        "lo",
        "--mode",
        "enforce",
        "--policy",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("p.toml:2") && err.contains("v2_get"), "{err}");
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn detach_with_nothing_pinned_says_so() {
    let out = imds_monitor(&["detach", "--pin-dir", "/nonexistent/imds-monitor-test"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to detach"));
}

#[test]
fn bad_metrics_address_names_the_option() {
    for bad in ["9464", "localhost:9464", "127.0.0.1", "nonsense"] {
        let out = imds_monitor(&["run", "--metrics", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = stderr(&out);
        assert!(
            err.contains("--metrics") && err.contains(bad) && err.contains("127.0.0.1:9464"),
            "{err}"
        );
    }
    let out = imds_monitor(&["run", "--metrics-top-workloads", "5000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--metrics-top-workloads"));
}
