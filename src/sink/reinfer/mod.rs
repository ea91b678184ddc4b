//! The Communications Mining ("Reinfer API") sink: emails into buckets, sync state as keyed
//! sync states in the bucket, remote configuration from appliance configs.
//!
//! Paths (relative to the API base `.../reinfer_/api`):
//! - `GET|PUT _private/buckets/<owner>/<name>`: prepare the bucket (create on 404);
//! - `PUT _private/buckets/<owner>/<name>/emails` with `{"emails":[NewEmail,...]}`;
//! - `GET _private/buckets/id:<id>/keyed-sync-states/`, `GET|PUT
//!   _private/buckets/id:<id>/keyed-sync-state/<key>`: sync state;
//! - `GET v1/appliance-configs/<owner>/<key>`, falling back to `_private/...`: configuration.
//!
//! Decisions taken from the API reference (`shared/reference/communications-mining-api.md`):
//! - owner and name are two percent-encoded segments with a literal `/` between them (the
//!   OpenAPI client's form; the CLI's `owner%2Fname` is an artefact of its URL library);
//! - no `?no_charge=`: only the CLI sends it (always `false`, the default); the OpenAPI
//!   client omits it unless set, it is "internal only", and nothing says the Sync App sends it;
//! - every reply is read as the envelope `{"status":"ok",...}` / `{"status":"error",
//!   "message":...}`; the server's message goes into our errors (with the token scrubbed);
//! - 5xx, 429, 408 and 409 are retried (the CLI retries 5xx, 429 and 409), a refused batch
//!   (400, 413, 422) is split in halves down to the emails at fault (the CLI's
//!   split-on-failure), and those are reported, not retried;
//! - sync state keys are hex (the API calls keyed sync state ids "hex encoded"); see
//!   `state.rs` for what goes where.
//!
//! One `ureq::Agent` serves every uploader thread: an agent is thread-safe and pools
//! connections, and bearer auth (unlike NTLM) is not bound to a connection.

mod client;
mod emails;
mod state;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;
use time::OffsetDateTime;

pub use client::RetryPolicy;
pub use state::{KeyedSyncState, foreign_writer_warning, state_key};

use client::{Call, Client, Method};
use state::{Listing, Written};

use super::{EncodedBatch, Error, PutReport, Sink, check_config_segment};
use crate::config::Bucket;
use crate::http::AgentSettings;
use crate::secret::Secret;
use crate::sync::state::MailboxState;

/// Largest `PUT .../emails` body. No limit is documented; gateways commonly refuse bodies
/// beyond 10 MB with 413, so stay below that (the reference suggests about 8 MB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 << 20;

/// Appliance configs are small JSON files; anything much larger is not one.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

pub struct ReinferSink {
    /// `scheme://host[:port]/.../api`, without a trailing slash.
    api: String,
    client: Client,
    max_body_bytes: usize,
    /// Who writes our sync states (host, pid, start time), to notice two replicas at once.
    writer: String,
    started_at: OffsetDateTime,
    /// Bucket ids by (owner, name): keyed sync states are addressed by id.
    bucket_ids: Mutex<HashMap<(String, String), String>>,
    /// What was last written (or found stored) under each (bucket id, key).
    written: Mutex<HashMap<(String, String), Written>>,
    /// Recent listings of keyed sync states by bucket id.
    listings: Mutex<HashMap<String, Listing>>,
}

impl fmt::Debug for ReinferSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReinferSink")
            .field("api", &self.api)
            .field("token", &crate::secret::REDACTED)
            .field("writer", &self.writer)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl ReinferSink {
    /// `base_url` is the API endpoint, e.g. `https://cloud.uipath.com/org/tenant/reinfer_/api/`
    /// (the trailing slash is optional, and `/api` is added when it is missing, as the reinfer
    /// CLI does with its endpoint). `writer` names this process in the sync states it writes.
    pub fn new(base_url: &str, token: Secret, writer: String) -> Result<ReinferSink, Error> {
        let api = normalize_base(base_url)?;
        check_token(&token)?;
        let agent = crate::http::agent(&AgentSettings::default());
        Ok(ReinferSink {
            api,
            client: Client::new(agent, token),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            writer,
            started_at: OffsetDateTime::now_utc(),
            bucket_ids: Mutex::default(),
            written: Mutex::default(),
            listings: Mutex::default(),
        })
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.client.retry = policy;
        self
    }

    pub fn with_max_body_bytes(mut self, max_body_bytes: usize) -> Self {
        self.max_body_bytes = max_body_bytes.max(1);
        self
    }

    /// The full URL of `segments` under the API base, each percent-encoded.
    fn url(&self, segments: &[String]) -> String {
        let mut url = self.api.clone();
        for segment in segments {
            url.push('/');
            url.push_str(&encode_segment(segment));
        }
        url
    }

    fn lock_written(&self) -> MutexGuard<'_, HashMap<(String, String), Written>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_listings(&self) -> MutexGuard<'_, HashMap<String, Listing>> {
        self.listings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bucket's id: cached, else read (and created on 404 when `create`). `None` when
    /// the bucket does not exist and was not to be created.
    fn bucket_id(&self, bucket: &Bucket, create: bool) -> Result<Option<String>, Error> {
        let name = (bucket.owner.clone(), bucket.name.clone());
        if let Some(id) = self
            .bucket_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
        {
            return Ok(Some(id.clone()));
        }
        let url = self.url(&paths::bucket(bucket, &[]));
        let full_name = format!("{}/{}", bucket.owner, bucket.name);
        let get = Call {
            method: Method::Get,
            url: &url,
            body: None,
            what: &format!("reading bucket {full_name}"),
            accept: "application/json",
            retry_conflict: true,
        };
        let mut reply = self.client.send(&get)?;
        if reply.status == 404 {
            if !create {
                return Ok(None);
            }
            let create_body = br#"{"bucket":{"bucket_type":"emails"}}"#;
            let created = self.client.send(&Call {
                method: Method::Put,
                url: &url,
                body: Some(create_body),
                what: &format!("creating bucket {full_name}"),
                accept: "application/json",
                retry_conflict: false,
            })?;
            reply = if created.status == 409 {
                // Another replica created it meanwhile.
                self.client.send(&get)?
            } else {
                if (200..300).contains(&created.status) {
                    log::info!("created bucket {full_name} ({url})");
                }
                created
            };
        }
        let action = format!("read or create bucket {full_name} (buckets-read, buckets-write)");
        let value = self.client.expect_ok(&url, &reply, &action)?;
        let id = value
            .get("bucket")
            .and_then(|b| b.get("id"))
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::Corrupt {
                path: url.clone(),
                detail: "the bucket in the reply has no id".to_owned(),
            })?
            .to_owned();
        self.bucket_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, id.clone());
        Ok(Some(id))
    }

    /// GET one appliance config under `prefix` (`v1` or `_private`); `None` on 404.
    fn config_under(&self, prefix: &str, owner: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let url = self.url(&[
            prefix.to_owned(),
            "appliance-configs".to_owned(),
            owner.to_owned(),
            key.to_owned(),
        ]);
        let reply = self.client.send(&Call {
            method: Method::Get,
            url: &url,
            body: None,
            what: &format!("reading remote configuration {owner}/{key}"),
            accept: "application/octet-stream, application/json",
            retry_conflict: true,
        })?;
        match reply.status {
            404 => Ok(None),
            200..=299 => {
                if reply.body.len() as u64 >= MAX_CONFIG_BYTES {
                    return Err(Error::Corrupt {
                        path: url,
                        detail: format!("larger than {MAX_CONFIG_BYTES} bytes"),
                    });
                }
                config_payload(reply.body)
                    .map(Some)
                    .map_err(|detail| Error::Corrupt { path: url, detail })
            }
            _ => Err(self.client.failure(
                &url,
                &reply,
                &format!("read appliance config {owner}/{key} (appliance-config-read)"),
            )),
        }
    }
}

impl Sink for ReinferSink {
    fn describe(&self) -> String {
        format!("reinfer:{}/", self.api)
    }

    fn prepare_bucket(&self, bucket: &Bucket) -> Result<(), Error> {
        paths::check_bucket(bucket)?;
        self.bucket_id(bucket, true).map(drop)
    }

    fn put_emails(
        &self,
        bucket: &Bucket,
        mailbox: &str,
        batch: &EncodedBatch,
    ) -> Result<PutReport, Error> {
        paths::check_bucket(bucket)?;
        let mut report = PutReport::default();
        let ranges = emails::chunks(&batch.docs, self.max_body_bytes);
        if ranges.len() > 1 {
            log::debug!(
                "mailbox={mailbox}: a batch of {} emails ({} bytes) goes in {} requests of at most {} bytes",
                batch.docs.len(),
                batch.bytes(),
                ranges.len(),
                self.max_body_bytes
            );
        }
        for range in ranges {
            self.put_range(bucket, mailbox, batch, range, &mut report.rejected)?;
        }
        Ok(report)
    }

    fn load_state(&self, bucket: &Bucket, mailbox: &str) -> Result<Option<MailboxState>, Error> {
        paths::check_bucket(bucket)?;
        self.load(bucket, mailbox)
    }

    fn save_state(&self, bucket: &Bucket, state: &MailboxState) -> Result<(), Error> {
        paths::check_bucket(bucket)?;
        self.save(bucket, state)
    }

    fn read_config(&self, owner: &str, key: &str) -> Result<Vec<u8>, Error> {
        check_config_segment("--remote-config-owner", owner)?;
        check_config_segment("--remote-config-key", key)?;
        // The deployment guide documents `v1`; the OpenAPI schema has `_private`.
        for prefix in ["v1", "_private"] {
            if let Some(body) = self.config_under(prefix, owner, key)? {
                return Ok(body);
            }
        }
        Err(Error::NotFound {
            what: format!(
                "remote configuration {owner}/{key} (neither {api}/v1/appliance-configs/ nor \
                 {api}/_private/appliance-configs/ has it)",
                api = self.api
            ),
        })
    }
}

/// Segment lists of the API's paths.
mod paths {
    use crate::config::Bucket;
    use crate::sink::Error;

    /// `_private/buckets/<owner>/<name>/<rest...>`: owner and name as two segments (the
    /// OpenAPI client's form), not one segment with an encoded slash.
    pub fn bucket(bucket: &Bucket, rest: &[&str]) -> Vec<String> {
        let mut segments = vec![
            "_private".to_owned(),
            "buckets".to_owned(),
            bucket.owner.clone(),
            bucket.name.clone(),
        ];
        segments.extend(rest.iter().map(|s| (*s).to_owned()));
        segments
    }

    /// `_private/buckets/id:<id>/<rest...>`; an empty last segment gives a trailing slash.
    pub fn bucket_id(id: &str, rest: &[&str]) -> Vec<String> {
        let mut segments = vec![
            "_private".to_owned(),
            "buckets".to_owned(),
            format!("id:{id}"),
        ];
        segments.extend(rest.iter().map(|s| (*s).to_owned()));
        segments
    }

    /// The API's bucket name rule, `[A-Za-z0-9-_]{1,256}` for owner and name.
    pub fn check_bucket(bucket: &Bucket) -> Result<(), Error> {
        let ok = |part: &str| {
            (1..=256).contains(&part.len())
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if ok(&bucket.owner) && ok(&bucket.name) {
            Ok(())
        } else {
            Err(Error::Invalid {
                detail: format!(
                    "bucket {}/{} is not a valid Communications Mining bucket name: owner and \
                     name are 1 to 256 letters, digits, '-' or '_'",
                    bucket.owner, bucket.name
                ),
            })
        }
    }
}

/// Percent-encodes a path segment: everything but unreserved characters and `:`/`@` (which a
/// segment may hold, as in `id:<hex>`), so `/`, `%`, `?` and `#` can never change the path.
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `scheme://authority/path/api`: validated (http or https, a host, no credentials, query or
/// fragment) and without a trailing slash.
fn normalize_base(base: &str) -> Result<String, Error> {
    let invalid = |why: &str| Error::Invalid {
        detail: format!("--reinfer-api-endpoint {base:?} is not usable: {why}"),
    };
    let base = base.trim();
    let uri: ureq::http::Uri = base.parse().map_err(|_| {
        invalid("not a URL, e.g. https://cloud.uipath.com/org/tenant/reinfer_/api/")
    })?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
    if !matches!(scheme.as_deref(), Some("http" | "https")) {
        return Err(invalid("the URL must start with https:// (or http://)"));
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid("the URL has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(invalid(
            "credentials in the URL are not allowed; the token comes from REINFER_API_TOKEN",
        ));
    }
    if authority.host().is_empty() {
        return Err(invalid("the URL has no host"));
    }
    if uri.query().is_some() || base.contains('#') {
        return Err(invalid("the URL must not have a query or fragment"));
    }
    let path = uri.path().trim_end_matches('/');
    let api = if path.rsplit('/').next() == Some("api") {
        path.to_owned()
    } else {
        format!("{path}/api")
    };
    Ok(format!(
        "{}://{}{api}",
        scheme.unwrap_or_default(),
        authority.as_str().to_ascii_lowercase()
    ))
}

/// The token goes into a header: it must be non-empty visible ASCII. The message never
/// shows it.
fn check_token(token: &Secret) -> Result<(), Error> {
    let value = token.expose();
    if value.is_empty() {
        return Err(Error::Invalid {
            detail: "REINFER_API_TOKEN is empty".to_owned(),
        });
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Invalid {
            detail: "REINFER_API_TOKEN contains spaces, control or non-ASCII characters (a \
                     stray newline?)"
                .to_owned(),
        });
    }
    Ok(())
}

/// The config file from a GET body. Expected raw (the stored file as is); an envelope
/// `{"status":"ok","<field>":<config or string>}` is unwrapped, since a config file itself
/// never has a `status` key.
fn config_payload(body: Vec<u8>) -> Result<Vec<u8>, String> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&body) else {
        return Ok(body);
    };
    match map.get("status").and_then(Value::as_str) {
        Some("ok") => {}
        Some("error") => {
            let message = map.get("message").and_then(Value::as_str).unwrap_or("");
            return Err(format!(
                "an error envelope with a success status: {message}"
            ));
        }
        _ => return Ok(body),
    }
    let mut payload = map.into_iter().filter(|(k, _)| k != "status");
    match (payload.next(), payload.next()) {
        (Some((_, Value::String(text))), None) => Ok(text.into_bytes()),
        (Some((_, value @ Value::Object(_))), None) => {
            serde_json::to_vec(&value).map_err(|err| err.to_string())
        }
        _ => Err("an envelope without exactly one configuration in it".to_owned()),
    }
}
