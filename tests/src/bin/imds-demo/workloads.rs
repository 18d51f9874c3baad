//! The workloads of the migration story: who on a typical EC2 host calls
//! IMDS, and how.
//!
//! Every workload runs inside the sandbox (`Sandbox::command`, `curl`,
//! `imds_client`), never in this machine's own network namespace, and every
//! request is bounded by a timeout. To add one, append to [`workloads`] (or
//! to [`v2_only_trial`], which runs under `HttpTokens=required`); the tables,
//! the checks and the summary pick it up. [`dry_run`] and [`enforced`] are
//! the enforce-mode rollout's, each with the verdict and rule its requests
//! must get.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use imds_sandbox::{ContainerSpec, Place, Sandbox};

use crate::narrate::Narrator;

/// Base URL of IMDSv4 as workloads see it (inside the sandbox).
const IMDS: &str = "http://169.254.169.254";
/// Upper bound of each curl request, in seconds.
const CURL_MAX_TIME: &str = "2";
/// How long the SDK-like client waits for its token, like botocore (1 s).
pub const SDK_TOKEN_TIMEOUT_MS: u64 = 1000;

/// Container indices of the sandbox built from [`containers`].
pub const DOCKER: usize = 0;
pub const POD: usize = 1;

/// The containers the workloads need, in index order.
pub fn containers() -> Vec<ContainerSpec> {
    vec![ContainerSpec::docker(), ContainerSpec::kubernetes()]
}

/// One workload of the story.
#[derive(Clone)]
pub struct Workload {
    /// Short name, for the checks and the summary.
    pub label: &'static str,
    /// Heading when it is announced.
    pub title: &'static str,
    /// Where it runs: cgroup and network namespace.
    pub place: Place,
    /// One or two sentences of narration before it runs.
    pub story: &'static str,
    /// Classes of the requests it makes, in order (`imds.class`).
    pub expect: &'static [&'static str],
    /// The diagnostics the monitor must raise for it (`event.action`, once
    /// per alert, any order): no more, no fewer.
    pub diagnostics: &'static [&'static str],
    /// Runs it and narrates what it did and saw.
    pub run: fn(&Sandbox, &Place, &mut Narrator) -> Result<()>,
}

pub fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            label: "cloud-init",
            title: "UserData script, run by cloud-init at first boot",
            place: Place::service("cloud-init"),
            story: "The launch template's UserData is a shell script written years ago: it\n\
                    reads the instance id and the role name with plain curl (IMDSv1).",
            expect: &["v1_get", "v1_get"],
            // Listing the role names is a credentials path too.
            diagnostics: &[CREDENTIALS_V1],
            run: user_data_script,
        },
        Workload {
            label: "ssm-agent",
            title: "Amazon SSM agent (an up-to-date AWS SDK)",
            place: Place::service("amazon-ssm-agent"),
            story: "A current agent: it PUTs for a session token, then reads with the token\n\
                    (IMDSv2). Header names in lower case, as the Go SDK sends them.",
            expect: &["v2_token_put", "v2_get"],
            diagnostics: &[],
            run: v2_agent,
        },
        Workload {
            label: "docker app",
            title: "Application in a Docker container",
            place: Place::Container(DOCKER),
            story: "An app in a container fetches the instance role's credentials with\n\
                    IMDSv1; its packets are routed and masqueraded by the host.",
            expect: &["v1_get", "v1_get"],
            diagnostics: &[CREDENTIALS_V1, CREDENTIALS_V1],
            run: docker_app,
        },
        Workload {
            label: "k8s pod",
            title: "SDK client in a Kubernetes pod container",
            place: Place::Container(POD),
            story: "An SDK that tries IMDSv2 first, with botocore's defaults (1 s timeout, one\n\
                    attempt). The instance's HttpPutResponseHopLimit is 1, the pod is one hop\n\
                    behind the host: the token response dies on the way, and the SDK\n\
                    silently falls back to IMDSv1.",
            expect: &["v2_token_put", "v1_get", "v1_get"],
            diagnostics: &[HOP_LIMIT, V1_FALLBACK, CREDENTIALS_V1, CREDENTIALS_V1],
            run: sdk_fallback,
        },
        Workload {
            label: "gcp probe",
            title: "Multi-cloud agent probing for Google Cloud",
            place: Place::service("multicloud-agent"),
            story: "A tool that asks the same address whether it runs on GCP\n\
                    (Metadata-Flavor: Google). That is not IMDSv1 use and must not alert.",
            expect: &["other_cloud"],
            diagnostics: &[],
            run: gcp_probe,
        },
    ]
}

/// What runs while the instance requires IMDSv2 (the demo flips the mock to
/// `HttpTokens=required` around it).
pub fn v2_only_trial() -> Vec<Workload> {
    vec![Workload {
        label: "cloud-init, v2 only",
        title: "The UserData script runs again (a per-boot script, or a reboot)",
        place: Place::service("cloud-init"),
        story: "Same script, same plain curl. IMDS now answers every read without a\n\
                token with \"401 - Unauthorized\".",
        expect: &["v1_get", "v1_get"],
        diagnostics: &[CREDENTIALS_V1, V1_REJECTED, V1_REJECTED],
        run: user_data_rejected,
    }]
}

/// The exception the rollout's policy makes for the UserData script.
pub const LEGACY_EXCEPTION: &str = "legacy-userdata";
/// `imds.policy.rule` of the requests that exception decides.
pub const LEGACY_RULE: &str = "exception:legacy-userdata";
/// `imds.policy.rule` of the IMDSv1 requests the policy's `[actions]` decide.
pub const V1_ACTION_RULE: &str = "actions.v1_get";
/// `imds.policy.rule` of classes the policy leaves at their default (allow).
pub const DEFAULT_RULE: &str = "default";

/// A workload of the enforce-mode rollout, and what the policy must decide
/// for every request it makes. (Its diagnostics are not checked there.)
pub struct Judged {
    pub workload: Workload,
    /// `imds.verdict`: `dropped`, `alerted` or `allowed`.
    pub verdict: &'static str,
    /// `imds.policy.rule`.
    pub rule: &'static str,
    /// `imds.would_drop`: alert mode marks what enforce mode would drop.
    pub would_drop: bool,
}

/// The dry run: alert mode with the policy. Nothing is dropped; what enforce
/// mode would drop is marked.
pub fn dry_run() -> Vec<Judged> {
    vec![
        Judged {
            workload: Workload {
                label: "docker app",
                title: "The Docker app reads the role's credentials again",
                place: Place::Container(DOCKER),
                story: "Same app, same IMDSv1 reads; no exception names it.",
                expect: &["v1_get", "v1_get"],
                diagnostics: &[CREDENTIALS_V1, CREDENTIALS_V1],
                run: docker_app,
            },
            verdict: "alerted",
            rule: V1_ACTION_RULE,
            would_drop: true,
        },
        Judged {
            workload: Workload {
                label: "cloud-init",
                title: "The UserData script runs again",
                place: Place::service("cloud-init"),
                story: "Same script, same plain curl; the exception names its unit.",
                expect: &["v1_get", "v1_get"],
                diagnostics: &[CREDENTIALS_V1],
                run: user_data_again,
            },
            verdict: "alerted",
            rule: LEGACY_RULE,
            would_drop: false,
        },
    ]
}

/// Enforce mode with the policy: the Docker app's IMDSv1 is dropped, the
/// UserData script is excepted, IMDSv2 is untouched.
pub fn enforced() -> Vec<Judged> {
    vec![
        Judged {
            workload: Workload {
                label: "docker app",
                title: "The Docker app reads the role's credentials",
                place: Place::Container(DOCKER),
                story: "Its first IMDSv1 read; nothing in the policy excepts it.",
                expect: &["v1_get"],
                diagnostics: &[CREDENTIALS_V1],
                run: docker_app_reset,
            },
            verdict: "dropped",
            rule: V1_ACTION_RULE,
            would_drop: false,
        },
        Judged {
            workload: Workload {
                label: "cloud-init",
                title: "The UserData script runs",
                place: Place::service("cloud-init"),
                story: "Plain curl, IMDSv1, but its unit is the policy's exception.",
                expect: &["v1_get", "v1_get"],
                diagnostics: &[CREDENTIALS_V1],
                run: user_data_again,
            },
            verdict: "alerted",
            rule: LEGACY_RULE,
            would_drop: false,
        },
        Judged {
            workload: Workload {
                label: "ssm-agent",
                title: "The SSM agent reads with a token",
                place: Place::service("amazon-ssm-agent"),
                story: "IMDSv2: enforce mode never drops it.",
                expect: &["v2_token_put", "v2_get"],
                diagnostics: &[],
                run: v2_agent,
            },
            verdict: "allowed",
            rule: DEFAULT_RULE,
            would_drop: false,
        },
    ]
}

/// The diagnostics' `event.action`s.
pub const V1_REJECTED: &str = "imds-v1-rejected";
pub const HOP_LIMIT: &str = "imds-hop-limit";
pub const V1_FALLBACK: &str = "imds-v1-fallback";
pub const CREDENTIALS_V1: &str = "imds-credentials-v1";

/// What a command line looks like in the narration.
fn show(out: &mut Narrator, args: &[&str]) {
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') || a.contains('*') {
                format!("'{a}'")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    out.command(&shown.join(" "));
}

/// A curl request from `place`; returns the body after checking the status.
fn curl(
    sb: &Sandbox,
    place: &Place,
    out: &mut Narrator,
    headers: &[&str],
    path: &str,
    want: u16,
) -> Result<String> {
    let url = format!("{IMDS}{path}");
    let mut args = vec!["--max-time", CURL_MAX_TIME];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(&url);
    let mut shown = vec!["curl"];
    for h in headers {
        shown.extend(["-H", h]);
    }
    shown.push(&url);
    show(out, &shown);
    let res = sb.curl(place, &args)?;
    let status = res
        .status
        .map_or_else(|| "no answer".to_owned(), |s| s.to_string());
    out.detail(&format!("-> {status}  {}", first_line(&res.body)));
    ensure!(
        res.status == Some(want),
        "curl {url} got {status}, expected {want} (exit {:?}): {}",
        res.exit_code,
        res.stderr.trim()
    );
    Ok(res.body)
}

/// What a response body says, in a few words: the credentials' key id, an
/// error page's title, or the first line.
fn first_line(body: &str) -> String {
    if let Ok(serde_json::Value::Object(doc)) = serde_json::from_str(body)
        && let Some(key) = doc.get("AccessKeyId").and_then(|k| k.as_str())
    {
        let code = doc.get("Code").and_then(|c| c.as_str()).unwrap_or("?");
        return format!(
            "{{\"Code\": \"{code}\", \"AccessKeyId\": \"{key}\", \"SecretAccessKey\": ...}}"
        );
    }
    if let Some((_, rest)) = body.split_once("<title>")
        && let Some((title, _)) = rest.split_once("</title>")
    {
        return title.trim().to_owned();
    }
    let line = body.lines().next().unwrap_or("").trim();
    if line.chars().count() > 60 {
        format!("{}...", line.chars().take(57).collect::<String>())
    } else {
        line.to_owned()
    }
}

const USER_DATA: &str = r#"#!/bin/sh
# UserData: tag this instance's resources with its id and role
IMDS=http://169.254.169.254/latest/meta-data
ID=$(curl -s --max-time 2 --noproxy '*' "$IMDS/instance-id")
ROLE=$(curl -s --max-time 2 --noproxy '*' "$IMDS/iam/security-credentials/")
echo "instance $ID, role $ROLE""#;

fn user_data_script(sb: &Sandbox, place: &Place, out: &mut Narrator) -> Result<()> {
    out.quote("|", USER_DATA);
    run_user_data(sb, place, out)
}

/// The UserData script once more, not shown again.
fn user_data_again(sb: &Sandbox, place: &Place, out: &mut Narrator) -> Result<()> {
    out.quote("|", "(the same script)");
    run_user_data(sb, place, out)
}

/// Runs the UserData script and checks that it read the id and the role.
fn run_user_data(sb: &Sandbox, place: &Place, out: &mut Narrator) -> Result<()> {
    let output = sb
        .command(place, "sh")?
        .args(["-c", USER_DATA])
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run the UserData script")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    out.detail(&format!("-> script printed: {}", stdout.trim()));
    ensure!(
        output.status.success() && stdout.contains("i-") && !stdout.contains("role ,"),
        "the UserData script failed ({}): {}{}",
        output.status,
        stdout.trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// The UserData script while IMDS requires a token: both reads get 401.
fn user_data_rejected(sb: &Sandbox, place: &Place, out: &mut Narrator) -> Result<()> {
    out.quote("|", "(the same script)");
    let before = sb.imds_log().len();
    let output = sb
        .command(place, "sh")?
        .args(["-c", USER_DATA])
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run the UserData script")?;
    let log = sb.imds_log();
    let statuses: Vec<u16> = log.iter().skip(before).map(|r| r.status).collect();
    let stdout = String::from_utf8_lossy(&output.stdout);
    out.detail(&format!(
        "-> IMDS answered {} to its reads; curl -s hides that, and the script printed:",
        describe_statuses(&statuses)
    ));
    out.quote(
        "  >",
        &format!("{} ...", stdout.lines().next().unwrap_or("").trim()),
    );
    out.detail("   (the 401 page, about to become a tag value: the script is broken)");
    ensure!(
        statuses == [401, 401],
        "the UserData script's reads were expected to get 401 twice, IMDS answered {statuses:?}"
    );
    Ok(())
}

/// `401 - Unauthorized` when every status is 401, else the list.
fn describe_statuses(statuses: &[u16]) -> String {
    if !statuses.is_empty() && statuses.iter().all(|s| *s == 401) {
        "401 - Unauthorized".to_owned()
    } else {
        format!("{statuses:?}")
    }
}

fn v2_agent(sb: &Sandbox, place: &Place, out: &mut Narrator) -> Result<()> {
    let args = [
        "--v2",
        "--lowercase",
        "--path",
        "/latest/dynamic/instance-identity/document",
        "--timeout-ms",
        "2000",
    ];
    show(out, &[&["imds-client"], &args[..]].concat());
    let res = sb.imds_client(place, &args)?;
    out.detail(&format!(
        "-> PUT /latest/api/token {}, then GET with the token {}",
        status_at(&res.statuses, 0),
        status_at(&res.statuses, 1)
    ));
    ensure!(
        res.success() && res.statuses == [200, 200],
        "the v2 agent failed: {res:?}"
    );
    Ok(())
}

fn status_at(statuses: &[u16], i: usize) -> String {
    statuses
        .get(i)
        .map_or_else(|| "(no answer)".to_owned(), |s| s.to_string())
}

fn docker_app(sb: &Sandbox, place: &Place, out: &mut Narrator) -> Result<()> {
    let base = "/latest/meta-data/iam/security-credentials/";
    let role = curl(sb, place, out, &[], base, 200)?;
    let role = role.lines().next().unwrap_or("").trim().to_owned();
    ensure!(!role.is_empty(), "no role name from {base}");
    curl(sb, place, out, &[], &format!("{base}{role}"), 200)?;
    out.detail("   (the instance role's temporary credentials; the mock's are fake)");
    Ok(())
}

/// curl's exit code for "Recv failure: Connection reset by peer".
pub const CURL_RESET: i32 = 56;
/// A reset comes at once; a dropped packet without one would hang until
/// curl's `--max-time`.
const RESET_WITHIN_MS: u128 = 500;

/// The Docker app's first read under enforce mode: the kernel drops it and
/// resets the connection; IMDS never sees it.
fn docker_app_reset(sb: &Sandbox, place: &Place, out: &mut Narrator) -> Result<()> {
    let url = format!("{IMDS}/latest/meta-data/iam/security-credentials/");
    show(out, &["curl", &url]);
    let before = sb.imds_log().len();
    let started = Instant::now();
    let res = sb.curl(place, &["--max-time", CURL_MAX_TIME, &url])?;
    let ms = started.elapsed().as_millis();
    let reached = sb.imds_log().len().saturating_sub(before);
    let error = res.stderr.lines().next().unwrap_or("").trim();
    let exit = res
        .exit_code
        .map_or_else(|| "killed".to_owned(), |c| format!("exit {c}"));
    out.detail(&format!("-> {error} ({exit}, after {ms} ms)"));
    ensure!(
        res.exit_code == Some(CURL_RESET) && res.status.is_none(),
        "the Docker app's IMDSv1 read was expected to be reset (curl exit {CURL_RESET}), \
         but: {res:?}"
    );
    ensure!(
        ms < RESET_WITHIN_MS,
        "the reset took {ms} ms; expected it within {RESET_WITHIN_MS} ms"
    );
    ensure!(
        reached == 0,
        "the mock IMDS logged {reached} request(s) of the dropped read"
    );
    out.detail(
        "   reset at once, not left hanging until a timeout; the mock IMDS logged nothing:\n   \
         the kernel dropped the request before it left the host.",
    );
    Ok(())
}

fn sdk_fallback(sb: &Sandbox, place: &Place, out: &mut Narrator) -> Result<()> {
    let base = "/latest/meta-data/iam/security-credentials/";
    let timeout = SDK_TOKEN_TIMEOUT_MS.to_string();
    // One process, as an SDK is: the token PUT, and when it times out, the
    // role and its credentials over IMDSv1 (a fallback is one client's story).
    let sdk = [
        "--v2",
        "--fallback-v1",
        "--role-credentials",
        "--lowercase",
        "--verbose",
        "--timeout-ms",
        &timeout,
        "--path",
        base,
    ];
    show(out, &[&["imds-client"], &sdk[..]].concat());
    let started = Instant::now();
    let res = sb.imds_client(place, &sdk)?;
    let waited = started.elapsed().as_secs_f64();
    ensure!(
        res.success() && res.stderr.contains("falling back to IMDSv1"),
        "the pod's token PUT was expected to time out (hop limit 1) and the SDK to fall \
         back, but: {res:?}; is the sandbox's hop limit above 1?"
    );
    out.detail(&format!(
        "-> token PUT: no answer within {:.2} s; the SDK falls back to IMDSv1",
        std::time::Duration::from_millis(SDK_TOKEN_TIMEOUT_MS).as_secs_f64()
    ));
    if let Some(put) = sb
        .imds_log()
        .iter()
        .rev()
        .find(|r| r.method == "PUT" && r.hop_limit.is_some())
    {
        out.detail(&format!(
            "   (IMDS did answer {} -- with IP TTL {}, which the extra hop to the pod kills)",
            put.status,
            put.hop_limit.unwrap_or_default()
        ));
    }
    // stderr: the fallback notice, then the bodies (the role, the credentials).
    let role = res
        .stderr
        .lines()
        .skip_while(|l| !l.contains("falling back"))
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_owned();
    ensure!(!role.is_empty(), "no role name in the fallback's answer");
    out.detail(&format!("-> {}  {role}", status_at(&res.statuses, 0)));
    out.detail(&format!(
        "-> {}  the role's credentials, over IMDSv1, {waited:.1} s late",
        status_at(&res.statuses, 1)
    ));
    Ok(())
}

fn gcp_probe(sb: &Sandbox, place: &Place, out: &mut Narrator) -> Result<()> {
    curl(
        sb,
        place,
        out,
        &["Metadata-Flavor: Google"],
        "/computeMetadata/v1/instance/id",
        404,
    )?;
    out.detail("   (not GCP: IMDS has no such path)");
    Ok(())
}
