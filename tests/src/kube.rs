//! Kubernetes without a cluster: processes in cgroups named the way the
//! kubelet and containerd name them, and `tests/peers/fake_kube_api.py`
//! serving their pods over HTTPS with a service account token, list and
//! a streaming watch.

use crate::cgroup::Cgroup;
use crate::env::{peers_dir, python};
use crate::net::{free_port, wait_listening};
use crate::process::{Supervised, TempDir};
use crate::tls::TestPki;
use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

/// The node the fake API server serves pods of.
pub const NODE: &str = "clew-test-node";

/// Random hex digits (container ids are 64 of them).
pub fn hex(n: usize) -> String {
    let mut out = String::new();
    while out.len() < n {
        out.push_str(&uuid().replace('-', ""));
    }
    out.truncate(n);
    out
}

/// A random UUID, as the API server gives pods.
pub fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("reading /proc/sys/kernel/random/uuid")
        .trim()
        .to_owned()
}

/// How the pod's cgroups are named.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// The kubelet's systemd driver with containerd:
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`.
    SystemdContainerd,
    /// The cgroupfs driver: `kubepods/besteffort/pod<uid>/<id>`.
    Cgroupfs,
}

/// One container of one pod: the ids, and its cgroup (below a test's own).
pub struct PodContainer {
    pub pod_uid: String,
    pub container_id: String,
    pub cgroup: Cgroup,
    layout: Layout,
}

impl PodContainer {
    /// The first container of a new pod.
    pub fn new(parent: &Cgroup, layout: Layout) -> Result<Self> {
        Self::in_pod(parent, layout, uuid())
    }

    /// Another container of the same pod (drop it before this one).
    pub fn sibling(&self, parent: &Cgroup) -> Result<Self> {
        Self::in_pod(parent, self.layout, self.pod_uid.clone())
    }

    fn in_pod(parent: &Cgroup, layout: Layout, pod_uid: String) -> Result<Self> {
        let container_id = hex(64);
        let rel = match layout {
            Layout::SystemdContainerd => format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container_id}.scope",
                pod_uid.replace('-', "_")
            ),
            Layout::Cgroupfs => format!("kubepods/besteffort/pod{pod_uid}/{container_id}"),
        };
        let cgroup = parent.nested(&rel)?;
        Ok(PodContainer {
            pod_uid,
            container_id,
            cgroup,
            layout,
        })
    }

    /// The Pod object of this container's pod, on the fake API's node.
    pub fn pod(&self, name: &str, namespace: &str) -> FakePod {
        FakePod {
            uid: self.pod_uid.clone(),
            name: name.into(),
            namespace: namespace.into(),
            node: NODE.into(),
            labels: Vec::new(),
            owner: None,
            containers: vec![("app".into(), Some(self.container_id.clone()))],
        }
    }
}

/// A Pod object for the fake API server.
#[derive(Clone, Debug)]
pub struct FakePod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub labels: Vec<(String, String)>,
    /// The controlling owner reference: (kind, name).
    pub owner: Option<(String, String)>,
    /// Containers and, once "started", their ids.
    pub containers: Vec<(String, Option<String>)>,
}

impl FakePod {
    /// Owned by ReplicaSet `<deployment>-<hash>`, with the
    /// `pod-template-hash` label a Deployment's pods carry.
    pub fn of_deployment(mut self, deployment: &str) -> Self {
        let hash = "7d4b9c8f5";
        self.labels.push(("pod-template-hash".into(), hash.into()));
        self.owner = Some(("ReplicaSet".into(), format!("{deployment}-{hash}")));
        self
    }

    pub fn owned_by(mut self, kind: &str, name: &str) -> Self {
        self.owner = Some((kind.into(), name.into()));
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    pub fn container(mut self, name: &str, id: Option<&str>) -> Self {
        self.containers.push((name.into(), id.map(str::to_owned)));
        self
    }

    pub fn json(&self) -> Value {
        let labels: serde_json::Map<String, Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        let owners: Vec<Value> = self
            .owner
            .iter()
            .map(|(kind, name)| {
                json!({"apiVersion": "apps/v1", "kind": kind, "name": name,
                       "uid": uuid(), "controller": true, "blockOwnerDeletion": true})
            })
            .collect();
        let specs: Vec<Value> = self
            .containers
            .iter()
            .map(|(n, _)| json!({"name": n, "image": "registry.example/app:1"}))
            .collect();
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|(n, id)| {
                let cid = id
                    .as_ref()
                    .map(|i| format!("containerd://{i}"))
                    .unwrap_or_default();
                json!({"name": n, "containerID": cid, "ready": id.is_some(), "restartCount": 0})
            })
            .collect();
        json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": self.name, "namespace": self.namespace, "uid": self.uid,
                "labels": labels,
                "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
                "ownerReferences": owners,
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]
            },
            "spec": {"nodeName": self.node, "containers": specs, "restartPolicy": "Always"},
            "status": {"phase": "Running", "podIP": "10.0.0.7", "containerStatuses": statuses}
        })
    }
}

/// `tests/peers/fake_kube_api.py` with its service account directory.
pub struct FakeApi {
    pub port: u16,
    control: u16,
    account: TempDir,
    proc: Supervised,
    _pki: TestPki,
}

impl FakeApi {
    pub fn start() -> Result<Self> {
        let pki = TestPki::new()?;
        let account = TempDir::new("serviceaccount")?;
        std::fs::write(account.join("token"), format!("clew-test-{}\n", hex(16)))?;
        std::fs::copy(pki.path("ca.pem"), account.join("ca.crt"))?;
        let (port, control) = (free_port()?, free_port()?);
        let mut cmd = Command::new(python()?.path);
        cmd.arg(peers_dir().join("fake_kube_api.py"))
            .args(["--port", &port.to_string()])
            .args(["--control-port", &control.to_string()])
            .arg("--cert")
            .arg(pki.path("server.pem"))
            .arg("--key")
            .arg(pki.path("server.key"))
            .arg("--token-file")
            .arg(account.join("token"))
            .args(["--node", NODE])
            .env("PYTHONUNBUFFERED", "1");
        let proc = Supervised::start("fake API server", &mut cmd, account.join("api.log"), |c| {
            Ok(c.spawn()?)
        })?;
        let why = || proc.log_tail(40);
        wait_listening(port, Duration::from_secs(20), why)?;
        wait_listening(control, Duration::from_secs(20), why)?;
        Ok(FakeApi {
            port,
            control,
            account,
            proc,
            _pki: pki,
        })
    }

    /// The agent's environment for the in-cluster configuration.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        vec![
            ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT".into(), self.port.to_string()),
            ("NODE_NAME".into(), NODE.into()),
            (
                "CLEW_KUBERNETES_SERVICE_ACCOUNT".into(),
                self.account.path().display().to_string(),
            ),
        ]
    }

    fn control(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.control);
        let mut req = reqwest::blocking::Client::new().request(method, &url);
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req
            .send()
            .with_context(|| format!("fake API control {path}"))?;
        ensure!(
            resp.status().is_success(),
            "fake API control {path}: {}",
            resp.status()
        );
        Ok(serde_json::from_str(&resp.text()?)?)
    }

    /// Adds or changes a pod; open watches see the event.
    pub fn put(&self, pod: &FakePod) -> Result<()> {
        self.control(reqwest::Method::POST, "/pods", Some(&pod.json()))
            .map(drop)
    }

    /// Adds or changes a pod without any watch event (as if it was lost):
    /// only a fresh list shows it.
    pub fn put_unannounced(&self, pod: &FakePod) -> Result<()> {
        self.control(reqwest::Method::POST, "/pods?silent=1", Some(&pod.json()))
            .map(drop)
    }

    pub fn delete(&self, uid: &str) -> Result<()> {
        self.control(reqwest::Method::DELETE, &format!("/pods/{uid}"), None)
            .map(drop)
    }

    /// Compacts the history: open watches end with 410 Gone, and resuming
    /// from any version seen before fails the same way.
    pub fn expire(&self) -> Result<()> {
        self.control(reqwest::Method::POST, "/expire", None)
            .map(drop)
    }

    /// Requests seen: `lists`, `watches`, `gone_sent`, `unauthorized`, `bad_selector`.
    pub fn stats(&self) -> Result<Value> {
        self.control(reqwest::Method::GET, "/stats", None)
    }

    /// Waits until `pred` holds for the stats.
    pub fn wait_stats(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.stats()?;
            if pred(&s) {
                return Ok(s);
            }
            ensure!(
                Instant::now() < deadline,
                "fake API server: {what} never happened (stats {s})\n{}",
                self.proc.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
