use super::*;
use crate::export::test_support::{resource, span};

const TARGET: &str = "http://127.0.0.1:8080/healthz";

/// A probe of trace 7 whose context is span 1, and the target's span 2 under it.
fn probe() -> (Synthetic, Span) {
    let s = Synthetic::new(&[parse_target(TARGET).unwrap()]);
    let server = span(&resource(1, "backend"), 7, 2, Some(1));
    s.expect(
        0,
        server.trace_id,
        [0, 0, 0, 0, 0, 0, 0, 1],
        Duration::from_secs(30),
    );
    (s, server)
}

fn metrics(s: &Synthetic) -> String {
    let mut text = String::new();
    s.render_prometheus(false, &mut text);
    text
}

#[test]
fn a_span_built_and_acknowledged_is_a_success() {
    let (s, mut server) = probe();
    let mut other = span(&resource(1, "backend"), 8, 3, None);
    let mut mark = MarkSynthetic(s.clone());
    assert!(mark.process(&mut server) && mark.process(&mut other));
    assert_eq!(server.attr(ATTRIBUTE), Some(&true.into()));
    assert_eq!(other.attr(ATTRIBUTE), None);

    s.delivered(&[other, server], Ok(()));
    let text = metrics(&s);
    assert!(
        text.contains(&format!(
            "clew_synthetic_probe_success{{target=\"{TARGET}\"}} 1\n"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "clew_synthetic_probe_healthy{{target=\"{TARGET}\"}} 1\n"
    )));
    assert!(s
        .readiness()
        .contains("ok, tracing verified end to end (trace "));
    assert_eq!(s.inner.pending.load(Relaxed), 0);
}

#[test]
fn a_batch_the_collector_refused_is_an_export_failure_with_its_reason() {
    let (s, mut server) = probe();
    MarkSynthetic(s.clone()).process(&mut server);
    s.delivered(
        &[server],
        Err("OTLP collector unreachable: Connection refused"),
    );
    let text = metrics(&s);
    assert!(
        text.contains(&format!(
            "clew_synthetic_probe_failures{{target=\"{TARGET}\",reason=\"export_failed\"}} 1\n"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "clew_synthetic_probe_healthy{{target=\"{TARGET}\"}} 0\n"
    )));
    let ready = s.readiness();
    assert!(
        ready.contains("FAILING: export_failed (OTLP collector unreachable: Connection refused); last success never"),
        "{ready}"
    );
}

#[test]
fn a_deadline_tells_a_missing_span_from_a_missing_acknowledgement() {
    let (s, mut server) = probe();
    s.expire(Instant::now() + Duration::from_secs(60));
    assert!(metrics(&s).contains("reason=\"no_span\"} 1\n"));

    let (s, _) = probe();
    MarkSynthetic(s.clone()).process(&mut server);
    s.expire(Instant::now());
    assert_eq!(s.inner.pending.load(Relaxed), 1, "not due yet");
    s.expire(Instant::now() + Duration::from_secs(60));
    assert!(metrics(&s).contains("reason=\"export_failed\"} 1\n"));
}

#[test]
fn only_the_probe_contexts_child_decides() {
    let (s, server) = probe();
    // A span of the trace that is not the target's SERVER span (a call it
    // made downstream) is marked, but its delivery is no verdict.
    let mut downstream = span(&resource(1, "backend"), 7, 9, Some(2));
    MarkSynthetic(s.clone()).process(&mut downstream);
    assert_eq!(downstream.attr(ATTRIBUTE), Some(&true.into()));
    s.delivered(&[downstream], Ok(()));
    assert_eq!(s.inner.pending.load(Relaxed), 1);
    s.request_failed(&server.trace_id, "Connection refused".into());
    assert!(metrics(&s).contains("reason=\"request_failed\"} 1\n"));
}

#[test]
fn targets_are_http_urls() {
    assert!(parse_target("http://127.0.0.1:8080/healthz").is_ok());
    assert!(parse_target("https://localhost/").is_ok());
    assert!(parse_target("127.0.0.1:8080").is_err());
    assert!(parse_target("ftp://h/x").is_err());
}
