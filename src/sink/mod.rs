//! Sinks: where email documents and sync state are stored.

pub mod azure;
pub mod local;
pub mod reinfer;

use std::fmt;

use time::OffsetDateTime;

use crate::config::Bucket;
use crate::sync::state::MailboxState;

/// A batch of email documents, already serialised as JSON (one object per entry), so that the
/// fetcher threads do the encoding work and a sink only writes bytes.
#[derive(Debug, Clone, Default)]
pub struct EncodedBatch {
    /// One JSON object per email, without a trailing newline.
    pub docs: Vec<Vec<u8>>,
    /// The documents' ids, in the same order.
    pub ids: Vec<String>,
    /// Received time of the oldest email, for file naming.
    pub first_received: Option<OffsetDateTime>,
}

impl EncodedBatch {
    pub fn bytes(&self) -> usize {
        self.docs.iter().map(Vec::len).sum()
    }
}

/// A sink operation that failed. Context (path, URL, bucket) travels as data; never a secret.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing local storage failed (disk full, permissions). A retry may help
    /// once the operator frees space or fixes permissions.
    Io { path: String, detail: String },
    /// A remote store answered with an error status or could not be reached (5xx, 429,
    /// timeouts, resets: retryable; `retry_after` is the server's demanded wait).
    Http {
        url: String,
        status: Option<u16>,
        detail: String,
        retry_after: Option<std::time::Duration>,
    },
    /// The remote store refused our credentials or permissions (401/403). Not retryable: the
    /// operator must fix the token, key or role.
    Auth { url: String, detail: String },
    /// Stored data exists but cannot be understood (a corrupt or foreign state file). A retry
    /// does not help.
    Corrupt { path: String, detail: String },
    /// What was asked for does not exist (a remote configuration). A retry does not help.
    NotFound { what: String },
    /// An argument cannot name a storage location (a path-unsafe config key). Not retryable.
    Invalid { detail: String },
}

impl Error {
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { .. } => true,
            Error::Http { status, .. } => {
                status.is_none_or(|s| s >= 500 || s == 429 || s == 409 || s == 408)
            }
            _ => false,
        }
    }

    /// Whether nothing can be stored until the operator acts.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Auth { .. })
    }

    /// The wait the store demanded before the next request, if any.
    pub fn demanded_wait(&self) -> Option<std::time::Duration> {
        match self {
            Error::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, detail } => write!(f, "{path}: {detail}"),
            Error::Http {
                url,
                status,
                detail,
                ..
            } => match status {
                Some(status) => write!(f, "{url} answered HTTP {status}: {detail}"),
                None => write!(f, "cannot reach {url}: {detail}"),
            },
            Error::Auth { url, detail } => write!(f, "{url} refused our credentials: {detail}"),
            Error::Corrupt { path, detail } => write!(f, "{path} is corrupt: {detail}"),
            Error::NotFound { what } => write!(f, "{what} does not exist"),
            Error::Invalid { detail } => f.write_str(detail),
        }
    }
}

impl std::error::Error for Error {}

impl From<crate::durable::WriteError> for Error {
    fn from(err: crate::durable::WriteError) -> Self {
        Error::Io {
            path: err.path.display().to_string(),
            detail: err.source.to_string(),
        }
    }
}

/// What storing a batch achieved, when it did not fail as a whole.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PutReport {
    /// Emails the store refused for good (a 4xx that isolates to them), with the reason; the
    /// rest of the batch is stored. The caller logs and counts them.
    pub rejected: Vec<(String, String)>,
}

/// Every sink stores email batches, per-mailbox sync state, and serves remote configuration.
/// Implementations are shared by all uploader threads.
pub trait Sink: Send + Sync {
    /// A short name for logs, e.g. `local:/mnt/ews` (no secrets).
    fn describe(&self) -> String;

    /// Makes sure `bucket` exists and is writable (creating it where the store supports it).
    /// Called once per bucket at start-up.
    fn prepare_bucket(&self, bucket: &Bucket) -> Result<(), Error> {
        let _ = bucket;
        Ok(())
    }

    /// Stores a batch durably; returns only when it is safe to move the watermark past it.
    /// Storing the same batch again is harmless.
    fn put_emails(
        &self,
        bucket: &Bucket,
        mailbox: &str,
        batch: &EncodedBatch,
    ) -> Result<PutReport, Error>;

    /// The persisted state of `mailbox` in `bucket`, if any.
    fn load_state(&self, bucket: &Bucket, mailbox: &str) -> Result<Option<MailboxState>, Error>;

    /// Persists the state of a mailbox durably, replacing the previous one.
    fn save_state(&self, bucket: &Bucket, state: &MailboxState) -> Result<(), Error>;

    /// The raw configuration stored under `owner`/`key`.
    fn read_config(&self, owner: &str, key: &str) -> Result<Vec<u8>, Error>;
}

/// A mailbox address as one path segment: lower-cased, with everything outside a safe set
/// percent-encoded, so no address can escape its directory.
pub fn mailbox_segment(address: &str) -> String {
    let mut out = String::with_capacity(address.len());
    for c in address.to_lowercase().chars() {
        match c {
            'a'..='z' | '0'..='9' | '@' | '.' | '_' | '+' | '-'
                if !(out.is_empty() && c == '.') =>
            {
                out.push(c)
            }
            c => {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{byte:02X}"));
                }
            }
        }
    }
    out
}

/// Checks that a remote-config owner or key can be a path segment.
pub fn check_config_segment(what: &str, value: &str) -> Result<(), Error> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            detail: format!(
                "{what} {value:?} is not allowed: use letters, digits, '-', '_' and '.'"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_segments_are_path_safe() {
        assert_eq!(
            mailbox_segment("Alice.Smith@Example.com"),
            "alice.smith@example.com"
        );
        assert_eq!(mailbox_segment("../x@y"), "%2E.%2Fx@y");
        assert_eq!(mailbox_segment("jé@x"), "j%C3%A9@x");
    }

    #[test]
    fn config_segments() {
        assert!(check_config_segment("owner", "my-project_1").is_ok());
        assert!(check_config_segment("owner", "..").is_err());
        assert!(check_config_segment("key", "a/b").is_err());
        assert!(check_config_segment("key", "").is_err());
    }
}
