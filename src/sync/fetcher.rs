//! Fetcher pool: each thread lists folders since their watermark, fetches MIME in batches and
//! hands email batches to the uploaders.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::Shared;
use super::messages::{Batch, Commit, Event, FolderJob, Job};
use crate::document::EmailDoc;
use crate::exchange::{ItemOutcome, ItemRef, MailSource};
use crate::metrics::{self, Metrics};
use crate::sink::EncodedBatch;

/// Upper bound on one upload batch in bytes, whatever `reinfer_batch_size` says, so memory
/// stays bounded when emails are large.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Runs one fetcher thread until the job channel closes.
pub fn run(
    mut source: Box<dyn MailSource>,
    shared: Arc<Shared>,
    jobs: Receiver<Job>,
    batches: Sender<Batch>,
    commits: Sender<Commit>,
    events: Sender<Event>,
) {
    for job in jobs {
        if shared.stop.is_stopped() {
            // Scheduling has stopped; leave queued work for the next start.
            continue;
        }
        match job {
            Job::Discover { mailbox } => {
                let address = &shared.mailboxes[mailbox].address;
                shared.metrics.discovery_started(address);
                let _work = metrics::working(format!("discovering the folders of {address}"));
                let result = source.discover_folders(address);
                if let Ok(folders) = &result {
                    log::debug!("mailbox={address}: {} mail folders", folders.len());
                }
                let _ = events.send(Event::Discovered { mailbox, result });
            }
            Job::SyncFolder(job) => {
                let _work = metrics::working(format!(
                    "syncing folder {:?} of {}",
                    job.folder.path, shared.mailboxes[job.mailbox].address
                ));
                sync_folder(source.as_mut(), &shared, job, &batches, &commits);
            }
        }
    }
}

fn sync_folder(
    source: &mut dyn MailSource,
    shared: &Shared,
    job: FolderJob,
    batches: &Sender<Batch>,
    commits: &Sender<Commit>,
) {
    let address = shared.mailboxes[job.mailbox].address.clone();
    let job_id = job.job_id;
    let mailbox = job.mailbox;
    let folder = job.folder.clone();
    let cursor = job.cursor.clone();
    let until = job.until;
    let _ = commits.send(Commit::Started(job));
    let listed = |batches: u32, complete: bool, error| Commit::Listed {
        job_id,
        batches,
        complete,
        error,
    };

    let listing = match source.list_items(
        &address,
        &folder,
        cursor.synced_until,
        until,
        &cursor.ids_at_synced_until,
        shared.emails_per_folder,
    ) {
        Ok(listing) => listing,
        Err(err) => {
            let _ = commits.send(listed(0, false, Some(err)));
            return;
        }
    };
    shared
        .metrics
        .folder_listed(&address, &folder.id, listing.items.len(), listing.complete);
    if !listing.items.is_empty() {
        log::debug!(
            "mailbox={address} folder={:?}: {} new emails{}",
            folder.path,
            listing.items.len(),
            if listing.complete {
                ""
            } else {
                " (more to come)"
            }
        );
    }

    let mut builder = BatchBuilder::new(job_id, mailbox, shared.batch_size);
    let (fetch_count, fetch_bytes) = source.fetch_batch_limits();
    let mut complete = listing.complete;
    let mut error = None;
    for chunk in fetch_chunks(&listing.items, fetch_count, fetch_bytes) {
        if shared.stop.is_stopped() {
            complete = false;
            break;
        }
        let outcomes = match source.fetch_items(&address, chunk) {
            Ok(outcomes) if outcomes.len() == chunk.len() => outcomes,
            // An item without an outcome must not be passed by the watermark unseen.
            Ok(outcomes) => {
                complete = false;
                error = Some(crate::exchange::Error::Malformed {
                    detail: format!(
                        "{} outcomes for {} requested items",
                        outcomes.len(),
                        chunk.len()
                    ),
                });
                break;
            }
            Err(err) => {
                complete = false;
                error = Some(err);
                break;
            }
        };
        metrics::progress();
        for (item, outcome) in chunk.iter().zip(outcomes) {
            match outcome {
                ItemOutcome::Fetched(fetched) => {
                    let doc = EmailDoc::from_item(&address, &folder.path, *fetched, item.received);
                    builder.push_doc(item, doc);
                }
                ItemOutcome::Skipped {
                    item_id,
                    code,
                    message,
                } => {
                    log::warn!(
                        "mailbox={address} folder={:?} item={item_id}: not copied: {code}: {message}",
                        folder.path
                    );
                    Metrics::add(&shared.metrics.emails_skipped, 1);
                    shared.metrics.email_skipped(&address, &code);
                    builder.push_skipped(item);
                }
            }
            // A full channel means the uploaders are behind: /healthz watches them, not us.
            if builder.is_full() && metrics::waiting(|| batches.send(builder.take())).is_err() {
                return;
            }
        }
    }
    if !builder.is_empty() && metrics::waiting(|| batches.send(builder.take())).is_err() {
        return;
    }
    let _ = commits.send(listed(builder.next_seq, complete, error));
}

/// Splits a listing into GetItem requests of at most `count` items and `max_bytes` bytes of
/// reported size; an item larger than `max_bytes` goes alone.
fn fetch_chunks(items: &[ItemRef], count: usize, max_bytes: u64) -> Vec<&[ItemRef]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, item) in items.iter().enumerate() {
        let size = item.size_bytes.unwrap_or(0);
        if i > start && (i - start == count || bytes + size > max_bytes) {
            chunks.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < items.len() {
        chunks.push(&items[start..]);
    }
    chunks
}

/// Collects encoded documents into upload batches bounded in count and bytes.
struct BatchBuilder {
    job_id: u64,
    mailbox: usize,
    max_docs: usize,
    next_seq: u32,
    current: EncodedBatch,
    covers: Vec<(time::OffsetDateTime, String)>,
}

impl BatchBuilder {
    fn new(job_id: u64, mailbox: usize, max_docs: usize) -> Self {
        BatchBuilder {
            job_id,
            mailbox,
            max_docs: max_docs.max(1),
            next_seq: 0,
            current: EncodedBatch::default(),
            covers: Vec::new(),
        }
    }

    fn push_doc(&mut self, item: &ItemRef, doc: EmailDoc) {
        let json = doc.to_json();
        self.current.first_received.get_or_insert(item.received);
        self.current.ids.push(doc.id);
        self.current.docs.push(json);
        self.covers.push((item.received, item.id.clone()));
    }

    fn push_skipped(&mut self, item: &ItemRef) {
        self.covers.push((item.received, item.id.clone()));
    }

    fn is_full(&self) -> bool {
        self.current.docs.len() >= self.max_docs || self.current.bytes() >= MAX_BATCH_BYTES
    }

    fn is_empty(&self) -> bool {
        self.covers.is_empty()
    }

    fn take(&mut self) -> Batch {
        let batch = Batch {
            job_id: self.job_id,
            seq: self.next_seq,
            mailbox: self.mailbox,
            encoded: std::mem::take(&mut self.current),
            covers: std::mem::take(&mut self.covers),
        };
        self.next_seq += 1;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn item(id: &str, size: Option<u64>) -> ItemRef {
        ItemRef {
            id: id.into(),
            received: datetime!(2024-01-01 0:00 UTC),
            size_bytes: size,
        }
    }

    #[test]
    fn chunks_respect_count_and_bytes() {
        let items: Vec<_> = (0..25).map(|i| item(&i.to_string(), Some(10))).collect();
        let sizes: Vec<_> = fetch_chunks(&items, 10, 1000)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [10, 10, 5]);
        let items = vec![
            item("a", Some(5)),
            item("big", Some(500)),
            item("b", Some(5)),
            item("c", None),
        ];
        let sizes: Vec<_> = fetch_chunks(&items, 10, 100)
            .iter()
            .map(|c| c.len())
            .collect();
        assert_eq!(sizes, [1, 1, 2]);
        assert!(fetch_chunks(&[], 10, 100).is_empty());
    }
}
