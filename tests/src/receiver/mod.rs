//! A real OTLP receiver (gRPC or HTTP/protobuf) that collects spans,
//! metrics and log records for assertions.

mod counting;
mod grpc;
mod http;
mod log;
mod metric;
mod span;

pub use log::RecvLog;
pub use metric::RecvPoint;

pub use span::{
    flatten, RecvSpan, Value, KIND_CLIENT, KIND_CONSUMER, KIND_PRODUCER, KIND_SERVER, STATUS_ERROR,
    STATUS_UNSET,
};

use anyhow::{bail, Context, Result};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tonic::transport::ServerTlsConfig;

use crate::tls::TestPki;

/// OTLP transport, named as the agent's `--otlp-protocol` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn as_arg(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// What the receiver got, shared with the server tasks.
#[derive(Default)]
pub(crate) struct Store {
    spans: Vec<RecvSpan>,
    /// Spans received, kept or not.
    count: u64,
    /// Benchmarks only count spans (and keep no log records): keeping
    /// millions would cost the machine under test memory and CPU.
    count_only: bool,
    /// Export calls accepted, for failure messages.
    requests: usize,
    /// Requests the receiver refused (bad path, encoding, body), for failure messages.
    errors: Vec<String>,
    /// The points of the latest metrics export (cumulative, so it holds them all).
    metrics: Vec<RecvPoint>,
    metric_requests: usize,
    logs: Vec<RecvLog>,
    log_requests: usize,
    /// OTLP/HTTP trace exports still to be refused with 503 and this `Retry-After`.
    throttle: Option<(u32, Duration)>,
    /// When each refused and each accepted trace export came.
    refused_at: Vec<Instant>,
    accepted_at: Vec<Instant>,
    /// The content encoding of every export (`identity` when none).
    encodings: Vec<String>,
}

pub(crate) type Shared = Arc<Mutex<Store>>;

pub(crate) fn ingest(store: &Shared, req: &ExportTraceServiceRequest) {
    if store.lock().unwrap().count_only {
        let n = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        return count(store, n);
    }
    let spans = flatten(req);
    let mut s = store.lock().unwrap();
    s.requests += 1;
    s.accepted_at.push(Instant::now());
    s.count += spans.len() as u64;
    s.spans.extend(spans);
}

/// An export of `n` spans, counted and not kept.
pub(crate) fn count(store: &Shared, n: usize) {
    let mut s = store.lock().unwrap();
    s.requests += 1;
    s.accepted_at.push(Instant::now());
    s.count += n as u64;
}

pub(crate) fn ingest_metrics(store: &Shared, req: &ExportMetricsServiceRequest) {
    let mut s = store.lock().unwrap();
    s.metric_requests += 1;
    s.metrics = metric::flatten(req);
}

pub(crate) fn ingest_logs(store: &Shared, req: &ExportLogsServiceRequest) {
    let mut s = store.lock().unwrap();
    s.log_requests += 1;
    if !s.count_only {
        s.logs.extend(log::flatten(req));
    }
}

pub(crate) fn reject(store: &Shared, why: String) {
    store.lock().unwrap().errors.push(why);
}

pub(crate) fn note_encoding(store: &Shared, encoding: Option<&str>) {
    let encoding = encoding.unwrap_or("identity").to_owned();
    store.lock().unwrap().encodings.push(encoding);
}

/// `Some(retry_after)` while the receiver is told to refuse trace exports.
pub(crate) fn throttled(store: &Shared) -> Option<Duration> {
    let mut s = store.lock().unwrap();
    let (left, retry_after) = s.throttle.as_mut().filter(|(left, _)| *left > 0)?;
    *left -= 1;
    let retry_after = *retry_after;
    s.refused_at.push(Instant::now());
    Some(retry_after)
}

/// The receiver. It owns its own runtime so tests stay synchronous, and so
/// that stopping it drops every connection, like a collector going down.
pub struct Receiver {
    protocol: Protocol,
    port: u16,
    store: Shared,
    rt: Option<Runtime>,
    /// gRPC over TLS requiring a client certificate.
    tls: Option<ServerTlsConfig>,
}

impl Receiver {
    /// Listens on a fresh port of 127.0.0.1.
    pub fn start(protocol: Protocol) -> Result<Self> {
        Self::start_on(protocol, 0)
    }

    /// Listens on 127.0.0.1:`port` (0 picks one).
    pub fn start_on(protocol: Protocol, port: u16) -> Result<Self> {
        Self::launch(protocol, port, Store::default())
    }

    /// Listens on a fresh port and only counts the spans it receives.
    pub fn start_counting(protocol: Protocol) -> Result<Self> {
        let store = Store {
            count_only: true,
            ..Store::default()
        };
        Self::launch(protocol, 0, store)
    }

    /// OTLP/gRPC over TLS on a fresh port, requiring a client certificate
    /// signed by `pki`'s CA.
    pub fn start_grpc_mtls(pki: &TestPki) -> Result<Self> {
        let mut r = Receiver {
            protocol: Protocol::Grpc,
            port: 0,
            store: Shared::default(),
            rt: None,
            tls: Some(pki.grpc_server()?),
        };
        r.serve()?;
        Ok(r)
    }

    /// OTLP/HTTP that refuses the first `count` trace exports with 503 and
    /// `Retry-After: retry_after` (whole seconds), then accepts.
    pub fn start_http_throttled(count: u32, retry_after: Duration) -> Result<Self> {
        let store = Store {
            throttle: Some((count, retry_after)),
            ..Store::default()
        };
        Self::launch(Protocol::HttpProtobuf, 0, store)
    }

    fn launch(protocol: Protocol, port: u16, store: Store) -> Result<Self> {
        let mut r = Receiver {
            protocol,
            port,
            store: Arc::new(Mutex::new(store)),
            rt: None,
            tls: None,
        };
        r.serve()?;
        Ok(r)
    }

    fn serve(&mut self) -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        // std sets SO_REUSEADDR, so a restart can rebind the same port at once.
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port))
            .with_context(|| format!("binding OTLP receiver on 127.0.0.1:{}", self.port))?;
        listener.set_nonblocking(true)?;
        self.port = listener.local_addr()?.port();
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        match self.protocol {
            Protocol::Grpc => rt.spawn(grpc::serve(listener, self.store.clone(), self.tls.clone())),
            Protocol::HttpProtobuf => rt.spawn(http::serve(listener, self.store.clone())),
        };
        self.rt = Some(rt);
        Ok(())
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL to give the agent's `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The content encoding of every export so far.
    pub fn encodings(&self) -> Vec<String> {
        self.store.lock().unwrap().encodings.clone()
    }

    /// When the trace exports were refused (throttled) and accepted.
    pub fn export_times(&self) -> (Vec<Instant>, Vec<Instant>) {
        let s = self.store.lock().unwrap();
        (s.refused_at.clone(), s.accepted_at.clone())
    }

    /// Closes the listener and every open connection; spans are kept.
    pub fn stop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Listens again on the same port after `stop`.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.serve()
    }

    /// How many spans arrived so far (also in counting mode).
    pub fn span_count(&self) -> u64 {
        self.store.lock().unwrap().count
    }

    /// Everything received so far.
    pub fn spans(&self) -> Vec<RecvSpan> {
        self.store.lock().unwrap().spans.clone()
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<RecvLog> {
        self.store.lock().unwrap().logs.clone()
    }

    /// Polls until `pred` holds for the log records received so far and
    /// returns them; on timeout the error lists what did arrive.
    pub fn wait_for_logs(
        &self,
        pred: impl Fn(&[RecvLog]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<RecvLog>> {
        poll(|| self.logs(), pred, timeout).map_err(|()| {
            anyhow::anyhow!(
                "log records not as expected after {timeout:?}\n{}",
                self.dump_logs()
            )
        })
    }

    /// Every log record received, one per line, plus refused requests.
    pub fn dump_logs(&self) -> String {
        let s = self.store.lock().unwrap();
        let mut out = format!(
            "receiver got {} logs export requests, {} records:\n",
            s.log_requests,
            s.logs.len()
        );
        for l in &s.logs {
            let _ = writeln!(out, "  {l}");
        }
        for e in &s.errors {
            let _ = writeln!(out, "  refused request: {e}");
        }
        out
    }

    /// The points of the latest metrics export.
    pub fn metrics(&self) -> Vec<RecvPoint> {
        self.store.lock().unwrap().metrics.clone()
    }

    /// Polls until `pred` holds for the latest metrics export and returns
    /// its points; on timeout the error lists what did arrive.
    pub fn wait_for_metrics(
        &self,
        pred: impl Fn(&[RecvPoint]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<RecvPoint>> {
        poll(|| self.metrics(), pred, timeout).map_err(|()| {
            anyhow::anyhow!(
                "metrics not as expected after {timeout:?}\n{}",
                self.dump_metrics()
            )
        })
    }

    /// The latest metrics export, one point per line, plus refused requests.
    fn dump_metrics(&self) -> String {
        let s = self.store.lock().unwrap();
        let mut out = format!(
            "receiver got {} metrics export requests, the latest:\n",
            s.metric_requests
        );
        for p in &s.metrics {
            let _ = writeln!(
                out,
                "  {} {} {:?} count={}",
                p.service, p.metric, p.attrs, p.count
            );
        }
        for e in &s.errors {
            let _ = writeln!(out, "  refused request: {e}");
        }
        out
    }

    /// Polls until `pred` holds for the spans received so far and returns
    /// them; on timeout the error lists everything that did arrive.
    pub fn wait_for(
        &self,
        pred: impl Fn(&[RecvSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<RecvSpan>> {
        poll(|| self.spans(), pred, timeout).map_err(|()| {
            anyhow::anyhow!("spans not as expected after {timeout:?}\n{}", self.dump())
        })
    }

    /// For negative checks only: fails as soon as a span matching `bad`
    /// arrives within `window`. A window is unavoidable to show that
    /// something did *not* happen.
    pub fn expect_none_for(&self, bad: impl Fn(&RecvSpan) -> bool, window: Duration) -> Result<()> {
        let deadline = Instant::now() + window;
        while Instant::now() < deadline {
            if let Some(s) = self.spans().iter().find(|s| bad(s)) {
                bail!("unexpected span: {s}\n{}", self.dump());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Everything received, one span per line, plus refused requests.
    pub fn dump(&self) -> String {
        let s = self.store.lock().unwrap();
        let mut out = format!(
            "receiver ({:?} on port {}) got {} export requests, {} spans:\n",
            self.protocol,
            self.port,
            s.requests,
            s.spans.len()
        );
        for span in &s.spans {
            let _ = writeln!(out, "  {span}");
        }
        for e in &s.errors {
            let _ = writeln!(out, "  refused request: {e}");
        }
        out
    }
}

/// Fetches until `pred` holds for what `fetch` returns (every 100 ms);
/// `Err` once `timeout` has passed.
fn poll<T>(
    fetch: impl Fn() -> Vec<T>,
    pred: impl Fn(&[T]) -> bool,
    timeout: Duration,
) -> Result<Vec<T>, ()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = fetch();
        if pred(&got) {
            return Ok(got);
        }
        if Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests;
