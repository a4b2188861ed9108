//! Lists and watches the pods of one node on the Kubernetes API server,
//! over the HTTP client the OTLP exporter already uses (reqwest, rustls).
//!
//! Why not kube-rs with k8s-openapi: Clew needs two requests on one
//! resource. kube-rs and k8s-openapi measured +~2 minutes per clean release
//! build on a 2-core machine (k8s-openapi alone 37 s, kube-client 19 s, a
//! YAML parser and JSONPath engine besides, and the watcher's generics
//! compiled into the agent crate: 19 s more on every rebuild), and
//! k8s-openapi's `Pod` decodes and keeps every field of every pod, where
//! these wire types keep the dozen the resources need (`pod.rs`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use reqwest::Url;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::pod::WirePod;

/// Pods per list page.
const PAGE: u32 = 200;
/// Bound on one list page's body and on one watch event: a pod object is
/// at most ~1.5 MiB in etcd.
const MAX_PAGE_BYTES: usize = 32 << 20;
const MAX_EVENT_BYTES: usize = 8 << 20;
/// The server ends each watch after this long (the client then watches
/// again from the last version seen); silence beyond it plus a margin
/// means a dead connection.
const WATCH_SECONDS: u64 = 290;
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECONDS + 60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the API server is and how to authenticate: the in-cluster
/// configuration client-go uses too.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `https://host:port`.
    pub server: Url,
    /// The service account token (re-read for every request: the kubelet
    /// rotates bound tokens).
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub node: String,
}

impl ApiConfig {
    /// From `KUBERNETES_SERVICE_HOST`/`_PORT` and a service account
    /// directory (`token`, `ca.crt`); `None` when not in a cluster.
    pub fn in_cluster(
        host: Option<&str>,
        port: Option<&str>,
        account_dir: &Path,
        node: String,
    ) -> Result<Option<Self>> {
        let (Some(host), Some(port)) = (host, port) else {
            return Ok(None);
        };
        let token_file = account_dir.join("token");
        if !token_file.exists() {
            return Ok(None);
        }
        // IPv6 service addresses need brackets in a URL.
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let server = Url::parse(&format!("https://{host}:{port}"))
            .with_context(|| format!("KUBERNETES_SERVICE_HOST/PORT {host}:{port}"))?;
        Ok(Some(ApiConfig {
            server,
            token_file,
            ca_file: account_dir.join("ca.crt"),
            node,
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The version watched from is gone from the server's history: list
    /// again.
    #[error("410 Gone: the resource version is too old")]
    Gone,
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    #[error("{0}")]
    Transport(String),
    #[error("an answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("undecodable answer: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("reading the service account token {0}: {1}")]
    Token(String, std::io::Error),
    #[error("no data for {0:?}: connection presumed dead")]
    Idle(Duration),
}

impl From<reqwest::Error> for ApiError {
    fn from(e: reqwest::Error) -> Self {
        // reqwest's own message leaves out the cause (refused, TLS, ...).
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        ApiError::Transport(text)
    }
}

/// One list, all pages.
pub struct List {
    pub pods: Vec<WirePod>,
    pub resource_version: String,
}

/// A watch event, decoded.
#[derive(Debug)]
pub enum Event {
    Upsert(Box<WirePod>),
    Delete(Box<WirePod>),
    /// Nothing changed, but the watch has seen up to this version.
    Bookmark(String),
}

pub struct Client {
    http: reqwest::Client,
    pods: Url,
    token_file: PathBuf,
    field_selector: String,
}

impl Client {
    pub fn new(cfg: &ApiConfig) -> Result<Self> {
        let ca = std::fs::read(&cfg.ca_file)
            .with_context(|| format!("reading the cluster CA {}", cfg.ca_file.display()))?;
        // The cluster's CA only: the API server is never vouched for by a
        // public root.
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(30));
        for cert in reqwest::Certificate::from_pem_bundle(&ca)
            .with_context(|| format!("parsing the cluster CA {}", cfg.ca_file.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
        Ok(Client {
            http: builder
                .build()
                .context("building the Kubernetes API client")?,
            pods: cfg.server.join("/api/v1/pods")?,
            token_file: cfg.token_file.clone(),
            field_selector: format!("spec.nodeName={}", cfg.node),
        })
    }

    async fn get(&self, query: &[(&str, &str)]) -> Result<reqwest::Response, ApiError> {
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| ApiError::Token(self.token_file.display().to_string(), e))?;
        let mut url = self.pods.clone();
        url.query_pairs_mut()
            .append_pair("fieldSelector", &self.field_selector)
            .extend_pairs(query);
        let response = self
            .http
            .get(url)
            .bearer_auth(token.trim())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status == reqwest::StatusCode::GONE {
            return Err(ApiError::Gone);
        }
        let body = read_bounded(response, 4096, None).await.unwrap_or_default();
        Err(ApiError::Status {
            status: status.as_u16(),
            message: status_message(&body),
        })
    }

    /// Every pod of the node, and the version to watch from.
    pub async fn list(&self) -> Result<List, ApiError> {
        let mut pods = Vec::new();
        let mut next = String::new();
        loop {
            let limit = PAGE.to_string();
            let mut query = vec![("limit", limit.as_str())];
            if !next.is_empty() {
                query.push(("continue", next.as_str()));
            }
            let response = self.get(&query).await?;
            let body = read_bounded(response, MAX_PAGE_BYTES, Some(LIST_TIMEOUT)).await?;
            let page: PodList = serde_json::from_slice(&body)?;
            pods.extend(page.items);
            if page.metadata.continue_token.is_empty() {
                return Ok(List {
                    pods,
                    resource_version: page.metadata.resource_version,
                });
            }
            next = page.metadata.continue_token;
        }
    }

    /// Changes after `resource_version`, as they happen.
    pub async fn watch(&self, resource_version: &str) -> Result<Watch, ApiError> {
        let seconds = WATCH_SECONDS.to_string();
        let response = self
            .get(&[
                ("watch", "true"),
                ("resourceVersion", resource_version),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", &seconds),
            ])
            .await?;
        Ok(Watch {
            response,
            lines: Lines::default(),
        })
    }
}

/// An open watch: newline-delimited JSON events.
pub struct Watch {
    response: reqwest::Response,
    lines: Lines,
}

impl Watch {
    /// The next event; `None` when the server ended the watch.
    pub async fn next(&mut self) -> Result<Option<Event>, ApiError> {
        loop {
            if let Some(line) = self.lines.next_line()? {
                if let Some(event) = decode_event(&line)? {
                    return Ok(Some(event));
                }
                continue;
            }
            let chunk = tokio::time::timeout(WATCH_IDLE, self.response.chunk())
                .await
                .map_err(|_| ApiError::Idle(WATCH_IDLE))??;
            match chunk {
                Some(bytes) => self.lines.push(&bytes),
                None => return Ok(None),
            }
        }
    }
}

/// Splits a byte stream into lines, none longer than [`MAX_EVENT_BYTES`].
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next_line(&mut self) -> Result<Option<Vec<u8>>, ApiError> {
        match memchr::memchr(b'\n', &self.buf) {
            Some(end) => {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_EVENT_BYTES => Err(ApiError::TooLarge(MAX_EVENT_BYTES)),
            None => Ok(None),
        }
    }
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<WirePod>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ListMeta {
    resource_version: String,
    #[serde(rename = "continue")]
    continue_token: String,
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    object: &'a RawValue,
}

/// A `Status` object: what an ERROR event or a failed request carries.
#[derive(Deserialize, Default)]
#[serde(default)]
struct WireStatus {
    code: u16,
    message: String,
}

/// One watch line; `None` for a blank line or an event type this client
/// does not know (the API may add some).
pub fn decode_event(line: &[u8]) -> Result<Option<Event>, ApiError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let event: WireEvent<'_> = serde_json::from_slice(line)?;
    let pod = || serde_json::from_str::<WirePod>(event.object.get()).map(Box::new);
    Ok(Some(match event.kind {
        "ADDED" | "MODIFIED" => Event::Upsert(pod()?),
        "DELETED" => Event::Delete(pod()?),
        "BOOKMARK" => Event::Bookmark(pod()?.metadata.resource_version),
        "ERROR" => {
            let status: WireStatus = serde_json::from_str(event.object.get())?;
            return Err(match status.code {
                410 => ApiError::Gone,
                code => ApiError::Status {
                    status: code,
                    message: status.message,
                },
            });
        }
        other => {
            tracing::debug!(kind = other, "unknown watch event type, skipped");
            return Ok(None);
        }
    }))
}

fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<WireStatus>(body)
        .ok()
        .map(|s| s.message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect())
}

async fn read_bounded(
    mut response: reqwest::Response,
    max: usize,
    timeout: Option<Duration>,
) -> Result<Vec<u8>, ApiError> {
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > max {
                return Err(ApiError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, read)
            .await
            .map_err(|_| ApiError::Idle(t))?,
        None => read.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watch stream as an API server sends it (fields trimmed), split
    /// across chunks at awkward places.
    const RECORDED: &str = concat!(
        r#"{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-7d4b9c8f5-x2x9q","namespace":"shop","uid":"0f6a1d2c-3b4e-4f5a-8b9c-0d1e2f3a4b5c","resourceVersion":"1001","labels":{"app":"web","pod-template-hash":"7d4b9c8f5"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d4b9c8f5","uid":"1","controller":true,"blockOwnerDeletion":true}]},"spec":{"nodeName":"node-1","containers":[{"name":"app","image":"web:1"}]},"status":{"phase":"Pending"}}}"#,
        "\n",
        r#"{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-7d4b9c8f5-x2x9q","namespace":"shop","uid":"0f6a1d2c-3b4e-4f5a-8b9c-0d1e2f3a4b5c","resourceVersion":"1002"},"spec":{"nodeName":"node-1","containers":[{"name":"app"}]},"status":{"phase":"Running","containerStatuses":[{"name":"app","containerID":"containerd://9d7b4c2f","ready":true}]}}}"#,
        "\n",
        r#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"1050","annotations":{"k8s.io/initial-events-end":"true"}}}}"#,
        "\n\n",
        r#"{"type":"DELETED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-7d4b9c8f5-x2x9q","namespace":"shop","uid":"0f6a1d2c-3b4e-4f5a-8b9c-0d1e2f3a4b5c","resourceVersion":"1060"}}}"#,
        "\n",
        r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (1060)","reason":"Expired","code":410}}"#,
        "\n",
    );

    fn decode_all(chunk_size: usize) -> Vec<Result<Event, String>> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for chunk in RECORDED.as_bytes().chunks(chunk_size) {
            lines.push(chunk);
            while let Some(line) = lines.next_line().unwrap() {
                match decode_event(&line) {
                    Ok(Some(e)) => out.push(Ok(e)),
                    Ok(None) => {}
                    Err(e) => out.push(Err(e.to_string())),
                }
            }
        }
        out
    }

    #[test]
    fn recorded_watch_stream() {
        for chunk_size in [1, 7, 100, RECORDED.len()] {
            let events = decode_all(chunk_size);
            assert_eq!(events.len(), 5, "chunks of {chunk_size}");
            match &events[0] {
                Ok(Event::Upsert(p)) => {
                    assert_eq!(p.metadata.name, "web-7d4b9c8f5-x2x9q");
                    assert_eq!(p.metadata.resource_version, "1001");
                }
                e => panic!("{e:?}"),
            }
            assert!(
                matches!(&events[1], Ok(Event::Upsert(p)) if p.metadata.resource_version == "1002")
            );
            assert!(matches!(&events[2], Ok(Event::Bookmark(v)) if v == "1050"));
            assert!(
                matches!(&events[3], Ok(Event::Delete(p)) if p.metadata.uid.starts_with("0f6a"))
            );
            assert_eq!(events[4].as_ref().unwrap_err(), &ApiError::Gone.to_string());
        }
    }

    #[test]
    fn bad_lines_are_errors_not_panics() {
        for line in [
            "{",
            "[]",
            r#"{"type":"ADDED"}"#,
            r#"{"type":"ADDED","object":{"metadata":{"labels":{"a":1}}}}"#,
            r#"{"type":"ERROR","object":{"code":"x"}}"#,
        ] {
            assert!(decode_event(line.as_bytes()).is_err(), "{line}");
        }
        assert!(decode_event(br#"{"type":"NEW-KIND","object":{}}"#)
            .unwrap()
            .is_none());
        let err = decode_event(
            br#"{"type":"ERROR","object":{"kind":"Status","code":500,"message":"internal"}}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "HTTP 500: internal");
    }

    #[test]
    fn lines_are_bounded() {
        let mut lines = Lines::default();
        lines.push(&vec![b'x'; MAX_EVENT_BYTES + 1]);
        assert!(matches!(lines.next_line(), Err(ApiError::TooLarge(_))));
    }

    #[test]
    fn recorded_list_page() {
        let page: PodList = serde_json::from_str(
            r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"998","continue":"eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ"},"items":[{"metadata":{"name":"a","uid":"u1"}},{"metadata":{"name":"b","uid":"u2"}}]}"#,
        )
        .unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.metadata.resource_version, "998");
        assert!(!page.metadata.continue_token.is_empty());
    }

    #[test]
    fn in_cluster_configuration() {
        let dir = std::env::temp_dir().join(format!("clew-sa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let none = ApiConfig::in_cluster(Some("10.96.0.1"), Some("443"), &dir, "n".into()).unwrap();
        assert!(none.is_none(), "no token: not in a cluster");
        std::fs::write(dir.join("token"), "t").unwrap();
        let cfg = ApiConfig::in_cluster(Some("10.96.0.1"), Some("443"), &dir, "n".into())
            .unwrap()
            .unwrap();
        assert_eq!(cfg.server.as_str(), "https://10.96.0.1/");
        let v6 = ApiConfig::in_cluster(Some("fd00::1"), Some("6443"), &dir, "n".into())
            .unwrap()
            .unwrap();
        assert_eq!(v6.server.as_str(), "https://[fd00::1]:6443/");
        assert!(ApiConfig::in_cluster(None, Some("443"), &dir, "n".into())
            .unwrap()
            .is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
