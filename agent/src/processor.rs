//! Finished spans pass through an ordered chain of processors before
//! export, as in the OpenTelemetry Collector: each may change a span or
//! drop it. Span metrics, redaction and route templating belong here, so
//! they apply to every protocol without touching any of them.

use crate::span::{AttrValue, Span};

pub trait Processor: Send {
    /// Changes `span` in place; false drops it.
    fn process(&mut self, span: &mut Span) -> bool;
}

/// The processors, run in order; the first that drops a span ends it.
#[derive(Default)]
pub struct Chain {
    stages: Vec<Box<dyn Processor>>,
}

impl Chain {
    pub fn then(mut self, p: impl Processor + 'static) -> Self {
        self.stages.push(Box::new(p));
        self
    }

    /// [`Chain::then`] for a stage that is configured or not.
    pub fn then_some(self, p: Option<impl Processor + 'static>) -> Self {
        match p {
            Some(p) => self.then(p),
            None => self,
        }
    }

    /// Whether the span is still to be exported.
    pub fn run(&mut self, span: &mut Span) -> bool {
        self.stages.iter_mut().all(|p| p.process(span))
    }
}

/// Cuts string attribute values to a length limit, as OpenTelemetry SDKs
/// do with `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`: a captured header may be
/// tens of KiB, which no backend wants per span (the limit: see
/// [`crate::config::Config::attribute_value_length_limit`]).
pub struct TruncateAttributes {
    pub max_bytes: usize,
}

impl Processor for TruncateAttributes {
    fn process(&mut self, span: &mut Span) -> bool {
        for (_, v) in span.attributes.iter_mut() {
            if let AttrValue::Str(s) = v {
                if s.len() > self.max_bytes {
                    let mut end = self.max_bytes;
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    s.truncate(end);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::test_support::{resource, span};

    fn a_span() -> Span {
        span(&resource(1, "svc"), 1, 1, None)
    }

    struct DropAll;
    impl Processor for DropAll {
        fn process(&mut self, _: &mut Span) -> bool {
            false
        }
    }

    #[test]
    fn long_values_are_cut_at_a_char_boundary() {
        let mut s = a_span();
        s.attributes = vec![
            ("user_agent.original", "é".repeat(10).into()),
            ("http.response.status_code", 200i64.into()),
        ];
        let mut chain = Chain::default().then(TruncateAttributes { max_bytes: 5 });
        assert!(chain.run(&mut s));
        assert_eq!(s.attr("user_agent.original"), Some(&"éé".into()));
        assert_eq!(s.attr("http.response.status_code"), Some(&200i64.into()));
    }

    #[test]
    fn a_drop_ends_the_chain() {
        let mut s = a_span();
        let mut chain = Chain::default()
            .then(DropAll)
            .then(TruncateAttributes { max_bytes: 0 });
        assert!(!chain.run(&mut s));
        assert_ne!(s.name, "");
    }
}
