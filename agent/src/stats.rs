//! The agent's own counters: what it saw, what it dropped and why. Served
//! at `/metrics` and summarised in the log.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
};

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        #[derive(Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
            /// Every probe attached and the exporter running.
            pub ready: AtomicBool,
        }

        impl Stats {
            pub fn render_prometheus(&self) -> String {
                let mut s = String::new();
                $(
                    let _ = writeln!(s, "# HELP clew_{} {}", stringify!($name), $help);
                    let _ = writeln!(s, "# TYPE clew_{} counter", stringify!($name));
                    let _ = writeln!(s, "clew_{} {}", stringify!($name), self.$name.load(Relaxed));
                )*
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
                s.trim_end().to_owned()
            }
        }
    };
}

counters! {
    events: "ring-buffer records read",
    bad_records: "ring-buffer records that failed to decode",
    kernel_ringbuf_drops: "records the kernel could not queue (agent behind)",
    kernel_read_errors: "user-memory reads that failed in the kernel",
    tcp_options_written: "trace-context TCP options written into outgoing segments",
    tcp_options_no_room: "trace-context TCP options skipped: no option space left in the segment",
    tcp_options_read: "trace-context TCP options read from incoming segments",
    conns_opened: "connections seen opening",
    conns_closed: "connections seen closing",
    conns_adopted: "connections first seen mid-stream",
    conns_not_http: "connections dropped from capture as not HTTP/1",
    conns_evicted: "connections evicted from a full table",
    http_parse_errors: "HTTP/1 framing errors (garbage, gaps inside headers)",
    http_unanswered: "requests whose response never came",
    http_orphan_responses: "responses without a request",
    spans_created: "spans assembled",
    spans_unsampled: "spans dropped by head sampling",
    tls_files_hooked: "TLS library files with probes attached",
    tls_attach_failures: "TLS library files that could not be hooked",
    tls_unsupported: "processes using a TLS library Clew cannot hook",
    kernel_tls_unbound: "TLS records dropped: the socket under the SSL object was unknown",
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
        assert!(s.render_prometheus().contains("clew_events 3\n"));
        assert_eq!(s.summary(), "events=3");
    }
}
