//! A loopback fake of the Communications Mining ("Reinfer") API for exchange-sync's tests: the
//! bucket, bucket-email, keyed-sync-state and appliance-config endpoints an Exchange Sync App
//! uses, with bearer-token checks, strict request validation, fault injection and records.
//!
//! ```no_run
//! use fake_reinfer::FakeReinfer;
//! let fake = FakeReinfer::start("token").unwrap();
//! fake.create_bucket("acme", "mail");
//! println!("{}", fake.base_url()); // http://127.0.0.1:PORT/org/tenant/reinfer_/api/
//! ```
//!
//! What it serves (paths relative to `base_url()`), with the response envelope
//! `{"status":"ok",...}` / `{"status":"error","message":...}`:
//! - `GET|PUT _private/buckets/<owner>/<name>`, `GET _private/buckets/id:<id>`;
//! - `PUT _private/buckets/<owner>/<name>/emails[?no_charge=<bool>]` (`{"emails":[NewEmail]}`,
//!   upserted by (mailbox, id));
//! - `GET _private/buckets/id:<id>/keyed-sync-states/`, `GET|PUT|DELETE
//!   _private/buckets/id:<id>/keyed-sync-state/<hex key>`, `POST
//!   _private/buckets/id:<id>/keyed-sync-state-ids`;
//! - `GET v1/appliance-configs/<owner>/<key>` and `GET _private/appliance-configs/<owner>/<key>`
//!   (raw bytes).
//!
//! A `/` inside a segment may be sent encoded (`owner%2Fname`), as the shipped CLI does.
//!
//! Strictness (stricter than the real service where that catches client drift):
//! - 401 without `Authorization: Bearer <token>`; 403 on a bucket [`FakeReinfer::deny`]ied;
//! - 404 for unknown routes and for a doubled slash (`api//_private`);
//! - 415 for a JSON body not declared `application/json`;
//! - 400, naming the field, for unknown fields and wrong types: a bucket create must be
//!   `{"bucket":{"bucket_type":"emails","title"?}}`; an email exactly `NewEmail` (`id`,
//!   `mailbox`, RFC 3339 `timestamp`, `mime_content`, `metadata` with only its ten keys,
//!   `attachments` with `name`/`size`/`content_type` required and `inline`/`content_hash`/
//!   `attachment_reference` optional, sizes below 2^31); a keyed sync state exactly the
//!   store body (`mailbox_name`, `status` `IN_PROGRESS|UP_TO_DATE`, optional `folder_id`,
//!   `folder_path`, `synced_until`, `last_synced_at`, `fingerprint`) under a hex key;
//! - a batch with an invalid or [`FakeReinfer::poison`]ed email stores nothing;
//! - 413 with an HTML page (a gateway's) above [`FakeReinfer::set_max_body_bytes`].
//!
//! Faults ([`Fault`]) hit the next N requests of an [`Endpoint`]: 429 with `Retry-After` in
//! seconds or as an HTTP date, 500, any status and body, a delay, or a dropped connection.

mod http;
mod schema;
mod server;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use server::{Inner, State};

/// The path under which the fake serves the API, like `https://cloud.uipath.com/org/tenant/reinfer_/api/`.
pub const API_PATH: &str = "/org/tenant/reinfer_/api/";

/// Which group of endpoints a request (or a fault) concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Every request (for faults only).
    Any,
    /// Get or create a bucket.
    Bucket,
    /// `PUT .../emails`.
    PutEmails,
    /// Keyed sync states: list, get, put, delete, ids.
    SyncStates,
    /// Appliance configs.
    Configs,
    /// Anything the fake does not route.
    Unknown,
}

/// The `Retry-After` header sent with an injected 429.
#[derive(Clone, Debug)]
pub enum RetryAfter {
    Absent,
    Seconds(u64),
    /// An HTTP date this far in the future.
    HttpDate(Duration),
}

#[derive(Clone, Debug)]
pub enum FaultKind {
    /// 429 with the API's error JSON.
    TooManyRequests(RetryAfter),
    /// 500 with the API's error JSON.
    ServerError,
    /// Wait this long, then serve the request normally.
    Delay(Duration),
    /// Any status with this exact body (e.g. an HTML page from a gateway).
    Status { code: u16, body: String },
    /// Close the connection without answering (a reset).
    Reset,
}

/// Applies to the next `times` requests (after authentication) to `endpoint`. Faults are used
/// in the order they were injected; one request takes at most one fault.
#[derive(Clone, Debug)]
pub struct Fault {
    pub endpoint: Endpoint,
    pub kind: FaultKind,
    pub times: usize,
}

impl Fault {
    pub fn new(endpoint: Endpoint, kind: FaultKind, times: usize) -> Fault {
        Fault {
            endpoint,
            kind,
            times,
        }
    }
}

/// One request the fake answered.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The path as sent, with its query string.
    pub path: String,
    pub status: u16,
    pub endpoint: Endpoint,
    pub body_bytes: usize,
    pub peer: Option<SocketAddr>,
    /// Which TCP connection it came on (numbered from 1 in accept order).
    pub connection: u64,
}

pub struct FakeReinfer {
    inner: Arc<Inner>,
    /// Dropping it stops the listener and joins every connection thread.
    server: http::HttpServer,
}

impl FakeReinfer {
    /// Serves on `127.0.0.1:<free port>`, accepting `Authorization: Bearer <token>`.
    pub fn start(token: &str) -> std::io::Result<FakeReinfer> {
        let inner = Arc::new(Inner::new(token));
        let handler = {
            let inner = Arc::clone(&inner);
            Arc::new(move |request: &http::HttpRequest| server::handle(&inner, request))
        };
        let server = http::HttpServer::start(handler)?;
        Ok(FakeReinfer { inner, server })
    }

    /// `http://127.0.0.1:<port>/org/tenant/reinfer_/api/`, with the trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}{API_PATH}", self.server.addr())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state()
    }

    /// The emails stored in a bucket, in the order they were first stored.
    pub fn emails(&self, owner: &str, bucket: &str) -> Vec<Value> {
        self.state()
            .bucket(owner, bucket)
            .map(|b| b.emails.clone())
            .unwrap_or_default()
    }

    /// Every bucket as (owner, name).
    pub fn buckets(&self) -> Vec<(String, String)> {
        self.state().buckets.keys().cloned().collect()
    }

    /// The id the fake gave a bucket.
    pub fn bucket_id(&self, owner: &str, bucket: &str) -> Option<String> {
        self.state().bucket(owner, bucket).map(|b| b.id.clone())
    }

    /// Keyed sync states of a bucket by key, as stored (the inner object of the PUT body).
    pub fn sync_states(&self, owner: &str, bucket: &str) -> BTreeMap<String, Value> {
        self.state()
            .bucket(owner, bucket)
            .map(|b| b.sync_states.clone())
            .unwrap_or_default()
    }

    /// Stores a keyed sync state directly, as another writer would.
    pub fn put_sync_state(&self, owner: &str, bucket: &str, key: &str, state: Value) {
        if let Some(b) = self.state().bucket_mut(owner, bucket) {
            b.sync_states.insert(key.to_owned(), state);
        }
    }

    /// Serves `body` for the appliance config `owner`/`key`.
    pub fn set_config(&self, owner: &str, key: &str, body: &[u8]) {
        self.state()
            .configs
            .insert((owner.to_owned(), key.to_owned()), body.to_vec());
    }

    /// Which path prefixes route appliance configs (both by default); a disabled one answers 404.
    pub fn set_config_prefixes(&self, v1: bool, private: bool) {
        self.state().config_prefixes = (v1, private);
    }

    /// A batch containing an email with this id is refused with 400, naming it.
    pub fn poison(&self, id: &str) {
        self.state().poison.insert(id.to_owned());
    }

    /// A request body larger than this is refused with 413 and an HTML page, like a gateway.
    pub fn set_max_body_bytes(&self, limit: Option<usize>) {
        self.state().max_body_bytes = limit;
    }

    pub fn inject(&self, fault: Fault) {
        self.state().faults.push(fault);
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }

    /// How many distinct TCP connections requests came on.
    pub fn connections(&self) -> usize {
        let state = self.state();
        let connections: HashSet<u64> = state.requests.iter().map(|r| r.connection).collect();
        connections.len()
    }

    /// Most `PUT .../emails` requests in progress at once.
    pub fn max_concurrent_puts(&self) -> usize {
        self.inner.max_puts.load(Ordering::SeqCst)
    }

    pub fn create_bucket(&self, owner: &str, name: &str) {
        self.state().create_bucket(owner, name, None);
    }

    /// Every request concerning this bucket (by name or id) gets 403.
    pub fn deny(&self, owner: &str, name: &str) {
        self.state()
            .denied
            .insert((owner.to_owned(), name.to_owned()));
    }
}

#[cfg(test)]
mod tests;
