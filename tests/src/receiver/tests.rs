//! The receiver checked on its own, without the agent: both transports, and stop/restart.

use super::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn request(name: &str) -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: vec![0xab; 16],
        span_id: vec![0x01; 8],
        parent_span_id: vec![0x02; 8],
        name: name.into(),
        kind: KIND_SERVER,
        attributes: vec![
            kv("url.path", any_value::Value::StringValue("/x".into())),
            kv("http.response.status_code", any_value::Value::IntValue(200)),
        ],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue("svc".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn send_grpc(endpoint: String, name: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = TraceServiceClient::connect(endpoint).await?;
        client.export(request(name)).await?;
        Ok(())
    })
}

fn send_http(endpoint: &str, name: &str) -> Result<u16> {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{endpoint}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request(name).encode_to_vec())
        .send()?;
    Ok(resp.status().as_u16())
}

fn expect_span(rx: &Receiver, name: &str) -> Result<()> {
    let spans = rx.wait_for(|s| s.iter().any(|s| s.name == name), Duration::from_secs(5))?;
    let s = spans.iter().find(|s| s.name == name).unwrap();
    assert_eq!(s.trace_id, "ab".repeat(16));
    assert_eq!(s.parent_span_id.as_deref(), Some("0202020202020202"));
    assert!(s.is(KIND_SERVER, "svc", "/x"), "{s}");
    assert_eq!(s.attr_int("http.response.status_code"), Some(200));
    Ok(())
}

#[test]
fn grpc_receiver_collects_and_restarts() -> Result<()> {
    let mut rx = Receiver::start(Protocol::Grpc)?;
    send_grpc(rx.endpoint(), "first")?;
    expect_span(&rx, "first")?;
    rx.stop();
    assert!(
        send_grpc(rx.endpoint(), "lost").is_err(),
        "stopped receiver still answered"
    );
    rx.restart()?;
    send_grpc(rx.endpoint(), "second")?;
    expect_span(&rx, "second")?;
    assert_eq!(rx.spans().len(), 2, "{}", rx.dump());
    Ok(())
}

#[test]
fn http_receiver_collects_and_refuses_other_paths() -> Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf)?;
    assert_eq!(send_http(&rx.endpoint(), "first")?, 200);
    expect_span(&rx, "first")?;
    let status = reqwest::blocking::Client::new()
        .post(format!("{}/", rx.endpoint()))
        .body("x")
        .send()?
        .status();
    assert_eq!(status.as_u16(), 404);
    assert!(
        rx.dump().contains("refused request: POST /"),
        "{}",
        rx.dump()
    );
    Ok(())
}

#[test]
fn wait_for_timeout_lists_what_arrived() -> Result<()> {
    let rx = Receiver::start(Protocol::HttpProtobuf)?;
    send_http(&rx.endpoint(), "only")?;
    let err = rx
        .wait_for(|s| s.len() > 1, Duration::from_millis(500))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"only\"") && err.contains("url.path=\"/x\""),
        "{err}"
    );
    Ok(())
}
