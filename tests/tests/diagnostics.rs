//! The migration failures, reproduced in the sandbox and named by the daemon:
//! 401 for IMDSv1 when v2 is required, a token response killed by hop limit 1
//! on the way to a container and the SDK's fallback to v1, a token PUT
//! through a proxy, credentials over v1; responses joined to requests; the
//! periodic per-workload summary.

use std::time::Duration;

use imds_sandbox::{ContainerSpec, Monitor, Place, Sandbox, Stopped, action};
use serde_json::Value;

const CREDENTIALS: &str = "/latest/meta-data/iam/security-credentials/";

fn stop(monitor: Monitor) -> Stopped {
    let stopped = monitor.stop().expect("stop");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    stopped
}

fn of_action<'a>(stopped: &'a Stopped, name: &str) -> Vec<&'a Value> {
    stopped
        .events
        .iter()
        .filter(|e| action(e) == name)
        .collect()
}

/// Waits until an event with `name` was printed.
fn wait_for_action(monitor: &Monitor, name: &str, n: usize) {
    monitor
        .wait_for(Duration::from_secs(10), |events| {
            events.iter().filter(|e| action(e) == name).count() >= n
        })
        .unwrap_or_else(|e| panic!("waiting for {n} {name}: {e}"));
}

#[test]
fn hop_limit_1_kills_the_token_response_to_a_container_and_the_sdk_falls_back() {
    // An instance with the default hop limit, a pod one hop behind the host.
    let sb = Sandbox::builder()
        .hop_limit(1)
        .containers(&[ContainerSpec::kubernetes()])
        .build()
        .expect("sandbox");
    let monitor = Monitor::start(&sb, &[]).expect("monitor");
    let pod = Place::Container(0);
    // Like botocore: a token PUT with a 1 s timeout, then IMDSv1, in one
    // process (a fallback is one client's story).
    let sdk = sb
        .imds_client(
            &pod,
            &[
                "--v2",
                "--fallback-v1",
                "--timeout-ms",
                "1000",
                "--path",
                CREDENTIALS,
            ],
        )
        .expect("client");
    assert!(
        sdk.success(),
        "the PUT timed out, the v1 read worked: {sdk:?}"
    );
    assert!(sdk.stderr.contains("falling back to IMDSv1"), "{sdk:?}");
    // Another process's IMDSv1 read after it is no second fallback.
    let v1 = sb
        .imds_client(&pod, &["--v1", "--path", CREDENTIALS])
        .expect("client");
    assert!(v1.success(), "{v1:?}");
    wait_for_action(&monitor, "imds-v1-fallback", 1);
    let stopped = stop(monitor);

    let c = sb.container(0);
    let hop = of_action(&stopped, "imds-hop-limit");
    assert_eq!(
        hop.len(),
        1,
        "one PUT answered once (its retransmissions are not new): {hop:#?}"
    );
    let hop = hop[0];
    assert_eq!(hop["event"]["kind"], "alert");
    assert_eq!(hop["imds"]["hop_limit"]["observed_ttl"], 1);
    assert_eq!(hop["imds"]["hop_limit"]["needed"], 2);
    assert!(
        hop["imds"]["diagnostic"]["fix"]
            .as_str()
            .unwrap()
            .contains("--http-put-response-hop-limit 2")
    );
    assert_eq!(hop["orchestrator"]["resource"]["id"], c.pod_uid().unwrap());
    assert_eq!(
        hop["http"]["response"]["status_code"], 200,
        "IMDS did answer"
    );
    assert!(hop["message"].as_str().unwrap().contains("TTL 1"));

    let fallback = of_action(&stopped, "imds-v1-fallback");
    assert_eq!(fallback.len(), 1, "{fallback:#?}");
    let delay = fallback[0]["imds"]["fallback"]["delay_ms"]
        .as_u64()
        .unwrap();
    assert!(
        delay >= 900,
        "the SDK waited about its 1 s timeout: {delay} ms"
    );
    assert_eq!(fallback[0]["url"]["path"], CREDENTIALS);
    assert_eq!(fallback[0]["container"]["id"], c.id());
    assert_eq!(of_action(&stopped, "imds-credentials-v1").len(), 2);

    let responses = of_action(&stopped, "imds-response");
    let put_response = responses
        .iter()
        .find(|r| r["imds"]["class"] == "v2_token_put")
        .expect("the PUT's response is reported");
    assert_eq!(put_response["imds"]["response_ttl"], 1);
}

#[test]
fn host_processes_need_no_second_hop() {
    let sb = Sandbox::builder().hop_limit(1).build().expect("sandbox");
    let monitor = Monitor::start(&sb, &[]).expect("monitor");
    let out = sb
        .imds_client(&Place::service("agent"), &["--v2", "--pipeline", "3"])
        .expect("client");
    assert!(out.success(), "{out:?}");
    wait_for_action(&monitor, "imds-response", 4);
    let stopped = stop(monitor);
    assert!(of_action(&stopped, "imds-hop-limit").is_empty());
    assert!(of_action(&stopped, "imds-v1-fallback").is_empty());
    let responses = of_action(&stopped, "imds-response");
    assert_eq!(
        responses.len(),
        4,
        "a PUT and 3 pipelined GETs: {responses:#?}"
    );
    for r in &responses {
        assert_eq!(r["http"]["response"]["status_code"], 200);
        assert_eq!(r["event"]["outcome"], "success");
        assert_eq!(r["imds"]["systemd_unit"], "agent.service");
    }
    assert_eq!(
        responses
            .iter()
            .filter(|r| r["imds"]["class"] == "v2_get")
            .count(),
        3
    );
}

#[test]
fn v1_answered_401_names_the_broken_workload() {
    let sb = Sandbox::builder()
        .hop_limit(2)
        .tokens_required(true)
        .containers(&[ContainerSpec::docker()])
        .build()
        .expect("sandbox");
    let monitor = Monitor::start(&sb, &["--mode", "alert"]).expect("monitor");
    let script = "curl -s -o /dev/null http://169.254.169.254/latest/meta-data/instance-id; exit 0";
    let out = sb
        .command(&Place::service("cloud-init"), "sh")
        .unwrap()
        .args(["-c", script])
        .status()
        .expect("sh");
    assert!(out.success());
    let curl = sb
        .curl(
            &Place::Container(0),
            &[
                "-H",
                "Metadata-Flavor: Google",
                "http://169.254.169.254/computeMetadata/v1/",
            ],
        )
        .expect("curl");
    assert_eq!(
        curl.status,
        Some(401),
        "v2 required: every token-less request is refused"
    );
    wait_for_action(&monitor, "imds-v1-rejected", 1);
    wait_for_action(&monitor, "imds-response", 2);
    let stopped = stop(monitor);
    let rejected = of_action(&stopped, "imds-v1-rejected");
    assert_eq!(
        rejected.len(),
        1,
        "the GCP probe's 401 is not an IMDSv1 rejection: {rejected:#?}"
    );
    let r = rejected[0];
    assert_eq!(r["event"]["kind"], "alert");
    assert_eq!(r["event"]["outcome"], "failure");
    assert_eq!(r["http"]["response"]["status_code"], 401);
    assert_eq!(r["process"]["name"], "curl");
    assert_eq!(r["imds"]["systemd_unit"], "cloud-init.service");
    assert!(r["message"].as_str().unwrap().contains("broken now"));
    assert_eq!(r["imds"]["diagnostic"]["id"], "v1_rejected");
    let statuses: Vec<_> = of_action(&stopped, "imds-response")
        .iter()
        .map(|r| r["http"]["response"]["status_code"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [401, 401]);
}

#[test]
fn a_token_put_through_a_proxy_is_named() {
    let sb = Sandbox::builder().hop_limit(2).build().expect("sandbox");
    let monitor = Monitor::start(&sb, &[]).expect("monitor");
    let out = sb
        .curl(
            &Place::service("squid"),
            &[
                "-X",
                "PUT",
                "-H",
                "X-aws-ec2-metadata-token-ttl-seconds: 60",
                "-H",
                "X-Forwarded-For: 203.0.113.9",
                "http://169.254.169.254/latest/api/token",
            ],
        )
        .expect("curl");
    assert_eq!(out.status, Some(403));
    wait_for_action(&monitor, "imds-token-proxy", 1);
    let stopped = stop(monitor);
    let proxy = of_action(&stopped, "imds-token-proxy");
    assert_eq!(proxy[0]["imds"]["systemd_unit"], "squid.service");
    assert!(
        proxy[0]["imds"]["diagnostic"]["fix"]
            .as_str()
            .unwrap()
            .contains("NO_PROXY")
    );
}

#[test]
fn summary_counts_per_workload_every_interval() {
    let sb = Sandbox::builder()
        .hop_limit(2)
        .containers(&[ContainerSpec::docker()])
        .build()
        .expect("sandbox");
    // Slower machines (the kernel matrix's emulated guests) need a longer
    // interval to fit the requests of both workloads in one.
    let interval = imds_sandbox::time_scale();
    let monitor =
        Monitor::start(&sb, &["--summary-interval", &format!("{interval}s")]).expect("monitor");
    for _ in 0..2 {
        let out = sb
            .curl(
                &Place::Container(0),
                &["http://169.254.169.254/latest/meta-data/"],
            )
            .unwrap();
        assert_eq!(out.status, Some(200));
    }
    let out = sb.imds_client(&Place::service("agent"), &["--v2"]).unwrap();
    assert!(out.success());
    let events = monitor
        .wait_for(Duration::from_secs(10), |events| {
            events.iter().any(|e| {
                action(e) == "imds-summary"
                    && e["imds"]["summary"]["workloads"]
                        .as_array()
                        .is_some_and(|w| w.len() == 2)
            })
        })
        .expect("a summary with both workloads");
    let stopped = stop(monitor);
    let summary = events
        .iter()
        .find(|e| {
            action(e) == "imds-summary"
                && e["imds"]["summary"]["workloads"].as_array().unwrap().len() == 2
        })
        .unwrap();
    assert_eq!(summary["imds"]["summary"]["interval_seconds"], interval);
    let workloads = summary["imds"]["summary"]["workloads"].as_array().unwrap();
    let find = |kind: &str| {
        workloads
            .iter()
            .find(|w| w["kind"] == kind)
            .unwrap_or_else(|| {
                let requests: Vec<_> = events
                    .iter()
                    .filter(|e| action(e) == "imds-request")
                    .map(|e| (&e["imds"]["cgroup"], &e["imds"]["attribution"], &e["imds"]["attribution_reason"]))
                    .collect();
                let agent = sb.cgroup(&Place::service("agent")).unwrap();
                panic!(
                    "no {kind} in {workloads:#?}\nrequests: {requests:#?}\nagent cgroup {} id {:?}\n{}",
                    agent.rel(),
                    agent.id(),
                    stopped.stderr
                )
            })
    };
    let container = find("container");
    assert_eq!(container["id"], sb.container(0).id());
    assert_eq!(container["v1"], 2);
    assert!(container["last_v1"].is_string());
    let agent = find("unit");
    assert_eq!(agent["id"], "agent.service");
    assert_eq!(
        (agent["v1"].as_u64(), agent["v2"].as_u64()),
        (Some(0), Some(2))
    );
}
