//! deploy/kubernetes/daemonset.yaml against the Kubernetes schemas
//! (`kubernetes-validate --strict`, from PyPI, in a venv under target/), its
//! host access checked field by field, and the OCI image of `cargo xtask
//! dist` (target/dist/oci): content-addressed, FROM scratch, one layer with
//! the static binary of each architecture.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use imds_sandbox::artifacts::{target_dir, text, workspace};
use imds_sandbox::daemonset::{self, Image, PodCgroup, Root, manifest_path};
use serde_json::Value;

/// The validator and the Kubernetes versions it checks against: the newest
/// it knows and the oldest EKS still supports.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const VERSIONS: &[&str] = &["1.37.0", "1.30.0"];

/// target/k8s-venv with kubernetes-validate (and PyYAML, its dependency),
/// created on first use (a few seconds from PyPI).
fn venv() -> PathBuf {
    // Tests run in parallel: one creates it, the others wait.
    static CREATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = CREATE.lock().unwrap_or_else(|e| e.into_inner());
    let venv = target_dir().join("k8s-venv");
    let validate = venv.join("bin/kubernetes-validate");
    if !validate.exists() {
        let out = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .expect("python3 (apt-get install python3-venv)");
        assert!(out.status.success(), "python3 -m venv: {}", text(&out));
        let out = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", KUBERNETES_VALIDATE])
            .output()
            .expect("pip");
        assert!(out.status.success(), "pip install: {}", text(&out));
    }
    venv
}

fn validate(venv: &Path, file: &Path, version: &str) -> Output {
    Command::new(venv.join("bin/kubernetes-validate"))
        .args(["--strict", "--no-warn", "-k", version])
        .arg(file)
        .output()
        .expect("kubernetes-validate")
}

/// The manifest's documents as JSON (PyYAML from the venv).
fn documents(venv: &Path) -> Vec<Value> {
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(manifest_path())
        .output()
        .expect("python");
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("manifest as JSON")
}

#[test]
fn daemonset_validates_against_the_kubernetes_schemas() {
    let venv = venv();
    for version in VERSIONS {
        let out = validate(&venv, &manifest_path(), version);
        assert!(out.status.success(), "Kubernetes {version}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("daemonset/imds-monitor"), "{stdout}");
    }
    // The validator does reject a misspelt field (strict mode works).
    let bad = std::env::temp_dir().join(format!("imds-daemonset-{}.yaml", std::process::id()));
    let manifest = fs::read_to_string(manifest_path()).unwrap();
    fs::write(&bad, manifest.replace("hostPID: true", "hostPId: true")).unwrap();
    let out = validate(&venv, &bad, VERSIONS[0]);
    fs::remove_file(&bad).unwrap();
    assert!(
        !out.status.success(),
        "a misspelt field passed: {}",
        text(&out)
    );
}

#[test]
fn daemonset_has_the_host_access_it_needs_and_no_more() {
    let docs = documents(&venv());
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    // Every node: one toleration matching every taint.
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{ "operator": "Exists" }])
    );

    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(
        c["image"],
        format!("imds-monitor:{}", env!("CARGO_PKG_VERSION")),
        "the tag `cargo xtask dist` writes"
    );
    assert_eq!(c["args"][0], "run");
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    // The same capabilities as the systemd unit's bounding set.
    let added: BTreeSet<String> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("CAP_{}", v.as_str().unwrap()))
        .collect();
    let unit = fs::read_to_string(workspace().join("packaging/imds-monitor.service")).unwrap();
    let unit_caps: BTreeSet<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect();
    // The same capabilities, except that the unit raises RLIMIT_MEMLOCK
    // itself (LimitMEMLOCK=infinity; kernels before 5.11 charge BPF maps to
    // it) where a pod can only do so with CAP_SYS_RESOURCE.
    assert!(unit.lines().any(|l| l == "LimitMEMLOCK=infinity"), "{unit}");
    let mut unit_and_memlock = unit_caps.clone();
    unit_and_memlock.insert("CAP_SYS_RESOURCE".to_owned());
    assert_eq!(added, unit_and_memlock);

    // Host paths: each mounted where the daemon looks, the read-only ones so.
    let volumes: Vec<(String, String)> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                v["hostPath"]["path"]
                    .as_str()
                    .expect("hostPath only")
                    .to_owned(),
            )
        })
        .collect();
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |host: &str| -> (&str, bool) {
        let (name, _) = volumes
            .iter()
            .find(|(_, p)| p == host)
            .unwrap_or_else(|| panic!("no hostPath volume for {host}"));
        let m = mounts
            .iter()
            .find(|m| m["name"] == name.as_str())
            .unwrap_or_else(|| panic!("volume {name} not mounted"));
        (m["mountPath"].as_str().unwrap(), m["readOnly"] == true)
    };
    assert_eq!(
        mount("/sys/fs/bpf"),
        ("/sys/fs/bpf", false),
        "pins are written"
    );
    assert_eq!(mount("/sys/fs/cgroup"), ("/sys/fs/cgroup", true));
    assert_eq!(mount("/sys/kernel/tracing"), ("/sys/kernel/tracing", true));
    assert_eq!(mount("/run/containerd"), ("/run/containerd", true));
    assert_eq!(mount("/var/run/crio"), ("/var/run/crio", true));
    assert_eq!(volumes.len(), mounts.len());
}

/// sha256 of a file, by sha256sum.
fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
#[ignore = "needs the artifacts of `cargo xtask dist` (run: cargo xtask dist --test)"]
fn oci_image_is_from_scratch_with_the_static_binaries() {
    let dist = target_dir().join("dist");
    let layout = dist.join("oci");
    if !layout.join("index.json").is_file() {
        eprintln!(
            "SKIPPED: no OCI image layout at {}; `cargo xtask dist` writes it",
            layout.display()
        );
        return;
    }
    let blob = |desc: &Value| -> PathBuf {
        let hex = desc["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let path = layout.join("blobs/sha256").join(hex);
        assert_eq!(sha256(&path), hex, "{}", path.display());
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            desc["size"].as_u64().unwrap()
        );
        path
    };
    let json = |p: &Path| -> Value { serde_json::from_slice(&fs::read(p).unwrap()).unwrap() };
    assert_eq!(
        json(&layout.join("oci-layout")),
        serde_json::json!({ "imageLayoutVersion": "1.0.0" })
    );
    // index.json names one multi-platform image index by tag.
    let index = json(&layout.join("index.json"));
    let top = index["manifests"].as_array().unwrap();
    assert_eq!(top.len(), 1);
    assert_eq!(
        top[0]["annotations"]["org.opencontainers.image.ref.name"],
        env!("CARGO_PKG_VERSION")
    );
    let image_index = json(&blob(&top[0]));
    let manifests = image_index["manifests"].as_array().unwrap();
    assert!(!manifests.is_empty());
    for m in manifests {
        let arch = m["platform"]["architecture"].as_str().unwrap();
        let manifest = json(&blob(m));
        let config = json(&blob(&manifest["config"]));
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["os"], "linux");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/usr/bin/imds-monitor"])
        );
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "FROM scratch: one layer");
        let layer = blob(&layers[0]);
        let x = std::env::temp_dir().join(format!("imds-oci-{}-{arch}", std::process::id()));
        fs::create_dir_all(&x).unwrap();
        let out = Command::new("tar")
            .arg("-xf")
            .arg(&layer)
            .arg("-C")
            .arg(&x)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let listing = Command::new("tar").arg("-tf").arg(&layer).output().unwrap();
        let files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .filter(|l| !l.ends_with('/'))
            .map(str::to_owned)
            .collect();
        assert_eq!(files, ["usr/bin/imds-monitor"], "nothing but the binary");
        let machine = if arch == "amd64" { "x86_64" } else { "aarch64" };
        let bin = dist.join(format!("imds-monitor-{machine}-linux-musl"));
        assert_eq!(
            fs::read(x.join("usr/bin/imds-monitor")).unwrap(),
            fs::read(&bin).unwrap(),
            "the layer holds {}",
            bin.display()
        );
        fs::remove_dir_all(&x).unwrap();
    }
    // skopeo (containers/image, what podman, CRI-O and `skopeo copy` to a
    // registry use) reads the archive by tag and checks every digest.
    if Command::new("skopeo").arg("--version").output().is_ok() {
        let version = env!("CARGO_PKG_VERSION");
        let copy = std::env::temp_dir().join(format!("imds-skopeo-{}", std::process::id()));
        let out = Command::new("skopeo")
            .args(["copy", "--all", "--quiet"])
            .arg(format!(
                "oci-archive:{}:{version}",
                dist.join("imds-monitor-oci.tar").display()
            ))
            .arg(format!("dir:{}", copy.display()))
            .output()
            .unwrap();
        let _ = fs::remove_dir_all(&copy);
        assert!(out.status.success(), "skopeo copy: {}", text(&out));
        for m in manifests {
            let arch = m["platform"]["architecture"].as_str().unwrap();
            let out = Command::new("skopeo")
                .args(["--override-arch", arch, "inspect"])
                .arg(format!("oci:{}:{version}", layout.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "skopeo inspect: {}", text(&out));
            let inspected: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(inspected["Architecture"], arch);
        }
    } else {
        eprintln!("skopeo not installed (apt-get install skopeo): archive not read by it");
    }
    // The archive holds the same layout.
    let out = Command::new("tar")
        .arg("-tf")
        .arg(dist.join("imds-monitor-oci.tar"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.lines().any(|l| l == "index.json"), "{listing}");
}

/// The image runs: imported from the OCI archive into containerd (the
/// runtime EKS uses), `ctr run` of its binary, on a containerd that the test
/// starts in a network namespace of its own (tests/src/runtimes.rs).
#[test]
#[ignore = "needs the artifacts of `cargo xtask dist` (run: cargo xtask dist --test)"]
fn oci_image_runs_in_containerd() {
    let archive = target_dir().join("dist/imds-monitor-oci.tar");
    if !archive.is_file() {
        eprintln!(
            "SKIPPED: {} is absent; `cargo xtask dist` writes it",
            archive.display()
        );
        return;
    }
    if !imds_sandbox::is_root() {
        eprintln!("SKIPPED: starting containerd needs root");
        return;
    }
    let sb = imds_sandbox::Sandbox::builder().build().expect("sandbox");
    let rt = imds_sandbox::runtimes::Runtimes::start(&sb).expect("runtimes");
    let imported = rt
        .ctr(&["images", "import", &archive.display().to_string()])
        .expect("ctr images import");
    let version = env!("CARGO_PKG_VERSION");
    let reference = format!("docker.io/library/imds-monitor:{version}");
    let images = rt.ctr(&["images", "ls", "-q"]).expect("ctr images ls");
    assert!(
        images.lines().any(|l| l == reference),
        "{reference} not in {images} ({imported})"
    );
    let out = rt
        .ctr(&[
            "run",
            "--rm",
            &reference,
            &format!("imds-dist-{}", std::process::id()),
            "/usr/bin/imds-monitor",
            "--version",
        ])
        .expect("ctr run");
    assert_eq!(out.trim(), format!("imds-monitor {version}"));
}

/// The DaemonSet's view of a node, made as a container runtime makes it
/// (`imds_sandbox::daemonset`: only the binary, hostPID, a read-only sysfs,
/// exactly the manifest's hostPath mounts, the capability bounding set of
/// the manifest), in a cgroup namespace rooted at a cgroup of its own. There, `imds-monitor check` must pass: it loads and verifies
/// every program, finds bpffs, cgroup2, tracefs and the route to IMDS
/// (nothing is sent and nothing attached).
#[test]
#[ignore = "needs the artifacts of `cargo xtask dist` (run: cargo xtask dist --test)"]
fn daemonset_mounts_and_capabilities_suffice_for_check() {
    let bin = target_dir().join("dist/imds-monitor-x86_64-linux-musl");
    if !bin.is_file() {
        eprintln!(
            "SKIPPED: {} is absent; `cargo xtask dist` builds it",
            bin.display()
        );
        return;
    }
    if !imds_sandbox::is_root() {
        eprintln!("SKIPPED: namespaces need root");
        return;
    }
    let pod = daemonset::pod_spec(&venv().join("bin/python"));
    assert_eq!(
        (pod["hostNetwork"].clone(), pod["hostPID"].clone()),
        (true.into(), true.into())
    );
    let mounts = daemonset::host_paths(&pod);
    let caps = daemonset::capabilities(&pod);
    let image = Image::new(&bin, &mounts);
    // The pod's cgroup, which its cgroup namespace is rooted at.
    let cgroup = PodCgroup::create(&format!("imds-ds-test-{}", std::process::id()))
        .expect("the pod's cgroup");
    let mut cmd = Command::new(daemonset::EXE);
    cmd.arg("check");
    cgroup.join(&mut cmd).expect("the pod's cgroup.procs");
    // readOnlyRootFilesystem, as the manifest says.
    daemonset::enter(&mut cmd, &image, &mounts, caps, Root::ReadOnly);
    let out = cmd.output();
    drop(cgroup);
    drop(image);
    let out = out.expect("run check in the DaemonSet's view");
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}");
    assert!(out.status.success(), "{}", text(&out));
    // It saw the manifest's capabilities, not root's full set.
    let privileges = report.lines().find(|l| l.contains("privileges")).unwrap();
    assert!(!privileges.contains("000001ff"), "{privileges}");
    assert!(report.contains("cgroup2 at /sys/fs/cgroup"), "{report}");
    assert!(
        report.contains("bpffs             mounted at /sys/fs/bpf"),
        "{report}"
    );
}
