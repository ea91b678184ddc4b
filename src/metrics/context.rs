//! The metrics instance and pipeline stage of the current thread, so hooks deep inside the
//! HTTP clients (`http::log_exchange`, the EWS throttle wait) record into the right `Metrics`
//! without every signature on the way carrying it. Without a context they do nothing, which
//! is what unit tests and one-shot modes want.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Metrics;
use super::health::{Stage, StageState};

struct Current {
    metrics: Arc<Metrics>,
    /// The registered stage (thread name) whose progress this thread reports.
    stage: Option<String>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Undoes [`Metrics::enter_thread`] when dropped: unregisters the stage and restores the
/// thread's previous context. Not `Send`: it belongs to the thread that entered.
pub struct ThreadGuard {
    previous: Option<Current>,
    stage: Option<String>,
    metrics: Arc<Metrics>,
    _not_send: PhantomData<*const ()>,
}

impl Metrics {
    /// Makes this thread record into `self`. With `stage`, the thread is also a pipeline stage
    /// that `/healthz` watches (see [`working`], [`progress`], [`waiting`]).
    pub fn enter_thread(self: &Arc<Self>, stage: Option<&str>) -> ThreadGuard {
        if let Some(name) = stage {
            self.lock().stages.insert(name.to_owned(), Stage::idle());
        }
        let previous = CURRENT.with(|current| {
            current.borrow_mut().replace(Current {
                metrics: self.clone(),
                stage: stage.map(str::to_owned),
            })
        });
        ThreadGuard {
            previous,
            stage: stage.map(str::to_owned),
            metrics: self.clone(),
            _not_send: PhantomData,
        }
    }

    fn set_stage(&self, name: &str, state: Option<StageState>, beat: bool) {
        let mut guard = self.lock();
        if let Some(stage) = guard.stages.get_mut(name) {
            if let Some(state) = state {
                stage.state = state;
            }
            if beat {
                stage.last_beat = Instant::now();
            }
        }
    }
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        if let Some(name) = &self.stage {
            self.metrics.lock().stages.remove(name);
        }
        let previous = self.previous.take();
        CURRENT.with(|current| *current.borrow_mut() = previous);
    }
}

fn with_current(f: impl FnOnce(&Metrics, Option<&str>)) {
    CURRENT.with(|current| {
        if let Some(current) = current.borrow().as_ref() {
            f(&current.metrics, current.stage.as_deref());
        }
    });
}

/// Marks the current stage idle again when dropped.
pub struct WorkGuard {
    active: bool,
    _not_send: PhantomData<*const ()>,
}

/// The current stage starts a unit of work (`what`, for `/healthz`). Until the guard drops,
/// the stage must report [`progress`] at least every [`super::WEDGED_AFTER`].
pub fn working(what: impl Into<String>) -> WorkGuard {
    let mut active = false;
    with_current(|metrics, stage| {
        if let Some(name) = stage {
            let state = StageState::Busy {
                since: Instant::now(),
                what: what.into(),
            };
            metrics.set_stage(name, Some(state), true);
            active = true;
        }
    });
    WorkGuard {
        active,
        _not_send: PhantomData,
    }
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if self.active {
            with_current(|metrics, stage| {
                if let Some(name) = stage {
                    metrics.set_stage(name, Some(StageState::Idle), true);
                }
            });
        }
    }
}

/// The current stage made progress (a request answered, a batch stored).
pub fn progress() {
    with_current(|metrics, stage| {
        if let Some(name) = stage {
            metrics.set_stage(name, None, true);
        }
    });
}

/// Runs `f`, which blocks on the next stage (a full channel): meanwhile this stage counts as
/// waiting, not wedged; the stage downstream is the one that must progress.
pub fn waiting<T>(f: impl FnOnce() -> T) -> T {
    let mut before = None;
    with_current(|metrics, stage| {
        if let Some(name) = stage {
            let mut state = metrics.lock();
            if let Some(stage) = state.stages.get_mut(name) {
                before = Some(std::mem::replace(&mut stage.state, StageState::Waiting));
            }
        }
    });
    let result = f();
    if let Some(before) = before {
        with_current(|metrics, stage| {
            if let Some(name) = stage {
                metrics.set_stage(name, Some(before), true);
            }
        });
    }
    result
}

/// One HTTP request to an endpoint of class `endpoint` took `elapsed`; also progress.
pub fn observe_http(endpoint: &str, elapsed: Duration) {
    with_current(|metrics, stage| {
        metrics.observe_http(endpoint, elapsed);
        if let Some(name) = stage {
            metrics.set_stage(name, None, true);
        }
    });
}

/// A server demanded a pause of `wait` for `reason`; the stage is alive, just told to wait.
pub fn throttle_wait(reason: &str, wait: Duration) {
    with_current(|metrics, stage| {
        metrics.record_throttle_wait(reason, wait);
        if let Some(name) = stage {
            metrics.set_stage(name, None, true);
        }
    });
}
