//! The daemon run the way deploy/kubernetes/daemonset.yaml runs it, against
//! the same daemon run on the host: attribution (pid, executable, parents,
//! cgroup, container id, pod UID) must be as complete in the pod as outside.
//!
//! The DaemonSet's way, made as a container runtime makes it: a mount
//! namespace whose root holds only the binary (and the shared libraries a
//! debug build links), /proc of the host's PID namespace (hostPID), a
//! read-only sysfs of the host's network namespace (hostNetwork: here the
//! sandbox's EC2 host), the runtime's own cgroup2 at /sys/fs/cgroup (rooted
//! at the pod's cgroup namespace), a few device nodes, and over them exactly
//! the manifest's hostPath mounts, read-only where it says so; a read-only
//! root; a cgroup namespace rooted at a kubelet-shaped pod cgroup of its
//! own; the capability bounding set of the manifest.

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use imds_sandbox::{ContainerSpec, Monitor, Place, Sandbox, Stopped, imds_monitor_bin};
use serde_json::Value;

const V4_URL: &str = "http://169.254.169.254/latest/meta-data/instance-id";

fn manifest_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/daemonset.yaml")
}

/// The DaemonSet's pod spec, as JSON (PyYAML: Debian's python3-yaml).
fn pod_spec() -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = list(yaml.safe_load_all(open(sys.argv[1])))\n\
             ds = [d for d in docs if d and d.get('kind') == 'DaemonSet'][0]\n\
             print(json.dumps(ds['spec']['template']['spec']))",
        ])
        .arg(manifest_path())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "reading {} needs python3 with PyYAML (apt-get install python3-yaml): {}",
        manifest_path().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("pod spec as JSON")
}

/// One hostPath volume mount of the manifest.
#[derive(Debug)]
struct HostPath {
    host: PathBuf,
    mount_path: PathBuf,
    read_only: bool,
}

fn host_paths(pod: &Value) -> Vec<HostPath> {
    let c = &pod["containers"][0];
    c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            let v = pod["volumes"]
                .as_array()
                .expect("volumes")
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap_or_else(|| panic!("no volume for {m}"));
            HostPath {
                host: PathBuf::from(v["hostPath"]["path"].as_str().expect("hostPath only")),
                mount_path: PathBuf::from(m["mountPath"].as_str().unwrap()),
                read_only: m["readOnly"] == true,
            }
        })
        .collect()
}

fn capabilities(pod: &Value) -> Vec<u32> {
    let sc = &pod["containers"][0]["securityContext"]["capabilities"];
    assert_eq!(sc["drop"], serde_json::json!(["ALL"]));
    sc["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| match v.as_str().unwrap() {
            "NET_ADMIN" => 12,
            "SYS_PTRACE" => 19,
            "SYS_ADMIN" => 21,
            "SYS_RESOURCE" => 24,
            "PERFMON" => 38,
            "BPF" => 39,
            other => panic!("capability {other}: add its number here"),
        })
        .collect()
}

/// The container image's root directory (the binary, its libraries, mount
/// points), and hostPath directories created for `DirectoryOrCreate` as the
/// kubelet would; all removed on drop.
struct Image {
    root: PathBuf,
    created: Vec<PathBuf>,
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
        for dir in self.created.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

const DEVICES: [&str; 4] = ["null", "zero", "urandom", "random"];

/// Shared libraries a binary loads (a release from `cargo xtask dist` is
/// static and has none; a debug build links glibc).
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn image(bin: &Path, mounts: &[HostPath]) -> Image {
    let root = std::env::temp_dir().join(format!("imds-ds-image-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let mut image = Image {
        root: root.clone(),
        created: Vec::new(),
    };
    fs::create_dir_all(&root).unwrap();
    fs::copy(bin, root.join("imds-monitor")).unwrap();
    for lib in shared_libraries(bin) {
        let to = root.join(lib.strip_prefix("/").unwrap());
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&lib, &to).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    }
    for d in ["proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for d in DEVICES {
        fs::write(root.join("dev").join(d), b"").unwrap();
    }
    for m in mounts {
        // Under /sys the sysfs mount has the directory.
        if !m.mount_path.starts_with("/sys") {
            fs::create_dir_all(root.join(m.mount_path.strip_prefix("/").unwrap())).unwrap();
        }
        if !m.host.exists() {
            // DirectoryOrCreate: the kubelet makes it (and its parents).
            let mut missing = Vec::new();
            let mut p = m.host.as_path();
            while !p.exists() {
                missing.push(p.to_path_buf());
                p = p.parent().unwrap();
            }
            fs::create_dir_all(&m.host).unwrap();
            image.created.extend(missing.into_iter().rev());
        }
        assert!(
            m.host.is_dir(),
            "hostPath {} is no directory",
            m.host.display()
        );
    }
    image
}

/// Makes `cmd` (already set to join the pod's cgroup and the host's network
/// namespace) enter the DaemonSet's view before it execs `/imds-monitor`.
fn daemonset_view(cmd: &mut Command, image: &Image, mounts: &[HostPath], caps: Vec<u32>) {
    // Everything the child needs, allocated before fork.
    let cs = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let root = &image.root;
    let at = |p: &Path| cs(&root.join(p.strip_prefix("/").unwrap_or(p)));
    let c_root = cs(root);
    let c_proc = at(Path::new("proc"));
    let c_sys = at(Path::new("sys"));
    let c_cgroup = at(Path::new("sys/fs/cgroup"));
    let c_devs: Vec<(CString, CString)> = DEVICES
        .iter()
        .map(|d| {
            (
                cs(&Path::new("/dev").join(d)),
                at(&Path::new("dev").join(d)),
            )
        })
        .collect();
    let c_mounts: Vec<(CString, CString, bool)> = mounts
        .iter()
        .map(|m| (cs(&m.host), at(&m.mount_path), m.read_only))
        .collect();
    let c = |s: &str| CString::new(s).unwrap();
    let (c_proc_t, c_sysfs_t, c_cgroup2_t, c_dot, c_slash) =
        (c("proc"), c("sysfs"), c("cgroup2"), c("."), c("/"));

    let hook = move || -> std::io::Result<()> {
        let fail = |what: &str| {
            let e = std::io::Error::last_os_error();
            Err(std::io::Error::new(e.kind(), format!("{what}: {e}")))
        };
        let null = std::ptr::null::<libc::c_char>();
        let data = std::ptr::null::<libc::c_void>();
        // SAFETY: only system calls between fork and exec, on memory
        // allocated before the fork.
        unsafe {
            // The sandbox's hook ran first: the process is in the pod's
            // cgroup, which becomes its cgroup namespace's root.
            if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWCGROUP) != 0 {
                return fail("unshare");
            }
            if libc::mount(
                null,
                c_slash.as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                data,
            ) != 0
            {
                return fail("make / private");
            }
            let bind = |from: &CString, to: &CString, ro: bool| -> bool {
                if libc::mount(
                    from.as_ptr(),
                    to.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    data,
                ) != 0
                {
                    return false;
                }
                !ro || libc::mount(
                    null,
                    to.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    data,
                ) == 0
            };
            if !bind(&c_root, &c_root, false) {
                return fail("bind the image");
            }
            let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if libc::mount(
                c_proc_t.as_ptr(),
                c_proc.as_ptr(),
                c_proc_t.as_ptr(),
                flags,
                data,
            ) != 0
            {
                return fail("mount proc");
            }
            if libc::mount(
                c_sysfs_t.as_ptr(),
                c_sys.as_ptr(),
                c_sysfs_t.as_ptr(),
                flags | libc::MS_RDONLY,
                data,
            ) != 0
            {
                return fail("mount sysfs");
            }
            // What the runtime mounts there on a cgroup v2 host: the
            // hierarchy as the pod's cgroup namespace sees it.
            if libc::mount(
                c_cgroup2_t.as_ptr(),
                c_cgroup.as_ptr(),
                c_cgroup2_t.as_ptr(),
                flags | libc::MS_RDONLY,
                data,
            ) != 0
            {
                return fail("mount the pod's cgroup2");
            }
            for (from, to) in &c_devs {
                if !bind(from, to, false) {
                    return fail("bind a device");
                }
            }
            for (from, to, ro) in &c_mounts {
                if !bind(from, to, *ro) {
                    return fail("bind a hostPath");
                }
            }
            // readOnlyRootFilesystem.
            if libc::mount(
                null,
                c_root.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                data,
            ) != 0
            {
                return fail("make the root read-only");
            }
            // pivot_root(".", "."), then detach the old root (pivot_root(2)).
            if libc::chdir(c_root.as_ptr()) != 0
                || libc::syscall(libc::SYS_pivot_root, c_dot.as_ptr(), c_dot.as_ptr()) != 0
                || libc::umount2(c_dot.as_ptr(), libc::MNT_DETACH) != 0
                || libc::chdir(c_slash.as_ptr()) != 0
            {
                return fail("pivot_root");
            }
            // The manifest's capabilities: drop ALL, add its list.
            for cap in 0..64u32 {
                if !caps.contains(&cap) {
                    libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0);
                }
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes system calls (see above).
    unsafe {
        cmd.pre_exec(hook);
    }
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
    let pod = pod_spec();
    assert_eq!(
        (pod["hostNetwork"].clone(), pod["hostPID"].clone()),
        (true.into(), true.into()),
        "the test runs the daemon with the host's network and PID namespaces"
    );
    let mounts = host_paths(&pod);
    let caps = capabilities(&pod);
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
    let image = image(&bin, &mounts);
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
        .command(&Place::Host(ds_cgroup.clone()), "/imds-monitor")
        .expect("command");
    daemonset_view(&mut cmd, &image, &mounts, caps.clone());
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
