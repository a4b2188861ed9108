//! OTLP/HTTP with protobuf bodies: POST /v1/traces, /v1/metrics and /v1/logs.

use super::{ingest, ingest_logs, ingest_metrics, note_encoding, reject, throttled, Shared};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

const PROTOBUF: &str = "application/x-protobuf";

async fn traces(
    State(store): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    if let Some(retry_after) = throttled(&store) {
        let seconds = retry_after.as_secs().to_string();
        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", seconds)]).into_response();
    }
    export(&store, &headers, body, |store, body| {
        let req = ExportTraceServiceRequest::decode(body)?;
        ingest(store, &req);
        Ok(ExportTraceServiceResponse::default().encode_to_vec())
    })
    .into_response()
}

async fn metrics(
    State(store): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    export(&store, &headers, body, |store, body| {
        let req = ExportMetricsServiceRequest::decode(body)?;
        ingest_metrics(store, &req);
        Ok(ExportMetricsServiceResponse::default().encode_to_vec())
    })
}

async fn logs(State(store): State<Shared>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    export(&store, &headers, body, |store, body| {
        let req = ExportLogsServiceRequest::decode(body)?;
        ingest_logs(store, &req);
        Ok(ExportLogsServiceResponse::default().encode_to_vec())
    })
}

/// Checks the request's headers, then `take` decodes and stores the body
/// and encodes the response.
fn export(
    store: &Shared,
    headers: &HeaderMap,
    body: Bytes,
    take: impl FnOnce(&Shared, Bytes) -> Result<Vec<u8>, prost::DecodeError>,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let refuse = |code: StatusCode, why: String| {
        reject(store, why.clone());
        (code, [("content-type", "text/plain")], why.into_bytes())
    };
    if !header("content-type").starts_with(PROTOBUF) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content-type {:?}, expected {PROTOBUF}",
                header("content-type")
            ),
        );
    }
    let body = match header("content-encoding") {
        "" | "identity" => body,
        "gzip" => {
            let mut plain = Vec::new();
            let mut gunzip = flate2::read::GzDecoder::new(&body[..]);
            if let Err(e) = std::io::Read::read_to_end(&mut gunzip, &mut plain) {
                return refuse(StatusCode::BAD_REQUEST, format!("bad gzip body: {e}"));
            }
            plain.into()
        }
        other => {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content-encoding {other:?} not supported by the test receiver"),
            )
        }
    };
    let encoding = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok());
    note_encoding(store, encoding);
    match take(store, body) {
        Ok(resp) => (StatusCode::OK, [("content-type", PROTOBUF)], resp),
        Err(e) => refuse(StatusCode::BAD_REQUEST, format!("undecodable body: {e}")),
    }
}

/// Records requests to any other path, so a wrong URL shows up in failure dumps.
async fn elsewhere(State(store): State<Shared>, method: Method, uri: Uri) -> StatusCode {
    reject(
        &store,
        format!("{method} {uri} (expected POST /v1/traces, /v1/metrics or /v1/logs)"),
    );
    StatusCode::NOT_FOUND
}

pub(super) async fn serve(listener: tokio::net::TcpListener, store: Shared) {
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .route("/v1/logs", post(logs))
        .fallback(elsewhere)
        .with_state(store);
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("OTLP/HTTP receiver stopped: {e}");
    }
}
