//! The DaemonSet's view of a node, made as a container runtime makes it from
//! deploy/kubernetes/daemonset.yaml: a mount namespace whose root holds only
//! the binary (and the shared libraries a debug build links), /proc of the
//! host's PID namespace (hostPID), a read-only sysfs of the network namespace
//! the process is in (hostNetwork), the runtime's own cgroup2 at
//! /sys/fs/cgroup (rooted at the pod's cgroup namespace), a few device nodes,
//! and over them exactly the manifest's hostPath mounts, read-only where it
//! says so; a read-only root (or a writable one: [`Root`]); a cgroup
//! namespace rooted at the cgroup the process is in when it enters the view;
//! the capability bounding set of the manifest.
//!
//! ```no_run
//! use imds_sandbox::daemonset::{self, Image};
//! use std::path::Path;
//!
//! let pod = daemonset::pod_spec(Path::new("python3"));
//! let mounts = daemonset::host_paths(&pod);
//! let image = Image::new(&imds_sandbox::imds_monitor_bin()?, &mounts);
//! let mut cmd = std::process::Command::new(daemonset::EXE);
//! // (join the pod's cgroup first: a hook added earlier runs earlier)
//! let caps = daemonset::capabilities(&pod);
//! daemonset::enter(&mut cmd, &image, &mounts, caps, daemonset::Root::ReadOnly);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use serde_json::Value;

use crate::artifacts::{text, workspace};

/// Where the binary is in the image (the OCI image's entrypoint).
pub const EXE: &str = "/usr/bin/imds-monitor";

/// The device nodes the runtime binds into the container.
const DEVICES: [&str; 4] = ["null", "zero", "urandom", "random"];

pub fn manifest_path() -> PathBuf {
    workspace().join("deploy/kubernetes/daemonset.yaml")
}

/// The DaemonSet's pod spec, as JSON, read by `python` with PyYAML (Debian's
/// python3-yaml, or a venv that has it).
pub fn pod_spec(python: &Path) -> Value {
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = list(yaml.safe_load_all(open(sys.argv[1])))\n\
             ds = [d for d in docs if d and d.get('kind') == 'DaemonSet'][0]\n\
             print(json.dumps(ds['spec']['template']['spec']))",
        ])
        .arg(manifest_path())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(
        out.status.success(),
        "reading {} needs python3 with PyYAML (apt-get install python3-yaml): {}",
        manifest_path().display(),
        text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("pod spec as JSON")
}

/// One hostPath volume mount of the manifest.
#[derive(Debug)]
pub struct HostPath {
    pub host: PathBuf,
    pub mount_path: PathBuf,
    pub read_only: bool,
    /// The volume's `hostPath.type` (`Directory`, `DirectoryOrCreate`, ...).
    pub kind: String,
}

/// The container's hostPath mounts, in the manifest's order.
pub fn host_paths(pod: &Value) -> Vec<HostPath> {
    pod["containers"][0]["volumeMounts"]
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
                kind: v["hostPath"]["type"].as_str().unwrap_or("").to_owned(),
            }
        })
        .collect()
}

/// The capabilities the container adds after `drop: ["ALL"]`, as numbers.
pub fn capabilities(pod: &Value) -> Vec<u32> {
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

/// The container image's root directory (the binary at [`EXE`], its
/// libraries, the mount points), and the hostPath directories created for
/// `DirectoryOrCreate` as the kubelet would; all removed on drop.
pub struct Image {
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

impl Image {
    /// An image of `bin` (at [`EXE`]) with mount points for `mounts`; makes
    /// the missing `DirectoryOrCreate` host paths.
    pub fn new(bin: &Path, mounts: &[HostPath]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "imds-ds-image-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        let mut image = Image {
            root: root.clone(),
            created: Vec::new(),
        };
        let in_root = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        let exe = in_root(Path::new(EXE));
        fs::create_dir_all(exe.parent().unwrap()).unwrap();
        fs::copy(bin, &exe).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        for lib in shared_libraries(bin) {
            let to = in_root(&lib);
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
                fs::create_dir_all(in_root(&m.mount_path)).unwrap();
            }
            if !m.host.exists() && m.kind == "DirectoryOrCreate" {
                // The kubelet makes it (and its parents).
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
                "hostPath {} ({}) is no directory on this host",
                m.host.display(),
                m.kind
            );
        }
        image
    }
}

/// The image's root as the container sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Root {
    /// `readOnlyRootFilesystem: true`, as the manifest says.
    ReadOnly,
    /// Writable (where a test checks less than the whole manifest).
    Writable,
}

/// Makes `cmd` enter the DaemonSet's view before it execs (its program
/// should be [`EXE`]). Hooks added to `cmd` before run first: join the pod's
/// cgroup and the host's network namespace there.
pub fn enter(cmd: &mut Command, image: &Image, mounts: &[HostPath], caps: Vec<u32>, root: Root) {
    let read_only_root = root == Root::ReadOnly;
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
            // Earlier hooks put the process in the pod's cgroup, which
            // becomes its cgroup namespace's root.
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
            if read_only_root
                && libc::mount(
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

/// A cgroup of its own for a pod outside a [`Sandbox`](crate::Sandbox),
/// `rel` below the cgroup2 mount; removed on drop.
pub struct PodCgroup(crate::Cgroup);

impl PodCgroup {
    pub fn create(rel: &str) -> anyhow::Result<Self> {
        crate::Cgroup::create(rel).map(Self)
    }

    /// Makes `cmd` move into this cgroup before it execs (or before the
    /// hooks added after this one run).
    pub fn join(&self, cmd: &mut Command) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd as _;
        let procs = self.0.open_procs()?;
        let hook = move || -> std::io::Result<()> {
            // SAFETY: write(2) on an fd the closure owns, from a static
            // buffer; async-signal-safe.
            if unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
                let e = std::io::Error::last_os_error();
                return Err(std::io::Error::new(e.kind(), format!("cgroup.procs: {e}")));
            }
            Ok(())
        };
        // SAFETY: the hook only makes an async-signal-safe system call.
        unsafe {
            cmd.pre_exec(hook);
        }
        Ok(())
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(self.0.path());
    }
}
