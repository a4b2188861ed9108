//! OTLP/HTTP with protobuf bodies: POST /v1/traces.

use super::{ingest, reject, Shared};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

const PROTOBUF: &str = "application/x-protobuf";

async fn export(State(store): State<Shared>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let refuse = |code: StatusCode, why: String| {
        reject(&store, why.clone());
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
    // The spec allows gzip, but the agent has no reason to compress on loopback.
    if !matches!(header("content-encoding"), "" | "identity") {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content-encoding {:?} not supported by the test receiver",
                header("content-encoding")
            ),
        );
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(req) => {
            ingest(&store, &req);
            let resp = ExportTraceServiceResponse::default().encode_to_vec();
            (StatusCode::OK, [("content-type", PROTOBUF)], resp)
        }
        Err(e) => refuse(StatusCode::BAD_REQUEST, format!("undecodable body: {e}")),
    }
}

/// Records requests to any other path, so a wrong URL shows up in failure dumps.
async fn elsewhere(State(store): State<Shared>, method: Method, uri: Uri) -> StatusCode {
    reject(&store, format!("{method} {uri} (expected POST /v1/traces)"));
    StatusCode::NOT_FOUND
}

pub(super) async fn serve(listener: tokio::net::TcpListener, store: Shared) {
    let app = Router::new()
        .route("/v1/traces", post(export))
        .fallback(elsewhere)
        .with_state(store);
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("OTLP/HTTP receiver stopped: {e}");
    }
}
