//! The running fake: HTTP on loopback, bearer-token checks, per-mailbox concurrency and
//! back-off bookkeeping, fault injection, and the mail routes.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fake_exchange::ids::{self, IdKind};
use fake_exchange::{DataSet, FolderKind, Item, is_mail_class};
use fake_login::FakeLogin;
use serde_json::{Value, json};

use crate::http::{HttpRequest, HttpResponse, HttpServer};

use crate::odata::{self, Rejection};
use crate::render::{self, FolderView, MessageContext};
use crate::{ews_id, rest_id};

/// Requests on other connections that arrive this soon after a demanded pause was sent are
/// excused: they may have left before the client read the answer, and on a loaded 2-core test
/// machine a request can take a while from the client's check to the fake (a new connection
/// gets a new thread here). On the connection that got the pause nothing is excused: its next
/// request left after the answer was read.
pub const BACK_OFF_GRACE: Duration = Duration::from_millis(250);
/// Records kept in [`Stats::log`], oldest dropped first.
pub const MAX_RECORDS: usize = 20_000;
/// Graph's page size when `$top` is absent.
const DEFAULT_PAGE: usize = 10;
/// Graph refuses a larger `$top`.
const MAX_TOP: usize = 1000;

#[derive(Clone)]
pub struct Options {
    /// Bearer tokens must be valid tokens of this fake login for [`FakeGraph::scope`];
    /// `None` accepts every request.
    pub login: Option<Arc<FakeLogin>>,
    /// Added to every response, so concurrent requests overlap visibly.
    pub latency: Duration,
    /// Server cap on page sizes: larger `$top` values come back in pages of this size, with a
    /// next link.
    pub max_page: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            login: None,
            latency: Duration::ZERO,
            max_page: MAX_TOP,
        }
    }
}

/// A `Retry-After` value for injected throttling.
#[derive(Clone, Debug)]
pub enum RetryAfter {
    /// Sent as given, e.g. `"2"` or `"0.25"`.
    Value(String),
    /// An HTTP date this far in the future (rounded up to the next whole second).
    HttpDateIn(Duration),
}

/// Fault injection, everything off by default. "Every Nth" counts authenticated requests from
/// the last [`FakeGraph::set_fault`] call. First match wins, in this order: mailbox not enabled,
/// access denied, mailbox concurrency exceeded, throttling (429), unavailable (503), gateway
/// timeout (504).
#[derive(Clone, Debug, Default)]
pub struct Fault {
    /// Mailboxes answered with 404 `MailboxNotEnabledForRESTAPI` on every request.
    pub mailbox_not_enabled: Vec<String>,
    /// Mailboxes answered with 403 `ErrorAccessDenied` on every request.
    pub access_denied: Vec<String>,
    /// A request that arrives with this many others in flight for its mailbox gets 429
    /// `ApplicationThrottled` ("over its MailboxConcurrency limit"), as Exchange Online does
    /// beyond four.
    pub mailbox_concurrency_limit: Option<usize>,
    /// Every Nth request: 429 `TooManyRequests`.
    pub throttle_every_nth: Option<u32>,
    /// Every Nth request: 503 `MailboxInfoStale`.
    pub unavailable_every_nth: Option<u32>,
    /// Every Nth request: 504 without `Retry-After`.
    pub gateway_timeout_every_nth: Option<u32>,
    /// `Retry-After` of injected 429s and 503s; `None` sends none (then `ApplicationThrottled`
    /// still says `1`, as Exchange Online does).
    pub retry_after: Option<RetryAfter>,
    /// Items (EWS or REST ids) deleted as soon as a listing has shown them: fetching them then
    /// gives 404 `ErrorItemNotFound`.
    pub vanish_after_list: Vec<String>,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub at: Instant,
    pub mailbox: Option<String>,
    /// Path and query as sent (still percent-encoded).
    pub target: String,
    pub status: u16,
    /// Requests in flight for the mailbox, this one included, when it arrived.
    pub in_flight_for_mailbox: usize,
    /// The client's TCP connection (ids count up from 1) and port.
    pub conn_id: u64,
    pub peer_port: u16,
}

/// A pause the fake demanded with `Retry-After`.
#[derive(Clone, Debug)]
pub struct BackOff {
    pub mailbox: String,
    pub sent_at: Instant,
    pub until: Instant,
    pub retry_after: String,
    /// The connection the demand went out on.
    pub conn_id: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub requests: u64,
    /// By route: `mailFolders`, `childFolders`, `folder`, `messages`, `message`, `$value`,
    /// `attachments`.
    pub routes: BTreeMap<String, u64>,
    pub max_in_flight: usize,
    /// By lower-cased mailbox address.
    pub max_in_flight_per_mailbox: BTreeMap<String, usize>,
    /// Requests refused for a missing, invalid or expired token.
    pub unauthorized: u64,
    /// Injected faults, e.g. `429 TooManyRequests user1@example.test`.
    pub injected: Vec<String>,
    /// Client errors in the client's requests (bad `$filter`, unknown `$select` field, …),
    /// as `code: message (target)`. A correct client causes none.
    pub rejected: Vec<String>,
    pub back_offs: Vec<BackOff>,
    /// Requests for a mailbox that arrived while a pause demanded for it was running: on the
    /// connection that got the demand, or on another one beyond [`BACK_OFF_GRACE`].
    pub back_off_violations: Vec<String>,
    /// REST ids of items deleted by [`Fault::vanish_after_list`].
    pub vanished: Vec<String>,
    pub log: Vec<RequestRecord>,
}

impl Stats {
    pub fn route(&self, name: &str) -> u64 {
        self.routes.get(name).copied().unwrap_or(0)
    }

    /// The most requests ever in flight for any one mailbox.
    pub fn max_in_flight_any_mailbox(&self) -> usize {
        self.max_in_flight_per_mailbox
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

#[derive(Default)]
struct Live {
    in_flight: usize,
    per_mailbox: HashMap<String, usize>,
    /// mailbox → the latest demanded pause.
    pauses: HashMap<String, BackOff>,
}

struct FaultState {
    fault: Fault,
    requests: u64,
}

struct Inner {
    store: RwLock<DataSet>,
    options: Options,
    /// `http://127.0.0.1:PORT`
    origin: String,
    fault: Mutex<FaultState>,
    live: Mutex<Live>,
    stats: Mutex<Stats>,
    request_seq: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not take every later assertion down with it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake Graph. Dropping it stops the server and joins its threads.
pub struct FakeGraph {
    /// Dropped first (fields drop in declaration order): closes the connections and joins
    /// their threads.
    http: HttpServer,
    inner: Arc<Inner>,
}

impl FakeGraph {
    /// Serves `data` on `127.0.0.1` on a free port.
    pub fn start(data: DataSet, options: Options) -> io::Result<FakeGraph> {
        // The origin is known only once bound: the handler finds the state in this slot, and
        // closes connections that come before it is filled.
        let slot: Arc<Mutex<Option<Arc<Inner>>>> = Arc::default();
        let handler_slot = Arc::clone(&slot);
        let http = HttpServer::start(Arc::new(move |request: &HttpRequest| {
            let inner = lock(&handler_slot).clone()?;
            Some(serve(&inner, request))
        }))?;
        let port = http.addr().port();
        let inner = Arc::new(Inner {
            store: RwLock::new(data),
            options,
            origin: format!("http://127.0.0.1:{port}"),
            fault: Mutex::new(FaultState {
                fault: Fault::default(),
                requests: 0,
            }),
            live: Mutex::new(Live::default()),
            stats: Mutex::new(Stats::default()),
            request_seq: AtomicU64::new(0),
        });
        *lock(&slot) = Some(inner.clone());
        Ok(FakeGraph { http, inner })
    }

    /// `http://127.0.0.1:PORT/v1.0`, the `graph_endpoint` to configure.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1.0", self.http.addr().port())
    }

    /// `http://127.0.0.1:PORT/.default`: the scope tokens must be issued for.
    pub fn scope(&self) -> String {
        format!("http://127.0.0.1:{}/.default", self.http.addr().port())
    }

    /// Snapshot of the current data (items deleted meanwhile are gone).
    pub fn data(&self) -> DataSet {
        read(&self.inner.store).clone()
    }

    /// New mail arrives while running: `folder_id` is the EWS id of the folder. Keeps
    /// `item.id` when it is set and unused, otherwise assigns one; returns the (EWS) id.
    /// Panics on an unknown mailbox or folder.
    pub fn add_item(&self, mailbox: &str, folder_id: &str, mut item: Item) -> String {
        let mut data = write(&self.inner.store);
        let mb = mailbox_index(&data, mailbox)
            .unwrap_or_else(|| panic!("add_item: unknown mailbox {mailbox}"));
        let fi = data.mailboxes[mb]
            .folders
            .iter()
            .position(|f| f.id == folder_id)
            .unwrap_or_else(|| panic!("add_item: folder {folder_id} is not in {mailbox}"));
        let taken = |id: &str| {
            data.mailboxes[mb]
                .folders
                .iter()
                .any(|f| f.items.iter().any(|i| i.id == id))
        };
        if item.id.is_empty() || taken(&item.id) {
            let serial = data.mailboxes[mb]
                .folders
                .iter()
                .flat_map(|f| &f.items)
                .filter_map(|i| ids::decode(&i.id).map(|d| d.serial))
                .max()
                .unwrap_or(0)
                + 1;
            item.id = ids::encode(IdKind::Item, mb as u16, fi as u16, serial);
            item.change_key = ids::change_key(IdKind::Item, mb as u16, serial, 1);
        }
        let id = item.id.clone();
        data.mailboxes[mb].folders[fi].items.push(item);
        id
    }

    /// Deletes an item (EWS or REST id) from its folder and from search folders. Returns
    /// whether it existed.
    pub fn delete_item(&self, mailbox: &str, id: &str) -> bool {
        let mut data = write(&self.inner.store);
        match mailbox_index(&data, mailbox) {
            Some(mb) => delete(&mut data, mb, &ews_id(id)),
            None => false,
        }
    }

    /// Replaces the fault injection settings and restarts the request count.
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.inner.fault) = FaultState { fault, requests: 0 };
    }

    pub fn stats(&self) -> Stats {
        lock(&self.inner.stats).clone()
    }

    pub fn reset_stats(&self) {
        *lock(&self.inner.stats) = Stats::default();
    }
}

fn read(store: &RwLock<DataSet>) -> std::sync::RwLockReadGuard<'_, DataSet> {
    store.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(store: &RwLock<DataSet>) -> std::sync::RwLockWriteGuard<'_, DataSet> {
    store.write().unwrap_or_else(PoisonError::into_inner)
}

fn mailbox_index(data: &DataSet, address: &str) -> Option<usize> {
    data.mailboxes
        .iter()
        .position(|m| m.address.eq_ignore_ascii_case(address.trim()))
}

fn delete(data: &mut DataSet, mb: usize, ews: &str) -> bool {
    let mut found = false;
    for folder in &mut data.mailboxes[mb].folders {
        let before = folder.items.len();
        folder.items.retain(|i| i.id != ews);
        found |= folder.items.len() != before;
    }
    found
}

/// msgfolderroot's REST id in mailbox `mb`.
fn root_id(mb: usize) -> String {
    rest_id(&ids::encode(
        IdKind::Folder,
        mb as u16,
        ids::MSGFOLDERROOT,
        0,
    ))
}

/// When a demanded pause ends: seconds count from when the answer leaves, an HTTP date is a
/// fixed moment.
#[derive(Clone, Copy, Debug)]
enum PauseEnd {
    After(Duration),
    At(SystemTime),
}

/// An answer before it goes on the wire.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    /// A pause this answer demands: (mailbox, when it ends, Retry-After as sent). Recorded
    /// when the answer leaves, so the latency does not eat into the grace period.
    pause: Option<(String, PauseEnd, String)>,
}

impl Reply {
    fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8",
            body: serde_json::to_vec(value).unwrap_or_default(),
            headers: Vec::new(),
            pause: None,
        }
    }

    fn error(status: u16, code: &str, message: &str, request_id: &str) -> Reply {
        Reply::json(status, &render::error(code, message, request_id))
    }

    fn rejection(rejection: &Rejection, request_id: &str) -> Reply {
        Reply::error(
            rejection.status,
            rejection.code,
            &rejection.message,
            request_id,
        )
    }
}

fn serve(inner: &Inner, request: &HttpRequest) -> HttpResponse {
    let reply = handle(inner, request);
    let mut headers = vec![
        ("Content-Type".to_owned(), reply.content_type.to_owned()),
        ("Cache-Control".to_owned(), "no-cache".to_owned()),
    ];
    headers.extend(
        reply
            .headers
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value)),
    );
    HttpResponse {
        status: reply.status,
        headers,
        body: reply.body,
    }
}

/// The mailbox a request is for: the segment after `/users/`.
fn mailbox_of(segments: &[String]) -> Option<String> {
    match segments {
        [version, users, mailbox, ..] if version == "v1.0" && users == "users" => {
            Some(mailbox.to_ascii_lowercase())
        }
        _ => None,
    }
}

fn handle(inner: &Inner, request: &HttpRequest) -> Reply {
    let method = request.method.as_str();
    let target = request.target.as_str();
    let authorization = request.header("Authorization");
    let seq = inner.request_seq.fetch_add(1, Ordering::Relaxed) + 1;
    let request_id = format!("00000000-0000-4000-8000-{seq:012x}");
    let arrived = Instant::now();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| odata::percent_decode(s, false))
        .collect();
    let mailbox = mailbox_of(&segments);

    // Concurrency and back-off bookkeeping, before anything can answer.
    let in_flight_for_mailbox = {
        let mut live = lock(&inner.live);
        live.in_flight += 1;
        let total = live.in_flight;
        let mine = match &mailbox {
            Some(m) => {
                let count = live.per_mailbox.entry(m.clone()).or_insert(0);
                *count += 1;
                let count = *count;
                if let Some(pause) = live.pauses.get(m)
                    && arrived < pause.until
                    && (pause.conn_id == request.conn_id
                        || arrived > pause.sent_at + BACK_OFF_GRACE)
                {
                    lock(&inner.stats).back_off_violations.push(format!(
                        "{m}: {target} arrived {} ms into a pause of {} ms ({} connection)",
                        (arrived - pause.sent_at).as_millis(),
                        (pause.until - pause.sent_at).as_millis(),
                        if pause.conn_id == request.conn_id {
                            "same"
                        } else {
                            "another"
                        }
                    ));
                }
                count
            }
            None => 0,
        };
        let mut stats = lock(&inner.stats);
        stats.requests += 1;
        stats.max_in_flight = stats.max_in_flight.max(total);
        if let Some(m) = &mailbox {
            let max = stats
                .max_in_flight_per_mailbox
                .entry(m.clone())
                .or_insert(0);
            *max = (*max).max(mine);
        }
        mine
    };

    let mut reply = answer(
        inner,
        method,
        path,
        query,
        &segments,
        mailbox.as_deref(),
        authorization,
        in_flight_for_mailbox,
        &request_id,
    );
    reply.headers.push(("request-id", request_id.clone()));
    reply.headers.push(("client-request-id", request_id));
    if !inner.options.latency.is_zero() {
        std::thread::sleep(inner.options.latency);
    }
    if let Some((mailbox, end, retry_after)) = reply.pause.take() {
        let wait = match end {
            PauseEnd::After(wait) => wait,
            PauseEnd::At(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        };
        let now = Instant::now();
        let pause = BackOff {
            mailbox: mailbox.clone(),
            sent_at: now,
            until: now + wait,
            retry_after,
            conn_id: request.conn_id,
        };
        lock(&inner.live).pauses.insert(mailbox, pause.clone());
        lock(&inner.stats).back_offs.push(pause);
    }

    // Out of flight before the answer leaves: a client cannot send its next request for the
    // mailbox before it has read this one, so the count never overstates its concurrency.
    {
        let mut live = lock(&inner.live);
        live.in_flight = live.in_flight.saturating_sub(1);
        if let Some(m) = &mailbox
            && let Some(count) = live.per_mailbox.get_mut(m)
        {
            *count = count.saturating_sub(1);
        }
    }
    let mut stats = lock(&inner.stats);
    if stats.log.len() >= MAX_RECORDS {
        stats.log.remove(0);
    }
    stats.log.push(RequestRecord {
        at: arrived,
        mailbox,
        target: target.to_owned(),
        status: reply.status,
        in_flight_for_mailbox,
        conn_id: request.conn_id,
        peer_port: request.peer.port(),
    });
    reply
}

#[allow(clippy::too_many_arguments)]
fn answer(
    inner: &Inner,
    method: &str,
    path: &str,
    query: &str,
    segments: &[String],
    mailbox: Option<&str>,
    authorization: Option<&str>,
    in_flight_for_mailbox: usize,
    request_id: &str,
) -> Reply {
    if let Some(login) = &inner.options.login {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim);
        let scope = format!("{}/.default", inner.origin);
        let valid = token.is_some_and(|t| login.is_valid_token(t, &scope));
        if !valid {
            lock(&inner.stats).unauthorized += 1;
            let (code, message) = match token {
                None => ("InvalidAuthenticationToken", "Access token is empty."),
                Some(_) => (
                    "InvalidAuthenticationToken",
                    "Access token has expired or is not yet valid.",
                ),
            };
            let mut reply = Reply::error(401, code, message, request_id);
            reply.headers.push((
                "WWW-Authenticate",
                "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\", error=\"invalid_token\", error_description=\"The access token is missing, expired or not issued for this resource\"".to_owned(),
            ));
            return reply;
        }
    }
    if method != "GET" {
        return Reply::error(
            405,
            "Request_BadRequest",
            "Specified HTTP method is not allowed for the request target.",
            request_id,
        );
    }
    if let Some(mailbox) = mailbox
        && let Some(reply) = inject(inner, mailbox, in_flight_for_mailbox, request_id)
    {
        return reply;
    }
    let params = odata::parse_query(query);
    let mut vanish = Vec::new();
    let result = route(inner, path, query, segments, &params, &mut vanish);
    // Deleted right after the client saw them: its fetch finds nothing.
    if !vanish.is_empty() {
        let mut data = write(&inner.store);
        for (mb, id) in vanish {
            if delete(&mut data, mb, &id) {
                lock(&inner.stats).vanished.push(rest_id(&id));
            }
        }
    }
    match result {
        Ok(reply) => reply,
        Err(rejection) => {
            if rejection.status == 400 {
                lock(&inner.stats).rejected.push(format!(
                    "{}: {} ({path}?{query})",
                    rejection.code, rejection.message
                ));
            }
            Reply::rejection(&rejection, request_id)
        }
    }
}

/// Decides whether this request gets an injected fault, and records the pause it demands.
fn inject(inner: &Inner, mailbox: &str, in_flight: usize, request_id: &str) -> Option<Reply> {
    let (fault, n) = {
        let mut state = lock(&inner.fault);
        state.requests += 1;
        (state.fault.clone(), state.requests)
    };
    let every = |nth: Option<u32>| nth.is_some_and(|k| k > 0 && n % u64::from(k) == 0);
    let listed = |list: &[String]| list.iter().any(|m| m.eq_ignore_ascii_case(mailbox));
    // (status, code, message, whether it may carry Retry-After)
    let (status, code, message, may_wait) = if listed(&fault.mailbox_not_enabled) {
        (
            404,
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            false,
        )
    } else if listed(&fault.access_denied) {
        (
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
            false,
        )
    } else if fault
        .mailbox_concurrency_limit
        .is_some_and(|limit| in_flight > limit)
    {
        (
            429,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
            true,
        )
    } else if every(fault.throttle_every_nth) {
        (429, "TooManyRequests", "Please retry again later.", true)
    } else if every(fault.unavailable_every_nth) {
        (
            503,
            "MailboxInfoStale",
            "Target resource is currently on backend 'Unknown'",
            true,
        )
    } else if every(fault.gateway_timeout_every_nth) {
        (504, "UnknownError", "", false)
    } else {
        return None;
    };
    let mut reply = Reply::error(status, code, message, request_id);
    if status == 504 {
        // Gateways answer with their own page, not Graph's JSON.
        reply.content_type = "text/html";
        reply.body = b"<html><body><h1>504 Gateway Time-out</h1></body></html>".to_vec();
    }
    let retry_after = match (&fault.retry_after, may_wait, code) {
        (Some(value), true, _) => Some(value.clone()),
        (None, true, "ApplicationThrottled") => Some(RetryAfter::Value("1".into())),
        _ => None,
    };
    if let Some(retry_after) = retry_after {
        let (text, end) = match retry_after {
            RetryAfter::Value(text) => {
                let wait = text
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64)
                    .unwrap_or(Duration::ZERO);
                (text, PauseEnd::After(wait))
            }
            RetryAfter::HttpDateIn(after) => {
                let (text, at) = http_date_in(after);
                (text, PauseEnd::At(at))
            }
        };
        reply.headers.push(("Retry-After", text.clone()));
        reply.pause = Some((mailbox.to_owned(), end, text));
    }
    lock(&inner.stats)
        .injected
        .push(format!("{status} {code} {mailbox}"));
    Some(reply)
}

/// An HTTP date at least `after` from now (whole seconds), and that moment.
fn http_date_in(after: Duration) -> (String, SystemTime) {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let target_secs = (since_epoch + after).as_secs() + 1;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(target_secs);
    let when = time::OffsetDateTime::from_unix_timestamp(target_secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    (when.format(&format).unwrap_or_default(), at)
}

/// Which folder a path segment names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FolderRef {
    Root,
    Folder(usize),
}

/// Well-known folder names Graph accepts in place of ids, with the display names of the
/// generated mailboxes.
const WELL_KNOWN: &[(&str, &str)] = &[
    ("inbox", "Inbox"),
    ("sentitems", "Sent Items"),
    ("drafts", "Drafts"),
    ("deleteditems", "Deleted Items"),
    ("junkemail", "Junk Email"),
    ("outbox", "Outbox"),
    ("archive", "Archive"),
];

fn resolve_folder(data: &DataSet, mb: usize, segment: &str) -> Option<FolderRef> {
    if segment.eq_ignore_ascii_case("msgfolderroot") || segment == root_id(mb) {
        return Some(FolderRef::Root);
    }
    let folders = &data.mailboxes[mb].folders;
    if let Some((_, name)) = WELL_KNOWN
        .iter()
        .find(|(wk, _)| wk.eq_ignore_ascii_case(segment))
    {
        return folders
            .iter()
            .position(|f| f.parent_id.is_none() && f.display_name == *name)
            .map(FolderRef::Folder);
    }
    let ews = ews_id(segment);
    folders
        .iter()
        .position(|f| f.id == ews)
        .map(FolderRef::Folder)
}

/// Whether `mailFolders` lists a folder: mail folders and search folders (calendars, contacts
/// and tasks have their own endpoints); hidden ones only when asked.
fn is_listed(folder: &fake_exchange::Folder, include_hidden: bool) -> bool {
    let mail = match folder.kind {
        FolderKind::Folder => is_mail_class(folder.folder_class.as_deref()),
        FolderKind::Search => true,
        _ => false,
    };
    mail && (include_hidden || !folder.hidden)
}

fn children(data: &DataSet, mb: usize, parent: FolderRef, include_hidden: bool) -> Vec<usize> {
    let parent_id = match parent {
        FolderRef::Root => None,
        FolderRef::Folder(fi) => Some(data.mailboxes[mb].folders[fi].id.as_str()),
    };
    data.mailboxes[mb]
        .folders
        .iter()
        .enumerate()
        .filter(|(_, f)| f.parent_id.as_deref() == parent_id && is_listed(f, include_hidden))
        .map(|(i, _)| i)
        .collect()
}

fn folder_rest_id(data: &DataSet, mb: usize, folder: FolderRef) -> String {
    match folder {
        FolderRef::Root => root_id(mb),
        FolderRef::Folder(fi) => rest_id(&data.mailboxes[mb].folders[fi].id),
    }
}

fn folder_view(data: &DataSet, mb: usize, fi: usize) -> FolderView<'_> {
    let folder = &data.mailboxes[mb].folders[fi];
    let parent_rest_id = match &folder.parent_id {
        None => root_id(mb),
        Some(p) => rest_id(p),
    };
    FolderView {
        folder,
        parent_rest_id,
        child_count: children(data, mb, FolderRef::Folder(fi), true).len(),
    }
}

fn bump(inner: &Inner, route: &str) {
    *lock(&inner.stats)
        .routes
        .entry(route.to_owned())
        .or_insert(0) += 1;
}

fn top_of(params: &[(String, String)], max_page: usize) -> Result<usize, Rejection> {
    let top = match odata::option(params, "$top") {
        None => DEFAULT_PAGE,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_TOP).contains(&n) => n,
            Ok(n) if n > MAX_TOP => {
                return Err(Rejection::bad_request(
                    "ErrorInvalidRequest",
                    format!(
                        "The limit of '{MAX_TOP}' for Top query has been exceeded. The value from the incoming request is '{n}'."
                    ),
                ));
            }
            _ => {
                return Err(Rejection::bad_request(
                    "BadRequest",
                    format!("Invalid value '{text}' for $top."),
                ));
            }
        },
    };
    Ok(top.min(max_page.max(1)))
}

/// The request's own URL with one paging option replaced: what `@odata.nextLink` carries.
fn next_link(inner: &Inner, path: &str, query: &str, option: &str, value: &str) -> String {
    let mut kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            !odata::percent_decode(name, true).eq_ignore_ascii_case(option)
        })
        .collect();
    let paging = format!("%24{}={value}", option.trim_start_matches('$'));
    kept.push(&paging);
    format!("{}{path}?{}", inner.origin, kept.join("&"))
}

fn route(
    inner: &Inner,
    path: &str,
    query: &str,
    segments: &[String],
    params: &[(String, String)],
    vanish: &mut Vec<(usize, String)>,
) -> Result<Reply, Rejection> {
    let not_found_segment = |s: &str| {
        Rejection::bad_request(
            "BadRequest",
            format!("Resource not found for the segment '{s}'."),
        )
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let ["v1.0", "users", user, rest @ ..] = segments.as_slice() else {
        return Err(Rejection {
            status: 404,
            code: "ResourceNotFound",
            message: "Resource could not be discovered.".into(),
        });
    };
    if params
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("$search"))
    {
        return Err(Rejection::bad_request(
            "BadRequest",
            "The fake does not implement $search.",
        ));
    }
    let rest: Vec<&str> = rest.to_vec();
    let data = read(&inner.store);
    let Some(mb) = mailbox_index(&data, user) else {
        return Err(Rejection {
            status: 404,
            code: "ErrorInvalidUser",
            message: format!("The requested user '{user}' is invalid."),
        });
    };
    let context_base = format!("{}/v1.0", inner.origin);
    match rest.as_slice() {
        ["mailFolders"] => {
            bump(inner, "mailFolders");
            list_folders(inner, &data, mb, FolderRef::Root, path, query, params, user)
        }
        ["mailFolders", folder] => {
            bump(inner, "folder");
            let target = resolve_folder(&data, mb, folder).ok_or_else(item_not_found)?;
            let selected = select(
                params,
                render::FOLDER_PROPERTIES,
                "microsoft.graph.mailFolder",
            )?;
            let value = match target {
                FolderRef::Root => render::root_folder(
                    &root_id(mb),
                    children(&data, mb, FolderRef::Root, true).len(),
                    selected.as_deref(),
                ),
                FolderRef::Folder(fi) => {
                    render::folder(&folder_view(&data, mb, fi), selected.as_deref())
                }
            };
            Ok(Reply::json(
                200,
                &with_context(value, &context_base, user, "mailFolders/$entity"),
            ))
        }
        ["mailFolders", folder, "childFolders"] => {
            bump(inner, "childFolders");
            let target = resolve_folder(&data, mb, folder).ok_or_else(item_not_found)?;
            list_folders(inner, &data, mb, target, path, query, params, user)
        }
        ["mailFolders", folder, "messages"] => {
            bump(inner, "messages");
            let target = resolve_folder(&data, mb, folder).ok_or_else(item_not_found)?;
            let (reply, shown) =
                list_messages(inner, &data, mb, target, path, query, params, user)?;
            let doomed = &lock(&inner.fault).fault.vanish_after_list;
            vanish.extend(
                shown
                    .into_iter()
                    .filter(|id| doomed.iter().any(|v| ews_id(v) == *id))
                    .map(|id| (mb, id)),
            );
            Ok(reply)
        }
        ["mailFolders", _, "messages", message] | ["messages", message] => {
            bump(inner, "message");
            let (fi, ii) = find_item(&data, mb, message).ok_or_else(item_not_found)?;
            let selected = select(
                params,
                render::MESSAGE_PROPERTIES,
                "microsoft.graph.message",
            )?;
            let expand = match odata::option(params, "$expand") {
                Some(text) => odata::parse_expand(text)?,
                None => odata::Expand::default(),
            };
            let folder = &data.mailboxes[mb].folders[fi];
            let ctx = MessageContext {
                folder_rest_id: &rest_id(&folder.id),
                in_drafts: folder.display_name == "Drafts",
                base: &context_base,
            };
            let value = render::message(&folder.items[ii], &ctx, selected.as_deref(), &expand);
            Ok(Reply::json(
                200,
                &with_context(value, &context_base, user, "messages/$entity"),
            ))
        }
        ["mailFolders", _, "messages", message, "$value"] | ["messages", message, "$value"] => {
            bump(inner, "$value");
            let (fi, ii) = find_item(&data, mb, message).ok_or_else(item_not_found)?;
            Ok(Reply {
                status: 200,
                content_type: "text/plain",
                body: data.mailboxes[mb].folders[fi].items[ii].mime.clone(),
                headers: Vec::new(),
                pause: None,
            })
        }
        ["messages", message, "attachments"] => {
            bump(inner, "attachments");
            let (fi, ii) = find_item(&data, mb, message).ok_or_else(item_not_found)?;
            let selected = match odata::option(params, "$select") {
                Some(text) => odata::parse_select(
                    text,
                    odata::ATTACHMENT_PROPERTIES,
                    "microsoft.graph.attachment",
                )?,
                None => Vec::new(),
            };
            let item = &data.mailboxes[mb].folders[fi].items[ii];
            let value: Vec<Value> = item
                .attachments
                .iter()
                .enumerate()
                .map(|(i, a)| render::attachment(item, i, a, &selected))
                .collect();
            Ok(Reply::json(
                200,
                &json!({
                    "@odata.context": format!("{context_base}/$metadata#users('{user}')/messages('{message}')/attachments"),
                    "value": value
                }),
            ))
        }
        [first, ..] => Err(not_found_segment(first)),
        [] => Err(not_found_segment(user)),
    }
}

fn item_not_found() -> Rejection {
    Rejection {
        status: 404,
        code: "ErrorItemNotFound",
        message: "The specified object was not found in the store., The process failed to get the correct properties.".into(),
    }
}

fn with_context(mut value: Value, base: &str, user: &str, what: &str) -> Value {
    if let Value::Object(map) = &mut value {
        let mut out = serde_json::Map::new();
        out.insert(
            "@odata.context".into(),
            json!(format!("{base}/$metadata#users('{user}')/{what}")),
        );
        out.extend(std::mem::take(map));
        *map = out;
    }
    value
}

fn select(
    params: &[(String, String)],
    known: &[&'static str],
    type_name: &str,
) -> Result<Option<Vec<&'static str>>, Rejection> {
    odata::option(params, "$select")
        .map(|text| odata::parse_select(text, known, type_name))
        .transpose()
}

fn find_item(data: &DataSet, mb: usize, rest: &str) -> Option<(usize, usize)> {
    let ews = ews_id(rest);
    data.mailboxes[mb]
        .folders
        .iter()
        .enumerate()
        .filter(|(_, f)| f.kind != FolderKind::Search)
        .find_map(|(fi, f)| f.items.iter().position(|i| i.id == ews).map(|ii| (fi, ii)))
}

#[allow(clippy::too_many_arguments)]
fn list_folders(
    inner: &Inner,
    data: &DataSet,
    mb: usize,
    parent: FolderRef,
    path: &str,
    query: &str,
    params: &[(String, String)],
    user: &str,
) -> Result<Reply, Rejection> {
    let selected = select(
        params,
        render::FOLDER_PROPERTIES,
        "microsoft.graph.mailFolder",
    )?;
    let include_hidden = odata::option(params, "includeHiddenFolders")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let top = top_of(params, inner.options.max_page)?;
    let skip = match odata::option(params, "$skiptoken") {
        None => 0,
        Some(token) => token
            .strip_prefix("FolderOffset")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                Rejection::bad_request("BadRequest", format!("Invalid skip token '{token}'."))
            })?,
    };
    let all = children(data, mb, parent, include_hidden);
    let page: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(top)
        .map(|&fi| render::folder(&folder_view(data, mb, fi), selected.as_deref()))
        .collect();
    let mut body = serde_json::Map::new();
    let what = match parent {
        FolderRef::Root => "mailFolders".to_owned(),
        FolderRef::Folder(_) => format!(
            "mailFolders('{}')/childFolders",
            folder_rest_id(data, mb, parent)
        ),
    };
    body.insert(
        "@odata.context".into(),
        json!(format!(
            "{}/v1.0/$metadata#users('{user}')/{what}",
            inner.origin
        )),
    );
    body.insert("value".into(), Value::Array(page));
    if skip + top < all.len() {
        body.insert(
            "@odata.nextLink".into(),
            json!(next_link(
                inner,
                path,
                query,
                "$skiptoken",
                &format!("FolderOffset{}", skip + top)
            )),
        );
    }
    Ok(Reply::json(200, &Value::Object(body)))
}

#[allow(clippy::too_many_arguments)]
fn list_messages(
    inner: &Inner,
    data: &DataSet,
    mb: usize,
    folder: FolderRef,
    path: &str,
    query: &str,
    params: &[(String, String)],
    user: &str,
) -> Result<(Reply, Vec<String>), Rejection> {
    let selected = select(
        params,
        render::MESSAGE_PROPERTIES,
        "microsoft.graph.message",
    )?;
    let expand = match odata::option(params, "$expand") {
        Some(text) => odata::parse_expand(text)?,
        None => odata::Expand::default(),
    };
    let filter = match odata::option(params, "$filter") {
        Some(text) => odata::parse_filter(text)?,
        None => Vec::new(),
    };
    let orderby = match odata::option(params, "$orderby") {
        Some(text) => odata::parse_orderby(text)?,
        None => Vec::new(),
    };
    odata::check_filter_and_order(&filter, &orderby)?;
    let top = top_of(params, inner.options.max_page)?;
    let skip = match odata::option(params, "$skip") {
        None => 0,
        Some(text) => text.trim().parse::<usize>().map_err(|_| {
            Rejection::bad_request("BadRequest", format!("Invalid value '{text}' for $skip."))
        })?,
    };
    let FolderRef::Folder(fi) = folder else {
        // msgfolderroot holds no mail.
        return Ok((
            Reply::json(
                200,
                &json!({"@odata.context": format!("{}/v1.0/$metadata#users('{user}')/messages", inner.origin), "value": []}),
            ),
            Vec::new(),
        ));
    };
    let date_of = |item: &Item, property: &str| -> Option<time::OffsetDateTime> {
        if property == "sentDateTime" {
            item.sent
        } else {
            Some(item.received)
        }
    };
    let folder_items = &data.mailboxes[mb].folders[fi].items;
    let mut matching: Vec<usize> = (0..folder_items.len())
        .filter(|&i| {
            filter.iter().all(|c| {
                date_of(&folder_items[i], &c.property).is_some_and(|t| c.op.holds(t, c.value))
            })
        })
        .collect();
    let keys: Vec<(String, bool)> = if orderby.is_empty() {
        // Graph's default order for messages: newest first.
        vec![("receivedDateTime".to_owned(), true)]
    } else {
        orderby
    };
    matching.sort_by(|&a, &b| {
        for (property, descending) in &keys {
            let (x, y) = (
                date_of(&folder_items[a], property),
                date_of(&folder_items[b], property),
            );
            let order = if *descending { y.cmp(&x) } else { x.cmp(&y) };
            if order != std::cmp::Ordering::Equal {
                return order;
            }
        }
        folder_items[a].id.cmp(&folder_items[b].id)
    });
    let folder_ref = &data.mailboxes[mb].folders[fi];
    let folder_rest = rest_id(&folder_ref.id);
    let context_base = format!("{}/v1.0", inner.origin);
    let ctx = MessageContext {
        folder_rest_id: &folder_rest,
        in_drafts: folder_ref.display_name == "Drafts",
        base: &context_base,
    };
    let page_indexes: Vec<usize> = matching.iter().skip(skip).take(top).copied().collect();
    let page: Vec<Value> = page_indexes
        .iter()
        .map(|&i| render::message(&folder_ref.items[i], &ctx, selected.as_deref(), &expand))
        .collect();
    let shown: Vec<String> = page_indexes
        .iter()
        .map(|&i| folder_ref.items[i].id.clone())
        .collect();
    let mut body = serde_json::Map::new();
    let selection = selected
        .as_ref()
        .map(|s| format!("({})", s.join(",")))
        .unwrap_or_default();
    body.insert(
        "@odata.context".into(),
        json!(format!(
            "{context_base}/$metadata#users('{user}')/mailFolders('{folder_rest}')/messages{selection}"
        )),
    );
    body.insert("value".into(), Value::Array(page));
    if skip + top < matching.len() {
        body.insert(
            "@odata.nextLink".into(),
            json!(next_link(
                inner,
                path,
                query,
                "$skip",
                &(skip + top).to_string()
            )),
        );
    }
    Ok((Reply::json(200, &Value::Object(body)), shown))
}
