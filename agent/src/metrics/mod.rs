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
pub mod series;

use std::sync::{Arc, Mutex, MutexGuard};

pub use histogram::Exemplar;
pub use instrument::Instrument;
pub use registry::Registry;
pub use route::{Pattern, Routes};

use crate::{
    span::{AttrValue, Attributes, Resource, SpanId, TraceId},
    stats::{self, Stats},
};
use graph::{Half, Pairing};

/// String attribute values are cut to this: a series key holds them, and
/// the peer chooses them (a `Host` header, a gRPC `:path`).
const MAX_VALUE_BYTES: usize = 256;

/// The first [`MAX_VALUE_BYTES`] of `s`, cut on a character boundary.
fn truncated(s: &str) -> String {
    let mut end = MAX_VALUE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

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
        for (_, v) in attributes.iter_mut() {
            if let AttrValue::Str(s) = v {
                if s.len() > MAX_VALUE_BYTES {
                    *v = truncated(s).into();
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::resource;

    fn metrics() -> (Metrics, Shared) {
        let shared = Shared::new(Registry::new(100, 0));
        let m = Metrics::new(
            Routes::new(Vec::new(), true),
            shared.clone(),
            Arc::new(Stats::default()),
        );
        (m, shared)
    }

    fn measurement(instrument: Instrument, path: Option<&str>) -> Measurement<'_> {
        Measurement {
            instrument,
            duration_ns: 2_000_000,
            attributes: vec![("server.address", "h".repeat(1000).into())],
            path,
            failed: false,
        }
    }

    #[test]
    fn every_transaction_counts_and_only_exported_ones_are_exemplars() {
        let (mut m, shared) = metrics();
        let svc = resource(1, "svc");
        for (i, exported) in [None, Some(7), None].into_iter().enumerate() {
            let p = m.prepare(
                measurement(Instrument::HttpServer, Some(&format!("/users/{i}"))),
                &svc,
                [i as u8; 8],
                None,
            );
            m.record(&svc, p, [i as u8; 16], exported);
        }
        let r = shared.lock();
        let stream = &r.services["svc"].streams[Instrument::HttpServer.index()];
        assert_eq!(stream.series.len(), 1);
        let (attrs, h) = stream.series.iter().next().unwrap();
        assert_eq!(h.count, 3);
        let exemplars: Vec<_> = h.exemplars().iter().flatten().collect();
        assert_eq!(exemplars.len(), 1);
        assert_eq!((exemplars[0].trace_id, exemplars[0].time_ns), ([1; 16], 7));
        assert!((exemplars[0].value - 0.002).abs() < 1e-12);
        assert_eq!(attrs[1], ("http.route", "/users/{id}".into()));
        match &attrs[0].1 {
            AttrValue::Str(s) => assert_eq!(s.len(), MAX_VALUE_BYTES),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_client_and_the_server_it_called_make_an_edge() {
        let (mut m, shared) = metrics();
        let (client, server) = (resource(1, "front"), resource(2, "back"));
        let p = m.prepare(
            measurement(Instrument::HttpServer, Some("/")),
            &server,
            [2; 8],
            Some([1; 8]),
        );
        m.record(&server, p, [9; 16], None);
        let p = m.prepare(
            measurement(Instrument::HttpClient, None),
            &client,
            [1; 8],
            None,
        );
        m.record(&client, p, [9; 16], None);
        let r = shared.lock();
        let edge = &r.edges.edges["front"]["back"];
        assert_eq!((edge.requests, edge.failed), (1, 0));
    }
}
