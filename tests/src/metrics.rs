//! RED-metric checks: a client that sends a list of paths, and the agent's
//! `/metrics` scraped the way Prometheus does (asking for OpenMetrics) and
//! parsed by a real OpenMetrics parser.

use crate::agent::Agent;
use crate::cgroup::Cgroup;
use crate::env::{peers_dir, python};
use crate::fixture::Traced;
use crate::net::http_negotiated;
use crate::peers::PyService;
use crate::process::TempDir;
use crate::receiver::{Protocol, Receiver};
use anyhow::{bail, Context, Result};
use openmetrics_parser::{openmetrics::parse_openmetrics, OpenMetricsValue};
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::Duration;

/// `service.name` of `route_client.py`.
pub const ROUTE_CLIENT: &str = "route-client";

/// What Prometheus (2.x and 3.x) sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// The service `backend` in a cgroup of its own, traced by an agent that
/// exports spans and (every second) metrics to a receiver. Dropped in
/// field order: the agent first, the cgroup last.
pub struct Rig {
    pub agent: Agent,
    pub svc: PyService,
    pub rx: Receiver,
    pub cg: Cgroup,
}

impl Rig {
    /// `args` and `env` go to the agent (e.g. `OTEL_TRACES_SAMPLER`).
    pub fn start(
        name: &str,
        protocol: Protocol,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Rig> {
        let mut vars = vec![("OTEL_METRIC_EXPORT_INTERVAL", "1000")];
        vars.extend_from_slice(env);
        let Traced { agent, rx, cg } = Traced::start_with_env(name, protocol, args, &vars)?;
        let svc = PyService::start(&cg, "backend", None)?;
        Ok(Rig { agent, svc, rx, cg })
    }

    /// Sends `paths` to the service from the client (see [`route_client`]).
    pub fn requests(&self, paths: &[String], connections: usize) -> Result<BTreeMap<u16, usize>> {
        route_client(&self.cg, self.svc.port, paths, connections)
    }

    /// Stops the agent, requiring a clean exit.
    pub fn stop(self) -> Result<()> {
        self.agent.stop()
    }
}

/// GETs every path in `paths` against 127.0.0.1:`port` from inside `cg`
/// over `connections` kept-alive connections; answers per status.
fn route_client(
    cg: &Cgroup,
    port: u16,
    paths: &[String],
    connections: usize,
) -> Result<BTreeMap<u16, usize>> {
    let dir = TempDir::new("routes")?;
    let list = dir.join("paths.txt");
    std::fs::write(&list, paths.join("\n"))?;
    let py = python()?;
    let out = cg
        .run(
            Command::new(&py.path)
                .arg(peers_dir().join("route_client.py"))
                .args(["--port", &port.to_string()])
                .arg("--paths")
                .arg(&list)
                .args(["--connections", &connections.to_string()])
                .env("OTEL_SERVICE_NAME", ROUTE_CLIENT),
            Duration::from_secs(300),
        )?
        .ok()
        .context("route_client.py")?;
    let counts: HashMap<String, usize> = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("route_client.py printed {:?}", out.stdout))?;
    counts
        .into_iter()
        .map(|(k, v)| Ok((k.parse()?, v)))
        .collect()
}

/// One series of a histogram or counter family on `/metrics`.
#[derive(Clone, Debug)]
pub struct Series {
    pub labels: HashMap<String, String>,
    /// A histogram's `_count`, or a counter's value.
    pub count: u64,
    /// (trace id, span id) of each bucket's exemplar.
    pub exemplars: Vec<(String, String)>,
}

impl Series {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every series of every family on the agent's `/metrics`, asked for as
/// Prometheus asks; fails unless the answer is OpenMetrics that parses.
pub fn scrape(agent: &Agent) -> Result<HashMap<String, Vec<Series>>> {
    let url = agent.health_url("/metrics");
    let (content_type, text) = http_negotiated(&url, PROMETHEUS_ACCEPT)?;
    if !content_type.starts_with("application/openmetrics-text") {
        bail!("/metrics answered Prometheus' scrape with {content_type:?}");
    }
    let exposition = parse_openmetrics(&text)
        .map_err(|e| anyhow::anyhow!("/metrics is not valid OpenMetrics: {e:?}\n{text}"))?;
    let mut out = HashMap::new();
    for (name, family) in exposition.families {
        let series = family
            .iter_samples()
            .filter_map(|sample| {
                // Prometheus reads an empty label as an absent one.
                let labels = sample
                    .get_labelset()
                    .ok()?
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let (count, exemplars) = match &sample.value {
                    OpenMetricsValue::Histogram(h) => {
                        let exemplars = h
                            .buckets
                            .iter()
                            .filter_map(|b| b.exemplar.as_ref())
                            .map(|e| {
                                let id = |k: &str| e.labels.get(k).cloned().unwrap_or_default();
                                (id("trace_id"), id("span_id"))
                            })
                            .collect();
                        (h.count?, exemplars)
                    }
                    OpenMetricsValue::Counter(c) => (c.value.as_f64() as u64, Vec::new()),
                    OpenMetricsValue::Unknown(n) => (n.as_f64() as u64, Vec::new()),
                    _ => return None,
                };
                Some(Series {
                    labels,
                    count,
                    exemplars,
                })
            })
            .collect();
        out.insert(name, series);
    }
    Ok(out)
}
