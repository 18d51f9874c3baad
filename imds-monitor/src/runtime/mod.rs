//! Container metadata from the runtimes' own APIs: name, image, Kubernetes
//! pod and owner, ECS task family. A container is looked up once, in the
//! background, and cached; the event path only reads the cache, so an event
//! carries what is known and says so (`imds.enrichment`).
//!
//! - Docker: the Engine API on docker.sock (HTTP/1.1, [`http`]); ECS's agent
//!   labels its containers `com.amazonaws.ecs.*` there.
//! - containerd: its gRPC API ([`containerd`]), namespace `k8s.io` (where
//!   the CRI plugin keeps kubelet's containers, labelled
//!   `io.kubernetes.pod.namespace` etc.), then `moby` and `default`.
//! - CRI-O: its inspect endpoint on crio.sock (HTTP, `GET /containers/ID`).

mod containerd;
mod http;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Semaphore, mpsc};

use crate::workload::WorkloadKind;

/// How long one lookup may take before the container is `unavailable`.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed lookup, how long before the container is asked for again.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Lookups in flight at most (a start with many containers).
const CONCURRENCY: usize = 8;
/// Containers cached at most; past it, the ones not seen for longest go.
const CACHE_MAX: usize = 16_384;

/// Where the runtimes listen (`run --docker-socket` ...).
#[derive(Clone, Debug)]
pub struct Sockets {
    pub docker: PathBuf,
    pub containerd: PathBuf,
    pub crio: PathBuf,
}

impl Default for Sockets {
    fn default() -> Self {
        Self {
            docker: "/var/run/docker.sock".into(),
            containerd: "/run/containerd/containerd.sock".into(),
            crio: "/var/run/crio/crio.sock".into(),
        }
    }
}

/// An image reference split as ECS wants it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    /// Repository without the tag or digest; Docker Hub's implicit
    /// `docker.io/library/` and `docker.io/` are left out, so Docker and
    /// containerd name one image alike (`nginx`, `registry.example/shop/api`).
    pub name: String,
    pub tag: Option<String>,
    /// `sha256:...` digests: the reference's own, the repo digests, the image id.
    pub digests: Vec<String>,
}

impl Image {
    /// Parses `[registry/]repo[:tag][@digest]`.
    pub fn parse(reference: &str) -> Self {
        let (rest, digest) = match reference.split_once('@') {
            Some((r, d)) => (r, Some(d.to_owned())),
            None => (reference, None),
        };
        // A ':' after the last '/' is a tag; before it, a registry port.
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_owned())),
            None => (rest, None),
        };
        Self {
            name: normalize_repository(repo),
            tag,
            digests: digest.into_iter().collect(),
        }
    }
}

/// `docker.io/library/nginx` and `docker.io/nginx` are `nginx`.
pub fn normalize_repository(repo: &str) -> String {
    let repo = repo.strip_prefix("docker.io/").unwrap_or(repo);
    let repo = repo.strip_prefix("index.docker.io/").unwrap_or(repo);
    repo.strip_prefix("library/").unwrap_or(repo).to_owned()
}

/// What a Kubernetes container's labels say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kubernetes {
    pub namespace: String,
    pub pod_name: String,
    pub container_name: Option<String>,
    /// The controller a person knows: `Deployment`, `StatefulSet`,
    /// `DaemonSet`, `Job`, `CronJob`, or `Pod` for a bare pod.
    pub owner_kind: String,
    pub owner_name: String,
}

/// What ECS's agent labels say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ecs {
    pub task_family: String,
    pub task_revision: Option<u64>,
    pub cluster: Option<String>,
    pub task_arn: Option<String>,
    pub container_name: Option<String>,
}

/// Everything the runtime told about one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    /// `container.name`: Docker's name without its `/`, the Kubernetes
    /// container name, or the ECS container name.
    pub name: Option<String>,
    pub image: Option<Image>,
    pub kubernetes: Option<Kubernetes>,
    pub ecs: Option<Ecs>,
    /// `imds.workload.{kind,id}` for this container ([`Self::compute_stable_key`]).
    pub stable_key: Option<(WorkloadKind, String)>,
}

impl ContainerMeta {
    /// Reads the labels that Kubernetes (kubelet, via CRI) and ECS's agent set.
    /// `sandbox` are the labels of the pod's sandbox (pod labels), if known.
    pub fn from_labels(
        name: Option<String>,
        image: Option<Image>,
        labels: &HashMap<String, String>,
        sandbox: Option<&HashMap<String, String>>,
    ) -> Self {
        let label = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        let kubernetes = match (
            label("io.kubernetes.pod.namespace"),
            label("io.kubernetes.pod.name"),
        ) {
            (Some(namespace), Some(pod_name)) => {
                let (owner_kind, owner_name) = k8s_owner(&pod_name, sandbox);
                Some(Kubernetes {
                    namespace,
                    container_name: label("io.kubernetes.container.name"),
                    pod_name,
                    owner_kind,
                    owner_name,
                })
            }
            _ => None,
        };
        let ecs = label("com.amazonaws.ecs.task-definition-family").map(|task_family| Ecs {
            task_family,
            task_revision: label("com.amazonaws.ecs.task-definition-version")
                .and_then(|v| v.parse().ok()),
            cluster: label("com.amazonaws.ecs.cluster"),
            task_arn: label("com.amazonaws.ecs.task-arn"),
            container_name: label("com.amazonaws.ecs.container-name"),
        });
        let name = kubernetes
            .as_ref()
            .and_then(|k| k.container_name.clone())
            .or_else(|| ecs.as_ref().and_then(|e| e.container_name.clone()))
            .or(name);
        let mut meta = Self {
            name,
            image,
            kubernetes,
            ecs,
            stable_key: None,
        };
        meta.stable_key = meta.compute_stable_key();
        meta
    }

    /// `imds.workload.{kind,id}` for this container: what survives a
    /// redeploy. Kubernetes namespace + owner, ECS task family, the image
    /// repository; `None` when the runtime told none of them.
    pub fn compute_stable_key(&self) -> Option<(WorkloadKind, String)> {
        if let Some(k) = &self.kubernetes {
            return Some((
                WorkloadKind::K8sOwner,
                format!("{}/{}/{}", k.namespace, k.owner_kind, k.owner_name),
            ));
        }
        if let Some(e) = &self.ecs {
            return Some((WorkloadKind::EcsTaskFamily, e.task_family.clone()));
        }
        let image = self.image.as_ref().filter(|i| !i.name.is_empty())?;
        Some((WorkloadKind::Image, image.name.clone()))
    }
}

/// A pod's controller, from its name and its sandbox's (pod) labels:
/// owner references are not passed to the runtime, but the labels the
/// controllers put on their pods are, and their pod names follow fixed
/// patterns.
pub fn k8s_owner(pod: &str, pod_labels: Option<&HashMap<String, String>>) -> (String, String) {
    let get = |k: &str| pod_labels.and_then(|l| l.get(k)).map(String::as_str);
    let trim = |suffix_len: usize| pod.get(..pod.len().saturating_sub(suffix_len + 1));
    let owned = |kind: &str, name: &str| (kind.to_owned(), name.to_owned());
    if let Some(hash) = get("pod-template-hash")
        && let Some(rs) = pod.rsplit_once('-').map(|(rs, _)| rs)
        && let Some(deployment) = rs.strip_suffix(hash).and_then(|d| d.strip_suffix('-'))
    {
        return owned("Deployment", deployment);
    }
    if get("statefulset.kubernetes.io/pod-name").is_some()
        && let Some((set, ordinal)) = pod.rsplit_once('-')
        && ordinal.bytes().all(|b| b.is_ascii_digit())
    {
        return owned("StatefulSet", set);
    }
    if get("controller-revision-hash").is_some()
        && get("pod-template-generation").is_some()
        && let Some(ds) = trim(5)
    {
        return owned("DaemonSet", ds);
    }
    if let Some(job) = get("batch.kubernetes.io/job-name").or(get("job-name")) {
        // A CronJob's jobs are <cronjob>-<scheduled time in minutes>.
        if let Some((cron, minutes)) = job.rsplit_once('-')
            && minutes.len() >= 8
            && minutes.bytes().all(|b| b.is_ascii_digit())
        {
            return owned("CronJob", cron);
        }
        return owned("Job", job);
    }
    if pod_labels.is_none() {
        // No pod labels: a Deployment's pods are <name>-<hash>-<5 chars>.
        let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
        if let [suffix, hash, name] = parts[..]
            && suffix.len() == 5
            && (6..=10).contains(&hash.len())
            && hash.bytes().all(|b| b.is_ascii_alphanumeric())
            && hash.bytes().any(|b| b.is_ascii_digit())
        {
            return owned("Deployment", name);
        }
    }
    owned("Pod", pod)
}

/// `imds.enrichment`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Done(Arc<ContainerMeta>),
    /// Asked; the answer has not come yet.
    Pending,
    /// The runtime could not tell (no socket, not found, an error).
    Unavailable(&'static str),
}

impl State {
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Done(_) => "done",
            Self::Pending => "pending",
            Self::Unavailable(_) => "unavailable",
        }
    }

    pub fn meta(&self) -> Option<&ContainerMeta> {
        match self {
            Self::Done(meta) => Some(meta),
            _ => None,
        }
    }
}

/// A finished lookup, handed from the background task to the event loop.
#[derive(Debug)]
pub struct Answer {
    pub container_id: String,
    pub result: Result<ContainerMeta, &'static str>,
}

#[derive(Debug)]
struct Entry {
    state: State,
    since: Instant,
    seen: Instant,
    /// The container's cgroups as seen by the monitor (for the policy).
    cgroups: HashSet<u64>,
}

/// The cache, and the lookups in flight.
#[derive(Debug)]
pub struct Resolver {
    sockets: Arc<Sockets>,
    entries: HashMap<String, Entry>,
    answers: mpsc::UnboundedSender<Answer>,
    limit: Arc<Semaphore>,
    enabled: bool,
}

impl Resolver {
    /// The receiver gets every finished lookup; give it to [`Self::complete`].
    pub fn new(sockets: Sockets, enabled: bool) -> (Self, mpsc::UnboundedReceiver<Answer>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                sockets: Arc::new(sockets),
                entries: HashMap::new(),
                answers: tx,
                limit: Arc::new(Semaphore::new(CONCURRENCY)),
                enabled,
            },
            rx,
        )
    }

    /// What is known about a container now; starts a lookup the first time
    /// (and again after a failure, every 30 s). Never waits. `runtime` is
    /// what the cgroup name says (`docker`, `containerd`, `cri-o`, `podman`).
    pub fn state(&mut self, id: &str, runtime: Option<&'static str>, cgroup: Option<u64>) -> State {
        if !self.enabled {
            return State::Unavailable("disabled");
        }
        let now = Instant::now();
        if let Some(entry) = self.entries.get_mut(id) {
            entry.seen = now;
            if let Some(cgroup) = cgroup {
                entry.cgroups.insert(cgroup);
            }
            let retry =
                matches!(entry.state, State::Unavailable(_)) && entry.since.elapsed() > RETRY_AFTER;
            if !retry {
                return entry.state.clone();
            }
        }
        if self.entries.len() >= CACHE_MAX {
            self.evict();
        }
        let entry = self.entries.entry(id.to_owned()).or_insert(Entry {
            state: State::Pending,
            since: now,
            seen: now,
            cgroups: HashSet::new(),
        });
        entry.state = State::Pending;
        entry.since = now;
        entry.cgroups.extend(cgroup);
        self.spawn(id.to_owned(), runtime);
        State::Pending
    }

    fn evict(&mut self) {
        let mut seen: Vec<Instant> = self.entries.values().map(|e| e.seen).collect();
        seen.sort_unstable();
        let cut = seen[seen.len() / 4];
        self.entries
            .retain(|_, e| e.seen > cut || e.state == State::Pending);
    }

    fn spawn(&self, id: String, runtime: Option<&'static str>) {
        let sockets = Arc::clone(&self.sockets);
        let answers = self.answers.clone();
        let limit = Arc::clone(&self.limit);
        tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            let result = tokio::time::timeout(LOOKUP_TIMEOUT, lookup(&sockets, &id, runtime))
                .await
                .unwrap_or(Err("timeout"));
            match &result {
                Err(why) => log::debug!("container {id}: runtime metadata unavailable: {why}"),
                Ok(meta) => log::debug!("container {id}: {meta:?}"),
            }
            let _ = answers.send(Answer {
                container_id: id,
                result,
            });
        });
    }

    /// Records a finished lookup. Returns the container's cgroups and its
    /// metadata when it resolved (for policy exceptions on it).
    pub fn complete(&mut self, answer: Answer) -> Option<(Vec<u64>, Arc<ContainerMeta>)> {
        let entry = self.entries.get_mut(&answer.container_id)?;
        entry.since = Instant::now();
        match answer.result {
            Ok(meta) => {
                let meta = Arc::new(meta);
                entry.state = State::Done(Arc::clone(&meta));
                Some((entry.cgroups.iter().copied().collect(), meta))
            }
            Err(why) => {
                entry.state = State::Unavailable(why);
                None
            }
        }
    }

    /// Every resolved container with its cgroups (a policy reload covers them again).
    pub fn resolved(&self) -> Vec<(String, Vec<u64>, Arc<ContainerMeta>)> {
        self.entries
            .iter()
            .filter_map(|(id, e)| match &e.state {
                State::Done(meta) => Some((
                    id.clone(),
                    e.cgroups.iter().copied().collect(),
                    Arc::clone(meta),
                )),
                _ => None,
            })
            .collect()
    }
}

/// Asks the runtime the cgroup name points to first, then the others.
async fn lookup(
    sockets: &Sockets,
    id: &str,
    runtime: Option<&'static str>,
) -> Result<ContainerMeta, &'static str> {
    let order: &[&str] = match runtime {
        Some("cri-o") => &["cri-o", "containerd", "docker"],
        Some("containerd") => &["containerd", "docker", "cri-o"],
        _ => &["docker", "containerd", "cri-o"],
    };
    let mut why = "no_runtime_socket";
    for which in order {
        let socket: &Path = match *which {
            "docker" => &sockets.docker,
            "containerd" => &sockets.containerd,
            _ => &sockets.crio,
        };
        if !socket.exists() {
            continue;
        }
        let result = match *which {
            "docker" => http::docker(socket, id).await,
            "containerd" => containerd::lookup(socket, id).await,
            _ => http::crio(socket, id).await,
        };
        match result {
            Ok(Some(meta)) => return Ok(meta),
            Ok(None) => why = "not_found",
            Err(e) => {
                log::debug!("{which} at {}: {e:#}", socket.display());
                if why != "not_found" {
                    why = "runtime_error";
                }
            }
        }
    }
    Err(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        #[rustfmt::skip]
        let cases = [
            ("nginx", "nginx", None, None),
            ("nginx:1.25", "nginx", Some("1.25"), None),
            ("docker.io/library/nginx:1.25", "nginx", Some("1.25"), None),
            ("docker.io/bitnami/redis", "bitnami/redis", None, None),
            ("registry.example:5000/shop/api:1.4", "registry.example:5000/shop/api", Some("1.4"), None),
            ("registry.example:5000/shop/api", "registry.example:5000/shop/api", None, None),
            ("api@sha256:abcd", "api", None, Some("sha256:abcd")),
            ("api:1.4@sha256:abcd", "api", Some("1.4"), Some("sha256:abcd")),
        ];
        for (reference, name, tag, digest) in cases {
            let image = Image::parse(reference);
            assert_eq!(image.name, name, "{reference}");
            assert_eq!(image.tag.as_deref(), tag, "{reference}");
            assert_eq!(
                image.digests.first().map(String::as_str),
                digest,
                "{reference}"
            );
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn kubernetes_owners_from_pod_labels_and_names() {
        type Case<'a> = (&'a str, Option<HashMap<String, String>>, &'a str, &'a str);
        #[rustfmt::skip]
        let cases: [Case; 9] = [
            ("payments-7d9f8b6c5-x2x4q", Some(labels(&[("pod-template-hash", "7d9f8b6c5")])), "Deployment", "payments"),
            ("db-2", Some(labels(&[("statefulset.kubernetes.io/pod-name", "db-2"), ("controller-revision-hash", "db-6b")])), "StatefulSet", "db"),
            ("fluent-bit-8kz2q", Some(labels(&[("controller-revision-hash", "7c9"), ("pod-template-generation", "1")])), "DaemonSet", "fluent-bit"),
            ("backup-28345678-abcde", Some(labels(&[("batch.kubernetes.io/job-name", "backup-28345678")])), "CronJob", "backup"),
            ("migrate-x7k2p", Some(labels(&[("job-name", "migrate")])), "Job", "migrate"),
            ("debug", Some(labels(&[])), "Pod", "debug"),
            // Without the sandbox's labels, the name alone.
            ("payments-7d9f8b6c5-x2x4q", None, "Deployment", "payments"),
            ("my-pod", None, "Pod", "my-pod"),
            ("web-server-1", None, "Pod", "web-server-1"),
        ];
        for (pod, pod_labels, kind, name) in cases {
            assert_eq!(
                k8s_owner(pod, pod_labels.as_ref()),
                (kind.to_owned(), name.to_owned()),
                "{pod}"
            );
        }
    }

    #[test]
    fn labels_give_kubernetes_ecs_and_the_stable_key() {
        let k8s = ContainerMeta::from_labels(
            None,
            Some(Image::parse("docker.io/library/payments-api:1.4")),
            &labels(&[
                ("io.kubernetes.pod.namespace", "shop"),
                ("io.kubernetes.pod.name", "payments-7d9f8b6c5-x2x4q"),
                ("io.kubernetes.container.name", "api"),
            ]),
            None,
        );
        assert_eq!(k8s.name.as_deref(), Some("api"));
        assert_eq!(
            k8s.stable_key,
            Some((
                WorkloadKind::K8sOwner,
                "shop/Deployment/payments".to_owned()
            ))
        );
        let ecs = ContainerMeta::from_labels(
            Some("ecs-billing-3-worker-e4b2".into()),
            Some(Image::parse("billing:7")),
            &labels(&[
                ("com.amazonaws.ecs.task-definition-family", "billing-worker"),
                ("com.amazonaws.ecs.task-definition-version", "3"),
                ("com.amazonaws.ecs.container-name", "worker"),
                ("com.amazonaws.ecs.cluster", "prod"),
            ]),
            None,
        );
        let e = ecs.ecs.as_ref().unwrap();
        assert_eq!(
            (e.task_family.as_str(), e.task_revision),
            ("billing-worker", Some(3))
        );
        assert_eq!(ecs.name.as_deref(), Some("worker"));
        assert_eq!(
            ecs.stable_key,
            Some((WorkloadKind::EcsTaskFamily, "billing-worker".to_owned()))
        );
        let plain = ContainerMeta::from_labels(
            Some("pay1".into()),
            Some(Image::parse("payments-api:1.4")),
            &HashMap::new(),
            None,
        );
        assert_eq!(
            plain.stable_key,
            Some((WorkloadKind::Image, "payments-api".to_owned()))
        );
    }
}
