//! The event fields that come from the container runtime's metadata
//! (`container.name`, `container.image.*`, `orchestrator.*`,
//! `imds.enrichment`, `imds.kubernetes.*`, `imds.ecs.*`), next to what the
//! cgroup path says.

use serde::Serialize;

use crate::{
    enrich::Sender,
    runtime::{ContainerMeta, State},
};

/// `container.{name,image}` beside `container.id`.
#[derive(Serialize)]
pub struct ContainerFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<ImageFields<'a>>,
}

#[derive(Serialize)]
struct ImageFields<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<Hash<'a>>,
}

#[derive(Serialize)]
struct Hash<'a> {
    all: &'a [String],
}

fn meta(sender: &Sender) -> Option<&ContainerMeta> {
    sender.runtime.as_ref().and_then(State::meta)
}

pub fn container(sender: &Sender) -> ContainerFields<'_> {
    let meta = meta(sender);
    ContainerFields {
        name: meta.and_then(|m| m.name.as_deref()),
        image: meta.and_then(|m| m.image.as_ref()).map(|i| ImageFields {
            name: &i.name,
            tag: i.tag.as_deref(),
            hash: (!i.digests.is_empty()).then_some(Hash { all: &i.digests }),
        }),
    }
}

/// ECS `orchestrator.*`: Kubernetes (pod UID from the cgroup path, the rest
/// from the runtime) or ECS (from its agent's labels).
#[derive(Serialize)]
pub struct Orchestrator<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<Cluster<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
    resource: Resource<'a>,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Cluster<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Resource<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<Parent<'a>>,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Parent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
}

pub fn orchestrator(sender: &Sender) -> Option<Orchestrator<'_>> {
    let meta = meta(sender);
    let k8s = meta.and_then(|m| m.kubernetes.as_ref());
    let pod_uid = sender.workload.pod_uid.as_deref();
    if pod_uid.is_some() || k8s.is_some() {
        return Some(Orchestrator {
            cluster: None,
            namespace: k8s.map(|k| k.namespace.as_str()),
            resource: Resource {
                id: pod_uid,
                name: k8s.map(|k| k.pod_name.as_str()),
                parent: k8s.map(|k| Parent {
                    kind: &k.owner_kind,
                }),
                kind: "pod",
            },
            kind: "kubernetes",
        });
    }
    let ecs = meta.and_then(|m| m.ecs.as_ref())?;
    Some(Orchestrator {
        cluster: ecs.cluster.as_deref().map(|name| Cluster { name }),
        namespace: None,
        resource: Resource {
            id: ecs.task_arn.as_deref(),
            name: None,
            parent: None,
            kind: "task",
        },
        kind: "ecs",
    })
}

/// `imds.enrichment`, `imds.enrichment_reason`, `imds.kubernetes`, `imds.ecs`.
#[derive(Serialize)]
pub struct ImdsFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    enrichment: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enrichment_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes: Option<KubernetesFields<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ecs: Option<EcsFields<'a>>,
}

#[derive(Serialize)]
struct KubernetesFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    container_name: Option<&'a str>,
    owner: Owner<'a>,
}

#[derive(Serialize)]
struct Owner<'a> {
    kind: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct EcsFields<'a> {
    task_family: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_revision: Option<u64>,
}

pub fn imds(sender: &Sender) -> ImdsFields<'_> {
    let state = sender.runtime.as_ref();
    let meta = meta(sender);
    ImdsFields {
        enrichment: state.map(State::as_str),
        enrichment_reason: match state {
            Some(State::Unavailable(why)) => Some(why),
            _ => None,
        },
        kubernetes: meta
            .and_then(|m| m.kubernetes.as_ref())
            .map(|k| KubernetesFields {
                container_name: k.container_name.as_deref(),
                owner: Owner {
                    kind: &k.owner_kind,
                    name: &k.owner_name,
                },
            }),
        ecs: meta.and_then(|m| m.ecs.as_ref()).map(|e| EcsFields {
            task_family: &e.task_family,
            task_revision: e.task_revision,
        }),
    }
}
