//! The messages that cross the pipeline's channels.

use std::sync::Arc;

use time::OffsetDateTime;

use super::state::Cursor;
use crate::exchange::{self, FolderInfo};
use crate::sink::EncodedBatch;

/// Work for a fetcher thread.
#[derive(Debug, Clone)]
pub enum Job {
    /// List a mailbox's mail folders.
    Discover { mailbox: usize },
    /// Copy a folder's new emails.
    SyncFolder(FolderJob),
}

/// One pass over one folder: list since the cursor, fetch, hand batches on.
#[derive(Debug, Clone)]
pub struct FolderJob {
    pub job_id: u64,
    /// Index into the pipeline's mailbox list.
    pub mailbox: usize,
    pub folder: FolderInfo,
    pub cursor: Cursor,
    /// With `--once`: only emails received at or before this instant.
    pub until: Option<OffsetDateTime>,
}

/// Emails ready for the sink, and the listing entries they account for.
#[derive(Debug)]
pub struct Batch {
    pub job_id: u64,
    /// Position within the job, from 0.
    pub seq: u32,
    pub mailbox: usize,
    pub encoded: EncodedBatch,
    /// Every listed item this batch accounts for, oldest first, including items the server
    /// could not serve (logged and skipped), so the watermark can pass them.
    pub covers: Vec<(OffsetDateTime, String)>,
}

/// What the state committer hears.
#[derive(Debug)]
pub enum Commit {
    /// A fetcher starts a folder job; sent before any of its batches.
    Started(FolderJob),
    /// An uploader finished a batch.
    Acked {
        job_id: u64,
        seq: u32,
        covers: Vec<(OffsetDateTime, String)>,
        stored: bool,
    },
    /// The fetcher handed on all batches of a job.
    Listed {
        job_id: u64,
        batches: u32,
        /// Nothing more to list (up to the `--once` cut-off).
        complete: bool,
        error: Option<exchange::Error>,
    },
}

/// What the scheduler hears.
#[derive(Debug)]
pub enum Event {
    Discovered {
        mailbox: usize,
        result: Result<Vec<FolderInfo>, exchange::Error>,
    },
    FolderDone {
        mailbox: usize,
        folder_id: Arc<str>,
        complete: bool,
        /// Why the job did not finish, if it did not.
        error: Option<String>,
        fatal: bool,
    },
}
