//! The registry as Prometheus text: OpenMetrics 1.0 (with exemplars) when
//! the scraper asks for it in `Accept`, as Prometheus does, else the
//! classic text format 0.0.4, which has no exemplars.

use std::fmt::Write as _;

use super::{
    graph::Edge,
    histogram::Histogram,
    instrument::Instrument,
    registry::{Registry, OVERFLOW_KEY},
};
use crate::span::AttrValue;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Text,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// From the scrape request's `Accept` header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Appends the registry's families to `out` (which holds the agent's own
/// counters); OpenMetrics' `# EOF` ends it.
pub fn render(r: &Registry, format: Format, out: &mut String) {
    let mut services: Vec<_> = r.services.iter().collect();
    services.sort_by(|a, b| a.0.cmp(b.0));
    for instrument in Instrument::ALL {
        let mut rows = Vec::new();
        for (service, s) in &services {
            let stream = &s.streams[instrument.index()];
            let mut series: Vec<Row<&Histogram>> = stream
                .series
                .iter()
                .map(|(attrs, h)| {
                    let mut labels = vec![("service_name".to_owned(), service.to_string())];
                    labels.extend(attrs.iter().map(|(k, v)| (prometheus_key(k), text(v))));
                    (labels, h)
                })
                .collect();
            series.sort_by(|a, b| a.0.cmp(&b.0));
            rows.extend(series);
            if let Some(h) = &stream.overflow {
                let labels = vec![
                    ("service_name".to_owned(), service.to_string()),
                    (prometheus_key(OVERFLOW_KEY), "true".to_owned()),
                ];
                rows.push((labels, h));
            }
        }
        if rows.is_empty() {
            continue;
        }
        let name = instrument.prometheus_name();
        family_header(out, name, instrument.description(), "histogram");
        for (labels, h) in label_sets(&rows) {
            histogram(out, format, name, &labels, h);
        }
    }
    service_graph(r, format, out);
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
}

/// A series' labels (Prometheus names) and its value.
type Row<T> = (Vec<(String, String)>, T);

/// Every row with every label of its family, empty where it has none
/// (which Prometheus reads as absent): strict parsers want one label set
/// per family.
fn label_sets<T: Copy>(rows: &[Row<T>]) -> Vec<(String, T)> {
    let mut keys: Vec<&str> = Vec::new();
    for (labels, _) in rows {
        for (k, _) in labels {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
    }
    rows.iter()
        .map(|(labels, h)| {
            let mut text = String::new();
            for key in &keys {
                let value = labels.iter().find(|(k, _)| k == key).map(|(_, v)| v);
                push_label(&mut text, key, value.map_or("", String::as_str));
            }
            (text, *h)
        })
        .collect()
}

/// Reads one of an edge's counters.
type EdgeCount = fn(&Edge) -> u64;
/// Reads one of an edge's histograms.
type EdgeDurations = fn(&Edge) -> &Histogram;

fn service_graph(r: &Registry, format: Format, out: &mut String) {
    let mut edges: Vec<Row<&Edge>> = r
        .edges
        .iter()
        .map(|(c, s, e)| {
            let labels = vec![
                ("client".to_owned(), c.to_owned()),
                ("server".to_owned(), s.to_owned()),
            ];
            (labels, e)
        })
        .collect();
    edges.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(e) = &r.edges.overflow {
        edges.push((vec![(prometheus_key(OVERFLOW_KEY), "true".to_owned())], e));
    }
    if edges.is_empty() {
        return;
    }
    let counters: [(&str, &str, EdgeCount); 2] = [
        (
            "traces_service_graph_request",
            "Requests between two services.",
            |e| e.requests,
        ),
        (
            "traces_service_graph_request_failed",
            "Failed requests between two services.",
            |e| e.failed,
        ),
    ];
    let histograms: [(&str, &str, EdgeDurations); 2] = [
        (
            "traces_service_graph_request_server_seconds",
            "Time for a request between two services, as seen by the server.",
            |e| &e.server,
        ),
        (
            "traces_service_graph_request_client_seconds",
            "Time for a request between two services, as seen by the client.",
            |e| &e.client,
        ),
    ];
    for (base, help, value) in counters {
        // OpenMetrics names the family without `_total`; text 0.0.4 does not.
        let family = match format {
            Format::OpenMetrics => base.to_owned(),
            Format::Text => format!("{base}_total"),
        };
        family_header(out, &family, help, "counter");
        for (labels, e) in label_sets(&edges) {
            let _ = writeln!(out, "{base}_total{{{labels}}} {}", value(e));
        }
    }
    for (name, help, h) in histograms {
        family_header(out, name, help, "histogram");
        for (labels, e) in label_sets(&edges) {
            histogram(out, format, name, &labels, h(e));
        }
    }
}

fn family_header(out: &mut String, name: &str, help: &str, ty: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {ty}");
}

fn histogram(out: &mut String, format: Format, name: &str, labels: &str, h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    let bounds = h.bounds().iter().map(|b| format!("{b:?}"));
    let les = bounds.chain(std::iter::once("+Inf".to_owned()));
    for ((le, n), exemplar) in les.zip(h.counts()).zip(h.exemplars()) {
        cumulative += n;
        let _ = write!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
        );
        if let (Format::OpenMetrics, Some(e)) = (format, exemplar) {
            let _ = write!(
                out,
                " # {{trace_id=\"{}\",span_id=\"{}\"}} {:?} {}.{:09}",
                hex::encode(e.trace_id),
                hex::encode(e.span_id),
                e.value,
                e.time_ns / 1_000_000_000,
                e.time_ns % 1_000_000_000
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{name}_sum{{{labels}}} {:?}", h.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// Attribute keys as Prometheus names them: `.` becomes `_`.
fn prometheus_key(key: &str) -> String {
    key.replace('.', "_")
}

fn text(v: &AttrValue) -> String {
    match v {
        AttrValue::Str(s) => s.to_string(),
        other => other.to_string(),
    }
}

/// Appends `key="value"` (escaped) to a label list.
fn push_label(out: &mut String, key: &str, value: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(key);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::resource;
    use crate::metrics::histogram::Exemplar;

    fn registry() -> Registry {
        let mut r = Registry::new(100, 0);
        let attrs = || {
            vec![
                ("http.request.method", "GET".into()),
                ("http.route", "/say \"hi\"".into()),
            ]
        };
        let ex = Exemplar {
            value: 0.003,
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
            time_ns: 1_700_000_000_500_000_000,
        };
        let svc = resource(1, "svc");
        r.record(&svc, Instrument::HttpServer, attrs(), 0.003, Some(ex));
        r.record(&svc, Instrument::HttpServer, attrs(), 20.0, None);
        r
    }

    #[test]
    fn openmetrics_carries_exemplars_and_ends_with_eof() {
        let mut out = String::new();
        render(&registry(), Format::OpenMetrics, &mut out);
        let labels = r#"service_name="svc",http_request_method="GET",http_route="/say \"hi\"""#;
        let bucket = format!(
            "http_server_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1 # {{trace_id=\"{}\",span_id=\"{}\"}} 0.003 1700000000.500000000\n",
            "ab".repeat(16),
            "cd".repeat(8)
        );
        assert!(out.contains(&bucket), "{out}");
        assert!(out.contains(&format!(
            "http_server_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2\n"
        )));
        assert!(out.contains(&format!(
            "http_server_request_duration_seconds_count{{{labels}}} 2\n"
        )));
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn classic_text_has_no_exemplars() {
        let mut out = String::new();
        render(&registry(), Format::Text, &mut out);
        assert!(!out.contains("trace_id"));
        assert!(!out.contains("# EOF"));
        assert!(out.contains("le=\"10.0\"} 1\n"));
    }

    #[test]
    fn every_series_of_a_family_has_the_same_labels() {
        let mut r = registry();
        let svc = resource(1, "svc");
        let attrs = vec![("http.request.method", "POST".into())];
        r.record(&svc, Instrument::HttpServer, attrs, 0.1, None);
        let mut out = String::new();
        render(&r, Format::Text, &mut out);
        assert!(out.contains(
            "http_server_request_duration_seconds_count{service_name=\"svc\",http_request_method=\"POST\",http_route=\"\"} 1\n"
        ), "{out}");
    }

    #[test]
    fn accept_header_decides() {
        let prometheus =
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
    }
}
