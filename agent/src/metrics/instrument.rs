//! The metric instruments Clew records, as the semantic conventions name
//! them: one per protocol role, each a histogram of durations.

/// Explicit bucket boundaries the HTTP and messaging conventions give for
/// their duration histograms, in seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The RPC conventions (v1.37.0) measure in milliseconds and recommend
/// these boundaries.
const MILLISECONDS_BUCKETS: &[f64] = &[
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Instrument {
    HttpServer,
    HttpClient,
    RpcServer,
    RpcClient,
    /// A Kafka send or receive, seen by the client.
    MessagingClient,
    /// A consumer's processing of one record.
    MessagingProcess,
}

impl Instrument {
    pub const ALL: [Instrument; 6] = [
        Instrument::HttpServer,
        Instrument::HttpClient,
        Instrument::RpcServer,
        Instrument::RpcClient,
        Instrument::MessagingClient,
        Instrument::MessagingProcess,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Instrument::HttpServer => "http.server.request.duration",
            Instrument::HttpClient => "http.client.request.duration",
            Instrument::RpcServer => "rpc.server.duration",
            Instrument::RpcClient => "rpc.client.duration",
            Instrument::MessagingClient => "messaging.client.operation.duration",
            Instrument::MessagingProcess => "messaging.process.duration",
        }
    }

    /// The name in Prometheus, as OpenTelemetry's Prometheus exporters
    /// translate it: dots become underscores and the unit is appended.
    pub fn prometheus_name(self) -> &'static str {
        match self {
            Instrument::HttpServer => "http_server_request_duration_seconds",
            Instrument::HttpClient => "http_client_request_duration_seconds",
            Instrument::RpcServer => "rpc_server_duration_milliseconds",
            Instrument::RpcClient => "rpc_client_duration_milliseconds",
            Instrument::MessagingClient => "messaging_client_operation_duration_seconds",
            Instrument::MessagingProcess => "messaging_process_duration_seconds",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Instrument::HttpServer => "Duration of HTTP server requests.",
            Instrument::HttpClient => "Duration of HTTP client requests.",
            Instrument::RpcServer => "Measures the duration of inbound RPC.",
            Instrument::RpcClient => "Measures the duration of outbound RPC.",
            Instrument::MessagingClient => {
                "Duration of messaging operation initiated by a producer or consumer client."
            }
            Instrument::MessagingProcess => "Duration of processing operation.",
        }
    }

    /// UCUM unit.
    pub fn unit(self) -> &'static str {
        if self.in_milliseconds() {
            "ms"
        } else {
            "s"
        }
    }

    pub fn buckets(self) -> &'static [f64] {
        if self.in_milliseconds() {
            MILLISECONDS_BUCKETS
        } else {
            SECONDS_BUCKETS
        }
    }

    /// A duration in this instrument's unit.
    pub fn value(self, duration_ns: u64) -> f64 {
        let scale = if self.in_milliseconds() { 1e6 } else { 1e9 };
        duration_ns as f64 / scale
    }

    fn in_milliseconds(self) -> bool {
        matches!(self, Instrument::RpcServer | Instrument::RpcClient)
    }
}
