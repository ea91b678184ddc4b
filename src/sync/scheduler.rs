//! Scheduler: one thread deciding which mailbox to rediscover and which folder to sync next,
//! so folders of all mailboxes take turns and one huge folder never starves the others.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};
use time::OffsetDateTime;

use super::Shared;
use super::folders::MailboxCursors;
use super::messages::{Event, FolderJob, Job};
use super::state::{ChangeMark, Cursor};
use crate::config::StartFrom;
use crate::exchange::FolderInfo;
use crate::metrics::Metrics;

/// Upper bound on waiting for a folder whose last pass failed, whatever `poll_frequency` says.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(300);
/// Jobs the queue keeps room for between cycles.
const IDLE_QUEUE_CAPACITY: usize = 64;
/// Due mailboxes are discovered only while fewer jobs than this wait: a discovery queues every
/// folder of its mailbox, so discovering all due mailboxes at once held every mailbox's folder
/// list and jobs in memory together (and glibc keeps such a peak's pages afterwards). More
/// than the fetcher threads (at most 27), so none waits for work.
const DISCOVERY_LOW_WATER: usize = 32;
/// `--once`: passes a failing folder gets before the run reports it as not synced.
const ONCE_FOLDER_ATTEMPTS: u32 = 3;
/// `--once`: pause before a failed folder's next pass, times the failures so far.
const ONCE_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// How the run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `--once` finished with everything copied (or the stop flag was set).
    Finished,
    /// `--once` finished, but some mailboxes or folders failed; their errors were logged.
    FinishedWithErrors(usize),
    /// Nothing can work until the operator acts (credentials rejected).
    Fatal(String),
}

/// Per-mailbox scheduling state.
struct MailboxSlot {
    discovering: bool,
    discovered_once: bool,
    folders: Vec<FolderInfo>,
    cursors: MailboxCursors,
    busy: HashSet<Arc<str>>,
    /// Folders whose last pass failed, with when they may run again.
    failed_until: HashMap<Arc<str>, Instant>,
    next_cycle_at: Instant,
    /// `--once`: folders that have nothing more to copy up to the cut-off.
    drained: HashSet<Arc<str>>,
    /// `--once`: the mailbox is finished (all folders drained or failed, or it failed).
    once_done: bool,
    /// `--once`: failed passes per folder.
    once_failures: HashMap<Arc<str>, u32>,
    consecutive_failures: u32,
}

pub struct Scheduler {
    shared: Arc<Shared>,
    slots: Vec<MailboxSlot>,
    queue: VecDeque<Job>,
    /// Due mailboxes whose discovery is not queued yet (see [`DISCOVERY_LOW_WATER`]).
    waiting_discoveries: VecDeque<usize>,
    /// `--once`: failed folders waiting for their next pass.
    deferred: Vec<(Instant, usize, FolderInfo)>,
    next_job_id: u64,
    /// `--once`: copy only emails received at or before this instant.
    until: Option<OffsetDateTime>,
    errors: usize,
    /// Mailboxes that went idle, by when their next cycle is due, so a loop turn costs
    /// O(log n) instead of a scan of every mailbox (which made a cycle of n mailboxes cost
    /// O(n²)). Entries can be stale (the mailbox got busy again, or its time moved): they are
    /// checked when popped.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    /// `--once`: how many mailboxes are finished.
    once_done_count: usize,
}

impl Scheduler {
    /// `cursors` holds, per mailbox, the cursors the committer recorded.
    pub fn new(
        shared: Arc<Shared>,
        cursors: Vec<MailboxCursors>,
        until: Option<OffsetDateTime>,
    ) -> Self {
        let now = Instant::now();
        let due = (0..cursors.len()).map(|i| Reverse((now, i))).collect();
        let slots = cursors
            .into_iter()
            .map(|cursors| MailboxSlot {
                discovering: false,
                discovered_once: false,
                folders: Vec::new(),
                cursors,
                busy: HashSet::new(),
                failed_until: HashMap::new(),
                next_cycle_at: now,
                drained: HashSet::new(),
                once_done: false,
                once_failures: HashMap::new(),
                consecutive_failures: 0,
            })
            .collect();
        Scheduler {
            shared,
            slots,
            queue: VecDeque::new(),
            waiting_discoveries: VecDeque::new(),
            deferred: Vec::new(),
            next_job_id: 0,
            until,
            errors: 0,
            due,
            once_done_count: 0,
        }
    }

    /// Runs until `--once` is done, the stop flag is set, or a fatal error occurs. Dropping
    /// `jobs` on return is what shuts the fetchers down.
    pub fn run(mut self, jobs: Sender<Job>, events: Receiver<Event>) -> Outcome {
        let stop = self.shared.stop.clone();
        let stopped = stop.channel();
        loop {
            if stop.is_stopped() {
                return Outcome::Finished;
            }
            self.start_due_cycles();
            self.release_deferred();
            while self.queue.len() < DISCOVERY_LOW_WATER
                && let Some(mailbox) = self.waiting_discoveries.pop_front()
            {
                self.queue.push_back(Job::Discover { mailbox });
            }
            if self.until.is_some() && self.once_done_count == self.slots.len() {
                return if self.errors == 0 {
                    Outcome::Finished
                } else {
                    Outcome::FinishedWithErrors(self.errors)
                };
            }
            if self.queue.is_empty() && self.queue.capacity() > IDLE_QUEUE_CAPACITY {
                // Discoveries in flight and long folders passed round the queue can grow it
                // well beyond this; between cycles that peak would otherwise stay allocated.
                self.queue.shrink_to(IDLE_QUEUE_CAPACITY);
            }
            let timeout = self.next_wakeup().saturating_duration_since(Instant::now());
            let mut select = Select::new();
            let events_index = select.recv(&events);
            let stop_index = select.recv(&stopped);
            let send_index = (!self.queue.is_empty()).then(|| select.send(&jobs));
            let Ok(operation) = select.select_timeout(timeout) else {
                continue;
            };
            match operation.index() {
                i if i == events_index => match operation.recv(&events) {
                    Ok(event) => {
                        let mailbox = match &event {
                            Event::Discovered { mailbox, .. }
                            | Event::FolderDone { mailbox, .. } => *mailbox,
                        };
                        if let Some(outcome) = self.handle(event) {
                            return outcome;
                        }
                        self.note_if_idle(mailbox);
                    }
                    // Every fetcher and the committer are gone: nothing more can happen.
                    Err(_) => return Outcome::Fatal("worker threads ended unexpectedly".into()),
                },
                i if i == stop_index => {
                    let _ = operation.recv(&stopped);
                    return Outcome::Finished;
                }
                i if Some(i) == send_index => {
                    let job = self
                        .queue
                        .pop_front()
                        .expect("send is selected only with a queued job");
                    if operation.send(&jobs, job).is_err() {
                        return Outcome::Fatal("fetcher threads ended unexpectedly".into());
                    }
                }
                _ => unreachable!("select returned an index it was not given"),
            }
        }
    }

    /// Remembers when an idle mailbox's next cycle is due.
    fn note_if_idle(&mut self, mailbox: usize) {
        let slot = &mut self.slots[mailbox];
        if !slot.discovering && slot.busy.is_empty() && !slot.once_done {
            if self.until.is_none() {
                // The next cycle discovers the folders again.
                slot.folders = Vec::new();
            }
            self.due.push(Reverse((slot.next_cycle_at, mailbox)));
        }
    }

    /// Queues a discovery for each mailbox whose poll time has come and that is idle.
    fn start_due_cycles(&mut self) {
        let now = Instant::now();
        let once = self.until.is_some();
        while let Some(&Reverse((at, index))) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            let slot = &mut self.slots[index];
            let idle = !slot.discovering && slot.busy.is_empty();
            let due = if once {
                !slot.discovered_once
            } else {
                now >= slot.next_cycle_at
            };
            if idle && due && !slot.once_done {
                slot.discovering = true;
                slot.next_cycle_at = now + self.shared.poll_frequency;
                self.waiting_discoveries.push_back(index);
                let address = &self.shared.mailboxes[index].address;
                self.shared.metrics.next_poll(address, slot.next_cycle_at);
            }
        }
    }

    /// Queues the deferred folders whose pause is over.
    fn release_deferred(&mut self) {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) =
            self.deferred.drain(..).partition(|(at, _, _)| *at <= now);
        self.deferred = waiting;
        for (_, mailbox, folder) in due {
            // Marked busy while deferred so the mailbox does not count as done.
            self.slots[mailbox].busy.remove(&folder.id);
            self.queue_folder(mailbox, &folder);
        }
    }

    fn next_wakeup(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        if self.until.is_some() {
            return self
                .deferred
                .iter()
                .map(|(at, _, _)| *at)
                .min()
                .unwrap_or(far);
        }
        self.due.peek().map(|Reverse((at, _))| *at).unwrap_or(far)
    }

    fn handle(&mut self, event: Event) -> Option<Outcome> {
        match event {
            Event::Discovered { mailbox, result } => {
                let address = self.shared.mailboxes[mailbox].address.clone();
                let slot = &mut self.slots[mailbox];
                slot.discovering = false;
                slot.discovered_once = true;
                match result {
                    Ok(folders) => {
                        slot.consecutive_failures = 0;
                        let mut folders = folders;
                        folders.shrink_to_fit();
                        let count = folders.len();
                        let queued = (folders.iter())
                            .filter(|folder| self.queue_folder(mailbox, folder))
                            .count();
                        self.slots[mailbox].folders = folders;
                        if queued < count {
                            log::debug!(
                                "mailbox={address}: {} of {count} folders unchanged since their last complete listing",
                                count - queued
                            );
                        }
                        self.shared
                            .metrics
                            .discovered(&address, &self.slots[mailbox].folders);
                        self.check_once_done(mailbox);
                    }
                    Err(err) if err.is_fatal() => {
                        let message = err.to_string();
                        self.shared
                            .metrics
                            .discovery_failed(&address, err.kind(), &message);
                        return Some(Outcome::Fatal(format!("mailbox={address}: {message}")));
                    }
                    Err(err) => {
                        Metrics::add(&self.shared.metrics.job_failures, 1);
                        slot.consecutive_failures += 1;
                        let retry_in = self
                            .shared
                            .poll_frequency
                            .saturating_mul(slot.consecutive_failures)
                            .min(MAX_ERROR_BACKOFF)
                            .max(self.shared.poll_frequency);
                        slot.next_cycle_at = Instant::now() + retry_in;
                        let metrics = &self.shared.metrics;
                        metrics.next_poll(&address, slot.next_cycle_at);
                        metrics.discovery_failed(&address, err.kind(), &err.to_string());
                        let hint = if err.is_mailbox_fatal() {
                            " (check the address and the service account's rights on this mailbox)"
                        } else {
                            ""
                        };
                        log::error!("mailbox={address}: cannot list folders: {err}{hint}");
                        if self.until.is_some() {
                            if !slot.once_done {
                                self.once_done_count += 1;
                            }
                            slot.once_done = true;
                            self.errors += 1;
                        }
                    }
                }
            }
            Event::FolderDone {
                mailbox,
                folder_id,
                complete,
                error,
                fatal,
            } => {
                if fatal {
                    let address = &self.shared.mailboxes[mailbox].address;
                    return Some(Outcome::Fatal(format!(
                        "mailbox={address}: {}",
                        error.unwrap_or_default()
                    )));
                }
                let slot = &mut self.slots[mailbox];
                slot.busy.remove(&folder_id);
                if slot.busy.is_empty() {
                    // Keeps no table sized for the whole mailbox between cycles.
                    slot.busy.shrink_to_fit();
                }
                if complete && error.is_none() {
                    slot.cursors
                        .update_change_mark(&folder_id, ChangeMark::listed_completely);
                }
                let folder = slot.folders.iter().find(|f| f.id == folder_id).cloned();
                match (error, folder) {
                    (Some(_), Some(folder)) if self.until.is_some() => {
                        // Logged by the committer. A few more passes, with pauses.
                        let failures = slot.once_failures.entry(folder_id.clone()).or_default();
                        *failures += 1;
                        if *failures < ONCE_FOLDER_ATTEMPTS {
                            let at = Instant::now() + ONCE_RETRY_PAUSE * *failures;
                            slot.busy.insert(folder_id);
                            self.deferred.push((at, mailbox, folder));
                        } else {
                            let address = &self.shared.mailboxes[mailbox].address;
                            log::error!(
                                "mailbox={address} folder={:?}: giving up after {failures} failed passes",
                                folder.path
                            );
                            slot.drained.insert(folder_id);
                            self.errors += 1;
                        }
                    }
                    (Some(_), _) => {
                        // Logged by the committer. Try again later, not in a tight loop.
                        let retry_at =
                            Instant::now() + self.shared.poll_frequency.min(MAX_ERROR_BACKOFF);
                        slot.failed_until.insert(folder_id.clone(), retry_at);
                        if self.until.is_some() {
                            slot.drained.insert(folder_id);
                            self.errors += 1;
                        }
                    }
                    (None, Some(folder)) if !complete => {
                        // More to copy: back of the queue, so other folders get their turn.
                        self.queue_folder(mailbox, &folder);
                    }
                    (None, _) => {
                        slot.failed_until.remove(&folder_id);
                        if self.until.is_some() {
                            slot.drained.insert(folder_id);
                        }
                    }
                }
                self.check_once_done(mailbox);
            }
        }
        None
    }

    /// Queues a pass over `folder` unless it is busy, resting after a failure, or (between
    /// polls of the daemon) unchanged since a complete listing. True when queued.
    fn queue_folder(&mut self, mailbox: usize, folder: &FolderInfo) -> bool {
        let config = &self.shared.mailboxes[mailbox];
        let slot = &mut self.slots[mailbox];
        if slot.busy.contains(&folder.id)
            || slot.drained.contains(&folder.id) && self.until.is_some()
        {
            return false;
        }
        let now = Instant::now();
        if let Some(until) = slot.failed_until.get(&folder.id)
            && now < *until
            && self.until.is_none()
        {
            return false;
        }
        // `--once` lists every folder.
        let known = match self.until {
            None => slot.cursors.change_mark(&folder.id),
            Some(_) => ChangeMark::Unknown,
        };
        if known.is_covered(folder.changed_at) {
            return false;
        }
        let cursor = slot.cursors.get_or(&folder.id, || {
            Cursor::starting_at(start_of(config.start_timestamp, config.start_from))
        });
        let change = known.queued(folder.changed_at, folder.changed_at_settled, now);
        if change != known {
            slot.cursors.set_change_mark(folder, &cursor, change);
        }
        slot.busy.insert(folder.id.clone());
        self.shared
            .metrics
            .folder_queued(&config.address, folder, &cursor);
        self.next_job_id += 1;
        self.queue.push_back(Job::SyncFolder(FolderJob {
            job_id: self.next_job_id,
            mailbox,
            folder: folder.clone(),
            cursor,
            until: self.until,
        }));
        true
    }

    fn check_once_done(&mut self, mailbox: usize) {
        if self.until.is_none() {
            return;
        }
        let slot = &mut self.slots[mailbox];
        if slot.discovered_once
            && !slot.discovering
            && slot.busy.is_empty()
            && !slot.once_done
            && slot.folders.iter().all(|f| slot.drained.contains(&f.id))
        {
            slot.once_done = true;
            self.once_done_count += 1;
        }
    }
}

/// Where a folder without saved state starts.
fn start_of(start_timestamp: Option<OffsetDateTime>, _start_from: StartFrom) -> OffsetDateTime {
    start_timestamp.unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
