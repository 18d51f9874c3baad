//! Which workload sent it: every test starts its own workloads, knows their
//! pid, executable, arguments, parent and cgroup, and checks the daemon's
//! JSON names exactly those.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use imds_sandbox::{ContainerSpec, Monitor, Place, Sandbox, Stopped};
use serde_json::Value;

const V4_URL: &str = "http://169.254.169.254/latest/meta-data/instance-id";
const V6_URL: &str = "http://[fd00:ec2::254]/latest/meta-data/instance-id";

fn sandbox(containers: &[ContainerSpec]) -> Sandbox {
    Sandbox::builder()
        .hop_limit(2)
        .containers(containers)
        .build()
        .expect("sandbox")
}

/// The real path of a program on PATH, as /proc/PID/exe shows it.
fn executable(program: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh");
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    std::fs::canonicalize(&path)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Runs `program args` at `place`, waits for it, and returns its pid.
fn run(sb: &Sandbox, place: &Place, program: &str, args: &[&str]) -> u32 {
    let mut child = sb
        .command(place, program)
        .expect("command")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{program} {args:?}: {status}");
    pid
}

fn stop(monitor: Monitor) -> Stopped {
    let stopped = monitor.stop().expect("stop");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    stopped
}

fn request_by_pid(stopped: &Stopped, pid: u32) -> &Value {
    stopped
        .requests()
        .into_iter()
        .find(|r| r["process"]["pid"] == pid)
        .unwrap_or_else(|| panic!("no request from pid {pid}: {:#?}", stopped.requests()))
}

fn args_of(event: &Value) -> Vec<String> {
    event["process"]["args"]
        .as_array()
        .unwrap_or_else(|| panic!("no process.args: {event:#}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn host_service_is_named_with_process_parent_and_unit() {
    let sb = sandbox(&[]);
    let monitor = Monitor::start(&sb, &["--mode", "alert"]).expect("monitor");
    let place = Place::service("legacy-agent");
    let args = ["-s", "-o", "/dev/null", V4_URL];
    let pid = run(&sb, &place, "curl", &args);
    let args6 = ["-s", "-o", "/dev/null", "-g", V6_URL];
    let pid6 = run(&sb, &place, "curl", &args6);
    monitor.wait_for_requests(2).expect("events");
    let stopped = stop(monitor);

    let cgroup = sb.cgroup(&place).unwrap();
    for (pid, args, net) in [(pid, &args[..], "ipv4"), (pid6, &args6[..], "ipv6")] {
        let e = request_by_pid(&stopped, pid);
        assert_eq!(e["network"]["type"], net);
        assert_eq!(e["process"]["name"], "curl");
        assert_eq!(e["process"]["executable"], executable("curl"));
        let mut expected = vec!["curl".to_owned()];
        expected.extend(args.iter().map(|a| a.to_string()));
        assert_eq!(args_of(e), expected);
        assert_eq!(e["process"]["command_line"], expected.join(" "));
        assert_eq!(e["process"]["user"]["id"], "0");
        assert_eq!(
            e["process"]["parent"]["pid"],
            std::process::id(),
            "spawned by this test"
        );
        assert_eq!(
            e["process"]["parent"]["executable"],
            std::env::current_exe().unwrap().to_string_lossy().as_ref()
        );
        assert_eq!(e["imds"]["cgroup"]["path"], cgroup.rel());
        assert_eq!(e["imds"]["cgroup"]["id"], cgroup.id().unwrap());
        assert_eq!(e["imds"]["systemd_unit"], "legacy-agent.service");
        assert_eq!(e["imds"]["workload"]["kind"], "unit");
        assert_eq!(e["imds"]["workload"]["id"], "legacy-agent.service");
        assert_eq!(e["imds"]["attribution"], "full");
        assert_eq!(e["imds"]["attribution_method"], "socket");
        assert!(e.get("container").is_none());
        assert!(!e["imds"]["ancestry"].as_array().unwrap().is_empty());
    }
    assert_eq!(
        stopped.stopped_event()["imds"]["counters"]["attribution_partial"],
        0
    );
}

#[test]
fn docker_and_pod_containers_behind_nat_are_named() {
    let sb = sandbox(&[ContainerSpec::docker(), ContainerSpec::kubernetes()]);
    let monitor = Monitor::start(&sb, &[]).expect("monitor");
    let docker = run(
        &sb,
        &Place::Container(0),
        "curl",
        &["-s", "-o", "/dev/null", V4_URL],
    );
    let docker6 = run(
        &sb,
        &Place::Container(0),
        "curl",
        &["-s", "-o", "/dev/null", "-g", V6_URL],
    );
    let pod = run(
        &sb,
        &Place::Container(1),
        "curl",
        &["-s", "-o", "/dev/null", V4_URL],
    );
    monitor.wait_for_requests(3).expect("events");
    let stopped = stop(monitor);

    for pid in [docker, docker6] {
        let e = request_by_pid(&stopped, pid);
        let c = sb.container(0);
        assert_eq!(e["container"]["id"], c.id());
        assert_eq!(e["container"]["runtime"], "docker");
        assert_eq!(e["imds"]["cgroup"]["path"], c.cgroup().rel());
        assert_eq!(e["imds"]["workload"]["kind"], "container");
        assert_eq!(e["imds"]["workload"]["id"], c.id());
        assert_eq!(e["process"]["executable"], executable("curl"));
        assert_eq!(e["process"]["parent"]["pid"], std::process::id());
        // Forwarded and masqueraded: found by sequence number, not socket.
        assert_eq!(e["imds"]["attribution_method"], "sequence");
        assert_eq!(e["imds"]["attribution"], "full");
        assert_eq!(
            e["source"]["ip"],
            if e["network"]["type"] == "ipv4" {
                "198.18.0.10"
            } else {
                "2001:db8:1::10"
            }
        );
    }
    let e = request_by_pid(&stopped, pod);
    let c = sb.container(1);
    assert_eq!(e["container"]["id"], c.id());
    assert_eq!(e["container"]["runtime"], "containerd");
    assert_eq!(e["orchestrator"]["resource"]["id"], c.pod_uid().unwrap());
    assert_eq!(e["imds"]["workload"]["kind"], "pod");
    assert_eq!(e["imds"]["workload"]["id"], c.pod_uid().unwrap());
    assert_eq!(e["imds"]["cgroup"]["path"], c.cgroup().rel());
}

#[test]
fn short_lived_curl_from_a_script_keeps_args_and_parents() {
    let sb = sandbox(&[]);
    let monitor = Monitor::start(&sb, &["--mode", "alert"]).expect("monitor");
    // Like UserData: a shell runs curl, which exits right after its request.
    let script = format!("curl -s -o /dev/null {V4_URL}; echo fetched");
    let sh = run(&sb, &Place::service("cloud-init"), "sh", &["-c", &script]);
    let events = monitor.wait_for_requests(1).expect("event");
    let stopped = stop(monitor);
    let e = &events[0];
    let curl_pid = e["process"]["pid"].as_u64().unwrap() as u32;
    assert!(
        !PathBuf::from(format!("/proc/{curl_pid}")).exists(),
        "curl is long gone"
    );
    assert_eq!(e["process"]["name"], "curl");
    assert_eq!(e["process"]["executable"], executable("curl"));
    assert_eq!(args_of(e), ["curl", "-s", "-o", "/dev/null", V4_URL]);
    assert_eq!(e["process"]["parent"]["pid"], sh);
    assert_eq!(e["process"]["parent"]["executable"], executable("sh"));
    let ancestry = e["imds"]["ancestry"].as_array().unwrap();
    assert_eq!(ancestry[0]["pid"], sh);
    assert_eq!(ancestry[1]["pid"], std::process::id());
    assert_eq!(e["imds"]["systemd_unit"], "cloud-init.service");
    assert_eq!(e["event"]["kind"], "alert");
    assert_eq!(e["imds"]["attribution"], "full");
    assert_eq!(stopped.requests().len(), 1);
}

#[test]
fn two_processes_in_one_container_are_told_apart() {
    let sb = sandbox(&[ContainerSpec::docker()]);
    let monitor = Monitor::start(&sb, &[]).expect("monitor");
    let first = run(
        &sb,
        &Place::Container(0),
        "curl",
        &["-s", "-o", "/dev/null", V4_URL],
    );
    let second = run(
        &sb,
        &Place::Container(0),
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "http://169.254.169.254/latest/user-data",
        ],
    );
    monitor.wait_for_requests(2).expect("events");
    let stopped = stop(monitor);
    let a = request_by_pid(&stopped, first);
    let b = request_by_pid(&stopped, second);
    assert_ne!(first, second);
    assert_eq!(a["container"]["id"], b["container"]["id"]);
    assert_eq!(args_of(a).last().unwrap(), V4_URL);
    assert_eq!(
        args_of(b).last().unwrap(),
        "http://169.254.169.254/latest/user-data"
    );
    assert_eq!(b["imds"]["path_category"], "user_data");
}

#[test]
fn a_forked_child_that_makes_the_request_is_named_with_its_parent() {
    let sb = sandbox(&[]);
    let monitor = Monitor::start(&sb, &[]).expect("monitor");
    // The child is forked, never execs, and exits right after its request.
    let code = "import os, socket\n\
                pid = os.fork()\n\
                if pid == 0:\n\
                \x20   s = socket.create_connection(('169.254.169.254', 80), timeout=5)\n\
                \x20   s.sendall(b'GET /latest/meta-data/ HTTP/1.0\\r\\n\\r\\n')\n\
                \x20   s.recv(4096)\n\
                \x20   os._exit(0)\n\
                os.waitpid(pid, 0)\n";
    // The interpreter itself, not a wrapper script (pyenv shims) in front of it.
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .expect("python3");
    let python = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let parent = run(&sb, &Place::service("worker"), &python, &["-c", code]);
    let events = monitor.wait_for_requests(1).expect("event");
    let stopped = stop(monitor);
    let e = &events[0];
    assert_ne!(e["process"]["pid"], parent, "the child made it");
    assert_eq!(e["process"]["parent"]["pid"], parent);
    assert_eq!(e["process"]["parent"]["executable"], python);
    assert_eq!(
        e["process"]["executable"], python,
        "a fork runs its parent's program"
    );
    assert_eq!(args_of(e)[..2], [python.clone(), "-c".to_owned()]);
    assert_eq!(e["imds"]["systemd_unit"], "worker.service");
    assert_eq!(stopped.requests().len(), 1);
}

#[test]
fn cgroup_flag_limits_attribution_and_says_why_the_rest_is_partial() {
    let sb = sandbox(&[ContainerSpec::kubernetes()]);
    let system_slice = sb.root_cgroup().child("system.slice").unwrap();
    std::fs::create_dir_all(system_slice.path()).unwrap();
    let dir = system_slice.path().to_string_lossy().into_owned();
    let monitor = Monitor::start(&sb, &["--cgroup", &dir]).expect("monitor");
    assert_eq!(
        monitor.started_event()["imds"]["cgroup"]["path"],
        system_slice.rel()
    );
    let inside = run(
        &sb,
        &Place::service("inside"),
        "curl",
        &["-s", "-o", "/dev/null", V4_URL],
    );
    run(
        &sb,
        &Place::Container(0),
        "curl",
        &["-s", "-o", "/dev/null", V4_URL],
    );
    monitor.wait_for_requests(2).expect("events");
    let stopped = stop(monitor);
    let e = request_by_pid(&stopped, inside);
    assert_eq!(e["imds"]["attribution"], "full");
    let outside: Vec<_> = stopped
        .requests()
        .into_iter()
        .filter(|r| r["imds"]["attribution"] == "partial")
        .collect();
    assert_eq!(outside.len(), 1, "{:#?}", stopped.requests());
    assert_eq!(
        outside[0]["imds"]["attribution_reason"],
        "connection_not_seen"
    );
    assert_eq!(outside[0]["imds"]["class"], "v1_get", "still reported");
    assert_eq!(
        stopped.stopped_event()["imds"]["counters"]["attribution_partial"],
        1
    );
}
