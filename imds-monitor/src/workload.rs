//! What a cgroup path says about its owner: container id and runtime, pod
//! UID, systemd unit, and the one stable key a person would search for.

/// Facts read from a cgroup v2 path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub container_id: Option<String>,
    pub container_runtime: Option<&'static str>,
    pub pod_uid: Option<String>,
    pub systemd_unit: Option<String>,
}

/// `imds.workload.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// `namespace/OwnerKind/owner`, from the runtime's Kubernetes labels.
    K8sOwner,
    /// The ECS task definition family, from ECS's container labels.
    EcsTaskFamily,
    /// The image repository, from the runtime.
    Image,
    Pod,
    Container,
    Unit,
    Process,
}

impl WorkloadKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::K8sOwner => "k8s_owner",
            Self::EcsTaskFamily => "ecs_task_family",
            Self::Image => "image",
            Self::Pod => "pod",
            Self::Container => "container",
            Self::Unit => "unit",
            Self::Process => "process",
        }
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Container id and runtime from one path component, for the names Docker,
/// containerd (CRI), CRI-O and Podman give with the systemd and cgroupfs drivers.
fn container_of(component: &str, parent: Option<&str>) -> Option<(String, &'static str)> {
    let scoped = component.strip_suffix(".scope");
    const PREFIXES: [(&str, &str); 5] = [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
        ("containerd-", "containerd"),
    ];
    if let Some(name) = scoped {
        for (prefix, runtime) in PREFIXES {
            if let Some(id) = name.strip_prefix(prefix)
                && is_container_id(id)
            {
                return Some((id.to_owned(), runtime));
            }
        }
    }
    // cgroupfs driver: /docker/<id>, /kubepods/<qos>/pod<uid>/<id>.
    if is_container_id(component) {
        let runtime = match parent {
            Some("docker") => "docker",
            Some("libpod_parent") => "podman",
            _ => "containerd",
        };
        return Some((component.to_owned(), runtime));
    }
    None
}

/// Pod UID from `kubepods-besteffort-pod<uid>.slice` (underscores for dashes)
/// or `pod<uid>` (cgroupfs driver).
fn pod_of(component: &str) -> Option<String> {
    let raw = if let Some(slice) = component.strip_suffix(".slice") {
        slice.rsplit_once("-pod").map(|(_, uid)| uid)?
    } else {
        component.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    let valid = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    valid.then_some(uid)
}

impl Workload {
    /// Reads a cgroup v2 path such as
    /// `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`.
    pub fn from_cgroup_path(path: &str) -> Self {
        let mut workload = Self::default();
        let mut parent = None;
        let mut in_kubepods = false;
        for component in path.split('/').filter(|c| !c.is_empty()) {
            if component.starts_with("kubepods") {
                in_kubepods = true;
            }
            if in_kubepods && workload.pod_uid.is_none() {
                workload.pod_uid = pod_of(component);
            }
            if let Some((id, runtime)) = container_of(component, parent) {
                workload.container_id = Some(id);
                workload.container_runtime = Some(runtime);
            } else if component.ends_with(".service") && workload.container_id.is_none() {
                // The innermost unit: user@1000.service/app.service names app.
                workload.systemd_unit = Some(component.to_owned());
            }
            parent = Some(component);
        }
        workload
    }

    /// The stable key of the owner: the pod (container ids change on
    /// restart), else the container, else the systemd unit; `None` for a
    /// plain process (the caller uses the executable).
    pub fn key(&self) -> Option<(WorkloadKind, &str)> {
        if let Some(uid) = &self.pod_uid {
            Some((WorkloadKind::Pod, uid))
        } else if let Some(id) = &self.container_id {
            Some((WorkloadKind::Container, id))
        } else {
            self.systemd_unit
                .as_deref()
                .map(|u| (WorkloadKind::Unit, u))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f9c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7";
    const UID: &str = "0b7e2f5a-1c3d-4e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn container_and_pod_naming_schemes() {
        let uid_ = UID.replace('-', "_");
        /// (path, runtime, pod uid, unit)
        type Case<'a> = (String, Option<&'a str>, Option<&'a str>, Option<&'a str>);
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            (format!("/system.slice/docker-{ID}.scope"), Some("docker"), None, None),
            (format!("/docker/{ID}"), Some("docker"), None, None),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                Some("containerd"), Some(UID), None),
            (format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"), Some("cri-o"), Some(UID), None),
            (format!("/kubepods/burstable/pod{UID}/{ID}"), Some("containerd"), Some(UID), None),
            (format!("/machine.slice/libpod-{ID}.scope"), Some("podman"), None, None),
            (format!("/imds-sandbox-x/system.slice/docker-{ID}.scope"), Some("docker"), None, None),
            ("/system.slice/cron.service".into(), None, None, Some("cron.service")),
            ("/user.slice/user-1000.slice/user@1000.service/app.slice/web.service".into(), None, None, Some("web.service")),
            ("/".into(), None, None, None),
            ("/system.slice/docker-nothex.scope".into(), None, None, None),
            ("/kubepods.slice/kubepods-podnot-a-uid.slice".into(), None, None, None),
        ];
        for (path, runtime, pod, unit) in cases {
            let w = Workload::from_cgroup_path(&path);
            assert_eq!(w.container_runtime, runtime, "{path}");
            assert_eq!(w.container_id.is_some(), runtime.is_some(), "{path}");
            if runtime.is_some() {
                assert_eq!(w.container_id.as_deref(), Some(ID), "{path}");
            }
            assert_eq!(w.pod_uid.as_deref(), pod, "{path}");
            assert_eq!(w.systemd_unit.as_deref(), unit, "{path}");
        }
    }

    #[test]
    fn workload_key_prefers_pod_then_container_then_unit() {
        let pod = Workload::from_cgroup_path(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        ));
        assert_eq!(pod.key(), Some((WorkloadKind::Pod, UID)));
        let docker = Workload::from_cgroup_path(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(docker.key(), Some((WorkloadKind::Container, ID)));
        let unit = Workload::from_cgroup_path("/system.slice/cloud-init.service");
        assert_eq!(unit.key(), Some((WorkloadKind::Unit, "cloud-init.service")));
        assert_eq!(Workload::from_cgroup_path("/user.slice").key(), None);
    }
}
