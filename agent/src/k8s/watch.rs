//! Keeps the pod cache current: list, then watch from the list's version;
//! a watch the server ends is resumed from the last version seen, a 410
//! Gone (that version left the server's history) is answered with a fresh
//! list, and every other failure with a jittered, growing pause.

use std::{sync::Arc, time::Duration};

use rand::Rng;

use super::{
    cache::{Applied, SharedPods},
    client::{ApiError, Client, Event},
    pod::{Pod, WirePod},
};
use crate::stats::{self, Stats};

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Runs until the agent stops.
pub async fn run(client: Client, pods: SharedPods, stats: Arc<Stats>) {
    let mut version: Option<String> = None;
    let mut failures = 0u32;
    let mut gone_streak = 0u32;
    loop {
        let result = match &version {
            None => list(&client, &pods, &stats).await.map(|v| {
                version = Some(v);
                true
            }),
            Some(v) => watch(&client, &pods, &stats, v.clone(), &mut version).await,
        };
        match result {
            Ok(true) => failures = 0,
            // A watch the server ended without a single event: do not
            // come straight back if it keeps doing that.
            Ok(false) => tokio::time::sleep(BACKOFF_FIRST).await,
            Err((ApiError::Gone, progress)) => {
                stats::add(&stats.k8s_relists_gone, 1);
                tracing::info!("pod watch expired (410 Gone): listing again");
                version = None;
                // A list or watch that expires again before any event
                // arrived: an API server in trouble, not a slow watch.
                gone_streak = if progress { 1 } else { gone_streak + 1 };
                if gone_streak > 1 {
                    tokio::time::sleep(backoff(gone_streak - 1)).await;
                }
            }
            Err((e, progress)) => {
                stats::add(&stats.k8s_api_errors, 1);
                if progress {
                    failures = 0;
                }
                failures += 1;
                let pause = backoff(failures);
                match &e {
                    ApiError::Status { status: 401 | 403, .. } => tracing::error!(
                        "Kubernetes API refused the pod {} ({e}): the service account needs get, list and watch on pods (see README, Kubernetes); retrying in {pause:?}",
                        if version.is_some() { "watch" } else { "list" }
                    ),
                    _ => tracing::warn!("Kubernetes API: {e}; retrying in {pause:?}"),
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Lists every pod of the node into the cache; returns the version to
/// watch from.
async fn list(
    client: &Client,
    pods: &SharedPods,
    stats: &Stats,
) -> Result<String, (ApiError, bool)> {
    stats::add(&stats.k8s_lists, 1);
    let list = client.list().await.map_err(|e| (e, false))?;
    let fresh: Vec<Pod> = list.pods.into_iter().map(Pod::from_wire).collect();
    let count = fresh.len();
    let mut cache = pods.lock();
    let dropped = cache.replace(fresh);
    stats::set(&stats.k8s_pods, cache.len() as u64);
    stats::add(&stats.k8s_pods_dropped, dropped as u64);
    tracing::info!(
        pods = count,
        version = %list.resource_version,
        "pods of this node listed"
    );
    Ok(list.resource_version)
}

/// Applies watch events until the server ends the watch (`Ok`) or it
/// fails; either way says whether anything arrived.
async fn watch(
    client: &Client,
    pods: &SharedPods,
    stats: &Stats,
    from: String,
    version: &mut Option<String>,
) -> Result<bool, (ApiError, bool)> {
    let mut stream = client.watch(&from).await.map_err(|e| (e, false))?;
    let mut progress = false;
    loop {
        let event = match stream.next().await {
            Ok(Some(e)) => e,
            Ok(None) => return Ok(progress),
            Err(e) => return Err((e, progress)),
        };
        progress = true;
        stats::add(&stats.k8s_watch_events, 1);
        let seen = match event {
            Event::Upsert(w) => upsert(pods, stats, *w),
            Event::Delete(w) => {
                let mut cache = pods.lock();
                cache.remove(&w.metadata.uid);
                stats::set(&stats.k8s_pods, cache.len() as u64);
                w.metadata.resource_version
            }
            Event::Bookmark(v) => v,
        };
        if !seen.is_empty() {
            *version = Some(seen);
        }
    }
}

fn upsert(pods: &SharedPods, stats: &Stats, w: WirePod) -> String {
    let seen = w.metadata.resource_version.clone();
    let pod = Pod::from_wire(w);
    if pod.labels_dropped > 0 {
        tracing::debug!(pod = %pod.name, dropped = pod.labels_dropped, "pod labels beyond the limit dropped");
    }
    let mut cache = pods.lock();
    if cache.upsert(pod) == Applied::Dropped {
        stats::add(&stats.k8s_pods_dropped, 1);
    }
    stats::set(&stats.k8s_pods, cache.len() as u64);
    seen
}

/// The pause before retry `n` (1-based): doubling from half a second to
/// 30 s, each drawn between half and all of that, so agents across a
/// fleet do not return to a recovering API server in step.
fn backoff(n: u32) -> Duration {
    let ceiling = BACKOFF_FIRST
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        for n in 1..40 {
            let ceiling = BACKOFF_FIRST
                .saturating_mul(1 << (n - 1).min(16))
                .min(BACKOFF_MAX);
            let b = backoff(n);
            assert!(b >= ceiling / 2 && b <= ceiling, "{n}: {b:?}");
        }
        assert!(backoff(30) >= BACKOFF_MAX / 2);
    }
}
