//! Who a traced process is: its OpenTelemetry resource, read once from
//! /proc (environment, executable, command line) and cached until it exits
//! or execs.

use std::{collections::HashMap, fs, path::Path, sync::Arc};

use crate::{
    redact::SecretNames,
    span::{AttrValue, Resource},
};

/// Cached resources; bounded because pids of exited processes we never
/// heard about (missed exit records) would otherwise accumulate.
pub struct Processes {
    host: String,
    cache: HashMap<u32, Arc<Resource>>,
    /// `process.command_line` is exported, redacted by these names
    /// (`--command-line redacted`); None leaves it out.
    command_line: Option<SecretNames>,
    /// The agent's own `OTEL_RESOURCE_ATTRIBUTES` (cluster, environment):
    /// facts about the node that every process on it shares.
    agent_attributes: Vec<(String, AttrValue)>,
}

const MAX_CACHED: usize = 16384;

impl Processes {
    pub fn new() -> Self {
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        Processes {
            host,
            cache: HashMap::new(),
            command_line: None,
            agent_attributes: Vec::new(),
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

    pub fn resource(&mut self, tgid: u32) -> Arc<Resource> {
        if let Some(r) = self.cache.get(&tgid) {
            return r.clone();
        }
        if self.cache.len() >= MAX_CACHED {
            self.cache
                .retain(|pid, _| Path::new(&format!("/proc/{pid}")).exists());
        }
        let mut resource = build(tgid, &facts(tgid), &self.host, self.command_line.as_ref());
        add_missing(&mut resource, &self.agent_attributes);
        let r = Arc::new(resource);
        self.cache.insert(tgid, r.clone());
        r
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
    ProcFacts {
        env,
        exe_path,
        comm,
        cmdline,
        start_time,
    }
}

/// The resource of a process from its /proc facts (pure, for tests).
pub fn build(pid: u32, f: &ProcFacts, host: &str, command_line: Option<&SecretNames>) -> Resource {
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
    Resource {
        pid,
        service_name,
        attributes: attrs,
        sdk_exports: sdk_exports(env),
    }
}

/// Adds the attributes the resource does not have yet: the process's own
/// values (and the service name) win over the agent's.
fn add_missing(resource: &mut Resource, attributes: &[(String, AttrValue)]) {
    for (key, value) in attributes {
        if !resource.attributes.iter().any(|(k, _)| k == key) {
            resource.attributes.push((key.clone(), value.clone()));
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
        );
        assert_eq!(r.service_name, "checkout");
        let r = build(
            1,
            &facts_with(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=cart,team=a%20b")]),
            "h",
            None,
        );
        assert_eq!(r.service_name, "cart");
        assert_eq!(get(&r, "team"), Some(&AttrValue::Str("a b".into())));
        let r = build(1, &facts_with(&[]), "h", None);
        assert_eq!(r.service_name, "python3.11");
    }

    #[test]
    fn process_attributes() {
        let r = build(42, &facts_with(&[]), "node-1", None);
        assert_eq!(get(&r, "process.pid"), Some(&AttrValue::Int(42)));
        assert_eq!(get(&r, "process.command_line"), None);
        let redacted = build(
            42,
            &facts_with(&[]),
            "node-1",
            Some(&SecretNames::default()),
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
        let exports = |env: &[(&str, &str)]| build(1, &facts_with(env), "h", None).sdk_exports;
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
    fn gone_process_gets_a_placeholder_name() {
        let r = build(9, &ProcFacts::default(), "h", None);
        assert_eq!(r.service_name, "unknown_service:9");
    }
}
