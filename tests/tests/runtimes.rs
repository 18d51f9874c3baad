//! Real container runtimes: dockerd and containerd (Debian's packages) run
//! inside the sandbox's EC2 host namespace, with images imported from a
//! busybox rootfs (no registry). Events name containers the way their
//! runtime does (what `docker inspect` says; the Kubernetes labels kubelet
//! sets), and the ratchet (suggest, then enforce) keeps a redeployed
//! container's exception while a new IMDSv1 user is dropped.

use std::{path::Path, process::Command, time::Duration};

use imds_sandbox::{Monitor, Place, Sandbox, imds_monitor_bin, runtimes::Runtimes};
use serde_json::Value;

const V1_URL: &str = "http://169.254.169.254/latest/meta-data/instance-id";

/// A container script: wait (so the monitor has resolved the container),
/// one IMDSv1 request, then stay up. busybox's `nc`, not its `wget`: the
/// static busybox's wget crashes in glibc's resolver without NSS libraries.
fn v1_script(wait_s: u32) -> String {
    format!(
        "sleep {wait_s}; \
         if printf 'GET /latest/meta-data/instance-id HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\nConnection: close\\r\\n\\r\\n' \
            | nc -w 5 169.254.169.254 80 | grep -q '200 OK'; \
         then echo v1-ok; else echo v1-failed; fi; sleep 600"
    )
}

fn args<'a>(mode: &'a str, rt: &'a [String], extra: &'a [&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--mode", mode];
    v.extend(rt.iter().map(String::as_str));
    v.extend_from_slice(extra);
    v
}

fn requests_from<'a>(events: &'a [Value], container_id: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"]["action"] == "imds-request" && e["container"]["id"] == container_id)
        .collect()
}

fn wait_logs(rt: &Runtimes, name: &str, want: &str) -> String {
    for _ in 0..100 {
        let logs = rt.docker_ok(&["logs", name]).unwrap_or_default();
        if logs.contains("v1-") {
            return logs;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("container {name} never printed {want}")
}

#[test]
fn events_carry_what_docker_and_containerd_say() {
    let sb = Sandbox::builder().build().expect("sandbox");
    let mut rt = Runtimes::start(&sb).expect("runtimes");
    rt.import_busybox("payments-api:1.4").expect("image");
    rt.copy_to_containerd("payments-api:1.4")
        .expect("ctr import");
    let rt_args = rt.monitor_args();
    let monitor = Monitor::start(&sb, &args("alert", &rt_args, &[])).expect("monitor");

    let docker_id = rt
        .docker_run("pay1", "payments-api:1.4", &v1_script(1))
        .expect("docker run");
    let kube_id = rt
        .kube_run(
            "shop",
            "payments-7d9f8b6c5-x2x4q",
            "api",
            &[("pod-template-hash", "7d9f8b6c5"), ("app", "payments")],
            "payments-api:1.4",
            &v1_script(1),
        )
        .expect("ctr run");
    monitor
        .wait_for(Duration::from_secs(30), |events| {
            [&docker_id, &kube_id]
                .iter()
                .all(|id| !requests_from(events, id).is_empty())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", monitor.stderr()));
    let stopped = monitor.stop().expect("stop");
    assert!(stopped.status.success(), "{}", stopped.stderr);

    if std::env::var_os("IMDS_TEST_DEBUG").is_some() {
        eprintln!("{}", stopped.stderr);
    }
    // Docker: what `docker inspect` reports.
    let inspect: Value =
        serde_json::from_str(&rt.docker_ok(&["inspect", "pay1"]).expect("inspect")).unwrap();
    let inspect = &inspect[0];
    let event = requests_from(&stopped.events, &docker_id)[0];
    assert_eq!(event["container"]["id"], inspect["Id"]);
    assert_eq!(
        event["container"]["name"],
        inspect["Name"].as_str().unwrap().trim_start_matches('/'),
        "{event:#}"
    );
    let (repo, tag) = inspect["Config"]["Image"]
        .as_str()
        .unwrap()
        .split_once(':')
        .unwrap();
    assert_eq!(event["container"]["image"]["name"], repo);
    assert_eq!(event["container"]["image"]["tag"], tag);
    let digests = event["container"]["image"]["hash"]["all"]
        .as_array()
        .unwrap();
    assert!(digests.contains(&inspect["Image"]), "{event:#}");
    assert_eq!(event["container"]["runtime"], "docker");
    assert_eq!(event["imds"]["enrichment"], "done");
    assert_eq!(event["imds"]["workload"]["kind"], "image");
    assert_eq!(event["imds"]["workload"]["id"], "payments-api");

    // containerd (k8s.io): the labels kubelet sets, the pod's owner.
    let event = requests_from(&stopped.events, &kube_id)[0];
    assert_eq!(event["imds"]["enrichment"], "done", "{event:#}");
    assert_eq!(event["orchestrator"]["type"], "kubernetes");
    assert_eq!(event["orchestrator"]["namespace"], "shop");
    assert_eq!(
        event["orchestrator"]["resource"]["name"],
        "payments-7d9f8b6c5-x2x4q"
    );
    assert_eq!(
        event["orchestrator"]["resource"]["parent"]["type"],
        "Deployment"
    );
    assert!(
        event["orchestrator"]["resource"]["id"].is_string(),
        "pod UID"
    );
    assert_eq!(event["container"]["name"], "api");
    assert_eq!(event["container"]["image"]["name"], "payments-api");
    assert_eq!(event["container"]["image"]["tag"], "1.4");
    assert!(
        event["container"]["image"]["hash"]["all"][0]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    assert_eq!(event["imds"]["kubernetes"]["owner"]["kind"], "Deployment");
    assert_eq!(event["imds"]["kubernetes"]["owner"]["name"], "payments");
    assert_eq!(event["imds"]["kubernetes"]["container_name"], "api");
    assert_eq!(event["imds"]["workload"]["kind"], "k8s_owner");
    assert_eq!(event["imds"]["workload"]["id"], "shop/Deployment/payments");
    drop(rt);
}

fn write_events(path: &Path, events: &[Value]) {
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// Alert mode records who uses IMDSv1; `policy suggest` turns that into a
/// policy; enforce mode under it lets the known users through (a
/// redeployed container too: new id, same image repository) and drops a
/// new one; `report --policy` shows the exceptions still used.
#[test]
fn suggest_then_enforce_keeps_a_redeployed_containers_exception() {
    let sb = Sandbox::builder().build().expect("sandbox");
    let rt = Runtimes::start(&sb).expect("runtimes");
    rt.import_busybox("legacy-agent:1.0").expect("image");
    rt.import_busybox("legacy-agent:1.1").expect("image");
    rt.import_busybox("newcomer:1.0").expect("image");
    let rt_args = rt.monitor_args();
    let guard = TempDir::new(&format!("imds-ratchet-{}", sb.id()));
    let dir = guard.0.clone();

    // 1. Alert mode: the legacy container and a cron job use IMDSv1.
    let monitor = Monitor::start(&sb, &args("alert", &rt_args, &[])).expect("monitor");
    let legacy = rt
        .docker_run("legacy", "legacy-agent:1.0", &v1_script(1))
        .expect("run");
    let cron = sb
        .curl(&Place::service("cron"), &["-s", "--max-time", "5", V1_URL])
        .expect("curl");
    assert_eq!(cron.status, Some(200));
    monitor
        .wait_for(Duration::from_secs(30), |events| {
            !requests_from(events, &legacy).is_empty()
        })
        .unwrap_or_else(|e| {
            let requests: Vec<String> = monitor
                .events()
                .iter()
                .filter(|e| e["event"]["action"] == "imds-request")
                .map(|e| {
                    format!(
                        "{} {} {}",
                        e["container"], e["imds"]["cgroup"], e["imds"]["enrichment"]
                    )
                })
                .collect();
            panic!(
                "{e}\nlogs: {:?}\nrequests: {requests:#?}\n{}",
                rt.docker_ok(&["logs", "legacy"]),
                monitor.stderr()
            )
        });
    let seen = monitor.stop().expect("stop");
    let events_file = dir.join("alert.json");
    write_events(&events_file, &seen.events);

    // 2. The suggested policy: one exception each, by stable identity.
    let policy_file = dir.join("policy.toml");
    let out = Command::new(imds_monitor_bin().unwrap())
        .args(["policy", "suggest"])
        .arg(&events_file)
        .arg("-o")
        .arg(&policy_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy = std::fs::read_to_string(&policy_file).unwrap();
    assert!(policy.contains("image = \"legacy-agent\""), "{policy}");
    assert!(
        policy.contains("systemd_unit = \"cron.service\""),
        "{policy}"
    );
    assert!(!policy.contains("container_id"), "{policy}");
    let check = Command::new(imds_monitor_bin().unwrap())
        .args(["policy", "check"])
        .arg(&policy_file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // 3. Enforce it. The legacy container is redeployed (new id, new tag),
    //    after the policy loaded; a new workload appears.
    rt.docker_ok(&["rm", "-f", "legacy"]).expect("rm");
    let policy_arg = policy_file.display().to_string();
    let monitor = Monitor::start(&sb, &args("enforce", &rt_args, &["--policy", &policy_arg]))
        .expect("monitor");
    let redeployed = rt
        .docker_run("legacy2", "legacy-agent:1.1", &v1_script(2))
        .expect("run");
    let newcomer = rt
        .docker_run("newcomer", "newcomer:1.0", &v1_script(2))
        .expect("run");
    assert!(
        wait_logs(&rt, "legacy2", "v1-").contains("v1-ok"),
        "the exception holds"
    );
    assert!(
        wait_logs(&rt, "newcomer", "v1-").contains("v1-failed"),
        "a new IMDSv1 user is dropped"
    );
    let cron = sb
        .curl(&Place::service("cron"), &["-s", "--max-time", "5", V1_URL])
        .expect("curl");
    assert_eq!(cron.status, Some(200), "{cron:?}");
    monitor
        .wait_for(Duration::from_secs(20), |events| {
            !requests_from(events, &newcomer).is_empty()
                && !requests_from(events, &redeployed).is_empty()
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", monitor.stderr()));
    let enforced = monitor.stop().expect("stop");
    assert!(enforced.status.success(), "{}", enforced.stderr);
    let r = requests_from(&enforced.events, &redeployed)[0];
    assert_eq!(r["imds"]["verdict"], "alerted", "{r:#}");
    assert_eq!(r["imds"]["policy"]["rule"], "exception:image-legacy-agent");
    let n = requests_from(&enforced.events, &newcomer)[0];
    assert_eq!(n["imds"]["verdict"], "dropped", "{n:#}");
    assert_eq!(n["container"]["image"]["name"], "newcomer");

    // 4. The burn-down: both exceptions still used.
    let enforce_file = dir.join("enforce.json");
    write_events(&enforce_file, &enforced.events);
    let out = Command::new(imds_monitor_bin().unwrap())
        .arg("report")
        .arg("--policy")
        .arg(&policy_file)
        .arg(&enforce_file)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("Burn-down of"), "{report}");
    assert!(report.contains("2 still used, 0 can go"), "{report}");
    drop(rt);
}

/// A directory removed on drop, also when the test fails.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
