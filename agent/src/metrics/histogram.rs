//! A cumulative explicit-bucket histogram, with the latest exemplar of
//! each bucket (as Prometheus client libraries keep them).

use crate::span::{SpanId, TraceId};

/// A measurement's link to the exported span it came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exemplar {
    pub value: f64,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// Unix epoch nanoseconds.
    pub time_ns: u64,
}

#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One more than `bounds`: the last counts values above every bound.
    counts: Vec<u64>,
    exemplars: Vec<Option<Exemplar>>,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            exemplars: vec![None; bounds.len() + 1],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Buckets are upper-inclusive (`le`), as in Prometheus and OTLP.
    pub fn record(&mut self, value: f64, exemplar: Option<Exemplar>) {
        let bucket = self.bounds.partition_point(|b| *b < value);
        self.counts[bucket] += 1;
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if exemplar.is_some() {
            self.exemplars[bucket] = exemplar;
        }
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Per bucket, not cumulative (OTLP's form).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    pub fn exemplars(&self) -> &[Option<Exemplar>] {
        &self.exemplars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_upper_inclusive_buckets() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 1.0, 3.0] {
            h.record(v, None);
        }
        assert_eq!(h.counts(), [2, 2, 1]);
        assert_eq!(h.count, 5);
        assert!((h.sum - 4.65).abs() < 1e-9);
        assert_eq!((h.min, h.max), (0.05, 3.0));
    }

    #[test]
    fn each_bucket_keeps_its_latest_exemplar() {
        let mut h = Histogram::new(&[1.0]);
        let ex = |n: u8, value| Exemplar {
            value,
            trace_id: [n; 16],
            span_id: [n; 8],
            time_ns: u64::from(n),
        };
        h.record(0.5, Some(ex(1, 0.5)));
        h.record(0.7, Some(ex(2, 0.7)));
        h.record(0.2, None);
        h.record(2.0, Some(ex(3, 2.0)));
        assert_eq!(h.exemplars()[0].unwrap().trace_id, [2; 16]);
        assert_eq!(h.exemplars()[1].unwrap().trace_id, [3; 16]);
    }
}
