//! Waiting politely: a back-off shared by every thread talking to one server, and the retry
//! schedule for transient failures.

use std::sync::{Condvar, Mutex};
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

/// How many requests may be in flight to one server at once, across all threads. Starts at the
/// configured maximum and is lowered when the server says we exceed its connection budget
/// (`ErrorExceededConnectionCount`); it recovers by one after a run of successes.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    state: Mutex<LimitState>,
    freed: Condvar,
}

#[derive(Debug)]
struct LimitState {
    limit: usize,
    max: usize,
    in_flight: usize,
    successes_since_change: u32,
}

/// Successes in a row before the limit grows back by one.
const SUCCESSES_TO_GROW: u32 = 200;

impl ConcurrencyLimit {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        ConcurrencyLimit {
            state: Mutex::new(LimitState {
                limit: max,
                max,
                in_flight: 0,
                successes_since_change: 0,
            }),
            freed: Condvar::new(),
        }
    }

    /// Waits for a free slot. The slot is given back when the permit drops.
    pub fn acquire(&self) -> Permit<'_> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while state.in_flight >= state.limit {
            state = self.freed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.in_flight += 1;
        Permit { limit: self }
    }

    /// The server refused a connection: one slot fewer from now on (never below one).
    pub fn lower(&self) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.limit = (state.limit - 1).max(1);
        state.successes_since_change = 0;
        state.limit
    }

    pub fn record_success(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.successes_since_change += 1;
        if state.successes_since_change >= SUCCESSES_TO_GROW && state.limit < state.max {
            state.limit += 1;
            state.successes_since_change = 0;
            self.freed.notify_one();
        }
    }

    pub fn current(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).limit
    }
}

/// A slot in a [`ConcurrencyLimit`], given back on drop.
pub struct Permit<'a> {
    limit: &'a ConcurrencyLimit,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self.limit.state.lock().unwrap_or_else(|e| e.into_inner());
        state.in_flight -= 1;
        self.limit.freed.notify_one();
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
    fn concurrency_limit_lowers_and_recovers() {
        let limit = ConcurrencyLimit::new(3);
        let a = limit.acquire();
        let b = limit.acquire();
        assert_eq!(limit.lower(), 2);
        assert_eq!(limit.lower(), 1);
        assert_eq!(limit.lower(), 1);
        drop((a, b));
        for _ in 0..SUCCESSES_TO_GROW {
            limit.record_success();
        }
        assert_eq!(limit.current(), 2);
        let _c = limit.acquire();
        let _d = limit.acquire();
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
