//! The agent's counters, read from its `/metrics` endpoint (Prometheus text).

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::time::Duration;

/// One reading of the agent's `clew_*` counters.
#[derive(Clone, Debug, Default)]
pub struct Counters(HashMap<String, f64>);

impl Counters {
    pub fn fetch(url: &str) -> Result<Self> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let text = client
            .get(url)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .with_context(|| format!("GET {url}"))?;
        Ok(Self::parse(&text))
    }

    /// Samples of `name value` lines; comments and labelled series are skipped.
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.split_once(' ')?;
                let value = value.trim().parse().ok()?;
                (!name.contains('{')).then(|| (name.to_string(), value))
            })
            .collect();
        Counters(values)
    }

    /// Counter `clew_<name>`; 0 when the agent does not have it.
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(&format!("clew_{name}")).copied().unwrap_or(0.0)
    }

    /// How much counter `name` grew since `earlier`.
    pub fn delta(&self, earlier: &Counters, name: &str) -> u64 {
        (self.get(name) - earlier.get(name)).max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let before = Counters::parse("clew_events 10\nclew_kernel_ringbuf_drops 0\n");
        let after = Counters::parse(
            "# HELP clew_events ring-buffer records read\n# TYPE clew_events counter\n\
             clew_events 250\nclew_kernel_ringbuf_drops 7\nother{a=\"b\"} 3\ngarbage\n",
        );
        assert_eq!(after.get("events"), 250.0);
        assert_eq!(after.delta(&before, "events"), 240);
        assert_eq!(after.delta(&before, "kernel_ringbuf_drops"), 7);
        assert_eq!(after.get("missing"), 0.0);
        assert_eq!(after.0.len(), 2);
    }
}
