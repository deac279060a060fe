//! Log lines for refused clients, rate-limited: every refusal is counted in the metrics, but a
//! flood of refused handshakes must not fill the disk. A token bucket admits a burst and then a
//! steady rate; the next admitted line says how many were left out meanwhile.

use std::sync::Mutex;
use std::time::Instant;

/// The limiter of refusal log lines (one per server or listener).
#[derive(Debug)]
pub struct RefusalLog {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl Default for RefusalLog {
    /// 20 lines a second after a burst of 100.
    fn default() -> Self {
        RefusalLog::new(20, 100)
    }
}

impl RefusalLog {
    /// Admits `burst` lines at once and `per_second` lines a second after that.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RefusalLog {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(burst),
                last: Instant::now(),
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when a refusal may be logged now, `n` being how many refusals were not logged
    /// since the last line; `None` when this one must not be.
    pub fn admit(&self) -> Option<u64> {
        let Ok(mut b) = self.bucket.lock() else {
            return None;
        };
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() * self.per_second;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_nothing_until_tokens_return_with_the_count_left_out() {
        let log = RefusalLog::new(1, 3);
        assert_eq!(
            (0..5).map(|_| log.admit()).collect::<Vec<_>>(),
            vec![Some(0), Some(0), Some(0), None, None]
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(log.admit(), Some(2));
        assert_eq!(log.admit(), None);
    }
}
