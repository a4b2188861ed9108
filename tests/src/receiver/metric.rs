//! Received OTLP metrics, flattened to histogram and sum points with their
//! service, so tests can compare counts per attribute set.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use std::collections::HashMap;

use super::span::{attr_map, int_attr, resource_map, str_attr, Value};

/// One data point of a histogram or a sum, as last received.
#[derive(Clone, Debug)]
pub struct RecvPoint {
    pub service: String,
    pub metric: String,
    pub unit: String,
    pub attrs: HashMap<String, Value>,
    /// A histogram's count, or a sum's value.
    pub count: u64,
    pub bucket_counts: Vec<u64>,
    pub bounds: Vec<f64>,
    /// (trace id, span id), hex.
    pub exemplars: Vec<(String, String)>,
}

impl RecvPoint {
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        str_attr(&self.attrs, key)
    }

    pub fn attr_int(&self, key: &str) -> Option<i64> {
        int_attr(&self.attrs, key)
    }
}

/// Every point of one export request (cumulative: the latest request holds
/// every series the agent has).
pub fn flatten(req: &ExportMetricsServiceRequest) -> Vec<RecvPoint> {
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        let resource = resource_map(rm.resource.as_ref());
        let service = match resource.get("service.name") {
            Some(Value::Str(s)) => s.clone(),
            _ => String::new(),
        };
        for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
            let point = |attrs, count, bucket_counts, bounds, exemplars| RecvPoint {
                service: service.clone(),
                metric: m.name.clone(),
                unit: m.unit.clone(),
                attrs,
                count,
                bucket_counts,
                bounds,
                exemplars,
            };
            match &m.data {
                Some(Data::Histogram(h)) => out.extend(h.data_points.iter().map(|p| {
                    let exemplars = p
                        .exemplars
                        .iter()
                        .map(|e| (hex::encode(&e.trace_id), hex::encode(&e.span_id)))
                        .collect();
                    point(
                        attr_map(&p.attributes),
                        p.count,
                        p.bucket_counts.clone(),
                        p.explicit_bounds.clone(),
                        exemplars,
                    )
                })),
                Some(Data::Sum(s)) => out.extend(s.data_points.iter().map(|p| {
                    let value = match p.value {
                        Some(number_data_point::Value::AsInt(i)) => i as u64,
                        Some(number_data_point::Value::AsDouble(d)) => d as u64,
                        None => 0,
                    };
                    point(attr_map(&p.attributes), value, vec![], vec![], vec![])
                })),
                _ => {}
            }
        }
    }
    out
}
