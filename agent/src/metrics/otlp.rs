//! The registry as an OTLP `ExportMetricsServiceRequest`: cumulative
//! histograms (and the service graph's sums), one resource per service.
//! Built as prost structs: it is sent once per export interval, so the
//! hand-written encoder the spans need is not worth it here.

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::{
        exemplar, metric::Data, number_data_point, AggregationTemporality, Exemplar as PbExemplar,
        Histogram as PbHistogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};

use super::{
    graph::{Edge, Edges},
    histogram::Histogram,
    instrument::Instrument,
    registry::{Registry, Service, OVERFLOW_KEY},
};
use crate::span::AttrValue;

const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

/// Every series at `now_ns` (Unix); `None` when there is nothing yet.
pub fn request(r: &Registry, now_ns: u64) -> Option<ExportMetricsServiceRequest> {
    let times = (r.start_ns, now_ns);
    let mut resource_metrics: Vec<ResourceMetrics> = r
        .services
        .values()
        .map(|s| ResourceMetrics {
            resource: Some(Resource {
                attributes: s.resource.iter().map(|(k, v)| kv(k, v)).collect(),
                ..Default::default()
            }),
            scope_metrics: vec![scope(service_metrics(s, times))],
            ..Default::default()
        })
        .collect();
    let graph = service_graph(&r.edges, times);
    if !graph.is_empty() {
        // The graph spans services: it belongs to the agent itself.
        resource_metrics.push(ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", &"clew".into())],
                ..Default::default()
            }),
            scope_metrics: vec![scope(graph)],
            ..Default::default()
        });
    }
    (!resource_metrics.is_empty()).then_some(ExportMetricsServiceRequest { resource_metrics })
}

fn scope(metrics: Vec<Metric>) -> ScopeMetrics {
    ScopeMetrics {
        scope: Some(InstrumentationScope {
            name: "clew".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }),
        metrics,
        ..Default::default()
    }
}

fn service_metrics(s: &Service, times: (u64, u64)) -> Vec<Metric> {
    Instrument::ALL
        .into_iter()
        .filter_map(|i| {
            let stream = &s.streams[i.index()];
            let overflow = [kv(OVERFLOW_KEY, &AttrValue::Bool(true))];
            let points: Vec<_> = stream
                .series
                .iter()
                .map(|(attrs, h)| {
                    let attrs: Vec<_> = attrs.iter().map(|(k, v)| kv(k, v)).collect();
                    point(attrs, h, times)
                })
                .chain(
                    stream
                        .overflow
                        .iter()
                        .map(|h| point(overflow.to_vec(), h, times)),
                )
                .collect();
            (!points.is_empty())
                .then(|| histogram_metric(i.name(), i.description(), i.unit(), points))
        })
        .collect()
}

fn service_graph(edges: &Edges, times: (u64, u64)) -> Vec<Metric> {
    let mut all: Vec<(Vec<KeyValue>, &Edge)> = edges
        .iter()
        .map(|(c, s, e)| {
            let labels = vec![
                kv("client", &c.to_owned().into()),
                kv("server", &s.to_owned().into()),
            ];
            (labels, e)
        })
        .collect();
    if let Some(e) = &edges.overflow {
        all.push((vec![kv(OVERFLOW_KEY, &AttrValue::Bool(true))], e));
    }
    if all.is_empty() {
        return Vec::new();
    }
    let sum = |name: &str, value: fn(&Edge) -> u64| Metric {
        name: name.into(),
        unit: "1".into(),
        data: Some(Data::Sum(Sum {
            data_points: all
                .iter()
                .map(|(labels, e)| NumberDataPoint {
                    attributes: labels.clone(),
                    start_time_unix_nano: times.0,
                    time_unix_nano: times.1,
                    value: Some(number_data_point::Value::AsInt(value(e) as i64)),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: CUMULATIVE,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    let hist = |name: &str, h: fn(&Edge) -> &Histogram| {
        let points = all
            .iter()
            .map(|(l, e)| point(l.clone(), h(e), times))
            .collect();
        histogram_metric(name, "", "s", points)
    };
    vec![
        sum("traces_service_graph_request_total", |e| e.requests),
        sum("traces_service_graph_request_failed_total", |e| e.failed),
        hist("traces_service_graph_request_server_seconds", |e| &e.server),
        hist("traces_service_graph_request_client_seconds", |e| &e.client),
    ]
}

fn histogram_metric(
    name: &str,
    description: &str,
    unit: &str,
    points: Vec<HistogramDataPoint>,
) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(Data::Histogram(PbHistogram {
            data_points: points,
            aggregation_temporality: CUMULATIVE,
        })),
        ..Default::default()
    }
}

fn point(attributes: Vec<KeyValue>, h: &Histogram, (start, now): (u64, u64)) -> HistogramDataPoint {
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        count: h.count,
        sum: Some(h.sum),
        bucket_counts: h.counts().to_vec(),
        explicit_bounds: h.bounds().to_vec(),
        exemplars: h
            .exemplars()
            .iter()
            .flatten()
            .map(|e| PbExemplar {
                time_unix_nano: e.time_ns,
                span_id: e.span_id.to_vec(),
                trace_id: e.trace_id.to_vec(),
                value: Some(exemplar::Value::AsDouble(e.value)),
                ..Default::default()
            })
            .collect(),
        min: (h.count > 0).then_some(h.min),
        max: (h.count > 0).then_some(h.max),
        ..Default::default()
    }
}

fn kv(key: &str, value: &AttrValue) -> KeyValue {
    let value = match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s.to_string()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
    };
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::resource;
    use crate::metrics::histogram::Exemplar;

    #[test]
    fn histograms_are_cumulative_with_exemplars_per_service() {
        let mut r = Registry::new(100, 5);
        assert!(request(&r, 10).is_none());
        let ex = Exemplar {
            value: 0.02,
            trace_id: [1; 16],
            span_id: [2; 8],
            time_ns: 9,
        };
        let attrs = vec![("http.response.status_code", 200i64.into())];
        r.record(
            &resource(1, "a"),
            Instrument::HttpServer,
            attrs,
            0.02,
            Some(ex),
        );
        let req = request(&r, 10).unwrap();
        let rm = &req.resource_metrics[0];
        let m = &rm.scope_metrics[0].metrics[0];
        assert_eq!(
            (m.name.as_str(), m.unit.as_str()),
            ("http.server.request.duration", "s")
        );
        let Some(Data::Histogram(h)) = &m.data else {
            panic!("{m:?}")
        };
        assert_eq!(h.aggregation_temporality, CUMULATIVE);
        let p = &h.data_points[0];
        assert_eq!(
            (p.count, p.start_time_unix_nano, p.time_unix_nano),
            (1, 5, 10)
        );
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!(p.bucket_counts[2], 1);
        assert_eq!(p.exemplars[0].trace_id, vec![1; 16]);
    }
}
