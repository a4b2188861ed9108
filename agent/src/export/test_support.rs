//! Test fixtures shared by the export tests: span builders and in-process OTLP collectors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::test_tls::Pki;
use super::{ExportStats, Exporter, Item, Protocol};
use crate::span::{Resource, Span, SpanKind, Status};

pub fn resource(pid: u32, service: &str) -> Arc<Resource> {
    Arc::new(Resource {
        pid,
        service_name: service.into(),
        attributes: vec![("service.name".into(), service.to_owned().into())],
        sdk_exports: false,
    })
}

/// A sampled 1 ms SERVER span "GET"; ids are zero but for their last byte.
pub fn span(resource: &Arc<Resource>, trace: u8, id: u8, parent: Option<u8>) -> Span {
    let span_id = |last| [0, 0, 0, 0, 0, 0, 0, last];
    let mut trace_id = [0; 16];
    trace_id[15] = trace;
    Span {
        trace_id,
        span_id: span_id(id),
        parent_span_id: parent.map(span_id),
        trace_state: String::new(),
        sampled: true,
        name: "GET".into(),
        kind: SpanKind::Server,
        start_ns: 1_000_000_000,
        end_ns: 1_001_000_000,
        status: Status::Unset,
        attributes: Vec::new(),
        link: None,
        resource: resource.clone(),
    }
}

/// Polls the stats until `done` holds, for outcomes no request shows.
pub async fn stats_until<T: Item>(
    exporter: &Exporter<T>,
    done: impl Fn(&ExportStats) -> bool,
) -> ExportStats {
    for _ in 0..500 {
        let stats = exporter.stats();
        if done(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("stats never settled: {:?}", exporter.stats());
}

/// A port nothing listens on (until a test binds it).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub struct Received {
    pub headers: HeaderMap,
    pub request: ExportTraceServiceRequest,
    /// The request body as it came off the wire: compressed if it was, and
    /// over gRPC with its length prefix.
    pub body: bytes::Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// Last byte of each span id, in request order.
    pub fn span_ids(&self) -> Vec<u8> {
        self.request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| s.span_id[7])
            .collect()
    }
}

/// An OTLP receiver on 127.0.0.1 that hands every request to the test.
pub struct Collector {
    addr: SocketAddr,
    scheme: &'static str,
    protocol: Protocol,
    received: mpsc::UnboundedReceiver<Received>,
    server: JoinHandle<()>,
}

/// How the gRPC flavour answers every request.
#[derive(Clone)]
pub enum GrpcAnswer {
    /// The collector's own answer (tonic's), refusing `rejected` spans in a
    /// partial success when not 0.
    Accept { rejected: i64 },
    /// An error status, which tonic sends in the response headers
    /// (a trailers-only response).
    Refuse(tonic::Status),
    /// An HTTP status and a body, no gRPC status, as a proxy in front of a
    /// collector answers (with its error page, or nothing).
    Http(StatusCode, &'static str),
    /// A response whose message is this many bytes (zeros), then an OK
    /// status: for the exporter's bound on what it reads.
    Oversized(usize),
}

/// How the HTTP flavour answers: these in order, then the last for good.
#[derive(Clone)]
pub struct Answers(Arc<std::sync::Mutex<Vec<Answer>>>);

/// A status and the `Retry-After` value sent with it.
pub type Answer = (StatusCode, Option<&'static str>);

impl Answers {
    /// `(status, Retry-After value)` per request.
    pub fn new(mut answers: Vec<Answer>) -> Answers {
        answers.reverse();
        Answers(Arc::new(std::sync::Mutex::new(answers)))
    }

    fn next(&self) -> Answer {
        let mut answers = self.0.lock().unwrap();
        if answers.len() > 1 {
            answers.pop().unwrap()
        } else {
            answers[0]
        }
    }
}

impl Collector {
    /// `port` 0 picks a free one. The collector accepts everything.
    pub async fn start(protocol: Protocol, port: u16) -> Collector {
        Self::spawn(port, Answering::accept(protocol), None).await
    }

    /// An HTTP collector that answers every request with `status`.
    pub async fn http_answering(status: StatusCode) -> Collector {
        Self::http_answers(Answers::new(vec![(status, None)])).await
    }

    pub async fn http_answers(answers: Answers) -> Collector {
        Self::spawn(0, Answering::Http(answers), None).await
    }

    pub async fn grpc_answering(answer: GrpcAnswer) -> Collector {
        Self::spawn(0, Answering::Grpc(answer), None).await
    }

    /// A collector on https that requires a client certificate from `pki`'s CA.
    pub async fn tls(protocol: Protocol, pki: &Pki) -> Collector {
        Self::spawn(0, Answering::accept(protocol), Some(pki)).await
    }

    async fn spawn(port: u16, answering: Answering, tls: Option<&Pki>) -> Collector {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, received) = mpsc::unbounded_channel();
        let protocol = answering.protocol();
        let server = match answering {
            Answering::Grpc(answer) => {
                let mut builder = tonic::transport::Server::builder();
                if let Some(pki) = tls {
                    builder = builder.tls_config(pki.grpc_server()).unwrap();
                }
                let service = TraceServiceServer::new(GrpcSink {
                    received: tx,
                    answer: answer.clone(),
                })
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
                let routes = tonic::service::Routes::new(service)
                    .into_axum_router()
                    .layer(axum::middleware::from_fn_with_state(answer, grpc_wire));
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tokio::spawn(async move {
                    builder
                        .add_routes(routes.into())
                        .serve_with_incoming(incoming)
                        .await
                        .unwrap();
                })
            }
            Answering::Http(answers) => {
                let app = axum::Router::new()
                    .route("/v1/traces", axum::routing::post(http_sink))
                    .with_state((tx, answers));
                match tls {
                    Some(pki) => {
                        let listener = pki.listener(listener);
                        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() })
                    }
                    None => tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }),
                }
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        Collector {
            addr,
            scheme,
            protocol,
            received,
            server,
        }
    }

    pub fn endpoint(&self) -> String {
        match self.protocol {
            Protocol::Grpc => format!("{}://{}", self.scheme, self.addr),
            Protocol::HttpProtobuf => format!("{}://{}/v1/traces", self.scheme, self.addr),
        }
    }

    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(15), self.received.recv())
            .await
            .expect("no OTLP request within 15s")
            .unwrap()
    }

    /// Waits until the span with id byte `id` has arrived; returns every id seen.
    pub async fn wait_for_span(&mut self, id: u8) -> Vec<u8> {
        let mut seen = Vec::new();
        while !seen.contains(&id) {
            seen.extend(self.next().await.span_ids());
        }
        seen
    }

    /// Requests received so far, without waiting.
    pub fn drain(&mut self) -> Vec<Received> {
        std::iter::from_fn(|| self.received.try_recv().ok()).collect()
    }
}

/// What a collector answers, which also makes it a gRPC or an HTTP one.
enum Answering {
    Grpc(GrpcAnswer),
    Http(Answers),
}

impl Answering {
    fn accept(protocol: Protocol) -> Answering {
        match protocol {
            Protocol::Grpc => Answering::Grpc(GrpcAnswer::Accept { rejected: 0 }),
            Protocol::HttpProtobuf => Answering::Http(Answers::new(vec![(StatusCode::OK, None)])),
        }
    }

    fn protocol(&self) -> Protocol {
        match self {
            Answering::Grpc(_) => Protocol::Grpc,
            Answering::Http(_) => Protocol::HttpProtobuf,
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A gRPC response body: one DATA frame, then the trailers.
struct MessageThenTrailers(Option<bytes::Bytes>, Option<HeaderMap>);

impl http_body::Body for MessageThenTrailers {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let frame = match (self.0.take(), self.1.take()) {
            (Some(data), trailers) => {
                self.1 = trailers;
                Some(http_body::Frame::data(data))
            }
            (None, trailers) => trailers.map(http_body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}

/// The request body off the wire, handed from [`grpc_wire`] to the sink.
#[derive(Clone)]
struct WireBody(bytes::Bytes);

/// In front of the gRPC service: keeps the raw request body for the test,
/// and gives the answers tonic itself would not.
async fn grpc_wire(
    State(answer): State<GrpcAnswer>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (mut parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    match answer {
        GrpcAnswer::Http(status, page) => (status, page).into_response(),
        GrpcAnswer::Oversized(len) => {
            let mut message = vec![0];
            message.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
            message.resize(5 + len, 0);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let body = MessageThenTrailers(Some(message.into()), Some(trailers));
            let mut response = axum::body::Body::new(body).into_response();
            let headers = response.headers_mut();
            headers.insert("content-type", "application/grpc".parse().unwrap());
            response
        }
        GrpcAnswer::Accept { .. } | GrpcAnswer::Refuse(_) => {
            parts.extensions.insert(WireBody(body.clone()));
            let request = axum::extract::Request::from_parts(parts, body.into());
            next.run(request).await
        }
    }
}

struct GrpcSink {
    received: mpsc::UnboundedSender<Received>,
    answer: GrpcAnswer,
}

#[tonic::async_trait]
impl TraceService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let WireBody(body) = request.extensions().get().cloned().unwrap();
        let _ = self.received.send(Received {
            headers,
            request: request.into_inner(),
            body,
        });
        match &self.answer {
            GrpcAnswer::Accept { rejected } => {
                let partial_success = (*rejected > 0).then(|| ExportTracePartialSuccess {
                    rejected_spans: *rejected,
                    error_message: "spans too old".into(),
                });
                Ok(tonic::Response::new(ExportTraceServiceResponse {
                    partial_success,
                }))
            }
            GrpcAnswer::Refuse(status) => Err(status.clone()),
            GrpcAnswer::Http(..) | GrpcAnswer::Oversized(_) => {
                unreachable!("answered by grpc_wire")
            }
        }
    }
}

async fn http_sink(
    State((tx, answers)): State<(mpsc::UnboundedSender<Received>, Answers)>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let plain = match headers.get("content-encoding").map(|v| v.as_bytes()) {
        Some(b"gzip") => gunzip(&body).into(),
        _ => body.clone(),
    };
    let request = ExportTraceServiceRequest::decode(plain).unwrap();
    let _ = tx.send(Received {
        headers,
        request,
        body,
    });
    match answers.next() {
        (status, Some(retry_after)) => (status, [("retry-after", retry_after)]).into_response(),
        (status, None) => status.into_response(),
    }
}

pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut plain).unwrap();
    plain
}
