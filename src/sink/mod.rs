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

/// A sink operation that failed. Context (path, bucket) travels as data.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing local storage failed (disk full, permissions). A retry may help
    /// once the operator frees space or fixes permissions.
    Io { path: String, detail: String },
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
        matches!(self, Error::Io { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, detail } => write!(f, "{path}: {detail}"),
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

/// Every sink stores email batches, per-mailbox sync state, and serves remote configuration.
pub trait Sink: Send + Sync {
    /// A short name for logs, e.g. `local:/mnt/ews`.
    fn describe(&self) -> String;

    /// Stores a batch durably; returns only when it is safe to move the watermark past it.
    /// Storing the same batch again is harmless.
    fn put_emails(&self, bucket: &Bucket, mailbox: &str, batch: &EncodedBatch)
    -> Result<(), Error>;

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
