//! The one backoff of the proxy: capped exponential with jitter, used by
//! the config stream's reconnects and the certificate requests' retries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        Self {
            initial,
            max,
            current: initial,
            seed: seed | 1,
        }
    }

    /// Back to the first step (after a success).
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The next delay: between half and all of the current step, which then doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = step / 2;
        half + Duration::from_nanos(self.seed % (half.as_nanos() as u64).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        for d in &delays {
            assert!(*d <= Duration::from_secs(1), "{d:?}");
        }
        assert!(
            delays[7] >= Duration::from_millis(500),
            "capped step is 1s, jitter keeps at least half"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
