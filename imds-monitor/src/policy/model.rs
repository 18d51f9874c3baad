//! What a policy file says, once parsed and validated: an action per request
//! class and the exceptions, in file order. Every value here has passed
//! [`super::parse`]'s checks, so deciding never fails.

use std::fmt;

use imds_monitor_common::class::RequestClass;

/// What happens to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Let it through; an ordinary event.
    Allow,
    /// Let it through; the event is an alert.
    Alert,
    /// Drop its packets in the kernel; the event is an alert.
    Drop,
}

impl Action {
    pub const ALL: [Self; 3] = [Self::Allow, Self::Alert, Self::Drop];

    /// The name used in policy files.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Alert => "alert",
            Self::Drop => "drop",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a class's action came from, for `policy check` and the rule name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// Set in `[actions]` at this 1-based line.
    File {
        line: usize,
    },
}

/// One condition on the sender. An exception matches when all of its matchers do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    /// Whole leading components of the cgroup path, normalised to `/a/b`
    /// (never `/` alone: that would match everything).
    CgroupPrefix(String),
    /// Leading 12 to 64 hex digits of the container id, lower case.
    ContainerId(String),
    /// A unit name as found in the cgroup path, e.g. `cron.service`.
    SystemdUnit(String),
    /// The absolute, canonical path of the program.
    Executable(String),
    /// `repository[:tag][@digest]` of a container's image, as its runtime
    /// names it (Docker Hub's `docker.io/library/` left out).
    Image(String),
    /// A Kubernetes pod's namespace (the runtime's kubelet labels).
    K8sNamespace(String),
    /// A Kubernetes pod's controller: `Kind/name` or `name`.
    K8sOwner(String),
    /// An ECS task definition family (ECS agent's container labels).
    EcsTaskFamily(String),
}

impl Matcher {
    /// The key that sets it in a policy file.
    pub const fn key(&self) -> &'static str {
        match self {
            Self::CgroupPrefix(_) => "cgroup_prefix",
            Self::ContainerId(_) => "container_id",
            Self::SystemdUnit(_) => "systemd_unit",
            Self::Executable(_) => "executable",
            Self::Image(_) => "image",
            Self::K8sNamespace(_) => "k8s_namespace",
            Self::K8sOwner(_) => "k8s_owner",
            Self::EcsTaskFamily(_) => "ecs_task_family",
        }
    }

    /// Matched against what the container runtime tells about a container:
    /// the daemon resolves these to cgroup ids (see `compile::runtime_bits`).
    pub const fn is_runtime(&self) -> bool {
        matches!(
            self,
            Self::Image(_) | Self::K8sNamespace(_) | Self::K8sOwner(_) | Self::EcsTaskFamily(_)
        )
    }

    pub fn value(&self) -> &str {
        match self {
            Self::CgroupPrefix(v)
            | Self::ContainerId(v)
            | Self::SystemdUnit(v)
            | Self::Executable(v)
            | Self::Image(v)
            | Self::K8sNamespace(v)
            | Self::K8sOwner(v)
            | Self::EcsTaskFamily(v) => v,
        }
    }
}

/// A workload whose requests get `action` instead of their class's action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exception {
    /// Unique in the file; events name it as `exception:<name>`.
    pub name: String,
    /// At least one; all must match.
    pub matchers: Vec<Matcher>,
    /// `Allow` or `Alert`: an exception only relaxes (see [`super::decide`]).
    pub action: Action,
    /// 1-based line of its `[[exception]]` header.
    pub line: usize,
}

/// A whole policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Indexed by `RequestClass as usize`.
    pub actions: [Action; RequestClass::COUNT],
    /// Indexed like `actions`.
    pub origins: [Origin; RequestClass::COUNT],
    /// In file order: the first that matches wins.
    pub exceptions: Vec<Exception>,
}

impl Policy {
    /// Enforce mode's defaults: IMDSv1 reads are dropped, and so is what the
    /// classifier cannot judge (it fails closed); nothing else is touched.
    pub const fn default_action(class: RequestClass) -> Action {
        match class {
            RequestClass::V1Get | RequestClass::Incomplete => Action::Drop,
            _ => Action::Allow,
        }
    }

    /// Whether `action` may be set for `class`, and if not, why.
    pub fn check_allowed(class: RequestClass, action: Action) -> Result<(), &'static str> {
        if class == RequestClass::Incomplete && action != Action::Drop {
            return Err(
                "enforce mode fails closed: a request the classifier could not judge (its head \
                 too long, a connection it lost track of, an IP fragment, ...) is always dropped \
                 and reported with the reason; to let a workload through, give it an \
                 [[exception]]",
            );
        }
        if action != Action::Drop {
            return Ok(());
        }
        match class {
            RequestClass::V1Get | RequestClass::Invalid => Ok(()),
            RequestClass::V2TokenPut | RequestClass::V2Get => Err(
                "dropping IMDSv2 requests would break the workloads that already migrated to \
                 IMDSv2; use \"alert\" to watch them",
            ),
            RequestClass::OtherCloud => Err(
                "other_cloud requests are GCP, Azure or Oracle clients probing the address, not \
                 IMDSv1 use; dropping them makes those clients wait for a timeout instead of \
                 getting IMDS's quick refusal",
            ),
            RequestClass::Incomplete => Ok(()),
        }
    }

    pub const fn action(&self, class: RequestClass) -> Action {
        self.actions[class as usize]
    }

    pub const fn origin(&self, class: RequestClass) -> Origin {
        self.origins[class as usize]
    }
}

impl Default for Policy {
    /// What an empty file means.
    fn default() -> Self {
        Self {
            actions: RequestClass::ALL.map(Self::default_action),
            origins: [Origin::Default; RequestClass::COUNT],
            exceptions: Vec::new(),
        }
    }
}
