//! The sync pipeline: scheduler → fetcher pool → uploader pool → state committer, joined by
//! bounded channels so memory stays bounded by batch sizes, whatever the mailbox size.

pub mod committer;
pub mod fetcher;
pub mod folders;
pub mod messages;
pub mod scheduler;
pub mod state;
pub mod uploader;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded};
use time::OffsetDateTime;

use crate::config::MailboxConfig;
use crate::exchange::MailSource;
use crate::metrics::Metrics;
use crate::shutdown::StopFlag;
use crate::sink::Sink;
use folders::FolderTable;
pub use scheduler::Outcome;

/// Finished batches that may wait for an uploader.
const BATCH_QUEUE: usize = 2;

/// What every pipeline thread reads.
pub struct Shared {
    /// The mailboxes this replica syncs; pipeline messages refer to them by index.
    pub mailboxes: Vec<MailboxConfig>,
    pub sink: Arc<dyn Sink>,
    pub stop: StopFlag,
    pub metrics: Arc<Metrics>,
    pub emails_per_folder: usize,
    pub batch_size: usize,
    pub poll_frequency: Duration,
}

/// How the pipeline is sized and how it ends.
pub struct Settings {
    pub uploaders: usize,
    /// `--once`: copy emails received up to this instant, then return.
    pub until: Option<OffsetDateTime>,
    /// After a stop, how long in-flight uploads may take before we give up on them (their
    /// emails are re-copied on the next start; the watermark never passed them).
    pub shutdown_deadline: Duration,
}

/// Runs the pipeline until `--once` is done, a stop, or a fatal error. `folders` holds each
/// mailbox's loaded state (the committer writes it, the scheduler reads cursors from it), and
/// `sources` one protocol client per fetcher thread.
pub fn run(
    shared: Arc<Shared>,
    folders: Arc<FolderTable>,
    sources: Vec<Box<dyn MailSource>>,
    settings: Settings,
) -> Outcome {
    let stop = shared.stop.clone();
    let fetchers = sources.len().max(1);
    let uploaders = settings.uploaders.max(1);
    let (job_tx, job_rx) = bounded(fetchers);
    // Completed batches wait here only while every uploader is busy, and then more of them
    // buy no throughput, only memory: with slow uploads (a loaded disk or CPU) a queue of
    // 2 x uploaders batches took the peak RSS of one 50,000-email mailbox from 39 to 115 MB.
    let (batch_tx, batch_rx) = bounded(BATCH_QUEUE);
    let (commit_tx, commit_rx) = unbounded();
    let (event_tx, event_rx) = unbounded();
    // Every worker holds a clone; when all are gone, the receiver disconnects.
    let (alive_tx, alive_rx) = bounded::<()>(0);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let metrics = shared.metrics.clone();

    {
        let (shared, folders, events, alive) = (
            shared.clone(),
            folders.clone(),
            event_tx.clone(),
            alive_tx.clone(),
        );
        threads.push(spawn("committer", &stop, &metrics, move || {
            committer::run(shared, folders, commit_rx, events);
            drop(alive);
        }));
    }
    for index in 0..uploaders {
        let (shared, batches, commits, alive) = (
            shared.clone(),
            batch_rx.clone(),
            commit_tx.clone(),
            alive_tx.clone(),
        );
        threads.push(spawn(
            &format!("uploader-{index}"),
            &stop,
            &metrics,
            move || {
                uploader::run(shared, batches, commits);
                drop(alive);
            },
        ));
    }
    for (index, source) in sources.into_iter().enumerate() {
        let (shared, jobs, batches, commits, events, alive) = (
            shared.clone(),
            job_rx.clone(),
            batch_tx.clone(),
            commit_tx.clone(),
            event_tx.clone(),
            alive_tx.clone(),
        );
        threads.push(spawn(
            &format!("fetcher-{index}"),
            &stop,
            &metrics,
            move || {
                fetcher::run(source, shared, jobs, batches, commits, events);
                drop(alive);
            },
        ));
    }
    // Only the workers hold these now, so channels close in pipeline order.
    drop((job_rx, batch_rx, batch_tx, commit_tx, event_tx, alive_tx));

    let scheduler = scheduler::Scheduler::new(shared.clone(), folders.cursors(), settings.until);
    let outcome = match spawn("scheduler", &stop, &metrics, move || {
        scheduler.run(job_tx, event_rx)
    })
    .join()
    {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Fatal("the scheduler thread panicked".into()),
    };
    if outcome != Outcome::Finished || shared.stop.is_stopped() {
        // Fetchers abandon their current folder at the next request; uploads drain.
        shared.stop.stop();
    }

    let deadline = Instant::now() + settings.shutdown_deadline;
    let drained = if settings.until.is_some() && !shared.stop.is_stopped() {
        // `--once` finished normally: everything is already stored; no deadline applies.
        alive_rx.recv().is_err()
    } else {
        matches!(
            alive_rx.recv_deadline(deadline),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        )
    };
    if !drained {
        log::warn!(
            "stop deadline of {} s passed with uploads still in flight; their emails will be \
             copied again on the next start (the watermark never passed them)",
            settings.shutdown_deadline.as_secs()
        );
        return outcome;
    }
    for thread in threads {
        let name = thread.thread().name().unwrap_or("?").to_owned();
        if thread.join().is_err() {
            log::error!("thread {name} panicked");
            return Outcome::Fatal(format!("thread {name} panicked"));
        }
    }
    outcome
}

/// Spawns a named thread. A panic in it stops the whole pipeline (a silently dead worker
/// would wedge it) and is reported when the thread is joined.
///
/// The thread records into `metrics` (HTTP hooks deep in the clients find it) and is a stage
/// `/healthz` watches.
fn spawn<T: Send + 'static>(
    name: &str,
    stop: &StopFlag,
    metrics: &Arc<Metrics>,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let stop = stop.clone();
    let metrics = metrics.clone();
    let thread_name = name.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _context = metrics.enter_thread(Some(&thread_name));
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(value) => value,
                Err(panic) => {
                    log::error!("thread {thread_name} panicked; stopping");
                    metrics.thread_panicked(&thread_name);
                    stop.stop();
                    std::panic::resume_unwind(panic)
                }
            }
        })
        // Failing to start a thread at start-up is not recoverable.
        .unwrap_or_else(|err| panic!("cannot start thread {name}: {err}"))
}
