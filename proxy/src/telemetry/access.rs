//! Access logs: one structured line per finished connection (target
//! `ferry::access`; text or JSON with the process's `--log-format`),
//! limited to a number of lines per second so a connection storm cannot
//! flood the log. Lines over the limit are counted, and the next line
//! that is written says how many were left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;

/// A per-second budget of lines, shared by every connection without a lock.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u64,
    /// The current second (Unix time) in the high 32 bits, lines taken in
    /// it in the low 32.
    window: AtomicU64,
    suppressed_since_last: AtomicU64,
    suppressed: Counter,
}

/// What [`RateLimit::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write the line; `suppressed` lines were left out before it.
    Write {
        suppressed: u64,
    },
    Skip,
}

impl RateLimit {
    /// `per_second` 0 turns access logs off.
    pub fn new(per_second: u32, suppressed: Counter) -> Self {
        Self {
            per_second: u64::from(per_second),
            window: AtomicU64::new(0),
            suppressed_since_last: AtomicU64::new(0),
            suppressed,
        }
    }

    pub fn enabled(&self) -> bool {
        self.per_second > 0
    }

    /// Takes one line from the budget of the current second.
    pub fn admit(&self) -> Admit {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            & 0xffff_ffff;
        self.admit_at(now)
    }

    fn admit_at(&self, second: u64) -> Admit {
        if self.per_second == 0 {
            return Admit::Skip;
        }
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (window, taken) = (current >> 32, current & 0xffff_ffff);
            let next = if window == second {
                if taken >= self.per_second {
                    self.suppressed.inc();
                    self.suppressed_since_last.fetch_add(1, Ordering::Relaxed);
                    return Admit::Skip;
                }
                current + 1
            } else {
                (second << 32) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Admit::Write {
                        suppressed: self.suppressed_since_last.swap(0, Ordering::Relaxed),
                    }
                }
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_over_the_budget_are_counted_and_reported_with_the_next_line() {
        let counter = Counter::default();
        let limit = RateLimit::new(3, counter.clone());
        let taken: Vec<Admit> = (0..5).map(|_| limit.admit_at(100)).collect();
        assert_eq!(
            taken,
            [
                Admit::Write { suppressed: 0 },
                Admit::Write { suppressed: 0 },
                Admit::Write { suppressed: 0 },
                Admit::Skip,
                Admit::Skip
            ]
        );
        assert_eq!(counter.get(), 2);
        // A new second: a fresh budget, and the first line reports the gap.
        assert_eq!(limit.admit_at(101), Admit::Write { suppressed: 2 });
        assert_eq!(limit.admit_at(101), Admit::Write { suppressed: 0 });
    }

    #[test]
    fn zero_turns_access_logs_off() {
        let limit = RateLimit::new(0, Counter::default());
        assert!(!limit.enabled());
        assert_eq!(limit.admit_at(1), Admit::Skip);
    }
}
