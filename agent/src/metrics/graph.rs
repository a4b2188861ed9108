//! The service graph: requests, failures and durations per client →
//! server edge, between services Clew sees on both ends. A client span and
//! the server span whose parent it is make one edge, as in the
//! OpenTelemetry Collector's servicegraph connector (whose metric names
//! Clew uses); the halves wait for each other in a bounded table.

use std::{
    collections::{hash_map::Entry, VecDeque},
    sync::Arc,
};

use foldhash::HashMap;

use super::histogram::Histogram;
use crate::span::{Resource, SpanId};

/// The servicegraph connector's default boundaries, in seconds.
pub const BUCKETS: &[f64] = &[
    0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0,
];

/// Halves waiting for their other half; the oldest is forgotten past it.
const MAX_WAITING: usize = 4096;

/// One end of a call, as the metrics saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Half {
    /// Its process (only the service name is used): an `Arc` clone per
    /// call, where a name would be a string copy.
    pub resource: Arc<Resource>,
    pub seconds: f64,
    pub failed: bool,
}

/// A completed client → server pair.
#[derive(Debug, PartialEq)]
pub struct Pair {
    pub client: Half,
    pub server: Half,
}

/// Pairs the two ends of calls by the client span's id.
#[derive(Default)]
pub struct Pairing {
    waiting: HashMap<SpanId, (bool, Half)>,
    order: VecDeque<SpanId>,
    /// Halves forgotten without their other half (one end not traced).
    pub unpaired: u64,
}

impl Pairing {
    /// The client end of a call whose span id is `id`.
    pub fn client(&mut self, id: SpanId, half: Half) -> Option<Pair> {
        self.meet(id, true, half)
    }

    /// The server end of a call whose parent span is `parent`.
    pub fn server(&mut self, parent: SpanId, half: Half) -> Option<Pair> {
        self.meet(parent, false, half)
    }

    fn meet(&mut self, id: SpanId, is_client: bool, half: Half) -> Option<Pair> {
        match self.waiting.entry(id) {
            Entry::Occupied(e) if e.get().0 != is_client => {
                let (_, other) = e.remove();
                let (client, server) = if is_client {
                    (half, other)
                } else {
                    (other, half)
                };
                Some(Pair { client, server })
            }
            // The same end twice (a retried id): keep the latest.
            Entry::Occupied(mut e) => {
                e.insert((is_client, half));
                None
            }
            Entry::Vacant(e) => {
                e.insert((is_client, half));
                self.order.push_back(id);
                while self.order.len() > MAX_WAITING {
                    let old = self.order.pop_front().expect("non-empty");
                    if self.waiting.remove(&old).is_some() {
                        self.unpaired += 1;
                    }
                }
                None
            }
        }
    }
}

/// Counts and durations of one edge.
pub struct Edge {
    pub requests: u64,
    pub failed: u64,
    pub server: Histogram,
    pub client: Histogram,
}

impl Edge {
    fn new() -> Self {
        Edge {
            requests: 0,
            failed: 0,
            server: Histogram::new(BUCKETS),
            client: Histogram::new(BUCKETS),
        }
    }

    fn add(&mut self, p: &Pair) {
        self.requests += 1;
        self.failed += u64::from(p.client.failed || p.server.failed);
        self.server.record(p.server.seconds, None);
        self.client.record(p.client.seconds, None);
    }
}

/// Every edge, capped like any metric's series.
pub struct Edges {
    limit: usize,
    len: usize,
    /// By client, then server service name (looked up without copying them).
    pub edges: HashMap<String, HashMap<String, Edge>>,
    pub overflow: Option<Edge>,
}

impl Edges {
    pub fn new(limit: usize) -> Self {
        Edges {
            limit: limit.max(1),
            len: 0,
            edges: HashMap::default(),
            overflow: None,
        }
    }

    /// Every edge: (client, server, counts).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &Edge)> {
        self.edges
            .iter()
            .flat_map(|(c, to)| to.iter().map(move |(s, e)| (c.as_str(), s.as_str(), e)))
    }

    /// Whether the pair went to the overflow edge.
    pub fn add(&mut self, pair: Pair) -> bool {
        let (client, server) = (
            &pair.client.resource.service_name,
            &pair.server.resource.service_name,
        );
        let known = self
            .edges
            .get_mut(client.as_str())
            .and_then(|to| to.get_mut(server.as_str()));
        let (edge, overflowed) = match known {
            Some(e) => (e, false),
            // The overflow edge counts toward the limit.
            None if self.len + 1 >= self.limit => {
                (self.overflow.get_or_insert_with(Edge::new), true)
            }
            None => {
                self.len += 1;
                let to = self.edges.entry(client.clone()).or_default();
                (to.entry(server.clone()).or_insert_with(Edge::new), false)
            }
        };
        edge.add(&pair);
        overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(service: &str, seconds: f64, failed: bool) -> Half {
        Half {
            resource: crate::export::test_support::resource(1, service),
            seconds,
            failed,
        }
    }

    #[test]
    fn ends_pair_in_either_order() {
        let mut p = Pairing::default();
        assert_eq!(p.server([1; 8], half("b", 0.1, false)), None);
        let pair = p.client([1; 8], half("a", 0.2, false)).unwrap();
        let names = (
            &pair.client.resource.service_name,
            &pair.server.resource.service_name,
        );
        assert_eq!((names.0.as_str(), names.1.as_str()), ("a", "b"));
        assert_eq!(p.client([2; 8], half("a", 0.2, false)), None);
        assert!(
            p.server([2; 8], half("c", 0.1, true))
                .unwrap()
                .server
                .failed
        );
        assert!(p.waiting.is_empty());
    }

    #[test]
    fn unpaired_halves_are_bounded_and_counted() {
        let mut p = Pairing::default();
        for i in 0..(MAX_WAITING as u64 + 10) {
            p.server(i.to_be_bytes(), half("b", 0.1, false));
        }
        assert_eq!(p.waiting.len(), MAX_WAITING);
        assert_eq!(p.unpaired, 10);
    }

    #[test]
    fn edges_count_requests_and_failures() {
        let mut e = Edges::new(3);
        let pair = |c: &str, failed| Pair {
            client: half(c, 0.003, false),
            server: half("srv", 0.001, failed),
        };
        assert!(!e.add(pair("a", false)));
        assert!(!e.add(pair("a", true)));
        assert!(!e.add(pair("b", false)));
        assert!(e.add(pair("c", false)));
        let ab = &e.edges["a"]["srv"];
        assert_eq!((ab.requests, ab.failed), (2, 1));
        assert_eq!(ab.server.counts()[0], 2);
        assert_eq!(e.overflow.as_ref().unwrap().requests, 1);
    }
}
