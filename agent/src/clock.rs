//! Kernel timestamps (CLOCK_MONOTONIC, from bpf_ktime_get_ns) to Unix time.

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Unix time minus monotonic time, in nanoseconds.
    offset_ns: i128,
}

fn now(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    /// Samples both clocks back to back; the offset drifts only with NTP
    /// slewing, which [`Clock::resync`] absorbs.
    pub fn new() -> Self {
        let mono = now(libc::CLOCK_MONOTONIC);
        let real = now(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real - mono,
        }
    }

    pub fn resync(&mut self) {
        *self = Clock::new();
    }

    pub fn to_unix_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }
}

/// Unix time now, in nanoseconds.
pub fn unix_now_ns() -> u64 {
    now(libc::CLOCK_REALTIME).max(0) as u64
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_now_maps_close_to_wall_clock_now() {
        let c = Clock::new();
        let unix = c.to_unix_ns(now(libc::CLOCK_MONOTONIC) as u64) as i128;
        assert!((unix - now(libc::CLOCK_REALTIME)).abs() < 50_000_000);
    }
}
