//! A bearer-token front for the EWS fake: Exchange Online's OAuth check in front of
//! `fake_exchange`, which speaks only NTLM. Requests with a valid token of the fake login go on
//! to the EWS fake unchanged; others get Exchange Online's 401.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fake_login::FakeLogin;

use crate::http::{HttpRequest, HttpResponse, HttpServer};

/// Responses carry MIME in base64 and may be large.
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024 * 1024;

/// What the front saw.
#[derive(Clone, Debug, Default)]
pub struct FrontStats {
    pub requests: u64,
    /// Requests passed on to the EWS fake.
    pub forwarded: u64,
    /// Requests refused for a missing, invalid or expired token.
    pub unauthorized: u64,
    /// `X-AnchorMailbox` of every forwarded request (`None` when absent).
    pub anchors: Vec<Option<String>>,
}

struct State {
    upstream_origin: String,
    scope: String,
    login: Arc<FakeLogin>,
    agent: ureq::Agent,
    stats: Mutex<FrontStats>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running front. Dropping it stops the server and joins its threads.
pub struct BearerFront {
    http: HttpServer,
    state: Arc<State>,
}

impl BearerFront {
    /// Starts a front on `127.0.0.1` for the EWS fake at `upstream_url` (requests go to the
    /// same path on the upstream's origin). Tokens must be valid tokens of `login` for
    /// [`BearerFront::scope`].
    pub fn start(upstream_url: &str, login: Arc<FakeLogin>) -> io::Result<BearerFront> {
        let upstream_origin = match upstream_url.split_once("://") {
            Some((scheme, rest)) => {
                format!("{scheme}://{}", rest.split('/').next().unwrap_or(""))
            }
            None => return Err(io::Error::other("upstream_url has no scheme")),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let slot: Arc<Mutex<Option<Arc<State>>>> = Arc::default();
        let handler_slot = Arc::clone(&slot);
        let http = HttpServer::start(Arc::new(move |request: &HttpRequest| {
            let state = lock(&handler_slot).clone()?;
            Some(serve(&state, request))
        }))?;
        let state = Arc::new(State {
            upstream_origin,
            scope: format!("http://127.0.0.1:{}/.default", http.addr().port()),
            login,
            agent,
            stats: Mutex::new(FrontStats::default()),
        });
        *lock(&slot) = Some(Arc::clone(&state));
        Ok(BearerFront { http, state })
    }

    /// `http://127.0.0.1:PORT/EWS/Exchange.asmx`, the `ews_endpoint` to configure.
    pub fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/EWS/Exchange.asmx",
            self.http.addr().port()
        )
    }

    /// `http://127.0.0.1:PORT/.default`: the scope tokens must be issued for (the client
    /// derives it from the EWS URL's origin).
    pub fn scope(&self) -> String {
        self.state.scope.clone()
    }

    pub fn stats(&self) -> FrontStats {
        lock(&self.state.stats).clone()
    }
}

fn response(status: u16, headers: Vec<(&str, String)>, body: Vec<u8>) -> HttpResponse {
    HttpResponse {
        status,
        headers: headers
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect(),
        body,
    }
}

fn serve(state: &State, request: &HttpRequest) -> HttpResponse {
    lock(&state.stats).requests += 1;
    let token = request
        .header("Authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    let valid = token.is_some_and(|t| state.login.is_valid_token(t, &state.scope));
    if !valid {
        lock(&state.stats).unauthorized += 1;
        // Exchange Online's answer to a missing or dead token: 401, no body, the reason in
        // x-ms-diagnostics.
        return response(
            401,
            vec![
                (
                    "WWW-Authenticate",
                    "Bearer client_id=\"00000002-0000-0ff1-ce00-000000000000\", trusted_issuers=\"00000001-0000-0000-c000-000000000000@*\", token_types=\"app_asserted_user_v1 service_asserted_app_v1\", error=\"invalid_token\"".to_owned(),
                ),
                (
                    "x-ms-diagnostics",
                    "2000003;reason=\"The token has expired or is not valid for this resource.\";error_category=\"invalid_token\"".to_owned(),
                ),
            ],
            Vec::new(),
        );
    }
    let anchor = request.header("X-AnchorMailbox").map(str::to_owned);
    let content_type = request
        .header("Content-Type")
        .unwrap_or("text/xml; charset=utf-8")
        .to_owned();
    {
        let mut stats = lock(&state.stats);
        stats.forwarded += 1;
        stats.anchors.push(anchor.clone());
    }
    let url = format!("{}{}", state.upstream_origin, request.target);
    let mut forward = state.agent.post(&url).header("Content-Type", &content_type);
    if let Some(anchor) = &anchor {
        forward = forward.header("X-AnchorMailbox", anchor);
    }
    match forward.send(&request.body[..]) {
        Ok(mut upstream) => {
            let status = upstream.status().as_u16();
            let mut headers = Vec::new();
            for name in ["content-type", "retry-after"] {
                if let Some(value) = upstream.headers().get(name).and_then(|v| v.to_str().ok()) {
                    headers.push((name, value.to_owned()));
                }
            }
            let body = upstream
                .body_mut()
                .with_config()
                .limit(MAX_RESPONSE_BYTES)
                .read_to_vec()
                .unwrap_or_default();
            response(status, headers, body)
        }
        // The upstream dropped the connection (an injected fault): a gateway error.
        Err(_) => response(502, Vec::new(), Vec::new()),
    }
}
