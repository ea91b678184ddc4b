//! What the pipeline reports for monitoring: the counters the end-of-run summary reads, the
//! labelled families behind `/metrics`, the per-mailbox and per-folder view behind `/status`,
//! and the facts `/healthz` and `/readyz` judge.
//!
//! One `Metrics` lives as long as the process, so counters keep counting across in-process
//! restarts and configuration reloads (Prometheus expects counters to reset only when the
//! process does). The per-mailbox view is rebuilt by [`Metrics::begin_run`] for each run, so
//! mailboxes that left the configuration (or the shard) drop out of `/status`.
//!
//! Label cardinality is bounded by the configuration: mailboxes × folders, plus fixed sets
//! (error kinds, retry reasons, endpoint classes).

mod context;
mod health;
pub mod prometheus;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

pub use context::{
    ThreadGuard, WorkGuard, observe_http, progress, throttle_wait, waiting, working,
};
pub use health::{Verdict, WEDGED_AFTER};

use crate::config::MailboxConfig;
use crate::exchange::FolderInfo;
use crate::sync::folders::{Folder, FolderTable, MailboxFolders};
use crate::sync::state::Cursor;

/// A long sync logs its progress per mailbox at most this often.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(30);

/// Upper bounds (seconds) of the HTTP request duration histogram: from a loopback call to a
/// GetItem of large MIME over a slow link.
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Shared by every thread; counters only grow.
#[derive(Debug)]
pub struct Metrics {
    pub emails_synced: AtomicU64,
    pub bytes_synced: AtomicU64,
    pub batches_uploaded: AtomicU64,
    /// Emails the server could not serve (deleted meanwhile, corrupt): logged and skipped.
    pub emails_skipped: AtomicU64,
    /// Emails the sink refused for good (isolated by splitting the batch): logged.
    pub emails_rejected: AtomicU64,
    /// Folder or mailbox jobs that failed after their retries.
    pub job_failures: AtomicU64,
    /// Upload attempts that failed and were retried or given up.
    pub upload_failures: AtomicU64,
    retries: Mutex<BTreeMap<String, u64>>,
    /// Everything else; taken briefly per batch, request, hook or scrape.
    state: Mutex<State>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            emails_synced: AtomicU64::new(0),
            bytes_synced: AtomicU64::new(0),
            batches_uploaded: AtomicU64::new(0),
            emails_skipped: AtomicU64::new(0),
            emails_rejected: AtomicU64::new(0),
            job_failures: AtomicU64::new(0),
            upload_failures: AtomicU64::new(0),
            retries: Mutex::default(),
            state: Mutex::new(State::new()),
        }
    }
}

/// Where the process stands, for `/readyz` and `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Reading the configuration, preparing the sink.
    Starting,
    /// The pipeline runs.
    Running,
    /// A fatal error ended the last run; the next starts at `at` (in-process restart).
    Restarting { at: Instant },
    /// The pipeline has ended (stop signal, `--once` done, or a fatal error without restart).
    Stopped,
}

#[derive(Debug, Clone)]
struct Note {
    at: OffsetDateTime,
    message: String,
}

impl Note {
    fn now(message: impl Into<String>) -> Note {
        Note {
            at: OffsetDateTime::now_utc(),
            message: message.into(),
        }
    }
}

#[derive(Debug)]
struct State {
    started_at: OffsetDateTime,
    sink: Option<String>,
    shard: Option<(u32, u32)>,
    config_origin: Option<String>,
    phase: Phase,
    sink_ready: bool,
    first_cycle: bool,
    last_fatal: Option<Note>,
    restarts: u64,
    reloads: u64,
    /// The current run's mailboxes, by address (the configuration keeps them sorted too).
    mailboxes: BTreeMap<String, MailboxEntry>,
    /// Per-mailbox counters over the whole process.
    totals: BTreeMap<String, MailboxTotals>,
    /// Waits demanded by a server, by reason: (count, seconds).
    throttle: BTreeMap<String, (u64, f64)>,
    /// Errors by (stage, kind).
    errors: BTreeMap<(String, String), u64>,
    /// Request durations by endpoint class.
    http: BTreeMap<String, Histogram>,
    /// Registered pipeline threads by name.
    stages: BTreeMap<String, health::Stage>,
    /// Threads of the current run that panicked.
    panicked: Vec<String>,
    /// A fatal error a pipeline thread met (a sink refusing our credentials): the run ends
    /// as failed even though it stopped through the stop flag.
    run_failure: Option<String>,
}

impl State {
    fn new() -> State {
        State {
            started_at: OffsetDateTime::now_utc(),
            sink: None,
            shard: None,
            config_origin: None,
            phase: Phase::Starting,
            sink_ready: false,
            first_cycle: false,
            last_fatal: None,
            restarts: 0,
            reloads: 0,
            mailboxes: BTreeMap::new(),
            totals: BTreeMap::new(),
            throttle: BTreeMap::new(),
            errors: BTreeMap::new(),
            http: BTreeMap::new(),
            stages: BTreeMap::new(),
            panicked: Vec::new(),
            run_failure: None,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct MailboxTotals {
    emails: u64,
    bytes: u64,
    batches: u64,
    skipped: u64,
    rejected: u64,
}

#[derive(Debug)]
struct MailboxEntry {
    bucket: String,
    /// `waiting` (no cycle yet), `discovering`, `syncing`, `idle` or `error`.
    status: &'static str,
    last_error: Option<Note>,
    cycle_started_at: Option<OffsetDateTime>,
    /// When a cycle last ended with every folder copied and none in error.
    last_success_at: Option<OffsetDateTime>,
    next_poll: Option<Instant>,
    discovering: bool,
    /// Whether the current cycle's discovery failed.
    cycle_failed: bool,
    /// The mailbox's folders in the run's folder table, where each folder's [`FolderView`]
    /// is kept next to its sync state.
    folders: Option<Folders>,
    /// How many folders were queued in the current cycle and are not finished yet.
    pending: usize,
    progress: Progress,
}

/// One mailbox's row of the folder table.
#[derive(Debug)]
struct Folders {
    table: Arc<FolderTable>,
    index: usize,
}

impl MailboxEntry {
    /// The mailbox's folders, locked (after the metrics' own lock, never before it).
    fn folders(&self) -> FoldersGuard<'_> {
        FoldersGuard(self.folders.as_ref().map(|f| f.table.lock(f.index)))
    }
}

struct FoldersGuard<'a>(Option<MutexGuard<'a, MailboxFolders>>);

impl FoldersGuard<'_> {
    /// The folders `/status` and `/metrics` show, by id.
    fn shown(&self) -> impl Iterator<Item = &Folder> {
        self.0
            .iter()
            .flat_map(|folders| folders.iter())
            .filter(|folder| folder.view.visible)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Folder> {
        self.0.as_mut()?.get_mut(id)
    }
}

/// What `/status` and `/metrics` show about a folder beyond its sync state. It lives in the
/// folder table (`sync::folders`), next to the sync state the committer writes; only the
/// metrics write it.
#[derive(Debug, Default)]
pub struct FolderView {
    /// Shown: false for folders of the saved state that the last discovery did not find.
    visible: bool,
    status: FolderStatus,
    /// Queued in the current cycle and not finished yet.
    pending: bool,
    /// Found again after it had vanished from discovery: shown as a new folder, without its
    /// last sync time, until its next progress.
    reappeared: bool,
    /// The last listing stopped at `emails_per_folder`: more emails wait beyond the backlog.
    more_to_list: bool,
    /// Listed emails not stored yet.
    backlog: u64,
    last_error: Option<Box<Note>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum FolderStatus {
    #[default]
    New,
    Syncing,
    Ok,
    Error,
}

impl FolderStatus {
    fn as_str(self) -> &'static str {
        match self {
            FolderStatus::New => "new",
            FolderStatus::Syncing => "syncing",
            FolderStatus::Ok => "ok",
            FolderStatus::Error => "error",
        }
    }
}

/// A folder as `/status` and `/metrics` show it.
trait Shown {
    fn status(&self) -> &'static str;
    fn last_synced(&self) -> Option<OffsetDateTime>;
    fn last_error_note(&self) -> Option<&Note>;
    fn backlog(&self) -> u64;
    fn more_to_list(&self) -> bool;
}

impl Shown for Folder {
    fn status(&self) -> &'static str {
        self.view.status.as_str()
    }

    fn last_synced(&self) -> Option<OffsetDateTime> {
        if self.view.reappeared {
            None
        } else {
            self.last_synced_at
        }
    }

    fn last_error_note(&self) -> Option<&Note> {
        self.view.last_error.as_deref()
    }

    fn backlog(&self) -> u64 {
        self.view.backlog
    }

    fn more_to_list(&self) -> bool {
        self.view.more_to_list
    }
}

/// The progress log of one catch-up of a mailbox.
#[derive(Debug, Default)]
struct Progress {
    /// First store of this catch-up.
    since: Option<Instant>,
    last_logged: Option<Instant>,
    emails: u64,
    emails_at_last_log: u64,
    logged: bool,
}

/// A Prometheus histogram: counts per bucket (not cumulative), sum and count.
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; HTTP_DURATION_BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        if let Some(i) = HTTP_DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// What the summary at the end of a run reports (differences of these).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub emails: u64,
    pub bytes: u64,
    pub skipped: u64,
    pub job_failures: u64,
    pub retries: u64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts one retry for `reason` (an error kind such as `ErrorServerBusy`).
    pub fn record_retry(&self, reason: &str) {
        let mut retries = self.retries.lock().unwrap_or_else(|e| e.into_inner());
        *retries.entry(reason.to_owned()).or_default() += 1;
    }

    pub fn retries(&self) -> BTreeMap<String, u64> {
        self.retries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn totals(&self) -> Totals {
        Totals {
            emails: Self::get(&self.emails_synced),
            bytes: Self::get(&self.bytes_synced),
            skipped: Self::get(&self.emails_skipped),
            job_failures: Self::get(&self.job_failures),
            retries: self.retries().values().sum(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- lifecycle (app) ----

    /// What `/status` shows about the sink (its `describe()`) and the shard.
    pub fn set_run_info(&self, sink: &str, shard_index: u32, shard_total: u32) {
        let mut state = self.lock();
        state.sink = Some(sink.to_owned());
        state.shard = Some((shard_index, shard_total));
    }

    /// The configuration was read and validated.
    pub fn config_loaded(&self, origin: &str) {
        self.lock().config_origin = Some(origin.to_owned());
    }

    pub fn config_reloaded(&self) {
        self.lock().reloads += 1;
    }

    /// A run starts with these mailboxes, whose buckets are prepared and whose states are
    /// loaded into `folders` (row `i` belongs to `mailboxes[i]`): the sink is reachable.
    pub fn begin_run(&self, mailboxes: &[MailboxConfig], folders: &Arc<FolderTable>) {
        let mut state = self.lock();
        state.phase = Phase::Running;
        state.sink_ready = true;
        // A shard without mailboxes has no cycle to wait for.
        state.first_cycle = mailboxes.is_empty();
        state.panicked.clear();
        state.run_failure = None;
        state.mailboxes = mailboxes
            .iter()
            .enumerate()
            .map(|(i, mailbox)| {
                let folders = (i < folders.len()).then(|| Folders {
                    table: folders.clone(),
                    index: i,
                });
                let entry = MailboxEntry {
                    bucket: format!("{}/{}", mailbox.bucket.owner, mailbox.bucket.name),
                    status: "waiting",
                    last_error: None,
                    cycle_started_at: None,
                    last_success_at: None,
                    next_poll: None,
                    discovering: false,
                    cycle_failed: false,
                    folders,
                    pending: 0,
                    progress: Progress::default(),
                };
                // Every folder of the saved state is shown until the first discovery.
                for folder in entry.folders().0.iter_mut().flat_map(|f| f.iter_mut()) {
                    let failed = folder.failed();
                    folder.view = FolderView {
                        visible: true,
                        status: if failed {
                            FolderStatus::Error
                        } else {
                            FolderStatus::Ok
                        },
                        last_error: folder.last_error().map(|message| {
                            Box::new(Note {
                                at: folder.last_synced_at.unwrap_or(folder.synced_until()),
                                message: message.to_owned(),
                            })
                        }),
                        ..FolderView::default()
                    };
                }
                (mailbox.address.clone(), entry)
            })
            .collect();
        for mailbox in mailboxes {
            state.totals.entry(mailbox.address.clone()).or_default();
        }
    }

    /// The run ended; `fatal` is its fatal error, if any.
    pub fn end_run(&self, fatal: Option<&str>) {
        let mut state = self.lock();
        state.phase = Phase::Stopped;
        if let Some(message) = fatal {
            state.last_fatal = Some(Note::now(message));
        }
    }

    /// The run ended with a fatal error and restarts in `wait` (`--restart-on-unrecoverable-
    /// errors`).
    pub fn restart_scheduled(&self, error: &str, wait: Duration) {
        let mut state = self.lock();
        state.phase = Phase::Restarting {
            at: Instant::now() + wait,
        };
        state.last_fatal = Some(Note::now(error));
        state.sink_ready = false;
        state.first_cycle = false;
        state.restarts += 1;
    }

    /// The sink could not be prepared for a run (start-up checks failed).
    pub fn sink_unreachable(&self) {
        self.lock().sink_ready = false;
    }

    // ---- pipeline hooks (sync) ----

    /// A fetcher starts discovering `address`'s folders: a cycle begins.
    pub fn discovery_started(&self, address: &str) {
        let mut state = self.lock();
        state.first_cycle = true;
        if let Some(mailbox) = state.mailboxes.get_mut(address) {
            mailbox.discovering = true;
            mailbox.cycle_failed = false;
            mailbox.status = "discovering";
            mailbox.cycle_started_at = Some(OffsetDateTime::now_utc());
        }
    }

    /// The scheduler set the time of `address`'s next cycle.
    pub fn next_poll(&self, address: &str, at: Instant) {
        if let Some(mailbox) = self.lock().mailboxes.get_mut(address) {
            mailbox.next_poll = Some(at);
        }
    }

    /// Listing `address`'s folders failed (`kind` as in `exchange::Error::kind`).
    pub fn discovery_failed(&self, address: &str, kind: &str, message: &str) {
        let mut state = self.lock();
        *state
            .errors
            .entry(("discovery".into(), kind.to_owned()))
            .or_default() += 1;
        if let Some(mailbox) = state.mailboxes.get_mut(address) {
            mailbox.discovering = false;
            mailbox.cycle_failed = true;
            mailbox.status = "error";
            mailbox.last_error = Some(Note::now(message));
        }
    }

    /// `address`'s folders were discovered and its folder jobs queued ([`Metrics::folder_queued`]).
    /// Folders no longer found are dropped from the view.
    pub fn discovered(&self, address: &str, folders: &[FolderInfo]) {
        let mut state = self.lock();
        let Some(mailbox) = state.mailboxes.get_mut(address) else {
            return;
        };
        mailbox.discovering = false;
        mailbox.last_error = None;
        if let Some(table) = &mut mailbox.folders().0 {
            let ids: BTreeSet<&str> = folders.iter().map(|f| &*f.id).collect();
            for folder in table.iter_mut() {
                folder.view.visible &= ids.contains(folder.id());
            }
            for folder in folders {
                if let Some(entry) = table.get_mut(&folder.id)
                    && entry.view.visible
                {
                    entry.set_path(&folder.path);
                }
            }
            // Records of folders never synced that vanished again keep nothing worth showing.
            table.retain_unsaved(|folder| folder.view.visible || folder.view.pending);
        }
        mailbox.status = "syncing";
        let line = finish_cycle_if_done(address, mailbox, Instant::now());
        drop(state);
        if let Some(line) = line {
            log::info!("{line}");
        }
    }

    /// The scheduler queued a pass over `folder` starting at `cursor`.
    pub fn folder_queued(&self, address: &str, folder: &FolderInfo, cursor: &Cursor) {
        let mut state = self.lock();
        let Some(mailbox) = state.mailboxes.get_mut(address) else {
            return;
        };
        let newly_pending = match &mut mailbox.folders().0 {
            Some(table) => {
                let entry = table.get_or_insert(folder, cursor);
                let reappeared = entry.in_state();
                let view = &mut entry.view;
                if !view.visible {
                    // New, or back after it had vanished: shown afresh.
                    *view = FolderView {
                        visible: true,
                        pending: view.pending,
                        reappeared,
                        ..FolderView::default()
                    };
                }
                if view.status != FolderStatus::Error {
                    view.status = FolderStatus::Syncing;
                }
                !std::mem::replace(&mut view.pending, true)
            }
            None => false,
        };
        if newly_pending {
            mailbox.pending += 1;
        }
    }

    /// A listing of `folder_id` found `listed` emails to copy; `complete` is false when
    /// `emails_per_folder` cut it short.
    pub fn folder_listed(&self, address: &str, folder_id: &str, listed: usize, complete: bool) {
        let state = self.lock();
        let Some(mailbox) = state.mailboxes.get(address) else {
            return;
        };
        if let Some(folder) = mailbox.folders().get_mut(folder_id)
            && folder.view.visible
        {
            folder.view.backlog = listed as u64;
            folder.view.more_to_list = !complete;
        }
    }

    /// An email the server cannot serve was skipped (`code` is the server's error code).
    pub fn email_skipped(&self, address: &str, code: &str) {
        let mut state = self.lock();
        state.totals.entry(address.to_owned()).or_default().skipped += 1;
        *state
            .errors
            .entry(("email".into(), code.to_owned()))
            .or_default() += 1;
    }

    /// A batch of `address` was stored: `stored` emails (`rejected` more refused for good)
    /// of `bytes` bytes. Logs the mailbox's progress at most every [`PROGRESS_INTERVAL`].
    pub fn batch_stored(&self, address: &str, stored: u64, rejected: u64, bytes: u64) {
        let line = self.batch_stored_at(address, stored, rejected, bytes, Instant::now());
        if let Some(line) = line {
            log::info!("{line}");
        }
    }

    fn batch_stored_at(
        &self,
        address: &str,
        stored: u64,
        rejected: u64,
        bytes: u64,
        now: Instant,
    ) -> Option<String> {
        let mut state = self.lock();
        let totals = state.totals.entry(address.to_owned()).or_default();
        totals.emails += stored;
        totals.bytes += bytes;
        totals.batches += 1;
        totals.rejected += rejected;
        if rejected > 0 {
            *state
                .errors
                .entry(("email".into(), "rejected_by_sink".into()))
                .or_default() += rejected;
        }
        let mailbox = state.mailboxes.get_mut(address)?;
        let progress = &mut mailbox.progress;
        progress.emails += stored;
        let since = *progress.since.get_or_insert(now);
        let last = progress.last_logged.unwrap_or(since);
        let elapsed = now.saturating_duration_since(last);
        if elapsed < PROGRESS_INTERVAL {
            return None;
        }
        let recent = progress.emails - progress.emails_at_last_log;
        let rate = recent as f64 / elapsed.as_secs_f64().max(0.001);
        progress.last_logged = Some(now);
        progress.emails_at_last_log = progress.emails;
        progress.logged = true;
        let emails = progress.emails;
        let folders = mailbox.folders();
        let backlog: u64 = folders.shown().map(|f| f.view.backlog).sum();
        let unlisted = folders.shown().filter(|f| f.view.more_to_list).count();
        drop(folders);
        let more = match unlisted {
            0 => String::new(),
            1 => "; 1 folder has more not listed yet".to_owned(),
            n => format!("; {n} folders have more not listed yet"),
        };
        Some(format!(
            "mailbox={address}: {emails} emails copied so far ({rate:.0} emails/s over the \
             last {} s); backlog about {backlog} listed emails{more}",
            elapsed.as_secs()
        ))
    }

    /// A failure of `stage` (`upload`, `state`, …) of kind `kind`.
    pub fn record_error(&self, stage: &str, kind: &str) {
        *self
            .lock()
            .errors
            .entry((stage.to_owned(), kind.to_owned()))
            .or_default() += 1;
    }

    /// A server demanded a pause of `wait` (`reason` such as `ErrorServerBusy`,
    /// `http_429`).
    pub fn record_throttle_wait(&self, reason: &str, wait: Duration) {
        let mut state = self.lock();
        let entry = state.throttle.entry(reason.to_owned()).or_default();
        entry.0 += 1;
        entry.1 += wait.as_secs_f64();
    }

    /// One HTTP request to an endpoint of class `endpoint` took `elapsed`.
    pub fn observe_http(&self, endpoint: &str, elapsed: Duration) {
        self.lock()
            .http
            .entry(endpoint.to_owned())
            .or_insert_with(Histogram::new)
            .observe(elapsed.as_secs_f64());
    }

    /// The committer moved `folder_id`'s watermark over `covered` listed emails (and recorded
    /// the new watermark and sync time in the folder table).
    pub fn folder_progress(&self, address: &str, folder_id: &str, covered: usize) {
        let state = self.lock();
        let Some(mailbox) = state.mailboxes.get(address) else {
            return;
        };
        if let Some(folder) = mailbox.folders().get_mut(folder_id)
            && folder.view.visible
        {
            folder.view.backlog = folder.view.backlog.saturating_sub(covered as u64);
            folder.view.reappeared = false;
        }
    }

    /// A folder pass ended: with `error` (kind, message), or cleanly; `complete` when nothing
    /// more waits in the folder. Ends the mailbox's cycle when it was its last pending folder.
    pub fn folder_finished(
        &self,
        address: &str,
        folder_id: &str,
        error: Option<(&str, &str)>,
        complete: bool,
    ) {
        let mut state = self.lock();
        if let Some((kind, _)) = error {
            *state
                .errors
                .entry(("folder".into(), kind.to_owned()))
                .or_default() += 1;
        }
        let Some(mailbox) = state.mailboxes.get_mut(address) else {
            return;
        };
        let mut finished = false;
        if let Some(folder) = mailbox.folders().get_mut(folder_id) {
            let view = &mut folder.view;
            if view.visible {
                match error {
                    Some((_, message)) => {
                        view.status = FolderStatus::Error;
                        view.last_error = Some(Box::new(Note::now(message)));
                    }
                    None => {
                        view.status = if complete {
                            FolderStatus::Ok
                        } else {
                            FolderStatus::Syncing
                        };
                        view.last_error = None;
                        if complete {
                            view.backlog = 0;
                            view.more_to_list = false;
                        }
                    }
                }
            }
            if (error.is_some() || complete) && view.pending {
                view.pending = false;
                finished = true;
            }
        }
        if finished {
            mailbox.pending -= 1;
        }
        let line = finish_cycle_if_done(address, mailbox, Instant::now());
        drop(state);
        if let Some(line) = line {
            log::info!("{line}");
        }
    }

    /// A pipeline thread met an error that ends the run as failed (it also sets the stop
    /// flag); the first one counts.
    pub fn run_failed(&self, message: &str) {
        self.lock()
            .run_failure
            .get_or_insert_with(|| message.to_owned());
    }

    /// The run's failure recorded by [`Metrics::run_failed`], once.
    pub fn take_run_failure(&self) -> Option<String> {
        self.lock().run_failure.take()
    }

    /// A pipeline thread panicked: the liveness check fails until the next run.
    pub fn thread_panicked(&self, name: &str) {
        self.lock().panicked.push(name.to_owned());
    }
}

/// Ends a mailbox's cycle when discovery is done and no folder is pending: a success if no
/// folder is in error. Returns the "caught up" line when a progress line was logged.
fn finish_cycle_if_done(address: &str, mailbox: &mut MailboxEntry, now: Instant) -> Option<String> {
    if mailbox.discovering || mailbox.pending > 0 || mailbox.cycle_failed {
        return None;
    }
    if mailbox.status != "syncing" {
        return None;
    }
    let failed = mailbox
        .folders()
        .shown()
        .filter(|f| f.view.status == FolderStatus::Error)
        .count();
    if failed > 0 {
        mailbox.status = "error";
        mailbox.last_error = Some(Note::now(format!(
            "{failed} folder(s) could not be synced; see their last_error"
        )));
        return None;
    }
    mailbox.status = "idle";
    mailbox.last_success_at = Some(OffsetDateTime::now_utc());
    let progress = std::mem::take(&mut mailbox.progress);
    if !progress.logged {
        return None;
    }
    let secs = progress.since.map_or(0.0, |since| {
        now.saturating_duration_since(since).as_secs_f64()
    });
    Some(format!(
        "mailbox={address}: caught up: {} emails copied in {secs:.0} s",
        progress.emails
    ))
}

/// A folder's display-name path as one label value: segments joined by `/`, with `%` and `/`
/// inside a name percent-encoded so the path stays unambiguous.
pub fn folder_label<'a>(path: impl IntoIterator<Item = &'a str>) -> String {
    path.into_iter()
        .map(|segment| segment.replace('%', "%25").replace('/', "%2F"))
        .collect::<Vec<_>>()
        .join("/")
}

/// The kind of a sink error, for the `kind` label.
pub fn sink_error_kind(err: &crate::sink::Error) -> String {
    use crate::sink::Error;
    match err {
        Error::Io { .. } => "io".into(),
        Error::Http {
            status: Some(status),
            ..
        } => format!("http_{status}"),
        Error::Http { status: None, .. } => "unreachable".into(),
        Error::Auth { .. } => "auth".into(),
        Error::Corrupt { .. } => "corrupt".into(),
        Error::NotFound { .. } => "not_found".into(),
        Error::Invalid { .. } => "invalid".into(),
    }
}

#[cfg(test)]
mod tests;
