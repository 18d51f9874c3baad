//! `imds-monitor policy check FILE` as a user runs it: the effective rules
//! for a valid file, `FILE:LINE: reason` and exit 1 for an invalid one, exit
//! 2 for one that cannot be read.

mod common;

use std::{path::PathBuf, process::Command};

use common::{describe, imds_monitor};

fn fixture(name: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy");
    dir.join(name).display().to_string()
}

#[test]
fn a_valid_file_prints_every_rule_and_where_it_came_from() {
    let file = fixture("valid.toml");
    let out = imds_monitor(&["policy", "check", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "{file}: valid

class actions:
  v1_get        drop   file, line 6
  v2_token_put  allow  default
  v2_get        allow  default
  invalid       alert  file, line 7
  other_cloud   allow  file, line 8
  incomplete    drop   default

exceptions, first match wins, for requests a class action alerts on or drops:
  1. legacy-backup-agent (line 12): alert
       cgroup_prefix = \"/system.slice/legacy-backup.service\"
  2. vendor-agent (line 18): allow
       container_id  = \"4f9c1a2b3c4d\"
       executable    = \"/opt/vendor/bin/agent\"
  3. cron-jobs (line 25): alert
       systemd_unit  = \"cron.service\"
"
    );
    assert_eq!(stdout, expected, "{}", describe(&out));
    assert!(out.stderr.is_empty(), "{}", describe(&out));
}

#[test]
fn an_empty_file_is_the_defaults() {
    let out = imds_monitor(&["policy", "check", &fixture("empty.toml")]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "  v1_get        drop   default\n",
        "  v2_get        allow  default\n",
        "\nexceptions: none\n",
    ] {
        assert!(stdout.contains(line), "lacks {line:?}:\n{}", describe(&out));
    }
}

#[test]
fn an_invalid_file_names_file_line_and_reason() {
    let cases = [
        (
            "drop-v2.toml",
            4,
            "`drop` is not allowed for v2_get: dropping IMDSv2 requests would break",
        ),
        (
            "duplicate-name.toml",
            6,
            "exception name `backup` is already used at line 2",
        ),
        (
            "relative-executable.toml",
            6,
            "executable `bin/agent` must be an absolute path",
        ),
    ];
    for (name, line, reason) in cases {
        let file = fixture(name);
        let out = imds_monitor(&["policy", "check", &file]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let prefix = format!("{file}:{line}: {reason}");
        assert!(
            stderr.starts_with(&prefix),
            "{name}: want {prefix:?}\n{}",
            describe(&out)
        );
        assert_eq!(stderr.lines().count(), 1, "{name}: {}", describe(&out));
        assert!(out.stdout.is_empty(), "{name}: {}", describe(&out));
    }
}

#[test]
fn a_file_that_is_not_utf8_is_invalid_at_its_line() {
    let dir = std::env::temp_dir().join(format!("imds-monitor-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("latin1.toml");
    std::fs::write(&file, b"[actions]\n# caf\xe9\nv1_get = \"drop\"\n").expect("write");
    let file = file.display().to_string();
    let out = imds_monitor(&["policy", "check", &file]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{file}:2: not UTF-8")),
        "{}",
        describe(&out)
    );
}

#[test]
fn an_unreadable_file_exits_2() {
    for file in ["/nonexistent/policy.toml", env!("CARGO_MANIFEST_DIR")] {
        let out = imds_monitor(&["policy", "check", file]);
        assert_eq!(out.status.code(), Some(2), "{file}: {}", describe(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("cannot read {file}")),
            "{file}: {}",
            describe(&out)
        );
    }
}

#[test]
fn help_shows_an_example_policy_and_exit_codes() {
    let out = imds_monitor(&["policy", "check", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "<FILE>",
        "[actions]",
        "v1_get = \"drop\"",
        "[[exception]]",
        "cgroup_prefix",
        "imds-monitor policy check /etc/imds-monitor/policy.toml",
        "Exit status:",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }
    let out = imds_monitor(&["policy", "check"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing FILE: {}",
        describe(&out)
    );
}

/// docs/policy.md's example file and the `policy check` output it shows agree.
#[test]
fn the_documented_example_and_output_agree() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.md");
    let doc = std::fs::read_to_string(doc_path).expect("read docs/policy.md");
    let example = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```toml block");
    let shown = doc
        .split("$ imds-monitor policy check policy.toml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n$ ").next())
        .expect("the sample output");

    let dir = std::env::temp_dir().join(format!("imds-monitor-policy-doc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("policy.toml"), example).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_imds-monitor"))
        .args(["policy", "check", "policy.toml"])
        .current_dir(&dir)
        .output()
        .expect("run imds-monitor");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        shown.trim_end(),
        "docs/policy.md's sample output is stale"
    );
}
