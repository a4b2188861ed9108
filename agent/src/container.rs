//! The resource attributes a process's container and pod give it:
//! `container.*` from its cgroup, `k8s.*` from its pod's metadata, and the
//! defaults the semantic conventions derive from them (`service.name`,
//! `service.namespace`, `resource.opentelemetry.io/` annotations).

use crate::{cgroup::identity::Identity, k8s::pod::Pod};

/// What a process's container and pod say about it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ContainerResource {
    /// Facts: they replace what the process claims for the same keys.
    pub facts: Vec<(&'static str, String)>,
    /// `service.name` when the process names none.
    pub service_name: Option<String>,
    /// Filled in where the process has no value of its own.
    pub defaults: Vec<(String, String)>,
    /// The process is in a pod the cache does not know (yet), or in one
    /// whose containers the kubelet has not reported: worth building again
    /// when the cache changes.
    pub incomplete: bool,
}

impl ContainerResource {
    /// `pod` is the cache's entry for `identity.pod_uid` (if any); `pods`
    /// says whether pod metadata is watched at all.
    pub fn new(identity: &Identity, pod: Option<&Pod>, pods: bool) -> Self {
        let mut facts = Vec::new();
        if let Some(id) = &identity.container_id {
            facts.push(("container.id", id.clone()));
        }
        if let Some(r) = identity.runtime {
            facts.push(("container.runtime.name", r.name().to_owned()));
        }
        let Some(pod) = pod else {
            if let Some(uid) = &identity.pod_uid {
                facts.push(("k8s.pod.uid", uid.clone()));
            }
            return ContainerResource {
                facts,
                incomplete: pods && identity.pod_uid.is_some(),
                ..Default::default()
            };
        };
        // The API's uid, which the Collector's k8sattributes associates
        // by (a static pod's cgroup carries its config hash instead).
        facts.push(("k8s.pod.uid", pod.uid.clone()));
        facts.push(("k8s.pod.name", pod.name.clone()));
        facts.push(("k8s.namespace.name", pod.namespace.clone()));
        if !pod.node.is_empty() {
            facts.push(("k8s.node.name", pod.node.clone()));
        }
        facts.extend(pod.workload.iter().map(|(k, v)| (*k, v.clone())));
        let container = pod.container_name(identity.container_id.as_deref());
        if let Some(name) = container {
            facts.push(("k8s.container.name", name.to_owned()));
        }
        let mut defaults = pod.resource_annotations.clone();
        if pod.annotation("service.namespace").is_none() {
            defaults.push(("service.namespace".into(), pod.namespace.clone()));
        }
        ContainerResource {
            facts,
            service_name: Some(pod.service_name()),
            defaults,
            incomplete: container.is_none() && identity.container_id.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::identity::Runtime;

    fn pod(containers: &[(&str, &str)], sole: Option<&str>) -> Pod {
        Pod {
            resource_annotations: vec![("service.version".into(), "1.4.2".into())],
            workload: vec![
                ("k8s.deployment.name", "web".into()),
                ("k8s.replicaset.name", "web-7d4b9c8f5".into()),
            ],
            containers: containers
                .iter()
                .map(|(id, n)| (id.to_string(), n.to_string()))
                .collect(),
            sole_container: sole.map(str::to_owned),
            ..Pod::named("api-uid", "web-7d4b9c8f5-x2x9q", "shop")
        }
    }

    fn identity() -> Identity {
        Identity {
            container_id: Some("c1".into()),
            pod_uid: Some("cgroup-uid".into()),
            runtime: Some(Runtime::Containerd),
        }
    }

    fn fact<'a>(r: &'a ContainerResource, key: &str) -> Option<&'a str> {
        r.facts
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_known_pod_names_everything() {
        let r = ContainerResource::new(&identity(), Some(&pod(&[("c1", "app")], None)), true);
        assert_eq!(fact(&r, "container.id"), Some("c1"));
        assert_eq!(fact(&r, "container.runtime.name"), Some("containerd"));
        assert_eq!(fact(&r, "k8s.pod.uid"), Some("api-uid"));
        assert_eq!(fact(&r, "k8s.pod.name"), Some("web-7d4b9c8f5-x2x9q"));
        assert_eq!(fact(&r, "k8s.namespace.name"), Some("shop"));
        assert_eq!(fact(&r, "k8s.node.name"), Some("node-1"));
        assert_eq!(fact(&r, "k8s.container.name"), Some("app"));
        assert_eq!(fact(&r, "k8s.deployment.name"), Some("web"));
        assert_eq!(r.service_name.as_deref(), Some("web"));
        assert_eq!(
            r.defaults,
            vec![
                ("service.version".into(), "1.4.2".into()),
                ("service.namespace".into(), "shop".into())
            ]
        );
        assert!(!r.incomplete);
    }

    #[test]
    fn pod_not_known_yet() {
        let r = ContainerResource::new(&identity(), None, true);
        assert_eq!(fact(&r, "k8s.pod.uid"), Some("cgroup-uid"));
        assert_eq!(fact(&r, "k8s.pod.name"), None);
        assert_eq!(r.service_name, None);
        assert!(r.incomplete);
        // Without the API nothing more will come.
        assert!(!ContainerResource::new(&identity(), None, false).incomplete);
    }

    #[test]
    fn container_not_reported_yet() {
        let r = ContainerResource::new(&identity(), Some(&pod(&[("c9", "other")], None)), true);
        assert_eq!(fact(&r, "k8s.container.name"), None);
        assert!(r.incomplete);
        let sole = ContainerResource::new(&identity(), Some(&pod(&[], Some("app"))), true);
        assert_eq!(fact(&sole, "k8s.container.name"), Some("app"));
        assert!(!sole.incomplete);
    }

    #[test]
    fn outside_kubernetes() {
        let docker = Identity {
            container_id: Some("c1".into()),
            pod_uid: None,
            runtime: Some(Runtime::Docker),
        };
        let r = ContainerResource::new(&docker, None, true);
        assert_eq!(
            r.facts,
            vec![
                ("container.id", "c1".to_owned()),
                ("container.runtime.name", "docker".to_owned())
            ]
        );
        assert!(!r.incomplete);
        assert_eq!(
            ContainerResource::new(&Identity::default(), None, true),
            ContainerResource::default()
        );
    }
}
