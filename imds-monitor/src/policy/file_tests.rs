//! Policy files as people write them: every rejection names its line, and
//! decide() follows the documented order.

use imds_monitor_common::class::RequestClass::{self, *};

use super::{
    check::render,
    decide::{RuleName, WorkloadFacts, decide},
    model::{Action, Exception, Matcher, Origin, Policy},
    parse::parse,
};

const ID: &str = "4f9c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";

#[test]
fn rejections_name_the_line_and_the_reason() {
    // (what, file, line, part of the reason)
    #[rustfmt::skip]
    let cases: &[(&str, &str, usize, &str)] = &[
        ("toml syntax", "# policy\n[actions\n", 2, "expected `]`"),
        ("duplicate toml key", "[actions]\nv1_get = \"drop\"\nv1_get = \"alert\"\n", 3, "duplicate key"),
        ("unknown top-level key", "\n\nmode = \"enforce\"\n", 3, "unknown key `mode`"),
        ("actions not a table", "actions = \"drop\"\n", 1, "invalid type"),
        ("action not a string", "[actions]\nv1_get = 1\n", 2, "invalid type"),
        ("unknown class", "[actions]\nv1_get = \"drop\"\n# v3!\nv3_get = \"drop\"\n", 4, "unknown class `v3_get` in [actions]; the classes are v1_get, v2_token_put"),
        ("class name case", "[actions]\nV1_GET = \"drop\"\n", 2, "unknown class `V1_GET`"),
        ("unknown action", "[actions]\n\ninvalid = \"block\"\n", 3, "unknown action `block`; use \"allow\", \"alert\" or \"drop\""),
        ("first error in file order", "[actions]\nv2_get = \"nope\"\nincomplete = \"nope\"\n", 2, "unknown action `nope`"),
        ("drop v2_get", "[actions]\nv2_get = \"drop\"\n", 2, "`drop` is not allowed for v2_get: dropping IMDSv2 requests would break the workloads that already migrated"),
        ("drop v2_token_put", "[actions]\nv2_token_put = \"drop\"\n", 2, "not allowed for v2_token_put: dropping IMDSv2"),
        ("drop other_cloud", "[actions]\nother_cloud = \"drop\"\n", 2, "not allowed for other_cloud: other_cloud requests are GCP"),
        ("allow incomplete", "[actions]\nincomplete = \"allow\"\n", 2, "`allow` is not allowed for incomplete: enforce mode fails closed"),
        ("alert incomplete", "[actions]\n\nincomplete = \"alert\"\n", 3, "not allowed for incomplete: enforce mode fails closed"),
        ("unknown key in exception", "[[exception]]\nname = \"a\"\ncgroup_prefix = \"/a.slice\"\nunit = \"cron.service\"\n", 4, "unknown key `unit`, expected one of `name`, `cgroup_prefix`"),
        ("exception without name", "[actions]\nv1_get = \"drop\"\n\n[[exception]]\ncgroup_prefix = \"/a.slice\"\n", 4, "exception has no `name`"),
        ("name not a string", "[[exception]]\nname = 7\n", 2, "invalid type: integer `7`, expected a string"),
        ("name with a space", "[[exception]]\nname = \"legacy agent\"\nexecutable = \"/bin/x\"\n", 2, "exception name `legacy agent`: use 1 to 64 letters"),
        ("empty name", "[[exception]]\nname = \"\"\nexecutable = \"/bin/x\"\n", 2, "exception name ``"),
        ("duplicate name", "[[exception]]\nname = \"a\"\nexecutable = \"/bin/x\"\n\n[[exception]]\nname = \"a\"\nexecutable = \"/bin/y\"\n", 6, "exception name `a` is already used at line 2"),
        ("no matcher", "[[exception]]\nname = \"a\"\naction = \"allow\"\n", 1, "exception `a` has no matcher; give one or more of cgroup_prefix"),
        ("no matcher, later exception", "[[exception]]\nname = \"a\"\nexecutable = \"/bin/x\"\n[[exception]]\nname = \"b\"\n", 4, "exception `b` has no matcher"),
        ("relative executable", "[[exception]]\nname = \"a\"\n\nexecutable = \"bin/agent\"\n", 4, "executable `bin/agent` must be an absolute path"),
        ("executable with ..", "[[exception]]\nname = \"a\"\nexecutable = \"/opt/../bin/agent\"\n", 3, "has an empty, `.` or `..` component"),
        ("executable directory", "[[exception]]\nname = \"a\"\nexecutable = \"/opt/bin/\"\n", 3, "has an empty, `.` or `..` component"),
        ("relative cgroup prefix", "[[exception]]\nname = \"a\"\ncgroup_prefix = \"system.slice/a.service\"\n", 3, "cgroup_prefix `system.slice/a.service` must be an absolute path (start with `/`)"),
        ("root cgroup prefix", "[[exception]]\nname = \"a\"\ncgroup_prefix = \"/\"\n", 3, "matches every workload"),
        ("cgroup prefix with ..", "[[exception]]\nname = \"a\"\ncgroup_prefix = \"/system.slice/..\"\n", 3, "`..` component"),
        ("container id not hex", "[[exception]]\nname = \"a\"\ncontainer_id = \"4f9c1a2b3c4z\"\n", 3, "container_id `4f9c1a2b3c4z` must be 12 to 64 hex digits"),
        ("container id too short", "[[exception]]\nname = \"a\"\ncontainer_id = \"4f9c1a2b3c4\"\n", 3, "must be 12 to 64 hex digits"),
        ("container id too long", &format!("[[exception]]\nname = \"a\"\ncontainer_id = \"{ID}0\"\n"), 3, "must be 12 to 64 hex digits"),
        ("unit that is not a service", "[[exception]]\nname = \"a\"\nsystemd_unit = \"cron\"\n", 3, "systemd_unit `cron` must be a service unit"),
        ("unit that is a scope", "[[exception]]\nname = \"a\"\nsystemd_unit = \"session-1.scope\"\n", 3, "for a scope or slice use cgroup_prefix"),
        ("exception drops", "[[exception]]\nname = \"a\"\nexecutable = \"/bin/x\"\naction = \"drop\"\n", 4, "exceptions only relax the class actions"),
        ("exception unknown action", "[[exception]]\nname = \"a\"\nexecutable = \"/bin/x\"\naction = \"deny\"\n", 4, "unknown action `deny`; an exception's action is \"allow\" or \"alert\""),
        ("inline exception", "exception = [\n  { name = \"a\", executable = \"/bin/x\" },\n  { name = \"b\" },\n]\n", 3, "exception `b` has no matcher"),
        ("matchers checked in file order", "[[exception]]\nname = \"a\"\nsystemd_unit = \"cron\"\ncgroup_prefix = \"a\"\n", 3, "systemd_unit `cron`"),
        ("multi-line string before", "# \"\"\"\n[[exception]]\nname = \"a\"\nexecutable = '''\n/bin/x'''\ncontainer_id = \"xyz\"\n", 6, "container_id `xyz`"),
    ];
    for (what, text, line, reason) in cases {
        let err = parse(text).expect_err(what);
        assert_eq!(err.line, Some(*line), "{what}: {err:?}");
        assert!(
            err.reason.contains(reason),
            "{what}: {:?} lacks {reason:?}",
            err.reason
        );
    }
}

#[test]
fn an_empty_file_is_the_default_policy() {
    let defaults = Policy::default();
    for text in ["", "\n\n", "# nothing yet\n", "[actions]\n"] {
        assert_eq!(parse(text), Ok(defaults.clone()), "{text:?}");
    }
    assert_eq!(defaults.action(V1Get), Action::Drop);
    assert_eq!(defaults.action(Incomplete), Action::Drop);
    for class in RequestClass::ALL
        .into_iter()
        .filter(|&c| c != V1Get && c != Incomplete)
    {
        assert_eq!(defaults.action(class), Action::Allow, "{class:?}");
    }
    assert!(defaults.origins.iter().all(|o| *o == Origin::Default));
}

const EXAMPLE: &str = r#"# action per class
[actions]
v1_get = "drop"
invalid = "alert"
other_cloud = "allow"

[[exception]]
name = "legacy-backup-agent"
cgroup_prefix = "/system.slice/legacy-backup.service/"
action = "alert"

[[exception]]
name = "vendor-agent"
container_id = "4F9C1A2B3C4D"
executable = "/opt/vendor/bin/agent"
action = "allow"

[[exception]]
name = "cron"
systemd_unit = "cron.service"
"#;

#[test]
fn the_documented_example_parses_to_what_it_says() {
    let policy = parse(EXAMPLE).expect("valid");
    let actions = [
        Action::Drop,
        Action::Allow,
        Action::Allow,
        Action::Alert,
        Action::Allow,
        Action::Drop,
    ];
    assert_eq!(policy.actions, actions);
    let origins = [
        Origin::File { line: 3 },
        Origin::Default,
        Origin::Default,
        Origin::File { line: 4 },
        Origin::File { line: 5 },
        Origin::Default,
    ];
    assert_eq!(policy.origins, origins);
    assert_eq!(
        policy.exceptions,
        vec![
            Exception {
                name: "legacy-backup-agent".into(),
                // Normalised: no trailing slash.
                matchers: vec![Matcher::CgroupPrefix(
                    "/system.slice/legacy-backup.service".into()
                )],
                action: Action::Alert,
                line: 7,
            },
            Exception {
                name: "vendor-agent".into(),
                matchers: vec![
                    Matcher::ContainerId("4f9c1a2b3c4d".into()),
                    Matcher::Executable("/opt/vendor/bin/agent".into()),
                ],
                action: Action::Allow,
                line: 12,
            },
            Exception {
                name: "cron".into(),
                matchers: vec![Matcher::SystemdUnit("cron.service".into())],
                // The default for exceptions.
                action: Action::Alert,
                line: 18,
            },
        ]
    );
}

fn facts<'a>(
    cgroup_path: Option<&'a str>,
    container_id: Option<&'a str>,
    systemd_unit: Option<&'a str>,
    executable: Option<&'a str>,
) -> WorkloadFacts<'a> {
    WorkloadFacts {
        cgroup_path,
        container_id,
        systemd_unit,
        executable,
        container: None,
    }
}

#[test]
fn decide_follows_classes_then_first_matching_exception() {
    let policy = parse(EXAMPLE).expect("valid");
    let upper = ID.to_ascii_uppercase();
    let other = ID.replace("4f9c", "0000");
    let nobody = WorkloadFacts::default();
    let backup = facts(
        Some("/system.slice/legacy-backup.service"),
        None,
        None,
        None,
    );
    let vendor = facts(
        Some("/system.slice/docker-x.scope"),
        Some(ID),
        None,
        Some("/opt/vendor/bin/agent"),
    );
    // (what, class, sender, action, rule)
    #[rustfmt::skip]
    let cases: Vec<(&str, RequestClass, WorkloadFacts, Action, &str)> = vec![
        ("v1 from anyone", V1Get, nobody, Action::Drop, "actions.v1_get"),
        ("v1 from the unit's cgroup", V1Get, backup, Action::Alert, "exception:legacy-backup-agent"),
        ("v1 from below the unit", V1Get, facts(Some("/system.slice/legacy-backup.service/sub"), None, None, None), Action::Alert, "exception:legacy-backup-agent"),
        ("whole components only", V1Get, facts(Some("/system.slice/legacy-backup.service2"), None, None, None), Action::Drop, "actions.v1_get"),
        ("a parent is no match", V1Get, facts(Some("/system.slice"), None, None, None), Action::Drop, "actions.v1_get"),
        ("all matchers match", V1Get, vendor, Action::Allow, "exception:vendor-agent"),
        ("container id in upper case", V1Get, facts(None, Some(&upper), None, Some("/opt/vendor/bin/agent")), Action::Allow, "exception:vendor-agent"),
        ("only the container matches", V1Get, facts(None, Some(ID), None, Some("/usr/bin/curl")), Action::Drop, "actions.v1_get"),
        ("only the executable matches", V1Get, facts(None, None, None, Some("/opt/vendor/bin/agent")), Action::Drop, "actions.v1_get"),
        ("another container", V1Get, facts(None, Some(&other), None, Some("/opt/vendor/bin/agent")), Action::Drop, "actions.v1_get"),
        ("short container id fact", V1Get, facts(None, Some("4f9c1a"), None, Some("/opt/vendor/bin/agent")), Action::Drop, "actions.v1_get"),
        ("unit matches exactly", V1Get, facts(None, None, Some("cron.service"), None), Action::Alert, "exception:cron"),
        ("unit is no prefix", V1Get, facts(None, None, Some("cron.service2"), None), Action::Drop, "actions.v1_get"),
        ("first match wins", V1Get, facts(Some("/system.slice/legacy-backup.service"), None, Some("cron.service"), None), Action::Alert, "exception:legacy-backup-agent"),
        ("exceptions relax alerts too", Invalid, vendor, Action::Allow, "exception:vendor-agent"),
        ("invalid from anyone", Invalid, nobody, Action::Alert, "actions.invalid"),
        ("allowed stays allowed", V2Get, backup, Action::Allow, "default"),
        ("allowed stays allowed, set in file", OtherCloud, backup, Action::Allow, "actions.other_cloud"),
        ("unjudged fails closed by default", Incomplete, nobody, Action::Drop, "default"),
        ("exceptions cover unjudged requests too", Incomplete, vendor, Action::Allow, "exception:vendor-agent"),
        ("token put", V2TokenPut, vendor, Action::Allow, "default"),
    ];
    for (what, class, sender, action, rule) in cases {
        let (got, name) = decide(&policy, class, &sender);
        assert_eq!((got, name.to_string().as_str()), (action, rule), "{what}");
    }
}

#[test]
fn decide_with_the_defaults() {
    let policy = Policy::default();
    let sender = facts(
        Some("/system.slice/cron.service"),
        None,
        Some("cron.service"),
        None,
    );
    assert_eq!(
        decide(&policy, V1Get, &sender),
        (Action::Drop, RuleName::Default)
    );
    assert_eq!(
        decide(&policy, V2Get, &sender),
        (Action::Allow, RuleName::Default)
    );
}

#[test]
fn check_says_when_no_exception_can_apply() {
    let text =
        "[actions]\nv1_get = \"allow\"\n[[exception]]\nname = \"a\"\nexecutable = \"/bin/x\"\n";
    let out = render("p.toml", &parse(text).expect("valid"));
    assert!(
        out.contains("  v1_get        allow  file, line 2\n"),
        "{out}"
    );
    assert!(out.contains("  1. a (line 3): alert\n"), "{out}");
    assert!(
        out.ends_with("\nnote: every class but incomplete is allowed, so the exceptions only let requests the classifier could not judge through\n"),
        "{out}"
    );
    let out = render("p.toml", &parse(EXAMPLE).expect("valid"));
    assert!(!out.contains("note:"), "{out}");
}
