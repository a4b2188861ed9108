//! The agent's own counters: what it saw, what it dropped and why. Served
//! at `/metrics` and summarised in the log.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
};

use crate::protocol::Protocol;

macro_rules! protocol_counters {
    ($($name:ident: $help:literal,)*) => {
        /// Counters every protocol keeps, exported with a `protocol` label.
        #[derive(Default)]
        pub struct ProtocolStats {
            $(pub $name: AtomicU64,)*
        }

        impl ProtocolStats {
            fn render(all: &[ProtocolStats], s: &mut String, ty: &str) {
                $(
                    let _ = writeln!(s, "# HELP clew_protocol_{} {}", stringify!($name), $help);
                    let _ = writeln!(s, "# TYPE clew_protocol_{} {ty}", stringify!($name));
                    for (p, c) in Protocol::ALL.iter().zip(all) {
                        let _ = writeln!(
                            s,
                            "clew_protocol_{}{{protocol=\"{}\"}} {}",
                            stringify!($name),
                            p.label(),
                            c.$name.load(Relaxed)
                        );
                    }
                )*
            }

            fn summarise(&self, p: Protocol, s: &mut String) {
                $(
                    let v = self.$name.load(Relaxed);
                    if v > 0 {
                        let _ = write!(s, "{}_{}={} ", p.label(), stringify!($name), v);
                    }
                )*
            }
        }
    };
}

protocol_counters! {
    spans: "spans assembled from this protocol's transactions",
    parse_errors: "framing errors (garbage, impossible frame sequences)",
    decode_errors: "header blocks that did not decode (HPACK); no later header of that direction is trusted",
    gaps: "bytes not captured where a header had to be read",
    skipped: "chunks skipped after lost records, before one started at a message boundary",
    desynced: "connections whose parsing started over after lost records, or directions given up on after being in sync",
    resumed: "connections that went on after lost records, at the next frame or message (HTTP/2, Kafka; HTTP/2 header fields the lost records made unknown are counted on spans as clew.http2.unknown_fields)",
    unanswered: "requests whose response never came (HTTP ones are exported as ERROR spans too)",
    orphan_responses: "responses without a request",
}

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        #[derive(Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
            /// Every probe attached and the exporter running.
            pub ready: AtomicBool,
            /// By [`Protocol::index`].
            pub protocols: [ProtocolStats; Protocol::ALL.len()],
        }

        impl Stats {
            pub fn protocol(&self, p: Protocol) -> &ProtocolStats {
                &self.protocols[p.index()]
            }
        }

        impl Stats {
            /// Prometheus text. OpenMetrics would have a counter's sample
            /// end in `_total`, renaming every series between the two
            /// formats; there the counters are typed `unknown` instead,
            /// which keeps their names.
            pub fn render_prometheus(&self, openmetrics: bool) -> String {
                let ty = if openmetrics { "unknown" } else { "counter" };
                let mut s = String::new();
                $(
                    let _ = writeln!(s, "# HELP clew_{} {}", stringify!($name), $help);
                    let _ = writeln!(s, "# TYPE clew_{} {ty}", stringify!($name));
                    let _ = writeln!(s, "clew_{} {}", stringify!($name), self.$name.load(Relaxed));
                )*
                ProtocolStats::render(&self.protocols, &mut s, ty);
                s
            }

            /// `name=value` pairs of the non-zero counters, for a log line.
            pub fn summary(&self) -> String {
                let mut s = String::new();
                $(
                    let v = self.$name.load(Relaxed);
                    if v > 0 {
                        let _ = write!(s, "{}={} ", stringify!($name), v);
                    }
                )*
                for (p, c) in Protocol::ALL.iter().zip(&self.protocols) {
                    c.summarise(*p, &mut s);
                }
                s.trim_end().to_owned()
            }
        }
    };
}

counters! {
    events: "ring-buffer records read",
    ring_drains: "passes draining the ring buffer (one every 40 ms, more when woken)",
    ring_drains_woken: "drain passes the kernel started before the pause ended: a record took the ring past a quarter, a half or three quarters, or had to be read at once (an exec, a process's first connection)",
    bad_records: "ring-buffer records that failed to decode",
    kernel_ringbuf_drops: "records the kernel could not queue (agent behind)",
    kernel_read_errors: "user-memory reads that failed in the kernel",
    tcp_options_written: "trace-context TCP options written into outgoing segments",
    tcp_options_no_room: "trace-context TCP options skipped: no option space left in the segment",
    tcp_options_read: "trace-context TCP options read from incoming segments",
    h2_traceparent_injected: "traceparent fields the kernel inserted into HTTP/2 requests",
    h2_own_traceparent: "HTTP/2 requests left alone: they carried their own traceparent",
    h2_stood_down_split: "HTTP/2 requests not injected: HEADERS not whole in one send, or CONTINUATION (connection left alone after)",
    h2_stood_down_unscanned: "HTTP/2 requests not injected: header block beyond the kernel's walk or malformed (connection left alone after)",
    h2_stood_down_too_long: "HTTP/2 requests not injected: the frame would outgrow 16384 bytes",
    h2_lost_framing: "HTTP/2 connections left alone: frame boundaries lost (split frame header, too many frames in one send)",
    h2_inject_failed: "HTTP/2 injections undone after a kernel helper failed (bytes restored)",
    h2_app_indexed_traceparent: "HTTP/2 connections left alone: the application put traceparent into the HPACK dynamic table",
    kafka_traceparent_injected: "Kafka records the kernel gave a traceparent header",
    kafka_own_traceparent: "Kafka records left alone: they carried their own traceparent",
    kafka_stood_down_compressed: "Kafka record batches left alone: compressed",
    kafka_stood_down_split: "Kafka Produce requests not injected: not whole in one send",
    kafka_stood_down_crc: "Kafka Produce requests not injected: a batch CRC did not verify",
    kafka_stood_down_bounds: "Kafka Produce requests not injected: beyond the kernel's bounds (64 KiB, 512 records, 64 batches or partitions, 62 headers per record)",
    kafka_stood_down_unsupported: "Kafka Produce requests not injected: a version the kernel does not rewrite, or a batch that is not magic 2",
    kafka_stood_down_malformed: "Kafka Produce requests not injected: lengths that did not add up",
    kafka_inject_failed: "Kafka Produce requests not injected: a kernel helper failed (bytes restored)",
    kafka_lost_framing: "Kafka connections left alone: request boundaries lost",
    kafka_consumer_spans: "CONSUMER spans the kernel started from a Fetch response's records",
    kafka_consumer_stood_down: "Fetch responses whose records' trace context was not taken (partial read, several contexts, compressed, bounds, thread serving a request)",
    tracestate_carried: "incoming tracestate values the kernel carries on into the requests their thread sends",
    tracestate_dropped: "incoming tracestate values next to a valid traceparent not carried (invalid, over 512 bytes, repeated, past the scanned head, evicted)",
    tracestate_injected: "tracestate lines and HTTP/2 fields the kernel inserted next to a traceparent",
    tracestate_own: "requests injected with a traceparent but not a tracestate: they carry their own",
    tracestate_no_room: "tracestate fields left out: the HTTP/2 frame would outgrow 16384 bytes",
    log_writes: "writes to stdout, stderr and log files the kernel captured while their thread served a request",
    log_writes_ambiguous: "writes not captured: their thread had several requests open (which one a line is for is unknown)",
    log_writes_over_rate: "writes not captured: their process went over --log-rate (counted in the kernel, before any copy)",
    log_writes_unmatched: "writes dropped: their file matches no --logs pattern (its first write; the kernel skips the rest)",
    log_writes_unresolved: "writes dropped: the fd held another file by the time the agent looked",
    log_writes_sdk_process: "writes dropped: the process exports its own spans through an SDK, so Clew's span ids name nothing",
    log_records: "log records handed to the exporter",
    log_records_truncated: "log records cut at --log-record-bytes (or where the kernel's 8 KiB per write ended)",
    log_records_dropped_rate: "log records dropped: their process went over --log-rate",
    log_records_dropped_queue: "log records dropped: the export queue was full",
    conns_opened: "connections seen opening",
    conns_closed: "connections seen closing",
    conns_adopted: "connections first seen mid-stream",
    conns_unknown_protocol: "connections dropped from capture: no protocol Clew parses",
    conns_evicted: "connections evicted from a full table",
    spans_created: "spans assembled",
    spans_unsampled: "spans dropped by head sampling",
    spans_dropped_by_processors: "spans a span processor dropped",
    spans_parent_ambiguous: "CLIENT spans sent while their thread had several requests open: new traces linked to the likely parent",
    spans_parent_inferred: "CLIENT spans whose parent is the one open request with the same request line (a proxy forwarding it)",
    mega_traces: "traces that grew past 10000 spans (a nesting rule attaching unrelated requests to one root)",
    tls_files_hooked: "TLS library files with probes attached",
    tls_attach_failures: "TLS library files that could not be hooked",
    tls_unsupported: "processes using a TLS library Clew cannot hook",
    kernel_tls_unbound: "TLS records dropped: the socket under the SSL object was unknown",
    metric_overflows: "measurements recorded in an overflow series (otel.metric.overflow=true): the series limit was reached",
    service_graph_unpaired: "service-graph halves (client or server end of a call) forgotten before the other end was seen",
    metric_exports_failed: "OTLP metrics exports that failed",
    k8s_pods: "pods of this node in the metadata cache",
    k8s_lists: "pod lists asked of the Kubernetes API (at start, after 410 Gone, after errors)",
    k8s_watch_events: "pod watch events received",
    k8s_relists_gone: "pod watches the API server ended with 410 Gone (answered with a fresh list)",
    k8s_api_errors: "failed Kubernetes API requests and broken watches (retried with backoff)",
    k8s_pods_dropped: "pods not cached: the cache was full",
    k8s_resources_incomplete: "process resources built before their pod or container was known (rebuilt when it is)",
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

pub fn set(c: &AtomicU64, n: u64) {
    c.store(n, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let s = Stats::default();
        add(&s.events, 3);
        assert!(s.render_prometheus(false).contains("clew_events 3\n"));
        assert!(s
            .render_prometheus(true)
            .contains("# TYPE clew_events unknown\nclew_events 3\n"));
        add(&s.protocol(Protocol::Http1).parse_errors, 2);
        let text = s.render_prometheus(false);
        assert!(text.contains("clew_protocol_parse_errors{protocol=\"http1\"} 2\n"));
        assert_eq!(s.summary(), "events=3 http1_parse_errors=2");
    }
}
