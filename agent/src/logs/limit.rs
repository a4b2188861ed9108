//! A bound on log records per second per process (a token bucket): a
//! process that logs in a tight loop must take neither the agent's CPU nor
//! the collector's quota. Records over it are counted, never queued.

use std::{collections::HashMap, time::Instant};

/// Processes with a bucket at once at most; past it every bucket starts
/// full again (their processes exiting is the usual way out).
const MAX_PROCESSES: usize = 65536;

pub struct RateLimit {
    per_second: f64,
    buckets: HashMap<u32, Bucket>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `per_second` records a second, in bursts of up to as many.
    pub fn new(per_second: u32) -> Self {
        RateLimit {
            per_second: f64::from(per_second),
            buckets: HashMap::new(),
        }
    }

    /// Whether process `tgid` may have one more record at `now`.
    pub fn allow(&mut self, tgid: u32, now: Instant) -> bool {
        if self.buckets.len() >= MAX_PROCESSES && !self.buckets.contains_key(&tgid) {
            self.buckets.clear();
        }
        let full = self.per_second;
        let b = self.buckets.entry(tgid).or_insert(Bucket {
            tokens: full,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * full;
        b.tokens = (b.tokens + refill).min(full);
        b.at = now;
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }

    pub fn forget(&mut self, tgid: u32) {
        self.buckets.remove(&tgid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_up_to_the_rate_then_refills() {
        let mut r = RateLimit::new(10);
        let t0 = Instant::now();
        let allowed = (0..25).filter(|_| r.allow(1, t0)).count();
        assert_eq!(allowed, 10);
        // Another process has its own bucket.
        assert!(r.allow(2, t0));
        // Half a second refills half the bucket.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..25).filter(|_| r.allow(1, t1)).count(), 5);
        r.forget(1);
        assert_eq!((0..25).filter(|_| r.allow(1, t1)).count(), 10);
    }
}
