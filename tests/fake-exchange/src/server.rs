//! The fake server: options, fault injection, statistics, NTLM connection authentication, and
//! the request pipeline (path → auth → injected HTTP-level faults → SOAP parse → version check
//! → injected message-level faults → operation (with item-level faults) → response, cut short
//! when a truncated response is due).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::http::{Counters, Handler, HttpRequest, HttpResponse, HttpServer, Reply};
use crate::model::{DataSet, Item};
use crate::ntlm::{self, Challenge};
use crate::ops::{self, AccessStyle, Caller};
use crate::request::{self, Op};
use crate::schema::SERVER_VERSIONS;
use crate::store::{self, Store, Target};
use crate::xml::{MsgError, SoapFault};

/// The account NTLM accepts.
#[derive(Clone, Debug)]
pub struct NtlmUser {
    pub domain: String,
    pub user: String,
    pub password: String,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Require NTLM (per TCP connection, like IIS) for this account.
    pub ntlm: Option<NtlmUser>,
    /// Added to every response.
    pub latency: Duration,
    /// Handler threads.
    pub threads: usize,
    /// Server cap on MaxEntriesReturned (EWSFindCountLimit); larger pages come back partial.
    pub max_find_page: usize,
    /// Benchmarks: answer `GET /_bench/stats` (no authentication, not counted) with the request
    /// counters as JSON, so a harness can take per-run deltas of one long-lived server.
    pub bench_stats: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            ntlm: None,
            latency: Duration::ZERO,
            threads: 16,
            max_find_page: 1000,
            bench_stats: false,
        }
    }
}

/// Fault injection, everything off by default. "Every Nth" counts requests that passed
/// authentication, from the last [`FakeExchange::set_fault`] call. When several faults hit the
/// same request the first of this list wins: drop, HTTP 503, HTML 500,
/// ErrorExceededConnectionCount, ErrorServerBusy fault, truncated response, ErrorServerBusy
/// message, inner ErrorServerBusy message. After parsing, an unsupported RequestServerVersion
/// fault comes before the message-level faults; the item-level faults (vanish, corrupt,
/// timeout) apply to GetItem requests that got this far.
#[derive(Clone, Debug, Default)]
pub struct Fault {
    /// HTTP 500 + SOAP fault ErrorServerBusy with `BackOffMilliseconds` = `busy_back_off_ms`.
    pub busy_every_nth: Option<u32>,
    /// The back-off of every kind of ErrorServerBusy.
    pub busy_back_off_ms: u64,
    /// Close the connection without answering.
    pub drop_every_nth: Option<u32>,
    /// Write characters that XML 1.0 forbids (U+001A, ...) as `&#x1A;` like real Exchange;
    /// when off they are left out.
    pub illegal_char_refs: bool,
    /// HTTP 503 with `Retry-After: 1` (and `Connection: close`, like HTTP.sys).
    pub http_503_every_nth: Option<u32>,
    /// Item ids that FindItem still lists but GetItem answers with a per-message
    /// ErrorItemNotFound: deleted between the listing and the fetch.
    pub vanish_on_get: Vec<String>,
    /// Item ids whose message is ErrorItemCorrupt when fetched together with other items (the
    /// others succeed); a GetItem of that item alone succeeds.
    pub corrupt_in_batch: Vec<String>,
    /// Item ids whose MIME cannot be produced: ErrorMimeContentConversionFailed whenever a
    /// GetItem asks for their MIME content, alone or in a batch.
    pub corrupt_always: Vec<String>,
    /// The next N SOAP responses are cut in the middle of the body and sent with the
    /// Content-Length of the cut body (status unchanged, so HTTP 200 for a normal answer), as a
    /// proxy truncating a response would.
    pub malformed_responses: u32,
    /// A GetItem with more than N ItemIds answers every message with ErrorTimeoutExpired
    /// (ResponseClass Error, HTTP 200), as Exchange does when a batch runs out of time.
    pub timeout_above_batch: Option<usize>,
    /// Requests whose RequestServerVersion is newer than this (Exchange2007 < Exchange2007_SP1
    /// < Exchange2010 < Exchange2010_SP1 < Exchange2010_SP2 < Exchange2013 < Exchange2013_SP1 <
    /// Exchange2015 < Exchange2016) get the SOAP fault ErrorInvalidServerVersion (HTTP 500).
    pub newest_server_version: Option<String>,
    /// A request that arrives while N others are in flight (read, not yet answered; simulated
    /// latency and NTLM legs count, refused requests too until answered) gets the SOAP fault
    /// ErrorExceededConnectionCount (HTTP 500, Policy MaxConcurrency, MaxConcurrencyLimit N).
    pub max_connections: Option<usize>,
    /// HTTP 200 whose response messages (one per requested id or folder) are ErrorServerBusy
    /// with `m:MessageXml/t:Value Name="BackOffMilliseconds"` = `busy_back_off_ms`.
    pub busy_in_message_every_nth: Option<u32>,
    /// HTTP 200 whose response messages are ErrorInternalServerError with
    /// InnerErrorResponseCode ErrorServerBusy and BackOffMilliseconds = `busy_back_off_ms`.
    pub inner_busy_every_nth: Option<u32>,
    /// HTTP 500 with ASP.NET's HTML error page ("Server Error in '/EWS' Application."), as IIS
    /// answers when EWS itself falls over under load.
    pub html_500_every_nth: Option<u32>,
    /// Extended properties (by PropertyTag) that FindFolder refuses with a per-message
    /// ErrorInvalidPropertyRequest, as a server that does not expose a MAPI property would.
    pub refused_folder_tags: Vec<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthEventKind {
    /// No credentials: 401 with `WWW-Authenticate: Negotiate` and `NTLM`.
    Challenged,
    /// NEGOTIATE (Type 1) answered with a CHALLENGE (Type 2).
    Negotiated,
    /// AUTHENTICATE (Type 3) accepted.
    Authenticated,
    /// AUTHENTICATE refused (wrong password, unknown user, other connection, malformed).
    Refused,
    /// Request without credentials served on an already authenticated connection.
    Reused,
}

#[derive(Clone, Debug)]
pub struct AuthEvent {
    pub conn_id: u64,
    pub peer_port: u16,
    pub kind: AuthEventKind,
}

/// One processed EWS request: how it addressed its mailbox.
#[derive(Clone, Debug)]
pub struct AccessRecord {
    pub operation: String,
    pub style: Option<AccessStyle>,
    /// The mailbox the request ended up in.
    pub mailbox: Option<String>,
    /// The `X-AnchorMailbox` request header.
    pub anchor_mailbox: Option<String>,
    /// `t:RequestServerVersion/@Version` of the request.
    pub server_version: String,
    pub conn_id: u64,
    pub peer_port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackOffKind {
    /// SOAP fault ErrorServerBusy (HTTP 500), `BackOffMilliseconds` in the fault detail.
    ServerBusy,
    /// HTTP 503 with `Retry-After`.
    Http503,
    /// ErrorServerBusy response messages (HTTP 200), `BackOffMilliseconds` in `m:MessageXml`.
    ServerBusyInMessage,
    /// ErrorInternalServerError messages (HTTP 200) with inner code ErrorServerBusy.
    InnerServerBusy,
}

/// A response that told the client to wait.
#[derive(Clone, Debug)]
pub struct BackOff {
    /// Taken just before the response was written.
    pub sent_at: Instant,
    pub wait: Duration,
    pub kind: BackOffKind,
    pub conn_id: u64,
    pub peer_port: u16,
}

/// When a request (any request, including NTLM legs) arrived.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub at: Instant,
    pub conn_id: u64,
    pub peer_port: u16,
    /// Requests in flight on the server when this one arrived, itself included.
    pub in_flight: usize,
}

/// A request on another connection that arrives this soon after a back-off was demanded is not
/// a violation: the client's other threads may have sent it before the answer that demanded
/// the pause was read. (On the connection that got the answer nothing is excused.)
pub const BACK_OFF_GRACE: Duration = Duration::from_millis(250);

#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Every HTTP request received.
    pub http_requests: u64,
    /// EWS requests processed (after authentication and injected faults), by body element
    /// name (`FindItem`, ...; `(invalid)` when there is none).
    pub operations: BTreeMap<String, u64>,
    /// Most requests in flight at once.
    pub max_concurrent: usize,
    pub ntlm_handshakes: u64,
    pub ntlm_failures: u64,
    /// TCP peer port of every request served as authenticated (the Type 3 leg and later ones).
    pub authenticated_ports: Vec<u16>,
    pub auth_events: Vec<AuthEvent>,
    pub access: Vec<AccessRecord>,
    pub back_offs: Vec<BackOff>,
    pub arrivals: Vec<Arrival>,
    /// `code: reason` of every SOAP fault the server sent.
    pub faults: Vec<String>,
    /// `code: reason` of every injected per-message error (HTTP 200) the server sent.
    pub message_errors: Vec<String>,
    pub dropped_connections: u64,
    /// Number of ItemIds of every GetItem that parsed, in arrival order at the handler.
    pub get_item_batch_sizes: Vec<usize>,
    /// Responses cut short by [`Fault::malformed_responses`].
    pub truncated_responses: u64,
    /// HTML error pages sent by [`Fault::html_500_every_nth`].
    pub html_500s: u64,
}

impl Stats {
    pub fn operation(&self, name: &str) -> u64 {
        self.operations.get(name).copied().unwrap_or(0)
    }

    /// Requests that arrived while a back-off the server had demanded was still running
    /// (after it was sent, before `sent_at + wait`). A back-off demanded on one connection
    /// applies to every connection (a client's pause covers all its threads); only requests
    /// on other connections within [`BACK_OFF_GRACE`] of the demand are excused.
    pub fn back_off_violations(&self) -> Vec<(BackOff, Arrival)> {
        let mut out = Vec::new();
        for b in &self.back_offs {
            let end = b.sent_at + b.wait;
            for a in &self.arrivals {
                let during = a.at > b.sent_at && a.at < end;
                let excused = a.conn_id != b.conn_id && a.at < b.sent_at + BACK_OFF_GRACE;
                if during && !excused {
                    out.push((b.clone(), a.clone()));
                }
            }
        }
        out
    }

    /// How many SOAP faults with this code the server sent.
    pub fn fault_count(&self, code: &str) -> usize {
        self.faults
            .iter()
            .filter(|f| f.split(':').next() == Some(code))
            .count()
    }

    /// How many injected per-message errors with this code the server sent.
    pub fn message_error_count(&self, code: &str) -> usize {
        self.message_errors
            .iter()
            .filter(|f| f.split(':').next() == Some(code))
            .count()
    }
}

/// Per-request records (arrivals, access, auth events) stop growing after this many, so a
/// long benchmark cannot exhaust memory; counters keep counting.
pub const MAX_RECORDS: usize = 1_000_000;

fn push_capped<T>(v: &mut Vec<T>, value: T) {
    if v.len() < MAX_RECORDS {
        v.push(value);
    }
}

#[derive(Default)]
struct ConnAuth {
    pending: Option<(Challenge, &'static str)>,
    user: Option<String>,
}

/// The fault settings and the counters they run on.
#[derive(Default)]
struct FaultState {
    fault: Arc<Fault>,
    /// Requests counted for the "every Nth" faults.
    requests: u64,
    /// Truncated responses still to send.
    malformed_left: u32,
}

/// A per-message error decided before parsing, applied once the operation is known.
#[derive(Clone, Copy)]
enum MessageFault {
    Busy(u64),
    InnerBusy(u64),
}

/// What the fault settings decided for one request.
struct Plan {
    fault: Arc<Fault>,
    /// Answer this instead of processing the request.
    reply: Option<Reply>,
    message_fault: Option<MessageFault>,
    truncate: bool,
}

struct Inner {
    store: RwLock<Store>,
    options: Options,
    fault: Mutex<FaultState>,
    stats: Mutex<Stats>,
    auth: Mutex<HashMap<u64, ConnAuth>>,
    counters: Arc<Counters>,
    request_counter: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fake Exchange server on 127.0.0.1.
pub struct FakeExchange {
    inner: Arc<Inner>,
    http: Option<HttpServer>,
}

impl FakeExchange {
    /// Serve `data` on 127.0.0.1 with a free port.
    pub fn start(data: DataSet, options: Options) -> std::io::Result<FakeExchange> {
        FakeExchange::start_at(data, options, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serve `data` on `addr`.
    pub fn start_at(
        data: DataSet,
        options: Options,
        addr: SocketAddr,
    ) -> std::io::Result<FakeExchange> {
        let counters = Arc::new(Counters::default());
        let threads = options.threads;
        let inner = Arc::new(Inner {
            store: RwLock::new(Store::new(data)),
            options,
            fault: Mutex::new(FaultState::default()),
            stats: Mutex::new(Stats::default()),
            auth: Mutex::new(HashMap::new()),
            counters: Arc::clone(&counters),
            request_counter: Mutex::new(0),
        });
        let http = HttpServer::start(addr, threads, Arc::clone(&inner), counters)?;
        Ok(FakeExchange {
            inner,
            http: Some(http),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.http
            .as_ref()
            .map(HttpServer::addr)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// `http://127.0.0.1:PORT/EWS/Exchange.asmx`
    pub fn url(&self) -> String {
        format!("http://{}/EWS/Exchange.asmx", self.addr())
    }

    /// New mail arrives while running. Keeps `item.id` when it is set and unused, otherwise
    /// assigns one; returns the id. Panics on an unknown mailbox or folder.
    pub fn add_item(&self, mailbox: &str, folder_id: &str, item: Item) -> String {
        self.write_store().add_item(mailbox, folder_id, item)
    }

    /// Remove an item (subsequent GetItem: ErrorItemNotFound). Returns whether it existed.
    pub fn delete_item(&self, mailbox: &str, item_id: &str) -> bool {
        self.write_store().delete_item(mailbox, item_id)
    }

    /// Snapshot of the current data.
    pub fn data(&self) -> DataSet {
        self.read_store().data.clone()
    }

    /// Id of a mailbox's msgfolderroot ("Top of Information Store"), the parent of top-level
    /// folders (`Folder::parent_id == None`).
    pub fn root_folder_id(&self, mailbox: &str) -> Option<String> {
        let store = self.read_store();
        store
            .mailbox_index(mailbox)
            .map(|mb| store::root_id(mb, Target::MsgRoot))
    }

    pub fn stats(&self) -> Stats {
        let mut s = lock(&self.inner.stats).clone();
        s.max_concurrent = self
            .inner
            .counters
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst);
        s
    }

    pub fn reset_stats(&self) {
        *lock(&self.inner.stats) = Stats::default();
        self.inner
            .counters
            .max_in_flight
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Replace the fault injection settings and restart the request count (and the count of
    /// truncated responses still due). Panics on an unknown `newest_server_version`.
    pub fn set_fault(&self, fault: Fault) {
        if let Some(v) = &fault.newest_server_version {
            assert!(
                SERVER_VERSIONS.contains(&v.as_str()),
                "newest_server_version {v:?} is not one of {SERVER_VERSIONS:?}"
            );
        }
        *lock(&self.inner.fault) = FaultState {
            malformed_left: fault.malformed_responses,
            fault: Arc::new(fault),
            requests: 0,
        };
    }

    fn read_store(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.inner.store.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_store(&self) -> std::sync::RwLockWriteGuard<'_, Store> {
        self.inner.store.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FakeExchange {
    fn drop(&mut self) {
        // Stops the accept loop, closes connections and joins every thread.
        drop(self.http.take());
    }
}

fn html(status: u16, title: &str, text: &str) -> HttpResponse {
    let body = format!(
        "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Strict//EN\" \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd\">\r\n<html xmlns=\"http://www.w3.org/1999/xhtml\">\r\n<head>\r\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=iso-8859-1\"/>\r\n<title>{title}</title>\r\n</head>\r\n<body>\r\n<div id=\"header\"><h1>Server Error</h1></div>\r\n<div id=\"content\">\r\n <div class=\"content-container\"><fieldset>\r\n  <h2>{title}</h2>\r\n  <h3>{text}</h3>\r\n </fieldset></div>\r\n</div>\r\n</body>\r\n</html>\r\n"
    );
    HttpResponse {
        status,
        headers: vec![
            ("Content-Type".into(), "text/html".into()),
            ("Server".into(), "Microsoft-IIS/10.0".into()),
            ("X-Powered-By".into(), "ASP.NET".into()),
        ],
        body: body.into_bytes(),
        chunked: false,
        close: false,
    }
}

/// ASP.NET's runtime error page, as IIS serves it when the EWS application fails under load.
fn aspnet_error_500() -> HttpResponse {
    let body = concat!(
        "<!DOCTYPE html>\r\n<html>\r\n    <head>\r\n        <title>Runtime Error</title>\r\n",
        "        <meta name=\"viewport\" content=\"width=device-width\" />\r\n    </head>\r\n\r\n",
        "    <body bgcolor=\"white\">\r\n\r\n",
        "            <span><H1>Server Error in '/EWS' Application.<hr width=100% size=1 color=silver></H1>\r\n\r\n",
        "            <h2> <i>Runtime Error</i> </h2></span>\r\n\r\n",
        "            <font face=\"Arial, Helvetica, Geneva, SunSans-Regular, sans-serif \">\r\n\r\n",
        "            <b> Description: </b>An application error occurred on the server. The current custom error settings for this application prevent the details of the application error from being viewed remotely (for security reasons).\r\n",
        "            <br><br>\r\n\r\n    </body>\r\n</html>\r\n"
    );
    HttpResponse {
        status: 500,
        headers: vec![
            ("Cache-Control".into(), "private".into()),
            ("Content-Type".into(), "text/html; charset=utf-8".into()),
            ("Server".into(), "Microsoft-IIS/10.0".into()),
            ("X-AspNet-Version".into(), "4.0.30319".into()),
            ("X-Powered-By".into(), "ASP.NET".into()),
        ],
        body: body.as_bytes().to_vec(),
        chunked: false,
        close: false,
    }
}

/// Position of a RequestServerVersion value in release order.
fn version_rank(version: &str) -> Option<usize> {
    SERVER_VERSIONS.iter().position(|v| *v == version)
}

fn parse_authorization(value: &str) -> Option<(&'static str, Vec<u8>)> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let scheme = if scheme.eq_ignore_ascii_case("NTLM") {
        "NTLM"
    } else if scheme.eq_ignore_ascii_case("Negotiate") {
        "Negotiate"
    } else {
        return None;
    };
    Some((scheme, STANDARD.decode(token.trim()).ok()?))
}

impl Inner {
    fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }

    fn auth_event(&self, req: &HttpRequest, kind: AuthEventKind) {
        let mut s = self.stats();
        push_capped(
            &mut s.auth_events,
            AuthEvent {
                conn_id: req.conn_id,
                peer_port: req.peer.port(),
                kind,
            },
        );
        match kind {
            AuthEventKind::Authenticated => {
                s.ntlm_handshakes += 1;
                push_capped(&mut s.authenticated_ports, req.peer.port());
            }
            AuthEventKind::Reused => push_capped(&mut s.authenticated_ports, req.peer.port()),
            AuthEventKind::Refused => s.ntlm_failures += 1,
            _ => {}
        }
    }

    fn unauthorized_empty(&self, headers: Vec<(String, String)>) -> Reply {
        let mut h = vec![
            ("Server".to_string(), "Microsoft-IIS/10.0".to_string()),
            ("request-id".to_string(), self.request_id()),
        ];
        h.extend(headers);
        h.push(("X-Powered-By".to_string(), "ASP.NET".to_string()));
        h.push(("X-FEServer".to_string(), ntlm::NB_COMPUTER.to_string()));
        Reply::Respond(HttpResponse {
            status: 401,
            headers: h,
            body: Vec::new(),
            chunked: false,
            close: false,
        })
    }

    fn challenge_headers() -> Vec<(String, String)> {
        vec![
            ("WWW-Authenticate".to_string(), "Negotiate".to_string()),
            ("WWW-Authenticate".to_string(), "NTLM".to_string()),
        ]
    }

    fn refused(&self, req: &HttpRequest) -> Reply {
        self.auth_event(req, AuthEventKind::Refused);
        let mut r = html(
            401,
            "401 - Unauthorized: Access is denied due to invalid credentials.",
            "You do not have permission to view this directory or page using the credentials that you supplied.",
        );
        r.headers.extend(Inner::challenge_headers());
        Reply::Respond(r)
    }

    /// NTLM per connection. `Ok(user)` when the request may proceed.
    fn authenticate(&self, req: &HttpRequest, cfg: &NtlmUser) -> Result<String, Reply> {
        let parsed = req.header("Authorization").and_then(parse_authorization);
        let mut conns = lock(&self.auth);
        let state = conns.entry(req.conn_id).or_default();
        let Some((scheme, token)) = parsed else {
            if let Some(user) = state.user.clone() {
                drop(conns);
                self.auth_event(req, AuthEventKind::Reused);
                return Ok(user);
            }
            drop(conns);
            self.auth_event(req, AuthEventKind::Challenged);
            return Err(self.unauthorized_empty(Inner::challenge_headers()));
        };
        match ntlm::message_type(&token) {
            Some(1) => {
                let challenge = ntlm::challenge(&cfg.domain, &token);
                let header = format!("{scheme} {}", STANDARD.encode(&challenge.message));
                *state = ConnAuth {
                    pending: Some((challenge, scheme)),
                    user: None,
                };
                drop(conns);
                self.auth_event(req, AuthEventKind::Negotiated);
                let mut headers = vec![("WWW-Authenticate".to_string(), header)];
                if scheme == "NTLM" {
                    headers.push(("WWW-Authenticate".to_string(), "Negotiate".to_string()));
                }
                Err(self.unauthorized_empty(headers))
            }
            Some(3) => {
                let pending = state.pending.take();
                let verdict = match (&pending, ntlm::parse_authenticate(&token)) {
                    (Some((challenge, _)), Some(auth)) => {
                        ntlm::verify(&auth, challenge, &cfg.domain, &cfg.user, &cfg.password)
                            .map(|()| format!("{}\\{}", auth.domain, auth.user))
                            .ok()
                    }
                    _ => None,
                };
                match verdict {
                    Some(user) => {
                        state.user = Some(user.clone());
                        drop(conns);
                        self.auth_event(req, AuthEventKind::Authenticated);
                        Ok(user)
                    }
                    None => {
                        state.user = None;
                        drop(conns);
                        Err(self.refused(req))
                    }
                }
            }
            _ => {
                drop(conns);
                Err(self.refused(req))
            }
        }
    }

    fn request_id(&self) -> String {
        let mut b = [0u8; 16];
        if openssl::rand::rand_bytes(&mut b).is_err() {
            let mut n = lock(&self.request_counter);
            *n += 1;
            b[..8].copy_from_slice(&n.to_le_bytes());
        }
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    fn soap_response(
        &self,
        req: &HttpRequest,
        status: u16,
        xml: String,
        authenticated: bool,
    ) -> Reply {
        let mut headers = vec![
            ("Cache-Control".to_string(), "private".to_string()),
            (
                "Content-Type".to_string(),
                "text/xml; charset=utf-8".to_string(),
            ),
            ("Server".to_string(), "Microsoft-IIS/10.0".to_string()),
            ("request-id".to_string(), self.request_id()),
        ];
        if req
            .header("return-client-request-id")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            && let Some(id) = req.header("client-request-id")
        {
            headers.push(("client-request-id".to_string(), id.to_string()));
        }
        headers.push((
            "X-CalculatedBETarget".to_string(),
            format!("{}.{}", ntlm::NB_COMPUTER.to_lowercase(), ntlm::DNS_DOMAIN),
        ));
        headers.push(("X-DiagInfo".to_string(), ntlm::NB_COMPUTER.to_string()));
        headers.push(("X-BEServer".to_string(), ntlm::NB_COMPUTER.to_string()));
        headers.push(("X-AspNet-Version".to_string(), "4.0.30319".to_string()));
        if req.header("Cookie").is_none() {
            let id = self.request_id().replace('-', "");
            headers.push((
                "Set-Cookie".to_string(),
                format!("exchangecookie={id}; path=/"),
            ));
        }
        if authenticated {
            headers.push(("Persistent-Auth".to_string(), "true".to_string()));
        }
        headers.push(("X-Powered-By".to_string(), "ASP.NET".to_string()));
        headers.push(("X-FEServer".to_string(), ntlm::NB_COMPUTER.to_string()));
        Reply::Respond(HttpResponse {
            status,
            headers,
            body: xml.into_bytes(),
            chunked: true,
            close: false,
        })
    }

    fn fault_reply(&self, req: &HttpRequest, fault: &SoapFault, authenticated: bool) -> Reply {
        let line = match &fault.note {
            Some(note) => format!("{}: {note}", fault.code),
            None => format!("{}: {}", fault.code, fault.faultstring),
        };
        push_capped(&mut self.stats().faults, line);
        self.soap_response(req, 500, fault.render(), authenticated)
    }

    fn record_back_off(&self, req: &HttpRequest, kind: BackOffKind, wait: Duration) {
        push_capped(
            &mut self.stats().back_offs,
            BackOff {
                sent_at: Instant::now(),
                wait,
                kind,
                conn_id: req.conn_id,
                peer_port: req.peer.port(),
            },
        );
    }

    /// What the fault settings decide for this request (counts it for "every Nth").
    fn injected(&self, req: &HttpRequest, authenticated: bool) -> Plan {
        let mut state = lock(&self.fault);
        state.requests += 1;
        let n = state.requests;
        let fault = Arc::clone(&state.fault);
        let hit = |nth: Option<u32>| nth.is_some_and(|k| k > 0 && n.is_multiple_of(u64::from(k)));
        let mut plan = Plan {
            fault: Arc::clone(&fault),
            reply: None,
            message_fault: None,
            truncate: false,
        };
        if hit(fault.drop_every_nth) {
            drop(state);
            self.stats().dropped_connections += 1;
            plan.reply = Some(Reply::Drop);
            return plan;
        }
        if hit(fault.http_503_every_nth) {
            drop(state);
            let r = HttpResponse {
                status: 503,
                headers: vec![
                    ("Content-Type".to_string(), "text/html; charset=us-ascii".to_string()),
                    ("Server".to_string(), "Microsoft-HTTPAPI/2.0".to_string()),
                    ("Retry-After".to_string(), "1".to_string()),
                ],
                body: b"<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n<HTML><HEAD><TITLE>Service Unavailable</TITLE>\r\n<META HTTP-EQUIV=\"Content-Type\" Content=\"text/html; charset=us-ascii\"></HEAD>\r\n<BODY><h2>Service Unavailable</h2>\r\n<hr><p>HTTP Error 503. The service is unavailable.</p>\r\n</BODY></HTML>\r\n".to_vec(),
                chunked: false,
                close: true,
            };
            self.record_back_off(req, BackOffKind::Http503, Duration::from_secs(1));
            plan.reply = Some(Reply::Respond(r));
            return plan;
        }
        if hit(fault.html_500_every_nth) {
            drop(state);
            self.stats().html_500s += 1;
            plan.reply = Some(Reply::Respond(aspnet_error_500()));
            return plan;
        }
        // Admission is judged as the request arrived (before any simulated latency): the one
        // that made the count exceed the limit is refused, the earlier ones go on.
        if let Some(limit) = fault.max_connections {
            let in_flight = req.in_flight;
            if in_flight > limit {
                drop(state);
                let f = SoapFault::exceeded_connection_count(limit).with_note(format!(
                    "{in_flight} requests in flight, max_connections {limit}"
                ));
                plan.reply = Some(self.fault_reply(req, &f, authenticated));
                return plan;
            }
        }
        if hit(fault.busy_every_nth) {
            drop(state);
            let f = SoapFault::server_busy(fault.busy_back_off_ms)
                .with_note("injected ErrorServerBusy");
            self.record_back_off(
                req,
                BackOffKind::ServerBusy,
                Duration::from_millis(fault.busy_back_off_ms),
            );
            plan.reply = Some(self.fault_reply(req, &f, authenticated));
            return plan;
        }
        if state.malformed_left > 0 {
            state.malformed_left -= 1;
            plan.truncate = true;
            return plan;
        }
        if hit(fault.busy_in_message_every_nth) {
            plan.message_fault = Some(MessageFault::Busy(fault.busy_back_off_ms));
        } else if hit(fault.inner_busy_every_nth) {
            plan.message_fault = Some(MessageFault::InnerBusy(fault.busy_back_off_ms));
        }
        plan
    }

    /// The whole response as per-message errors: message-level throttling.
    fn message_fault_reply(
        &self,
        req: &HttpRequest,
        parsed: &request::Request,
        fault: MessageFault,
        authenticated: bool,
    ) -> Reply {
        let (err, kind, ms) = match fault {
            MessageFault::Busy(ms) => (
                MsgError::server_busy(ms),
                BackOffKind::ServerBusyInMessage,
                ms,
            ),
            MessageFault::InnerBusy(ms) => (
                MsgError::inner_server_busy(ms),
                BackOffKind::InnerServerBusy,
                ms,
            ),
        };
        let xml = crate::ops::error_response(parsed, &err);
        push_capped(
            &mut self.stats().message_errors,
            format!("{}: injected {kind:?}", err.code),
        );
        self.record_back_off(req, kind, Duration::from_millis(ms));
        self.soap_response(req, 200, xml, authenticated)
    }

    fn own_mailbox(&self, store: &Store, user: Option<&str>) -> Option<usize> {
        let user = user?;
        let name = user.rsplit('\\').next().unwrap_or(user);
        store.data.mailboxes.iter().position(|m| {
            m.address
                .split('@')
                .next()
                .is_some_and(|local| local.eq_ignore_ascii_case(name))
        })
    }
}

impl Handler for Inner {
    fn latency(&self) -> Duration {
        self.options.latency
    }

    fn connection_closed(&self, conn_id: u64) {
        lock(&self.auth).remove(&conn_id);
    }

    fn handle(&self, req: &HttpRequest) -> Reply {
        if self.options.bench_stats
            && req.method == "GET"
            && req.path.split('?').next() == Some(BENCH_STATS_PATH)
        {
            return self.bench_stats_reply();
        }
        {
            let mut s = self.stats();
            s.http_requests += 1;
            push_capped(
                &mut s.arrivals,
                Arrival {
                    at: req.arrived,
                    conn_id: req.conn_id,
                    peer_port: req.peer.port(),
                    in_flight: req.in_flight,
                },
            );
        }
        let path = req.path.split('?').next().unwrap_or("");
        if !path.eq_ignore_ascii_case("/EWS/Exchange.asmx") {
            return Reply::Respond(html(
                404,
                "404 - File or directory not found.",
                "The resource you are looking for might have been removed, had its name changed, or is temporarily unavailable.",
            ));
        }
        let user = match &self.options.ntlm {
            Some(cfg) => match self.authenticate(req, cfg) {
                Ok(user) => Some(user),
                Err(reply) => return reply,
            },
            None => None,
        };
        let authenticated = user.is_some();
        let plan = self.injected(req, authenticated);
        if let Some(reply) = plan.reply {
            return reply;
        }
        let reply = self.process(req, user.as_deref(), &plan);
        if !plan.truncate {
            return reply;
        }
        match reply {
            Reply::Respond(mut r) => {
                // Cut mid-body and announce the cut length, as a truncating proxy does.
                r.body.truncate(r.body.len() / 2);
                r.chunked = false;
                self.stats().truncated_responses += 1;
                Reply::Respond(r)
            }
            Reply::Drop => Reply::Drop,
        }
    }
}

/// Where [`Options::bench_stats`] serves the counters.
pub const BENCH_STATS_PATH: &str = "/_bench/stats";

impl Inner {
    /// The counters a benchmark needs, as one JSON object: `http_requests` (every HTTP request
    /// but these), `operations` (by name), `ntlm_handshakes`, `get_item_ids` (ItemIds asked
    /// for), `max_concurrent`, `in_flight`.
    fn bench_stats_reply(&self) -> Reply {
        use std::sync::atomic::Ordering;
        let s = self.stats();
        let operations = s
            .operations
            .iter()
            .map(|(k, v)| format!("\"{}\":{v}", k.replace(['"', '\\'], "")))
            .collect::<Vec<_>>()
            .join(",");
        let body = format!(
            concat!(
                "{{\"http_requests\":{},\"operations\":{{{}}},\"ntlm_handshakes\":{},",
                "\"get_item_ids\":{},\"get_item_requests\":{},\"max_concurrent\":{},",
                "\"in_flight\":{}}}\n"
            ),
            s.http_requests,
            operations,
            s.ntlm_handshakes,
            s.get_item_batch_sizes.iter().sum::<usize>(),
            s.get_item_batch_sizes.len(),
            self.counters.max_in_flight.load(Ordering::SeqCst),
            self.counters
                .in_flight
                .load(Ordering::SeqCst)
                .saturating_sub(1),
        );
        drop(s);
        Reply::Respond(HttpResponse {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into_bytes(),
            chunked: false,
            close: false,
        })
    }

    /// Everything after authentication and the HTTP-level faults.
    fn process(&self, req: &HttpRequest, user: Option<&str>, plan: &Plan) -> Reply {
        let authenticated = user.is_some();
        if req.method != "POST" {
            let mut r = html(
                405,
                "405 - HTTP verb used to access this page is not allowed.",
                "The page you are looking for cannot be displayed because an invalid method (HTTP verb) was used to attempt access.",
            );
            r.headers.push(("Allow".to_string(), "POST".to_string()));
            return Reply::Respond(r);
        }
        let content_type = req.header("Content-Type").unwrap_or("");
        if !content_type
            .trim()
            .to_ascii_lowercase()
            .starts_with("text/xml")
        {
            let r = html(
                415,
                "415 - Unsupported Media Type",
                &format!(
                    "Cannot process the message because the content type '{}' was not the expected type 'text/xml; charset=utf-8'.",
                    content_type.replace(['<', '>', '&'], "")
                ),
            );
            return Reply::Respond(r);
        }
        let operation =
            request::operation_name(&req.body).unwrap_or_else(|| "(invalid)".to_string());
        *self
            .stats()
            .operations
            .entry(operation.clone())
            .or_insert(0) += 1;
        let parsed = match request::parse(&req.body) {
            Ok(r) => r,
            Err(fault) => return self.fault_reply(req, &fault, authenticated),
        };
        if let Op::GetItem { ids, .. } = &parsed.op {
            push_capped(&mut self.stats().get_item_batch_sizes, ids.len());
        }
        let record = |style: Option<AccessStyle>, mailbox: Option<String>| {
            push_capped(
                &mut self.stats().access,
                AccessRecord {
                    operation: operation.clone(),
                    style,
                    mailbox,
                    anchor_mailbox: req.header("X-AnchorMailbox").map(str::to_string),
                    server_version: parsed.version.clone(),
                    conn_id: req.conn_id,
                    peer_port: req.peer.port(),
                },
            )
        };
        let header_style = parsed
            .impersonation
            .as_ref()
            .map(|_| AccessStyle::Impersonation);
        if let Some(newest) = &plan.fault.newest_server_version
            && version_rank(&parsed.version) > version_rank(newest)
        {
            record(header_style, None);
            let f = SoapFault::invalid_server_version().with_note(format!(
                "RequestServerVersion {} is newer than {newest}",
                parsed.version
            ));
            return self.fault_reply(req, &f, authenticated);
        }
        if let Some(fault) = plan.message_fault {
            record(header_style, None);
            return self.message_fault_reply(req, &parsed, fault, authenticated);
        }
        let store = self.store.read().unwrap_or_else(|e| e.into_inner());
        let caller = Caller {
            own_mailbox: self.own_mailbox(&store, user),
            illegal_char_refs: plan.fault.illegal_char_refs,
            max_find_page: self.options.max_find_page.max(1),
            fault: &plan.fault,
        };
        let outcome = ops::execute(&store, &parsed, &caller);
        drop(store);
        match outcome {
            Ok(outcome) => {
                record(outcome.style, outcome.mailbox);
                if !outcome.injected.is_empty() {
                    let mut s = self.stats();
                    for line in outcome.injected {
                        push_capped(&mut s.message_errors, line);
                    }
                }
                self.soap_response(req, 200, outcome.xml, authenticated)
            }
            Err(fault) => {
                record(header_style, None);
                self.fault_reply(req, &fault, authenticated)
            }
        }
    }
}
