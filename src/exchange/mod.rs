//! Exchange sources: what the sync pipeline needs from a mail server, whatever the protocol.

pub mod error;
pub mod ews;
pub mod graph;
pub mod ntlm;
pub mod soap;
pub mod throttle;
pub mod tls;
pub mod transport;

use std::collections::HashSet;
use std::sync::Arc;

use time::OffsetDateTime;

pub use error::Error;

/// A mail folder to sync, with its display-name path from the mailbox root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    /// The server's folder id; stable across renames. Shared (not copied) by the jobs and
    /// scheduler sets that name the folder.
    pub id: Arc<str>,
    /// Display names from the mailbox root, e.g. `["Inbox", "Projects", "2024"]`.
    pub path: Arc<[String]>,
    /// When an item in the folder last changed, as the server reports it (EWS:
    /// PR_LOCAL_COMMIT_TIME_MAX, to the second); `None` when the server does not say. Lets
    /// the scheduler skip listing a folder that has not changed since a complete listing.
    pub changed_at: Option<OffsetDateTime>,
    /// The server's own clock was well past `changed_at` when it reported it, so no change
    /// stamped with that time can come after this discovery: a listing that starts now
    /// covers it (see [`crate::sync::state::ChangeMark`]).
    pub changed_at_settled: bool,
}

/// An item found by a listing, before its content is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRef {
    pub id: String,
    pub received: OffsetDateTime,
    /// The store size the server reports, used to keep fetch batches small in bytes.
    pub size_bytes: Option<u64>,
}

/// The result of listing a folder since a watermark.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Oldest first.
    pub items: Vec<ItemRef>,
    /// True when no further matching item exists beyond `items`.
    pub complete: bool,
}

/// Attachment metadata (never the content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentInfo {
    pub name: String,
    pub size_bytes: Option<u64>,
    pub content_type: Option<String>,
    pub inline: bool,
}

/// One email as the server served it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchedItem {
    pub item_id: String,
    /// The MIME message exactly as the server gave it.
    pub mime: Vec<u8>,
    pub received: Option<OffsetDateTime>,
    pub sent: Option<OffsetDateTime>,
    pub internet_message_id: Option<String>,
    pub conversation_id: Option<String>,
    pub conversation_topic: Option<String>,
    pub has_attachments: Option<bool>,
    pub is_read: Option<bool>,
    pub importance: Option<String>,
    pub sensitivity: Option<String>,
    pub categories: Vec<String>,
    pub size_bytes: Option<u64>,
    pub attachments: Vec<AttachmentInfo>,
}

/// What happened to one requested item.
#[derive(Debug, Clone)]
pub enum ItemOutcome {
    Fetched(Box<FetchedItem>),
    /// The server says this item cannot be served (deleted meanwhile, corrupt); retrying the
    /// request will not help. Logged and counted by the caller.
    Skipped {
        item_id: String,
        code: String,
        message: String,
    },
}

/// One protocol client for one worker thread. Implementations own their HTTP agent (NTLM binds
/// authentication to a connection) and retry transient failures themselves.
pub trait MailSource: Send {
    /// All mail folders of a mailbox that are to be synced (no calendars, contacts, tasks,
    /// hidden or search folders).
    fn discover_folders(&mut self, mailbox: &str) -> Result<Vec<FolderInfo>, Error>;

    /// Items of `folder` received at or after `since` (and at or before `until`, if given),
    /// oldest first, leaving out `skip_ids`, at most `limit` of them.
    fn list_items(
        &mut self,
        mailbox: &str,
        folder: &FolderInfo,
        since: OffsetDateTime,
        until: Option<OffsetDateTime>,
        skip_ids: &HashSet<String>,
        limit: usize,
    ) -> Result<Listing, Error>;

    /// Fetches MIME and metadata of `items`; one outcome per item, in order.
    fn fetch_items(&mut self, mailbox: &str, items: &[ItemRef]) -> Result<Vec<ItemOutcome>, Error>;

    /// How many items one `fetch_items` call should carry, and at most how many bytes.
    fn fetch_batch_limits(&self) -> (usize, u64);
}
