//! Every metric series the agent keeps, per service: what `/metrics`
//! renders and what the OTLP metrics exporter sends. Series are capped per
//! service and instrument; measurements past the cap go to one overflow
//! series (`otel.metric.overflow=true`, as the OpenTelemetry SDKs do it).

use std::collections::hash_map::Entry;

use foldhash::HashMap;

use super::{
    graph::Edges,
    histogram::{Exemplar, Histogram},
    instrument::Instrument,
    series::SeriesKey,
};
use crate::span::{AttrValue, Attributes, Resource};

/// The OpenTelemetry SDKs' default cardinality limit.
pub const DEFAULT_SERIES_LIMIT: usize = 2000;

pub const OVERFLOW_KEY: &str = "otel.metric.overflow";

/// One instrument's series for one service.
#[derive(Default)]
pub struct Stream {
    pub series: HashMap<SeriesKey, Histogram>,
    pub overflow: Option<Histogram>,
}

/// What the agent knows of one service.
pub struct Service {
    /// The first process's resource, less what is per process: metrics
    /// aggregate every process of the service.
    pub resource: Vec<(String, AttrValue)>,
    /// By [`Instrument::index`].
    pub streams: [Stream; Instrument::ALL.len()],
}

pub struct Registry {
    limit: usize,
    /// Unix ns when the agent started recording (the cumulative start).
    pub start_ns: u64,
    pub services: HashMap<String, Service>,
    pub edges: Edges,
    /// Measurements that went to an overflow series.
    pub overflowed: u64,
}

impl Registry {
    pub fn new(limit: usize, start_ns: u64) -> Self {
        Registry {
            limit: limit.max(1),
            start_ns,
            services: HashMap::default(),
            edges: Edges::new(limit),
            overflowed: 0,
        }
    }

    pub fn record(
        &mut self,
        resource: &Resource,
        instrument: Instrument,
        attributes: Attributes,
        value: f64,
        exemplar: Option<Exemplar>,
    ) {
        let service = match self.services.get_mut(resource.service_name.as_str()) {
            Some(s) => s,
            None => self
                .services
                .entry(resource.service_name.clone())
                .or_insert_with(|| Service {
                    resource: service_resource(resource),
                    streams: Default::default(),
                }),
        };
        let stream = &mut service.streams[instrument.index()];
        let buckets = instrument.buckets();
        // The overflow series counts toward the limit.
        let full = stream.series.len() + 1 >= self.limit;
        let histogram = match stream.series.entry(SeriesKey(attributes)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if full => {
                self.overflowed += 1;
                stream
                    .overflow
                    .get_or_insert_with(|| Histogram::new(buckets))
            }
            Entry::Vacant(e) => e.insert(Histogram::new(buckets)),
        };
        histogram.record(value, exemplar);
    }
}

/// Keys that differ between the processes of one service.
fn per_process(key: &str) -> bool {
    key.starts_with("process.") || key == "service.instance.id"
}

fn service_resource(r: &Resource) -> Vec<(String, AttrValue)> {
    r.attributes
        .iter()
        .filter(|(k, _)| !per_process(k))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::resource;

    #[test]
    fn series_past_the_limit_share_the_overflow_series() {
        let mut r = Registry::new(10, 0);
        let svc = resource(1, "svc");
        for i in 0..100i64 {
            let attrs = vec![("http.response.status_code", i.into())];
            r.record(&svc, Instrument::HttpServer, attrs, 0.1, None);
        }
        let stream = &r.services["svc"].streams[Instrument::HttpServer.index()];
        assert_eq!(stream.series.len(), 9);
        assert_eq!(stream.overflow.as_ref().unwrap().count, 91);
        assert_eq!(r.overflowed, 91);
        // A known series still counts as itself.
        let attrs = vec![("http.response.status_code", 0i64.into())];
        r.record(&svc, Instrument::HttpServer, attrs.clone(), 0.1, None);
        let stream = &r.services["svc"].streams[Instrument::HttpServer.index()];
        assert_eq!(stream.series[&SeriesKey(attrs)].count, 2);
    }

    #[test]
    fn processes_of_one_service_share_its_series() {
        let mut r = Registry::new(10, 0);
        for pid in [1, 2] {
            let attrs = vec![("http.request.method", "GET".into())];
            r.record(
                &resource(pid, "svc"),
                Instrument::HttpClient,
                attrs,
                0.1,
                None,
            );
        }
        let svc = &r.services["svc"];
        assert!(svc.resource.iter().all(|(k, _)| !k.starts_with("process.")));
        let stream = &svc.streams[Instrument::HttpClient.index()];
        assert_eq!(stream.series.values().map(|h| h.count).sum::<u64>(), 2);
    }
}
