//! One fetcher thread's Graph HTTP client: bearer tokens, the per-mailbox limits every thread
//! shares (at most four requests in flight, pauses Graph demands), retries and error mapping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ureq::Agent;

use super::super::Error;
use super::super::throttle::{self, BackoffGate, ConcurrencyLimit};
use super::super::transport::{excerpt, parse_retry_after, request_error, token_error};
use super::wire;
use crate::auth::TokenProvider;
use crate::secret::Secret;
use crate::shutdown::StopFlag;

/// Outlook's documented limit: four concurrent requests per app and mailbox. More only earn
/// `ApplicationThrottled` 429s.
pub const MAX_REQUESTS_PER_MAILBOX: usize = 4;
/// Attempts of a request that failed transiently (connection lost, 5xx without a demanded
/// wait, malformed reply) before its error goes to the caller.
const MAX_ATTEMPTS: u32 = 8;
/// Waits Graph demanded (429, or 503/504 with Retry-After) one request may sit through:
/// throttling is the service working as designed, so it gets a larger, still finite, budget.
const MAX_THROTTLED_WAITS: u32 = 30;
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(60);
/// A 429 without Retry-After: the reference's `min(2^n · 2 s, 120 s)` with jitter.
const THROTTLE_BASE: Duration = Duration::from_secs(2);
const THROTTLE_CAP: Duration = Duration::from_secs(120);
/// JSON pages are small: 100 messages with attachment metadata are tens of kilobytes.
pub const MAX_JSON_BYTES: u64 = 64 * 1024 * 1024;
/// One message's MIME; Exchange Online caps messages at 150 MB (base64 inside MIME included).
pub const MAX_MIME_BYTES: u64 = 512 * 1024 * 1024;

/// Codes Graph compares case-insensitively, in the spelling the rest of the program uses.
const KNOWN_CODES: &[&str] = &[
    "ErrorItemNotFound",
    "ErrorAccessDenied",
    "MailboxNotEnabledForRESTAPI",
    "ApplicationThrottled",
    "InvalidAuthenticationToken",
    "ErrorInvalidUser",
    "InefficientFilter",
];

/// What all threads share about one mailbox: Graph's limits are per app and mailbox.
#[derive(Debug)]
pub struct MailboxLimits {
    pub gate: BackoffGate,
    pub requests: ConcurrencyLimit,
}

/// The per-mailbox limits of every mailbox, created on first use.
#[derive(Debug, Default)]
pub struct GraphMailboxes {
    by_address: Mutex<HashMap<String, Arc<MailboxLimits>>>,
}

impl GraphMailboxes {
    pub fn new() -> Self {
        GraphMailboxes::default()
    }

    /// The limits of `mailbox` (addresses compare case-insensitively).
    pub fn limits(&self, mailbox: &str) -> Arc<MailboxLimits> {
        let mut map = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry(mailbox.trim().to_ascii_lowercase())
                .or_insert_with(|| {
                    Arc::new(MailboxLimits {
                        gate: BackoffGate::default(),
                        requests: ConcurrencyLimit::new(MAX_REQUESTS_PER_MAILBOX),
                    })
                }),
        )
    }
}

/// What a GET should get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Json,
    Mime,
}

/// The HTTP client of one fetcher thread.
pub struct GraphClient {
    agent: Agent,
    /// `graph_url`, e.g. `https://graph.microsoft.com/v1.0`, without a trailing `/`.
    base: String,
    /// `scheme://host[:port]` of `base`: links the server gives must stay on it, or the token
    /// would go elsewhere.
    origin: String,
    tokens: Arc<dyn TokenProvider>,
    mailboxes: Arc<GraphMailboxes>,
    stop: StopFlag,
    /// Politeness pause between consecutive requests of this thread (`poll_message_sleep`).
    request_pause: Duration,
    /// Counts retries by reason, for logs and metrics.
    on_retry: Arc<dyn Fn(&str) + Send + Sync>,
}

/// The next retry of a request.
#[derive(Debug, Clone, Copy)]
struct Retry {
    wait: Duration,
    /// This retry's number, counted separately for throttling and for failures.
    count: u32,
    budget: u32,
}

/// One response, read to the end.
struct Response {
    status: u16,
    retry_after: Option<Duration>,
    www_authenticate: Option<String>,
    body: Vec<u8>,
}

impl GraphClient {
    pub fn new(
        agent: Agent,
        base: &str,
        tokens: Arc<dyn TokenProvider>,
        mailboxes: Arc<GraphMailboxes>,
        stop: StopFlag,
        request_pause: Duration,
        on_retry: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Self {
        let base = base.trim().trim_end_matches('/').to_owned();
        GraphClient {
            origin: origin_of(&base),
            base,
            agent,
            tokens,
            mailboxes,
            stop,
            request_pause,
            on_retry,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Checks that a link from the server stays on the configured Graph host.
    pub fn check_link(&self, link: &str) -> Result<String, Error> {
        let link = wire::as_given(link);
        let same_origin = link.len() >= self.origin.len()
            && link[..self.origin.len()].eq_ignore_ascii_case(&self.origin)
            && matches!(
                link.as_bytes().get(self.origin.len()),
                None | Some(b'/' | b'?')
            );
        if same_origin {
            Ok(link)
        } else {
            Err(Error::Malformed {
                detail: format!(
                    "@odata.nextLink {} leaves {}; not following it with our token",
                    without_query(&link),
                    self.origin
                ),
            })
        }
    }

    /// GETs `url` for `mailbox` and parses the JSON body.
    pub fn get_json<T: serde::de::DeserializeOwned>(
        &mut self,
        mailbox: &str,
        operation: &str,
        url: &str,
    ) -> Result<T, Error> {
        let body = self.get(mailbox, operation, url, Body::Json)?;
        serde_json::from_slice(&body).map_err(|err| Error::Malformed {
            detail: format!(
                "{operation}: {} answered JSON we cannot read ({err}): {}",
                without_query(url),
                excerpt(&body)
            ),
        })
    }

    /// GETs `url` for `mailbox`, retrying transient failures and honouring every pause Graph
    /// demands for that mailbox, for all threads. At most [`MAX_REQUESTS_PER_MAILBOX`]
    /// requests per mailbox are in flight across all threads.
    pub fn get(
        &mut self,
        mailbox: &str,
        operation: &str,
        url: &str,
        expect: Body,
    ) -> Result<Vec<u8>, Error> {
        let limits = self.mailboxes.limits(mailbox);
        let mut attempt = 0u32;
        let mut throttled = 0u32;
        let mut refreshed_token = false;
        loop {
            if !self.request_pause.is_zero() && !self.stop.sleep(self.request_pause) {
                return Err(stopped());
            }
            let result = self
                .tokens
                .token()
                .map_err(|err| token_error(&self.base, err));
            let result = result.and_then(|token| {
                let _permit = limits.requests.acquire();
                // Waited for under the permit: a pause demanded while we queued for a slot
                // still holds this request back.
                if !limits.gate.wait(&self.stop) {
                    return Err(stopped());
                }
                self.send(url, &token, expect)
            });
            let response = match result {
                Ok(response) if (200..300).contains(&response.status) => {
                    limits.requests.record_success();
                    return Ok(response.body);
                }
                Ok(response) => response,
                Err(err) => {
                    let Some(retry) = self.retry_wait(&err, &mut attempt, &mut throttled, &limits)
                    else {
                        return Err(err);
                    };
                    self.before_retry(mailbox, operation, &err, retry)?;
                    continue;
                }
            };
            let err = self.error_of(url, &response);
            let mailbox_refused =
                matches!(&err, Error::Ews { code, .. } if code == "MailboxNotEnabledForRESTAPI");
            if response.status == 401 && !mailbox_refused {
                if !refreshed_token {
                    log::debug!("mailbox={mailbox} {operation}: HTTP 401; fetching a new token");
                    self.tokens.invalidate();
                    refreshed_token = true;
                    continue;
                }
                return Err(Error::Auth {
                    url: without_query(url).to_owned(),
                    detail: format!(
                        "Graph rejected a freshly issued OAuth2 token ({}): {}{}; check the \
                         app's Mail.Read application permission and admin consent",
                        self.tokens.describe(),
                        describe_error(&response.body),
                        response
                            .www_authenticate
                            .as_deref()
                            .and_then(auth_error_description)
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default()
                    ),
                });
            }
            let over_concurrency = wire::error_of(&response.body)
                .is_some_and(|(code, _, _)| code.eq_ignore_ascii_case("ApplicationThrottled"));
            if over_concurrency {
                let now = limits.requests.lower();
                log::warn!(
                    "mailbox={mailbox}: Graph says we exceed its per-mailbox concurrency; now at \
                     most {now} requests at once"
                );
            }
            let Some(retry) = self.retry_wait(&err, &mut attempt, &mut throttled, &limits) else {
                return Err(err);
            };
            self.before_retry(mailbox, operation, &err, retry)?;
        }
    }

    /// How long to wait before retrying after `err` (and which retry of how many this is), or
    /// `None` when it must go to the caller. Demanded waits pause the whole mailbox, for every
    /// thread.
    fn retry_wait(
        &self,
        err: &Error,
        attempt: &mut u32,
        throttled: &mut u32,
        limits: &MailboxLimits,
    ) -> Option<Retry> {
        let throttling = is_throttling(err);
        if !(err.is_retryable() || throttling) || self.stop.is_stopped() {
            return None;
        }
        if throttling {
            *throttled += 1;
            if *throttled >= MAX_THROTTLED_WAITS {
                return None;
            }
            let wait = match err.demanded_wait() {
                Some(wait) if wait > throttle::MAX_DEMANDED_WAIT => return None,
                Some(wait) => wait,
                None => throttle::retry_delay(*throttled - 1, THROTTLE_BASE, THROTTLE_CAP),
            };
            limits.gate.pause_for(wait);
            if let Error::Http { status, .. } = err {
                crate::metrics::throttle_wait(&format!("http_{status}"), wait);
            }
            Some(Retry {
                wait,
                count: *throttled,
                budget: MAX_THROTTLED_WAITS - 1,
            })
        } else {
            *attempt += 1;
            if *attempt >= MAX_ATTEMPTS {
                return None;
            }
            Some(Retry {
                wait: throttle::retry_delay(*attempt - 1, RETRY_BASE, RETRY_CAP),
                count: *attempt,
                budget: MAX_ATTEMPTS - 1,
            })
        }
    }

    fn before_retry(
        &self,
        mailbox: &str,
        operation: &str,
        err: &Error,
        retry: Retry,
    ) -> Result<(), Error> {
        (self.on_retry)(err.kind());
        log::warn!(
            "mailbox={mailbox} {operation}: {err}; retry {}/{} in {} ms",
            retry.count,
            retry.budget,
            retry.wait.as_millis()
        );
        if self.stop.sleep(retry.wait) {
            Ok(())
        } else {
            Err(stopped())
        }
    }

    fn send(&self, url: &str, token: &Secret, expect: Body) -> Result<Response, Error> {
        let authorization = Secret::new(format!("Bearer {}", token.expose()));
        let accept = match expect {
            Body::Json => "application/json",
            Body::Mime => "*/*",
        };
        let short_url = without_query(url);
        let started = std::time::Instant::now();
        let exchanged = |status, bytes, headers| {
            crate::http::log_exchange_with_headers(
                crate::http::EndpointClass::Graph,
                "GET",
                url,
                status,
                started.elapsed(),
                bytes,
                headers,
            );
        };
        let mut response = self
            .agent
            .get(url)
            .header("Authorization", authorization.expose())
            .header("Accept", accept)
            .call()
            .map_err(|err| {
                exchanged(None, 0, None);
                request_error(short_url, err)
            })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v));
        let www_authenticate = header("www-authenticate");
        let limit = match (expect, status) {
            (Body::Mime, 200..=299) => MAX_MIME_BYTES,
            _ => MAX_JSON_BYTES,
        };
        let body = crate::http::read_body(response.body_mut(), limit);
        exchanged(
            Some(status),
            body.as_ref().map_or(0, |b| b.len() as u64),
            Some(response.headers()),
        );
        // An answer, even an error, is progress for /healthz.
        crate::metrics::progress();
        let body = body.map_err(|err| request_error(short_url, err))?;
        Ok(Response {
            status,
            retry_after,
            www_authenticate,
            body,
        })
    }

    /// Maps a non-2xx response to an error, by Graph's error code first (the same code comes
    /// with different statuses), then by status.
    fn error_of(&self, url: &str, response: &Response) -> Error {
        let (code, message, request_id) = wire::error_of(&response.body)
            .unwrap_or_else(|| (String::new(), excerpt(&response.body), None));
        let code = KNOWN_CODES
            .iter()
            .find(|known| known.eq_ignore_ascii_case(&code))
            .map_or(code, |known| (*known).to_owned());
        let message = match request_id {
            Some(id) => format!("{message} (request-id {id})"),
            None => message,
        };
        let status = response.status;
        match (status, code.as_str()) {
            (_, "MailboxNotEnabledForRESTAPI") => Error::Ews {
                code,
                message: format!(
                    "{message}: the mailbox has no Exchange Online licence, is inactive or \
                     soft-deleted, or is on premises"
                ),
                back_off: None,
            },
            // Missing Mail.Read, or an application access policy that leaves this mailbox
            // out: fatal for this mailbox only.
            (403, _) => Error::Ews {
                message: if code.is_empty() || code == "ErrorAccessDenied" {
                    message
                } else {
                    format!("{code}: {message}")
                },
                code: "ErrorAccessDenied".to_owned(),
                back_off: None,
            },
            (408 | 429 | 500..=599, _) => Error::Http {
                url: without_query(url).to_owned(),
                status,
                detail: if code.is_empty() {
                    message
                } else {
                    format!("{code}: {message}")
                },
                retry_after: response.retry_after,
            },
            (_, "") => Error::Http {
                url: without_query(url).to_owned(),
                status,
                detail: message,
                retry_after: None,
            },
            _ => Error::Ews {
                code,
                message,
                back_off: None,
            },
        }
    }
}

/// 429 always, and 503/504 that name a wait, are Graph telling us to slow down.
fn is_throttling(err: &Error) -> bool {
    matches!(
        err,
        Error::Http { status: 429, .. }
            | Error::Http {
                status: 503 | 504,
                retry_after: Some(_),
                ..
            }
    )
}

fn stopped() -> Error {
    Error::Transport {
        url: String::new(),
        detail: "stopped before the request was sent".into(),
    }
}

/// `code: message` of a Graph error body, else its start.
fn describe_error(body: &[u8]) -> String {
    match wire::error_of(body) {
        Some((code, message, _)) => format!("{code}: {message}"),
        None => excerpt(body),
    }
}

/// `error_description` (or `error`) of a `WWW-Authenticate: Bearer …` challenge.
fn auth_error_description(header: &str) -> Option<String> {
    for name in ["error_description=\"", "error=\""] {
        if let Some(at) = header.find(name) {
            let rest = &header[at + name.len()..];
            return rest.split('"').next().map(str::to_owned);
        }
    }
    None
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            format!("{scheme}://{host}")
        }
        None => url.to_owned(),
    }
}

/// A URL for error messages and logs: the query (filters, skip tokens) adds nothing there.
pub fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_links() {
        assert_eq!(
            origin_of("https://graph.microsoft.com/v1.0"),
            "https://graph.microsoft.com"
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8080/v1.0"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(without_query("https://h/a?b=c"), "https://h/a");
        assert_eq!(
            auth_error_description(
                r#"Bearer realm="", error="invalid_token", error_description="expired""#
            ),
            Some("expired".into())
        );
    }

    #[test]
    fn throttling_classification() {
        let http = |status, retry_after| Error::Http {
            url: String::new(),
            status,
            detail: String::new(),
            retry_after,
        };
        assert!(is_throttling(&http(429, None)));
        assert!(is_throttling(&http(503, Some(Duration::from_secs(1)))));
        assert!(!is_throttling(&http(503, None)));
        assert!(!is_throttling(&http(404, None)));
    }

    #[test]
    fn mailboxes_share_limits_case_insensitively() {
        let mailboxes = GraphMailboxes::new();
        let a = mailboxes.limits("User1@Example.test");
        let b = mailboxes.limits("user1@example.test");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.requests.current(), MAX_REQUESTS_PER_MAILBOX);
    }
}
