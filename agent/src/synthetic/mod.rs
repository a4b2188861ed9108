//! The synthetic probe, an optional self-check: every interval the agent
//! sends each configured endpoint of a traced process a request carrying a
//! trace context of its own making, then watches for the SERVER span the
//! target builds as that context's child and for the collector's
//! acknowledgement of it. Tracing is then known to work end to end
//! (capture, parsing, span assembly, export), not merely to be running.
//!
//! The agent never traces its own traffic (the kernel programs skip its
//! process), so the request makes no CLIENT span: the target's SERVER span
//! is what is checked, and its parent (the probe's span id) is not
//! exported. Every span of a probe's trace carries `clew.synthetic = true`
//! and is exported like any other, since its export is part of what is
//! checked; a backend or collector can filter on the attribute.
//!
//! [`Synthetic`] is shared by the probe task ([`probe::run`]), the span
//! processors ([`MarkSynthetic`]), the exporter ([`DeliveryReport`]) and
//! the health endpoint; it holds a few probes at a time.

pub mod probe;

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant, SystemTime},
};

use reqwest::Url;

use crate::{
    export::DeliveryReport,
    processor::Processor,
    span::{Span, SpanId, TraceId},
};

/// The attribute every span of a probe's trace carries.
pub const ATTRIBUTE: &str = "clew.synthetic";

/// Why a probe failed: the `reason` label of `clew_synthetic_probe_failures`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The endpoint did not answer (refused, timed out, not HTTP).
    RequestFailed,
    /// It answered, but no span of the probe's trace was built.
    NoSpan,
    /// The span was built, but the collector did not acknowledge it.
    ExportFailed,
    /// The configured sampler keeps no trace, so no probe can be kept.
    SampledOut,
}

impl Failure {
    const ALL: [Failure; 4] = [
        Failure::RequestFailed,
        Failure::NoSpan,
        Failure::ExportFailed,
        Failure::SampledOut,
    ];

    /// Its place in [`Failure::ALL`].
    fn index(self) -> usize {
        Failure::ALL
            .iter()
            .position(|f| *f == self)
            .expect("every failure is listed")
    }

    pub fn label(self) -> &'static str {
        match self {
            Failure::RequestFailed => "request_failed",
            Failure::NoSpan => "no_span",
            Failure::ExportFailed => "export_failed",
            Failure::SampledOut => "sampled_out",
        }
    }
}

/// The probe's settings: which endpoints, how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticConfig {
    pub targets: Vec<Url>,
    pub interval: Duration,
}

/// The default interval between probes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// A probe target as given: an `http://` or `https://` URL with a host.
pub fn parse_target(text: &str) -> anyhow::Result<Url> {
    let url = Url::parse(text.trim()).map_err(|e| anyhow::anyhow!("{text:?} is not a URL: {e}"))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https") && url.host().is_some(),
        "{text:?}: expected http://host:port/path"
    );
    Ok(url)
}

/// A probe target in the config file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProbeTarget(pub Url);

impl TryFrom<String> for ProbeTarget {
    type Error = anyhow::Error;

    fn try_from(text: String) -> anyhow::Result<Self> {
        parse_target(&text).map(ProbeTarget)
    }
}

impl From<ProbeTarget> for String {
    fn from(t: ProbeTarget) -> String {
        t.0.into()
    }
}

/// How long a probe may take to be acknowledged, at least: a batch lingers
/// up to a second before export, and a slow collector takes a few more.
const MIN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Synthetic {
    inner: Arc<Inner>,
}

struct Inner {
    /// Probes awaiting a verdict; read without the lock on every span.
    pending: AtomicUsize,
    state: Mutex<State>,
}

struct State {
    targets: Vec<Target>,
    probes: HashMap<TraceId, Probe>,
}

struct Target {
    url: Url,
    successes: u64,
    failures: [u64; Failure::ALL.len()],
    last: Option<Verdict>,
    last_success: Option<SystemTime>,
}

struct Verdict {
    failure: Option<(Failure, String)>,
    trace_id: TraceId,
}

struct Probe {
    target: usize,
    /// The context the request carried: the target's span must be its child.
    span_id: SpanId,
    deadline: Instant,
    built: bool,
}

impl Synthetic {
    pub fn new(targets: &[Url]) -> Synthetic {
        let targets = targets
            .iter()
            .map(|url| Target {
                url: url.clone(),
                successes: 0,
                failures: [0; Failure::ALL.len()],
                last: None,
                last_success: None,
            })
            .collect();
        Synthetic {
            inner: Arc::new(Inner {
                pending: AtomicUsize::new(0),
                state: Mutex::new(State {
                    targets,
                    probes: HashMap::new(),
                }),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere leaves counters, not broken invariants.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sync_pending(&self, state: &State) {
        self.inner.pending.store(state.probes.len(), Relaxed);
    }

    /// A probe about to be sent to target `target` with this context.
    pub fn expect(&self, target: usize, trace_id: TraceId, span_id: SpanId, interval: Duration) {
        let mut state = self.state();
        state.probes.insert(
            trace_id,
            Probe {
                target,
                span_id,
                deadline: Instant::now() + interval.max(MIN_DEADLINE),
                built: false,
            },
        );
        self.sync_pending(&state);
    }

    /// Ends the probe of `trace_id` with a failure (a success when `None`).
    fn resolve(&self, trace_id: &TraceId, failure: Option<(Failure, String)>) {
        let mut state = self.state();
        if let Some(probe) = state.probes.remove(trace_id) {
            state.targets[probe.target].record(*trace_id, failure);
        }
        self.sync_pending(&state);
    }

    pub fn request_failed(&self, trace_id: &TraceId, why: String) {
        self.resolve(trace_id, Some((Failure::RequestFailed, why)));
    }

    /// A target with no probe to send (its sampler keeps no trace).
    pub fn cannot_probe(&self, target: usize, why: String) {
        self.state().targets[target].record([0; 16], Some((Failure::SampledOut, why)));
    }

    /// Ends the probes past their deadline.
    pub fn expire(&self, now: Instant) {
        let mut state = self.state();
        let due: Vec<(TraceId, bool)> = state
            .probes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, p)| (*t, p.built))
            .collect();
        for (trace_id, built) in due {
            let probe = state.probes.remove(&trace_id).expect("listed above");
            let failure = if built {
                (
                    Failure::ExportFailed,
                    "the span was built but not acknowledged in time".to_owned(),
                )
            } else {
                (
                    Failure::NoSpan,
                    "the endpoint answered, but no span of the probe's trace was built".to_owned(),
                )
            };
            state.targets[probe.target].record(trace_id, Some(failure));
        }
        self.sync_pending(&state);
    }

    /// `clew_synthetic_probe_*` in Prometheus text (`unknown` instead of
    /// `counter` for OpenMetrics, as the other counters).
    pub fn render_prometheus(&self, openmetrics: bool, s: &mut String) {
        let ty = if openmetrics { "unknown" } else { "counter" };
        let state = self.state();
        let _ = writeln!(
            s,
            "# HELP clew_synthetic_probe_success synthetic probes whose span was built and acknowledged by the collector\n\
             # TYPE clew_synthetic_probe_success {ty}"
        );
        for t in &state.targets {
            let _ = writeln!(
                s,
                "clew_synthetic_probe_success{{target=\"{}\"}} {}",
                label(t.url.as_str()),
                t.successes
            );
        }
        let _ = writeln!(
            s,
            "# HELP clew_synthetic_probe_failures synthetic probes that failed, by reason\n\
             # TYPE clew_synthetic_probe_failures {ty}"
        );
        for t in &state.targets {
            for (f, n) in Failure::ALL.iter().zip(t.failures) {
                let _ = writeln!(
                    s,
                    "clew_synthetic_probe_failures{{target=\"{}\",reason=\"{}\"}} {n}",
                    label(t.url.as_str()),
                    f.label()
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP clew_synthetic_probe_healthy 1 when the target's last probe succeeded\n\
             # TYPE clew_synthetic_probe_healthy gauge"
        );
        for t in &state.targets {
            let healthy = t.last.as_ref().is_some_and(|v| v.failure.is_none());
            let _ = writeln!(
                s,
                "clew_synthetic_probe_healthy{{target=\"{}\"}} {}",
                label(t.url.as_str()),
                u8::from(healthy)
            );
        }
    }

    /// One line per target for `/readyz`: the last verdict and its reason.
    pub fn readiness(&self) -> String {
        let state = self.state();
        let mut s = String::new();
        for t in &state.targets {
            let since = t.last_success.map_or("never".to_owned(), |at| {
                let ago = SystemTime::now().duration_since(at).unwrap_or_default();
                format!("{}s ago", ago.as_secs())
            });
            let _ = match &t.last {
                None => writeln!(s, "synthetic probe {}: no verdict yet", t.url),
                Some(Verdict {
                    failure: None,
                    trace_id,
                }) => writeln!(
                    s,
                    "synthetic probe {}: ok, tracing verified end to end (trace {}, {since})",
                    t.url,
                    hex::encode(trace_id)
                ),
                Some(Verdict {
                    failure: Some((f, why)),
                    ..
                }) => writeln!(
                    s,
                    "synthetic probe {}: FAILING: {} ({why}); last success {since}",
                    t.url,
                    f.label()
                ),
            };
        }
        s
    }

    /// The probe of the span's trace, if any.
    fn with_probe<T>(&self, trace_id: &TraceId, f: impl FnOnce(&mut Probe) -> T) -> Option<T> {
        if self.inner.pending.load(Relaxed) == 0 {
            return None;
        }
        self.state().probes.get_mut(trace_id).map(f)
    }
}

impl Target {
    /// Logs changes only: a collector outage costs one warning per target,
    /// not one per interval; the counters carry the rest.
    fn record(&mut self, trace_id: TraceId, failure: Option<(Failure, String)>) {
        let before = self
            .last
            .as_ref()
            .map(|v| v.failure.as_ref().map(|(f, _)| *f));
        match &failure {
            None => {
                self.successes += 1;
                self.last_success = Some(SystemTime::now());
                if matches!(before, Some(Some(_))) {
                    tracing::info!(target = %self.url, "synthetic probe succeeds again");
                }
            }
            Some((f, why)) => {
                self.failures[f.index()] += 1;
                if before != Some(Some(*f)) {
                    tracing::warn!(target = %self.url, reason = f.label(), "synthetic probe failed: {why}");
                }
            }
        }
        self.last = Some(Verdict { failure, trace_id });
    }
}

/// A label value as Prometheus text wants it.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The last span processor: marks the spans of a probe's trace, and notes
/// that the target's span (the probe context's child) reached export.
pub struct MarkSynthetic(pub Synthetic);

impl Processor for MarkSynthetic {
    fn process(&mut self, span: &mut Span) -> bool {
        let parent = span.parent_span_id;
        let mine = self.0.with_probe(&span.trace_id, |p| {
            if parent == Some(p.span_id) {
                p.built = true;
            }
        });
        if mine.is_some() {
            span.attributes.push((ATTRIBUTE, true.into()));
        }
        true
    }
}

impl DeliveryReport for Synthetic {
    fn delivered(&self, spans: &[Span], outcome: Result<(), &str>) {
        if self.inner.pending.load(Relaxed) == 0 {
            return;
        }
        let verdicts: Vec<TraceId> = {
            let state = self.state();
            spans
                .iter()
                .filter(|s| {
                    state
                        .probes
                        .get(&s.trace_id)
                        .is_some_and(|p| s.parent_span_id == Some(p.span_id))
                })
                .map(|s| s.trace_id)
                .collect()
        };
        for trace_id in verdicts {
            let failure = outcome
                .err()
                .map(|why| (Failure::ExportFailed, why.to_owned()));
            self.resolve(&trace_id, failure);
        }
    }
}

#[cfg(test)]
mod tests;
