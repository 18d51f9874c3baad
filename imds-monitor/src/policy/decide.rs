//! The one place that says what a policy does with a request: pure, so the
//! daemon, `policy check` and the tests agree.

use std::fmt;

use imds_monitor_common::class::RequestClass;

use super::model::{Action, Matcher, Origin, Policy};
use crate::runtime::{ContainerMeta, Image};

/// What is known about a request's sender; `None` when attribution could not
/// tell (a matcher on an unknown fact does not match).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadFacts<'a> {
    /// Relative to the cgroup2 mount, as in `imds.cgroup.path`.
    pub cgroup_path: Option<&'a str>,
    pub container_id: Option<&'a str>,
    pub systemd_unit: Option<&'a str>,
    pub executable: Option<&'a str>,
    /// What the container runtime told about the sender's container.
    pub container: Option<&'a ContainerMeta>,
}

/// Which rule decided; events carry it as `imds.policy.rule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleName<'p> {
    /// The class's action was not set in the file.
    Default,
    /// `[actions]` set the class's action.
    Actions(RequestClass),
    /// This exception matched the sender.
    Exception(&'p str),
}

impl fmt::Display for RuleName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Actions(class) => write!(f, "actions.{}", class.as_str()),
            Self::Exception(name) => write!(f, "exception:{name}"),
        }
    }
}

/// The action for one request of `class` from the workload `facts` describes.
///
/// Exceptions only apply to requests the class actions would alert on or
/// drop: an allowed request stays allowed, so a legacy agent that has since
/// moved to IMDSv2 raises nothing. Among exceptions, the first in file order
/// whose matchers all match wins. The kernel finds that exception itself
/// (see `compile`); this is the reference the tests hold it to.
#[cfg(test)]
pub fn decide<'p>(
    policy: &'p Policy,
    class: RequestClass,
    facts: &WorkloadFacts<'_>,
) -> (Action, RuleName<'p>) {
    let exception = policy
        .exceptions
        .iter()
        .position(|e| e.matchers.iter().all(|m| m.matches(facts)));
    decide_with_exception(policy, class, exception)
}

/// The decision when the kernel already found the sender's exception
/// (`exception`: its index in the policy, from the event): the same rules
/// as [`decide`], without re-matching facts userspace may see differently.
pub fn decide_with_exception<'p>(
    policy: &'p Policy,
    class: RequestClass,
    exception: Option<usize>,
) -> (Action, RuleName<'p>) {
    let action = policy.action(class);
    if action != Action::Allow
        && let Some(exception) = exception.and_then(|i| policy.exceptions.get(i))
    {
        return (exception.action, RuleName::Exception(&exception.name));
    }
    let rule = match policy.origin(class) {
        Origin::Default => RuleName::Default,
        Origin::File { .. } => RuleName::Actions(class),
    };
    (action, rule)
}

impl Matcher {
    pub fn matches(&self, facts: &WorkloadFacts<'_>) -> bool {
        match self {
            Self::CgroupPrefix(prefix) => facts
                .cgroup_path
                .is_some_and(|path| is_path_prefix(prefix, path)),
            Self::ContainerId(prefix) => facts.container_id.is_some_and(|id| {
                // Ids come from cgroup names: lower case in practice, but
                // nothing guarantees it.
                id.len() >= prefix.len()
                    && id.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            }),
            Self::SystemdUnit(unit) => facts.systemd_unit == Some(unit.as_str()),
            Self::Executable(exe) => facts.executable == Some(exe.as_str()),
            Self::Image(reference) => facts
                .container
                .and_then(|c| c.image.as_ref())
                .is_some_and(|have| image_matches(reference, have)),
            Self::K8sNamespace(namespace) => facts
                .container
                .and_then(|c| c.kubernetes.as_ref())
                .is_some_and(|k| &k.namespace == namespace),
            Self::K8sOwner(owner) => facts
                .container
                .and_then(|c| c.kubernetes.as_ref())
                .is_some_and(|k| match owner.split_once('/') {
                    Some((kind, name)) => {
                        k.owner_kind.eq_ignore_ascii_case(kind) && k.owner_name == name
                    }
                    None => &k.owner_name == owner,
                }),
            Self::EcsTaskFamily(family) => facts
                .container
                .and_then(|c| c.ecs.as_ref())
                .is_some_and(|e| &e.task_family == family),
        }
    }
}

/// `repo` matches every tag and digest of it; `repo:tag` that tag;
/// `repo@digest` an image with that digest (repo digest or image id).
fn image_matches(reference: &str, have: &Image) -> bool {
    let want = Image::parse(reference);
    want.name == have.name
        && want
            .tag
            .as_ref()
            .is_none_or(|t| have.tag.as_ref() == Some(t))
        && want.digests.iter().all(|d| have.digests.contains(d))
}

/// Whole components only: `/a/b` is a prefix of `/a/b` and `/a/b/c`, not of `/a/bc`.
fn is_path_prefix(prefix: &str, path: &str) -> bool {
    let mut path = path.split('/').filter(|c| !c.is_empty());
    prefix
        .split('/')
        .filter(|c| !c.is_empty())
        .all(|want| path.next() == Some(want))
}
