//! The daemon run the way deploy/kubernetes/daemonset.yaml runs it, against
//! the same daemon run on the host: attribution (pid, executable, parents,
//! cgroup, container id, pod UID) must be as complete in the pod as outside.
//!
//! The DaemonSet's way, made as a container runtime makes it (by
//! `imds_sandbox::daemonset`): a mount
//! namespace whose root holds only the binary (and the shared libraries a
//! debug build links), /proc of the host's PID namespace (hostPID), a
//! read-only sysfs of the host's network namespace (hostNetwork: here the
//! sandbox's EC2 host), the runtime's own cgroup2 at /sys/fs/cgroup (rooted
//! at the pod's cgroup namespace), a few device nodes, and over them exactly
//! the manifest's hostPath mounts, read-only where it says so; a read-only
//! root; a cgroup namespace rooted at a kubelet-shaped pod cgroup of its
//! own; the capability bounding set of the manifest.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use imds_sandbox::daemonset::{self, Image, Root};
use imds_sandbox::{ContainerSpec, Monitor, Place, Sandbox, Stopped, imds_monitor_bin};
use serde_json::Value;

const V4_URL: &str = "http://169.254.169.254/latest/meta-data/instance-id";

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

/// The real path of a program on PATH, as /proc/PID/exe shows it.
fn executable(program: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh");
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    fs::canonicalize(&path)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

fn request_by_pid(stopped: &Stopped, pid: u32) -> &Value {
    stopped
        .requests()
        .into_iter()
        .find(|r| r["process"]["pid"] == pid)
        .unwrap_or_else(|| panic!("no request from pid {pid}: {:#?}", stopped.requests()))
}

/// What attribution said about a request, minus the pids (each run has
/// its own requests): the fields that must not differ between the runs.
fn attribution(e: &Value) -> Value {
    let parents: Vec<Value> = e["imds"]["ancestry"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| serde_json::json!([p["name"], p["executable"]]))
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "process.name": e["process"]["name"],
        "process.executable": e["process"]["executable"],
        "process.args": e["process"]["args"],
        "process.user.id": e["process"]["user"]["id"],
        "process.parent.pid": e["process"]["parent"]["pid"],
        "process.parent.executable": e["process"]["parent"]["executable"],
        "imds.ancestry": parents,
        "imds.cgroup": e["imds"]["cgroup"],
        "imds.systemd_unit": e["imds"]["systemd_unit"],
        "imds.workload": e["imds"]["workload"],
        "imds.attribution": e["imds"]["attribution"],
        "imds.attribution_method": e["imds"]["attribution_method"],
        "container.id": e["container"]["id"],
        "container.runtime": e["container"]["runtime"],
        "orchestrator": e["orchestrator"],
    })
}

/// One GET from the pod and one from a host service; the daemon's events
/// for them, checked against what the test knows.
fn requests(sb: &Sandbox, monitor: Monitor, how: &str) -> (Value, Value, Value) {
    let degraded = monitor.started_event()["imds"]["degraded"].clone();
    let curl = ["-s", "-o", "/dev/null", V4_URL];
    let pod_pid = run(sb, &Place::Container(0), "curl", &curl);
    let host = Place::service("legacy-agent");
    let host_pid = run(sb, &host, "curl", &curl);
    monitor
        .wait_for_requests(2)
        .unwrap_or_else(|e| panic!("{how}: {e}\nstderr:\n{}", monitor.stderr()));
    let stopped = monitor.stop().expect("stop");
    assert!(stopped.status.success(), "{how}: {}", stopped.stderr);
    assert!(stopped.garbage.is_empty(), "{how}: {:?}", stopped.garbage);

    let c = sb.container(0);
    let pod = request_by_pid(&stopped, pod_pid);
    let expected = [
        (
            &pod["process"]["executable"],
            Value::from(executable("curl")),
        ),
        (&pod["process"]["parent"]["pid"], std::process::id().into()),
        (&pod["container"]["id"], c.id().into()),
        (&pod["container"]["runtime"], "containerd".into()),
        (&pod["orchestrator"]["type"], "kubernetes".into()),
        (&pod["orchestrator"]["resource"]["type"], "pod".into()),
        (
            &pod["orchestrator"]["resource"]["id"],
            c.pod_uid().unwrap().into(),
        ),
        (&pod["imds"]["workload"]["kind"], "pod".into()),
        (&pod["imds"]["cgroup"]["path"], c.cgroup().rel().into()),
        (
            &pod["imds"]["cgroup"]["id"],
            c.cgroup().id().unwrap().into(),
        ),
        (&pod["imds"]["attribution"], "full".into()),
    ];
    for (got, want) in expected {
        assert_eq!(*got, want, "{how}, pod request: {pod:#}");
    }
    let svc = request_by_pid(&stopped, host_pid);
    let cgroup = sb.cgroup(&host).unwrap();
    let expected = [
        (
            &svc["process"]["executable"],
            Value::from(executable("curl")),
        ),
        (&svc["process"]["parent"]["pid"], std::process::id().into()),
        (&svc["imds"]["cgroup"]["path"], cgroup.rel().into()),
        (&svc["imds"]["cgroup"]["id"], cgroup.id().unwrap().into()),
        (&svc["imds"]["systemd_unit"], "legacy-agent.service".into()),
        (&svc["imds"]["attribution"], "full".into()),
    ];
    for (got, want) in expected {
        assert_eq!(*got, want, "{how}, host request: {svc:#}");
    }
    assert_eq!(
        stopped.stopped_event()["imds"]["counters"]["attribution_partial"],
        0,
        "{how}"
    );
    (attribution(pod), attribution(svc), degraded)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    use std::io::Read as _;
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn ns(pid: u32, kind: &str) -> u64 {
    fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{kind}: {e}"))
        .ino()
}

#[test]
fn attribution_in_the_daemonsets_namespaces_is_as_complete_as_on_the_host() {
    let pod = daemonset::pod_spec(Path::new("python3"));
    assert_eq!(
        (pod["hostNetwork"].clone(), pod["hostPID"].clone()),
        (true.into(), true.into()),
        "the test runs the daemon with the host's network and PID namespaces"
    );
    let mounts = daemonset::host_paths(&pod);
    let caps = daemonset::capabilities(&pod);
    let bin = imds_monitor_bin().expect("imds-monitor binary");
    let sb = Sandbox::builder()
        .hop_limit(2)
        .container(ContainerSpec::kubernetes())
        .build()
        .expect("sandbox");

    // (1) On the host, as a systemd service.
    let on_host = Monitor::start(&sb, &["--mode", "alert"]).expect("monitor on the host");
    let host_run = requests(&sb, on_host, "on the host");

    // (2) As the DaemonSet's pod: its own kubelet-shaped cgroup.
    let image = Image::new(&bin, &mounts);
    let uid = random_hex(16);
    let ds_cgroup = format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}_{}_{}_{}_{}.slice/cri-containerd-{}.scope",
        &uid[..8],
        &uid[8..12],
        &uid[12..16],
        &uid[16..20],
        &uid[20..],
        random_hex(32)
    );
    let mut cmd = sb
        .command(&Place::Host(ds_cgroup.clone()), daemonset::EXE)
        .expect("command");
    daemonset::enter(&mut cmd, &image, &mounts, caps.clone(), Root::ReadOnly);
    let in_pod = Monitor::start_command(cmd, &["--mode", "alert"]).expect("monitor in the pod");

    // It is where the manifest puts it.
    let pid = in_pod.pid();
    let me = std::process::id();
    assert_ne!(ns(pid, "mnt"), ns(me, "mnt"), "own mount namespace");
    assert_ne!(ns(pid, "cgroup"), ns(me, "cgroup"), "own cgroup namespace");
    assert_eq!(ns(pid, "pid"), ns(me, "pid"), "hostPID");
    assert_eq!(
        ns(pid, "net"),
        fs::metadata(sb.host_netns_path()).unwrap().ino(),
        "hostNetwork: the EC2 host's namespace"
    );
    assert_eq!(
        imds_sandbox::cgroup_of_pid(pid).unwrap(),
        sb.cgroup(&Place::Host(ds_cgroup)).unwrap().rel(),
        "in its pod's cgroup"
    );
    // Seen from inside its cgroup namespace, that cgroup is the root.
    let inside = Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--cgroup", "cat"])
        .arg(format!("/proc/{pid}/cgroup"))
        .output()
        .expect("nsenter (util-linux)");
    let inside = String::from_utf8_lossy(&inside.stdout);
    assert!(inside.lines().any(|l| l == "0::/"), "{inside}");
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    for m in &mounts {
        let line = mountinfo
            .lines()
            .rfind(|l| l.split(' ').nth(4) == m.mount_path.to_str())
            .unwrap_or_else(|| panic!("{} not mounted:\n{mountinfo}", m.mount_path.display()));
        let opts = line.split(' ').nth(5).unwrap();
        assert_eq!(opts.split(',').next() == Some("ro"), m.read_only, "{line}");
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // Exactly the manifest's capabilities (the pod's `add`, after `drop: ALL`),
    // of those this machine has: a runtime cannot grant more than it holds
    // (this host's own bounding set may lack CAP_SYS_RESOURCE).
    let own = fs::read_to_string("/proc/self/status").unwrap();
    let own_bounding = own
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let expected = caps.iter().fold(0u64, |mask, cap| mask | 1 << cap) & own_bounding;
    assert_eq!(cap_eff, expected, "{status}");

    let pod_run = requests(&sb, in_pod, "as the DaemonSet");
    assert_eq!(
        pod_run.0, host_run.0,
        "the pod's request, in the pod vs on the host"
    );
    assert_eq!(
        pod_run.1, host_run.1,
        "the host's request, in the pod vs on the host"
    );
    drop(image);
}
