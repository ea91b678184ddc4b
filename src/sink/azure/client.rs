//! Requests to one container of Azure Blob Storage over its REST API: signing or bearer
//! tokens, bounded retries that honour `Retry-After`, and errors an operator can act on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ureq::Agent;

use super::shared_key;
use crate::auth::{self, TokenProvider};
use crate::exchange::throttle::retry_delay;
use crate::exchange::transport::parse_retry_after;
use crate::secret::Secret;
use crate::sink::Error;

/// The REST API version we speak; Azurite 3.35 accepts it (with `--skipApiVersionCheck` for
/// newer ones), and bearer tokens need 2017-11-09 or later.
pub const API_VERSION: &str = "2021-12-02";

/// Attempts per request for throttling (429, 503 ServerBusy), server errors and broken
/// connections. The uploader retries whole batches on top of this, so keep it small.
const MAX_ATTEMPTS: u32 = 4;
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(8);
/// A longer `Retry-After` than this is handed to the caller (as `Error::Http::retry_after`)
/// instead of blocking a thread inside the sink.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(30);
/// State and configuration blobs are small; anything near this is not ours.
const MAX_READ_BYTES: u64 = 256 * 1024 * 1024;
/// Error bodies are short XML documents.
const MAX_ERROR_BODY_BYTES: u64 = 64 * 1024;
/// Idle agents kept for reuse; about one per uploader thread.
const MAX_POOLED_AGENTS: usize = 32;

/// How requests prove who we are.
pub(crate) enum Auth {
    /// The storage account key (base64, as the portal shows it), already checked to decode.
    SharedKey(Secret),
    /// OAuth2 bearer tokens for `https://storage.azure.com/`.
    Bearer(Arc<dyn TokenProvider>),
}

/// A precondition on a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Condition<'a> {
    Always,
    /// Only if the blob still has this ETag.
    IfMatch(&'a str),
    /// Only if no blob of that name exists.
    IfAbsent,
}

/// A response we read to the end, for the caller to interpret.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub etag: Option<String>,
    /// `x-ms-error-code`, e.g. `BlobNotFound`, `ContainerNotFound`, `ConditionNotMet`.
    pub error_code: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One request, before signing.
struct Request<'a> {
    method: &'static str,
    /// None: the container itself.
    blob: Option<&'a str>,
    query: &'a [(&'a str, &'a str)],
    headers: Vec<(&'static str, String)>,
    body: Option<&'a [u8]>,
}

enum Failure {
    /// Worth another attempt: the connection broke, or the token endpoint was unreachable.
    Transient { detail: String },
    /// Final.
    Final(Error),
}

/// Talks to one container. Shared by every uploader thread.
pub(crate) struct BlobClient {
    account: String,
    container: String,
    /// `scheme://host[:port]`.
    origin: String,
    /// The endpoint's path, without a trailing slash: empty for `https://acct.blob.core…`,
    /// `/devstoreaccount1` for Azurite's path-style endpoint.
    base_path: String,
    auth: Auth,
    /// Agents keep connections alive; each thread borrows one at a time, so a thread's
    /// requests mostly reuse its previous connection instead of a new TLS handshake.
    agents: Mutex<Vec<Agent>>,
}

impl BlobClient {
    pub fn new(account: &str, container: &str, endpoint: &str, auth: Auth) -> Result<Self, Error> {
        let (origin, base_path) = split_endpoint(endpoint).ok_or_else(|| Error::Invalid {
            detail: format!(
                "blob endpoint {endpoint:?} is not an http(s) URL such as \
                 https://{account}.blob.core.windows.net"
            ),
        })?;
        match &auth {
            Auth::SharedKey(key) => {
                if STANDARD.decode(key.expose()).is_err() {
                    return Err(Error::Invalid {
                        detail: format!(
                            "the account key for storage account {account} is not valid base64"
                        ),
                    });
                }
            }
            Auth::Bearer(_) => {
                // A bearer token over plain HTTP can be replayed by anyone on the path; a
                // loopback endpoint (an emulator, a test) has no path.
                if !origin.starts_with("https://") && !is_loopback_origin(&origin) {
                    return Err(Error::Invalid {
                        detail: format!(
                            "blob endpoint {endpoint}: tokens are only sent over https; use an \
                             https endpoint or a connection string with the account key"
                        ),
                    });
                }
            }
        }
        if origin.starts_with("http://") && !is_loopback_origin(&origin) {
            log::warn!("blob endpoint {endpoint} is plain http: email content travels unencrypted");
        }
        Ok(BlobClient {
            account: account.to_owned(),
            container: container.to_owned(),
            origin,
            base_path,
            auth,
            agents: Mutex::new(Vec::new()),
        })
    }

    /// The endpoint, e.g. `https://acct.blob.core.windows.net` (no secrets).
    pub fn endpoint(&self) -> String {
        format!("{}{}", self.origin, self.base_path)
    }

    /// The URL of a blob (or of the container), as sent and as shown in errors.
    pub fn url(&self, blob: Option<&str>) -> String {
        format!("{}{}", self.origin, self.url_path(blob))
    }

    fn url_path(&self, blob: Option<&str>) -> String {
        let mut path = format!("{}/{}", self.base_path, self.container);
        if let Some(blob) = blob {
            path.push('/');
            path.push_str(&encode_path(blob));
        }
        path
    }

    /// Get Blob: the reply for 200 and 404 (a missing blob or container; see `error_code`).
    pub fn get_blob(&self, blob: &str) -> Result<Reply, Error> {
        let reply = self.execute(&Request {
            method: "GET",
            blob: Some(blob),
            query: &[],
            headers: Vec::new(),
            body: None,
        })?;
        match reply.status {
            200 | 404 => Ok(reply),
            _ => Err(self.unexpected(Some(blob), &reply)),
        }
    }

    /// Put Blob as one block blob: atomic, the blob is replaced whole or not at all. Returns
    /// the reply for 201 and for a failed `condition` (412, or 409 `BlobAlreadyExists`).
    pub fn put_blob(
        &self,
        blob: &str,
        body: &[u8],
        content_type: &str,
        condition: Condition<'_>,
    ) -> Result<Reply, Error> {
        let mut headers = vec![
            ("x-ms-blob-type", "BlockBlob".to_owned()),
            ("content-type", content_type.to_owned()),
        ];
        match condition {
            Condition::Always => {}
            Condition::IfMatch(etag) => headers.push(("if-match", etag.to_owned())),
            Condition::IfAbsent => headers.push(("if-none-match", "*".to_owned())),
        }
        let reply = self.execute(&Request {
            method: "PUT",
            blob: Some(blob),
            query: &[],
            headers,
            body: Some(body),
        })?;
        match reply.status {
            201 => Ok(reply),
            412 if condition != Condition::Always => Ok(reply),
            409 if condition == Condition::IfAbsent
                && reply.error_code.as_deref() == Some("BlobAlreadyExists") =>
            {
                Ok(reply)
            }
            _ => Err(self.unexpected(Some(blob), &reply)),
        }
    }

    /// List Blobs: the names of every blob starting with `prefix`, following continuation
    /// markers.
    pub fn list_blobs(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let mut names = Vec::new();
        let mut marker = String::new();
        loop {
            let mut query = vec![
                ("restype", "container"),
                ("comp", "list"),
                ("prefix", prefix),
            ];
            if !marker.is_empty() {
                query.push(("marker", marker.as_str()));
            }
            let reply = self.execute(&Request {
                method: "GET",
                blob: None,
                query: &query,
                headers: Vec::new(),
                body: None,
            })?;
            if reply.status != 200 {
                return Err(self.unexpected(None, &reply));
            }
            let text = String::from_utf8_lossy(&reply.body);
            let doc =
                roxmltree::Document::parse(text.trim_start_matches('\u{feff}')).map_err(|err| {
                    Error::Http {
                        url: self.url(None),
                        status: Some(reply.status),
                        detail: format!("the blob listing is not XML: {err}"),
                        retry_after: None,
                    }
                })?;
            let root = doc.root_element();
            for blob in root.descendants().filter(|n| n.has_tag_name("Blob")) {
                if let Some(name) = blob
                    .children()
                    .find(|n| n.has_tag_name("Name"))
                    .and_then(|n| n.text())
                {
                    names.push(name.to_owned());
                }
            }
            marker = root
                .children()
                .find(|n| n.has_tag_name("NextMarker"))
                .and_then(|n| n.text())
                .unwrap_or_default()
                .to_owned();
            if marker.is_empty() {
                return Ok(names);
            }
        }
    }

    /// Get Container Properties: Ok if the container exists and our credentials may read it.
    pub fn check_container(&self) -> Result<(), Error> {
        let reply = self.execute(&Request {
            method: "GET",
            blob: None,
            query: &[("restype", "container")],
            headers: Vec::new(),
            body: None,
        })?;
        match reply.status {
            200 => Ok(()),
            _ => Err(self.unexpected(None, &reply)),
        }
    }

    /// Create Container (private access). Ok if it was created or already exists.
    pub fn create_container(&self) -> Result<(), Error> {
        let reply = self.execute(&Request {
            method: "PUT",
            blob: None,
            query: &[("restype", "container")],
            headers: Vec::new(),
            body: Some(&[]),
        })?;
        match (reply.status, reply.error_code.as_deref()) {
            (201, _) | (409, Some("ContainerAlreadyExists")) => Ok(()),
            _ => Err(self.unexpected(None, &reply)),
        }
    }

    /// The error for a reply the caller did not expect.
    pub fn unexpected(&self, blob: Option<&str>, reply: &Reply) -> Error {
        let url = self.url(blob);
        let (code, message) = error_parts(reply);
        if reply.status == 404 && code == "ContainerNotFound" {
            return Error::NotFound {
                what: format!(
                    "container {:?} of storage account {} at {}",
                    self.container,
                    self.account,
                    self.endpoint()
                ),
            };
        }
        Error::Http {
            url,
            status: Some(reply.status),
            detail: format!("{code}: {message}"),
            retry_after: None,
        }
    }

    /// Sends `request`, retrying what a retry may fix; returns any other reply for the caller
    /// to interpret, except refusals of our credentials, which become `Error::Auth`.
    fn execute(&self, request: &Request<'_>) -> Result<Reply, Error> {
        let url = self.url(request.blob);
        let mut attempt = 0;
        let mut token_renewed = false;
        loop {
            attempt += 1;
            let (detail, status, demanded) = match self.send_once(request) {
                Ok(reply) if reply.status == 401 && !token_renewed => {
                    if let Auth::Bearer(provider) = &self.auth {
                        // An expired or revoked token: one fresh token, then a clear error.
                        provider.invalidate();
                        token_renewed = true;
                        continue;
                    }
                    return Err(self.auth_error(&url, &reply));
                }
                Ok(reply) if matches!(reply.status, 401 | 403) => {
                    return Err(self.auth_error(&url, &reply));
                }
                Ok(reply) if is_retryable_status(reply.status) => {
                    let (code, message) = error_parts(&reply);
                    let demanded = reply.demanded_wait;
                    (format!("{code}: {message}"), Some(reply.status), demanded)
                }
                Ok(reply) => return Ok(reply.reply),
                Err(Failure::Transient { detail, .. }) => (detail, None, None),
                Err(Failure::Final(err)) => return Err(err),
            };
            let wait = demanded.unwrap_or_else(|| retry_delay(attempt - 1, RETRY_BASE, RETRY_CAP));
            if attempt >= MAX_ATTEMPTS || wait > MAX_INLINE_WAIT {
                return Err(Error::Http {
                    url,
                    status,
                    detail,
                    retry_after: demanded,
                });
            }
            log::debug!(
                "{} {url}: {} {detail}; attempt {attempt}/{MAX_ATTEMPTS}, retrying in {} ms",
                request.method,
                status.map_or("failed:".to_owned(), |s| format!("HTTP {s}")),
                wait.as_millis()
            );
            std::thread::sleep(wait);
        }
    }

    fn send_once(&self, request: &Request<'_>) -> Result<RawReply, Failure> {
        let url_path = self.url_path(request.blob);
        let mut url = format!("{}{url_path}", self.origin);
        for (i, (name, value)) in request.query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&encode_path(name));
            url.push('=');
            url.push_str(&encode_path(value));
        }

        let mut headers = request.headers.clone();
        headers.push(("x-ms-date", http_date(time::OffsetDateTime::now_utc())));
        headers.push(("x-ms-version", API_VERSION.to_owned()));
        let authorization = match &self.auth {
            Auth::SharedKey(key) => {
                let mut signed: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                // ureq sends Content-Length for a body; the signature must cover it.
                let length = request.body.map(|b| b.len().to_string());
                if let Some(length) = &length {
                    signed.push(("content-length", length));
                }
                let to_sign = shared_key::string_to_sign(
                    request.method,
                    &signed,
                    &self.account,
                    &url_path,
                    request.query,
                );
                let signature = STANDARD
                    .decode(key.expose())
                    .ok()
                    .and_then(|key| shared_key::sign(&key, &to_sign).ok())
                    .ok_or_else(|| {
                        Failure::Final(Error::Invalid {
                            detail: format!(
                                "cannot sign a request with the key of storage account {}",
                                self.account
                            ),
                        })
                    })?;
                Secret::new(format!("SharedKey {}:{signature}", self.account))
            }
            Auth::Bearer(provider) => match provider.token() {
                Ok(token) => Secret::new(format!("Bearer {}", token.expose())),
                Err(err) => return Err(self.token_failure(provider.as_ref(), &url, err)),
            },
        };

        let agent = self.take_agent();
        let result = self.call(&agent, request, &url, &headers, &authorization);
        self.return_agent(agent);
        result
    }

    fn call(
        &self,
        agent: &Agent,
        request: &Request<'_>,
        url: &str,
        headers: &[(&'static str, String)],
        authorization: &Secret,
    ) -> Result<RawReply, Failure> {
        let started = std::time::Instant::now();
        let exchanged = |status, bytes, headers| {
            crate::http::log_exchange_with_headers(
                crate::http::EndpointClass::AzureBlob,
                request.method,
                url,
                status,
                started.elapsed(),
                bytes,
                headers,
            );
        };
        let transient = |err: ureq::Error| Failure::Transient {
            detail: err.to_string(),
        };
        let response = match (request.method, request.body) {
            ("PUT", Some(body)) => {
                let mut builder = agent.put(url);
                for (name, value) in headers {
                    builder = builder.header(*name, value);
                }
                builder
                    .header("authorization", authorization.expose())
                    .send(body)
            }
            _ => {
                let mut builder = agent.get(url);
                for (name, value) in headers {
                    builder = builder.header(*name, value);
                }
                builder
                    .header("authorization", authorization.expose())
                    .call()
            }
        };
        let mut response = response.map_err(|err| {
            exchanged(None, 0, None);
            transient(err)
        })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header("etag");
        let error_code = header("x-ms-error-code");
        let demanded_wait = header("retry-after").and_then(|v| parse_retry_after(&v));
        let limit = if (200..300).contains(&status) {
            MAX_READ_BYTES
        } else {
            MAX_ERROR_BODY_BYTES
        };
        let body = crate::http::read_body(response.body_mut(), limit);
        exchanged(
            Some(status),
            body.as_ref().map_or(0, |b| b.len() as u64),
            Some(response.headers()),
        );
        let body = body.map_err(transient)?;
        Ok(RawReply {
            status,
            demanded_wait,
            reply: Reply {
                status,
                etag,
                error_code,
                body,
            },
        })
    }

    fn token_failure(&self, provider: &dyn TokenProvider, url: &str, err: auth::Error) -> Failure {
        if err.is_retryable() {
            return Failure::Transient {
                detail: format!("cannot get a token ({}): {err}", provider.describe()),
            };
        }
        let reason = match err {
            auth::Error::Credential { detail } => detail,
            other => other.to_string(),
        };
        Failure::Final(Error::Auth {
            url: url.to_owned(),
            detail: format!("cannot get a token: {reason}"),
        })
    }

    fn auth_error(&self, url: &str, reply: &RawReply) -> Error {
        let (code, message) = error_parts(&reply.reply);
        let what = match &self.auth {
            Auth::SharedKey(_) => "the account key (Shared Key)".to_owned(),
            Auth::Bearer(provider) => format!("the token ({})", provider.describe()),
        };
        let hint = match (code.as_str(), &self.auth) {
            ("AuthorizationPermissionMismatch", _) => {
                "; the identity needs a data role such as Storage Blob Data Contributor on the \
                 container or account"
            }
            ("AuthorizationFailure", Auth::SharedKey(_)) => {
                "; check the account key, and the account's firewall and network rules"
            }
            ("AuthorizationFailure", Auth::Bearer(_)) => {
                "; check the identity's role, and the account's firewall and network rules"
            }
            _ => "",
        };
        Error::Auth {
            url: url.to_owned(),
            detail: format!(
                "the storage account {} rejected {what}: HTTP {} {code}: {}{hint}",
                self.account,
                reply.status,
                message.trim_end_matches('.')
            ),
        }
    }

    fn take_agent(&self) -> Agent {
        let pooled = self.agents.lock().unwrap_or_else(|e| e.into_inner()).pop();
        pooled.unwrap_or_else(|| crate::http::agent(&crate::http::AgentSettings::default()))
    }

    fn return_agent(&self, agent: Agent) {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if agents.len() < MAX_POOLED_AGENTS {
            agents.push(agent);
        }
    }
}

/// A reply plus what only the retry loop needs.
struct RawReply {
    status: u16,
    demanded_wait: Option<Duration>,
    reply: Reply,
}

impl std::ops::Deref for RawReply {
    type Target = Reply;
    fn deref(&self) -> &Reply {
        &self.reply
    }
}

/// Throttling (429, 503 ServerBusy), server errors (500 OperationTimedOut, 502, 504) and
/// request timeouts.
fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// The error code and the first line of the message of an error reply, from the
/// `x-ms-error-code` header and the XML body. Never the rest of the body: for a failed
/// signature it quotes the string we signed.
fn error_parts(reply: &Reply) -> (String, String) {
    let text = String::from_utf8_lossy(&reply.body);
    let text = text.trim_start_matches('\u{feff}');
    let (mut code, mut message) = (None, None);
    if let Ok(doc) = roxmltree::Document::parse(text) {
        for node in doc.root_element().children().filter(|n| n.is_element()) {
            match node.tag_name().name() {
                "Code" => code = node.text().map(str::to_owned),
                "Message" => message = node.text().map(str::to_owned),
                _ => {}
            }
        }
    }
    let code = reply
        .error_code
        .clone()
        .or(code)
        .unwrap_or_else(|| "(no error code)".to_owned());
    let message = message
        .as_deref()
        .and_then(|m| m.lines().map(str::trim).find(|l| !l.is_empty()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {}", reply.status));
    (code, message)
}

/// Splits `https://host[:port][/path]` into origin and path (no trailing slash).
fn split_endpoint(endpoint: &str) -> Option<(String, String)> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))?;
    if rest.contains(['?', '#', '@', ' ']) {
        return None;
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return None;
    }
    let scheme_len = endpoint.len() - rest.len();
    Some((
        format!("{}{host}", &endpoint[..scheme_len]),
        path.to_owned(),
    ))
}

fn is_loopback_origin(origin: &str) -> bool {
    let host = origin
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let host = match host.rfind(':') {
        Some(i) if !host.ends_with(']') => &host[..i],
        _ => host,
    };
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Percent-encodes everything but unreserved characters and `/`, as the Azure SDKs do. Our
/// names carry `@`, `+` and the `%` of encoded mailbox addresses.
pub(crate) fn encode_path(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// RFC 1123 in GMT, as `x-ms-date` wants it.
pub(crate) fn http_date(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    t.format(&format)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 GMT".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn dates_are_rfc_1123() {
        assert_eq!(
            http_date(datetime!(2024-03-01 10:00:05 UTC)),
            "Fri, 01 Mar 2024 10:00:05 GMT"
        );
        assert_eq!(
            http_date(datetime!(2024-03-01 12:00:05 +02:00)),
            "Fri, 01 Mar 2024 10:00:05 GMT"
        );
    }

    #[test]
    fn blob_names_are_percent_encoded() {
        assert_eq!(
            encode_path("data/a/b/j%C3%A9@x+y/2024-03/x.jsonl"),
            "data/a/b/j%25C3%25A9%40x%2By/2024-03/x.jsonl"
        );
    }

    #[test]
    fn endpoints_split_into_origin_and_path() {
        assert_eq!(
            split_endpoint("http://127.0.0.1:10000/devstoreaccount1/"),
            Some(("http://127.0.0.1:10000".into(), "/devstoreaccount1".into()))
        );
        assert_eq!(
            split_endpoint("https://acct.blob.core.windows.net"),
            Some(("https://acct.blob.core.windows.net".into(), String::new()))
        );
        assert_eq!(split_endpoint("ftp://x"), None);
        assert_eq!(split_endpoint("https://"), None);
        assert_eq!(split_endpoint("https://u:p@host"), None);
        assert!(is_loopback_origin("http://127.0.0.1:10000"));
        assert!(is_loopback_origin("http://[::1]:10000"));
        assert!(is_loopback_origin("http://localhost"));
        assert!(!is_loopback_origin("http://acct.blob.core.windows.net"));
    }

    #[test]
    fn error_replies_give_code_and_first_message_line() {
        let reply = Reply {
            status: 403,
            etag: None,
            error_code: Some("AuthenticationFailed".into()),
            body: "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>AuthenticationFailed</Code>\
                   <Message>Server failed to authenticate the request.\nRequestId:1\nTime:x</Message>\
                   <AuthenticationErrorDetail>The MAC signature found in the HTTP request 'c2ln' is not \
                   the same as any computed signature.</AuthenticationErrorDetail></Error>"
                .as_bytes()
                .to_vec(),
        };
        let (code, message) = error_parts(&reply);
        assert_eq!(code, "AuthenticationFailed");
        assert_eq!(message, "Server failed to authenticate the request.");
        let empty = Reply {
            status: 503,
            etag: None,
            error_code: None,
            body: Vec::new(),
        };
        assert_eq!(
            error_parts(&empty),
            ("(no error code)".into(), "HTTP 503".into())
        );
    }
}
