//! OAuth2 client-credentials tokens from the Microsoft identity platform, with a client
//! secret or a client certificate (signed JWT assertion), cached and refreshed ahead of
//! expiry for every thread that talks to Graph, EWS or Azure Storage.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private};
use openssl::x509::X509;
use ureq::Agent;

use super::jwt::{self, CertificateId};
use super::{Error, TokenProvider};
use crate::exchange::throttle::retry_delay;
use crate::exchange::transport::{excerpt, parse_retry_after};
use crate::secret::{REDACTED, Secret};

pub use super::jwt::JwtAlgorithm;

/// `client_assertion_type` for certificate credentials (RFC 7523).
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Refresh at least this long before expiry: a token handed out just before it expires may
/// die while a long EWS request or a batch is still using it (MSAL uses the same 5 minutes).
const MIN_REFRESH_MARGIN_SECS: u64 = 300;
/// …or this share of the lifetime, whichever is longer, for tokens longer than 50 minutes.
const REFRESH_MARGIN_PERCENT: u32 = 10;
/// Attempts per refresh for throttling, 5xx and network failures.
const MAX_ATTEMPTS: u32 = 3;
/// Back-off between attempts when the server gives no `Retry-After`.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(10);
/// A longer `Retry-After` is not waited out inside `token()`, where every thread of the
/// service would be blocked behind it; the error goes to the caller's own retry instead.
const MAX_RETRY_AFTER_SECS: u64 = 60;
/// When a refresh fails for a transient reason, the old token is still handed out while it
/// has at least this long to live.
const FALLBACK_MIN_REMAINING_SECS: u64 = 30;
/// Token responses are a few kilobytes.
const MAX_TOKEN_RESPONSE_BYTES: u64 = 1024 * 1024;
/// When a 200 response has no `expires_in` (RFC 6749 makes it optional): AAD's usual hour.
/// If the token dies sooner, the service's 401 makes the caller `invalidate()`.
const DEFAULT_EXPIRES_IN_SECS: u64 = 3600;
/// SHA-1 output, the length of a certificate thumbprint.
const SHA1_BYTES: usize = 20;

/// What proves the app's identity to the token endpoint.
#[derive(Clone, Debug)]
pub enum ClientCredential {
    /// `auth_oauth_client_secret`.
    Secret(Secret),
    /// `auth_oauth_client_credential_private_key` (+ thumbprint): a signed JWT assertion.
    Certificate(Certificate),
}

/// A client certificate's private key and the thumbprint that names it to Azure AD.
#[derive(Clone)]
pub struct Certificate {
    /// Never printed: `Debug` is written by hand below, and openssl's own `Debug` of a key
    /// shows only its type.
    key: PKey<Private>,
    algorithm: JwtAlgorithm,
    id: CertificateId,
    /// SHA-1 thumbprint in upper-case hex, as the Azure portal shows it; for log lines.
    thumbprint_hex: String,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("key", &REDACTED)
            .field("algorithm", &self.algorithm)
            .field("thumbprint", &self.thumbprint_hex)
            .finish()
    }
}

impl Certificate {
    /// PEM text holding a private key (PKCS#8 "PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY") and
    /// optionally the certificate ("CERTIFICATE").
    ///
    /// `thumbprint`: hex SHA-1 of the certificate (as the Azure portal shows it; `:` and
    /// spaces allowed); when `None`, computed from the certificate in the PEM. `Ps256` needs
    /// the certificate in the PEM, since `x5t#S256` is its SHA-256.
    pub fn from_pem(
        pem: &Secret,
        thumbprint: Option<&str>,
        algorithm: JwtAlgorithm,
    ) -> Result<Certificate, Error> {
        let text = pem.expose();
        let credential = |detail: String| Error::Credential { detail };
        if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(credential(
                "auth_oauth_client_credential_private_key is encrypted; give the key without a \
                 passphrase (e.g. `openssl pkey -in key.pem -out plain.pem`)"
                    .into(),
            ));
        }
        if !text.contains("PRIVATE KEY-----") {
            return Err(credential(
                "auth_oauth_client_credential_private_key holds no private key; expected a PEM \
                 block \"-----BEGIN PRIVATE KEY-----\" or \"-----BEGIN RSA PRIVATE KEY-----\""
                    .into(),
            ));
        }
        // An empty passphrase instead of openssl's default callback, which would prompt on a
        // terminal. openssl's messages name the failing step, never key material.
        let key = PKey::private_key_from_pem_passphrase(text.as_bytes(), b"").map_err(|err| {
            credential(format!(
                "auth_oauth_client_credential_private_key: the private key cannot be read: {err}"
            ))
        })?;
        if key.id() != Id::RSA {
            return Err(credential(format!(
                "auth_oauth_client_credential_private_key holds a key of type {}; Azure client \
                 certificates need an RSA key",
                key_kind(key.id())
            )));
        }
        let certificates = X509::stack_from_pem(text.as_bytes()).map_err(|err| {
            credential(format!(
                "auth_oauth_client_credential_private_key: a certificate in the PEM cannot be \
                 read: {err}"
            ))
        })?;
        // With a chain in the PEM, ours is the certificate of our key, wherever it is.
        let certificate = match certificates.len() {
            0 => None,
            _ => Some(
                certificates
                    .into_iter()
                    .find(|cert| cert.public_key().is_ok_and(|pk| pk.public_eq(&key)))
                    .ok_or_else(|| {
                        credential(
                            "auth_oauth_client_credential_private_key: the certificate in the \
                             PEM does not belong to its private key"
                                .into(),
                        )
                    })?,
            ),
        };
        let digest = |cert: &X509, md: MessageDigest| {
            cert.digest(md)
                .map(|d| d.to_vec())
                .map_err(|err| credential(format!("cannot hash the certificate in the PEM: {err}")))
        };
        let cert_sha1 = certificate
            .as_ref()
            .map(|cert| digest(cert, MessageDigest::sha1()))
            .transpose()?;
        let sha1 = match (thumbprint, &cert_sha1) {
            (Some(given), cert_sha1) => {
                let given_bytes = parse_thumbprint(given)?;
                if let Some(actual) = cert_sha1
                    && *actual != given_bytes
                {
                    return Err(credential(format!(
                        "auth_oauth_client_credential_thumbprint {} does not match the \
                         certificate in auth_oauth_client_credential_private_key (SHA-1 {}); \
                         Azure AD would look up the wrong certificate",
                        hex_upper(&given_bytes),
                        hex_upper(actual)
                    )));
                }
                given_bytes
            }
            (None, Some(actual)) => actual.clone(),
            (None, None) => {
                return Err(credential(
                    "auth_oauth_client_credential_private_key has no certificate to compute the \
                     thumbprint from; set auth_oauth_client_credential_thumbprint or include the \
                     certificate in the PEM"
                        .into(),
                ));
            }
        };
        let id = match algorithm {
            JwtAlgorithm::Rs256 => CertificateId::X5t(jwt::base64url(&sha1)),
            JwtAlgorithm::Ps256 => {
                let Some(cert) = &certificate else {
                    return Err(credential(
                        "PS256 client assertions name the certificate by its SHA-256 \
                         (x5t#S256), which cannot be derived from the SHA-1 thumbprint: include \
                         the certificate in auth_oauth_client_credential_private_key"
                            .into(),
                    ));
                };
                CertificateId::X5tS256(jwt::base64url(&digest(cert, MessageDigest::sha256())?))
            }
        };
        Ok(Certificate {
            key,
            algorithm,
            id,
            thumbprint_hex: hex_upper(&sha1),
        })
    }

    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// The SHA-1 thumbprint in upper-case hex, as the Azure portal lists it.
    pub fn thumbprint_hex(&self) -> &str {
        &self.thumbprint_hex
    }

    /// A fresh signed assertion for `client_id` at the token endpoint `token_url`.
    pub fn client_assertion(&self, token_url: &str, client_id: &str) -> Result<Secret, Error> {
        let now_unix_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::Credential {
                detail: "the system clock is before 1970; cannot date a client assertion".into(),
            })?
            .as_secs() as i64;
        jwt::client_assertion(
            &self.key,
            self.algorithm,
            &self.id,
            token_url,
            client_id,
            now_unix_secs,
        )
    }

    /// `x5t 0A1B…` or `x5t#S256 …, SHA-1 0A1B…`, for log lines.
    fn describe(&self) -> String {
        match &self.id {
            CertificateId::X5t(_) => format!("x5t {}", self.thumbprint_hex),
            CertificateId::X5tS256(value) => {
                format!("x5t#S256 {value}, SHA-1 {}", self.thumbprint_hex)
            }
        }
    }
}

/// Hex SHA-1 thumbprint → its 20 bytes. Accepts the portal's form and the common
/// `AA:BB:…` and space-separated forms.
fn parse_thumbprint(text: &str) -> Result<Vec<u8>, Error> {
    let digits: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    let bad = || Error::Credential {
        detail: format!(
            "auth_oauth_client_credential_thumbprint \"{text}\" is not a SHA-1 thumbprint: \
             expected 40 hex digits, as the Azure portal shows under Certificates & secrets"
        ),
    };
    if digits.len() != 2 * SHA1_BYTES || !digits.is_ascii() {
        return Err(bad());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn key_kind(id: Id) -> String {
    match id {
        Id::EC => "EC".into(),
        Id::ED25519 => "Ed25519".into(),
        Id::ED448 => "Ed448".into(),
        Id::DSA => "DSA".into(),
        Id::RSA_PSS => "RSA-PSS-only".into(),
        other => format!("non-RSA (openssl id {})", other.as_raw()),
    }
}

/// A token from the cache, with when it stops being good.
struct CachedToken {
    access_token: Secret,
    expires_at: Instant,
    /// `expires_at` minus the refresh margin: from here on, `token()` fetches a new one.
    refresh_at: Instant,
}

impl CachedToken {
    fn is_fresh(&self, now: Instant) -> bool {
        now < self.refresh_at
    }

    fn lives_for_at_least(&self, now: Instant, secs: u64) -> bool {
        now + Duration::from_secs(secs) <= self.expires_at
    }
}

/// How long before expiry a token of `lifetime` is refreshed: the longer of 5 minutes and
/// 10 % of the lifetime. A token living 5 minutes or less is therefore refreshed on every
/// call.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 100 * REFRESH_MARGIN_PERCENT).max(Duration::from_secs(MIN_REFRESH_MARGIN_SECS))
}

#[derive(Default)]
struct CacheState {
    token: Option<CachedToken>,
    /// Completed refreshes (success or failure), so a caller that waited for someone else's
    /// refresh can tell it happened.
    refreshes: u64,
    /// Why the latest refresh failed, shared with the callers that waited for it.
    last_failure: Option<Error>,
}

type Clock = Box<dyn Fn() -> Instant + Send + Sync>;

/// Client-credentials tokens for one app, one scope, one token endpoint.
pub struct ClientCredentials {
    token_url: String,
    client_id: String,
    credential: ClientCredential,
    scope: String,
    agent: Agent,
    cache: Mutex<CacheState>,
    /// Held while fetching, so concurrent callers wait for one refresh instead of each
    /// asking the endpoint.
    refresh_turn: Mutex<()>,
    clock: Clock,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("credential", &self.credential)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent at every point a panic could happen.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ClientCredentials {
    /// `token_url`: e.g. `"{auth_oauth_authority}oauth2/v2.0/token"` (see
    /// [`ClientCredentials::token_url_for`]). `scope`: the resource's `…/.default`.
    pub fn new(
        token_url: String,
        client_id: String,
        credential: ClientCredential,
        scope: String,
    ) -> ClientCredentials {
        ClientCredentials {
            token_url,
            client_id,
            credential,
            scope,
            // The token endpoint is always verified TLS, whatever ews_ssl_verify says.
            agent: crate::http::agent(&crate::http::AgentSettings {
                verify_tls: true,
                ..Default::default()
            }),
            cache: Mutex::new(CacheState::default()),
            refresh_turn: Mutex::new(()),
            clock: Box::new(Instant::now),
        }
    }

    /// The v2.0 token endpoint of an authority such as
    /// `https://login.microsoftonline.com/{tenant}/`, with or without the trailing `/`.
    pub fn token_url_for(authority: &str) -> String {
        format!(
            "{}/oauth2/v2.0/token",
            authority.trim().trim_end_matches('/')
        )
    }

    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// Replaces the clock the cache runs on, so tests can move time forward.
    #[cfg(test)]
    fn with_clock(mut self, clock: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    fn now(&self) -> Instant {
        (self.clock)()
    }

    /// Fetches a token, retrying throttling, 5xx and network failures.
    fn fetch_with_retries(&self) -> Result<CachedToken, Error> {
        let mut attempt = 0;
        loop {
            let (error, retry_after) = match self.fetch_once() {
                Ok(token) => return Ok(token),
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Transient { error, retry_after }) => (error, retry_after),
            };
            attempt += 1;
            if attempt >= MAX_ATTEMPTS {
                return Err(error);
            }
            let wait = match retry_after {
                Some(wait) if wait > Duration::from_secs(MAX_RETRY_AFTER_SECS) => {
                    return Err(with_note(
                        error,
                        &format!("the server asked to retry after {} s", wait.as_secs()),
                    ));
                }
                Some(wait) => wait,
                None => retry_delay(attempt - 1, RETRY_BASE, RETRY_CAP),
            };
            log::debug!(
                "{error}; token request attempt {attempt} of {MAX_ATTEMPTS} failed, retrying in \
                 {:.1} s",
                wait.as_secs_f64()
            );
            std::thread::sleep(wait);
        }
    }

    /// One token request.
    fn fetch_once(&self) -> Result<CachedToken, Failure> {
        let requested_at = self.now();
        let mut scrub = Scrubber::default();
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
        ];
        let assertion;
        match &self.credential {
            ClientCredential::Secret(secret) => {
                scrub.add(secret.expose());
                form.push(("client_secret", secret.expose()));
            }
            ClientCredential::Certificate(cert) => {
                assertion = cert
                    .client_assertion(&self.token_url, &self.client_id)
                    .map_err(Failure::Final)?;
                scrub.add(assertion.expose());
                form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE));
                form.push(("client_assertion", assertion.expose()));
            }
        }
        // The body holds the credential; it goes to the wire and nowhere else.
        let body = Secret::new(form_encode(&form));
        let transport = |detail: String| Failure::Transient {
            error: Error::Transport {
                url: self.token_url.clone(),
                detail,
            },
            retry_after: None,
        };
        let started = std::time::Instant::now();
        let exchanged = |status, bytes, headers| {
            crate::http::log_exchange_with_headers(
                crate::http::EndpointClass::Token,
                "POST",
                &self.token_url,
                status,
                started.elapsed(),
                bytes,
                headers,
            );
        };
        let mut response = self
            .agent
            .post(&self.token_url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .send(body.expose())
            .map_err(|err| {
                exchanged(None, 0, None);
                transport(scrub.clean(&err.to_string()))
            })?;
        drop(body);
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v));
        let location = header("location");
        let bytes = crate::http::read_body(response.body_mut(), MAX_TOKEN_RESPONSE_BYTES);
        exchanged(
            Some(status),
            bytes.as_ref().map_or(0, |b| b.len() as u64),
            Some(response.headers()),
        );
        let bytes =
            bytes.map_err(|err| transport(scrub.clean(&format!("reading the response: {err}"))))?;
        match status {
            200 => self.parse_token(&bytes, requested_at, &scrub),
            408 | 429 | 500..=599 => Err(Failure::Transient {
                error: Error::Transport {
                    url: self.token_url.clone(),
                    detail: scrub.clean(&format!("HTTP {status}: {}", error_summary(&bytes))),
                },
                retry_after,
            }),
            _ => Err(Failure::Final(self.rejection(
                status,
                &bytes,
                location.as_deref(),
                &scrub,
            ))),
        }
    }

    fn parse_token(
        &self,
        bytes: &[u8],
        requested_at: Instant,
        scrub: &Scrubber,
    ) -> Result<CachedToken, Failure> {
        let malformed = |why: &str| {
            Failure::Final(Error::Transport {
                url: self.token_url.clone(),
                detail: format!("malformed token response (HTTP 200): {why}"),
            })
        };
        let json: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|_| malformed(&format!("not JSON: {}", scrub.clean(&excerpt(bytes)))))?;
        let access_token = match json.get("access_token") {
            Some(serde_json::Value::String(token)) if !token.is_empty() => Secret::new(token),
            _ => return Err(malformed("no access_token")),
        };
        let expires_in_secs = match json.get("expires_in") {
            None | Some(serde_json::Value::Null) => DEFAULT_EXPIRES_IN_SECS,
            // AAD v2 sends a number, the v1-like endpoints a numeric string.
            Some(value) => seconds(value).ok_or_else(|| {
                malformed(&format!("expires_in is {value}, not a number of seconds"))
            })?,
        };
        let lifetime = Duration::from_secs(expires_in_secs);
        // Counted from when we asked, not when the answer arrived: errs on the early side.
        let expires_at = requested_at + lifetime;
        let refresh_at = expires_at
            .checked_sub(refresh_margin(lifetime))
            .unwrap_or(requested_at)
            .max(requested_at);
        log::debug!(
            "token for app {} (scope {}) fetched from {}; expires in {expires_in_secs} s",
            self.client_id,
            self.scope,
            self.token_url
        );
        Ok(CachedToken {
            access_token,
            expires_at,
            refresh_at,
        })
    }

    /// The refusal of a non-retryable status: AAD's `error` and `error_description` when the
    /// body has them, else the status and the start of the body.
    fn rejection(
        &self,
        status: u16,
        bytes: &[u8],
        location: Option<&str>,
        scrub: &Scrubber,
    ) -> Error {
        let json: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(|v| v.as_str())
                .map(|s| s.to_owned())
        };
        let (error, description) = match (field("error"), field("error_description")) {
            (Some(error), description) => (
                error,
                // AAD puts trace and correlation ids on their own CRLF lines; one line is
                // what a log wants, and the ids are what Microsoft support asks for.
                description
                    .map(|d| d.lines().map(str::trim).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default(),
            ),
            (None, _) if (300..400).contains(&status) => (
                format!("HTTP {status}"),
                format!(
                    "redirected to {}; check auth_oauth_authority",
                    location.unwrap_or("(no Location)")
                ),
            ),
            (None, _) => (format!("HTTP {status}"), excerpt(bytes)),
        };
        Error::Rejected {
            url: self.token_url.clone(),
            error: scrub.clean(&error),
            description: scrub.clean(&description),
        }
    }

    /// The cached token if it is usable after someone else's refresh failed, else the error.
    fn fallback(&self, state: &CacheState, error: Error, now: Instant) -> Result<Secret, Error> {
        if error.is_retryable()
            && let Some(cached) = &state.token
            && cached.lives_for_at_least(now, FALLBACK_MIN_REMAINING_SECS)
        {
            log::warn!(
                "{error}; refreshing the token failed, using the current one until it expires"
            );
            return Ok(cached.access_token.clone());
        }
        Err(error)
    }
}

impl TokenProvider for ClientCredentials {
    fn token(&self) -> Result<Secret, Error> {
        let seen_refreshes = {
            let state = lock(&self.cache);
            if let Some(cached) = &state.token
                && cached.is_fresh(self.now())
            {
                return Ok(cached.access_token.clone());
            }
            state.refreshes
        };
        let _turn = lock(&self.refresh_turn);
        {
            let state = lock(&self.cache);
            let now = self.now();
            if state.refreshes != seen_refreshes {
                // Someone refreshed while we waited for our turn: share their outcome rather
                // than asking again (a token shorter than the refresh margin is never "fresh",
                // but a just-fetched one is good to use).
                if let Some(error) = &state.last_failure {
                    return self.fallback(&state, error.clone(), now);
                }
                if let Some(cached) = &state.token
                    && now < cached.expires_at
                {
                    return Ok(cached.access_token.clone());
                }
            } else if let Some(cached) = &state.token
                && cached.is_fresh(now)
            {
                return Ok(cached.access_token.clone());
            }
        }
        let outcome = self.fetch_with_retries();
        let mut state = lock(&self.cache);
        state.refreshes += 1;
        match outcome {
            Ok(fetched) => {
                let token = fetched.access_token.clone();
                state.token = Some(fetched);
                state.last_failure = None;
                Ok(token)
            }
            Err(error) => {
                state.last_failure = Some(error.clone());
                let now = self.now();
                self.fallback(&state, error, now)
            }
        }
    }

    fn invalidate(&self) {
        let mut state = lock(&self.cache);
        state.token = None;
    }

    fn describe(&self) -> String {
        let what = match &self.credential {
            ClientCredential::Secret(_) => "client secret".to_owned(),
            ClientCredential::Certificate(cert) => {
                format!("client certificate ({})", cert.describe())
            }
        };
        format!(
            "{what} for app {} (scope {}) at {}",
            self.client_id, self.scope, self.token_url
        )
    }
}

/// Why one token request failed, and whether another attempt may help.
enum Failure {
    Transient {
        error: Error,
        retry_after: Option<Duration>,
    },
    Final(Error),
}

fn with_note(error: Error, note: &str) -> Error {
    match error {
        Error::Transport { url, detail } => Error::Transport {
            url,
            detail: format!("{detail} ({note})"),
        },
        other => other,
    }
}

/// Seconds from a JSON number or numeric string.
fn seconds(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// AAD's `error: description` from an error body, else the start of the body.
fn error_summary(bytes: &[u8]) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
    };
    match (field("error"), field("error_description")) {
        (Some(error), Some(description)) => format!(
            "{error}: {}",
            description
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        ),
        (Some(error), None) => error.to_owned(),
        _ => excerpt(bytes),
    }
}

/// `application/x-www-form-urlencoded`, encoding everything but RFC 3986 unreserved
/// characters. Our own encoder (not ureq's `send_form`) so the scrubber knows exactly what
/// form of the secret went on the wire.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!("{}={}", percent_encode(name), percent_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Removes our credentials from text that came back from the server or the network stack,
/// in case a proxy or a misbehaving endpoint echoes the request.
#[derive(Default)]
struct Scrubber {
    needles: Vec<Secret>,
}

impl Scrubber {
    fn add(&mut self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        self.needles.push(Secret::new(secret));
        let encoded = percent_encode(secret);
        if encoded != secret {
            self.needles.push(Secret::new(encoded));
        }
    }

    fn clean(&self, text: &str) -> String {
        self.needles.iter().fold(text.to_owned(), |text, needle| {
            text.replace(needle.expose(), REDACTED)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier, OnceLock};

    use fake_login::{App, FakeLogin};

    use super::*;

    const TENANT: &str = "contoso.onmicrosoft.com";
    const SECRET_APP: &str = "11111111-2222-3333-4444-555555555555";
    const CERT_APP: &str = "66666666-7777-8888-9999-000000000000";
    /// Has characters that need form encoding, so a wrong encoding fails the secret test.
    const SECRET: &str = "Qx8Q~c2+Secret/Value=with&odd%chars";
    const GRAPH: &str = "https://graph.microsoft.com/.default";

    struct TestCert {
        /// PKCS#8 key + certificate.
        pem: String,
        der: Vec<u8>,
        thumbprint_hex: String,
        /// PKCS#1 "RSA PRIVATE KEY", no certificate.
        pkcs1_key_only: String,
    }

    /// Key generation is slow in debug builds; the tests share two certificates.
    fn certs() -> &'static (TestCert, TestCert) {
        static CERTS: OnceLock<(TestCert, TestCert)> = OnceLock::new();
        CERTS.get_or_init(|| {
            let make = |cn: &str| {
                let (pem, der, thumbprint_hex) = fake_login::make_certificate(cn);
                let key = PKey::private_key_from_pem(pem.as_bytes()).unwrap();
                let pkcs1 = key.rsa().unwrap().private_key_to_pem().unwrap();
                TestCert {
                    pem,
                    der,
                    thumbprint_hex,
                    pkcs1_key_only: String::from_utf8(pkcs1).unwrap(),
                }
            };
            (make("exchange-sync test"), make("another app"))
        })
    }

    fn start_login() -> FakeLogin {
        let (cert, _) = certs();
        FakeLogin::start(
            TENANT,
            vec![
                App::with_secret(SECRET_APP, SECRET),
                App::with_certificate(CERT_APP, cert.der.clone()),
            ],
        )
        .unwrap()
    }

    fn secret_provider(login: &FakeLogin, secret: &str) -> ClientCredentials {
        ClientCredentials::new(
            ClientCredentials::token_url_for(&login.authority()),
            SECRET_APP.into(),
            ClientCredential::Secret(Secret::new(secret)),
            GRAPH.into(),
        )
    }

    fn cert_provider(login: &FakeLogin, cert: Certificate) -> ClientCredentials {
        ClientCredentials::new(
            login.token_url(),
            CERT_APP.into(),
            ClientCredential::Certificate(cert),
            GRAPH.into(),
        )
    }

    /// A clock tests move by hand: `Instant` at creation plus an offset in seconds.
    #[derive(Clone)]
    struct ManualClock {
        start: Instant,
        offset_secs: Arc<AtomicU64>,
    }

    impl ManualClock {
        fn new() -> Self {
            ManualClock {
                start: Instant::now(),
                offset_secs: Arc::new(AtomicU64::new(0)),
            }
        }

        fn set(&self, secs: u64) {
            self.offset_secs.store(secs, Ordering::SeqCst);
        }

        fn now(&self) -> Instant {
            self.start + Duration::from_secs(self.offset_secs.load(Ordering::SeqCst))
        }
    }

    fn credential_error(result: Result<Certificate, Error>) -> String {
        match result {
            Err(Error::Credential { detail }) => detail,
            Err(other) => panic!("expected a Credential error, got {other:?}"),
            Ok(cert) => panic!("expected a Credential error, got {cert:?}"),
        }
    }

    #[test]
    fn token_url_for_tolerates_a_missing_slash() {
        assert_eq!(
            ClientCredentials::token_url_for("https://login.microsoftonline.com/contoso/"),
            "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
        );
        assert_eq!(
            ClientCredentials::token_url_for("https://login.microsoftonline.com/contoso"),
            "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
        );
        let login = start_login();
        assert_eq!(
            ClientCredentials::token_url_for(&login.authority()),
            login.token_url()
        );
    }

    #[test]
    fn secret_flow() {
        let login = start_login();
        let provider = secret_provider(&login, SECRET);
        let token = provider.token().unwrap();
        assert!(login.is_valid_token(token.expose(), GRAPH));
        let issued = login.issued();
        assert_eq!(issued.len(), 1);
        assert_eq!(issued[0].method, "secret");
        assert_eq!(issued[0].client_id, SECRET_APP);
        assert_eq!(issued[0].scope, GRAPH);
        let describe = provider.describe();
        assert_eq!(
            describe,
            format!(
                "client secret for app {SECRET_APP} (scope {GRAPH}) at {}",
                login.token_url()
            )
        );
        let debug = format!("{provider:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(!debug.contains(token.expose()), "{debug}");
        assert!(debug.contains(REDACTED), "{debug}");
    }

    #[test]
    fn certificate_rs256_with_explicit_thumbprint_and_pkcs1_key() {
        let login = start_login();
        let (cert, _) = certs();
        assert!(cert.pkcs1_key_only.contains("BEGIN RSA PRIVATE KEY"));
        // The portal's form with separators and lower case still names the certificate.
        let spaced: String = cert
            .thumbprint_hex
            .to_lowercase()
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let certificate = Certificate::from_pem(
            &Secret::new(&cert.pkcs1_key_only),
            Some(&spaced),
            JwtAlgorithm::Rs256,
        )
        .unwrap();
        assert_eq!(certificate.thumbprint_hex(), cert.thumbprint_hex);
        let provider = cert_provider(&login, certificate);
        let token = provider.token().unwrap();
        assert!(login.is_valid_token(token.expose(), GRAPH));
        let issued = &login.issued()[0];
        assert_eq!(issued.method, "assertion");
        assert_eq!(issued.assertion_alg.as_deref(), Some("RS256"));
        assert_eq!(issued.assertion_thumbprint_header.as_deref(), Some("x5t"));
        assert_eq!(
            provider.describe(),
            format!(
                "client certificate (x5t {}) for app {CERT_APP} (scope {GRAPH}) at {}",
                cert.thumbprint_hex,
                login.token_url()
            )
        );
    }

    #[test]
    fn certificate_rs256_thumbprint_from_the_pem() {
        let login = start_login();
        let (cert, _) = certs();
        let certificate =
            Certificate::from_pem(&Secret::new(&cert.pem), None, JwtAlgorithm::Rs256).unwrap();
        assert_eq!(certificate.thumbprint_hex(), cert.thumbprint_hex);
        assert_eq!(certificate.algorithm(), JwtAlgorithm::Rs256);
        let provider = cert_provider(&login, certificate);
        let token = provider.token().unwrap();
        assert!(login.is_valid_token(token.expose(), GRAPH));
        // The same thumbprint given explicitly agrees with the certificate.
        Certificate::from_pem(
            &Secret::new(&cert.pem),
            Some(&cert.thumbprint_hex),
            JwtAlgorithm::Rs256,
        )
        .unwrap();
    }

    #[test]
    fn certificate_ps256_with_x5t_s256() {
        let login = start_login();
        let (cert, _) = certs();
        let certificate =
            Certificate::from_pem(&Secret::new(&cert.pem), None, JwtAlgorithm::Ps256).unwrap();
        let provider = cert_provider(&login, certificate);
        let token = provider.token().unwrap();
        assert!(login.is_valid_token(token.expose(), GRAPH));
        let issued = &login.issued()[0];
        assert_eq!(issued.assertion_alg.as_deref(), Some("PS256"));
        assert_eq!(
            issued.assertion_thumbprint_header.as_deref(),
            Some("x5t#S256")
        );
        assert!(provider.describe().contains("x5t#S256 "));
        assert!(provider.describe().contains(&cert.thumbprint_hex));
    }

    #[test]
    fn certificate_errors_are_clear() {
        let (cert, other) = certs();
        let key_only = Secret::new(&cert.pkcs1_key_only);
        let detail = credential_error(Certificate::from_pem(&key_only, None, JwtAlgorithm::Rs256));
        assert!(
            detail.contains(
                "has no certificate to compute the thumbprint from; set \
                 auth_oauth_client_credential_thumbprint or include the certificate in the PEM"
            ),
            "{detail}"
        );
        let detail = credential_error(Certificate::from_pem(
            &key_only,
            Some(&cert.thumbprint_hex),
            JwtAlgorithm::Ps256,
        ));
        assert!(detail.contains("x5t#S256"), "{detail}");
        let detail = credential_error(Certificate::from_pem(
            &key_only,
            Some("not-a-thumbprint"),
            JwtAlgorithm::Rs256,
        ));
        assert!(detail.contains("40 hex digits"), "{detail}");
        let detail = credential_error(Certificate::from_pem(
            &Secret::new(&cert.pem),
            Some(&other.thumbprint_hex),
            JwtAlgorithm::Rs256,
        ));
        assert!(detail.contains("does not match"), "{detail}");
        // The key of one certificate with the certificate of another.
        let mismatched = format!(
            "{}{}",
            cert.pkcs1_key_only,
            &other.pem[other.pem.find("-----BEGIN CERTIFICATE").unwrap()..]
        );
        let detail = credential_error(Certificate::from_pem(
            &Secret::new(mismatched),
            None,
            JwtAlgorithm::Rs256,
        ));
        assert!(detail.contains("does not belong"), "{detail}");
        let cert_only = &cert.pem[cert.pem.find("-----BEGIN CERTIFICATE").unwrap()..];
        let detail = credential_error(Certificate::from_pem(
            &Secret::new(cert_only),
            None,
            JwtAlgorithm::Rs256,
        ));
        assert!(detail.contains("holds no private key"), "{detail}");
        let detail = credential_error(Certificate::from_pem(
            &Secret::new(
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
            ),
            None,
            JwtAlgorithm::Rs256,
        ));
        assert!(detail.contains("encrypted"), "{detail}");
        let ec = PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let ec_pem = String::from_utf8(ec.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let detail = credential_error(Certificate::from_pem(
            &Secret::new(&ec_pem),
            Some(&cert.thumbprint_hex),
            JwtAlgorithm::Rs256,
        ));
        assert!(detail.contains("type EC;"), "{detail}");
        // A corrupt key: the message must not echo the PEM.
        let corrupt =
            "-----BEGIN PRIVATE KEY-----\nU2VjcmV0S2V5TWF0ZXJpYWw=\n-----END PRIVATE KEY-----\n";
        let detail = credential_error(Certificate::from_pem(
            &Secret::new(corrupt),
            Some(&cert.thumbprint_hex),
            JwtAlgorithm::Rs256,
        ));
        assert!(detail.contains("cannot be read"), "{detail}");
        assert!(!detail.contains("U2VjcmV0S2V5TWF0ZXJpYWw"), "{detail}");
    }

    #[test]
    fn certificate_debug_shows_no_key() {
        let (cert, _) = certs();
        let certificate =
            Certificate::from_pem(&Secret::new(&cert.pem), None, JwtAlgorithm::Rs256).unwrap();
        let debug = format!("{:?}", ClientCredential::Certificate(certificate));
        assert!(debug.contains(REDACTED), "{debug}");
        assert!(debug.contains(&cert.thumbprint_hex), "{debug}");
        let key_body: String = cert.pem.lines().nth(1).unwrap().to_owned();
        assert!(!debug.contains(&key_body), "{debug}");
    }

    #[test]
    fn wrong_secret_is_rejected_without_showing_the_secret() {
        let login = start_login();
        let wrong = "Wr0ng~Secret.Value_123";
        let provider = secret_provider(&login, wrong);
        let error = provider.token().unwrap_err();
        let Error::Rejected {
            url,
            error: code,
            description,
        } = &error
        else {
            panic!("expected Rejected, got {error:?}");
        };
        assert_eq!(url, &login.token_url());
        assert_eq!(code, "invalid_client");
        assert!(description.starts_with("AADSTS7000215: "), "{description}");
        assert!(description.contains("Trace ID: "), "{description}");
        assert!(!description.contains('\n') && !description.contains('\r'));
        assert!(!error.is_retryable());
        for shown in [
            format!("{error}"),
            format!("{error:?}"),
            provider.describe(),
        ] {
            assert!(!shown.contains(wrong), "{shown}");
            assert!(!shown.contains(&percent_encode(wrong)), "{shown}");
        }
        // No retries for a refusal.
        assert_eq!(login.requests(), 1);
    }

    #[test]
    fn unknown_app_and_bad_scope_are_rejected() {
        let login = start_login();
        let provider = ClientCredentials::new(
            login.token_url(),
            "00000000-0000-0000-0000-000000000000".into(),
            ClientCredential::Secret(Secret::new(SECRET)),
            GRAPH.into(),
        );
        let error = provider.token().unwrap_err();
        assert!(
            matches!(&error, Error::Rejected { description, .. } if description.starts_with("AADSTS700016")),
            "{error:?}"
        );
        let provider = ClientCredentials::new(
            login.token_url(),
            SECRET_APP.into(),
            ClientCredential::Secret(Secret::new(SECRET)),
            "https://graph.microsoft.com/Mail.Read".into(),
        );
        let error = provider.token().unwrap_err();
        assert!(
            matches!(&error, Error::Rejected { error, .. } if error == "invalid_scope"),
            "{error:?}"
        );
    }

    #[test]
    fn tokens_are_cached() {
        let login = start_login();
        let provider = secret_provider(&login, SECRET);
        let first = provider.token().unwrap();
        let second = provider.token().unwrap();
        assert_eq!(first, second);
        assert_eq!(login.requests(), 1);
    }

    #[test]
    fn refresh_margin_is_five_minutes_or_a_tenth() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3599)),
            Duration::from_millis(359_900)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(7200)),
            Duration::from_secs(720)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(1800)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(60)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn refreshes_ahead_of_expiry() {
        let login = start_login();
        let clock = ManualClock::new();
        let tick = clock.clone();
        let provider = secret_provider(&login, SECRET).with_clock(move || tick.now());
        let first = provider.token().unwrap();
        // 3599 s lifetime, 359.9 s margin: fresh until 3239.1 s after the request.
        clock.set(3239);
        assert_eq!(provider.token().unwrap(), first);
        assert_eq!(login.requests(), 1);
        clock.set(3240);
        let second = provider.token().unwrap();
        assert_ne!(second, first);
        assert_eq!(login.requests(), 2);
        // The new token's deadline counts from its own request.
        clock.set(3240 + 3239);
        assert_eq!(provider.token().unwrap(), second);
        assert_eq!(login.requests(), 2);
    }

    #[test]
    fn short_lived_tokens_are_fetched_every_time() {
        let login = start_login();
        login.set_token_lifetime_secs(60);
        let provider = secret_provider(&login, SECRET);
        let first = provider.token().unwrap();
        let second = provider.token().unwrap();
        assert_ne!(first, second);
        assert_eq!(login.requests(), 2);
    }

    #[test]
    fn invalidate_drops_the_cached_token() {
        let login = start_login();
        let provider = secret_provider(&login, SECRET);
        let first = provider.token().unwrap();
        provider.invalidate();
        let second = provider.token().unwrap();
        assert_ne!(first, second);
        assert_eq!(login.requests(), 2);
    }

    #[test]
    fn throttling_is_retried_after_retry_after() {
        let login = start_login();
        login.fail_next(429, Some("0"));
        let provider = secret_provider(&login, SECRET);
        let token = provider.token().unwrap();
        assert!(login.is_valid_token(token.expose(), GRAPH));
        assert_eq!(login.requests(), 2);
    }

    #[test]
    fn persistent_failures_give_a_transport_error_after_three_attempts() {
        let login = start_login();
        for _ in 0..3 {
            login.fail_next(503, Some("0"));
        }
        let provider = secret_provider(&login, SECRET);
        let error = provider.token().unwrap_err();
        assert!(error.is_retryable(), "{error:?}");
        let Error::Transport { url, detail } = &error else {
            panic!("expected Transport, got {error:?}");
        };
        assert_eq!(url, &login.token_url());
        assert!(
            detail.starts_with("HTTP 503: temporarily_unavailable"),
            "{detail}"
        );
        assert_eq!(login.requests(), 3);
        // The next call tries again and succeeds.
        provider.token().unwrap();
        assert_eq!(login.requests(), 4);
    }

    #[test]
    fn a_long_retry_after_is_left_to_the_caller() {
        let login = start_login();
        login.fail_next(429, Some("3600"));
        let provider = secret_provider(&login, SECRET);
        let error = provider.token().unwrap_err();
        assert!(
            matches!(&error, Error::Transport { detail, .. } if detail.contains("retry after 3600 s")),
            "{error:?}"
        );
        assert_eq!(login.requests(), 1);
    }

    #[test]
    fn a_failed_refresh_keeps_the_old_token_while_it_lives() {
        let login = start_login();
        let clock = ManualClock::new();
        let tick = clock.clone();
        let provider = secret_provider(&login, SECRET).with_clock(move || tick.now());
        let first = provider.token().unwrap();
        clock.set(3300); // due for refresh, 299 s left
        for _ in 0..3 {
            login.fail_next(503, Some("0"));
        }
        assert_eq!(provider.token().unwrap(), first);
        assert_eq!(login.requests(), 4);
        clock.set(3580); // 19 s left: too little to hand out
        for _ in 0..3 {
            login.fail_next(503, Some("0"));
        }
        assert!(provider.token().unwrap_err().is_retryable());
    }

    #[test]
    fn concurrent_callers_share_one_request() {
        let login = start_login();
        let provider = secret_provider(&login, SECRET);
        let barrier = Barrier::new(8);
        let tokens: Vec<Secret> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        provider.token().unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(tokens.iter().all(|t| t == &tokens[0]));
        assert_eq!(login.requests(), 1);
    }

    #[test]
    fn concurrent_callers_share_a_failure_too() {
        let login = start_login();
        for _ in 0..3 {
            login.fail_next(500, Some("0"));
        }
        let provider = secret_provider(&login, SECRET);
        let barrier = Barrier::new(4);
        let errors: Vec<Error> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        provider.token().unwrap_err()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(errors.iter().all(Error::is_retryable));
        // One refresh of three attempts, not four.
        assert_eq!(login.requests(), 3);
    }

    /// An HTTP server answering `count` requests with `status`, `Retry-After: 0` and `body`.
    fn stub(
        status: u16,
        body: &'static str,
        count: usize,
    ) -> (String, std::thread::JoinHandle<()>) {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let handle = std::thread::spawn(move || {
            for _ in 0..count {
                let Ok(mut request) = server.recv() else {
                    return;
                };
                let mut sink = String::new();
                let _ = std::io::Read::read_to_string(request.as_reader(), &mut sink);
                let retry_after = tiny_http::Header::from_bytes("Retry-After", "0").unwrap();
                let _ = request.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(retry_after),
                );
            }
        });
        (
            format!("http://127.0.0.1:{port}/t/oauth2/v2.0/token"),
            handle,
        )
    }

    fn provider_at(url: String) -> ClientCredentials {
        ClientCredentials::new(
            url,
            SECRET_APP.into(),
            ClientCredential::Secret(Secret::new(SECRET)),
            GRAPH.into(),
        )
    }

    #[test]
    fn a_200_without_access_token_is_malformed() {
        let (url, server) = stub(200, r#"{"token_type":"Bearer","expires_in":3599}"#, 1);
        let error = provider_at(url).token().unwrap_err();
        server.join().unwrap();
        assert!(error.is_retryable());
        assert!(
            matches!(&error, Error::Transport { detail, .. } if detail.contains("malformed token response")),
            "{error:?}"
        );
        let (url, server) = stub(200, "<html>proxy login</html>", 1);
        let error = provider_at(url).token().unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(&error, Error::Transport { detail, .. } if detail.contains("malformed token response")),
            "{error:?}"
        );
    }

    #[test]
    fn expires_in_may_be_a_string() {
        let clock = ManualClock::new();
        let tick = clock.clone();
        let (url, server) = stub(
            200,
            r#"{"token_type":"Bearer","expires_in":"3599","access_token":"abc"}"#,
            1,
        );
        let provider = provider_at(url).with_clock(move || tick.now());
        assert_eq!(provider.token().unwrap().expose(), "abc");
        server.join().unwrap();
        // Still cached near the end of the string-given lifetime: the server is gone now.
        clock.set(3239);
        assert_eq!(provider.token().unwrap().expose(), "abc");
    }

    #[test]
    fn server_echoes_of_the_secret_are_scrubbed() {
        // A misbehaving endpoint quoting the request body back in its description.
        let body: &'static str = Box::leak(
            format!(
                r#"{{"error":"invalid_request","error_description":"bad body: client_secret={}"}}"#,
                percent_encode(SECRET)
            )
            .into_boxed_str(),
        );
        let (url, server) = stub(400, body, 1);
        let error = provider_at(url).token().unwrap_err();
        server.join().unwrap();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(&percent_encode(SECRET)), "{shown}");
        assert!(shown.contains(REDACTED), "{shown}");
        let (url, server) = stub(
            502,
            Box::leak(format!("gateway saw {SECRET}").into_boxed_str()),
            3,
        );
        let error = provider_at(url).token().unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(&error, Error::Transport { detail, .. } if detail.contains("HTTP 502")),
            "{error:?}"
        );
        assert!(!format!("{error} {error:?}").contains(SECRET), "{error:?}");
    }

    #[test]
    fn unreachable_endpoint_is_a_transport_error() {
        // Bind and drop to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let error = provider_at(format!("http://127.0.0.1:{port}/t/oauth2/v2.0/token"))
            .token()
            .unwrap_err();
        assert!(error.is_retryable(), "{error:?}");
    }

    #[test]
    fn form_encoding_escapes_everything_but_unreserved() {
        assert_eq!(
            form_encode(&[("a b", "x+y&z=/~._-"), ("scope", GRAPH)]),
            "a%20b=x%2By%26z%3D%2F~._-&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"
        );
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn thumbprints_parse_like_the_documentation_example() {
        // certificate-credentials.md: hex 84E05C1D… is x5t hOBcHZi846VCHSJbFAs26Go9VTQ.
        let bytes = parse_thumbprint("84E05C1D98BCE3A5421D225B140B36E86A3D5534").unwrap();
        assert_eq!(jwt::base64url(&bytes), "hOBcHZi846VCHSJbFAs26Go9VTQ");
        assert_eq!(
            parse_thumbprint("84 e0 5c 1d 98 bc e3 a5 42 1d 22 5b 14 0b 36 e8 6a 3d 55 34")
                .unwrap(),
            bytes
        );
        assert!(parse_thumbprint("84E05C1D98BCE3A5421D225B140B36E86A3D55").is_err());
        assert!(parse_thumbprint("ZZE05C1D98BCE3A5421D225B140B36E86A3D5534").is_err());
        assert!(parse_thumbprint("84E05C1D98BCE3A5421D225B140B36E86A3D553é").is_err());
    }

    // ---- secrets never reach a log line ----

    struct Capture {
        lines: Mutex<Vec<String>>,
    }

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }

        fn log(&self, record: &log::Record<'_>) {
            lock(&self.lines).push(format!("{} {}", record.target(), record.args()));
        }

        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture {
        lines: Mutex::new(Vec::new()),
    };

    #[test]
    fn logs_carry_no_secrets() {
        if log::set_logger(&CAPTURE).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
        let login = start_login();
        let (cert, _) = certs();
        // Success with a secret, a refused secret, a retried 429, a certificate.
        let provider = secret_provider(&login, SECRET);
        login.fail_next(429, Some("0"));
        let token = provider.token().unwrap();
        let wrong = "Wr0ng~Secret.Value_456";
        let _ = secret_provider(&login, wrong).token();
        let certificate =
            Certificate::from_pem(&Secret::new(&cert.pem), None, JwtAlgorithm::Ps256).unwrap();
        let cert_token = cert_provider(&login, certificate).token().unwrap();

        let lines = lock(&CAPTURE.lines).clone();
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("token for app {SECRET_APP}"))
                    && l.contains("expires in 3599 s")),
            "the capture logger is not installed (another test set a logger?): {lines:?}"
        );
        assert!(lines.iter().any(|l| l.contains("retrying in")), "{lines:?}");
        let key_line = cert.pem.lines().nth(1).unwrap();
        for line in &lines {
            for secret in [
                SECRET,
                &percent_encode(SECRET),
                wrong,
                token.expose(),
                cert_token.expose(),
                key_line,
            ] {
                assert!(!line.contains(secret), "a log line shows a secret: {line}");
            }
        }
    }
}
