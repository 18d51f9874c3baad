//! Docker's Engine API and CRI-O's inspect endpoint: HTTP/1.1 GETs of JSON
//! on a unix socket. One request per connection (`Connection: close`), the
//! body read to the end (`Content-Length`, chunked, or until EOF), at most
//! 4 MiB: all a metadata lookup needs, without an HTTP client stack.

use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
};

use super::{ContainerMeta, Image};

/// Largest response read.
const MAX_BODY: usize = 4 << 20;

/// `GET path` on the socket: `(status, body)`.
pub async fn get(socket: &Path, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: imds-monitor\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_BODY as u64 + 64 * 1024)
        .read_to_end(&mut raw)
        .await?;
    parse_response(&raw)
}

/// Splits a whole HTTP/1.1 response into status and decoded body.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let head = std::str::from_utf8(&raw[..end]).context("response head is not UTF-8")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status in the response")?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = length {
        if body.len() < length {
            bail!("response body cut short");
        }
        body[..length].to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_text = std::str::from_utf8(&body[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).context("chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 || out.len() + size > MAX_BODY {
            bail!("chunk cut short or too large");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

async fn json_get(socket: &Path, path: String) -> Result<Option<Value>> {
    let (status, body) = get(socket, &path).await?;
    match status {
        200 => Ok(Some(serde_json::from_slice(&body)?)),
        404 => Ok(None),
        other => bail!("GET {path}: status {other}"),
    }
}

fn string_map(value: &Value) -> HashMap<String, String> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Docker: `GET /containers/ID/json`, then the image for its repo digests.
pub async fn docker(socket: &Path, id: &str) -> Result<Option<ContainerMeta>> {
    let Some(container) = json_get(socket, format!("/containers/{id}/json")).await? else {
        return Ok(None);
    };
    Ok(Some(docker_meta(socket, &container).await))
}

async fn docker_meta(socket: &Path, container: &Value) -> ContainerMeta {
    let name = container["Name"]
        .as_str()
        .map(|n| n.trim_start_matches('/').to_owned());
    let labels = string_map(&container["Config"]["Labels"]);
    let image_id = container["Image"].as_str().unwrap_or_default();
    let mut image = container["Config"]["Image"].as_str().map(Image::parse);
    if let Some(image) = &mut image {
        // The repo digests of the image, then its id (the config's digest).
        if !image_id.is_empty()
            && let Ok(Some(details)) = json_get(socket, format!("/images/{image_id}/json")).await
        {
            for digest in details["RepoDigests"].as_array().into_iter().flatten() {
                if let Some((_, d)) = digest.as_str().and_then(|d| d.split_once('@')) {
                    image.digests.push(d.to_owned());
                }
            }
        }
        if image_id.starts_with("sha256:") {
            image.digests.push(image_id.to_owned());
        }
        image.digests.dedup();
    }
    ContainerMeta::from_labels(name, image, &labels, None)
}

/// CRI-O: `GET /containers/ID` (its inspect endpoint), and the same for the
/// pod's sandbox, whose labels are the pod's.
pub async fn crio(socket: &Path, id: &str) -> Result<Option<ContainerMeta>> {
    let Some(info) = json_get(socket, format!("/containers/{id}")).await? else {
        return Ok(None);
    };
    let labels = string_map(&info["labels"]);
    let sandbox = match info["sandbox"].as_str() {
        Some(sandbox) if sandbox != id => json_get(socket, format!("/containers/{sandbox}"))
            .await
            .ok()
            .flatten()
            .map(|s| string_map(&s["labels"])),
        _ => None,
    };
    let mut image = info["image"].as_str().map(Image::parse);
    if let (Some(image), Some(reference)) = (&mut image, info["image_ref"].as_str())
        && let Some((_, digest)) = reference.split_once('@')
    {
        image.digests.push(digest.to_owned());
    }
    let name = info["name"].as_str().map(str::to_owned);
    Ok(Some(ContainerMeta::from_labels(
        name,
        image,
        &labels,
        sandbox.as_ref(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_length_chunks_or_eof() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, b"{\"a\":1}".to_vec())
        );
        let eof = b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno such container";
        assert_eq!(parse_response(eof).unwrap().0, 404);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Len").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
    }

    /// A Docker API served on a unix socket by this test.
    #[test]
    fn docker_inspect_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("imds-docker-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("docker.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            for _ in 0..2 {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).unwrap();
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let body = if head.starts_with("GET /containers/abc/json ") {
                    r#"{"Name":"/pay1","Image":"sha256:1111","Config":{"Image":"payments-api:1.4","Labels":{"com.amazonaws.ecs.task-definition-family":"billing"}}}"#
                } else {
                    r#"{"RepoDigests":["payments-api@sha256:2222"]}"#
                };
                // Chunked, as dockerd answers large documents.
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                );
                conn.write_all(reply.as_bytes()).unwrap();
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let meta = rt.block_on(docker(&socket, "abc")).unwrap().unwrap();
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(meta.name.as_deref(), Some("pay1"));
        let image = meta.image.unwrap();
        assert_eq!(image.name, "payments-api");
        assert_eq!(image.tag.as_deref(), Some("1.4"));
        assert_eq!(image.digests, ["sha256:2222", "sha256:1111"]);
        assert_eq!(meta.ecs.unwrap().task_family, "billing");
    }
}
