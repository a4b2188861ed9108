//! Who a traced process is: its OpenTelemetry resource, read once from
//! /proc (environment, executable, command line, cgroup) and the pod cache,
//! and cached until it exits or execs.

use std::{fs, path::Path, sync::Arc};

use foldhash::HashMap;

use crate::{
    cgroup::{self, identity, Hierarchy},
    container::ContainerResource,
    k8s::{pod::Pod, SharedPods},
    matcher::Subject,
    redact::SecretNames,
    span::{AttrValue, Resource},
    stats::{self, Stats},
    tenant::Tenants,
};

/// Cached resources; bounded because pids of exited processes we never
/// heard about (missed exit records) would otherwise accumulate.
pub struct Processes {
    host: String,
    cache: HashMap<u32, Cached>,
    /// `process.command_line` is exported, redacted by these names
    /// (`--command-line redacted`); None leaves it out.
    command_line: Option<SecretNames>,
    /// The agent's own `OTEL_RESOURCE_ATTRIBUTES` (cluster, environment):
    /// facts about the node that every process on it shares.
    agent_attributes: Vec<(String, AttrValue)>,
    identity: Identity,
}

/// Where containers, pods and tenants come from.
#[derive(Default)]
pub struct Identity {
    pub hierarchy: Hierarchy,
    /// The pod cache, when the Kubernetes API is watched.
    pub pods: Option<SharedPods>,
    pub tenants: Tenants,
    /// Counts resources built before their pod was known.
    pub stats: Option<Arc<Stats>>,
}

struct Cached {
    resource: Arc<Resource>,
    /// Built before the process's pod (or container) was known: the facts
    /// to build it again from once the pod cache has changed.
    retry: Option<Retry>,
}

struct Retry {
    facts: Box<ProcFacts>,
    generation: u64,
}

const MAX_CACHED: usize = 16384;

impl Processes {
    pub fn new() -> Self {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        Processes {
            host,
            cache: HashMap::default(),
            command_line: None,
            agent_attributes: Vec::new(),
            identity: Identity::default(),
        }
    }

    /// Adds the agent's own resource attributes (`OTEL_RESOURCE_ATTRIBUTES`,
    /// the file's `resource.attributes`) to every resource.
    pub fn add_agent_attributes(&mut self, attributes: &[(String, String)]) {
        self.agent_attributes = attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        self.cache.clear();
    }

    /// Exports `process.command_line`, redacted by `names`.
    pub fn export_command_lines(&mut self, names: SecretNames) {
        self.command_line = Some(names);
        self.cache.clear();
    }

    /// Reads containers and pods through `identity`, and applies its tenants.
    pub fn set_identity(&mut self, identity: Identity) {
        self.identity = identity;
        self.cache.clear();
    }

    pub fn resource(&mut self, tgid: u32) -> Arc<Resource> {
        let generation = self.pods_generation();
        let retry = match self.cache.get_mut(&tgid) {
            Some(Cached {
                resource,
                retry: None,
            }) => return resource.clone(),
            Some(Cached {
                resource,
                retry: Some(r),
            }) => {
                if Some(r.generation) == generation {
                    return resource.clone();
                }
                Some(std::mem::take(&mut r.facts))
            }
            None => None,
        };
        if retry.is_none() && self.cache.len() >= MAX_CACHED {
            self.cache
                .retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
        }
        let first = retry.is_none();
        let facts = retry.unwrap_or_else(|| Box::new(facts(tgid)));
        let cached = self.make(tgid, facts, generation);
        if first && cached.retry.is_some() {
            if let Some(stats) = &self.identity.stats {
                stats::add(&stats.k8s_resources_incomplete, 1);
            }
        }
        let r = cached.resource.clone();
        self.cache.insert(tgid, cached);
        r
    }

    /// The pod process `pid` runs in, when the pod cache knows it.
    pub fn pod_of(&self, pid: u32) -> Option<Arc<Pod>> {
        let pods = self.identity.pods.as_ref()?;
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let uid = identity::from_proc_cgroup(&text).pod_uid?;
        pods.lock().get(&uid)
    }

    /// The pod cache's generation (`None` without one).
    pub fn pods_generation(&self) -> Option<u64> {
        Some(self.identity.pods.as_ref()?.lock().generation())
    }

    fn make(&self, tgid: u32, facts: Box<ProcFacts>, generation: Option<u64>) -> Cached {
        let found = identity::from_proc_cgroup(&facts.cgroup);
        let pod = match (&self.identity.pods, &found.pod_uid) {
            (Some(pods), Some(uid)) => pods.lock().get(uid),
            _ => None,
        };
        let container =
            ContainerResource::new(&found, pod.as_deref(), self.identity.pods.is_some());
        let mut resource = build(
            tgid,
            &facts,
            &self.host,
            self.command_line.as_ref(),
            &container,
        );
        let tenants = &self.identity.tenants;
        if !tenants.is_empty() {
            let dir =
                cgroup::v2_path(&facts.cgroup).and_then(|p| self.identity.hierarchy.dir_of(p));
            let subject = Subject {
                cgroup: dir.as_deref(),
                exe: Path::new(&facts.exe_path),
                comm: &facts.comm,
                pod: pod.as_deref(),
            };
            for (k, v) in tenants.attributes(&subject) {
                set(&mut resource, k, v.clone().into());
                if k == "service.name" {
                    resource.service_name = v.clone();
                }
            }
        }
        add_missing(&mut resource, &self.agent_attributes);
        let retry = match generation {
            Some(generation) if container.incomplete => Some(Retry { facts, generation }),
            _ => None,
        };
        Cached {
            resource: Arc::new(resource),
            retry,
        }
    }

    /// The process exited or exec'd another program.
    pub fn forget(&mut self, tgid: u32) {
        self.cache.remove(&tgid);
    }
}

impl Default for Processes {
    fn default() -> Self {
        Self::new()
    }
}

/// What /proc says about a process (empty fields when it is already gone).
#[derive(Default)]
pub struct ProcFacts {
    pub env: Vec<(String, String)>,
    pub exe_path: String,
    pub comm: String,
    pub cmdline: Vec<String>,
    pub start_time: u64,
    /// `/proc/PID/cgroup` as read.
    pub cgroup: String,
}

pub fn facts(pid: u32) -> ProcFacts {
    let base = format!("/proc/{pid}");
    let split0 = |b: Vec<u8>| -> Vec<String> {
        b.split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    };
    let env = fs::read(format!("{base}/environ"))
        .map(split0)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let exe_path = fs::read_link(format!("{base}/exe"))
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        })
        .unwrap_or_default();
    let comm = fs::read_to_string(format!("{base}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cmdline = fs::read(format!("{base}/cmdline"))
        .map(split0)
        .unwrap_or_default();
    // Field 22 of stat, counted after the parenthesised comm (which may hold spaces).
    let start_time = fs::read_to_string(format!("{base}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok())
        })
        .unwrap_or(0);
    let cgroup = fs::read_to_string(format!("{base}/cgroup")).unwrap_or_default();
    ProcFacts {
        env,
        exe_path,
        comm,
        cmdline,
        start_time,
        cgroup,
    }
}

/// The resource of a process from its /proc facts and what its container
/// and pod say (pure, for tests).
pub fn build(
    pid: u32,
    f: &ProcFacts,
    host: &str,
    command_line: Option<&SecretNames>,
    container: &ContainerResource,
) -> Resource {
    let env = |k: &str| f.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let exe_name = Path::new(&f.exe_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| f.comm.clone());
    let mut attrs: Vec<(String, AttrValue)> = Vec::new();
    // OTEL_RESOURCE_ATTRIBUTES first, so the agent's own facts win on clashes
    // except service.name, whose precedence the SDK spec defines.
    for (k, v) in env("OTEL_RESOURCE_ATTRIBUTES")
        .map(crate::trace_context::parse_baggage)
        .unwrap_or_default()
    {
        attrs.push((k, v.into()));
    }
    let from_attrs = attrs
        .iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v.to_string());
    let service_name = env("OTEL_SERVICE_NAME")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or(from_attrs)
        .or_else(|| container.service_name.clone())
        .unwrap_or_else(|| {
            if exe_name.is_empty() {
                format!("unknown_service:{pid}")
            } else {
                exe_name.clone()
            }
        });
    let mut set = |k: &str, v: AttrValue| {
        attrs.retain(|(n, _)| n != k);
        attrs.push((k.to_owned(), v));
    };
    set("service.name", service_name.clone().into());
    for (k, v) in &container.facts {
        set(k, v.clone().into());
    }
    set(
        "service.instance.id",
        format!("{host}/{pid}/{}", f.start_time).into(),
    );
    set("process.pid", (pid as i64).into());
    set("process.executable.name", exe_name.into());
    if !f.exe_path.is_empty() {
        set("process.executable.path", f.exe_path.clone().into());
    }
    if let Some(names) = command_line.filter(|_| !f.cmdline.is_empty()) {
        set(
            "process.command_line",
            names.command_line(&f.cmdline).into(),
        );
    }
    set("host.name", host.to_owned().into());
    set("telemetry.sdk.name", "clew".into());
    set("telemetry.sdk.language", "rust".into());
    set("telemetry.sdk.version", env!("CARGO_PKG_VERSION").into());
    let mut resource = Resource {
        pid,
        service_name,
        attributes: attrs,
        sdk_exports: sdk_exports(env),
    };
    add_missing(&mut resource, &container.defaults);
    resource
}

fn set(resource: &mut Resource, key: &str, value: AttrValue) {
    resource.attributes.retain(|(n, _)| n != key);
    resource.attributes.push((key.to_owned(), value));
}

/// Adds the attributes the resource does not have yet: the process's own
/// values (and the service name) win over the agent's.
fn add_missing<V: Clone + Into<AttrValue>>(resource: &mut Resource, attributes: &[(String, V)]) {
    for (key, value) in attributes {
        if !resource.attributes.iter().any(|(k, _)| k == key) {
            resource
                .attributes
                .push((key.clone(), value.clone().into()));
        }
    }
}

/// Whether the environment configures an OpenTelemetry SDK to export
/// spans: an OTLP endpoint, or a traces exporter other than `none`, and
/// the SDK not disabled. (A process configured in code is found by its
/// exports instead, see `sdk::DeferToSdk`.)
fn sdk_exports<'a>(env: impl Fn(&str) -> Option<&'a str>) -> bool {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    match env("OTEL_TRACES_EXPORTER") {
        Some(list) => list.split(',').any(|e| !matches!(e.trim(), "" | "none")),
        None => [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|k| env(k).is_some_and(|v| !v.trim().is_empty())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts_with(env: &[(&str, &str)]) -> ProcFacts {
        ProcFacts {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            exe_path: "/usr/bin/python3.11".into(),
            comm: "python3".into(),
            cmdline: vec!["python3".into(), "app.py".into()],
            start_time: 77,
            cgroup: String::new(),
        }
    }

    fn get<'a>(r: &'a Resource, k: &str) -> Option<&'a AttrValue> {
        r.attributes.iter().find(|(n, _)| n == k).map(|(_, v)| v)
    }

    #[test]
    fn service_name_precedence() {
        let r = build(
            1,
            &facts_with(&[("OTEL_SERVICE_NAME", "checkout")]),
            "h",
            None,
            &ContainerResource::default(),
        );
        assert_eq!(r.service_name, "checkout");
        let r = build(
            1,
            &facts_with(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=cart,team=a%20b")]),
            "h",
            None,
            &ContainerResource::default(),
        );
        assert_eq!(r.service_name, "cart");
        assert_eq!(get(&r, "team"), Some(&AttrValue::Str("a b".into())));
        let r = build(
            1,
            &facts_with(&[]),
            "h",
            None,
            &ContainerResource::default(),
        );
        assert_eq!(r.service_name, "python3.11");
    }

    #[test]
    fn process_attributes() {
        let r = build(
            42,
            &facts_with(&[]),
            "node-1",
            None,
            &ContainerResource::default(),
        );
        assert_eq!(get(&r, "process.pid"), Some(&AttrValue::Int(42)));
        assert_eq!(get(&r, "process.command_line"), None);
        let redacted = build(
            42,
            &facts_with(&[]),
            "node-1",
            Some(&SecretNames::default()),
            &ContainerResource::default(),
        );
        assert_eq!(
            get(&redacted, "process.command_line"),
            Some(&AttrValue::Str("python3 app.py".into()))
        );
        assert_eq!(get(&r, "host.name"), Some(&AttrValue::Str("node-1".into())));
        assert_eq!(
            get(&r, "telemetry.sdk.name"),
            Some(&AttrValue::Str("clew".into()))
        );
        assert_eq!(
            get(&r, "service.instance.id"),
            Some(&AttrValue::Str("node-1/42/77".into()))
        );
    }

    #[test]
    fn sdk_exporters_are_known_by_their_environment() {
        let exports = |env: &[(&str, &str)]| {
            build(
                1,
                &facts_with(env),
                "h",
                None,
                &ContainerResource::default(),
            )
            .sdk_exports
        };
        assert!(exports(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]));
        assert!(exports(&[("OTEL_TRACES_EXPORTER", "console,otlp")]));
        assert!(!exports(&[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")
        ]));
        assert!(!exports(&[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")
        ]));
        assert!(!exports(&[("OTEL_SERVICE_NAME", "checkout")]));
    }

    #[test]
    fn agent_attributes_fill_in_what_the_process_does_not_say() {
        let mut r = build(
            1,
            &facts_with(&[(
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=dev",
            )]),
            "h",
            None,
            &ContainerResource::default(),
        );
        let agent = [
            ("k8s.cluster.name", "prod-eu"),
            ("deployment.environment.name", "prod"),
            ("service.name", "clew"),
        ]
        .map(|(k, v)| (k.to_owned(), AttrValue::Str(v.into())));
        add_missing(&mut r, &agent);
        let text = |k| get(&r, k).map(ToString::to_string);
        assert_eq!(text("k8s.cluster.name").as_deref(), Some("prod-eu"));
        assert_eq!(text("deployment.environment.name").as_deref(), Some("dev"));
        assert_eq!(text("service.name").as_deref(), Some("python3.11"));
    }

    #[test]
    fn container_and_pod_attributes() {
        let container = ContainerResource {
            facts: vec![
                ("container.id", "c1".into()),
                ("k8s.namespace.name", "shop".into()),
            ],
            service_name: Some("web".into()),
            defaults: vec![
                ("service.namespace".into(), "shop".into()),
                ("service.version".into(), "1.4.2".into()),
            ],
            incomplete: false,
        };
        let text = |r: &Resource, k| get(r, k).map(ToString::to_string);
        // The pod names the service; facts replace the process's claims,
        // defaults only fill in.
        let r = build(
            1,
            &facts_with(&[(
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.namespace.name=claimed,service.version=2.0",
            )]),
            "h",
            None,
            &container,
        );
        assert_eq!(r.service_name, "web");
        assert_eq!(text(&r, "service.name").as_deref(), Some("web"));
        assert_eq!(text(&r, "container.id").as_deref(), Some("c1"));
        assert_eq!(text(&r, "k8s.namespace.name").as_deref(), Some("shop"));
        assert_eq!(text(&r, "service.namespace").as_deref(), Some("shop"));
        assert_eq!(text(&r, "service.version").as_deref(), Some("2.0"));
        // A process that names itself keeps its name.
        let own = build(
            1,
            &facts_with(&[("OTEL_SERVICE_NAME", "checkout")]),
            "h",
            None,
            &container,
        );
        assert_eq!(own.service_name, "checkout");
    }

    #[test]
    fn gone_process_gets_a_placeholder_name() {
        let r = build(
            9,
            &ProcFacts::default(),
            "h",
            None,
            &ContainerResource::default(),
        );
        assert_eq!(r.service_name, "unknown_service:9");
    }
}
