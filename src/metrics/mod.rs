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
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

pub use context::{
    ThreadGuard, WorkGuard, observe_http, progress, throttle_wait, waiting, working,
};
pub use health::{Verdict, WEDGED_AFTER};

use crate::config::MailboxConfig;
use crate::exchange::FolderInfo;
use crate::sync::state::{Cursor, MailboxState};

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
    folders: BTreeMap<String, FolderEntry>,
    /// Folders queued in the current cycle and not finished yet.
    pending: BTreeSet<String>,
    progress: Progress,
}

#[derive(Debug)]
struct FolderEntry {
    path: Vec<String>,
    watermark: OffsetDateTime,
    ids_at_watermark: usize,
    /// `new`, `syncing`, `ok` or `error`.
    status: &'static str,
    last_error: Option<Note>,
    last_synced_at: Option<OffsetDateTime>,
    /// Listed emails not stored yet.
    backlog: u64,
    /// The last listing stopped at `emails_per_folder`: more emails wait beyond the backlog.
    more_to_list: bool,
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
    /// loaded (`states[i]` belongs to `mailboxes[i]`): the sink is reachable.
    pub fn begin_run(&self, mailboxes: &[MailboxConfig], states: &[MailboxState]) {
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
                let folders = states
                    .get(i)
                    .map(|s| {
                        s.folders
                            .iter()
                            .map(|(id, f)| {
                                let entry = FolderEntry {
                                    path: f.path.clone(),
                                    watermark: f.synced_until,
                                    ids_at_watermark: f.ids_at_synced_until.len(),
                                    status: if f.status == "error" { "error" } else { "ok" },
                                    last_error: f.last_error.as_ref().map(|m| Note {
                                        at: f.last_synced_at.unwrap_or(f.synced_until),
                                        message: m.clone(),
                                    }),
                                    last_synced_at: f.last_synced_at,
                                    backlog: 0,
                                    more_to_list: false,
                                };
                                (id.clone(), entry)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
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
                    pending: BTreeSet::new(),
                    progress: Progress::default(),
                };
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
        let ids: BTreeSet<&str> = folders.iter().map(|f| f.id.as_str()).collect();
        mailbox.folders.retain(|id, _| ids.contains(id.as_str()));
        for folder in folders {
            if let Some(entry) = mailbox.folders.get_mut(&folder.id) {
                entry.path.clone_from(&folder.path);
            }
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
        mailbox.pending.insert(folder.id.clone());
        let entry = mailbox
            .folders
            .entry(folder.id.clone())
            .or_insert_with(|| FolderEntry {
                path: folder.path.clone(),
                watermark: cursor.synced_until,
                ids_at_watermark: cursor.ids_at_synced_until.len(),
                status: "new",
                last_error: None,
                last_synced_at: None,
                backlog: 0,
                more_to_list: false,
            });
        entry.path.clone_from(&folder.path);
        if entry.status != "error" {
            entry.status = "syncing";
        }
    }

    /// A listing of `folder_id` found `listed` emails to copy; `complete` is false when
    /// `emails_per_folder` cut it short.
    pub fn folder_listed(&self, address: &str, folder_id: &str, listed: usize, complete: bool) {
        let mut state = self.lock();
        if let Some(folder) = state
            .mailboxes
            .get_mut(address)
            .and_then(|m| m.folders.get_mut(folder_id))
        {
            folder.backlog = listed as u64;
            folder.more_to_list = !complete;
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
        let backlog: u64 = mailbox.folders.values().map(|f| f.backlog).sum();
        let unlisted = mailbox.folders.values().filter(|f| f.more_to_list).count();
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

    /// The committer moved `folder_id`'s watermark over `covered` listed emails.
    pub fn folder_progress(&self, address: &str, folder_id: &str, cursor: &Cursor, covered: usize) {
        let mut state = self.lock();
        if let Some(folder) = state
            .mailboxes
            .get_mut(address)
            .and_then(|m| m.folders.get_mut(folder_id))
        {
            folder.watermark = cursor.synced_until;
            folder.ids_at_watermark = cursor.ids_at_synced_until.len();
            folder.backlog = folder.backlog.saturating_sub(covered as u64);
            folder.last_synced_at = Some(OffsetDateTime::now_utc());
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
        if let Some(folder) = mailbox.folders.get_mut(folder_id) {
            match error {
                Some((_, message)) => {
                    folder.status = "error";
                    folder.last_error = Some(Note::now(message));
                }
                None => {
                    folder.status = if complete { "ok" } else { "syncing" };
                    folder.last_error = None;
                    if complete {
                        folder.backlog = 0;
                        folder.more_to_list = false;
                    }
                }
            }
        }
        if error.is_some() || complete {
            mailbox.pending.remove(folder_id);
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
    if mailbox.discovering || !mailbox.pending.is_empty() || mailbox.cycle_failed {
        return None;
    }
    if mailbox.status != "syncing" {
        return None;
    }
    let failed = mailbox
        .folders
        .values()
        .filter(|f| f.status == "error")
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
pub fn folder_label(path: &[String]) -> String {
    path.iter()
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
