//! One worker thread's HTTP connection to EWS, with NTLM bound to that connection or OAuth2
//! bearer tokens (Exchange Online).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ureq::Agent;

use super::Error;
use super::ntlm::{self, NtlmCredentials};
use super::tls::{CertSlot, TlsHandshakeError};
use crate::auth::{self, TokenProvider};
use crate::secret::Secret;

/// Largest response we read: one GetItem response carrying a very large email in base64.
pub const MAX_RESPONSE_BYTES: u64 = 512 * 1024 * 1024;

/// How a request proves who we are.
#[derive(Clone)]
pub enum Credentials {
    Ntlm(NtlmCredentials),
    /// `Authorization: Bearer <token>` (app-only OAuth2). One provider is shared by every
    /// fetcher thread, so a refresh serves them all.
    Bearer(Arc<dyn TokenProvider>),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Ntlm(creds) => f.debug_tuple("Ntlm").field(creds).finish(),
            // `describe()` names the app and the endpoint, never a secret or a token.
            Credentials::Bearer(tokens) => {
                f.debug_tuple("Bearer").field(&tokens.describe()).finish()
            }
        }
    }
}

/// An HTTP response we read to the end.
pub struct Reply {
    pub status: u16,
    /// The server's clock when it answered (`Date`), to the second.
    pub date: Option<time::OffsetDateTime>,
    pub body: Vec<u8>,
}

impl From<RawReply> for Reply {
    fn from(raw: RawReply) -> Reply {
        Reply {
            status: raw.status,
            date: raw.date,
            body: raw.body,
        }
    }
}

/// Posts SOAP requests for one thread. NTLM authenticates the TCP connection, so the three
/// legs and the requests after them go out on the agent's single pooled connection.
pub struct Transport {
    agent: Agent,
    url: String,
    credentials: Credentials,
    /// Whether the pooled connection has completed an NTLM handshake.
    authenticated: bool,
    /// Where the agent's connector leaves the certificate hash of its latest TLS connection.
    cert_slot: CertSlot,
}

impl Transport {
    /// A transport without channel binding: for agents whose connector records no
    /// certificates (see [`Transport::with_cert_slot`]).
    pub fn new(agent: Agent, url: String, credentials: Credentials) -> Self {
        Transport {
            agent,
            url,
            credentials,
            authenticated: false,
            cert_slot: CertSlot::default(),
        }
    }

    /// Binds NTLM handshakes over TLS to the server certificate the agent's connector
    /// records in `slot` (from `http::ews_agent`), for servers with Extended Protection.
    pub fn with_cert_slot(mut self, slot: CertSlot) -> Self {
        self.cert_slot = slot;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Posts `body`; returns the reply for 200 and for SOAP faults (HTTP 500 with XML).
    pub fn post(&mut self, anchor_mailbox: &str, body: &str) -> Result<Reply, Error> {
        let creds = match &self.credentials {
            Credentials::Ntlm(creds) => creds.clone(),
            Credentials::Bearer(tokens) => {
                let tokens = Arc::clone(tokens);
                return self.post_with_token(anchor_mailbox, body, tokens.as_ref());
            }
        };
        if !self.authenticated {
            return self.handshake(anchor_mailbox, body, &creds);
        }
        let reply = self.send(anchor_mailbox, body, None)?;
        if reply.status == 401 {
            // The server dropped our connection (idle timeout, Connection: close) and the new
            // one is not authenticated yet: one fresh handshake, then a clear error.
            log::debug!(
                "{}: connection no longer authenticated; new NTLM handshake",
                self.url
            );
            self.authenticated = false;
            return self.handshake(anchor_mailbox, body, &creds);
        }
        self.check_status(reply)
    }

    /// Posts with a bearer token. A 401 means the token died early (revoked, clock skew, a
    /// cached token past its real lifetime): one fresh token, then a clear error.
    fn post_with_token(
        &mut self,
        anchor_mailbox: &str,
        body: &str,
        tokens: &dyn TokenProvider,
    ) -> Result<Reply, Error> {
        let mut refreshed = false;
        loop {
            let token = tokens.token().map_err(|err| token_error(&self.url, err))?;
            let authorization = Secret::new(format!("Bearer {}", token.expose()));
            let raw = self.send_raw(anchor_mailbox, body, Some(authorization.expose()))?;
            if raw.status != 401 {
                return self.check_status(raw.into());
            }
            if !refreshed {
                log::debug!(
                    "{}: HTTP 401 with a bearer token; fetching a new token",
                    self.url
                );
                tokens.invalidate();
                refreshed = true;
                continue;
            }
            return Err(Error::Auth {
                url: self.url.clone(),
                detail: format!(
                    "the server rejected a freshly issued OAuth2 token ({}){}; check that the \
                     app has the Exchange application permission full_access_as_app with admin \
                     consent and may impersonate {anchor_mailbox}",
                    tokens.describe(),
                    bearer_rejection_detail(&raw)
                ),
            });
        }
    }

    fn handshake(
        &mut self,
        anchor_mailbox: &str,
        body: &str,
        creds: &NtlmCredentials,
    ) -> Result<Reply, Error> {
        let url = self.url.clone();
        let auth_error = |detail: String| Error::Auth {
            url: url.clone(),
            detail,
        };
        let negotiate = ntlm::negotiate_header().map_err(auth_error)?;
        let first = self.send_raw(anchor_mailbox, body, Some(&negotiate))?;
        if first.status != 401 {
            // The server did not ask for authentication at all.
            return self.check_status(first.into());
        }
        let challenge_headers = first.challenges;
        let Some(challenge) =
            ntlm::challenge_from_headers(challenge_headers.iter().map(String::as_str))
        else {
            let offered = if challenge_headers.is_empty() {
                "none".to_owned()
            } else {
                challenge_headers
                    .iter()
                    .map(|h| h.split(' ').next().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(auth_error(format!(
                "the server did not answer with an NTLM challenge (schemes offered: {offered}); \
                 check auth_type and that NTLM is enabled on the EWS virtual directory"
            )));
        };
        // The Type 1 went out on the agent's latest connection, and the Type 3 must follow
        // on it: bind to the certificate that connection presented.
        let end_point = self.cert_slot.latest();
        let connections = self.cert_slot.connections();
        let application_data = end_point.as_ref().map(|e| e.application_data());
        if let Some(end_point) = &end_point {
            log::debug!(
                "{url}: NTLM with channel binding (tls-server-end-point, {})",
                end_point.hash_name()
            );
        }
        let authenticate =
            ntlm::authenticate_header(&challenge, creds, application_data.as_deref())
                .map_err(auth_error)?;
        let reply = self.send(anchor_mailbox, body, Some(&authenticate))?;
        if reply.status == 401 {
            let reconnected = if self.cert_slot.connections() != connections {
                "; the connection was replaced between the handshake legs"
            } else {
                ""
            };
            let causes = if end_point.is_some() {
                "wrong password, locked or disabled account, NTLM blocked, or the channel \
                 binding refused by Extended Protection"
            } else {
                "wrong password, locked or disabled account, or NTLM blocked"
            };
            return Err(auth_error(format!(
                "the server rejected the credentials of {} ({causes}){reconnected}: {}",
                creds.display_name(),
                excerpt(&reply.body)
            )));
        }
        self.authenticated = true;
        self.check_status(reply)
    }

    fn send(
        &mut self,
        anchor_mailbox: &str,
        body: &str,
        authorization: Option<&str>,
    ) -> Result<Reply, Error> {
        Ok(self.send_raw(anchor_mailbox, body, authorization)?.into())
    }

    /// Sends one request and reads the whole reply, which returns the connection to the pool.
    /// Gives the status, the `WWW-Authenticate` values and `x-ms-diagnostics` (for 401) and
    /// the body.
    fn send_raw(
        &mut self,
        anchor_mailbox: &str,
        body: &str,
        authorization: Option<&str>,
    ) -> Result<RawReply, Error> {
        let mut request = self
            .agent
            .post(&self.url)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("Accept", "text/xml")
            .header("X-AnchorMailbox", anchor_mailbox)
            .header("Connection", "Keep-Alive");
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        let transport_error = |err: ureq::Error| request_error(&self.url, err);
        let started = std::time::Instant::now();
        let exchanged = |status, bytes, headers| {
            crate::http::log_exchange_with_headers(
                crate::http::EndpointClass::Ews,
                "POST",
                &self.url,
                status,
                started.elapsed(),
                bytes,
                headers,
            );
        };
        let mut response = request.send(body).map_err(|err| {
            exchanged(None, 0, None);
            transport_error(err)
        })?;
        let status = response.status().as_u16();
        let (challenges, diagnostics) = if status == 401 {
            let headers = response.headers();
            (
                headers
                    .get_all("www-authenticate")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .collect(),
                headers
                    .get("x-ms-diagnostics")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            )
        } else {
            (Vec::new(), None)
        };
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
        let retry_after = header("retry-after").and_then(parse_retry_after);
        let date = header("date").and_then(parse_http_date);
        let bytes = crate::http::read_body(response.body_mut(), MAX_RESPONSE_BYTES);
        exchanged(
            Some(status),
            bytes.as_ref().map_or(0, |b| b.len() as u64),
            Some(response.headers()),
        );
        let bytes = bytes.map_err(transport_error)?;
        if matches!(status, 429 | 503) {
            return Err(Error::Http {
                url: self.url.clone(),
                status,
                detail: excerpt(&bytes),
                retry_after,
            });
        }
        Ok(RawReply {
            status,
            date,
            challenges,
            diagnostics,
            body: bytes,
        })
    }

    fn check_status(&self, reply: Reply) -> Result<Reply, Error> {
        // A SOAP fault names its envelope early; an IIS error page is HTML.
        let is_soap = || {
            let head = &reply.body[..reply.body.len().min(1024)];
            head.windows(8).any(|w| w == b"Envelope")
        };
        match reply.status {
            200 => Ok(reply),
            // SOAP faults come with HTTP 500 and an XML body; HTML 500s are plain errors.
            500 if is_soap() => Ok(reply),
            401 => Err(Error::Auth {
                url: self.url.clone(),
                detail: format!("HTTP 401 after authentication: {}", excerpt(&reply.body)),
            }),
            status => Err(Error::Http {
                url: self.url.clone(),
                status,
                detail: excerpt(&reply.body),
                retry_after: None,
            }),
        }
    }
}

/// One reply as read off the wire.
struct RawReply {
    status: u16,
    date: Option<time::OffsetDateTime>,
    /// `WWW-Authenticate` values of a 401.
    challenges: Vec<String>,
    /// `x-ms-diagnostics` of a 401: Exchange Online says there why it refused a token.
    diagnostics: Option<String>,
    body: Vec<u8>,
}

/// Why the server refused a bearer token, from what it said: `error_description` (or
/// `error`) of the `Bearer` challenge, the `reason` of `x-ms-diagnostics`, or the body.
fn bearer_rejection_detail(reply: &RawReply) -> String {
    let mut parts = Vec::new();
    for challenge in &reply.challenges {
        let Some(params) = challenge
            .trim()
            .strip_prefix("Bearer")
            .or_else(|| challenge.trim().strip_prefix("bearer"))
        else {
            continue;
        };
        if let Some(text) =
            auth_param(params, "error_description").or_else(|| auth_param(params, "error"))
        {
            parts.push(text);
        }
    }
    if let Some(diagnostics) = &reply.diagnostics {
        parts.push(auth_param(diagnostics, "reason").unwrap_or_else(|| diagnostics.clone()));
    }
    if parts.is_empty() && !reply.body.is_empty() {
        parts.push(excerpt(&reply.body));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join("; "))
    }
}

/// The value of `name="value"` (or `name=value`) in an auth-param list.
fn auth_param(params: &str, name: &str) -> Option<String> {
    let mut rest = params;
    while let Some(at) = rest.find(name) {
        let before_ok = at == 0
            || rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c == ',' || c == ';' || c.is_whitespace());
        let after = rest[at + name.len()..].trim_start();
        if before_ok && let Some(value) = after.strip_prefix('=') {
            let value = value.trim_start();
            return Some(match value.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next().unwrap_or("").to_owned(),
                None => value
                    .split([',', ';'])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned(),
            });
        }
        rest = &rest[at + name.len()..];
    }
    None
}

/// A token that could not be had, as an error of the request that needed it: the identity
/// provider's refusal and unusable credentials are authentication failures the operator must
/// fix; an unreachable or failing token endpoint is transient.
pub fn token_error(resource_url: &str, err: auth::Error) -> Error {
    match err {
        auth::Error::Transport { url, detail } => Error::Transport {
            url,
            detail: format!("cannot get an OAuth2 token: {detail}"),
        },
        err @ (auth::Error::Rejected { .. } | auth::Error::Credential { .. }) => Error::Auth {
            url: resource_url.to_owned(),
            detail: format!("cannot get an OAuth2 token: {err}"),
        },
    }
}

/// The OAuth2 scope of the resource at `url`: its origin plus `/.default`, e.g.
/// `https://outlook.office365.com/EWS/Exchange.asmx` → `https://outlook.office365.com/.default`
/// and `https://graph.microsoft.com/v1.0` → `https://graph.microsoft.com/.default`. Deriving it
/// from the configured endpoint serves national clouds (`outlook.office365.us`,
/// `graph.microsoft.us`, …) and loopback test servers without a setting of its own.
pub fn oauth_scope_for(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // Userinfo never belongs in an audience.
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty()
        || !(scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http"))
    {
        return None;
    }
    Some(format!(
        "{}://{}/.default",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    ))
}

/// A request that got no response. An untrusted server certificate is an authentication
/// failure of the server: retrying cannot fix it, the operator must.
pub(crate) fn request_error(url: &str, err: ureq::Error) -> Error {
    match err {
        ureq::Error::Other(inner) => match inner.downcast_ref::<TlsHandshakeError>() {
            Some(tls) if tls.is_untrusted() => Error::Auth {
                url: url.to_owned(),
                detail: tls.to_string(),
            },
            // Our own errors read better without ureq's "other: " prefix.
            _ => Error::Transport {
                url: url.to_owned(),
                detail: inner.to_string(),
            },
        },
        err => Error::Transport {
            url: url.to_owned(),
            detail: err.to_string(),
        },
    }
}

/// `Retry-After` as seconds (possibly fractional) or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let wait = parse_http_date(value)? - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn parse_http_date(value: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc2822).ok()
}

/// The start of a body for an error message, on one line.
pub fn excerpt(body: &[u8]) -> String {
    const MAX_CHARS: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(4 * MAX_CHARS)]);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return "(empty body)".to_owned();
    }
    match one_line.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn oauth_scopes_come_from_the_endpoint_origin() {
        assert_eq!(
            oauth_scope_for("https://outlook.office365.com/EWS/Exchange.asmx").as_deref(),
            Some("https://outlook.office365.com/.default")
        );
        assert_eq!(
            oauth_scope_for("https://graph.microsoft.com/v1.0").as_deref(),
            Some("https://graph.microsoft.com/.default")
        );
        assert_eq!(
            oauth_scope_for("http://user:pw@127.0.0.1:8080/EWS/Exchange.asmx").as_deref(),
            Some("http://127.0.0.1:8080/.default")
        );
        assert_eq!(oauth_scope_for("ftp://x/"), None);
        assert_eq!(oauth_scope_for("no-scheme"), None);
    }

    #[test]
    fn bearer_refusals_are_explained_from_the_headers() {
        let reply = RawReply {
            status: 401,
            date: None,
            challenges: vec![
                r#"Bearer client_id="00000002-0000-0ff1-ce00-000000000000", error="invalid_token""#
                    .into(),
                "Negotiate".into(),
            ],
            diagnostics: Some(
                r#"2000003;reason="The hostname component of the audience claim value is invalid.";error_category="invalid_resource""#
                    .into(),
            ),
            body: Vec::new(),
        };
        assert_eq!(
            bearer_rejection_detail(&reply),
            ": invalid_token; The hostname component of the audience claim value is invalid."
        );
        assert_eq!(
            auth_param(
                r#"Bearer error_description="expired", error="invalid_token""#,
                "error"
            ),
            Some("invalid_token".into())
        );
        assert_eq!(auth_param("a=1, b=2", "b"), Some("2".into()));
    }

    /// A token provider handing out one fixed token, counting refreshes.
    struct Fixed {
        token: String,
        invalidated: std::sync::atomic::AtomicUsize,
    }

    impl TokenProvider for Fixed {
        fn token(&self) -> Result<Secret, auth::Error> {
            Ok(Secret::new(self.token.clone()))
        }
        fn invalidate(&self) {
            self.invalidated
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        fn describe(&self) -> String {
            "a fixed test token".into()
        }
    }

    #[test]
    fn bearer_credentials_never_show_the_token() {
        let credentials = Credentials::Bearer(Arc::new(Fixed {
            token: "eyJ-very-secret".into(),
            invalidated: Default::default(),
        }));
        let shown = format!("{credentials:?}");
        assert!(!shown.contains("eyJ"), "{shown}");
        assert!(shown.contains("a fixed test token"), "{shown}");
    }

    fn envelope() -> String {
        super::super::soap::envelope(
            "Exchange2013_SP1",
            Some("user1@example.test"),
            concat!(
                "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>",
                r#"<m:FolderIds><t:DistinguishedFolderId Id="msgfolderroot"/></m:FolderIds></m:GetFolder>"#
            ),
        )
    }

    #[test]
    fn bearer_tokens_are_refreshed_once_on_401() {
        use crate::auth::client_credentials::{ClientCredential, ClientCredentials};
        let login = Arc::new(
            fake_login::FakeLogin::start(
                "contoso",
                vec![fake_login::App::with_secret("app", "pw")],
            )
            .unwrap(),
        );
        let ews = fake_exchange::FakeExchange::start(
            fake_exchange::generate(&fake_exchange::GenSpec {
                mailboxes: 1,
                emails_per_mailbox: 1,
                ..Default::default()
            }),
            fake_exchange::Options::default(),
        )
        .unwrap();
        let front = fake_graph::BearerFront::start(&ews.url(), login.clone()).unwrap();
        let tokens = Arc::new(ClientCredentials::new(
            login.token_url(),
            "app".into(),
            ClientCredential::Secret(Secret::new("pw")),
            oauth_scope_for(&front.url()).unwrap(),
        ));
        let agent = crate::http::agent(&crate::http::AgentSettings::default());
        let mut transport = Transport::new(
            agent.clone(),
            front.url(),
            Credentials::Bearer(tokens.clone()),
        );
        assert_eq!(
            transport
                .post("user1@example.test", &envelope())
                .unwrap()
                .status,
            200
        );
        login.expire_issued_tokens();
        assert_eq!(
            transport
                .post("user1@example.test", &envelope())
                .unwrap()
                .status,
            200
        );
        assert_eq!(login.issued().len(), 2);
        assert_eq!(front.stats().unauthorized, 1);
        assert_eq!(
            front.stats().anchors,
            vec![Some("user1@example.test".to_owned()); 2]
        );

        // A token that stays refused: one retry, then an error that explains, without it.
        let fixed = Arc::new(Fixed {
            token: "eyJ-not-for-this-server".into(),
            invalidated: Default::default(),
        });
        let mut transport = Transport::new(agent, front.url(), Credentials::Bearer(fixed.clone()));
        let Err(err) = transport.post("user1@example.test", &envelope()) else {
            panic!("a refused token was accepted");
        };
        let text = format!("{err} {err:?}");
        assert!(matches!(err, Error::Auth { .. }), "{text}");
        assert!(text.contains("The token has expired"), "{text}");
        assert!(!text.contains("eyJ"), "{text}");
        assert_eq!(
            fixed.invalidated.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }

    #[test]
    fn token_errors_map_to_auth_or_transport() {
        let rejected = token_error(
            "https://ews/",
            auth::Error::Rejected {
                url: "https://login/token".into(),
                error: "invalid_client".into(),
                description: "AADSTS7000215: Invalid client secret provided.".into(),
            },
        );
        assert!(rejected.is_fatal());
        assert!(rejected.to_string().contains("AADSTS7000215"));
        let down = token_error(
            "https://ews/",
            auth::Error::Transport {
                url: "https://login/token".into(),
                detail: "HTTP 503".into(),
            },
        );
        assert!(down.is_retryable());
    }

    #[test]
    fn excerpt_is_short_and_single_line() {
        assert_eq!(excerpt(b"  a\n b  "), "a b");
        assert_eq!(excerpt(b""), "(empty body)");
        assert!(excerpt(&[b'x'; 5000]).chars().count() <= 201);
    }
}
