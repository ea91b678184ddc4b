//! A loopback fake of the Microsoft identity platform token endpoint
//! (`POST /{tenant}/oauth2/v2.0/token`, client-credentials grant) for exchange-sync's tests.
//!
//! It validates requests like Azure AD: `grant_type`, known `client_id`, `scope` ending in
//! `/.default`, the client secret, or a client assertion signed (RS256 or PS256) by the key of
//! the app's registered certificate and naming it by `x5t` or `x5t#S256`, with the right
//! audience, issuer, subject, time range and a fresh `jti`. Errors come back in AAD's JSON
//! shape with AADSTS codes (the codes the reference names; for replayed `jti` and a few
//! malformed cases the choice of code is the fake's). Fake resource servers (Graph, EWS,
//! Azure) check bearer tokens with [`FakeLogin::is_valid_token`].
//!
//! ```no_run
//! use fake_login::{App, FakeLogin};
//! let login = FakeLogin::start("contoso", vec![App::with_secret("1111", "s3cret")]).unwrap();
//! println!("{}", login.token_url());
//! ```

mod aad;
mod assertion;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509, X509NameBuilder};
use tiny_http::{Header, Response, Server};

use aad::AadError;

/// What Azure AD issues by default.
pub const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 3599;
/// `client_assertion_type` for certificate credentials.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Threads answering requests: enough for the concurrency tests, few for a 2-core machine.
const WORKER_THREADS: usize = 4;
/// Token requests are a few kilobytes; anything far larger is a client bug.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// An app registration in the fake tenant.
#[derive(Debug, Clone, Default)]
pub struct App {
    pub client_id: String,
    /// The client secret value, if the app has one.
    pub secret: Option<String>,
    /// The registered certificate (DER): assertions must be signed by its key and carry its
    /// `x5t` (SHA-1) or `x5t#S256` (SHA-256).
    pub certificate_der: Option<Vec<u8>>,
}

impl App {
    pub fn with_secret(client_id: &str, secret: &str) -> App {
        App {
            client_id: client_id.to_owned(),
            secret: Some(secret.to_owned()),
            certificate_der: None,
        }
    }

    pub fn with_certificate(client_id: &str, certificate_der: Vec<u8>) -> App {
        App {
            client_id: client_id.to_owned(),
            secret: None,
            certificate_der: Some(certificate_der),
        }
    }
}

/// A token the fake issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub client_id: String,
    pub scope: String,
    pub access_token: String,
    /// `"secret"` or `"assertion"`.
    pub method: String,
    /// For assertions: `"RS256"` or `"PS256"`.
    pub assertion_alg: Option<String>,
    /// For assertions: `"x5t"` or `"x5t#S256"`.
    pub assertion_thumbprint_header: Option<String>,
    pub lifetime_secs: u64,
}

/// A running fake token endpoint. Dropping it stops the server and joins its threads.
pub struct FakeLogin {
    state: Arc<State>,
    server: Arc<Server>,
    workers: Vec<JoinHandle<()>>,
    port: u16,
}

struct State {
    tenant: String,
    /// Filled in once the port is known; read only by request handlers.
    token_url: Mutex<String>,
    apps: HashMap<String, App>,
    lifetime_secs: AtomicU64,
    requests: AtomicUsize,
    failures: Mutex<VecDeque<(u16, Option<String>)>>,
    issued: Mutex<Vec<Issued>>,
    /// access token → (scope, valid until).
    valid: Mutex<HashMap<String, (String, Instant)>>,
    used_jtis: Mutex<HashSet<String>>,
    stopping: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not take every later assertion down with it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeLogin {
    /// Starts the fake on `127.0.0.1` on a free port, for `tenant` (a GUID or domain) with
    /// these app registrations.
    pub fn start(tenant: &str, apps: Vec<App>) -> std::io::Result<FakeLogin> {
        let server = Server::http("127.0.0.1:0").map_err(std::io::Error::other)?;
        let port = server
            .server_addr()
            .to_ip()
            .map(|addr| addr.port())
            .ok_or_else(|| std::io::Error::other("tiny_http did not bind an IP address"))?;
        let state = Arc::new(State {
            tenant: tenant.to_owned(),
            token_url: Mutex::new(String::new()),
            apps: apps
                .into_iter()
                .map(|app| (app.client_id.clone(), app))
                .collect(),
            lifetime_secs: AtomicU64::new(DEFAULT_TOKEN_LIFETIME_SECS),
            requests: AtomicUsize::new(0),
            failures: Mutex::new(VecDeque::new()),
            issued: Mutex::new(Vec::new()),
            valid: Mutex::new(HashMap::new()),
            used_jtis: Mutex::new(HashSet::new()),
            stopping: AtomicBool::new(false),
        });
        let server = Arc::new(server);
        let mut login = FakeLogin {
            state,
            server,
            workers: Vec::new(),
            port,
        };
        *lock(&login.state.token_url) = login.token_url();
        for index in 0..WORKER_THREADS {
            let state = Arc::clone(&login.state);
            let server = Arc::clone(&login.server);
            let worker = std::thread::Builder::new()
                .name(format!("fake-login-{index}"))
                .spawn(move || serve(&server, &state))?;
            login.workers.push(worker);
        }
        Ok(login)
    }

    /// `http://127.0.0.1:PORT/{tenant}/`, the `auth_oauth_authority` to configure.
    pub fn authority(&self) -> String {
        format!("http://127.0.0.1:{}/{}/", self.port, self.state.tenant)
    }

    /// `{authority}oauth2/v2.0/token`; also the `aud` every assertion must carry.
    pub fn token_url(&self) -> String {
        format!("{}oauth2/v2.0/token", self.authority())
    }

    pub fn tenant(&self) -> &str {
        &self.state.tenant
    }

    /// Every token issued so far, oldest first.
    pub fn issued(&self) -> Vec<Issued> {
        lock(&self.state.issued).clone()
    }

    /// HTTP requests received so far (any path, any outcome, injected failures included).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// `expires_in` of the tokens issued from now on (default 3599).
    pub fn set_token_lifetime_secs(&self, secs: u64) {
        self.state.lifetime_secs.store(secs, Ordering::SeqCst);
    }

    /// Answers the next request with `status` (429, 500, 503, …) and an AAD error body,
    /// with `Retry-After: retry_after` when given. Calls queue up: two calls fail the next two
    /// requests.
    pub fn fail_next(&self, status: u16, retry_after: Option<&str>) {
        lock(&self.state.failures).push_back((status, retry_after.map(str::to_owned)));
    }

    /// Whether `token` was issued by this fake for `scope` and has not expired, for fake
    /// resource servers checking `Authorization: Bearer` headers.
    pub fn is_valid_token(&self, token: &str, scope: &str) -> bool {
        lock(&self.state.valid)
            .get(token)
            .is_some_and(|(issued_for, until)| issued_for == scope && Instant::now() < *until)
    }

    /// Makes every token issued so far invalid, as if it had expired; for tests of the
    /// "401, refresh the token, retry" path of resource clients.
    pub fn expire_issued_tokens(&self) {
        lock(&self.state.valid).clear();
    }
}

impl Drop for FakeLogin {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        // Each unblock wakes one worker blocked in recv(); they queue up if none is waiting.
        for _ in &self.workers {
            self.server.unblock();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn serve(server: &Server, state: &State) {
    while !state.stopping.load(Ordering::SeqCst) {
        // Errors are either our unblock() at shutdown or a broken client connection.
        let Ok(mut request) = server.recv() else {
            continue;
        };
        state.requests.fetch_add(1, Ordering::SeqCst);
        let mut body = String::new();
        let read = request
            .as_reader()
            .take(MAX_REQUEST_BYTES)
            .read_to_string(&mut body);
        let content_type = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Content-Type"))
            .map(|h| h.value.as_str().to_owned())
            .unwrap_or_default();
        let reply = if read.is_err() {
            Reply::error(AadError::new(
                400,
                "invalid_request",
                90013,
                "Invalid input received from the user.",
            ))
        } else {
            handle(
                state,
                request.method().as_str(),
                request.url(),
                &content_type,
                &body,
            )
        };
        let mut response = Response::from_string(reply.body).with_status_code(reply.status);
        for (name, value) in [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Cache-Control", "no-store, no-cache"),
            ("Pragma", "no-cache"),
        ] {
            if let Ok(header) = Header::from_bytes(name, value) {
                response.add_header(header);
            }
        }
        if let Some(retry_after) = reply.retry_after
            && let Ok(header) = Header::from_bytes("Retry-After", retry_after)
        {
            response.add_header(header);
        }
        let _ = request.respond(response);
    }
}

struct Reply {
    status: u16,
    body: String,
    retry_after: Option<String>,
}

impl Reply {
    fn error(err: AadError) -> Reply {
        Reply {
            status: err.status,
            body: err.body(),
            retry_after: None,
        }
    }
}

fn handle(state: &State, method: &str, url: &str, content_type: &str, body: &str) -> Reply {
    if let Some((status, retry_after)) = lock(&state.failures).pop_front() {
        let (error, message) = match status {
            429 => (
                "temporarily_unavailable",
                "The server is temporarily unable to handle the request (throttled).",
            ),
            500 => ("server_error", "A transient error has occurred."),
            _ => (
                "temporarily_unavailable",
                "The service is temporarily unavailable.",
            ),
        };
        let mut reply = Reply::error(AadError::new(status, error, 90033, message));
        reply.retry_after = retry_after;
        return reply;
    }
    let path = url.split('?').next().unwrap_or("");
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let tenant = segments.next().unwrap_or("");
    let rest = segments.next().unwrap_or("");
    if !tenant.eq_ignore_ascii_case(&state.tenant) {
        return Reply::error(AadError::new(
            400,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
                 and are signing into the correct cloud."
            ),
        ));
    }
    if rest != "oauth2/v2.0/token" {
        return Reply {
            status: 404,
            body: String::new(),
            retry_after: None,
        };
    }
    if method != "POST" {
        return Reply::error(AadError::new(
            400,
            "invalid_request",
            900561,
            "The endpoint only accepts POST requests.",
        ));
    }
    match issue(state, content_type, body) {
        Ok(reply) => reply,
        Err(err) => Reply::error(err),
    }
}

fn issue(state: &State, content_type: &str, body: &str) -> Result<Reply, AadError> {
    // Without the form content type AAD finds no parameters at all.
    let form = if content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        aad::parse_form(body).ok_or_else(|| {
            AadError::new(
                400,
                "invalid_request",
                90013,
                "Invalid input received from the user.",
            )
        })?
    } else {
        Vec::new()
    };
    let param = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let required = |name: &str| param(name).ok_or_else(|| AadError::missing_parameter(name));

    let grant_type = required("grant_type")?;
    if grant_type != "client_credentials" {
        return Err(AadError::new(
            400,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = required("client_id")?;
    let Some(app) = state.apps.get(client_id) else {
        // Live AAD answers this one with unauthorized_client, not invalid_client.
        return Err(AadError::new(
            400,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. \
                 This can happen if the application has not been installed by the administrator \
                 of the tenant or consented to by any user in the tenant. You may have sent your \
                 authentication request to the wrong tenant.",
                state.tenant
            ),
        ));
    };
    let scope = required("scope")?;
    if !scope.ends_with("/.default") || scope.contains(' ') {
        return Err(AadError::new(
            400,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must \
                 have a scope value with /.default suffixed to the resource identifier \
                 (application ID URI)."
            ),
        ));
    }

    let (method, accepted) = match (param("client_secret"), param("client_assertion")) {
        (Some(_), Some(_)) => {
            return Err(AadError::new(
                400,
                "invalid_request",
                900144,
                "The request body must contain only one of the following parameters: \
                 'client_assertion' or 'client_secret'.",
            ));
        }
        (None, None) => {
            return Err(AadError::new(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or \
                 'client_secret'.",
            ));
        }
        (Some(secret), None) => {
            if app.secret.as_deref() != Some(secret) {
                return Err(AadError::new(
                    401,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the \
                         request is the client secret value, not the client secret ID, for a \
                         secret added to app '{client_id}'."
                    ),
                ));
            }
            ("secret", None)
        }
        (None, Some(assertion)) => {
            let assertion_type = required("client_assertion_type")?;
            if assertion_type != JWT_BEARER {
                return Err(AadError::new(
                    400,
                    "invalid_request",
                    50027,
                    format!(
                        "Invalid client_assertion_type '{assertion_type}'; expected \
                         '{JWT_BEARER}'."
                    ),
                ));
            }
            let token_url = lock(&state.token_url).clone();
            let expected = assertion::Expected {
                client_id,
                token_url: &token_url,
                certificate_der: app.certificate_der.as_deref(),
                now_unix_secs: unix_now_secs(),
            };
            let accepted = assertion::verify(assertion, &expected, &mut lock(&state.used_jtis))?;
            ("assertion", Some(accepted))
        }
    };

    let lifetime_secs = state.lifetime_secs.load(Ordering::SeqCst);
    let access_token = aad::random_token();
    lock(&state.valid).insert(
        access_token.clone(),
        (
            scope.to_owned(),
            Instant::now() + Duration::from_secs(lifetime_secs),
        ),
    );
    lock(&state.issued).push(Issued {
        client_id: client_id.to_owned(),
        scope: scope.to_owned(),
        access_token: access_token.clone(),
        method: method.to_owned(),
        assertion_alg: accepted.as_ref().map(|a| a.alg.clone()),
        assertion_thumbprint_header: accepted.map(|a| a.thumbprint_header),
        lifetime_secs,
    });
    let body = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": lifetime_secs,
        "ext_expires_in": lifetime_secs,
        "access_token": access_token,
    });
    Ok(Reply {
        status: 200,
        body: body.to_string(),
        retry_after: None,
    })
}

fn unix_now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A self-signed RSA 2048 certificate for `common_name`, as an app registration would hold.
/// Returns the PEM with `PRIVATE KEY` (PKCS#8) and `CERTIFICATE`, the certificate's DER, and
/// its SHA-1 thumbprint in upper-case hex (as the Azure portal shows it).
pub fn make_certificate(common_name: &str) -> (String, Vec<u8>, String) {
    let build = || -> Result<(String, Vec<u8>, String), openssl::error::ErrorStack> {
        let key = PKey::from_rsa(Rsa::generate(2048)?)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_text("CN", common_name)?;
        let name = name.build();
        let mut serial = BigNum::new()?;
        serial.rand(120, openssl::bn::MsbOption::MAYBE_ZERO, false)?;
        let mut builder = X509::builder()?;
        builder.set_version(2)?;
        let serial = Asn1Integer::from_bn(&serial)?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&name)?;
        builder.set_issuer_name(&name)?;
        builder.set_pubkey(&key)?;
        let not_before = Asn1Time::days_from_now(0)?;
        let not_after = Asn1Time::days_from_now(365)?;
        builder.set_not_before(&not_before)?;
        builder.set_not_after(&not_after)?;
        builder.sign(&key, MessageDigest::sha256())?;
        let cert = builder.build();
        let mut pem = String::from_utf8_lossy(&key.private_key_to_pem_pkcs8()?).into_owned();
        pem.push_str(&String::from_utf8_lossy(&cert.to_pem()?));
        let thumbprint = assertion::hex_upper(&cert.digest(MessageDigest::sha1())?);
        Ok((pem, cert.to_der()?, thumbprint))
    };
    match build() {
        Ok(made) => made,
        Err(err) => panic!("making a test certificate failed: {err}"),
    }
}

#[cfg(test)]
mod tests;
