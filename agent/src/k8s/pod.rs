//! The part of a Pod object Clew keeps: who it is, what owns it, its
//! labels and containers. The wire types name only the fields read, so
//! serde skips the rest of each object (spec, most of status, managed
//! fields) instead of allocating it.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Labels kept per pod; the rest are dropped (and counted by the cache).
pub const MAX_LABELS: usize = 64;
/// `resource.opentelemetry.io/` annotations kept per pod, and their length.
const MAX_RESOURCE_ANNOTATIONS: usize = 32;
const MAX_ANNOTATION_VALUE: usize = 1024;
/// Pod annotations whose suffix is a resource attribute (semantic
/// conventions, "Specify resource attributes using Kubernetes annotations").
pub const RESOURCE_ANNOTATION: &str = "resource.opentelemetry.io/";
/// On a static pod's mirror: the config hash its cgroup is named after.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

#[derive(Deserialize, Debug, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct WirePod {
    pub metadata: Metadata,
    spec: Spec,
    status: Status,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub resource_version: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    owner_references: Vec<OwnerRef>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct OwnerRef {
    kind: String,
    name: String,
    controller: bool,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    node_name: String,
    containers: Vec<Named>,
    init_containers: Vec<Named>,
    ephemeral_containers: Vec<Named>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default)]
struct Named {
    name: String,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    container_statuses: Vec<ContainerStatus>,
    init_container_statuses: Vec<ContainerStatus>,
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(default, rename_all = "camelCase")]
struct ContainerStatus {
    name: String,
    /// `<runtime>://<id>`, empty until the container was created.
    #[serde(rename = "containerID")]
    container_id: String,
}

/// A pod as cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    /// `resource.opentelemetry.io/<key>` annotations, as `(key, value)`.
    pub resource_annotations: Vec<(String, String)>,
    /// A static pod's config hash (the uid in its cgroup names).
    pub mirror_of: Option<String>,
    /// Workload attributes from the controlling owner, ancestor first
    /// (`k8s.deployment.name` before `k8s.replicaset.name`).
    pub workload: Vec<(&'static str, String)>,
    /// Containers with their ids, once the kubelet has reported them.
    pub containers: Vec<(String, String)>,
    /// The only container a process of this pod can be in, when it has
    /// a single one (no init or ephemeral containers).
    pub sole_container: Option<String>,
    /// Labels beyond [`MAX_LABELS`] that were dropped.
    pub labels_dropped: usize,
}

impl Pod {
    pub fn from_wire(w: WirePod) -> Self {
        let WirePod {
            metadata: m,
            spec,
            status,
        } = w;
        let workload = workload(&m.owner_references, &m.labels);
        let resource_annotations = m
            .annotations
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(RESOURCE_ANNOTATION)?, v)))
            .filter(|(k, v)| !k.is_empty() && v.len() <= MAX_ANNOTATION_VALUE)
            .take(MAX_RESOURCE_ANNOTATIONS)
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        let mirror_of = m.annotations.get(MIRROR_ANNOTATION).cloned();
        let labels_dropped = m.labels.len().saturating_sub(MAX_LABELS);
        let labels = m.labels.into_iter().take(MAX_LABELS).collect();
        let containers = status
            .container_statuses
            .into_iter()
            .chain(status.init_container_statuses)
            .chain(status.ephemeral_container_statuses)
            .filter_map(|s| Some((bare_container_id(&s.container_id)?.to_owned(), s.name)))
            .collect();
        let sole_container = match (
            &spec.containers[..],
            spec.init_containers.is_empty() && spec.ephemeral_containers.is_empty(),
        ) {
            ([only], true) => Some(only.name.clone()),
            _ => None,
        };
        Pod {
            uid: m.uid,
            name: m.name,
            namespace: m.namespace,
            node: spec.node_name,
            labels,
            resource_annotations,
            mirror_of,
            workload,
            containers,
            sole_container,
            labels_dropped,
        }
    }

    /// The name of the container with this id (64 hex digits); a pod with
    /// one container names it before the kubelet has reported its id.
    pub fn container_name(&self, container_id: Option<&str>) -> Option<&str> {
        let by_id = container_id.and_then(|id| {
            self.containers
                .iter()
                .find(|(cid, _)| cid == id)
                .map(|(_, n)| n.as_str())
        });
        by_id.or(self.sole_container.as_deref())
    }

    /// `service.name` from the pod alone (semantic conventions, "How
    /// service.name should be calculated", without the opt-in well-known
    /// labels): the annotation, the workload from the top down, the pod.
    pub fn service_name(&self) -> String {
        self.annotation("service.name")
            .map(str::to_owned)
            .or_else(|| self.workload.first().map(|(_, n)| n.clone()))
            .unwrap_or_else(|| self.name.clone())
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.resource_annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
impl Pod {
    /// A pod with a uid, a name and a namespace and nothing else, for tests
    /// to fill in with struct update syntax.
    pub fn named(uid: &str, name: &str, namespace: &str) -> Pod {
        Pod {
            uid: uid.into(),
            name: name.into(),
            namespace: namespace.into(),
            node: "node-1".into(),
            labels: BTreeMap::new(),
            resource_annotations: Vec::new(),
            mirror_of: None,
            workload: Vec::new(),
            containers: Vec::new(),
            sole_container: None,
            labels_dropped: 0,
        }
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`.
fn bare_container_id(s: &str) -> Option<&str> {
    let (_, id) = s.split_once("://")?;
    (!id.is_empty()).then_some(id)
}

/// The workload attributes the controlling owner reference gives.
///
/// A Deployment's pods are owned by a ReplicaSet named
/// `<deployment>-<pod-template-hash>`, the hash also being the pods'
/// `pod-template-hash` label: the Deployment's name is read off that,
/// exactly, without watching ReplicaSets cluster-wide (each node agent
/// would hold every ReplicaSet of the cluster, and need RBAC for them). A
/// CronJob's Job is not named in the pod, so `k8s.cronjob.name` is not set
/// (the Job's name carries a schedule suffix no rule can tell from a
/// Job's own name with digits).
fn workload(owners: &[OwnerRef], labels: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
    let Some(owner) = owners.iter().find(|o| o.controller) else {
        return Vec::new();
    };
    let name = owner.name.clone();
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let deployment = labels
                .get("pod-template-hash")
                .filter(|h| !h.is_empty())
                .and_then(|h| name.strip_suffix(h.as_str())?.strip_suffix('-'))
                .filter(|d| !d.is_empty())
                .map(str::to_owned);
            deployment
                .map(|d| ("k8s.deployment.name", d))
                .into_iter()
                .chain([("k8s.replicaset.name", name)])
                .collect()
        }
        "StatefulSet" => vec![("k8s.statefulset.name", name)],
        "DaemonSet" => vec![("k8s.daemonset.name", name)],
        "Job" => vec![("k8s.job.name", name)],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pod_json(extra: serde_json::Value) -> WirePod {
        let mut base = serde_json::json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": "web-7d4b9c8f5-x2x9q",
                "namespace": "shop",
                "uid": "0f6a1d2c-3b4e-4f5a-8b9c-0d1e2f3a4b5c",
                "resourceVersion": "12345",
                "labels": {"app": "web", "pod-template-hash": "7d4b9c8f5"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}",
                    "resource.opentelemetry.io/service.version": "1.4.2"
                },
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-7d4b9c8f5", "uid": "x", "controller": true
                }],
                "managedFields": [{"manager": "kube-controller-manager"}]
            },
            "spec": {
                "nodeName": "node-1",
                "containers": [{"name": "app", "image": "web:1"}, {"name": "proxy"}]
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {"name": "app", "containerID": "containerd://aaaa", "ready": true},
                    {"name": "proxy", "containerID": "containerd://bbbb"}
                ]
            }
        });
        merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn deployment_pod() {
        let p = Pod::from_wire(pod_json(serde_json::json!({})));
        assert_eq!(p.name, "web-7d4b9c8f5-x2x9q");
        assert_eq!(p.namespace, "shop");
        assert_eq!(p.node, "node-1");
        assert_eq!(
            p.workload,
            vec![
                ("k8s.deployment.name", "web".to_owned()),
                ("k8s.replicaset.name", "web-7d4b9c8f5".to_owned())
            ]
        );
        assert_eq!(p.service_name(), "web");
        assert_eq!(p.container_name(Some("aaaa")), Some("app"));
        assert_eq!(p.container_name(Some("bbbb")), Some("proxy"));
        // Two containers: an unknown id names none.
        assert_eq!(p.container_name(Some("cccc")), None);
        assert_eq!(p.container_name(None), None);
        assert_eq!(
            p.resource_annotations,
            vec![("service.version".to_owned(), "1.4.2".to_owned())]
        );
        assert_eq!(p.labels.get("app").map(String::as_str), Some("web"));
    }

    #[test]
    fn a_replicaset_not_named_after_the_hash_is_no_deployment() {
        let p = Pod::from_wire(pod_json(serde_json::json!({
            "metadata": {"ownerReferences": [{"kind": "ReplicaSet", "name": "hand-made", "controller": true}]}
        })));
        assert_eq!(
            p.workload,
            vec![("k8s.replicaset.name", "hand-made".to_owned())]
        );
        assert_eq!(p.service_name(), "hand-made");
    }

    #[test]
    fn other_owners_and_none() {
        for (kind, key) in [
            ("StatefulSet", "k8s.statefulset.name"),
            ("DaemonSet", "k8s.daemonset.name"),
            ("Job", "k8s.job.name"),
        ] {
            let p = Pod::from_wire(pod_json(serde_json::json!({
                "metadata": {"ownerReferences": [
                    {"kind": "Node", "name": "node-1", "controller": false},
                    {"kind": kind, "name": "db", "controller": true}
                ]}
            })));
            assert_eq!(p.workload, vec![(key, "db".to_owned())], "{kind}");
        }
        let bare = Pod::from_wire(pod_json(serde_json::json!({
            "metadata": {"ownerReferences": [], "annotations": {}}
        })));
        assert!(bare.workload.is_empty());
        assert_eq!(bare.service_name(), "web-7d4b9c8f5-x2x9q");
        let named = Pod::from_wire(pod_json(serde_json::json!({
            "metadata": {"annotations": {"resource.opentelemetry.io/service.name": "storefront"}}
        })));
        assert_eq!(named.service_name(), "storefront");
    }

    #[test]
    fn a_single_container_is_named_before_its_status() {
        let p = Pod::from_wire(pod_json(serde_json::json!({
            "spec": {"containers": [{"name": "app"}]},
            "status": {"containerStatuses": [{"name": "app", "containerID": ""}]}
        })));
        assert!(p.containers.is_empty());
        assert_eq!(p.container_name(Some("aaaa")), Some("app"));
        let with_init = Pod::from_wire(pod_json(serde_json::json!({
            "spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "migrate"}]},
            "status": {"containerStatuses": []}
        })));
        assert_eq!(with_init.container_name(Some("aaaa")), None);
    }

    #[test]
    fn static_pod_mirror() {
        let p = Pod::from_wire(pod_json(serde_json::json!({
            "metadata": {"annotations": {"kubernetes.io/config.mirror": "8daa50c3a64c9ff60bb9eab7b44b56fd"}}
        })));
        assert_eq!(
            p.mirror_of.as_deref(),
            Some("8daa50c3a64c9ff60bb9eab7b44b56fd")
        );
    }

    #[test]
    fn labels_are_bounded() {
        let labels: serde_json::Map<String, serde_json::Value> = (0..MAX_LABELS + 5)
            .map(|i| (format!("l{i:03}"), serde_json::Value::from("v")))
            .collect();
        let p = Pod::from_wire(pod_json(
            serde_json::json!({"metadata": {"labels": labels}}),
        ));
        // The two labels of the base object come on top.
        assert_eq!(p.labels.len(), MAX_LABELS);
        assert_eq!(p.labels_dropped, 5 + 2);
    }

    #[test]
    fn missing_and_unknown_fields_decode_to_defaults() {
        let w: WirePod =
            serde_json::from_str(r#"{"metadata":{"name":"x","future":{"a":[1]}},"kind":"Pod"}"#)
                .unwrap();
        let p = Pod::from_wire(w);
        assert_eq!((p.name.as_str(), p.uid.as_str()), ("x", ""));
        assert!(p.workload.is_empty() && p.containers.is_empty());
        // A label that is not a string is a malformed object, not a default.
        assert!(serde_json::from_str::<WirePod>(r#"{"metadata":{"labels":{"a":1}}}"#).is_err());
    }
}
