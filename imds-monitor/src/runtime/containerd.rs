//! containerd's gRPC API on its socket (no `ctr`): `Containers/Get` for the
//! container's labels and image, `Containers/List` for its pod's sandbox
//! (whose labels are the pod's), `Images/Get` for the image's digest.
//!
//! The messages are the fields of containerd's protos
//! (api/services/{containers,images}/v1) that are needed, written out for
//! prost: unknown fields are skipped when decoding, so no protoc is needed
//! at build time and newer containerds answer the same.

use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::{
    Code, Request,
    transport::{Channel, Endpoint, Uri},
};

use super::{ContainerMeta, Image};

/// Namespaces asked, in order: Kubernetes (CRI), Docker's, `ctr`'s default.
const NAMESPACES: [&str; 3] = ["k8s.io", "moby", "default"];

#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(map = "string, string", tag = "2")]
    pub labels: HashMap<String, String>,
    #[prost(string, tag = "3")]
    pub image: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetContainerResponse {
    #[prost(message, optional, tag = "1")]
    pub container: Option<Container>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersRequest {
    #[prost(string, repeated, tag = "1")]
    pub filters: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersResponse {
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<Container>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Descriptor {
    #[prost(string, tag = "1")]
    pub media_type: String,
    #[prost(string, tag = "2")]
    pub digest: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageMessage {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "3")]
    pub target: Option<Descriptor>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetImageRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetImageResponse {
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageMessage>,
}

async fn connect(socket: &Path) -> Result<Channel> {
    let socket = socket.to_owned();
    // The URI is required by tonic and unused: the connector dials the socket.
    Endpoint::from_static("http://containerd.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .context("connecting to containerd")
}

async fn unary<Q, R>(
    channel: &Channel,
    namespace: &str,
    method: &'static str,
    message: Q,
) -> Result<R, tonic::Status>
where
    Q: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "containerd-namespace",
        namespace
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("namespace"))?,
    );
    let path = http::uri::PathAndQuery::from_static(method);
    let codec = tonic_prost::ProstCodec::<Q, R>::default();
    Ok(grpc.unary(request, path, codec).await?.into_inner())
}

/// The container `id` in the first namespace that has it.
pub async fn lookup(socket: &Path, id: &str) -> Result<Option<ContainerMeta>> {
    let channel = connect(socket).await?;
    for namespace in NAMESPACES {
        let got: Result<GetContainerResponse, _> = unary(
            &channel,
            namespace,
            "/containerd.services.containers.v1.Containers/Get",
            GetContainerRequest { id: id.to_owned() },
        )
        .await;
        let container = match got {
            Ok(response) => response.container,
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => return Err(status).context("containerd Containers/Get"),
        };
        let Some(container) = container else {
            continue;
        };
        return Ok(Some(meta(&channel, namespace, container).await));
    }
    Ok(None)
}

async fn meta(channel: &Channel, namespace: &str, container: Container) -> ContainerMeta {
    // The pod's labels are on its sandbox (kubelet passes them to
    // RunPodSandbox; the CRI plugin keeps them as the sandbox's labels).
    let sandbox = match container.labels.get("io.kubernetes.pod.uid") {
        Some(uid)
            if container
                .labels
                .get("io.cri-containerd.kind")
                .map(String::as_str)
                != Some("sandbox") =>
        {
            let filter = format!(
                "labels.\"io.kubernetes.pod.uid\"=={uid},labels.\"io.cri-containerd.kind\"==sandbox"
            );
            unary::<_, ListContainersResponse>(
                channel,
                namespace,
                "/containerd.services.containers.v1.Containers/List",
                ListContainersRequest {
                    filters: vec![filter],
                },
            )
            .await
            .ok()
            .and_then(|r| r.containers.into_iter().next())
            .map(|s| s.labels)
        }
        _ => None,
    };
    let mut image = (!container.image.is_empty()).then(|| Image::parse(&container.image));
    if let Some(image) = &mut image
        && image.digests.is_empty()
        && let Ok(response) = unary::<_, GetImageResponse>(
            channel,
            namespace,
            "/containerd.services.images.v1.Images/Get",
            GetImageRequest {
                name: container.image.clone(),
            },
        )
        .await
        && let Some(target) = response.image.and_then(|i| i.target)
        && !target.digest.is_empty()
    {
        image.digests.push(target.digest);
    }
    ContainerMeta::from_labels(None, image, &container.labels, sandbox.as_ref())
}
