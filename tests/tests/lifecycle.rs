//! The daemon's life: it leaves nothing attached when it stops (TCX and
//! netlink clsact), cleans up after a predecessor killed with SIGKILL, and
//! writes to a file that logrotate can move (SIGHUP reopens it).

use std::{fs, time::Duration};

use aya::programs::{SchedClassifier, TcAttachType};
use imds_sandbox::{Monitor, Place, Sandbox, Stopped, action};
use serde_json::Value;

fn sandbox() -> Sandbox {
    Sandbox::builder().hop_limit(2).build().expect("sandbox")
}

fn v1(sb: &Sandbox) {
    let out = sb
        .curl(
            &Place::service("app"),
            &["http://169.254.169.254/latest/meta-data/"],
        )
        .expect("curl");
    assert_eq!(out.status, Some(200));
}

fn stop(monitor: Monitor, signal: libc::c_int) -> Stopped {
    let stopped = monitor.stop_with(signal).expect("stop");
    assert!(
        stopped.status.success(),
        "exit {:?}: {}",
        stopped.status,
        stopped.stderr
    );
    stopped
}

/// Names of the TCX programs on the host's eth0, in `direction`.
fn tcx_programs(sb: &Sandbox, direction: TcAttachType) -> Vec<String> {
    sb.run_in_host_netns(move || {
        let (_, programs) = SchedClassifier::query_tcx("eth0", direction).expect("query tcx");
        programs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
    })
    .expect("host netns")
}

/// `tc` output in the host namespace.
fn tc(sb: &Sandbox, args: &[&str]) -> String {
    let out = sb
        .command(&Place::HostRoot, "tc")
        .unwrap()
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

/// TCX links exist from Linux 6.6 on.
fn kernel_has_tcx() -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

#[test]
fn tcx_links_are_gone_after_sigterm() {
    let sb = sandbox();
    let monitor = Monitor::start(&sb, &[]).expect("monitor");
    if !kernel_has_tcx() {
        // Before 6.6 the default attach is clsact, which
        // netlink_filters_and_the_clsact_qdisc_are_removed covers.
        assert_eq!(monitor.started_event()["imds"]["attach_method"], "netlink");
        stop(monitor, libc::SIGTERM);
        return;
    }
    assert_eq!(monitor.started_event()["imds"]["attach_method"], "tcx");
    assert_eq!(tcx_programs(&sb, TcAttachType::Egress), ["imds_classify"]);
    assert_eq!(tcx_programs(&sb, TcAttachType::Ingress), ["imds_responses"]);
    v1(&sb);
    monitor.wait_for_requests(1).expect("event");
    let stopped = stop(monitor, libc::SIGTERM);
    assert_eq!(action(stopped.stopped_event()), "monitor-stopped");
    assert!(tcx_programs(&sb, TcAttachType::Egress).is_empty());
    assert!(tcx_programs(&sb, TcAttachType::Ingress).is_empty());
}

#[test]
fn netlink_filters_and_the_clsact_qdisc_are_removed() {
    let sb = sandbox();
    let monitor = Monitor::start(&sb, &["--attach", "netlink"]).expect("monitor");
    assert_eq!(monitor.started_event()["imds"]["attach_method"], "netlink");
    assert!(tc(&sb, &["qdisc", "show", "dev", "eth0"]).contains("clsact"));
    assert!(tc(&sb, &["filter", "show", "dev", "eth0", "egress"]).contains("imds_classify"));
    assert!(tc(&sb, &["filter", "show", "dev", "eth0", "ingress"]).contains("imds_responses"));
    v1(&sb);
    let events = monitor
        .wait_for_requests(1)
        .expect("classified through the netlink path too");
    assert_eq!(events[0]["imds"]["class"], "v1_get");
    stop(monitor, libc::SIGINT);
    assert!(
        !tc(&sb, &["qdisc", "show", "dev", "eth0"]).contains("clsact"),
        "qdisc we added is gone"
    );
    assert!(tc(&sb, &["filter", "show", "dev", "eth0", "egress"]).is_empty());
}

#[test]
fn a_restart_removes_filters_left_by_a_killed_daemon() {
    let sb = sandbox();
    let killed = Monitor::start(&sb, &["--attach", "netlink"]).expect("monitor");
    let status = killed.kill().expect("SIGKILL");
    assert!(!status.success());
    // Netlink filters outlive their process.
    assert!(tc(&sb, &["filter", "show", "dev", "eth0", "egress"]).contains("imds_classify"));
    let monitor = Monitor::start(&sb, &["--attach", "netlink"]).expect("restart");
    assert!(
        monitor
            .stderr()
            .contains("removed a stale imds_classify filter"),
        "{}",
        monitor.stderr()
    );
    let filters = tc(&sb, &["filter", "show", "dev", "eth0", "egress"]);
    assert_eq!(
        filters
            .lines()
            .filter(|l| l.contains("imds_classify"))
            .count(),
        1,
        "one filter, not two: {filters}"
    );
    v1(&sb);
    let events = monitor.wait_for_requests(1).expect("event");
    assert_eq!(events.len(), 1, "counted once");
    stop(monitor, libc::SIGTERM);
}

#[test]
fn output_file_rotates_and_sighup_reopens_it() {
    let sb = sandbox();
    let dir =
        std::env::temp_dir().join(format!("imds-lifecycle-{}-{}", std::process::id(), sb.id()));
    let _ = fs::remove_dir_all(&dir);
    let path = dir.join("logs/events.json");
    let path_str = path.to_string_lossy().into_owned();
    let monitor = Monitor::spawn(
        &sb,
        &Place::service("imds-monitor"),
        &["--output", &path_str],
    )
    .expect("spawn");
    let read = |p: &std::path::Path| -> Vec<Value> {
        fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("whole JSON lines"))
            .collect()
    };
    let wait_lines = |p: &std::path::Path, pred: &dyn Fn(&[Value]) -> bool| {
        for _ in 0..100 * imds_sandbox::time_scale() {
            if pred(&read(p)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} never matched: {:#?}", p.display(), read(p));
    };
    wait_lines(&path, &|lines| {
        lines.iter().any(|l| action(l) == "monitor-started")
    });
    v1(&sb);
    wait_lines(&path, &|lines| {
        lines.iter().any(|l| action(l) == "imds-request")
    });
    // logrotate: move the file, then SIGHUP.
    let moved = dir.join("logs/events.json.1");
    fs::rename(&path, &moved).unwrap();
    monitor.signal(libc::SIGHUP).unwrap();
    wait_lines(&path, &|_| path.exists());
    v1(&sb);
    wait_lines(&path, &|lines| {
        lines.iter().any(|l| action(l) == "imds-request")
    });
    let stopped = stop(monitor, libc::SIGTERM);
    assert!(stopped.events.is_empty(), "nothing on stdout with --output");
    let old = read(&moved);
    let new = read(&path);
    assert_eq!(action(&old[0]), "monitor-started");
    assert_eq!(
        old.iter().filter(|l| action(l) == "imds-request").count(),
        1
    );
    assert_eq!(
        new.iter().filter(|l| action(l) == "imds-request").count(),
        1
    );
    assert_eq!(action(new.last().unwrap()), "monitor-stopped");
    assert_eq!(new.last().unwrap()["imds"]["counters"]["events_written"], 2);
    let _ = fs::remove_dir_all(&dir);
}
