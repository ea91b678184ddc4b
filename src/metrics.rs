//! Counters the pipeline keeps: read for the end-of-run summary and for monitoring.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Shared by every thread; counters only grow.
#[derive(Debug, Default)]
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
}
