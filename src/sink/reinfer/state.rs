//! Sync state as keyed sync states in the bucket: one key per (mailbox, folder).
//!
//! The documented fields (`mailbox_name`, `folder_id`, `folder_path`, `status`, `synced_until`,
//! `last_synced_at`) carry what the service and the reinfer CLI understand. What only we need
//! (the ids at the watermark, our own status and error, who wrote the state and when) travels
//! as JSON inside `fingerprint`, the one free-form string of the schema: an unknown field might
//! be refused (400) or silently dropped by the server, and either would break resumption.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::client::{Call, Method, Reply};
use super::{ReinferSink, paths};
use crate::config::Bucket;
use crate::sink::Error;
use crate::sync::state::{FolderState, MailboxState, STATE_VERSION};

/// How long one listing of a bucket's states serves `load_state` of its other mailboxes (all
/// are loaded one after another at start-up).
const LISTING_TTL: Duration = Duration::from_secs(60);
/// How often, per key, a save first reads the stored state to notice another writer.
const VERIFY_INTERVAL: Duration = Duration::from_secs(300);
/// Marks a fingerprint as ours, with the version of its format.
const FINGERPRINT_FORMAT: u32 = 1;

/// The key of a folder's state: hex (the API's ids are "hex encoded"), 32 digits of
/// SHA-256 over the lower-cased mailbox and the folder id, so any address or id is safe in a
/// path and the same folder always maps to the same key.
pub fn state_key(mailbox: &str, folder_id: &str) -> String {
    let mut input = mailbox.to_lowercase().into_bytes();
    input.push(0);
    input.extend_from_slice(folder_id.as_bytes());
    crate::digest::sha256_hex(&input, 16)
}

/// `KeyedSyncState` as the API stores and returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyedSyncState {
    pub mailbox_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_path: Option<Vec<String>>,
    /// `IN_PROGRESS` or `UP_TO_DATE`.
    pub status: String,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub synced_until: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_synced_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// What we keep in `fingerprint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ours {
    /// [`FINGERPRINT_FORMAT`]; its presence marks the state as written by exchange-sync.
    pub exchange_sync: u32,
    pub writer: String,
    #[serde(with = "time::serde::rfc3339")]
    pub written_at: OffsetDateTime,
    /// Our `FolderState::status` (`ok`/`error`), which the API's enum cannot hold.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default)]
    pub ids_at_synced_until: Vec<String>,
}

impl KeyedSyncState {
    fn from_folder(
        mailbox: &str,
        folder_id: &str,
        folder: &FolderState,
        writer: &str,
        now: OffsetDateTime,
    ) -> KeyedSyncState {
        let ours = Ours {
            exchange_sync: FINGERPRINT_FORMAT,
            writer: writer.to_owned(),
            written_at: now,
            status: folder.status.clone(),
            last_error: folder.last_error.clone(),
            ids_at_synced_until: folder.ids_at_synced_until.clone(),
        };
        KeyedSyncState {
            mailbox_name: mailbox.to_owned(),
            folder_id: Some(folder_id.to_owned()),
            folder_path: Some(folder.path.clone()),
            // A folder whose last cycle failed has not been brought up to date.
            status: if folder.status == "error" {
                "IN_PROGRESS"
            } else {
                "UP_TO_DATE"
            }
            .to_owned(),
            synced_until: Some(folder.synced_until.to_offset(time::UtcOffset::UTC)),
            last_synced_at: folder
                .last_synced_at
                .map(|t| t.to_offset(time::UtcOffset::UTC)),
            fingerprint: serde_json::to_string(&ours).ok(),
        }
    }

    pub fn ours(&self) -> Option<Ours> {
        let ours: Ours = serde_json::from_str(self.fingerprint.as_deref()?).ok()?;
        (ours.exchange_sync >= 1).then_some(ours)
    }

    /// The folder this state describes, if it is a folder row with a watermark. States that
    /// another program wrote (no fingerprint of ours) still give their watermark.
    fn folder(&self) -> Option<(String, FolderState)> {
        let folder_id = self.folder_id.clone()?;
        let synced_until = self.synced_until?;
        let ours = self.ours();
        let folder = FolderState {
            path: self.folder_path.clone().unwrap_or_default(),
            synced_until,
            ids_at_synced_until: ours
                .as_ref()
                .map(|o| o.ids_at_synced_until.clone())
                .unwrap_or_default(),
            last_synced_at: self.last_synced_at,
            status: ours
                .as_ref()
                .map(|o| o.status.clone())
                .unwrap_or_else(|| "ok".to_owned()),
            last_error: ours.and_then(|o| o.last_error),
        };
        Some((folder_id, folder))
    }
}

/// The warning to log when a stored state was last written by another process after this one
/// started: two live replicas are writing the same mailbox. A state written before we started
/// is normal (our previous run had another pid and start time).
pub fn foreign_writer_warning(
    key: &str,
    stored: &KeyedSyncState,
    me: &str,
    my_start: OffsetDateTime,
) -> Option<String> {
    let ours = stored.ours()?;
    if ours.writer == me || ours.written_at <= my_start {
        return None;
    }
    Some(format!(
        "keyed sync state {key} (mailbox {}, folder {:?}) was written at {} by {}, after this \
         process ({me}) started: two replicas are syncing the same mailbox; check \
         --shard-name and --total-shards of every replica",
        stored.mailbox_name,
        stored.folder_path.as_deref().unwrap_or_default(),
        ours.written_at,
        ours.writer
    ))
}

/// What we last wrote (or found) under a key.
pub struct Written {
    pub folder: FolderState,
    pub mailbox: String,
    pub verified_at: Instant,
}

/// One listing of a bucket's keyed sync states.
pub struct Listing {
    pub at: Instant,
    pub states: Vec<KeyedSyncState>,
}

impl ReinferSink {
    /// All keyed sync states of a bucket, from a recent listing when there is one.
    fn list_states(&self, bucket_id: &str) -> Result<Vec<KeyedSyncState>, Error> {
        if let Some(listing) = self.lock_listings().get(bucket_id)
            && listing.at.elapsed() < LISTING_TTL
        {
            return Ok(listing.states.clone());
        }
        let url = self.url(&paths::bucket_id(bucket_id, &["keyed-sync-states", ""]));
        let reply = self.client.send(&Call {
            method: Method::Get,
            url: &url,
            body: None,
            what: "listing keyed sync states",
            accept: "application/json",
            retry_conflict: true,
        })?;
        let value = self
            .client
            .expect_ok(&url, &reply, "read the bucket's sync states")?;
        if value.get("continuation").is_some_and(|c| !c.is_null()) {
            log::warn!(
                "{url}: the keyed sync state list is paged, which no public source describes; \
                 only its first page was read, so some folders may resync from their start"
            );
        }
        let states: Vec<KeyedSyncState> = value
            .get("keyed_sync_states")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|err| Error::Corrupt {
                path: url.clone(),
                detail: format!("keyed_sync_states: {err}"),
            })?
            .ok_or_else(|| Error::Corrupt {
                path: url.clone(),
                detail: "the reply has no keyed_sync_states".to_owned(),
            })?;
        self.lock_listings().insert(
            bucket_id.to_owned(),
            Listing {
                at: Instant::now(),
                states: states.clone(),
            },
        );
        Ok(states)
    }

    pub(super) fn load(
        &self,
        bucket: &Bucket,
        mailbox: &str,
    ) -> Result<Option<MailboxState>, Error> {
        let Some(bucket_id) = self.bucket_id(bucket, false)? else {
            return Ok(None);
        };
        let mut found: std::collections::BTreeMap<String, (bool, FolderState)> = Default::default();
        for state in self.list_states(&bucket_id)? {
            if !state.mailbox_name.eq_ignore_ascii_case(mailbox) {
                continue;
            }
            let Some((folder_id, folder)) = state.folder() else {
                continue;
            };
            let key = state_key(mailbox, &folder_id);
            if let Some(warning) =
                foreign_writer_warning(&key, &state, &self.writer, self.started_at)
            {
                log::warn!("{warning}");
            }
            let ours = state.ours().is_some();
            // Two states for one folder (ours and another program's): ours wins, then the
            // one further ahead.
            let better = match found.get(&folder_id) {
                None => true,
                Some((was_ours, was)) => {
                    (ours, folder.synced_until) > (*was_ours, was.synced_until)
                }
            };
            if better {
                found.insert(folder_id, (ours, folder));
            }
        }
        if found.is_empty() {
            return Ok(None);
        }
        let mut written = self.lock_written();
        let mut folders = std::collections::BTreeMap::new();
        for (folder_id, (ours, folder)) in found {
            // What is stored needs no rewrite until it changes.
            if ours {
                written.insert(
                    (bucket_id.clone(), state_key(mailbox, &folder_id)),
                    Written {
                        folder: folder.clone(),
                        mailbox: mailbox.to_owned(),
                        verified_at: Instant::now(),
                    },
                );
            }
            folders.insert(folder_id, folder);
        }
        Ok(Some(MailboxState {
            version: STATE_VERSION,
            mailbox: mailbox.to_owned(),
            folders,
        }))
    }

    pub(super) fn save(&self, bucket: &Bucket, state: &MailboxState) -> Result<(), Error> {
        let bucket_id = self
            .bucket_id(bucket, false)?
            .ok_or_else(|| Error::NotFound {
                what: format!("bucket {}/{}", bucket.owner, bucket.name),
            })?;
        // A listing taken before this save no longer tells the truth.
        self.lock_listings().remove(&bucket_id);
        for (folder_id, folder) in &state.folders {
            let key = state_key(&state.mailbox, folder_id);
            let cache_key = (bucket_id.clone(), key.clone());
            let verify = {
                let written = self.lock_written();
                match written.get(&cache_key) {
                    Some(w) if w.folder == *folder && w.mailbox == state.mailbox => continue,
                    Some(w) => w.verified_at.elapsed() >= VERIFY_INTERVAL,
                    None => true,
                }
            };
            if verify {
                self.verify_writer(&bucket_id, &key);
            }
            let keyed = KeyedSyncState::from_folder(
                &state.mailbox,
                folder_id,
                folder,
                &self.writer,
                OffsetDateTime::now_utc(),
            );
            self.put_state(bucket, &bucket_id, &key, &keyed)?;
            let mut written = self.lock_written();
            let verified_at = match written.get(&cache_key) {
                Some(w) if !verify => w.verified_at,
                _ => Instant::now(),
            };
            written.insert(
                cache_key,
                Written {
                    folder: folder.clone(),
                    mailbox: state.mailbox.clone(),
                    verified_at,
                },
            );
        }
        Ok(())
    }

    fn put_state(
        &self,
        bucket: &Bucket,
        bucket_id: &str,
        key: &str,
        state: &KeyedSyncState,
    ) -> Result<(), Error> {
        let url = self.url(&paths::bucket_id(bucket_id, &["keyed-sync-state", key]));
        let body = serde_json::to_vec(&serde_json::json!({ "keyed_sync_state": state })).map_err(
            |err| Error::Invalid {
                detail: format!("cannot encode a sync state: {err}"),
            },
        )?;
        let what = format!(
            "saving the sync state of {} folder {:?}",
            state.mailbox_name,
            state.folder_path.as_deref().unwrap_or_default()
        );
        let reply = self.client.send(&Call {
            method: Method::Put,
            url: &url,
            body: Some(&body),
            what: &what,
            accept: "application/json",
            retry_conflict: true,
        })?;
        let action = format!(
            "write sync states in bucket {}/{}",
            bucket.owner, bucket.name
        );
        self.client.expect_ok(&url, &reply, &action).map(drop)
    }

    /// Reads the stored state under `key` and warns if another live process wrote it. Best
    /// effort: a failure here only costs the check, never the save.
    fn verify_writer(&self, bucket_id: &str, key: &str) {
        let url = self.url(&paths::bucket_id(bucket_id, &["keyed-sync-state", key]));
        let reply = match self.client.send(&Call {
            method: Method::Get,
            url: &url,
            body: None,
            what: "checking who last wrote a sync state",
            accept: "application/json",
            retry_conflict: true,
        }) {
            Ok(reply) => reply,
            Err(err) => {
                log::debug!("{err}; skipping the writer check");
                return;
            }
        };
        if let Some(stored) = self.parse_state(&url, &reply)
            && let Some(warning) =
                foreign_writer_warning(key, &stored, &self.writer, self.started_at)
        {
            log::warn!("{warning}");
        }
    }

    fn parse_state(&self, url: &str, reply: &Reply) -> Option<KeyedSyncState> {
        if reply.status == 404 {
            return None;
        }
        let value = match self.client.expect_ok(url, reply, "read sync states") {
            Ok(value) => value,
            Err(err) => {
                log::debug!("{err}; skipping the writer check");
                return None;
            }
        };
        serde_json::from_value(value.get("keyed_sync_state")?.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn folder() -> FolderState {
        FolderState {
            path: vec!["Inbox".into(), "Sub".into()],
            synced_until: datetime!(2024-03-01 10:00:05 +01:00),
            ids_at_synced_until: vec!["<a@x>".into(), "<b@x>".into()],
            last_synced_at: Some(datetime!(2024-03-02 08:00:00 UTC)),
            status: "error".into(),
            last_error: Some("timed out".into()),
        }
    }

    #[test]
    fn keys_are_stable_hex_and_case_blind_on_the_mailbox() {
        let key = state_key("Alice@Example.com", "AAMkAD/+=");
        assert_eq!(key.len(), 32);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(key, state_key("alice@example.com", "AAMkAD/+="));
        assert_ne!(key, state_key("alice@example.com", "AAMkAD/+-"));
        assert_ne!(state_key("a@b", "c"), state_key("a@bc", ""));
    }

    #[test]
    fn folder_state_round_trips_through_the_wire_shape() {
        let now = datetime!(2024-03-02 09:00:00 UTC);
        let keyed = KeyedSyncState::from_folder("a@b.c", "F1", &folder(), "me", now);
        let json = serde_json::to_value(&keyed).unwrap();
        assert_eq!(json["status"], "IN_PROGRESS");
        assert_eq!(json["synced_until"], "2024-03-01T09:00:05Z");
        assert_eq!(json["folder_path"], serde_json::json!(["Inbox", "Sub"]));
        let back: KeyedSyncState = serde_json::from_value(json).unwrap();
        assert_eq!(back.folder(), Some(("F1".to_owned(), folder())));
        assert_eq!(back.ours().unwrap().writer, "me");
    }

    #[test]
    fn a_state_another_program_wrote_still_gives_its_watermark() {
        let keyed: KeyedSyncState = serde_json::from_value(serde_json::json!({
            "mailbox_name": "a@b.c", "folder_id": "F1", "folder_path": ["Inbox"],
            "status": "UP_TO_DATE", "synced_until": "2024-01-01T00:00:00Z",
            "last_synced_at": "2024-01-02T00:00:00Z", "fingerprint": "abc123"}))
        .unwrap();
        assert!(keyed.ours().is_none());
        let (id, folder) = keyed.folder().unwrap();
        assert_eq!(id, "F1");
        assert_eq!(folder.synced_until, datetime!(2024-01-01 0:00 UTC));
        assert!(folder.ids_at_synced_until.is_empty());
        assert_eq!(folder.status, "ok");
    }

    #[test]
    fn another_writer_is_detected_only_when_newer_than_our_start() {
        let start = datetime!(2024-03-02 09:00:00 UTC);
        let written_by =
            |writer: &str, at| KeyedSyncState::from_folder("a@b.c", "F1", &folder(), writer, at);
        let warning = foreign_writer_warning(
            "k1",
            &written_by("host-b:7:2024", start + time::Duration::minutes(5)),
            "host-a:42:2024",
            start,
        )
        .expect("a newer write by another replica");
        assert!(warning.contains("host-b:7:2024") && warning.contains("host-a:42:2024"));
        assert!(warning.contains("k1") && warning.contains("a@b.c"));
        // Our previous run, before we started: normal.
        assert!(
            foreign_writer_warning(
                "k1",
                &written_by("host-a:41:2023", start - time::Duration::minutes(1)),
                "host-a:42:2024",
                start
            )
            .is_none()
        );
        // Ourselves.
        assert!(
            foreign_writer_warning(
                "k1",
                &written_by("host-a:42:2024", start + time::Duration::minutes(1)),
                "host-a:42:2024",
                start
            )
            .is_none()
        );
    }
}
