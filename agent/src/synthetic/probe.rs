//! The probe task: every interval, one GET per target carrying a fresh
//! `traceparent`, on a new connection each time (so that a connection's
//! capture from its start is part of what is checked).

use std::time::Duration;

use reqwest::{Client, Url};

use super::{Synthetic, SyntheticConfig};
use crate::{
    export::describe_error,
    sampling::Sampler,
    span::{SpanId, TraceId},
};

/// Bound on one probe request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Response bytes read before the connection is closed.
const MAX_BODY: usize = 64 * 1024;
/// Random trace ids tried for one the sampler keeps (a ratio of 1/1000
/// finds one in about a thousand).
const SAMPLE_TRIES: usize = 10_000;

/// Runs until the agent stops.
pub async fn run(cfg: SyntheticConfig, synthetic: Synthetic, sampler: Sampler) {
    let client = match Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("clew-synthetic-probe/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("synthetic probe disabled: building its HTTP client: {e}");
            return;
        }
    };
    tracing::info!(targets = ?cfg.targets.iter().map(Url::as_str).collect::<Vec<_>>(), interval = ?cfg.interval, "synthetic probe started");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = tokio::time::Instant::now();
    loop {
        let now = tick.tick().await;
        synthetic.expire(now.into_std());
        if now < next {
            continue;
        }
        next = now + cfg.interval;
        for (target, url) in cfg.targets.iter().enumerate() {
            let Some(trace_id) = kept_trace_id(&sampler) else {
                synthetic.cannot_probe(target, format!("the sampler ({sampler:?}) keeps no trace"));
                continue;
            };
            let span_id = span_id();
            synthetic.expect(target, trace_id, span_id, cfg.interval);
            tokio::spawn(send(
                client.clone(),
                url.clone(),
                trace_id,
                span_id,
                synthetic.clone(),
            ));
        }
    }
}

async fn send(client: Client, url: Url, trace_id: TraceId, span_id: SpanId, synthetic: Synthetic) {
    let traceparent = format!("00-{}-{}-01", hex::encode(trace_id), hex::encode(span_id));
    let answered = async {
        let mut response = client
            .get(url)
            .header("traceparent", traceparent)
            .send()
            .await?;
        // The whole response, so the server finishes before the close.
        let mut read = 0;
        while let Some(chunk) = response.chunk().await? {
            read += chunk.len();
            if read >= MAX_BODY {
                break;
            }
        }
        Ok::<_, reqwest::Error>(())
    };
    if let Err(e) = answered.await {
        synthetic.request_failed(&trace_id, describe_error(&e));
    }
}

/// A trace id the sampler keeps when its parent is sampled, as the
/// target's span will be decided (the same rule runs in the kernel).
fn kept_trace_id(sampler: &Sampler) -> Option<TraceId> {
    (0..SAMPLE_TRIES)
        .map(|_| rand::random::<TraceId>())
        .find(|t| *t != [0; 16] && sampler.sample(t, Some(true)))
}

fn span_id() -> SpanId {
    loop {
        let id = rand::random::<SpanId>();
        if id != [0; 8] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::Root;

    #[test]
    fn probe_traces_are_ones_the_sampler_keeps() {
        let ratio = Sampler::TraceIdRatio(0.01);
        let t = kept_trace_id(&ratio).unwrap();
        assert!(ratio.sample(&t, None));
        assert!(kept_trace_id(&Sampler::ParentBased(Root::AlwaysOff)).is_some());
        assert_eq!(kept_trace_id(&Sampler::AlwaysOff), None);
    }
}
