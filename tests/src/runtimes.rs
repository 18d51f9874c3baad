//! Real container runtimes in a sandbox: containerd and dockerd from Debian's
//! packages, started inside the sandbox's EC2 host network namespace with
//! their own data dirs, sockets and bridge, and images imported from a local
//! busybox rootfs (no registry). Everything is removed on drop, also when a
//! test fails: containers, daemons, their mounts, the cgroup directories they
//! leave in every hierarchy.
//!
//! Docker's containers run with `--cgroup-parent <sandbox root>/docker` (the
//! cgroupfs driver names them `<parent>/<id>`), containerd's (`ctr run`) get
//! kubelet-like cgroups `<sandbox root>/kubepods/besteffort/pod<uid>/<id>`, so
//! the sandbox's cgroup teardown covers them in cgroup v2 too.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{NETNS_PREFIX, NetNs, Sandbox, util::random_hex};

/// Docker's bridge in the host namespace (TEST-NET-3; only inside it).
pub const DOCKER_BRIDGE: &str = "dkr0";
pub const DOCKER_BRIDGE_V4: &str = "203.0.113.1";
/// Where pods made with `ctr` get their addresses.
const POD_V4_BASE: u8 = 200;

/// containerd and dockerd running for one sandbox.
pub struct Runtimes {
    dir: PathBuf,
    host: NetNs,
    sandbox_root: String,
    containerd: Option<Child>,
    dockerd: Option<Child>,
    pod_netns: Vec<NetNs>,
}

impl std::fmt::Debug for Runtimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtimes").field("dir", &self.dir).finish()
    }
}

/// Installs docker.io, containerd and runc from Debian's packages when missing.
pub fn ensure_installed() -> Result<()> {
    let have = |bin: &str| {
        ["/usr/sbin", "/usr/bin"]
            .iter()
            .any(|d| Path::new(d).join(bin).exists())
    };
    if have("dockerd") && have("containerd") && have("runc") && have("ctr") {
        return Ok(());
    }
    let status = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "docker.io",
            "containerd",
            "runc",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install docker.io containerd runc failed");
    }
    Ok(())
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} not ready after {timeout:?}")
}

fn check(output: Output, what: &str) -> Result<String> {
    if !output.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

impl Runtimes {
    /// Starts containerd, then dockerd on it, in the sandbox's host namespace.
    pub fn start(sandbox: &Sandbox) -> Result<Self> {
        ensure_installed()?;
        let dir = PathBuf::from(format!("/tmp/imds-runtimes-{}", sandbox.id()));
        fs::create_dir_all(&dir)?;
        let host = sandbox.host_netns().clone();
        let mut rt = Self {
            dir: dir.clone(),
            host: host.clone(),
            sandbox_root: sandbox
                .root_cgroup()
                .rel()
                .trim_start_matches('/')
                .to_owned(),
            containerd: None,
            dockerd: None,
            pod_netns: Vec::new(),
        };
        let d = dir.display();
        fs::write(
            dir.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{d}/containerd/root\"\nstate = \"{d}/containerd/state\"\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
                 [debug]\n  address = \"\"\n"
            ),
        )?;
        let log = |name: &str| fs::File::create(dir.join(name));
        let mut containerd = host.command("containerd")?;
        containerd
            .arg("--config")
            .arg(dir.join("containerd.toml"))
            .stdin(Stdio::null())
            .stdout(log("containerd.log")?)
            .stderr(log("containerd.err")?);
        rt.containerd = Some(containerd.spawn().context("starting containerd")?);
        wait_for("containerd", Duration::from_secs(20), || {
            rt.containerd_socket().exists()
        })?;

        // Docker's own bridge; its traffic leaves masqueraded, like docker0's.
        host.ip(&["link", "add", DOCKER_BRIDGE, "type", "bridge"])?;
        host.ip(&[
            "addr",
            "add",
            &format!("{DOCKER_BRIDGE_V4}/24"),
            "dev",
            DOCKER_BRIDGE,
        ])?;
        host.ip(&["link", "set", DOCKER_BRIDGE, "up"])?;
        host.nft(
            "table ip imds_sandbox_docker {
                chain postrouting {
                    type nat hook postrouting priority srcnat; policy accept;
                    oifname \"eth0\" ip saddr 203.0.113.0/24 masquerade
                }
            }",
        )?;
        fs::write(
            dir.join("daemon.json"),
            format!("{{\"deprecated-key-path\": \"{d}/key.json\"}}"),
        )?;
        let mut dockerd = host.command("dockerd")?;
        dockerd
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .arg("--data-root")
            .arg(dir.join("docker"))
            .arg("--exec-root")
            .arg(dir.join("dexec"))
            .arg("-H")
            .arg(format!("unix://{}", rt.docker_socket().display()))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--containerd")
            .arg(rt.containerd_socket())
            .args(["--storage-driver", "overlay2", "--bridge", DOCKER_BRIDGE])
            .args(["--iptables=false", "--ip-masq=false"])
            .arg("--cgroup-parent")
            .arg(format!("/{}/docker", rt.sandbox_root))
            .stdin(Stdio::null())
            .stdout(log("dockerd.log")?)
            .stderr(log("dockerd.err")?);
        rt.dockerd = Some(dockerd.spawn().context("starting dockerd")?);
        wait_for("dockerd", Duration::from_secs(30), || {
            rt.docker(&["version"]).is_ok_and(|o| o.status.success())
        })?;
        Ok(rt)
    }

    pub fn docker_socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The monitor's options that point it at these runtimes.
    pub fn monitor_args(&self) -> Vec<String> {
        vec![
            "--docker-socket".into(),
            self.docker_socket().display().to_string(),
            "--containerd-socket".into(),
            self.containerd_socket().display().to_string(),
            "--crio-socket".into(),
            self.dir.join("crio.sock").display().to_string(),
        ]
    }

    /// The docker CLI against this dockerd.
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        Command::new("docker")
            .args(args)
            .env(
                "DOCKER_HOST",
                format!("unix://{}", self.docker_socket().display()),
            )
            .stdin(Stdio::null())
            .output()
            .context("running docker")
    }

    /// `docker ARGS`, its stdout; an error when it fails.
    pub fn docker_ok(&self, args: &[&str]) -> Result<String> {
        check(self.docker(args)?, &format!("docker {}", args.join(" ")))
    }

    /// `ctr -n k8s.io ARGS`, its stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ctr")
            .arg("-a")
            .arg(self.containerd_socket())
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running ctr")?;
        check(out, &format!("ctr {}", args.join(" ")))
    }

    /// Builds `name:tag` in Docker from a busybox-static rootfs (no registry).
    pub fn import_busybox(&self, reference: &str) -> Result<()> {
        let rootfs = self.dir.join("rootfs");
        let tar = self.dir.join("rootfs.tar");
        if !tar.exists() {
            fs::create_dir_all(rootfs.join("bin"))?;
            let busybox = ["/usr/bin/busybox", "/bin/busybox"]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .context("busybox-static is not installed (apt-get install busybox-static)")?;
            fs::copy(busybox, rootfs.join("bin/busybox"))?;
            for applet in [
                "sh", "wget", "nc", "printf", "sleep", "echo", "cat", "true", "grep",
            ] {
                std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
            }
            let status = Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tar)
                .arg(".")
                .status()?;
            if !status.success() {
                bail!("tar of the rootfs failed");
            }
        }
        self.docker_ok(&[
            "import",
            "--change",
            "CMD [\"/bin/sh\"]",
            &tar.display().to_string(),
            reference,
        ])?;
        Ok(())
    }

    /// Copies a Docker image into containerd's `k8s.io` namespace
    /// (`docker save`, `ctr images import`): it is then
    /// `docker.io/library/<reference>` there.
    pub fn copy_to_containerd(&self, reference: &str) -> Result<()> {
        let archive = self.dir.join("image.tar");
        self.docker_ok(&["save", "-o", &archive.display().to_string(), reference])?;
        self.ctr(&["images", "import", &archive.display().to_string()])?;
        Ok(())
    }

    /// `docker run -d --name NAME IMAGE sh -c SCRIPT`: the container's id.
    pub fn docker_run(&self, name: &str, image: &str, script: &str) -> Result<String> {
        self.docker_ok(&["run", "-d", "--name", name, image, "sh", "-c", script])
    }

    /// Runs a container the way kubelet has containerd run one: in the
    /// `k8s.io` namespace, labelled with the pod's namespace, name, uid and
    /// the container's name, in the pod's cgroup, beside a sandbox container
    /// labelled with the pod's labels (`pod_labels`). Its network is a
    /// namespace of its own on Docker's bridge. Returns the container id.
    pub fn kube_run(
        &mut self,
        namespace: &str,
        pod: &str,
        container: &str,
        pod_labels: &[(&str, &str)],
        image: &str,
        script: &str,
    ) -> Result<String> {
        let index = self.pod_netns.len();
        let netns = NetNs::create(&format!("{NETNS_PREFIX}{}-pod{index}", self.dir_tag()))?;
        self.pod_netns.push(netns.clone());
        let ip = format!("203.0.113.{}", usize::from(POD_V4_BASE) + index);
        let (host_end, pod_end) = (format!("kpod{index}"), format!("kpod{index}p"));
        self.host.ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", &pod_end,
        ])?;
        self.host
            .ip(&["link", "set", &pod_end, "netns", netns.name()])?;
        self.host
            .ip(&["link", "set", &host_end, "master", DOCKER_BRIDGE, "up"])?;
        netns.ip_batch(&[
            format!("link set {pod_end} name eth0"),
            format!("addr add {ip}/24 dev eth0"),
            "link set eth0 up".into(),
            "link set lo up".into(),
            format!("route add default via {DOCKER_BRIDGE_V4}"),
        ])?;
        let netns_path = netns.path().display().to_string();
        let pod_uid = uuid_like();
        let cgroup_pod = format!("/{}/kubepods/besteffort/pod{pod_uid}", self.sandbox_root);
        let sandbox_id = random_hex(32);
        let id = random_hex(32);
        let mut common = vec![
            (
                "io.kubernetes.pod.namespace".to_owned(),
                namespace.to_owned(),
            ),
            ("io.kubernetes.pod.name".to_owned(), pod.to_owned()),
            ("io.kubernetes.pod.uid".to_owned(), pod_uid.clone()),
        ];
        let label_args = |labels: &[(String, String)]| -> Vec<String> {
            labels
                .iter()
                .flat_map(|(k, v)| ["--label".to_owned(), format!("{k}={v}")])
                .collect()
        };
        let with_ns = format!("network:{netns_path}");
        let image = format!("docker.io/library/{image}");
        let run = |id: &str, labels: Vec<(String, String)>, script: &str| -> Result<()> {
            let mut args: Vec<String> = vec!["run".into(), "-d".into()];
            args.extend(label_args(&labels));
            args.extend([
                "--with-ns".into(),
                with_ns.clone(),
                "--cgroup".into(),
                format!("{cgroup_pod}/{id}"),
                image.clone(),
                id.to_owned(),
                "sh".into(),
                "-c".into(),
                script.to_owned(),
            ]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.ctr(&args).map(drop)
        };
        // The pod's sandbox (kubelet's "pause"): the pod's labels.
        let mut sandbox_labels = common.clone();
        sandbox_labels.push(("io.cri-containerd.kind".into(), "sandbox".into()));
        sandbox_labels.extend(
            pod_labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        run(&sandbox_id, sandbox_labels, "sleep 600")?;
        common.push(("io.cri-containerd.kind".into(), "container".into()));
        common.push(("io.kubernetes.container.name".into(), container.into()));
        run(&id, common, script)?;
        Ok(id)
    }

    fn dir_tag(&self) -> String {
        self.dir
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("imds-runtimes-")
                    .to_owned()
            })
            .unwrap_or_default()
    }

    fn teardown(&mut self) {
        if self.dockerd.is_some()
            && let Ok(ids) = self.docker_ok(&["ps", "-aq"])
        {
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        if self.containerd.is_some()
            && let Ok(list) = self.ctr(&["containers", "ls", "-q"])
        {
            for id in list.split_whitespace() {
                let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            }
            thread::sleep(Duration::from_millis(300));
            for id in list.split_whitespace() {
                let _ = self.ctr(&["tasks", "delete", "-f", id]);
                let _ = self.ctr(&["containers", "delete", id]);
            }
        }
        for child in [self.dockerd.take(), self.containerd.take()]
            .into_iter()
            .flatten()
        {
            stop(child);
        }
        // Mounts the daemons may leave (overlays, shm, netns files).
        if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
            let prefix = self.dir.display().to_string();
            let mut targets: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|t| t.starts_with(&prefix))
                .collect();
            targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
            for t in targets {
                let _ = Command::new("umount").arg("-l").arg(t).status();
            }
        }
        for ns in self.pod_netns.drain(..) {
            let _ = ns.delete();
        }
        let _ = self.host.ip(&["link", "del", DOCKER_BRIDGE]);
        let _ = self.host.nft("delete table ip imds_sandbox_docker");
        // The cgroup v1 hierarchies (runc on a hybrid host makes the
        // container's cgroup in each); v2 is the sandbox's to remove.
        if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let dir = e.path().join(&self.sandbox_root);
                if e.file_name() != "unified" && dir.is_dir() {
                    remove_tree(&dir);
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        // Directories containerd's shims and dockerd make in /run: only
        // empty ones are removed (a runtime of the machine's keeps its own).
        for dir in ["/run/containerd", "/run/docker"] {
            remove_tree(Path::new(dir));
        }
    }
}

impl Drop for Runtimes {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// SIGTERM, then SIGKILL after 10 s.
fn stop(mut child: Child) {
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

fn uuid_like() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
