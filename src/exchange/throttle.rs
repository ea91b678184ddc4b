//! Waiting politely: a back-off shared by every thread talking to one server, and the retry
//! schedule for transient failures.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::shutdown::StopFlag;

/// Longest wait we accept from a server before giving up on the request; Exchange Online has
/// been seen to ask for about 300 s.
pub const MAX_DEMANDED_WAIT: Duration = Duration::from_secs(600);

/// When a server demands a pause, every thread talking to it honours it, not only the thread
/// that was told.
#[derive(Debug, Default)]
pub struct BackoffGate {
    until: Mutex<Option<Instant>>,
}

impl BackoffGate {
    /// Blocks until the server's demanded pause is over. Returns false if stopped meanwhile.
    pub fn wait(&self, stop: &StopFlag) -> bool {
        loop {
            let until = *self.until.lock().unwrap_or_else(|e| e.into_inner());
            let Some(until) = until else { return true };
            let now = Instant::now();
            if now >= until {
                return true;
            }
            if !stop.sleep(until - now) {
                return false;
            }
        }
    }

    /// Records that the server asked for `wait` from now on (never shortens a longer pause).
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait.min(MAX_DEMANDED_WAIT);
        let mut guard = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none_or(|current| current < until) {
            *guard = Some(until);
        }
    }
}

/// Exponential back-off with full jitter: attempt 0 waits up to `base`, each next attempt up
/// to twice as long, never more than `cap`.
pub fn retry_delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    // Half fixed, half random, so retries of many threads spread out but never hammer.
    let half = ceiling / 2;
    half + half.mul_f64(jitter_fraction())
}

/// A number in [0, 1) that differs between threads and calls; no crate needed for this.
fn jitter_fraction() -> f64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15);
            let thread_bits = format!("{:?}", std::thread::current().id()).len() as u64;
            nanos ^ (thread_bits << 32) | 1
        });
    }
    STATE.with(|state| {
        // xorshift64
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 0..20 {
            let d = retry_delay(attempt, base, cap);
            let ceiling = base.saturating_mul(1 << attempt.min(16)).min(cap);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn gate_never_shortens_a_pause() {
        let gate = BackoffGate::default();
        gate.pause_for(Duration::from_secs(60));
        gate.pause_for(Duration::from_millis(1));
        let until = gate.until.lock().unwrap().unwrap();
        assert!(until > Instant::now() + Duration::from_secs(50));
        let stop = StopFlag::new();
        stop.stop();
        assert!(!gate.wait(&stop));
    }
}
