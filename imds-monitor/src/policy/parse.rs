//! Policy file (TOML) -> [`Policy`], or the first problem with its line.
//!
//! serde reads the file into `Raw*` structs that keep each value's byte
//! span; the checks below turn spans into line numbers, so a person can go
//! straight to the mistake. A policy that drops packets must never be half
//! understood: any unknown key, class, action or malformed matcher rejects
//! the whole file.

use std::{
    collections::{BTreeMap, HashMap},
    fmt, io,
    ops::Range,
    path::Path,
};

use imds_monitor_common::class::RequestClass;
use serde::Deserialize;
use toml::Spanned;

use super::model::{Action, Exception, Matcher, Origin, Policy};

/// Why a policy is invalid, and where.
#[derive(Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// 1-based; `None` only when the TOML parser gave no position.
    pub line: Option<usize>,
    pub reason: String,
}

/// Why a policy file could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    Unreadable { path: String, error: io::Error },
    Invalid { path: String, error: PolicyError },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable { path, error } => write!(f, "cannot read {path}: {error}"),
            // FILE:LINE: reason, as compilers print it, so editors can jump there.
            Self::Invalid { path, error } => match error.line {
                Some(line) => write!(f, "{path}:{line}: {}", error.reason),
                None => write!(f, "{path}: {}", error.reason),
            },
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads and validates the policy file at `path`.
pub fn load(path: &Path) -> Result<Policy, LoadError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| LoadError::Unreadable {
        path: name.clone(),
        error,
    })?;
    let invalid = |error| LoadError::Invalid {
        path: name.clone(),
        error,
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let before = &bytes[..e.valid_up_to()];
        invalid(PolicyError {
            line: Some(before.iter().filter(|&&b| b == b'\n').count() + 1),
            reason: "not UTF-8 (TOML files are UTF-8 text)".into(),
        })
    })?;
    parse(text).map_err(invalid)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    actions: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default, rename = "exception")]
    exceptions: Vec<Spanned<RawException>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawException {
    name: Option<Spanned<String>>,
    cgroup_prefix: Option<Spanned<String>>,
    container_id: Option<Spanned<String>>,
    systemd_unit: Option<Spanned<String>>,
    executable: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    k8s_namespace: Option<Spanned<String>>,
    k8s_owner: Option<Spanned<String>>,
    ecs_task_family: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
}

/// Validates a policy file's text. An empty file is the default policy.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    let at = |span: Range<usize>, reason: String| PolicyError {
        line: Some(line_of(text, span.start)),
        reason,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| PolicyError {
        line: e.span().map(|s| line_of(text, s.start)),
        // serde says "field"; the file's author wrote a "key".
        reason: e
            .message()
            .trim_end()
            .replace("unknown field", "unknown key"),
    })?;

    let mut policy = Policy::default();
    // The map is sorted by name; walk it in file order so the first error
    // reported is the first in the file.
    let mut actions: Vec<_> = raw.actions.into_iter().collect();
    actions.sort_by_key(|(key, _)| key.span().start);
    for (key, value) in actions {
        let Some(class) = RequestClass::ALL
            .into_iter()
            .find(|c| c.as_str() == key.as_ref())
        else {
            let names = RequestClass::ALL.map(RequestClass::as_str).join(", ");
            return Err(at(
                key.span(),
                format!(
                    "unknown class `{}` in [actions]; the classes are {names}",
                    key.as_ref()
                ),
            ));
        };
        let action = action_of(&value).map_err(|r| at(value.span(), r))?;
        Policy::check_allowed(class, action).map_err(|why| {
            at(
                value.span(),
                format!(
                    "`{}` is not allowed for {}: {why}",
                    action.as_str(),
                    class.as_str()
                ),
            )
        })?;
        policy.actions[class as usize] = action;
        policy.origins[class as usize] = Origin::File {
            line: line_of(text, key.span().start),
        };
    }

    let mut names: HashMap<String, usize> = HashMap::new();
    for raw in raw.exceptions {
        let line = line_of(text, raw.span().start);
        let raw = raw.into_inner();
        let Some(name) = raw.name else {
            return Err(PolicyError {
                line: Some(line),
                reason: "exception has no `name`; each needs a unique one (events name the \
                         exception that applied)"
                    .into(),
            });
        };
        check_name(name.as_ref()).map_err(|r| at(name.span(), r))?;
        let name_line = line_of(text, name.span().start);
        if let Some(first) = names.insert(name.as_ref().clone(), name_line) {
            return Err(at(
                name.span(),
                format!(
                    "exception name `{}` is already used at line {first}; names must be unique",
                    name.as_ref()
                ),
            ));
        }
        let name = name.into_inner();

        // In file order, so the first bad one is reported and `policy check`
        // shows them as written.
        let mut given: Vec<(Spanned<String>, MatcherCheck)> = [
            (raw.cgroup_prefix, cgroup_prefix as MatcherCheck),
            (raw.container_id, container_id),
            (raw.systemd_unit, systemd_unit),
            (raw.executable, executable),
            (raw.image, image),
            (raw.k8s_namespace, k8s_namespace),
            (raw.k8s_owner, k8s_owner),
            (raw.ecs_task_family, ecs_task_family),
        ]
        .into_iter()
        .filter_map(|(value, check)| Some((value?, check)))
        .collect();
        given.sort_by_key(|(value, _)| value.span().start);
        let mut matchers = Vec::new();
        for (value, check) in given {
            matchers.push(check(value.as_ref()).map_err(|r| at(value.span(), r))?);
        }
        if matchers.is_empty() {
            return Err(PolicyError {
                line: Some(line),
                reason: format!(
                    "exception `{name}` has no matcher; give one or more of cgroup_prefix, \
                     container_id, systemd_unit, executable, image, k8s_namespace, k8s_owner, \
                     ecs_task_family"
                ),
            });
        }

        let action = match raw.action {
            None => Action::Alert,
            Some(value) => match Action::from_name(value.as_ref()) {
                Some(action @ (Action::Allow | Action::Alert)) => action,
                Some(Action::Drop) => {
                    return Err(at(
                        value.span(),
                        "an exception's action is \"allow\" or \"alert\": exceptions only relax \
                         the class actions; to drop, set the class in [actions]"
                            .into(),
                    ));
                }
                None => {
                    return Err(at(
                        value.span(),
                        format!(
                            "unknown action `{}`; an exception's action is \"allow\" or \"alert\"",
                            value.as_ref()
                        ),
                    ));
                }
            },
        };
        policy.exceptions.push(Exception {
            name,
            matchers,
            action,
            line,
        });
    }
    Ok(policy)
}

/// Validates one matcher's value and builds it.
type MatcherCheck = fn(&str) -> Result<Matcher, String>;

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    before.iter().filter(|&&b| b == b'\n').count() + 1
}

/// A class's action.
fn action_of(value: &Spanned<String>) -> Result<Action, String> {
    Action::from_name(value.as_ref()).ok_or_else(|| {
        format!(
            "unknown action `{}`; use \"allow\", \"alert\" or \"drop\"",
            value.as_ref()
        )
    })
}

/// Names become keywords in events (`imds.policy.rule`), so keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if name.is_empty() || name.len() > 64 || !name.bytes().all(plain) {
        return Err(format!(
            "exception name `{name}`: use 1 to 64 letters, digits, `-`, `_` or `.` (events \
             carry it as a keyword)"
        ));
    }
    Ok(())
}

/// The components of an absolute path; `.`, `..` and empty ones are refused
/// because the kernel's paths never contain them, so such a matcher could
/// never match. Empty components are tolerated only where `lenient`.
fn components<'a>(key: &str, path: &'a str, lenient: bool) -> Result<Vec<&'a str>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!(
            "{key} `{path}` must be an absolute path (start with `/`)"
        ));
    };
    let mut out = Vec::new();
    for component in rest.split('/') {
        match component {
            "" if lenient => {}
            "" | "." | ".." => {
                return Err(format!(
                    "{key} `{path}` has an empty, `.` or `..` component; the kernel reports \
                     canonical paths, so it would never match"
                ));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn cgroup_prefix(path: &str) -> Result<Matcher, String> {
    let parts = components("cgroup_prefix", path, true)?;
    if parts.is_empty() {
        return Err(
            "cgroup_prefix `/` matches every workload; set the class actions in [actions] instead"
                .into(),
        );
    }
    Ok(Matcher::CgroupPrefix(format!("/{}", parts.join("/"))))
}

fn container_id(id: &str) -> Result<Matcher, String> {
    let hex = id.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex || !(12..=64).contains(&id.len()) {
        return Err(format!(
            "container_id `{id}` must be 12 to 64 hex digits (the full id, or the short id \
             `docker ps` shows)"
        ));
    }
    Ok(Matcher::ContainerId(id.to_ascii_lowercase()))
}

fn systemd_unit(unit: &str) -> Result<Matcher, String> {
    // Only `.service` components of the cgroup path name a request's unit
    // (crate::workload); anything else would silently never match.
    let valid = unit.len() > ".service".len() && unit.ends_with(".service") && !unit.contains('/');
    if !valid {
        return Err(format!(
            "systemd_unit `{unit}` must be a service unit such as `cron.service`; for a scope or \
             slice use cgroup_prefix"
        ));
    }
    Ok(Matcher::SystemdUnit(unit.to_owned()))
}

fn executable(path: &str) -> Result<Matcher, String> {
    components("executable", path, false)?;
    Ok(Matcher::Executable(path.to_owned()))
}

fn image(reference: &str) -> Result<Matcher, String> {
    let parsed = crate::runtime::Image::parse(reference);
    let repo_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c);
    let digest_ok = parsed.digests.iter().all(|d| {
        d.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty() && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        })
    });
    let tag_ok = parsed.tag.as_deref().is_none_or(|t| {
        !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    });
    if parsed.name.is_empty() || !parsed.name.chars().all(repo_ok) || !tag_ok || !digest_ok {
        return Err(format!(
            "image `{reference}` must be a repository with an optional tag or digest, as in \
             `container.image.name`: `payments-api`, `registry.example/shop/api:1.4`, \
             `api@sha256:<64 hex>` (repositories are lower case)"
        ));
    }
    // Stored as the events name it, so `docker.io/library/nginx` is `nginx`.
    let mut normal = parsed.name;
    if let Some(tag) = parsed.tag {
        normal = format!("{normal}:{tag}");
    }
    if let Some(digest) = parsed.digests.first() {
        normal = format!("{normal}@{digest}");
    }
    Ok(Matcher::Image(normal))
}

/// A DNS label (RFC 1123), as Kubernetes names namespaces.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn k8s_namespace(namespace: &str) -> Result<Matcher, String> {
    if !dns_label(namespace) {
        return Err(format!(
            "k8s_namespace `{namespace}` must be a Kubernetes namespace name (lower case letters, \
             digits and `-`, at most 63)"
        ));
    }
    Ok(Matcher::K8sNamespace(namespace.to_owned()))
}

fn k8s_owner(owner: &str) -> Result<Matcher, String> {
    const KINDS: [&str; 6] = [
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "CronJob",
        "Pod",
    ];
    let (kind, name) = match owner.split_once('/') {
        Some((kind, name)) => (Some(kind), name),
        None => (None, owner),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let kind = match kind {
        None => None,
        Some(kind) => match KINDS.iter().find(|k| k.eq_ignore_ascii_case(kind)) {
            Some(k) => Some(*k),
            None => {
                return Err(format!(
                    "k8s_owner `{owner}`: unknown kind `{kind}`; use one of {} (or the name alone)",
                    KINDS.join(", ")
                ));
            }
        },
    };
    if !name_ok {
        return Err(format!(
            "k8s_owner `{owner}` must be `Kind/name` or `name`, as in `Deployment/payments`"
        ));
    }
    Ok(Matcher::K8sOwner(match kind {
        Some(kind) => format!("{kind}/{name}"),
        None => name.to_owned(),
    }))
}

fn ecs_task_family(family: &str) -> Result<Matcher, String> {
    let ok = !family.is_empty()
        && family.len() <= 255
        && family
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(format!(
            "ecs_task_family `{family}` must be an ECS task definition family (letters, digits, \
             `-` and `_`, at most 255)"
        ));
    }
    Ok(Matcher::EcsTaskFamily(family.to_owned()))
}
