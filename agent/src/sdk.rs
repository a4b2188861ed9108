//! Processes that export their own spans through an OpenTelemetry SDK:
//! Clew's spans of such a process would repeat the SDK's, and its CLIENT
//! spans would even take the span ids the SDK put in its `traceparent`
//! (duplicate ids in the backend). By default Clew exports none of their
//! spans; their context still flows, since Clew leaves requests that
//! carry their own `traceparent` as they are and keeps following the
//! trace into the services they call.

use std::collections::HashSet;

use crate::{
    processor::Processor,
    span::{Resource, Span, SpanKind},
};

/// The OTLP/gRPC trace export method an SDK calls.
const GRPC_EXPORT_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
/// The OTLP/HTTP trace export path.
const HTTP_EXPORT_PATH: &str = "/v1/traces";
/// Processes remembered as exporters; past it the memory is cleared (their
/// next export finds them again).
const MAX_REMEMBERED: usize = 4096;

/// Drops the spans of processes that export their own: those whose
/// environment configures an SDK exporter, and those seen sending an
/// OTLP trace export (an SDK configured in code), from that export on.
#[derive(Default)]
pub struct DeferToSdk {
    /// `service.instance.id`s (pid and start time) seen exporting.
    exporters: HashSet<String>,
}

impl Processor for DeferToSdk {
    fn process(&mut self, span: &mut Span) -> bool {
        let resource = &span.resource;
        if resource.sdk_exports {
            return false;
        }
        // Nearly always empty: then no span pays for naming its process.
        if !self.exporters.is_empty() && self.exporters.contains(&instance(resource)) {
            return false;
        }
        if !is_trace_export(span) {
            return true;
        }
        tracing::info!(
            pid = resource.pid,
            service = %resource.service_name,
            "process exports its own spans (OpenTelemetry SDK): Clew exports none of its spans from now on"
        );
        if self.exporters.len() >= MAX_REMEMBERED {
            self.exporters.clear();
        }
        self.exporters.insert(instance(resource));
        false
    }
}

/// The process's `service.instance.id`, else its pid.
fn instance(resource: &Resource) -> String {
    resource
        .attributes
        .iter()
        .find(|(k, _)| k == "service.instance.id")
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| resource.pid.to_string())
}

/// A CLIENT span of an OTLP trace export.
fn is_trace_export(span: &Span) -> bool {
    if span.kind != SpanKind::Client {
        return false;
    }
    let attr = |k| span.attr(k).map(ToString::to_string);
    if attr("rpc.service").as_deref() == Some(GRPC_EXPORT_SERVICE) {
        return true;
    }
    attr("http.request.method").as_deref() == Some("POST")
        && attr("url.full").is_some_and(|u| {
            let before_query = u.split('?').next().unwrap_or_default();
            before_query.ends_with(HTTP_EXPORT_PATH)
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        export::test_support::{resource, span},
        span::Resource,
    };

    fn client(pid: u32, attrs: Vec<(&'static str, crate::span::AttrValue)>) -> Span {
        let mut s = span(&resource(pid, "svc"), 1, 1, None);
        s.kind = SpanKind::Client;
        s.attributes = attrs;
        s
    }

    #[test]
    fn environment_exporters_are_dropped_from_the_start() {
        let r = Arc::new(Resource {
            pid: 1,
            service_name: "svc".into(),
            attributes: vec![],
            sdk_exports: true,
        });
        let mut s = span(&r, 1, 1, None);
        assert!(!DeferToSdk::default().process(&mut s));
    }

    #[test]
    fn an_observed_export_drops_that_process_from_then_on() {
        let mut p = DeferToSdk::default();
        let mut before = client(7, vec![("url.full", "http://c/v1/traces".into())]);
        assert!(p.process(&mut before), "a GET is no export");
        let mut export = client(
            7,
            vec![
                ("http.request.method", "POST".into()),
                ("url.full", "http://c:4318/v1/traces".into()),
            ],
        );
        assert!(!p.process(&mut export));
        assert!(!p.process(&mut client(7, vec![])));
        assert!(p.process(&mut client(8, vec![])), "other processes stay");
        let mut grpc = client(9, vec![("rpc.service", GRPC_EXPORT_SERVICE.into())]);
        assert!(!p.process(&mut grpc));
    }
}
