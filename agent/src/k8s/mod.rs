//! Kubernetes identity: the pods of this node, from the API server through
//! a watch-based cache, so that a process's resource names its pod,
//! namespace, container and workload (its cgroup gives the pod's uid and
//! the container's id, see `cgroup::identity`).
//!
//! Only this node's pods are asked for (`spec.nodeName`), so memory and
//! API load stay per node, whatever the cluster's size. The service
//! account needs `get`, `list` and `watch` on `pods`; nothing else.

pub mod cache;
pub mod client;
pub mod pod;
mod watch;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Result};

use crate::{config::KubernetesMode, stats::Stats};
pub use cache::SharedPods;
use client::{ApiConfig, Client};

/// The running pod cache.
pub struct Kubernetes {
    pub pods: SharedPods,
    pub node: String,
}

/// What `clew run` was told about the cluster.
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    pub mode: KubernetesMode,
    pub node_name: Option<String>,
    /// The service account directory (`token`, `ca.crt`).
    pub service_account: PathBuf,
    /// `KUBERNETES_SERVICE_HOST` and `_PORT`.
    pub service_host: Option<String>,
    pub service_port: Option<String>,
}

impl Kubernetes {
    /// Starts watching this node's pods when in a cluster (`auto`: the
    /// in-cluster variables and a service account token are there) or
    /// when told to (`on`, an error without them).
    pub fn start(settings: &KubernetesConfig, stats: Arc<Stats>) -> Result<Option<Self>> {
        if settings.mode == KubernetesMode::Off {
            return Ok(None);
        }
        let explicit_node = settings.node_name.clone().filter(|n| !n.is_empty());
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let cfg = ApiConfig::in_cluster(
            settings.service_host.as_deref(),
            settings.service_port.as_deref(),
            &settings.service_account,
            explicit_node.clone().unwrap_or(host.clone()),
        )?;
        let Some(cfg) = cfg else {
            if settings.mode == KubernetesMode::On {
                bail!(
                    "--kubernetes on: no in-cluster API configuration (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT and a token in {})",
                    settings.service_account.display()
                );
            }
            return Ok(None);
        };
        if explicit_node.is_none() {
            tracing::warn!(
                node = %host,
                "NODE_NAME is not set (give it with the downward API, spec.nodeName): assuming the host name is the node's name"
            );
        }
        let node = cfg.node.clone();
        let client = Client::new(&cfg)?;
        let pods = SharedPods::default();
        tracing::info!(server = %cfg.server, %node, "watching this node's pods");
        tokio::spawn(watch::run(client, pods.clone(), stats));
        Ok(Some(Kubernetes { pods, node }))
    }

    /// Waits for the first list, up to `timeout`: spans of processes whose
    /// pod is not known yet carry only what their cgroup says.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.pods.lock().synced() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "no pod list from the Kubernetes API after {timeout:?}: starting without; pods fill in as the list arrives"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }
}
