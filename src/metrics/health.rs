//! Liveness (`/healthz`) and readiness (`/readyz`) judged from what the pipeline reports.
//!
//! Liveness fails only for what a restart of the process would fix: a pipeline thread that
//! panicked, or a stage busy on one unit of work without any progress for [`WEDGED_AFTER`].
//! Readiness says whether this replica is syncing: configuration loaded, sink reached, first
//! cycle started, and not waiting for an in-process restart.

use std::time::Instant;

use super::{Metrics, Phase};

/// A busy stage without progress for this long is wedged. Longer than anything legitimate
/// without a progress report: one request (30 s connect + 180 s response), after a server's
/// demanded pause (at most 600 s, `throttle::MAX_DEMANDED_WAIT`).
pub const WEDGED_AFTER: std::time::Duration = std::time::Duration::from_secs(20 * 60);

#[derive(Debug, Clone)]
pub(super) enum StageState {
    /// Waiting for work (blocked on its input channel): never wedged.
    Idle,
    /// Working on `what` since `since`.
    Busy { since: Instant, what: String },
    /// Blocked on the next stage's full channel: the next stage is the one to watch.
    Waiting,
}

#[derive(Debug, Clone)]
pub(super) struct Stage {
    pub state: StageState,
    pub last_beat: Instant,
}

impl Stage {
    pub fn idle() -> Stage {
        Stage {
            state: StageState::Idle,
            last_beat: Instant::now(),
        }
    }
}

/// An answer of `/healthz` or `/readyz`: whether it is good, and lines saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub lines: Vec<String>,
}

impl Metrics {
    /// `/healthz`: whether the process is alive and not wedged.
    pub fn liveness(&self) -> Verdict {
        self.liveness_at(Instant::now())
    }

    pub(crate) fn liveness_at(&self, now: Instant) -> Verdict {
        let state = self.lock();
        let mut problems: Vec<String> = state
            .panicked
            .iter()
            .map(|name| format!("thread {name} panicked"))
            .collect();
        let mut busy = 0;
        let mut waiting = 0;
        for (name, stage) in &state.stages {
            match &stage.state {
                StageState::Idle => {}
                StageState::Waiting => waiting += 1,
                StageState::Busy { since, what } => {
                    busy += 1;
                    let quiet = now.saturating_duration_since(stage.last_beat);
                    if quiet > WEDGED_AFTER {
                        problems.push(format!(
                            "{name} wedged: no progress for {} s while {what} (busy for {} s)",
                            quiet.as_secs(),
                            now.saturating_duration_since(*since).as_secs()
                        ));
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Verdict {
                ok: false,
                lines: problems,
            };
        }
        let line = match &state.phase {
            Phase::Restarting { at } => format!(
                "ok: restarting in {} s after a fatal error (--restart-on-unrecoverable-errors)",
                at.saturating_duration_since(now).as_secs()
            ),
            Phase::Starting => "ok: starting".to_owned(),
            Phase::Stopped => "ok: stopped".to_owned(),
            Phase::Running => format!(
                "ok: {} pipeline threads ({busy} busy, {waiting} waiting on the next stage)",
                state.stages.len()
            ),
        };
        Verdict {
            ok: true,
            lines: vec![line],
        }
    }

    /// `/readyz`: whether this replica is syncing.
    pub fn readiness(&self) -> Verdict {
        let now = Instant::now();
        let state = self.lock();
        let mut reasons = Vec::new();
        match &state.phase {
            Phase::Restarting { at } => {
                let error = state
                    .last_fatal
                    .as_ref()
                    .map_or("", |note| note.message.as_str());
                reasons.push(format!(
                    "restarting in {} s after a fatal error: {error}",
                    at.saturating_duration_since(now).as_secs()
                ));
            }
            Phase::Stopped => reasons.push("the pipeline has stopped".to_owned()),
            Phase::Starting | Phase::Running => {
                if state.config_origin.is_none() {
                    reasons.push("the configuration is not loaded yet".to_owned());
                }
                if !state.sink_ready {
                    reasons.push(
                        "the sink has not been reached yet (buckets prepared, sync state loaded)"
                            .to_owned(),
                    );
                }
                if !state.first_cycle {
                    reasons.push("the first sync cycle has not started yet".to_owned());
                }
            }
        }
        if reasons.is_empty() {
            Verdict {
                ok: true,
                lines: vec!["ready".to_owned()],
            }
        } else {
            Verdict {
                ok: false,
                lines: reasons,
            }
        }
    }

    /// Whether `/readyz` would answer 200 (for the `exchange_sync_ready` gauge).
    pub fn is_ready(&self) -> bool {
        self.readiness().ok
    }
}
