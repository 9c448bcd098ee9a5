//! Capped exponential backoff with jitter, for calls to a coordinator that may
//! be down.
//!
//! Jitter matters here: when a coordinator restarts, every agent of the fleet
//! (and every slot of each agent) is retrying at once, and without jitter they
//! would all come back in the same instant. A cryptographic or even a good
//! random source buys nothing for that, so the jitter comes from the clock's
//! nanoseconds mixed with a counter, which avoids a `rand` dependency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Delays that start at `base`, double after each failure up to `cap`, and
/// are each drawn uniformly from the upper half of the current step (so a
/// delay is never less than half the step: the backoff still backs off).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    step: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling to a 10 s cap.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    /// A backoff from `base` doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            step: base,
        }
    }

    /// After a success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.step = self.base;
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.cap);
        step / 2 + step.mul_f64(jitter() / 2.0)
    }
}

/// A number in `[0, 1)`, different on every call and on every process.
fn jitter() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id());
    // splitmix64: spreads close seeds over the whole range.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::default();
        let mut step = Duration::from_millis(100);
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} not within half of {step:?}"
            );
            step = (step * 2).min(Duration::from_secs(10));
        }
        assert!(b.next_delay() >= Duration::from_secs(5));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_varies() {
        let draws: Vec<f64> = (0..100).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        let mut distinct = draws.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert!(distinct.len() > 90);
    }
}
