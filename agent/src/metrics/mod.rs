//! RED metrics from every finished transaction, sampled or not: duration
//! histograms per the semantic conventions, with bounded attributes
//! (`http.route` templated, series capped per instrument), exemplars of
//! exported spans only, and the service graph. The pipeline measures a
//! transaction before sampling decides whether it becomes a span, so
//! counts stay exact at any sampling ratio.

pub mod exposition;
pub mod graph;
pub mod histogram;
pub mod instrument;
pub mod otlp;
pub mod registry;
pub mod route;

use std::sync::{Arc, Mutex, MutexGuard};

pub use histogram::Exemplar;
pub use instrument::Instrument;
pub use registry::Registry;
pub use route::{Pattern, Routes};

use crate::{
    span::{Attributes, Resource, SpanId, TraceId},
    stats::{self, Stats},
};
use graph::{Half, Pairing};

/// The registry, shared with the Prometheus endpoint and the OTLP
/// metrics exporter.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<Registry>>);

impl Shared {
    pub fn new(registry: Registry) -> Self {
        Shared(Arc::new(Mutex::new(registry)))
    }

    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding it leaves counts a reader can still use.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a protocol reports of one finished transaction.
pub struct Measurement<'a> {
    pub instrument: Instrument,
    pub duration_ns: u64,
    /// The conventions' low-cardinality attributes, in a fixed order.
    pub attributes: Attributes,
    /// A server request's path, from which `http.route` is templated.
    pub path: Option<&'a str>,
    /// The transaction failed (it carries `error.type`).
    pub failed: bool,
}

/// A measurement ready to record once the fate of its span is known.
pub struct Pending {
    instrument: Instrument,
    attributes: Attributes,
    duration_ns: u64,
    failed: bool,
    span_id: SpanId,
    parent: Option<SpanId>,
}

/// The pipeline's side: templating state and pairing, then one lock per
/// recorded transaction.
pub struct Metrics {
    routes: Routes,
    pairing: Pairing,
    shared: Shared,
    stats: Arc<Stats>,
}

impl Metrics {
    pub fn new(routes: Routes, shared: Shared, stats: Arc<Stats>) -> Self {
        Metrics {
            routes,
            pairing: Pairing::default(),
            shared,
            stats,
        }
    }

    /// Templates the route; cheap enough for every transaction.
    /// `span_id` and `parent` are the transaction's, for the service graph.
    pub fn prepare(
        &mut self,
        m: Measurement<'_>,
        resource: &Resource,
        span_id: SpanId,
        parent: Option<SpanId>,
    ) -> Pending {
        let mut attributes = m.attributes;
        if let Some(route) = m
            .path
            .and_then(|p| self.routes.route(&resource.service_name, p))
        {
            attributes.push(("http.route", route.into()));
        }
        Pending {
            instrument: m.instrument,
            attributes,
            duration_ns: m.duration_ns,
            failed: m.failed,
            span_id,
            parent,
        }
    }

    /// `exported`: the span's end (Unix ns), when it was sampled and
    /// handed to the exporter; only then does it become an exemplar.
    pub fn record(
        &mut self,
        resource: &Arc<Resource>,
        p: Pending,
        trace_id: TraceId,
        exported: Option<u64>,
    ) {
        let value = p.instrument.value(p.duration_ns);
        let exemplar = exported.map(|time_ns| Exemplar {
            value,
            trace_id,
            span_id: p.span_id,
            time_ns,
        });
        let half = || Half {
            resource: resource.clone(),
            seconds: p.duration_ns as f64 / 1e9,
            failed: p.failed,
        };
        let pair = match p.instrument {
            Instrument::HttpClient | Instrument::RpcClient => {
                self.pairing.client(p.span_id, half())
            }
            Instrument::HttpServer | Instrument::RpcServer => p
                .parent
                .and_then(|parent| self.pairing.server(parent, half())),
            Instrument::MessagingClient | Instrument::MessagingProcess => None,
        };
        let mut r = self.shared.lock();
        let before = r.overflowed;
        r.record(resource, p.instrument, p.attributes, value, exemplar);
        if let Some(pair) = pair {
            if r.edges.add(pair) {
                r.overflowed += 1;
            }
        }
        stats::add(&self.stats.metric_overflows, r.overflowed - before);
        stats::set(&self.stats.service_graph_unpaired, self.pairing.unpaired);
    }
}
