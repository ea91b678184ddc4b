//! HTTP exchanges with the Communications Mining API: bearer auth, the `{"status":...}`
//! response envelope, and retries of transient failures (5xx, 429, 409, timeouts, resets) with
//! back-off that honours `Retry-After`.

use std::time::Duration;

use serde_json::Value;

use crate::exchange::throttle::{BackoffGate, MAX_DEMANDED_WAIT, retry_delay};
use crate::exchange::transport::{excerpt, parse_retry_after};
use crate::http::EndpointClass;
use crate::secret::{REDACTED, Secret};
use crate::shutdown::StopFlag;
use crate::sink::Error;

/// Replies we expect (envelopes, sync-state lists) stay far below this; a larger body is
/// not the API talking.
pub const MAX_REPLY_BYTES: u64 = 256 << 20;

/// How the client retries one request before giving up and letting its caller decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First back-off ceiling (without `Retry-After`); doubles per attempt up to `cap`.
    pub base: Duration,
    pub cap: Duration,
    /// A demanded wait longer than this is not slept here: the error goes back with
    /// `retry_after` so the uploader schedules the retry (and shutdown is not held up).
    pub max_inline_wait: Duration,
}

impl Default for RetryPolicy {
    /// Close to the reinfer CLI's schedule (waits of about 5, 10, 20 s), with one attempt more
    /// so a short burst of 429s is ridden out without failing the batch.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_secs(5),
            cap: Duration::from_secs(30),
            max_inline_wait: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }
}

/// A response that came back (any status).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub retry_after: Option<Duration>,
    pub location: Option<String>,
}

/// One request to send.
pub struct Call<'a> {
    pub method: Method,
    pub url: &'a str,
    pub body: Option<&'a [u8]>,
    /// For log lines: "storing 80 emails in acme/mail".
    pub what: &'a str,
    pub accept: &'static str,
    /// Whether 409 means "try again" (the CLI retries it) rather than an answer, as it is
    /// when creating a bucket that already exists.
    pub retry_conflict: bool,
}

pub struct Client {
    agent: ureq::Agent,
    token: Secret,
    pub retry: RetryPolicy,
    /// A 429 with `Retry-After` told to one uploader thread pauses them all.
    gate: BackoffGate,
    /// Never stopped: the gate's waits are bounded by `max_inline_wait` instead.
    never: StopFlag,
}

impl Client {
    pub fn new(agent: ureq::Agent, token: Secret) -> Client {
        Client {
            agent,
            token,
            retry: RetryPolicy::default(),
            gate: BackoffGate::default(),
            never: StopFlag::new(),
        }
    }

    /// Replaces every occurrence of the token in text that came from the network (a proxy
    /// may echo request headers into an error page).
    pub fn scrub(&self, text: &str) -> String {
        let token = self.token.expose();
        if token.is_empty() {
            text.to_owned()
        } else {
            text.replace(token, REDACTED)
        }
    }

    /// The server's message from an error body: the envelope's `message`, else the start of
    /// the body (an HTML page from a gateway), never the token.
    pub fn message(&self, reply: &Reply) -> String {
        let from_json = serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned));
        let text = match from_json {
            Some(message) if !message.is_empty() => message,
            _ => excerpt(&reply.body),
        };
        self.scrub(&text)
    }

    /// Sends `call`, retrying transient failures; returns the first non-transient reply, or an
    /// `Error::Http` (retryable, with the demanded wait) once the attempts are used up.
    pub fn send(&self, call: &Call) -> Result<Reply, Error> {
        let policy = self.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A pause demanded by the server (told to any thread) holds for every thread.
            self.gate.wait(&self.never);
            let (error, demanded) = match self.send_once(call) {
                Ok(reply) if !is_transient(reply.status, call.retry_conflict) => return Ok(reply),
                Ok(reply) => {
                    let error = Error::Http {
                        url: call.url.to_owned(),
                        status: Some(reply.status),
                        detail: self.message(&reply),
                        retry_after: reply.retry_after,
                    };
                    (error, reply.retry_after)
                }
                Err(detail) => {
                    let error = Error::Http {
                        url: call.url.to_owned(),
                        status: None,
                        detail,
                        retry_after: None,
                    };
                    (error, None)
                }
            };
            if attempt >= policy.max_attempts {
                return Err(error);
            }
            let wait =
                demanded.unwrap_or_else(|| retry_delay(attempt - 1, policy.base, policy.cap));
            if wait > policy.max_inline_wait {
                log::warn!(
                    "{}: {error}; the server asks for a pause of {} s, left to the caller",
                    call.what,
                    wait.as_secs()
                );
                return Err(with_retry_after(error, wait));
            }
            if demanded.is_some() {
                self.gate.pause_for(wait);
            }
            log::warn!(
                "{}: {error}; retry {attempt}/{} in {} ms ({})",
                call.what,
                policy.max_attempts - 1,
                wait.as_millis(),
                if demanded.is_some() {
                    "the server's Retry-After"
                } else {
                    "back-off"
                }
            );
            std::thread::sleep(wait);
        }
    }

    /// One request. `Err` is a transport failure (connect, timeout, reset), as text.
    fn send_once(&self, call: &Call) -> Result<Reply, String> {
        let authorization = format!("Bearer {}", self.token.expose());
        let started = std::time::Instant::now();
        let exchanged = |status, bytes, headers| {
            crate::http::log_exchange_with_headers(
                EndpointClass::Reinfer,
                call.method.as_str(),
                call.url,
                status,
                started.elapsed(),
                bytes,
                headers,
            );
        };
        let result = match (call.method, call.body) {
            (Method::Get, _) => self
                .agent
                .get(call.url)
                .header("Authorization", &authorization)
                .header("Accept", call.accept)
                .call(),
            (Method::Put, body) => self
                .agent
                .put(call.url)
                .header("Authorization", &authorization)
                .header("Accept", call.accept)
                .content_type("application/json")
                .send(body.unwrap_or_default()),
        };
        let mut response = result.map_err(|err| {
            exchanged(None, 0, None);
            self.scrub(&err.to_string())
        })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        // An HTTP date far ahead must not park a thread for days.
        let retry_after = header("retry-after")
            .as_deref()
            .and_then(parse_retry_after)
            .map(|wait| wait.min(MAX_DEMANDED_WAIT));
        let location = header("location");
        let body = crate::http::read_body(response.body_mut(), MAX_REPLY_BYTES);
        exchanged(
            Some(status),
            body.as_ref().map_or(0, |b| b.len() as u64),
            Some(response.headers()),
        );
        let body = body.map_err(|err| self.scrub(&format!("reading the response: {err}")))?;
        Ok(Reply {
            status,
            body,
            retry_after,
            location,
        })
    }

    /// The payload of a success envelope `{"status":"ok",...}`; any other reply is an error:
    /// 401/403 an `Auth` error saying what the token may not do (`action`).
    pub fn expect_ok(&self, url: &str, reply: &Reply, action: &str) -> Result<Value, Error> {
        if (200..300).contains(&reply.status) {
            let envelope = serde_json::from_slice::<Value>(&reply.body).ok();
            return match envelope {
                Some(value) if value.get("status").and_then(Value::as_str) == Some("ok") => {
                    Ok(value)
                }
                Some(value) if value.get("status").and_then(Value::as_str) == Some("error") => {
                    Err(Error::Http {
                        url: url.to_owned(),
                        status: Some(reply.status),
                        detail: format!(
                            "an error envelope with a success status: {}",
                            self.message(reply)
                        ),
                        retry_after: None,
                    })
                }
                _ => Err(Error::Http {
                    url: url.to_owned(),
                    status: Some(reply.status),
                    detail: format!(
                        "the reply is not the API's JSON envelope (a proxy or a wrong endpoint?): {}",
                        self.scrub(&excerpt(&reply.body))
                    ),
                    retry_after: None,
                }),
            };
        }
        Err(self.failure(url, reply, action))
    }

    /// The error for a reply that is not a success.
    pub fn failure(&self, url: &str, reply: &Reply, action: &str) -> Error {
        let message = self.message(reply);
        match reply.status {
            401 => Error::Auth {
                url: url.to_owned(),
                detail: format!(
                    "HTTP 401: the API token was not accepted ({message}); check REINFER_API_TOKEN"
                ),
            },
            403 => Error::Auth {
                url: url.to_owned(),
                detail: format!("HTTP 403: the token lacks permission to {action} ({message})"),
            },
            300..=399 => Error::Http {
                url: url.to_owned(),
                status: Some(reply.status),
                detail: format!(
                    "redirected to {}; give --reinfer-api-endpoint the final URL",
                    reply.location.as_deref().unwrap_or("(no Location)")
                ),
                retry_after: None,
            },
            status => Error::Http {
                url: url.to_owned(),
                status: Some(status),
                detail: message,
                retry_after: reply.retry_after,
            },
        }
    }
}

/// What the reinfer client retries (5xx, 429, 409), plus 408.
fn is_transient(status: u16, retry_conflict: bool) -> bool {
    status >= 500 || status == 429 || status == 408 || (status == 409 && retry_conflict)
}

fn with_retry_after(error: Error, wait: Duration) -> Error {
    match error {
        Error::Http {
            url,
            status,
            detail,
            ..
        } => Error::Http {
            url,
            status,
            detail,
            retry_after: Some(wait),
        },
        other => other,
    }
}
