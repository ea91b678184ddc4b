//! The request pipeline: authentication → routing → permission → injected faults → handler,
//! and the data the fake keeps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::http::{HttpRequest, HttpResponse, MAX_BODY_BYTES};
use crate::schema;
use crate::{API_PATH, Endpoint, Fault, FaultKind, Request, RetryAfter};

pub struct Inner {
    token: String,
    state: Mutex<State>,
    in_flight_puts: AtomicUsize,
    pub max_puts: AtomicUsize,
}

pub struct BucketData {
    pub id: String,
    pub owner: String,
    pub name: String,
    pub title: Option<String>,
    pub created_at: String,
    pub emails: Vec<Value>,
    /// (mailbox, id) → index in `emails`.
    index: HashMap<(String, String), usize>,
    pub sync_states: BTreeMap<String, Value>,
}

impl BucketData {
    fn json(&self) -> Value {
        json!({"id": self.id, "owner": self.owner, "name": self.name,
               "title": self.title.clone().unwrap_or_default(),
               "created_at": self.created_at, "updated_at": self.created_at})
    }
}

#[derive(Default)]
pub struct State {
    pub buckets: BTreeMap<(String, String), BucketData>,
    pub denied: HashSet<(String, String)>,
    pub poison: HashSet<String>,
    pub configs: BTreeMap<(String, String), Vec<u8>>,
    /// Whether the `v1` and `_private` appliance-config routes exist.
    pub config_prefixes: (bool, bool),
    pub faults: Vec<Fault>,
    pub requests: Vec<Request>,
    pub max_body_bytes: Option<usize>,
    next_bucket_id: u64,
}

impl State {
    pub fn bucket(&self, owner: &str, name: &str) -> Option<&BucketData> {
        self.buckets.get(&(owner.to_owned(), name.to_owned()))
    }

    pub fn bucket_mut(&mut self, owner: &str, name: &str) -> Option<&mut BucketData> {
        self.buckets.get_mut(&(owner.to_owned(), name.to_owned()))
    }

    pub fn create_bucket(&mut self, owner: &str, name: &str, title: Option<String>) -> Value {
        let key = (owner.to_owned(), name.to_owned());
        if let Some(existing) = self.buckets.get(&key) {
            return existing.json();
        }
        self.next_bucket_id += 1;
        // Ids are hex, like the real service's.
        let id = format!("{:016x}", 0x00c0_ffee_0000_0000 + self.next_bucket_id);
        let bucket = BucketData {
            id,
            owner: owner.to_owned(),
            name: name.to_owned(),
            title,
            created_at: now_rfc3339(),
            emails: Vec::new(),
            index: HashMap::new(),
            sync_states: BTreeMap::new(),
        };
        let json = bucket.json();
        self.buckets.insert(key, bucket);
        json
    }

    fn by_id_mut(&mut self, id: &str) -> Option<&mut BucketData> {
        self.buckets.values_mut().find(|b| b.id == id)
    }

    /// The next fault for `endpoint`, used up by one.
    fn take_fault(&mut self, endpoint: Endpoint) -> Option<FaultKind> {
        let fault = self
            .faults
            .iter_mut()
            .find(|f| f.times > 0 && (f.endpoint == Endpoint::Any || f.endpoint == endpoint))?;
        fault.times -= 1;
        let kind = fault.kind.clone();
        self.faults.retain(|f| f.times > 0);
        Some(kind)
    }
}

impl Inner {
    pub fn new(token: &str) -> Inner {
        Inner {
            token: token.to_owned(),
            state: Mutex::new(State {
                config_prefixes: (true, true),
                ..State::default()
            }),
            in_flight_puts: AtomicUsize::new(0),
            max_puts: AtomicUsize::new(0),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        // A panicking handler thread must not take the whole fake down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the fake answers: a status, a body, and extra headers.
struct Reply {
    status: u16,
    body: Vec<u8>,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn ok(mut payload: Value) -> Reply {
        if let Value::Object(map) = &mut payload {
            map.insert("status".into(), json!("ok"));
        }
        Reply::json(200, &payload)
    }

    fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply::json(
            status,
            &json!({"status": "error", "message": message.into()}),
        )
    }

    fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            body: value.to_string().into_bytes(),
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    fn not_found() -> Reply {
        Reply::error(404, "404 Not Found")
    }

    fn method_not_allowed() -> Reply {
        Reply::error(405, "405 Method Not Allowed")
    }
}

/// The parsed parts of a request the handlers need.
struct Call<'a> {
    method: String,
    /// Decoded segments after the API path; a trailing slash gives a trailing "".
    segments: Vec<String>,
    query: Vec<(String, String)>,
    content_type: Option<String>,
    body: &'a [u8],
}

/// Answers one request; `None` drops the connection (an injected reset).
pub fn handle(inner: &Inner, request: &HttpRequest) -> Option<HttpResponse> {
    let method = request.method.clone();
    let url = request.target.clone();
    let (endpoint, route) = parse(&method, &url);
    let is_put = endpoint == Endpoint::PutEmails;
    if is_put {
        let now = inner.in_flight_puts.fetch_add(1, Ordering::SeqCst) + 1;
        inner.max_puts.fetch_max(now, Ordering::SeqCst);
    }
    let limit = inner.state().max_body_bytes;
    let expected = format!("Bearer {}", inner.token);
    let reply = if request.header("Authorization") != Some(expected.as_str()) {
        Some(Reply::error(401, "401 Unauthorized"))
    } else if request.body.len() > limit.unwrap_or(MAX_BODY_BYTES) {
        Some(Reply {
            status: 413,
            body: b"<html><head><title>413 Request Entity Too Large</title></head>\
                    <body><center><h1>413 Request Entity Too Large</h1></center></body></html>"
                .to_vec(),
            content_type: "text/html",
            headers: Vec::new(),
        })
    } else {
        match route {
            None => Some(Reply::not_found()),
            Some((segments, query)) => {
                let call = Call {
                    method: method.clone(),
                    segments,
                    query,
                    content_type: request.header("Content-Type").map(str::to_owned),
                    body: &request.body,
                };
                dispatch(inner, endpoint, &call)
            }
        }
    };
    if is_put {
        inner.in_flight_puts.fetch_sub(1, Ordering::SeqCst);
    }
    inner.state().requests.push(Request {
        method,
        path: url,
        // 0: the connection was dropped without an answer.
        status: reply.as_ref().map_or(0, |r| r.status),
        endpoint,
        body_bytes: request.body.len(),
        peer: Some(request.peer),
        connection: request.conn_id,
    });
    let reply = reply?;
    let mut headers: Vec<(String, String)> = reply
        .headers
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
    headers.push(("Content-Type".into(), reply.content_type.to_owned()));
    headers.push(("Server-Timing".into(), "total;dur=1.0".into()));
    Some(HttpResponse {
        status: reply.status,
        headers,
        body: reply.body,
    })
}

type Route = (Vec<String>, Vec<(String, String)>);

/// The endpoint group and decoded segments of a URL under [`API_PATH`].
fn parse(method: &str, url: &str) -> (Endpoint, Option<Route>) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let Some(rest) = path.strip_prefix(API_PATH) else {
        return (Endpoint::Unknown, None);
    };
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        let Some(decoded) = percent_decode(raw) else {
            return (Endpoint::Unknown, None);
        };
        // `owner%2Fname` (the CLI's form) is the same as `owner/name`.
        segments.extend(decoded.split('/').map(str::to_owned));
    }
    // `//` (a doubled slash from a careless base URL) routes nowhere, as on a strict router.
    let last = segments.len().saturating_sub(1);
    if segments
        .iter()
        .enumerate()
        .any(|(i, s)| s.is_empty() && i != last)
    {
        return (Endpoint::Unknown, None);
    }
    let query: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(k).unwrap_or_default(),
                percent_decode(v).unwrap_or_default(),
            )
        })
        .collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let endpoint = match s.as_slice() {
        ["v1" | "_private", "appliance-configs", _, _] => Endpoint::Configs,
        ["_private", "buckets", rest @ ..] => bucket_endpoint_kind(rest, method),
        _ => Endpoint::Unknown,
    };
    (endpoint, Some((segments, query)))
}

/// The endpoint of a path under `_private/buckets/`.
fn bucket_endpoint_kind(rest: &[&str], method: &str) -> Endpoint {
    let tail = match rest {
        [id, tail @ ..] if id.starts_with("id:") => tail,
        [_, _, tail @ ..] => tail,
        _ => return Endpoint::Unknown,
    };
    match tail {
        [] => Endpoint::Bucket,
        ["emails"] if method == "PUT" => Endpoint::PutEmails,
        ["keyed-sync-states", ""] | ["keyed-sync-state", _] | ["keyed-sync-state-ids"] => {
            Endpoint::SyncStates
        }
        _ => Endpoint::Unknown,
    }
}

fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A bucket reference in a path: `owner/name` (two segments) or `id:<hex>` (one).
enum BucketRef<'a> {
    Name(&'a str, &'a str),
    Id(&'a str),
}

/// `None` drops the connection.
fn dispatch(inner: &Inner, endpoint: Endpoint, call: &Call) -> Option<Reply> {
    let fault = inner.state().take_fault(endpoint);
    if let Some(kind) = fault {
        match kind {
            FaultKind::Delay(wait) => std::thread::sleep(wait),
            FaultKind::Reset => return None,
            other => return Some(fault_reply(other)),
        }
    }
    Some(route(inner, call).unwrap_or_else(|reply| reply))
}

fn fault_reply(kind: FaultKind) -> Reply {
    match kind {
        FaultKind::TooManyRequests(retry_after) => {
            let mut reply = Reply::error(429, "429 Too Many Requests");
            match retry_after {
                RetryAfter::Absent => {}
                RetryAfter::Seconds(secs) => {
                    reply.headers.push(("Retry-After", secs.to_string()));
                }
                RetryAfter::HttpDate(after) => {
                    reply.headers.push(("Retry-After", http_date(after)));
                }
            }
            reply
        }
        FaultKind::Status { code, body } => Reply {
            status: code,
            body: body.into_bytes(),
            content_type: "text/html",
            headers: Vec::new(),
        },
        FaultKind::ServerError | FaultKind::Delay(_) | FaultKind::Reset => {
            Reply::error(500, "500 Internal Server Error")
        }
    }
}

/// `Err` carries an error reply, so handlers can bail out with `?`.
fn route(inner: &Inner, call: &Call) -> Result<Reply, Reply> {
    let s: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    let (bucket, rest): (Option<BucketRef>, &[&str]) = match s.as_slice() {
        ["_private", "buckets", id, rest @ ..] if id.starts_with("id:") => {
            (Some(BucketRef::Id(&id[3..])), rest)
        }
        ["_private", "buckets", owner, name, rest @ ..] => {
            (Some(BucketRef::Name(owner, name)), rest)
        }
        _ => (None, &[]),
    };
    if let Some(bucket) = &bucket
        && denied(inner, bucket)
    {
        return Ok(Reply::error(
            403,
            "Forbidden: you do not have the permission buckets-append on this project",
        ));
    }
    match (bucket, rest) {
        (Some(bucket), []) => bucket_endpoint(inner, bucket, call),
        (Some(bucket), ["emails"]) if call.method == "PUT" => put_emails(inner, bucket, call),
        (Some(BucketRef::Id(id)), ["keyed-sync-states", ""]) => {
            only_method(call, "GET")?;
            Ok(with_bucket_id(inner, id, |b| {
                let states: Vec<Value> = b.sync_states.values().cloned().collect();
                Reply::ok(json!({ "keyed_sync_states": states }))
            }))
        }
        (Some(BucketRef::Id(id)), ["keyed-sync-state", key]) => keyed_state(inner, id, key, call),
        (Some(BucketRef::Id(id)), ["keyed-sync-state-ids"]) => {
            only_method(call, "POST")?;
            let body = json_body(call)?;
            let mailbox = schema::keyed_sync_state_ids(&body).map_err(bad_request)?;
            Ok(with_bucket_id(inner, id, |b| {
                let ids: Vec<&String> = b
                    .sync_states
                    .iter()
                    .filter(|(_, v)| v["mailbox_name"].as_str() == Some(mailbox.as_str()))
                    .map(|(k, _)| k)
                    .collect();
                Reply::ok(json!({ "keyed_sync_state_ids": ids }))
            }))
        }
        (None, _) => match s.as_slice() {
            [
                prefix @ ("v1" | "_private"),
                "appliance-configs",
                owner,
                key,
            ] => {
                only_method(call, "GET")?;
                let (v1, private) = inner.state().config_prefixes;
                if !(if *prefix == "v1" { v1 } else { private }) {
                    return Ok(Reply::not_found());
                }
                let state = inner.state();
                Ok(
                    match state.configs.get(&((*owner).to_owned(), (*key).to_owned())) {
                        Some(body) => Reply {
                            status: 200,
                            body: body.clone(),
                            content_type: "application/octet-stream",
                            headers: Vec::new(),
                        },
                        None => {
                            Reply::error(404, format!("Appliance config {owner}/{key} not found"))
                        }
                    },
                )
            }
            _ => Ok(Reply::not_found()),
        },
        _ => Ok(Reply::not_found()),
    }
}

fn only_method(call: &Call, method: &str) -> Result<(), Reply> {
    if call.method == method {
        Ok(())
    } else {
        Err(Reply::method_not_allowed())
    }
}

fn bad_request(message: String) -> Reply {
    Reply::error(400, message)
}

/// The body as JSON, refusing anything not declared `application/json`.
fn json_body(call: &Call) -> Result<Value, Reply> {
    let declared = call
        .content_type
        .as_deref()
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if declared != Some(true) {
        return Err(Reply::error(
            415,
            "Unsupported Media Type: expected Content-Type: application/json",
        ));
    }
    serde_json::from_slice(call.body)
        .map_err(|err| Reply::error(400, format!("Invalid JSON: {err}")))
}

fn denied(inner: &Inner, bucket: &BucketRef) -> bool {
    let state = inner.state();
    match bucket {
        BucketRef::Name(owner, name) => state
            .denied
            .contains(&((*owner).to_owned(), (*name).to_owned())),
        BucketRef::Id(id) => state
            .buckets
            .values()
            .any(|b| b.id == *id && state.denied.contains(&(b.owner.clone(), b.name.clone()))),
    }
}

fn with_bucket_id(inner: &Inner, id: &str, f: impl FnOnce(&mut BucketData) -> Reply) -> Reply {
    let mut state = inner.state();
    match state.by_id_mut(id) {
        Some(bucket) => f(bucket),
        None => Reply::error(404, format!("Bucket id:{id} not found")),
    }
}

fn bucket_endpoint(inner: &Inner, bucket: BucketRef, call: &Call) -> Result<Reply, Reply> {
    Ok(match (call.method.as_str(), bucket) {
        ("GET", BucketRef::Id(id)) => {
            with_bucket_id(inner, id, |b| Reply::ok(json!({"bucket": b.json()})))
        }
        ("GET", BucketRef::Name(owner, name)) => match inner.state().bucket(owner, name) {
            Some(b) => Reply::ok(json!({"bucket": b.json()})),
            None => Reply::error(404, format!("Bucket '{owner}/{name}' not found")),
        },
        ("PUT", BucketRef::Name(owner, name)) => {
            if !schema::is_bucket_name_part(owner) || !schema::is_bucket_name_part(name) {
                return Err(Reply::error(
                    400,
                    format!("Invalid bucket name '{owner}/{name}'"),
                ));
            }
            let body = json_body(call)?;
            let title = schema::new_bucket(&body).map_err(bad_request)?;
            let mut state = inner.state();
            if state.bucket(owner, name).is_some() {
                return Err(Reply::error(
                    409,
                    format!("Bucket '{owner}/{name}' already exists"),
                ));
            }
            let bucket = state.create_bucket(owner, name, title);
            Reply::ok(json!({ "bucket": bucket }))
        }
        _ => Reply::method_not_allowed(),
    })
}

fn put_emails(inner: &Inner, bucket: BucketRef, call: &Call) -> Result<Reply, Reply> {
    for (key, value) in &call.query {
        if key != "no_charge" {
            return Err(Reply::error(
                400,
                format!("Unknown query parameter {key:?}"),
            ));
        }
        if value != "true" && value != "false" {
            return Err(Reply::error(
                400,
                format!("no_charge: invalid boolean {value:?}"),
            ));
        }
    }
    let body = json_body(call)?;
    let emails = schema::put_emails(&body).map_err(bad_request)?;
    let mut state = inner.state();
    if let Some(id) = emails
        .iter()
        .filter_map(|e| e["id"].as_str())
        .find(|id| state.poison.contains(*id))
    {
        return Err(Reply::error(
            400,
            format!("Email {id:?} was rejected: its content is invalid"),
        ));
    }
    let found = match bucket {
        BucketRef::Name(owner, name) => state.bucket_mut(owner, name),
        BucketRef::Id(id) => state.by_id_mut(id),
    };
    let Some(bucket) = found else {
        return Err(Reply::error(404, "Bucket not found"));
    };
    // Upsert by (mailbox, id): one id may hold a record per mailbox (`GET ?id=` returns a list).
    for email in emails {
        let key = (
            email["mailbox"].as_str().unwrap_or_default().to_owned(),
            email["id"].as_str().unwrap_or_default().to_owned(),
        );
        match bucket.index.get(&key) {
            Some(&at) => bucket.emails[at] = email.clone(),
            None => {
                bucket.index.insert(key, bucket.emails.len());
                bucket.emails.push(email.clone());
            }
        }
    }
    Ok(Reply::ok(json!({})))
}

fn keyed_state(inner: &Inner, id: &str, key: &str, call: &Call) -> Result<Reply, Reply> {
    if !schema::is_state_key(key) {
        return Err(Reply::error(
            400,
            format!("Invalid keyed sync state key {key:?}: expected hex"),
        ));
    }
    Ok(match call.method.as_str() {
        "GET" => with_bucket_id(inner, id, |b| match b.sync_states.get(key) {
            Some(state) => Reply::ok(json!({ "keyed_sync_state": state })),
            None => Reply::error(404, format!("Keyed sync state {key} not found")),
        }),
        "PUT" => {
            let body = json_body(call)?;
            let state = schema::keyed_sync_state(&body).map_err(bad_request)?;
            with_bucket_id(inner, id, |b| {
                b.sync_states.insert(key.to_owned(), state);
                Reply::ok(json!({}))
            })
        }
        "DELETE" => with_bucket_id(inner, id, |b| match b.sync_states.remove(key) {
            Some(_) => Reply::ok(json!({})),
            None => Reply::error(404, format!("Keyed sync state {key} not found")),
        }),
        _ => Reply::method_not_allowed(),
    })
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// An IMF-fixdate `after` from now, e.g. `Wed, 21 Oct 2015 07:28:00 GMT`.
fn http_date(after: Duration) -> String {
    let when = OffsetDateTime::from(SystemTime::now() + after);
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    when.format(&format).unwrap_or_default()
}
