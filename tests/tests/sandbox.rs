//! Tests of the sandbox itself: real traffic through real namespaces to the
//! mock IMDS. Every test builds its own sandbox, so they run in parallel.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imds_sandbox::{
    ContainerSpec, CurlOutput, ImdsRequest, IpVersion, NetNs, Place, Sandbox, cgroup_of_pid,
    topology,
};

const V4: &str = "http://169.254.169.254";
const V6: &str = "http://[fd00:ec2::254]";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
const INSTANCE_ID: &str = "i-0123456789abcdef0";
const CLIENT: &str = env!("CARGO_BIN_EXE_imds-client");

fn host() -> Place {
    Place::service("app")
}

/// A host workload, a Docker container and a Kubernetes container.
fn sandbox_with(hop_limit: u8) -> Sandbox {
    Sandbox::builder()
        .hop_limit(hop_limit)
        .containers(&[ContainerSpec::docker(), ContainerSpec::kubernetes()])
        .build()
        .expect("sandbox builds")
}

fn curl(sb: &Sandbox, place: &Place, args: &[&str]) -> CurlOutput {
    sb.curl(place, args).expect("curl runs")
}

fn put_token(sb: &Sandbox, place: &Place, base: &str, extra: &[&str]) -> CurlOutput {
    let url = format!("{base}/latest/api/token");
    let ttl = format!("{TTL_HEADER}: 21600");
    let mut args = vec!["-X", "PUT", "-H", ttl.as_str()];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(sb, place, &args)
}

/// Gets a token, asserting the PUT succeeds.
fn get_token(sb: &Sandbox, place: &Place, base: &str) -> String {
    let put = put_token(sb, place, base, &[]);
    assert_eq!(
        put.status,
        Some(200),
        "token PUT from {place:?} to {base}: {put:?}"
    );
    assert_eq!(put.body.len(), 56);
    put.body
}

fn get_with_token(sb: &Sandbox, place: &Place, url: &str, token: &str) -> CurlOutput {
    let header = format!("{TOKEN_HEADER}: {token}");
    curl(sb, place, &["-H", &header, url])
}

/// Asserts v1 and v2 reads from `place` over both IP versions, and what the
/// mock saw: peers are the host's addresses (containers are masqueraded).
fn assert_v1_and_v2_work(sb: &Sandbox, place: &Place) {
    for (base, version, peer) in [
        (V4, IpVersion::V4, topology::HOST_V4.to_string()),
        (V6, IpVersion::V6, topology::HOST_V6.to_string()),
    ] {
        sb.imds().clear_log();
        let url = format!("{base}/latest/meta-data/instance-id");
        let v1 = curl(sb, place, &[&url]);
        assert_eq!(
            (v1.status, v1.body.as_str()),
            (Some(200), INSTANCE_ID),
            "{place:?} {v1:?}"
        );

        let token = get_token(sb, place, base);
        let v2 = get_with_token(sb, place, &url, &token);
        assert_eq!(
            (v2.status, v2.body.as_str()),
            (Some(200), INSTANCE_ID),
            "{place:?} {v2:?}"
        );

        let log = sb.imds_log();
        let seen: Vec<(&str, bool, u16)> = log
            .iter()
            .map(|r| (r.method.as_str(), r.token_present, r.status))
            .collect();
        assert_eq!(
            seen,
            [("GET", false, 200), ("PUT", false, 200), ("GET", true, 200)]
        );
        let hop_limits: Vec<Option<u8>> = log.iter().map(|r| r.hop_limit).collect();
        assert_eq!(hop_limits, [None, Some(2), None]);
        for r in &log {
            assert_eq!(r.ip_version, version);
            assert_eq!(r.peer.ip().to_string(), peer, "{place:?}");
            assert_eq!(r.local.port(), 80);
        }
    }
}

#[test]
fn host_reads_v1_and_v2_over_ipv4_and_ipv6() {
    let sb = sandbox_with(2);
    assert_v1_and_v2_work(&sb, &host());
    assert_v1_and_v2_work(&sb, &Place::HostRoot);
}

#[test]
fn containers_read_v1_and_v2_over_ipv4_and_ipv6_with_hop_limit_2() {
    let sb = sandbox_with(2);
    assert_v1_and_v2_work(&sb, &Place::Container(0));
    assert_v1_and_v2_work(&sb, &Place::Container(1));
}

fn spawn_client(sb: &Sandbox, place: &Place, args: &[&str]) -> Child {
    sb.command(place, CLIENT)
        .expect("command")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("imds-client starts")
}

#[test]
fn hop_limit_1_cuts_off_container_token_puts_only() {
    let sb = sandbox_with(1);
    let container = Place::Container(0);

    // The host is zero hops away: TTL 1 reaches it.
    get_token(&sb, &host(), V4);
    get_token(&sb, &host(), V6);

    // Containers are one hop further: their PUTs reach IMDS, the answers die
    // on the host. Run the three slow cases at once.
    let client = spawn_client(&sb, &container, &["--v2", "--timeout-ms", "1500"]);
    let (put4, put6) = std::thread::scope(|s| {
        let put4 = s.spawn(|| put_token(&sb, &container, V4, &["--max-time", "2"]));
        let put6 = s.spawn(|| put_token(&sb, &container, V6, &["--max-time", "2"]));
        (put4.join().unwrap(), put6.join().unwrap())
    });
    let client = client.wait_with_output().expect("imds-client finishes");
    for put in [&put4, &put6] {
        assert!(put.timed_out(), "container PUT must time out: {put:?}");
        assert_eq!(put.status, None);
    }
    assert_eq!(
        client.status.code(),
        Some(2),
        "imds-client exits 2 on timeout"
    );
    assert!(client.stdout.is_empty());

    // IMDSv1 is not hop limited: this is the silent SDK fallback.
    let v1 = curl(
        &sb,
        &container,
        &[&format!("{V4}/latest/meta-data/instance-id")],
    );
    assert_eq!(v1.status, Some(200));

    // Every PUT reached IMDS and was answered 200.
    let puts: Vec<ImdsRequest> = sb
        .imds_log()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 5, "{puts:#?}");
    assert!(
        puts.iter()
            .all(|r| r.status == 200 && r.hop_limit == Some(1))
    );

    // modify-instance-metadata-options --http-put-response-hop-limit 2 fixes it.
    sb.imds().update_config(|c| c.hop_limit = 2);
    get_token(&sb, &container, V4);
    get_token(&sb, &container, V6);
}

#[test]
fn tokens_required_answers_v1_with_the_xhtml_401() {
    let sb = Sandbox::builder()
        .hop_limit(2)
        .tokens_required(true)
        .container(ContainerSpec::docker())
        .build()
        .unwrap();
    for place in [host(), Place::Container(0)] {
        for base in [V4, V6] {
            let url = format!("{base}/latest/meta-data/iam/security-credentials/");
            let v1 = curl(&sb, &place, &[&url]);
            assert_eq!(v1.status, Some(401), "{v1:?}");
            assert!(
                v1.body
                    .starts_with("<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>")
            );
            assert!(
                v1.body.contains("<title>401 - Unauthorized</title>"),
                "{}",
                v1.body
            );

            let token = get_token(&sb, &place, base);
            let v2 = get_with_token(&sb, &place, &url, &token);
            assert_eq!(
                (v2.status, v2.body.as_str()),
                (Some(200), "imds-sandbox-role")
            );
        }
    }
    let statuses: Vec<(bool, u16)> = sb
        .imds_log()
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| (r.token_present, r.status))
        .collect();
    assert_eq!(statuses, [(false, 401), (true, 200)].repeat(4));
}

#[test]
fn token_put_is_validated_like_imds() {
    let sb = Sandbox::builder().build().unwrap();
    let place = host();
    let put = |path: &str, headers: &[&str]| {
        let url = format!("{V4}{path}");
        let mut args = vec!["-X", "PUT"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        curl(&sb, &place, &args).status
    };
    let ttl = "X-aws-ec2-metadata-token-ttl-seconds: 60";
    assert_eq!(put("/latest/api/token", &[ttl]), Some(200));
    assert_eq!(
        put(
            "/latest/api/token",
            &["x-aws-ec2-metadata-token-ttl-seconds: 60"]
        ),
        Some(200)
    );
    assert_eq!(
        put(
            "/latest/api/token",
            &["X-AWS-EC2-METADATA-TOKEN-TTL-SECONDS: 1"]
        ),
        Some(200)
    );
    assert_eq!(put("/latest/api/token", &[]), Some(400), "missing TTL");
    assert_eq!(
        put("/latest/api/token", &["X-aws-ec2-metadata-token: 60"]),
        Some(400),
        "prefix"
    );
    assert_eq!(
        put(
            "/latest/api/token",
            &["X-aws-ec2-metadata-token-ttl-seconds: 0"]
        ),
        Some(400)
    );
    assert_eq!(
        put(
            "/latest/api/token",
            &["X-aws-ec2-metadata-token-ttl-seconds: 21601"]
        ),
        Some(400)
    );
    assert_eq!(
        put("/latest/api/token", &[ttl, "X-Forwarded-For: 203.0.113.9"]),
        Some(403)
    );
    assert_eq!(
        put("/2021-03-23/api/token", &[ttl]),
        Some(403),
        "dated token path"
    );
    assert_eq!(put("/latest/meta-data/", &[ttl]), Some(405));
    let log = sb.imds_log();
    assert_eq!(log.len(), 10);
    let xff = &log[7];
    assert!(
        xff.header_names.iter().any(|n| n == "X-Forwarded-For"),
        "{xff:?}"
    );
}

/// PUTs a token asking for `ttl_secs` and returns it with when it was asked.
fn short_token(sb: &Sandbox, place: &Place, ttl_secs: u32) -> (String, Instant) {
    let issued = Instant::now();
    let ttl = format!("{TTL_HEADER}: {ttl_secs}");
    let put = curl(
        sb,
        place,
        &["-X", "PUT", "-H", &ttl, &format!("{V4}/latest/api/token")],
    );
    assert_eq!(put.status, Some(200), "{put:?}");
    (put.body, issued)
}

fn sleep_until(deadline: Instant) {
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
}

#[test]
fn invalid_and_expired_tokens_get_401() {
    let sb = Sandbox::builder().build().unwrap();
    let place = host();
    let url = format!("{V4}/latest/meta-data/instance-id");
    let token = get_token(&sb, &place, V4);
    assert_eq!(get_with_token(&sb, &place, &url, &token).status, Some(200));
    // A token works from any connection and IP version until it expires.
    let url6 = format!("{V6}/latest/meta-data/instance-id");
    assert_eq!(get_with_token(&sb, &place, &url6, &token).status, Some(200));
    let bogus = get_with_token(&sb, &place, &url, "AQAEAbogus==");
    assert_eq!(
        bogus.status,
        Some(401),
        "invalid tokens are refused even when optional"
    );
    assert_eq!(
        curl(&sb, &place, &[&url]).status,
        Some(200),
        "tokens optional: v1 is fine"
    );

    // The shortest TTL IMDS grants is one second.
    let (token, issued) = short_token(&sb, &place, 1);
    sleep_until(issued + Duration::from_millis(1050));
    let expired = get_with_token(&sb, &place, &url, &token);
    assert_eq!(expired.status, Some(401));
    assert!(expired.body.contains("401 - Unauthorized"));

    // token_ttl_max shortens lifetimes below a second for quicker tests.
    sb.imds()
        .update_config(|c| c.token_ttl_max = Some(Duration::from_millis(200)));
    let (token, issued) = short_token(&sb, &place, 21_600);
    sleep_until(issued + Duration::from_millis(250));
    assert_eq!(get_with_token(&sb, &place, &url, &token).status, Some(401));
}

#[test]
fn log_keeps_header_names_but_never_token_values() {
    let sb = Sandbox::builder()
        .hop_limit(2)
        .container(ContainerSpec::kubernetes())
        .build()
        .unwrap();
    let place = Place::Container(0);
    let token = get_token(&sb, &place, V4);
    let url = format!("{V4}/latest/meta-data/iam/security-credentials/imds-sandbox-role");
    let creds = get_with_token(&sb, &place, &url, &token);
    assert_eq!(creds.status, Some(200));
    let creds: serde_json::Value = serde_json::from_str(&creds.body).expect("credentials JSON");
    for key in ["AccessKeyId", "SecretAccessKey", "Token", "Expiration"] {
        assert!(creds[key].is_string(), "{key} missing: {creds}");
    }

    let log = sb.imds_log();
    assert_eq!(log.len(), 2);
    assert!(
        !format!("{log:?}").contains(&token),
        "the log must not hold token values"
    );
    assert_eq!(log[0].path, "/latest/api/token");
    assert!(log[0].header_names.iter().any(|n| n == TTL_HEADER));
    assert!(!log[0].token_present);
    assert_eq!(
        log[1].path,
        "/latest/meta-data/iam/security-credentials/imds-sandbox-role"
    );
    assert!(log[1].header_names.iter().any(|n| n == TOKEN_HEADER));
    assert!(log[1].token_present);
    assert!(log[0].time <= log[1].time);
}

#[test]
fn metadata_paths_methods_and_other_endpoints() {
    let sb = Sandbox::builder().build().unwrap();
    let place = host();
    let get = |url: &str| curl(&sb, &place, &[url]);

    assert!(
        get(&format!("{V4}/latest/meta-data/"))
            .body
            .contains("instance-id")
    );
    assert_eq!(
        get(&format!("{V4}/2021-07-15/meta-data/instance-id")).body,
        INSTANCE_ID
    );
    assert_eq!(
        get(&format!("{V4}/1.0/meta-data/instance-id")).body,
        INSTANCE_ID
    );
    assert_eq!(
        get(&format!("{V4}/latest/meta-data/tags/instance/team")).body,
        "security"
    );
    assert!(
        get(&format!("{V6}/latest/user-data"))
            .body
            .starts_with("#!/bin/bash")
    );
    let doc = get(&format!("{V4}/latest/dynamic/instance-identity/document")).body;
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["instanceId"], INSTANCE_ID);
    assert_eq!(
        get(&format!("{V4}/latest/meta-data/no-such-thing")).status,
        Some(404)
    );

    let head = curl(
        &sb,
        &place,
        &["-I", &format!("{V4}/latest/meta-data/instance-id")],
    );
    assert_eq!(head.status, Some(200));
    assert!(head.body.contains("Content-Length: 19"), "{}", head.body);
    let post = curl(
        &sb,
        &place,
        &["-d", "x", &format!("{V4}/latest/meta-data/")],
    );
    assert_eq!(post.status, Some(405));

    // ECS and EKS Pod Identity addresses exist but are not IMDS.
    for url in [
        "http://169.254.170.2/v2/credentials",
        "http://169.254.170.23/v1/credentials",
    ] {
        assert_eq!(get(url).status, Some(404), "{url}");
    }
    assert_eq!(
        get("http://[fd00:ec2::23]/v1/credentials").status,
        Some(404)
    );

    // curl reuses one keep-alive connection for several URLs.
    sb.imds().clear_log();
    let url = format!("{V4}/latest/meta-data/instance-id");
    let out = curl(&sb, &place, &[&url, &url, &url]);
    assert_eq!(out.body.matches(INSTANCE_ID).count(), 3, "{out:?}");
    let log = sb.imds_log();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|r| r.connection == log[0].connection));
}

/// Inode of a namespace file, to compare namespaces.
fn ns_inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("namespace file").ino()
}

fn spawn_sleep(sb: &Sandbox, place: &Place) -> Child {
    sb.command(place, "sleep")
        .expect("command")
        .arg("30")
        .spawn()
        .expect("sleep starts")
}

#[test]
fn workloads_land_in_their_cgroups_and_namespaces() {
    let sb = Sandbox::builder()
        .containers(&[ContainerSpec::docker(), ContainerSpec::kubernetes()])
        .build()
        .unwrap();
    let root = sb.root_cgroup().rel().to_owned();
    let docker = sb.container(0);
    let k8s = sb.container(1);
    assert_eq!(docker.id().len(), 64);
    assert!(docker.id().chars().all(|c| c.is_ascii_hexdigit()));
    let uid = k8s.pod_uid().expect("pod uid").replace('-', "_");

    let cases = [
        (
            host(),
            format!("{root}/system.slice/app.service"),
            sb.host_netns().clone(),
        ),
        (Place::HostRoot, root.clone(), sb.host_netns().clone()),
        (
            Place::Container(0),
            format!("{root}/system.slice/docker-{}.scope", docker.id()),
            docker.netns().clone(),
        ),
        (
            Place::Container(1),
            format!(
                "{root}/kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod{uid}.slice/cri-containerd-{}.scope",
                k8s.id()
            ),
            k8s.netns().clone(),
        ),
    ];
    for (place, cgroup, netns) in cases {
        let mut child = spawn_sleep(&sb, &place);
        let pid = child.id();
        assert_eq!(cgroup_of_pid(pid).unwrap(), cgroup, "{place:?}");
        assert_eq!(sb.cgroup(&place).unwrap().rel(), cgroup);
        assert!(sb.cgroup(&place).unwrap().procs().unwrap().contains(&pid));
        let own_ns = Path::new("/proc").join(pid.to_string()).join("ns/net");
        assert_eq!(ns_inode(&own_ns), ns_inode(netns.path()), "{place:?}");
        assert_ne!(ns_inode(&own_ns), ns_inode(Path::new("/proc/self/ns/net")));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(
        docker
            .cgroup()
            .path()
            .starts_with(imds_sandbox::cgroup2_mount().unwrap())
    );
    assert_eq!(docker.ipv4(), topology::container_v4(0));
    assert_eq!(k8s.ipv6(), topology::container_v6(1));
    assert_eq!(sb.host_ifname(), "eth0");
    assert!(sb.host_netns_path().exists());

    // The host namespace has the topology the monitor expects.
    let links = sb.host_netns().ip(&["-o", "link", "show"]).unwrap();
    for name in ["eth0", "docker0", "veth0", "veth1"] {
        assert!(
            links.contains(&format!(": {name}")),
            "{name} missing in {links}"
        );
    }
    let in_host = sb.run_in_host_netns(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"));
    assert_eq!(in_host.unwrap().unwrap().trim(), "1");
}

#[test]
fn segmented_and_pipelined_requests_via_imds_client() {
    let sb = Sandbox::builder()
        .hop_limit(2)
        .container(ContainerSpec::docker())
        .build()
        .unwrap();
    let container = Place::Container(0);
    for addr in ["169.254.169.254:80", "[fd00:ec2::254]:80"] {
        sb.imds().clear_log();
        // Token header only in the last of 4 segments.
        let out = sb
            .imds_client(
                &container,
                &["--addr", addr, "--v2", "--segments", "4", "--lowercase"],
            )
            .unwrap();
        assert!(out.success(), "{out:?}");
        assert_eq!(out.statuses, [200, 200]);
        let log = sb.imds_log();
        assert_eq!(log.len(), 2, "{log:#?}");
        assert!(log[1].token_present && log[1].status == 200);
        assert!(
            log[1]
                .header_names
                .iter()
                .any(|n| n == "x-aws-ec2-metadata-token")
        );
        assert_eq!(log[0].connection, log[1].connection);

        // Five requests in one write on one connection, answered in order.
        sb.imds().clear_log();
        let out = sb
            .imds_client(&container, &["--addr", addr, "--pipeline", "5"])
            .unwrap();
        assert_eq!(out.statuses, [200; 5], "{out:?}");
        let log = sb.imds_log();
        assert_eq!(log.len(), 5);
        assert!(
            log.iter()
                .all(|r| r.connection == log[0].connection && !r.token_present)
        );

        // Pipelined, segmented v2 reads, several connections reusing the token.
        sb.imds().clear_log();
        let args = [
            "--addr",
            addr,
            "--v2",
            "--pipeline",
            "3",
            "--segments",
            "3",
            "--count",
            "2",
        ];
        let out = sb.imds_client(&container, &args).unwrap();
        assert_eq!(out.statuses, [200; 7], "{out:?}");
        let log = sb.imds_log();
        assert_eq!(log.iter().filter(|r| r.method == "PUT").count(), 1);
        assert_eq!(
            log.iter()
                .filter(|r| r.token_present && r.status == 200)
                .count(),
            6
        );
    }

    // Raw bytes: a HEAD and a GET with a bad token, pipelined.
    sb.imds().clear_log();
    let raw = "HEAD /latest/meta-data/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n\
               GET /latest/meta-data/ HTTP/1.1\\r\\nX-aws-ec2-metadata-token: bad\\r\\n\\r\\n";
    let out = sb.imds_client(&container, &["--raw", raw]).unwrap();
    assert_eq!(out.statuses, [200, 401], "{out:?}");
    let log = sb.imds_log();
    assert_eq!(
        (log[0].method.as_str(), log[1].method.as_str()),
        ("HEAD", "GET")
    );

    // Garbage gets a 400 and is logged without a method.
    let out = sb
        .imds_client(&container, &["--raw", "NONSENSE\\r\\n\\r\\n"])
        .unwrap();
    assert_eq!(out.statuses, [400]);
    assert_eq!(sb.imds_log().last().unwrap().method, "");
}

#[test]
fn dropped_first_segment_is_retransmitted_and_answered_once() {
    let sb = Sandbox::builder()
        .hop_limit(2)
        .container(ContainerSpec::docker())
        .build()
        .unwrap();
    let container = Place::Container(0);
    assert_eq!(sb.dropped_segments().unwrap(), 0);

    sb.drop_next_data_segment().unwrap();
    let started = Instant::now();
    let out = sb
        .imds_client(&container, &["--v1", "--timeout-ms", "5000"])
        .unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(out.statuses, [200]);
    assert_eq!(sb.dropped_segments().unwrap(), 1);
    // The retransmission timeout (>= 200 ms) shows the segment went twice.
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        sb.imds_log().len(),
        1,
        "the retransmitted request is served once"
    );

    // Only once: the next connection is untouched.
    let out = sb.imds_client(&container, &["--v2"]).unwrap();
    assert_eq!(out.statuses, [200, 200]);
    assert_eq!(sb.dropped_segments().unwrap(), 1);

    // Re-arming works, also over IPv6 and for a segmented request.
    sb.drop_next_data_segment().unwrap();
    let args = ["--addr", "[fd00:ec2::254]:80", "--segments", "3"];
    let out = sb.imds_client(&container, &args).unwrap();
    assert_eq!(out.statuses, [200], "{out:?}");
    assert_eq!(sb.dropped_segments().unwrap(), 1);
}

#[test]
fn sandboxes_are_isolated_from_each_other() {
    let a = Sandbox::builder().build().unwrap();
    let b = Sandbox::builder().tokens_required(true).build().unwrap();
    assert_ne!(a.id(), b.id());
    let url = format!("{V4}/latest/meta-data/instance-id");
    assert_eq!(curl(&a, &host(), &[&url]).status, Some(200));
    assert_eq!(curl(&b, &host(), &[&url]).status, Some(401));
    assert_eq!(a.imds_log().len(), 1);
    assert_eq!(b.imds_log().len(), 1);
}

#[test]
fn locates_the_client_binary() {
    let found = imds_sandbox::imds_client_bin().unwrap();
    assert_eq!(
        found.canonicalize().unwrap(),
        Path::new(CLIENT).canonicalize().unwrap()
    );
}

#[test]
fn client_refuses_the_machines_own_namespace() {
    // Loopback address, so even a broken guard could not reach a real IMDS.
    let out = Command::new(CLIENT)
        .args(["--addr", "127.0.0.1:9", "--timeout-ms", "200"])
        .output();
    let out = out.expect("imds-client runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to run"), "{stderr}");
    assert!(out.stdout.is_empty());
}

fn ip_netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn assert_gone(names: &[String], cgroup: &Path) {
    let listed = ip_netns_list();
    for name in names {
        assert!(!listed.contains(name.as_str()), "{name} still listed");
        assert!(!NetNs::from_name(name).path().exists());
    }
    assert!(!cgroup.exists(), "{} still exists", cgroup.display());
}

#[test]
fn drop_removes_namespaces_cgroups_and_workloads() {
    let sb = sandbox_with(2);
    let names = sb.netns_names();
    assert_eq!(names.len(), 4);
    let listed = ip_netns_list();
    assert!(names.iter().all(|n| listed.contains(n.as_str())));
    let cgroup = sb.root_cgroup().path().to_owned();
    assert!(cgroup.is_dir());

    let mut workloads = vec![
        spawn_sleep(&sb, &host()),
        spawn_sleep(&sb, &Place::Container(1)),
    ];
    drop(sb);

    assert_gone(&names, &cgroup);
    for child in &mut workloads {
        let status = child.try_wait().unwrap().expect("workload was killed");
        assert!(!status.success());
    }
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let (names, cgroup) = (
        std::sync::Mutex::new(Vec::new()),
        std::sync::Mutex::new(None),
    );
    let result = std::panic::catch_unwind(|| {
        let sb = Sandbox::builder()
            .container(ContainerSpec::docker())
            .build()
            .unwrap();
        *names.lock().unwrap() = sb.netns_names();
        *cgroup.lock().unwrap() = Some(sb.root_cgroup().path().to_owned());
        panic!("test failure inside a sandbox");
    });
    assert!(result.is_err());
    let cgroup = cgroup.into_inner().unwrap().expect("sandbox was built");
    assert_gone(&names.into_inner().unwrap(), &cgroup);
}
