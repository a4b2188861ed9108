//! OTLP/gRPC: tonic TraceService, MetricsService and LogsService that store what they are sent.

use super::counting::CountingTraces;
use super::{ingest, ingest_logs, ingest_metrics, note_encoding, Shared};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status};

struct Collector(Shared);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let encoding = req
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok());
        note_encoding(&self.0, encoding);
        ingest(&self.0, req.get_ref());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        req: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        ingest_metrics(&self.0, req.get_ref());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        req: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        ingest_logs(&self.0, req.get_ref());
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    store: Shared,
    tls: Option<ServerTlsConfig>,
) {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = match builder.tls_config(tls) {
            Ok(builder) => builder,
            Err(e) => return eprintln!("OTLP/gRPC receiver: bad TLS settings: {e}"),
        };
    }
    // A benchmark's receiver counts spans without decoding them.
    let counting = store.lock().unwrap().count_only;
    let traces = (!counting).then(|| {
        TraceServiceServer::new(Collector(store.clone()))
            .accept_compressed(CompressionEncoding::Gzip)
    });
    let result = builder
        .add_optional_service(traces)
        .add_optional_service(counting.then(|| CountingTraces(store.clone())))
        .add_service(
            MetricsServiceServer::new(Collector(store.clone()))
                .accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            LogsServiceServer::new(Collector(store)).accept_compressed(CompressionEncoding::Gzip),
        )
        .serve_with_incoming(TcpIncoming::from(listener))
        .await;
    if let Err(e) = result {
        eprintln!("OTLP/gRPC receiver stopped: {e}");
    }
}
