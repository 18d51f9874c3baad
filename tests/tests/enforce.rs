//! Enforce mode without a policy file: every IMDSv1 request is dropped in the
//! kernel before it reaches IMDS, and its client gets a TCP reset instead of
//! a hang; IMDSv2 is untouched. Alert mode marks what enforce would drop.

use imds_sandbox::{ContainerSpec, Monitor, Place, Sandbox, Stopped};

/// curl's exit code for "Recv failure: Connection reset by peer".
const CURL_RECV_ERROR: i32 = 56;
/// curl's exit code for a timeout: what a plain drop would give.
const CURL_TIMEOUT: i32 = 28;

fn sandbox() -> Sandbox {
    Sandbox::builder()
        .hop_limit(2)
        .containers(&[ContainerSpec::docker()])
        .build()
        .expect("sandbox")
}

fn stop(monitor: Monitor) -> Stopped {
    let stopped = monitor.stop().expect("stop");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    stopped
}

/// A v1 GET: reset at once (not a timeout), and nothing reaches IMDS.
fn assert_v1_blocked(sb: &Sandbox, place: &Place, url: &str) {
    let before = sb.imds_log().len();
    let out = sb
        .curl(place, &["-g", "--max-time", "5", url])
        .expect("curl");
    assert_eq!(out.status, None, "no HTTP answer: {out:?}");
    assert_eq!(
        out.exit_code,
        Some(CURL_RECV_ERROR),
        "reset, not a hang: {out:?}"
    );
    assert_ne!(out.exit_code, Some(CURL_TIMEOUT));
    assert_eq!(
        sb.imds_log().len(),
        before,
        "IMDS received no request: {:#?}",
        sb.imds_log()
    );
}

fn assert_v2_works(sb: &Sandbox, place: &Place, addr: &str) {
    let out = sb
        .imds_client(place, &["--addr", addr, "--v2", "--timeout-ms", "3000"])
        .expect("client");
    assert!(out.success(), "{out:?}");
    assert_eq!(out.statuses, [200, 200]);
}

#[test]
fn enforce_drops_v1_with_a_reset_and_leaves_v2_alone() {
    let sb = sandbox();
    let monitor = Monitor::start(&sb, &["--mode", "enforce"]).expect("monitor");
    assert_eq!(monitor.started_event()["imds"]["mode"], "enforce");
    let host = Place::service("legacy");
    let container = Place::Container(0);
    for place in [&host, &container] {
        assert_v1_blocked(
            &sb,
            place,
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        );
        assert_v1_blocked(
            &sb,
            place,
            "http://[fd00:ec2::254]/latest/meta-data/instance-id",
        );
        assert_v2_works(&sb, place, "169.254.169.254:80");
        assert_v2_works(&sb, place, "[fd00:ec2::254]:80");
    }
    monitor.wait_for_requests(12).expect("events");
    let stopped = stop(monitor);
    let requests = stopped.requests();
    let dropped = stopped.dropped();
    assert_eq!(dropped.len(), 4, "{requests:#?}");
    for d in &dropped {
        assert_eq!(d["imds"]["class"], "v1_get");
        assert_eq!(d["event"]["kind"], "alert");
        assert_eq!(d["event"]["outcome"], "failure");
        assert_eq!(
            d["imds"]["attribution"], "full",
            "the dropped sender is still named"
        );
    }
    assert!(
        dropped
            .iter()
            .any(|d| d["container"]["id"] == sb.container(0).id())
    );
    assert!(
        dropped
            .iter()
            .any(|d| d["imds"]["systemd_unit"] == "legacy.service")
    );
    let allowed: Vec<_> = requests
        .iter()
        .filter(|r| r["imds"]["verdict"] == "allowed")
        .collect();
    assert_eq!(allowed.len(), 8, "4 token PUTs and 4 reads with a token");
    assert!(allowed.iter().all(|r| r["imds"]["version"] == "v2"));
    assert_eq!(sb.imds_log().len(), 8, "only the v2 requests reached IMDS");
    assert!(
        sb.imds_log()
            .iter()
            .all(|r| r.token_present || r.method == "PUT")
    );
}

#[test]
fn alert_mode_marks_what_enforce_would_drop() {
    let sb = sandbox();
    let monitor = Monitor::start(&sb, &["--mode", "alert"]).expect("monitor");
    let out = sb
        .curl(
            &Place::service("legacy"),
            &["http://169.254.169.254/latest/meta-data/"],
        )
        .expect("curl");
    assert_eq!(out.status, Some(200), "alert mode lets it through");
    assert_v2_works(&sb, &Place::service("agent"), "169.254.169.254:80");
    monitor.wait_for_requests(3).expect("events");
    let stopped = stop(monitor);
    for r in stopped.requests() {
        let v1 = r["imds"]["class"] == "v1_get";
        assert_eq!(
            r["imds"]["would_drop"].as_bool().unwrap_or(false),
            v1,
            "{r:#}"
        );
        assert_eq!(r["imds"]["verdict"], if v1 { "alerted" } else { "allowed" });
    }
}

/// The real interpreter's path (not a wrapper script in front of it).
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .expect("python3");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

const PY_V1: &str = "import urllib.request as u\n\
                     print(u.urlopen('http://169.254.169.254/latest/meta-data/instance-id', timeout=5).status)";

#[test]
fn exceptions_by_cgroup_container_and_executable_and_sighup_reload() {
    let sb = Sandbox::builder()
        .hop_limit(2)
        .containers(&[ContainerSpec::docker(), ContainerSpec::docker()])
        .build()
        .expect("sandbox");
    let root = sb.root_cgroup().rel().to_owned();
    let python = python();
    let dir = std::env::temp_dir().join(format!("imds-policy-{}", sb.id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    let write = |text: &str| std::fs::write(&policy, text).unwrap();
    let exceptions = format!(
        r#"
[actions]
v1_get = "drop"

[[exception]]
name = "legacy-unit"
cgroup_prefix = "{root}/system.slice/legacy.service"

[[exception]]
name = "vendor-container"
container_id = "{}"

[[exception]]
name = "python-tool"
executable = "{python}"
"#,
        &sb.container(0).id()[..12]
    );
    write(&exceptions);
    let policy_arg = policy.to_string_lossy().into_owned();
    let monitor =
        Monitor::start(&sb, &["--mode", "enforce", "--policy", &policy_arg]).expect("monitor");
    let url = "http://169.254.169.254/latest/meta-data/instance-id";
    let legacy = Place::service("legacy");
    let other = Place::service("other");
    // The legacy unit's cgroup is made now, after the policy was loaded: the
    // kernel names it at mkdir, before curl moves in.
    assert_eq!(
        sb.curl(&legacy, &[url]).unwrap().status,
        Some(200),
        "excepted unit"
    );
    assert_v1_blocked(&sb, &other, url);
    assert_eq!(
        sb.curl(&Place::Container(0), &[url]).unwrap().status,
        Some(200),
        "excepted container"
    );
    assert_v1_blocked(&sb, &Place::Container(1), url);
    let py = sb
        .command(&other, &python)
        .unwrap()
        .args(["-c", PY_V1])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "excepted executable: {}",
        String::from_utf8_lossy(&py.stderr)
    );

    // A broken file: the old policy stays, and the stream says why.
    write("[actions]\nv1_get = \"explode\"\n");
    monitor.signal(libc::SIGHUP).unwrap();
    monitor
        .wait_for(std::time::Duration::from_secs(10), |e| {
            e.iter()
                .any(|e| imds_sandbox::action(e) == "policy-rejected")
        })
        .expect("policy-rejected");
    assert_eq!(
        sb.curl(&legacy, &[url]).unwrap().status,
        Some(200),
        "still excepted"
    );
    // A new file without the unit's exception: enforced at once.
    write("[actions]\nv1_get = \"drop\"\n");
    monitor.signal(libc::SIGHUP).unwrap();
    monitor
        .wait_for(std::time::Duration::from_secs(10), |e| {
            e.iter().any(|e| imds_sandbox::action(e) == "policy-loaded")
        })
        .expect("policy-loaded");
    assert_v1_blocked(&sb, &legacy, url);

    monitor.wait_for_requests(7).expect("events");
    let stopped = stop(monitor);
    let rules: Vec<(String, String)> = stopped
        .requests()
        .iter()
        .map(|r| {
            (
                r["imds"]["policy"]["rule"]
                    .as_str()
                    .unwrap_or("-")
                    .to_owned(),
                r["imds"]["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("exception:legacy-unit", "alerted"),
        ("actions.v1_get", "dropped"),
        ("exception:vendor-container", "alerted"),
        ("actions.v1_get", "dropped"),
        ("exception:python-tool", "alerted"),
        ("exception:legacy-unit", "alerted"),
        ("actions.v1_get", "dropped"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(rules, expected);
    let rejected = stopped
        .events
        .iter()
        .find(|e| imds_sandbox::action(e) == "policy-rejected")
        .unwrap();
    assert!(
        rejected["message"].as_str().unwrap().contains("explode"),
        "{rejected:#}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the looping client of [`sigkill_and_restart`] asks for (IMDSv1).
const LOOPER_URL: &str = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";

/// SIGKILLs `first`, an enforcing daemon started with `args`, while a client
/// at service `looper` asks over IMDSv1 every 50 ms, restarts it with the same
/// `args` 500 ms later and stops that one cleanly. `while_down` runs between
/// the kill and the restart, `restarted` once the second daemon is up. Every
/// request is reset (none answered, none hanging), none reaches IMDS, and the
/// restarted daemon reports again. Returns how the second daemon stopped.
fn sigkill_and_restart(
    sb: &Sandbox,
    first: Monitor,
    args: &[&str],
    while_down: impl FnOnce(),
    restarted: impl FnOnce(&Monitor),
) -> Stopped {
    let looper = Place::service("looper");
    let (codes, stopped) = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            (0..30)
                .map(|_| {
                    let out = sb
                        .curl(&looper, &["--max-time", "3", LOOPER_URL])
                        .expect("curl");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    out.exit_code
                })
                .collect::<Vec<_>>()
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!first.kill().expect("SIGKILL").success());
        // No daemon for a while: what the killed one attached keeps enforcing.
        std::thread::sleep(std::time::Duration::from_millis(500));
        while_down();
        let second = Monitor::start(sb, args).expect("restart");
        restarted(&second);
        let codes = client.join().expect("client");
        (codes, stop(second))
    });
    let reported = stopped.dropped().len();
    assert!(reported > 0, "the restarted daemon reports again");
    assert_eq!(codes.len(), 30);
    assert!(
        codes.iter().all(|c| *c == Some(CURL_RECV_ERROR)),
        "every request reset, none answered, none hanging: {codes:?}"
    );
    assert!(
        sb.imds_log().iter().all(|r| r.method != "GET"),
        "no IMDSv1 request reached IMDS: {:#?}",
        sb.imds_log()
    );
    stopped
}

#[test]
fn enforcement_survives_sigkill_and_a_restart_adopts_it() {
    let sb = Sandbox::builder().hop_limit(2).build().expect("sandbox");
    let _cleanup = imds_sandbox::PinsGuard(imds_sandbox::pin_dir(&sb));
    let args = ["--mode", "enforce"];
    let first = Monitor::start(&sb, &args).expect("monitor");
    // The pinned programs keep enforcing while no daemon runs.
    sigkill_and_restart(
        &sb,
        first,
        &args,
        || {},
        |second| {
            assert_eq!(
                second.started_event()["imds"]["enforcement"]["adopted"],
                true
            );
        },
    );
    // A clean stop (no --persist) removes enforcement.
    let looper = Place::service("looper");
    assert_eq!(sb.curl(&looper, &[LOOPER_URL]).unwrap().status, Some(200));
    assert!(!imds_sandbox::pin_dir(&sb).exists());
}

#[test]
fn persist_keeps_enforcement_until_detach() {
    persist_until_detach(&[]);
}

/// The same with clsact filters, which kernels before 6.6 use (no pinnable
/// links there: the filters themselves stay).
#[test]
fn persist_keeps_clsact_enforcement_until_detach() {
    persist_until_detach(&["--attach", "netlink"]);
}

/// Whether the run attached with TCX links (`monitor-started`).
fn stopped_attach_was_tcx(stopped: &Stopped) -> bool {
    stopped
        .events
        .iter()
        .any(|e| e["event"]["action"] == "monitor-started" && e["imds"]["attach_method"] == "tcx")
}

fn persist_until_detach(attach: &[&str]) {
    let sb = Sandbox::builder().hop_limit(2).build().expect("sandbox");
    let _cleanup = imds_sandbox::PinsGuard(imds_sandbox::pin_dir(&sb));
    let url = "http://169.254.169.254/latest/meta-data/instance-id";
    let place = Place::service("legacy");
    let mut args = vec!["--mode", "enforce", "--persist"];
    args.extend(attach);
    let monitor = Monitor::start(&sb, &args).expect("monitor");
    let stopped = monitor.stop_with(libc::SIGTERM).expect("stop");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_v1_blocked(&sb, &place, url);
    let dir = imds_sandbox::pin_dir(&sb);
    // Run on the host, as an admin would: kernels before 6.6 keep persisted
    // enforcement as clsact filters in the host's network namespace.
    let out = sb
        .command(
            &Place::service("admin"),
            imds_sandbox::imds_monitor_bin().unwrap(),
        )
        .unwrap()
        .args(["detach", "--pin-dir"])
        .arg(&dir)
        .output()
        .expect("detach");
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    let clsact = attach.contains(&"netlink") || !stopped_attach_was_tcx(&stopped);
    let expected = if clsact {
        "filter imds_classify on"
    } else {
        "link imds_classify"
    };
    assert!(said.contains(expected), "{expected:?} in {out:?}");
    let after = sb.curl(&place, &[url]).unwrap();
    assert_eq!(
        after.status,
        Some(200),
        "enforcement gone: {after:?}, {said}"
    );
    assert!(!dir.exists());
}

/// The same across a SIGKILL and a restart with clsact filters (kernels
/// before 6.6, forced here with `--attach netlink`): the restarted daemon
/// attaches its filter before it removes the killed one's (make-before-
/// break), so no request meets an interface without a classifier; the
/// final stop leaves neither filters nor the clsact qdisc behind.
#[test]
fn clsact_enforcement_has_no_gap_across_sigkill_and_a_restart() {
    let sb = Sandbox::builder().hop_limit(2).build().expect("sandbox");
    let _cleanup = imds_sandbox::PinsGuard(imds_sandbox::pin_dir(&sb));
    let iface = sb.host_ifname();
    let args = ["--mode", "enforce", "--attach", "netlink"];
    let first = Monitor::start(&sb, &args).expect("monitor");
    assert_eq!(first.started_event()["imds"]["attach_method"], "netlink");
    let before = classifier_prefs(&sb, iface);
    assert_eq!(before.len(), 1, "one classifier filter on {iface}");
    let stopped = sigkill_and_restart(
        &sb,
        first,
        &args,
        // The killed one's filters keep enforcing.
        || {
            assert_eq!(
                classifier_prefs(&sb, iface),
                before,
                "the filter outlives it"
            );
        },
        // The stale filter went once the new one, at another priority, was in.
        |_| {
            let after = classifier_prefs(&sb, iface);
            assert_eq!(after.len(), 1, "only the new filter: {after:?}");
            assert_ne!(after, before, "attached at a free priority");
        },
    );
    assert!(
        stopped
            .stderr
            .contains("removed a stale imds_classify filter"),
        "{}",
        stopped.stderr
    );
    // A clean stop removes the filters and the qdisc the first daemon added.
    for direction in ["egress", "ingress"] {
        let filters = host_tc(&sb, &["filter", "show", "dev", iface, direction]);
        assert!(
            filters.trim().is_empty(),
            "{direction} of {iface}: {filters}"
        );
    }
    let qdiscs = host_tc(&sb, &["qdisc", "show", "dev", iface]);
    assert!(!qdiscs.contains("clsact"), "{qdiscs}");
    let looper = Place::service("looper");
    assert_eq!(sb.curl(&looper, &[LOOPER_URL]).unwrap().status, Some(200));
}

/// `tc` in the sandbox's host namespace.
fn host_tc(sb: &Sandbox, args: &[&str]) -> String {
    let out = sb
        .host_netns()
        .command("tc")
        .expect("tc")
        .args(args)
        .output()
        .expect("tc");
    assert!(
        out.status.success(),
        "tc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The priorities (`pref`) of the classifier's filters on egress of `iface`.
fn classifier_prefs(sb: &Sandbox, iface: &str) -> Vec<String> {
    host_tc(sb, &["filter", "show", "dev", iface, "egress"])
        .lines()
        .filter(|line| line.contains("imds_classify"))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "pref")?;
            words.next().map(str::to_owned)
        })
        .collect()
}
