//! The kernel classifier end to end: real programs attached in the sandbox's
//! EC2 host namespace, real TCP requests from host and container workloads,
//! assertions on the JSON the daemon prints and on what reached the mock IMDS.

use std::collections::BTreeMap;

use imds_sandbox::{ContainerSpec, Monitor, Place, Sandbox, Stopped};
use serde_json::Value;

const V4: &str = "169.254.169.254";
const V6: &str = "[fd00:ec2::254]";

fn sandbox(containers: &[ContainerSpec]) -> Sandbox {
    Sandbox::builder()
        .hop_limit(2)
        .containers(containers)
        .build()
        .expect("sandbox")
}

/// Runs curl and asserts the HTTP status it got.
fn curl_ok(sb: &Sandbox, place: &Place, args: &[&str], status: u16) {
    let out = sb.curl(place, args).expect("curl");
    assert_eq!(out.status, Some(status), "curl {args:?}: {out:?}");
}

fn url(host: &str, path: &str) -> String {
    format!("http://{host}{path}")
}

/// A token fetched with curl from `place`.
fn token(sb: &Sandbox, place: &Place, host: &str) -> String {
    let out = sb
        .curl(
            place,
            &[
                "-X",
                "PUT",
                "-H",
                "X-aws-ec2-metadata-token-ttl-seconds: 300",
                &url(host, "/latest/api/token"),
            ],
        )
        .expect("curl token");
    assert_eq!(out.status, Some(200), "{out:?}");
    out.body
}

fn classes(requests: &[&Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in requests {
        *m.entry(r["imds"]["class"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    m
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn stop(monitor: Monitor) -> Stopped {
    let stopped = monitor.stop().expect("stop");
    assert!(
        stopped.status.success(),
        "exit status {:?}\n{}",
        stopped.status,
        stopped.stderr
    );
    assert!(
        stopped.garbage.is_empty(),
        "non-JSON output: {:?}",
        stopped.garbage
    );
    assert_eq!(
        stopped.stopped_event()["event"]["action"],
        "monitor-stopped",
        "last line"
    );
    stopped
}

#[test]
fn host_requests_over_ipv4_and_ipv6_are_classified_once_each() {
    let sb = sandbox(&[]);
    let monitor = Monitor::start(&sb, &["--mode", "alert"]).expect("monitor");
    let started = monitor.started_event();
    assert_eq!(
        started["imds"]["interfaces"],
        serde_json::json!(["eth0"]),
        "found by route"
    );
    assert_eq!(started["imds"]["mode"], "alert");

    let place = Place::service("legacy-agent");
    for host in [V4, V6] {
        curl_ok(
            &sb,
            &place,
            &[&url(host, "/latest/meta-data/instance-id")],
            200,
        );
        let token = token(&sb, &place, host);
        let header = format!("X-aws-ec2-metadata-token: {token}");
        curl_ok(
            &sb,
            &place,
            &[
                "-H",
                &header,
                &url(host, "/latest/meta-data/iam/security-credentials/"),
            ],
            200,
        );
        curl_ok(
            &sb,
            &place,
            &["-I", "-H", &header, &url(host, "/latest/meta-data/")],
            200,
        );
    }
    let requests = monitor.wait_for_requests(8).expect("8 events");
    let stopped = stop(monitor);
    let reqs = stopped.requests();
    assert_eq!(reqs.len(), 8, "exactly once each: {reqs:#?}");
    assert_eq!(requests.len(), 8);
    assert_eq!(sb.imds_log().len(), 8, "the mock saw the same requests");
    assert_eq!(
        classes(&reqs),
        counts(&[("v1_get", 2), ("v2_token_put", 2), ("v2_get", 4)])
    );

    for net in ["ipv4", "ipv6"] {
        let of_net: Vec<_> = reqs
            .iter()
            .filter(|r| r["network"]["type"] == net)
            .collect();
        assert_eq!(of_net.len(), 4, "{net}");
        let v1 = of_net
            .iter()
            .find(|r| r["imds"]["class"] == "v1_get")
            .unwrap();
        assert_eq!(v1["event"]["kind"], "alert");
        assert_eq!(v1["imds"]["verdict"], "alerted");
        assert_eq!(v1["imds"]["version"], "v1");
        assert_eq!(v1["http"]["request"]["method"], "GET");
        assert_eq!(v1["url"]["path"], "/latest/meta-data/instance-id");
        assert_eq!(v1["imds"]["path_category"], "metadata");
        assert_eq!(v1["destination"]["port"], 80);
        assert_eq!(v1["network"]["transport"], "tcp");
        assert_eq!(v1["imds"]["interface"], "eth0");
        let put = of_net
            .iter()
            .find(|r| r["imds"]["class"] == "v2_token_put")
            .unwrap();
        assert_eq!(put["imds"]["token_ttl_seconds"], 300);
        assert_eq!(put["imds"]["path_category"], "token");
        assert_eq!(put["event"]["kind"], "event");
        let head = of_net
            .iter()
            .find(|r| r["http"]["request"]["method"] == "HEAD")
            .unwrap();
        assert_eq!(head["imds"]["class"], "v2_get");
    }
    let v4 = reqs
        .iter()
        .find(|r| r["network"]["type"] == "ipv4")
        .unwrap();
    assert_eq!(v4["destination"]["ip"], "169.254.169.254");
    assert_eq!(v4["source"]["ip"], sb_host_v4());
    let v6 = reqs
        .iter()
        .find(|r| r["network"]["type"] == "ipv6")
        .unwrap();
    assert_eq!(v6["destination"]["ip"], "fd00:ec2::254");

    let counters = &stopped.stopped_event()["imds"]["counters"];
    assert_eq!(counters["requests"]["v1_get"], 2);
    assert_eq!(counters["requests"]["v2_get"], 4);
    assert_eq!(counters["requests"]["v2_token_put"], 2);
    assert_eq!(counters["events_written"], 8);
    assert_eq!(counters["lost_events"], 0);
    let line = serde_json::to_string(&stopped.events).unwrap();
    assert!(
        !line.to_lowercase().contains("aqae"),
        "no token value in any event"
    );
}

fn sb_host_v4() -> String {
    imds_sandbox::topology::HOST_V4.to_string()
}

#[test]
fn container_requests_through_the_bridge_and_nat_are_seen() {
    let sb = sandbox(&[ContainerSpec::docker(), ContainerSpec::kubernetes()]);
    let monitor = Monitor::start(&sb, &[]).expect("monitor");
    for i in 0..2 {
        let place = Place::Container(i);
        for host in [V4, V6] {
            curl_ok(&sb, &place, &[&url(host, "/latest/meta-data/")], 200);
            let token = token(&sb, &place, host);
            let header = format!("X-aws-ec2-metadata-token: {token}");
            curl_ok(
                &sb,
                &place,
                &[
                    "-H",
                    &header,
                    &url(host, "/latest/dynamic/instance-identity/document"),
                ],
                200,
            );
        }
    }
    monitor.wait_for_requests(12).expect("12 events");
    let stopped = stop(monitor);
    let reqs = stopped.requests();
    assert_eq!(reqs.len(), 12, "{reqs:#?}");
    assert_eq!(sb.imds_log().len(), 12);
    assert_eq!(
        classes(&reqs),
        counts(&[("v1_get", 4), ("v2_token_put", 4), ("v2_get", 4)])
    );
    // Monitor mode: nothing is an alert.
    assert!(
        reqs.iter()
            .all(|r| r["event"]["kind"] == "event" && r["imds"]["verdict"] == "allowed")
    );
    let dynamic = reqs
        .iter()
        .filter(|r| r["imds"]["path_category"] == "dynamic")
        .count();
    assert_eq!(dynamic, 4);
}

#[test]
fn rejected_and_foreign_requests_get_their_own_classes() {
    let sb = sandbox(&[]);
    let monitor = Monitor::start(&sb, &["--mode", "alert"]).expect("monitor");
    let place = Place::service("odd-clients");
    let token_url = url(V4, "/latest/api/token");
    let cases: &[(&[&str], u16)] = &[
        (&["-X", "PUT", &token_url], 400),
        (
            &[
                "-X",
                "PUT",
                "-H",
                "X-aws-ec2-metadata-token-ttl-seconds: 0",
                &token_url,
            ],
            400,
        ),
        (
            &[
                "-X",
                "PUT",
                "-H",
                "X-aws-ec2-metadata-token-ttl-seconds: 21601",
                &token_url,
            ],
            400,
        ),
        (
            &[
                "-X",
                "PUT",
                "-H",
                "X-aws-ec2-metadata-token-ttl-seconds: 60",
                "-H",
                "X-Forwarded-For: 203.0.113.7",
                &token_url,
            ],
            403,
        ),
    ];
    for (args, status) in cases {
        curl_ok(&sb, &place, args, *status);
    }
    let dated = url(V4, "/2021-03-23/api/token");
    curl_ok(
        &sb,
        &place,
        &[
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
            &dated,
        ],
        403,
    );
    curl_ok(
        &sb,
        &place,
        &["-X", "POST", &url(V4, "/latest/meta-data/")],
        405,
    );
    // Other clouds' SDKs probing the same address: not IMDSv1 use.
    curl_ok(
        &sb,
        &place,
        &[
            "-H",
            "Metadata-Flavor: Google",
            &url(V4, "/computeMetadata/v1/instance/id"),
        ],
        404,
    );
    curl_ok(
        &sb,
        &place,
        &["-H", "Metadata: true", &url(V4, "/metadata/instance")],
        404,
    );
    curl_ok(
        &sb,
        &place,
        &[
            "-H",
            "Authorization: Bearer Oracle",
            &url(V4, "/opc/v2/instance/"),
        ],
        404,
    );

    monitor.wait_for_requests(9).expect("9 events");
    let stopped = stop(monitor);
    let reqs = stopped.requests();
    assert_eq!(reqs.len(), 9, "{reqs:#?}");
    let reasons: Vec<&str> = reqs
        .iter()
        .filter(|r| r["imds"]["class"] == "invalid")
        .map(|r| r["imds"]["invalid_reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "missing_ttl",
            "ttl_out_of_range",
            "ttl_out_of_range",
            "x_forwarded_for",
            "dated_token_path",
            "method"
        ]
    );
    let xff = reqs
        .iter()
        .find(|r| r["imds"]["invalid_reason"] == "x_forwarded_for")
        .unwrap();
    assert_eq!(xff["imds"]["x_forwarded_for"], true);
    let clouds: Vec<&str> = reqs
        .iter()
        .filter(|r| r["imds"]["class"] == "other_cloud")
        .map(|r| r["imds"]["other_cloud"].as_str().unwrap())
        .collect();
    assert_eq!(clouds, ["gcp", "azure", "oracle"]);
    assert!(
        reqs.iter().all(|r| r["event"]["kind"] == "event"),
        "none of these is an IMDSv1 alert"
    );
}

#[test]
fn segmented_pipelined_and_lower_case_requests() {
    let sb = sandbox(&[ContainerSpec::docker()]);
    let monitor = Monitor::start(&sb, &[]).expect("monitor");
    // Token header in the last of three segments: v2, never v1.
    let out = sb
        .imds_client(
            &Place::service("sdk"),
            &["--v2", "--segments", "3", "--lowercase"],
        )
        .expect("client");
    assert!(out.success(), "{out:?}");
    // Five requests on one keep-alive connection, written at once.
    let out = sb
        .imds_client(&Place::Container(0), &["--v1", "--pipeline", "5"])
        .expect("client");
    assert!(out.success(), "{out:?}");
    assert_eq!(out.statuses.len(), 5);
    // The same over IPv6, segmented.
    let out = sb
        .imds_client(
            &Place::Container(0),
            &["--addr", "[fd00:ec2::254]:80", "--v2", "--segments", "4"],
        )
        .expect("client");
    assert!(out.success(), "{out:?}");

    monitor.wait_for_requests(9).expect("9 events");
    let stopped = stop(monitor);
    let reqs = stopped.requests();
    assert_eq!(sb.imds_log().len(), 9);
    assert_eq!(reqs.len(), 9, "{reqs:#?}");
    assert_eq!(
        classes(&reqs),
        counts(&[("v1_get", 5), ("v2_token_put", 2), ("v2_get", 2)])
    );
}

#[test]
fn a_retransmitted_segment_is_not_counted_twice() {
    let sb = sandbox(&[]);
    let monitor = Monitor::start(&sb, &[]).expect("monitor");
    sb.drop_next_data_segment().expect("arm the drop");
    let out = sb
        .imds_client(&Place::service("flaky"), &["--v1"])
        .expect("client");
    assert!(out.success(), "{out:?}");
    assert_eq!(
        sb.dropped_segments().expect("counter"),
        1,
        "the first copy was dropped"
    );
    monitor.wait_for_requests(1).expect("1 event");
    let stopped = stop(monitor);
    assert_eq!(stopped.requests().len(), 1, "{:#?}", stopped.requests());
    assert_eq!(sb.imds_log().len(), 1);
    let counters = &stopped.stopped_event()["imds"]["counters"];
    assert!(
        counters["retransmitted_segments"].as_u64().unwrap() >= 1,
        "{counters}"
    );
    assert_eq!(counters["requests"]["v1_get"], 1);
}

#[test]
fn incomplete_heads_and_junk_are_never_v1() {
    let sb = sandbox(&[]);
    let monitor = Monitor::start(&sb, &["--mode", "alert"]).expect("monitor");
    let place = Place::service("broken");
    // A head that never ends: the client gives up and closes.
    let out = sb
        .imds_client(
            &place,
            &[
                "--raw",
                "GET /latest/meta-data/ HTTP/1.1\\r\\nHost: x\\r\\n",
                "--timeout-ms",
                "300",
            ],
        )
        .expect("client");
    assert!(!out.success(), "no answer to a half request: {out:?}");
    // Bytes that are not HTTP at all.
    let _ = sb
        .imds_client(
            &place,
            &[
                "--raw",
                "\\x16\\x03\\x01 junk\\r\\n\\r\\n",
                "--timeout-ms",
                "300",
            ],
        )
        .expect("client");
    monitor.wait_for_requests(2).expect("2 events");
    let stopped = stop(monitor);
    let reqs = stopped.requests();
    assert_eq!(
        classes(&reqs),
        counts(&[("incomplete", 1), ("invalid", 1)]),
        "{reqs:#?}"
    );
    let junk = reqs
        .iter()
        .find(|r| r["imds"]["class"] == "invalid")
        .unwrap();
    assert_eq!(junk["imds"]["invalid_reason"], "malformed");
    assert!(reqs.iter().all(|r| r["event"]["kind"] == "event"));
}
