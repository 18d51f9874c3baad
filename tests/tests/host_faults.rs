//! Faults of the host: the watched interface goes down and up, is deleted
//! and re-created with the same name (a new index: a new ENI, a restarted
//! container network), the route to IMDS moves to another interface,
//! tracefs is missing and cannot be mounted, the cgroup2 mount is
//! read-only. The daemon reports each (`interface-down`, `interface-up`,
//! `interface-attached`, `imds.degraded`), attaches again where it must,
//! never exits, and enforcement still drops IMDSv1 afterwards.
//!
//! Mount faults are made in a private mount namespace of the daemon
//! (`unshare -m`): the machine's mounts are never changed.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use imds_sandbox::{
    Monitor, PinsGuard, Place, Sandbox, Stopped, action, imds_monitor_bin, pin_dir, time_scale,
    topology::{self, HOST_V4, HOST_V6, IMDS_GW_V4, IMDS_GW_V6},
};
use serde_json::Value;

/// curl's exit code for "Recv failure: Connection reset by peer".
const CURL_RECV_ERROR: i32 = 56;
const V1_URL: &str = "http://169.254.169.254/latest/meta-data/instance-id";

fn sandbox() -> Sandbox {
    Sandbox::builder().hop_limit(2).build().expect("sandbox")
}

/// A v1 GET from a host service is reset at once and never reaches IMDS.
fn assert_v1_blocked(sb: &Sandbox) {
    let before = sb.imds_log().len();
    let out = sb
        .curl(&Place::service("legacy"), &["--max-time", "5", V1_URL])
        .expect("curl");
    assert_eq!(out.exit_code, Some(CURL_RECV_ERROR), "reset: {out:?}");
    assert_eq!(sb.imds_log().len(), before, "IMDS received no request");
}

/// A v1 GET from a host service is answered (monitor mode).
fn v1_get(sb: &Sandbox) {
    let out = sb
        .curl(&Place::service("legacy"), &["--max-time", "5", V1_URL])
        .expect("curl");
    assert_eq!(out.status, Some(200), "{out:?}");
}

fn assert_v2_works(sb: &Sandbox) {
    let out = sb
        .imds_client(
            &Place::service("agent"),
            &[
                "--addr",
                "169.254.169.254:80",
                "--v2",
                "--timeout-ms",
                "3000",
            ],
        )
        .expect("client");
    assert!(out.success(), "{out:?}");
}

fn host_index(sb: &Sandbox) -> u64 {
    let out = sb
        .host_netns()
        .ip(&["-o", "link", "show", "dev", "eth0"])
        .expect("ip link show");
    out.split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .unwrap_or_else(|| panic!("no index in {out:?}"))
}

/// What a link going down took from the host side (IPv6 addresses, the
/// routes through it), put back as the topology has it.
fn restore_host_side(sb: &Sandbox) {
    sb.host_netns()
        .ip_batch(&[
            format!("addr replace {HOST_V4}/24 dev eth0"),
            format!("addr replace {HOST_V6}/64 dev eth0 nodad"),
            "link set eth0 up".to_owned(),
            format!("route replace default via {IMDS_GW_V4} dev eth0"),
            format!("route replace ::/0 via {IMDS_GW_V6} dev eth0"),
        ])
        .expect("restore the host side");
}

/// Deletes the host's eth0 (and with it the IMDS side of the veth).
fn delete_host_link(sb: &Sandbox) {
    sb.host_netns()
        .ip(&["link", "del", "eth0"])
        .expect("ip link del eth0");
}

/// Creates the host's eth0 again, as the topology wires it.
fn recreate_host_link(sb: &Sandbox) {
    let imds = sb.imds_netns().name().to_owned();
    sb.host_netns()
        .ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &imds,
        ])
        .expect("ip link add eth0");
    sb.imds_netns()
        .ip_batch(&topology::imds_link_commands())
        .expect("wire the IMDS side");
    restore_host_side(sb);
}

fn records<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| action(e) == name).collect()
}

fn wait_for_record(monitor: &Monitor, name: &str, n: usize) -> Vec<Value> {
    monitor
        .wait_for(Duration::from_secs(10), |events| {
            records(events, name).len() >= n
        })
        .unwrap_or_else(|e| panic!("waiting for {name}: {e}\nstderr:\n{}", monitor.stderr()))
}

fn stop(monitor: Monitor) -> Stopped {
    let stopped = monitor.stop().expect("stop");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(
        action(stopped.stopped_event()),
        "monitor-stopped",
        "{:#?}",
        stopped.events
    );
    assert!(stopped.garbage.is_empty(), "{:?}", stopped.garbage);
    stopped
}

#[test]
fn interface_down_and_up_is_reported_and_enforcement_holds() {
    let sb = sandbox();
    let index = host_index(&sb);
    let monitor = Monitor::start(&sb, &["--mode", "enforce", "--iface", "eth0"]).expect("monitor");
    assert_v1_blocked(&sb);

    sb.host_netns()
        .ip(&["link", "set", "eth0", "down"])
        .expect("ip link set down");
    let events = wait_for_record(&monitor, "interface-down", 1);
    let down = records(&events, "interface-down")[0];
    assert_eq!(down["event"]["kind"], "event", "{down:#}");
    assert_eq!(down["event"]["reason"], "down", "{down:#}");
    assert_eq!(down["imds"]["interface"], "eth0");
    assert_eq!(down["imds"]["link"]["index"], index);
    assert_eq!(down["imds"]["link"]["admin_up"], false);
    assert_eq!(down["imds"]["link"]["attached"], true, "{down:#}");
    assert_eq!(
        down["observer"]["egress"]["interface"]["id"],
        index.to_string()
    );

    restore_host_side(&sb);
    let events = wait_for_record(&monitor, "interface-up", 1);
    let up = records(&events, "interface-up")[0];
    assert_eq!(up["imds"]["link"]["index"], index, "the same interface");
    assert!(
        records(&events, "interface-attached").is_empty(),
        "nothing had to be attached again: {events:#?}"
    );
    // The programs stayed attached through it.
    assert_v1_blocked(&sb);
    assert_v2_works(&sb);

    let stopped = stop(monitor);
    let dropped = stopped.dropped();
    assert_eq!(dropped.len(), 2, "{:#?}", stopped.requests());
    assert_eq!(
        records(&stopped.events, "interface-down").len(),
        1,
        "reported once"
    );
}

/// Deletes and re-creates eth0 under a daemon started with `args`; returns
/// the daemon, the old and the new index.
fn recreate_under(sb: &Sandbox, args: &[&str]) -> (Monitor, u64, u64) {
    let old = host_index(sb);
    let monitor = Monitor::start(sb, args).expect("monitor");
    delete_host_link(sb);
    let events = wait_for_record(&monitor, "interface-down", 1);
    let down = records(&events, "interface-down");
    assert_eq!(down.len(), 1, "one record for the deletion: {down:#?}");
    assert_eq!(down[0]["event"]["reason"], "deleted", "{:#}", down[0]);
    assert_eq!(down[0]["imds"]["link"]["index"], old);
    assert_eq!(down[0]["imds"]["link"]["attached"], false);

    recreate_host_link(sb);
    let new = host_index(sb);
    assert_ne!(new, old, "a new interface");
    let events = wait_for_record(&monitor, "interface-attached", 1);
    let attached = records(&events, "interface-attached")[0];
    assert_eq!(attached["event"]["kind"], "event");
    assert_eq!(attached["event"]["reason"], "recreated", "{attached:#}");
    assert_eq!(attached["imds"]["interface"], "eth0");
    assert_eq!(attached["imds"]["link"]["index"], new);
    assert_eq!(attached["imds"]["link"]["previous_index"], old);
    assert_eq!(attached["imds"]["link"]["attached"], true);
    assert!(records(&events, "interface-attach-failed").is_empty());
    (monitor, old, new)
}

#[test]
fn a_deleted_and_recreated_interface_is_attached_again_and_enforced() {
    let sb = sandbox();
    let (monitor, _, new) = recreate_under(&sb, &["--mode", "enforce", "--iface", "eth0"]);
    assert_v1_blocked(&sb);
    assert_v2_works(&sb);
    let stopped = stop(monitor);
    let dropped = stopped.dropped();
    assert_eq!(dropped.len(), 1, "{:#?}", stopped.requests());
    assert_eq!(dropped[0]["imds"]["class"], "v1_get");
    assert_eq!(
        dropped[0]["observer"]["egress"]["interface"]["id"],
        new.to_string(),
        "seen on the new interface"
    );
    assert_eq!(stopped.stopped_event()["imds"]["interfaces"][0], "eth0");
}

/// The clsact path (kernels before 6.6, forced here with `--attach
/// netlink`): the qdisc and its filters die with the device, and are added
/// to the new one.
#[test]
fn a_recreated_interface_gets_a_new_clsact_qdisc() {
    let sb = sandbox();
    let (monitor, _, _) = recreate_under(
        &sb,
        &[
            "--mode", "enforce", "--iface", "eth0", "--attach", "netlink",
        ],
    );
    assert_eq!(monitor.started_event()["imds"]["attach_method"], "netlink");
    let qdiscs = tc_show(&sb).expect("tc");
    assert!(qdiscs.contains("clsact"), "on the new eth0: {qdiscs}");
    assert_v1_blocked(&sb);
    stop(monitor);
    let qdiscs = tc_show(&sb).expect("tc");
    assert!(
        !qdiscs.contains("clsact"),
        "the qdisc it added is removed on stop: {qdiscs}"
    );
}

fn tc_show(sb: &Sandbox) -> anyhow::Result<String> {
    let out = sb
        .host_netns()
        .command("tc")?
        .args(["qdisc", "show", "dev", "eth0"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_recreated_interface_chosen_by_route_is_classified_again() {
    let sb = sandbox();
    // No --iface: eth0 was chosen because IMDS is routed through it.
    let (monitor, _, new) = recreate_under(&sb, &["--mode", "monitor"]);
    let before = sb.imds_log().len();
    v1_get(&sb);
    assert_eq!(
        sb.imds_log().len(),
        before + 1,
        "monitor mode lets it through"
    );
    let requests = monitor.wait_for_requests(1).expect("the v1 GET's event");
    assert_eq!(requests[0]["imds"]["class"], "v1_get", "{:#}", requests[0]);
    assert_eq!(requests[0]["imds"]["interface"], "eth0");
    assert_eq!(
        requests[0]["observer"]["egress"]["interface"]["id"],
        new.to_string()
    );
    assert_eq!(requests[0]["imds"]["attribution"], "full");
    stop(monitor);
}

/// Enforce mode's daemon is killed (its links stay pinned), eth0 is
/// deleted and re-created, and a new daemon starts: the dead pinned TCX
/// links cannot be adopted, so it attaches anew instead of failing to start
/// (with clsact, the filters went with the device and it simply attaches).
#[test]
fn a_restart_after_the_interface_was_recreated_attaches_anew() {
    let sb = sandbox();
    let _pins = PinsGuard(pin_dir(&sb));
    let first = Monitor::start(&sb, &["--mode", "enforce", "--iface", "eth0"]).expect("monitor");
    assert!(!first.kill().expect("SIGKILL").success());
    delete_host_link(&sb);
    recreate_host_link(&sb);
    let second =
        Monitor::start(&sb, &["--mode", "enforce", "--iface", "eth0"]).expect("the restart starts");
    assert_eq!(
        second.started_event()["imds"]["enforcement"]["adopted"],
        true
    );
    // TCX links are pinned, and dead now; clsact filters are not pinned
    // (they went with the device).
    if second.started_event()["imds"]["attach_method"] == "tcx" {
        // stderr is read by its own thread: it may trail the stdout event.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !second.stderr().contains("cannot be adopted") && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(
            second.stderr().contains("cannot be adopted"),
            "{}",
            second.stderr()
        );
    }
    assert_v1_blocked(&sb);
    let stopped = stop(second);
    assert_eq!(stopped.dropped().len(), 1, "{:#?}", stopped.requests());
}

#[test]
fn a_route_moving_to_another_interface_is_followed() {
    let sb = sandbox();
    let monitor = Monitor::start(&sb, &["--mode", "enforce"]).expect("monitor");
    assert_eq!(
        monitor.started_event()["imds"]["interfaces"],
        serde_json::json!(["eth0"])
    );
    // A second uplink, and a host route to IMDS through it.
    let imds = sb.imds_netns().name().to_owned();
    sb.host_netns()
        .ip_batch(&[
            format!("link add eth1 type veth peer name eth1 netns {imds}"),
            "addr add 198.19.0.10/24 dev eth1".to_owned(),
            "link set eth1 up".to_owned(),
        ])
        .expect("eth1");
    sb.imds_netns()
        .ip_batch(&[
            "addr add 198.19.0.1/24 dev eth1".to_owned(),
            "link set eth1 up".to_owned(),
        ])
        .expect("eth1 on the IMDS side");
    sb.host_netns()
        .ip(&[
            "route",
            "add",
            "169.254.169.254/32",
            "via",
            "198.19.0.1",
            "dev",
            "eth1",
        ])
        .expect("route through eth1");
    let events = wait_for_record(&monitor, "interface-attached", 1);
    let attached = records(&events, "interface-attached")[0];
    assert_eq!(attached["event"]["reason"], "route", "{attached:#}");
    assert_eq!(attached["imds"]["interface"], "eth1");
    assert!(attached["imds"]["link"].get("previous_index").is_none());

    assert_v1_blocked(&sb);
    let stopped = stop(monitor);
    let dropped = stopped.dropped();
    assert_eq!(dropped.len(), 1, "{:#?}", stopped.requests());
    assert_eq!(
        dropped[0]["imds"]["interface"], "eth1",
        "dropped on the new route"
    );
    let interfaces = &stopped.stopped_event()["imds"]["interfaces"];
    assert_eq!(
        *interfaces,
        serde_json::json!(["eth0", "eth1"]),
        "both stay watched"
    );
}

/// `imds-monitor run ARGS` in a private mount namespace of its own, after
/// `setup` (shell) changed the mounts there. The machine's mounts are not
/// touched: `unshare -m` makes every mount private first.
struct Unshared {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Unshared {
    fn start(sb: &Sandbox, setup: &str, args: &[&str]) -> Self {
        let bin = imds_monitor_bin().expect("imds-monitor built");
        let script = format!("set -e\n{setup}\nexec \"$@\"");
        let mut cmd = sb
            .command(&Place::service("imds-monitor"), "unshare")
            .expect("command");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
            .arg(bin)
            .arg("run")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn unshare");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let shared = Arc::clone(&events);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
                shared.lock().unwrap().push(value);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let shared = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shared
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            events,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_for(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20) * time_scale();
        loop {
            let events = self.events.lock().unwrap().clone();
            if done(&events) {
                return events;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                thread::sleep(Duration::from_millis(200));
                panic!(
                    "imds-monitor exited ({status}) before {what}\nstderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {events:#?}\nstderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGINT; the exit status and every event.
    fn stop(mut self) -> (std::process::ExitStatus, Vec<Value>) {
        // SAFETY: kill(2) on our own child (sh exec'ed the daemon).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let status = self.child.wait().expect("wait");
        thread::sleep(Duration::from_millis(200));
        let events = self.events.lock().unwrap().clone();
        (status, events)
    }
}

impl Drop for Unshared {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Hides tracefs: a read-only tmpfs over /sys/kernel, with only the BTF
/// directory bound back in; the daemon finds no tracefs and has nowhere to
/// mount one (/sys/kernel/tracing does not exist).
const HIDE_TRACEFS: &str = "\
stash=$(mktemp -d /tmp/imds-host-faults-btf.XXXXXX)
mount --bind /sys/kernel/btf \"$stash\"
mount -t tmpfs -o size=64k,mode=0755 tmpfs /sys/kernel
mkdir /sys/kernel/btf
mount --move \"$stash\" /sys/kernel/btf
rmdir \"$stash\"
mount -o remount,ro /sys/kernel
test ! -e /sys/kernel/tracing
test -e /sys/kernel/btf/vmlinux";

/// Makes the cgroup2 mount read-only for the daemon: a bind mount of it on
/// itself, remounted read-only (a per-mount flag: the file system and the
/// machine's mount stay read-write).
const RO_CGROUP2: &str = "\
cg=$(grep ' - cgroup2 ' /proc/self/mountinfo | head -n1 | cut -d' ' -f5)
test -n \"$cg\"
mount --bind \"$cg\" \"$cg\"
mount -o remount,bind,ro \"$cg\"
! mkdir \"$cg/imds-host-faults-probe\" 2>/dev/null";

#[test]
fn without_tracefs_it_runs_degraded_and_still_classifies_and_names_senders() {
    let sb = sandbox();
    let mut daemon = Unshared::start(&sb, HIDE_TRACEFS, &["--mode", "alert"]);
    let events = daemon.wait_for("monitor-started", |e| {
        e.iter().any(|e| action(e) == "monitor-started")
    });
    let started = records(&events, "monitor-started")[0].clone();
    let degraded = started["imds"]["degraded"].as_array().expect("an array");
    assert!(
        degraded.iter().any(|d| d
            .as_str()
            .unwrap()
            .starts_with("process tracking: tracefs is not mounted")),
        "{degraded:#?}"
    );
    assert!(
        daemon
            .stderr()
            .contains("running without the process tracepoints"),
        "{}",
        daemon.stderr()
    );
    v1_get(&sb);
    let events = daemon.wait_for("the v1 GET's event", |e| {
        e.iter().any(|e| action(e) == "imds-request")
    });
    let request = records(&events, "imds-request")[0].clone();
    assert_eq!(request["imds"]["class"], "v1_get", "{request:#}");
    assert_eq!(request["imds"]["would_drop"], true);
    // The socket hooks still name the sender's cgroup and unit.
    assert_eq!(
        request["imds"]["systemd_unit"], "legacy.service",
        "{request:#}"
    );
    assert!(request["process"]["pid"].as_u64().is_some(), "{request:#}");
    let (status, events) = daemon.stop();
    assert!(status.success(), "{status}");
    assert_eq!(action(events.last().unwrap()), "monitor-stopped");
}

#[test]
fn a_read_only_cgroup2_mount_changes_nothing() {
    let sb = sandbox();
    let pins = PinsGuard(pin_dir(&sb));
    let pin_dir = pins.0.to_string_lossy().into_owned();
    let mut daemon = Unshared::start(
        &sb,
        RO_CGROUP2,
        &["--mode", "enforce", "--pin-dir", &pin_dir],
    );
    let events = daemon.wait_for("monitor-started", |e| {
        e.iter().any(|e| action(e) == "monitor-started")
    });
    let started = records(&events, "monitor-started")[0].clone();
    let degraded = started["imds"]["degraded"].as_array().expect("an array");
    assert!(
        degraded
            .iter()
            .all(|d| !d.as_str().unwrap().contains("cgroup")),
        "nothing is written to cgroup2, so nothing is missing: {degraded:#?}"
    );
    assert_v1_blocked(&sb);
    let events = daemon.wait_for("the v1 GET's event", |e| {
        e.iter().any(|e| action(e) == "imds-request")
    });
    let request = records(&events, "imds-request")[0].clone();
    assert_eq!(request["imds"]["verdict"], "dropped", "{request:#}");
    assert_eq!(
        request["imds"]["systemd_unit"], "legacy.service",
        "{request:#}"
    );
    assert_eq!(request["imds"]["attribution"], "full", "{request:#}");
    let (status, events) = daemon.stop();
    assert!(status.success(), "{status}");
    assert_eq!(action(events.last().unwrap()), "monitor-stopped");
}
