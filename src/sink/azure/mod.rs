//! The Azure Blob Storage sink: the local sink's files, byte for byte and under the same
//! relative names, as block blobs in one container (`data/`, `state/`, `config/`).

mod client;
mod shared_key;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use super::local::{config_name, data_name, encode_batch, encode_state, state_name};
use super::{EncodedBatch, Error, PutReport, Sink};
use crate::auth::azure::AzureCredentials;
use crate::config::Bucket;
use crate::sync::state::{FolderState, MailboxState};
use client::{Auth, BlobClient, Condition};

pub use client::API_VERSION;

/// How often one state write may lose the race against another writer before we give up.
const MAX_STATE_CONFLICTS: u32 = 5;
/// Azure's limit on a blob name.
const MAX_BLOB_NAME_BYTES: usize = 1024;

/// Where the sink writes: `az://ACCOUNT/CONTAINER[/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzurePrefix {
    pub account: String,
    pub container: String,
    /// Blob-name prefix without leading or trailing `/`; empty for the container's root.
    pub path: String,
}

impl AzurePrefix {
    /// Parses `az://ACCOUNT/CONTAINER[/PATH]`; the error says what is wrong and what is
    /// allowed.
    pub fn parse(value: &str) -> Result<AzurePrefix, String> {
        let usage = "expected az://ACCOUNT/CONTAINER or az://ACCOUNT/CONTAINER/PATH";
        let rest = value
            .strip_prefix("az://")
            .ok_or_else(|| format!("{value:?}: {usage}"))?;
        let mut parts = rest.splitn(3, '/');
        let account = parts.next().unwrap_or_default();
        let container = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default().trim_end_matches('/');
        if account.is_empty() || container.is_empty() {
            return Err(format!("{value:?}: {usage}"));
        }
        let account_ok = (3..=24).contains(&account.len())
            && account
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !account_ok {
            return Err(format!(
                "{value:?}: storage account name {account:?} is not valid: use 3 to 24 lower-case \
                 letters and digits"
            ));
        }
        let container_ok = (3..=63).contains(&container.len())
            && container
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !container.starts_with('-')
            && !container.ends_with('-')
            && !container.contains("--");
        if !container_ok {
            return Err(format!(
                "{value:?}: container name {container:?} is not valid: use 3 to 63 lower-case \
                 letters, digits and single hyphens, starting and ending with a letter or digit"
            ));
        }
        let path_ok = path.is_empty()
            || path.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && !segment.contains(['\\', '?', '#'])
                    && !segment.chars().any(char::is_control)
            });
        if !path_ok || path.len() > MAX_BLOB_NAME_BYTES / 2 {
            return Err(format!(
                "{value:?}: PATH {path:?} is not valid: use non-empty segments separated by '/', \
                 without '.', '..', '\\', '?' or '#'"
            ));
        }
        Ok(AzurePrefix {
            account: account.to_owned(),
            container: container.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The blob name of a file the local sink would store at `relative` under its directory.
    pub fn blob_name(&self, relative: &str) -> String {
        if self.path.is_empty() {
            relative.to_owned()
        } else {
            format!("{}/{relative}", self.path)
        }
    }
}

impl fmt::Display for AzurePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "az://{}/{}", self.account, self.container)?;
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
    }
}

/// What we last saw stored in a state blob: what a conditional write must match.
#[derive(Debug, Clone)]
struct Stored {
    /// None: no blob.
    etag: Option<String>,
    state: Option<MailboxState>,
}

/// Stores batches, state and remote configuration in one Azure Blob Storage container.
///
/// Data blobs are written unconditionally: a name derives from the batch's ids, so a second
/// write of it is the same batch. State blobs are written with `If-Match` on the ETag we last
/// saw (`If-None-Match: *` when there was none), so a second writer of the same state blob is
/// detected instead of silently overwritten (see [`AzureSink::save_state`]).
pub struct AzureSink {
    prefix: AzurePrefix,
    client: BlobClient,
    /// By blob name.
    stored: Mutex<HashMap<String, Stored>>,
}

impl AzureSink {
    /// A sink for `prefix`; no request is sent yet.
    pub fn new(prefix: &AzurePrefix, credentials: AzureCredentials) -> Result<AzureSink, Error> {
        let (auth, endpoint) = match credentials {
            AzureCredentials::SharedKey {
                account,
                key,
                blob_endpoint,
            } => {
                if account != prefix.account {
                    return Err(Error::Invalid {
                        detail: format!(
                            "the connection string is for storage account {account}, but \
                             --private-file-prefix names {}",
                            prefix.account
                        ),
                    });
                }
                (Auth::SharedKey(key), blob_endpoint)
            }
            AzureCredentials::Bearer {
                provider,
                blob_endpoint,
            } => (Auth::Bearer(provider), blob_endpoint),
        };
        let endpoint =
            endpoint.unwrap_or_else(|| format!("https://{}.blob.core.windows.net", prefix.account));
        let client = BlobClient::new(&prefix.account, &prefix.container, &endpoint, auth)?;
        Ok(AzureSink {
            prefix: prefix.clone(),
            client,
            stored: Mutex::new(HashMap::new()),
        })
    }

    /// Checks that the container exists and our credentials may use it; a clear error
    /// otherwise (`Error::Auth` for refused credentials, `Error::NotFound` for no container).
    pub fn check_access(&self) -> Result<(), Error> {
        self.client.check_container()
    }

    /// Creates the container if it does not exist. The sink never does this by itself: it
    /// needs more rights than writing blobs, and a typo in the name should fail, not create a
    /// second container. For tests and set-up tools.
    pub fn create_container(&self) -> Result<(), Error> {
        self.client.create_container()
    }

    /// The names, relative to the prefix, of the blobs under `relative` (e.g. `data/`). For
    /// tests and tools.
    pub fn list(&self, relative: &str) -> Result<Vec<String>, Error> {
        let full = self.prefix.blob_name(relative);
        let strip = self.prefix.blob_name("");
        Ok(self
            .client
            .list_blobs(&full)?
            .into_iter()
            .map(|name| name.strip_prefix(&strip).unwrap_or(&name).to_owned())
            .collect())
    }

    /// The content of the blob at `relative` under the prefix, if it exists. For tests and
    /// tools.
    pub fn read(&self, relative: &str) -> Result<Option<Vec<u8>>, Error> {
        let blob = self.blob(relative)?;
        let reply = self.client.get_blob(&blob)?;
        match (reply.status, reply.error_code.as_deref()) {
            (200, _) => Ok(Some(reply.body)),
            (404, Some("BlobNotFound")) => Ok(None),
            _ => Err(self.client.unexpected(Some(&blob), &reply)),
        }
    }

    /// Stores `bytes` at `relative` under the prefix (e.g. a remote configuration). For tests
    /// and tools.
    pub fn write(&self, relative: &str, bytes: &[u8]) -> Result<(), Error> {
        let blob = self.blob(relative)?;
        self.client
            .put_blob(&blob, bytes, "application/octet-stream", Condition::Always)?;
        Ok(())
    }

    fn blob(&self, relative: &str) -> Result<String, Error> {
        let name = self.prefix.blob_name(relative);
        if name.len() > MAX_BLOB_NAME_BYTES {
            return Err(Error::Invalid {
                detail: format!(
                    "blob name too long for Azure ({} bytes): {name}",
                    name.len()
                ),
            });
        }
        Ok(name)
    }

    fn location(&self, blob: &str) -> String {
        format!(
            "az://{}/{}/{blob}",
            self.prefix.account, self.prefix.container
        )
    }

    /// Reads a state blob and its ETag.
    fn fetch_state(&self, blob: &str) -> Result<Stored, Error> {
        let reply = self.client.get_blob(blob)?;
        if reply.status == 404 {
            if reply.error_code.as_deref() == Some("BlobNotFound") {
                return Ok(Stored {
                    etag: None,
                    state: None,
                });
            }
            return Err(self.client.unexpected(Some(blob), &reply));
        }
        let state = serde_json::from_slice(&reply.body).map_err(|err| Error::Corrupt {
            path: self.location(blob),
            detail: err.to_string(),
        })?;
        let etag = reply.etag.ok_or_else(|| Error::Http {
            url: self.client.url(Some(blob)),
            status: Some(reply.status),
            detail: "the reply has no ETag".into(),
            retry_after: None,
        })?;
        Ok(Stored {
            etag: Some(etag),
            state: Some(state),
        })
    }

    fn remember(&self, blob: &str, stored: Stored) {
        self.stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(blob.to_owned(), stored);
    }

    fn remembered(&self, blob: &str) -> Option<Stored> {
        self.stored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(blob)
            .cloned()
    }
}

impl Sink for AzureSink {
    fn describe(&self) -> String {
        format!("azure:{} at {}", self.prefix, self.client.endpoint())
    }

    /// Every bucket lives in the one container: checks that it exists and is ours to use.
    fn prepare_bucket(&self, _bucket: &Bucket) -> Result<(), Error> {
        self.check_access()
    }

    fn put_emails(
        &self,
        bucket: &Bucket,
        mailbox: &str,
        batch: &EncodedBatch,
    ) -> Result<PutReport, Error> {
        if batch.docs.is_empty() {
            return Ok(PutReport::default());
        }
        let blob = self.blob(&data_name(bucket, mailbox, batch))?;
        // One Put Blob stores the whole batch or nothing (batches are far below its 5000 MiB
        // limit), so no reader ever sees a partial file under the final name.
        self.client.put_blob(
            &blob,
            &encode_batch(batch),
            "application/x-ndjson",
            Condition::Always,
        )?;
        Ok(PutReport::default())
    }

    fn load_state(&self, bucket: &Bucket, mailbox: &str) -> Result<Option<MailboxState>, Error> {
        let blob = self.blob(&state_name(bucket, mailbox))?;
        let stored = self.fetch_state(&blob)?;
        let state = stored.state.clone();
        self.remember(&blob, stored);
        Ok(state)
    }

    /// Writes the state under the ETag we last saw. If another writer changed the blob since
    /// (HTTP 412), we warn, read its version and merge: per folder the newer watermark wins,
    /// so neither writer's progress is lost and no watermark moves back. Every watermark in
    /// either version is true, because both writers store into the same data blobs. The
    /// merged result also becomes the base of our next write.
    fn save_state(&self, bucket: &Bucket, state: &MailboxState) -> Result<(), Error> {
        let blob = self.blob(&state_name(bucket, &state.mailbox))?;
        let mut stored = match self.remembered(&blob) {
            Some(stored) => stored,
            // Not loaded (start_from: config): learn what is there first.
            None => self.fetch_state(&blob)?,
        };
        for _ in 0..MAX_STATE_CONFLICTS {
            let merged = merge_states(state, stored.state.as_ref());
            let body = encode_state(&merged)?;
            let condition = match &stored.etag {
                Some(etag) => Condition::IfMatch(etag),
                None => Condition::IfAbsent,
            };
            let reply = self
                .client
                .put_blob(&blob, &body, "application/json", condition)?;
            if reply.is_success() {
                let etag = reply.etag.clone();
                if etag.is_none() {
                    // Without an ETag the next write cannot be conditional: read it back then.
                    self.stored
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&blob);
                } else {
                    self.remember(
                        &blob,
                        Stored {
                            etag,
                            state: Some(merged),
                        },
                    );
                }
                return Ok(());
            }
            let theirs = self.fetch_state(&blob)?;
            // A retried write of ours that did arrive looks like a conflict with itself.
            if theirs.state.as_ref() != Some(&merged) {
                log::warn!(
                    "mailbox={}: state blob {} was changed by another writer since we read it \
                     (is another exchange-sync instance syncing this mailbox?); merging, the \
                     newer watermark of each folder wins",
                    state.mailbox,
                    self.location(&blob)
                );
            }
            stored = theirs;
        }
        Err(Error::Http {
            url: self.client.url(Some(&blob)),
            status: Some(412),
            detail: format!(
                "another writer changed the state blob {MAX_STATE_CONFLICTS} times while we \
                 were saving it; is another exchange-sync instance syncing mailbox {}?",
                state.mailbox
            ),
            retry_after: None,
        })
    }

    fn read_config(&self, owner: &str, key: &str) -> Result<Vec<u8>, Error> {
        let blob = self.blob(&config_name(owner, key)?)?;
        let reply = self.client.get_blob(&blob)?;
        match (reply.status, reply.error_code.as_deref()) {
            (200, _) => Ok(reply.body),
            (404, Some("BlobNotFound")) => Err(Error::NotFound {
                what: format!("remote configuration {}", self.location(&blob)),
            }),
            _ => Err(self.client.unexpected(Some(&blob), &reply)),
        }
    }
}

/// `ours`, with each folder where `stored` is further along taken from `stored`, and folders
/// only `stored` knows kept. At an equal watermark the ids stored at it are united.
fn merge_states(ours: &MailboxState, stored: Option<&MailboxState>) -> MailboxState {
    let mut merged = ours.clone();
    let Some(stored) = stored else {
        return merged;
    };
    for (id, theirs) in &stored.folders {
        match merged.folders.get_mut(id) {
            None => {
                merged.folders.insert(id.clone(), theirs.clone());
            }
            Some(mine) => merge_folder(mine, theirs),
        }
    }
    merged
}

fn merge_folder(mine: &mut FolderState, theirs: &FolderState) {
    if theirs.synced_until > mine.synced_until {
        *mine = theirs.clone();
    } else if theirs.synced_until == mine.synced_until {
        let mut ids = mine.ids_at_synced_until.clone();
        ids.extend(theirs.ids_at_synced_until.iter().cloned());
        ids.sort();
        ids.dedup();
        mine.ids_at_synced_until = ids;
    }
}

#[cfg(test)]
mod tests;
