//! Enforce mode without a policy file: every IMDSv1 request is dropped in the
//! kernel before it reaches IMDS, and its client gets a TCP reset instead of
//! a hang; IMDSv2 is untouched. Alert mode marks what enforce would drop.

use imds_sandbox::{ContainerSpec, Monitor, Place, Sandbox, Stopped};

/// curl's exit code for "Recv failure: Connection reset by peer".
const CURL_RECV_ERROR: i32 = 56;
/// curl's exit code for a timeout: what a plain drop would give.
const CURL_TIMEOUT: i32 = 28;

fn sandbox() -> Sandbox {
    Sandbox::builder()
        .hop_limit(2)
        .containers(&[ContainerSpec::docker()])
        .build()
        .expect("sandbox")
}

fn stop(monitor: Monitor) -> Stopped {
    let stopped = monitor.stop().expect("stop");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    stopped
}

/// A v1 GET: reset at once (not a timeout), and nothing reaches IMDS.
fn assert_v1_blocked(sb: &Sandbox, place: &Place, url: &str) {
    let before = sb.imds_log().len();
    let out = sb
        .curl(place, &["-g", "--max-time", "5", url])
        .expect("curl");
    assert_eq!(out.status, None, "no HTTP answer: {out:?}");
    assert_eq!(
        out.exit_code,
        Some(CURL_RECV_ERROR),
        "reset, not a hang: {out:?}"
    );
    assert_ne!(out.exit_code, Some(CURL_TIMEOUT));
    assert_eq!(
        sb.imds_log().len(),
        before,
        "IMDS received no request: {:#?}",
        sb.imds_log()
    );
}

fn assert_v2_works(sb: &Sandbox, place: &Place, addr: &str) {
    let out = sb
        .imds_client(place, &["--addr", addr, "--v2", "--timeout-ms", "3000"])
        .expect("client");
    assert!(out.success(), "{out:?}");
    assert_eq!(out.statuses, [200, 200]);
}

#[test]
fn enforce_drops_v1_with_a_reset_and_leaves_v2_alone() {
    let sb = sandbox();
    let monitor = Monitor::start(&sb, &["--mode", "enforce"]).expect("monitor");
    assert_eq!(monitor.started_event()["imds"]["mode"], "enforce");
    let host = Place::service("legacy");
    let container = Place::Container(0);
    for place in [&host, &container] {
        assert_v1_blocked(
            &sb,
            place,
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        );
        assert_v1_blocked(
            &sb,
            place,
            "http://[fd00:ec2::254]/latest/meta-data/instance-id",
        );
        assert_v2_works(&sb, place, "169.254.169.254:80");
        assert_v2_works(&sb, place, "[fd00:ec2::254]:80");
    }
    monitor.wait_for_requests(12).expect("events");
    let stopped = stop(monitor);
    let requests = stopped.requests();
    let dropped: Vec<_> = requests
        .iter()
        .filter(|r| r["imds"]["verdict"] == "dropped")
        .collect();
    assert_eq!(dropped.len(), 4, "{requests:#?}");
    for d in &dropped {
        assert_eq!(d["imds"]["class"], "v1_get");
        assert_eq!(d["event"]["kind"], "alert");
        assert_eq!(d["event"]["outcome"], "failure");
        assert_eq!(
            d["imds"]["attribution"], "full",
            "the dropped sender is still named"
        );
    }
    assert!(
        dropped
            .iter()
            .any(|d| d["container"]["id"] == sb.container(0).id())
    );
    assert!(
        dropped
            .iter()
            .any(|d| d["imds"]["systemd_unit"] == "legacy.service")
    );
    let allowed: Vec<_> = requests
        .iter()
        .filter(|r| r["imds"]["verdict"] == "allowed")
        .collect();
    assert_eq!(allowed.len(), 8, "4 token PUTs and 4 reads with a token");
    assert!(allowed.iter().all(|r| r["imds"]["version"] == "v2"));
    assert_eq!(sb.imds_log().len(), 8, "only the v2 requests reached IMDS");
    assert!(
        sb.imds_log()
            .iter()
            .all(|r| r.token_present || r.method == "PUT")
    );
}

#[test]
fn alert_mode_marks_what_enforce_would_drop() {
    let sb = sandbox();
    let monitor = Monitor::start(&sb, &["--mode", "alert"]).expect("monitor");
    let out = sb
        .curl(
            &Place::service("legacy"),
            &["http://169.254.169.254/latest/meta-data/"],
        )
        .expect("curl");
    assert_eq!(out.status, Some(200), "alert mode lets it through");
    assert_v2_works(&sb, &Place::service("agent"), "169.254.169.254:80");
    monitor.wait_for_requests(3).expect("events");
    let stopped = stop(monitor);
    for r in stopped.requests() {
        let v1 = r["imds"]["class"] == "v1_get";
        assert_eq!(
            r["imds"]["would_drop"].as_bool().unwrap_or(false),
            v1,
            "{r:#}"
        );
        assert_eq!(r["imds"]["verdict"], if v1 { "alerted" } else { "allowed" });
    }
}
