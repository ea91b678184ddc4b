//! State committer: the single writer of sync state. It advances a folder's watermark only
//! through the contiguous prefix of batches the sink has stored, and persists it.
//!
//! The sync state lives in the folder table (`sync::folders`), shared with the scheduler (which
//! starts each folder pass from the cursor recorded there) and the metrics.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use time::OffsetDateTime;

use super::Shared;
use super::folders::{Folder, FolderTable, MailboxFolders};
use super::messages::{Commit, Event, FolderJob};
use crate::metrics::{self, Metrics};

/// Progress of one folder job.
struct JobProgress {
    job: FolderJob,
    /// Batches acknowledged but not yet applied because an earlier one is outstanding.
    pending: BTreeMap<u32, (Vec<(OffsetDateTime, String)>, bool)>,
    next_seq: u32,
    /// A batch was not stored: the watermark stops before it for this job.
    blocked: bool,
    listed: Option<Listed>,
}

struct Listed {
    batches: u32,
    complete: bool,
    error: Option<crate::exchange::Error>,
}

/// Runs the committer until every fetcher and uploader has hung up. `folders` holds the loaded
/// state of every mailbox, by mailbox index.
pub fn run(
    shared: Arc<Shared>,
    folders: Arc<FolderTable>,
    commits: Receiver<Commit>,
    events: Sender<Event>,
) {
    let mut jobs: HashMap<u64, JobProgress> = HashMap::new();
    let mut dirty: HashSet<usize> = HashSet::new();
    while let Ok(first) = commits.recv() {
        let _work = metrics::working("applying acknowledgements and saving sync state");
        // Apply everything already queued before writing, so a burst of acks costs one write.
        let mut message = Some(first);
        while let Some(commit) = message.take().or_else(|| commits.try_recv().ok()) {
            apply(&shared, &mut jobs, &folders, &mut dirty, commit);
        }
        persist(&shared, &folders, &mut dirty);
        finish_done_jobs(&shared, &mut jobs, &folders, &mut dirty, &events);
        persist(&shared, &folders, &mut dirty);
    }
    if !jobs.is_empty() {
        log::info!(
            "{} folder jobs were cut short by the stop; they resume from their saved watermark",
            jobs.len()
        );
    }
}

fn apply(
    shared: &Shared,
    jobs: &mut HashMap<u64, JobProgress>,
    folders: &FolderTable,
    dirty: &mut HashSet<usize>,
    commit: Commit,
) {
    match commit {
        Commit::Started(job) => {
            jobs.insert(
                job.job_id,
                JobProgress {
                    job,
                    pending: BTreeMap::new(),
                    next_seq: 0,
                    blocked: false,
                    listed: None,
                },
            );
        }
        Commit::Acked {
            job_id,
            seq,
            covers,
            stored,
        } => {
            let Some(progress) = jobs.get_mut(&job_id) else {
                log::error!("acknowledgement for unknown job {job_id}; ignored");
                return;
            };
            progress.pending.insert(seq, (covers, stored));
            // Advance through the contiguous prefix of stored batches.
            while let Some((covers, stored)) = progress.pending.remove(&progress.next_seq) {
                progress.next_seq += 1;
                if progress.blocked {
                    continue;
                }
                if !stored {
                    progress.blocked = true;
                    continue;
                }
                progress
                    .job
                    .cursor
                    .advance(covers.iter().map(|(t, id)| (*t, id.as_str())));
                {
                    let mut mailbox = folders.lock(progress.job.mailbox);
                    let state = folder_state(&mut mailbox, &progress.job);
                    state.set_cursor(&progress.job.cursor);
                    state.last_synced_at = Some(OffsetDateTime::now_utc());
                }
                dirty.insert(progress.job.mailbox);
                shared.metrics.folder_progress(
                    &shared.mailboxes[progress.job.mailbox].address,
                    &progress.job.folder.id,
                    covers.len(),
                );
            }
        }
        Commit::Listed {
            job_id,
            batches,
            complete,
            error,
        } => {
            if let Some(progress) = jobs.get_mut(&job_id) {
                progress.listed = Some(Listed {
                    batches,
                    complete,
                    error,
                });
            }
        }
    }
}

/// The persisted state of a job's folder, created from the job's starting cursor if new.
fn folder_state<'a>(mailbox: &'a mut MailboxFolders, job: &FolderJob) -> &'a mut Folder {
    mailbox.record(&job.folder, job.cursor.synced_until)
}

fn finish_done_jobs(
    shared: &Shared,
    jobs: &mut HashMap<u64, JobProgress>,
    folders: &FolderTable,
    dirty: &mut HashSet<usize>,
    events: &Sender<Event>,
) {
    let done: Vec<u64> = jobs
        .iter()
        .filter(|(_, p)| p.listed.as_ref().is_some_and(|l| p.next_seq >= l.batches))
        .map(|(id, _)| *id)
        .collect();
    for job_id in done {
        let Some(progress) = jobs.remove(&job_id) else {
            continue;
        };
        let Some(listed) = progress.listed else {
            continue;
        };
        let job = progress.job;
        let address = &shared.mailboxes[job.mailbox].address;
        let error = match (&listed.error, progress.blocked) {
            (Some(err), _) => Some(err.to_string()),
            (None, true) => Some("a batch could not be stored in the sink".to_owned()),
            (None, false) => None,
        };
        if let Some(message) = &error {
            Metrics::add(&shared.metrics.job_failures, 1);
            log::error!("mailbox={address} folder={:?}: {message}", job.folder.path);
        }
        let changed =
            folder_state(&mut folders.lock(job.mailbox), &job).set_outcome(error.as_deref());
        if changed {
            dirty.insert(job.mailbox);
        }
        let kind = listed.error.as_ref().map_or("sink", |e| e.kind());
        shared.metrics.folder_finished(
            address,
            &job.folder.id,
            error.as_deref().map(|message| (kind, message)),
            listed.complete && error.is_none(),
        );
        let _ = events.send(Event::FolderDone {
            mailbox: job.mailbox,
            folder_id: job.folder.id.clone(),
            complete: listed.complete && error.is_none(),
            fatal: listed.error.as_ref().is_some_and(|e| e.is_fatal()),
            error,
        });
    }
}

fn persist(shared: &Shared, folders: &FolderTable, dirty: &mut HashSet<usize>) {
    for mailbox in dirty.drain() {
        let config = &shared.mailboxes[mailbox];
        let state = folders.lock(mailbox).to_state();
        if let Err(err) = shared.sink.save_state(&config.bucket, &state) {
            // The data is stored; only the watermark lags. The next write retries it, and at
            // worst a restart re-copies some emails, which is harmless (ids are stable).
            log::error!("mailbox={}: cannot save sync state: {err}", config.address);
            Metrics::add(&shared.metrics.job_failures, 1);
            shared
                .metrics
                .record_error("state", &metrics::sink_error_kind(&err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bucket, MailboxConfig, StartFrom};
    use crate::exchange::FolderInfo;
    use crate::sink::local::LocalSink;
    use crate::sync::state::{Cursor, MailboxState, STATE_VERSION};
    use time::macros::datetime;

    fn shared(dir: &std::path::Path) -> Arc<Shared> {
        Arc::new(Shared {
            mailboxes: vec![MailboxConfig {
                address: "a@b.c".into(),
                bucket: Bucket {
                    owner: "o".into(),
                    name: "b".into(),
                },
                start_from: StartFrom::Bucket,
                start_timestamp: None,
            }],
            sink: Arc::new(LocalSink::new(dir)),
            stop: Default::default(),
            metrics: Default::default(),
            emails_per_folder: 100,
            batch_size: 10,
            poll_frequency: std::time::Duration::from_secs(1),
        })
    }

    fn job() -> FolderJob {
        FolderJob {
            job_id: 7,
            mailbox: 0,
            folder: FolderInfo {
                id: "f".into(),
                path: ["Inbox".to_owned()].into(),
                changed_at: None,
                changed_at_settled: false,
            },
            cursor: Cursor::starting_at(datetime!(2024-01-01 0:00 UTC)),
            until: None,
        }
    }

    fn covers(second: u8, id: &str) -> Vec<(OffsetDateTime, String)> {
        vec![(
            datetime!(2024-01-01 0:00 UTC) + time::Duration::seconds(second.into()),
            id.into(),
        )]
    }

    fn run_commits(
        dir: &std::path::Path,
        commits: Vec<Commit>,
    ) -> (Option<MailboxState>, Vec<Event>) {
        let shared = shared(dir);
        let (tx, rx) = crossbeam_channel::unbounded();
        let (event_tx, event_rx) = crossbeam_channel::unbounded();
        for commit in commits {
            tx.send(commit).unwrap();
        }
        drop(tx);
        let state = MailboxState {
            version: STATE_VERSION,
            mailbox: "a@b.c".into(),
            folders: Default::default(),
        };
        let folders = FolderTable::new(vec![MailboxFolders::from_state(state)]);
        run(shared.clone(), Arc::new(folders), rx, event_tx);
        let bucket = &shared.mailboxes[0].bucket;
        (
            shared.sink.load_state(bucket, "a@b.c").unwrap(),
            event_rx.try_iter().collect(),
        )
    }

    #[test]
    fn watermark_moves_only_through_the_contiguous_stored_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let ack = |seq, second, id: &str, stored| Commit::Acked {
            job_id: 7,
            seq,
            covers: covers(second, id),
            stored,
        };
        // Batch 2 is acked first, batch 1 fails: only batch 0 counts.
        let (state, events) = run_commits(
            dir.path(),
            vec![
                Commit::Started(job()),
                ack(2, 3, "c", true),
                ack(0, 1, "a", true),
                ack(1, 2, "b", false),
                Commit::Listed {
                    job_id: 7,
                    batches: 3,
                    complete: true,
                    error: None,
                },
            ],
        );
        let folder = &state.unwrap().folders["f"];
        assert_eq!(folder.synced_until, datetime!(2024-01-01 0:00:01 UTC));
        assert_eq!(folder.ids_at_synced_until, vec!["a".to_owned()]);
        assert_eq!(folder.status, "error");
        match &events[..] {
            [
                Event::FolderDone {
                    complete, error, ..
                },
            ] => {
                assert!(!complete);
                assert!(error.is_some());
            }
            other => panic!("unexpected events {other:?}"),
        }
    }

    #[test]
    fn job_finishes_only_when_every_batch_is_acked() {
        let dir = tempfile::tempdir().unwrap();
        let (state, events) = run_commits(
            dir.path(),
            vec![
                Commit::Started(job()),
                Commit::Listed {
                    job_id: 7,
                    batches: 2,
                    complete: true,
                    error: None,
                },
                Commit::Acked {
                    job_id: 7,
                    seq: 0,
                    covers: covers(1, "a"),
                    stored: true,
                },
            ],
        );
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(
            state.unwrap().folders["f"].synced_until,
            datetime!(2024-01-01 0:00:01 UTC)
        );
    }
}
