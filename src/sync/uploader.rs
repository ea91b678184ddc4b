//! Uploader pool: each thread stores batches in the sink, retrying, and reports to the
//! committer.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::Shared;
use super::messages::{Batch, Commit};
use crate::exchange::throttle::retry_delay;
use crate::metrics::{self, Metrics};

/// Attempts per batch before the batch is reported as not stored (its folder then retries
/// from the unchanged watermark on the next cycle).
const MAX_ATTEMPTS: u32 = 5;
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(30);

/// Runs one uploader thread until the batch channel closes.
pub fn run(shared: Arc<Shared>, batches: Receiver<Batch>, commits: Sender<Commit>) {
    for batch in batches {
        let stored = store(&shared, &batch);
        let _ = commits.send(Commit::Acked {
            job_id: batch.job_id,
            seq: batch.seq,
            covers: batch.covers,
            stored,
        });
    }
}

fn store(shared: &Shared, batch: &Batch) -> bool {
    if batch.encoded.docs.is_empty() {
        return true;
    }
    let mailbox = &shared.mailboxes[batch.mailbox];
    let _work = metrics::working(format!(
        "storing a batch of {} emails of {}",
        batch.encoded.docs.len(),
        mailbox.address
    ));
    let mut attempt = 0;
    loop {
        let result = shared
            .sink
            .put_emails(&mailbox.bucket, &mailbox.address, &batch.encoded);
        metrics::progress();
        match result {
            Ok(report) => {
                let metrics = &shared.metrics;
                for (id, reason) in &report.rejected {
                    log::error!(
                        "mailbox={} email id={id}: refused by the sink for good: {reason}",
                        mailbox.address
                    );
                }
                let rejected = report.rejected.len() as u64;
                Metrics::add(&metrics.emails_rejected, rejected);
                Metrics::add(
                    &metrics.emails_synced,
                    batch.encoded.docs.len() as u64 - rejected,
                );
                Metrics::add(&metrics.bytes_synced, batch.encoded.bytes() as u64);
                Metrics::add(&metrics.batches_uploaded, 1);
                metrics.batch_stored(
                    &mailbox.address,
                    batch.encoded.docs.len() as u64 - rejected,
                    rejected,
                    batch.encoded.bytes() as u64,
                );
                return true;
            }
            Err(err) => {
                Metrics::add(&shared.metrics.upload_failures, 1);
                shared
                    .metrics
                    .record_error("upload", &metrics::sink_error_kind(&err));
                attempt += 1;
                // During shutdown one attempt more is all the deadline allows for.
                if err.is_fatal() {
                    log::error!("mailbox={}: {err}; stopping", mailbox.address);
                    // The run must end as failed (exit 1, or an in-process restart), not as a
                    // clean stop.
                    shared
                        .metrics
                        .run_failed(&format!("mailbox={}: {err}", mailbox.address));
                    shared.stop.stop();
                    return false;
                }
                if !err.is_retryable() || attempt >= MAX_ATTEMPTS {
                    log::error!(
                        "mailbox={} batch of {} emails (first id {}): not stored after {attempt} attempts: {err}",
                        mailbox.address,
                        batch.encoded.docs.len(),
                        batch.encoded.ids.first().map(String::as_str).unwrap_or("-"),
                    );
                    return false;
                }
                let wait = err
                    .demanded_wait()
                    .unwrap_or_else(|| retry_delay(attempt - 1, RETRY_BASE, RETRY_CAP));
                shared.metrics.record_retry("sink");
                if let Some(demanded) = err.demanded_wait() {
                    shared
                        .metrics
                        .record_throttle_wait("sink_retry_after", demanded);
                }
                log::warn!(
                    "mailbox={}: storing a batch failed: {err}; retry {attempt}/{} in {} ms",
                    mailbox.address,
                    MAX_ATTEMPTS - 1,
                    wait.as_millis()
                );
                // Sleep even when stopping: the shutdown deadline bounds the whole drain.
                std::thread::sleep(wait);
            }
        }
    }
}
