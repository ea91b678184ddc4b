//! The stop signal every thread can check and every wait can be cut short by.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

/// Set once, on SIGTERM/SIGINT or a fatal error; cloned into every thread.
#[derive(Clone)]
pub struct StopFlag {
    inner: Arc<(Mutex<bool>, Condvar)>,
    /// Dropped on stop, which disconnects every receiver: lets `select!` loops wake up.
    sender: Arc<Mutex<Option<Sender<()>>>>,
    receiver: Receiver<()>,
}

impl Default for StopFlag {
    fn default() -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        StopFlag {
            inner: Arc::default(),
            sender: Arc::new(Mutex::new(Some(sender))),
            receiver,
        }
    }
}

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stop(&self) {
        let (lock, cvar) = &*self.inner;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// A receiver that never gets a message and disconnects when stopped, for `select!`.
    pub fn channel(&self) -> Receiver<()> {
        self.receiver.clone()
    }

    pub fn is_stopped(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps for `duration` unless stopped first. Returns false when stopped.
    pub fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let (lock, cvar) = &*self.inner;
        let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            stopped = cvar
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        false
    }
}

/// Sets `stop` when SIGTERM or SIGINT arrives. The listener thread lives as long as the process.
pub fn stop_on_signals(stop: StopFlag) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                log::info!("received signal {signal}: stopping after in-flight work");
                stop.stop();
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_is_cut_short_by_stop() {
        let flag = StopFlag::new();
        assert!(flag.sleep(Duration::from_millis(1)));
        let other = flag.clone();
        let waiter = std::thread::spawn(move || other.sleep(Duration::from_secs(600)));
        flag.stop();
        assert!(!waiter.join().unwrap());
        assert!(flag.is_stopped());
        assert!(flag.channel().recv().is_err());
    }
}
