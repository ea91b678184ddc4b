//! The one place that builds HTTP agents, so timeouts, TLS and pooling are decided once.

use std::io::Read;
use std::time::Duration;

use ureq::Agent;
use ureq::config::ConfigBuilder;
use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
use ureq::typestate::AgentScope;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{ConnectProxyConnector, Connector, TcpConnector};

use crate::exchange::tls::{CertSlot, TlsClient, TlsSetupError};

/// Sent on every request so Exchange and IIS logs show who called.
pub const USER_AGENT: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// How long to wait for a TCP connection and TLS handshake.
const CONNECT_TIMEOUT_SECS: u64 = 30;
/// EWS batch requests may run for up to a minute on the server; leave room on top of that.
const RECV_RESPONSE_TIMEOUT_SECS: u64 = 180;
/// A stalled body read (no bytes at all for this long) is a dead connection.
const PER_READ_TIMEOUT_SECS: u64 = 120;
/// IIS keeps idle connections for 120 s; NTLM re-authenticates every new connection, so keep
/// ours nearly that long instead of ureq's 15 s default.
const MAX_IDLE_AGE_SECS: u64 = 100;

/// What differs between the agents the program builds.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Verify the server's TLS certificate and host name (`ews_ssl_verify`).
    pub verify_tls: bool,
    /// OpenSSL cipher list for TLS 1.2 and older (`ews_ssl_ciphers`); `None` keeps OpenSSL's
    /// defaults. Applied by [`ews_tls`] (which rejects a list OpenSSL cannot use);
    /// [`agent`] cannot apply it.
    pub ciphers: Option<String>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            verify_tls: true,
            ciphers: None,
        }
    }
}

/// What every agent shares: NTLM-friendly pooling, timeouts, no redirects.
fn config_builder() -> ConfigBuilder<AgentScope> {
    Agent::config_builder()
        // 401 challenges, SOAP faults (HTTP 500) and JSON errors carry what we need to know.
        .http_status_as_error(false)
        .max_idle_connections_per_host(1)
        .max_idle_age(Duration::from_secs(MAX_IDLE_AGE_SECS))
        // Authorization must never follow a redirect to another host; we report redirects.
        .max_redirects(0)
        .timeout_connect(Some(Duration::from_secs(CONNECT_TIMEOUT_SECS)))
        .timeout_recv_response(Some(Duration::from_secs(RECV_RESPONSE_TIMEOUT_SECS)))
        .timeout_per_read(Some(Duration::from_secs(PER_READ_TIMEOUT_SECS)))
        .user_agent(USER_AGENT)
        // ureq's default 128 KiB each way, per agent, is kept for the agent's lifetime; the
        // buffers only need to hold a request or response head, and 32 KiB reads of a large
        // body cost nothing measurable.
        .input_buffer_size(IO_BUFFER_BYTES)
        .output_buffer_size(IO_BUFFER_BYTES)
}

/// Size of each agent's input and output buffer.
const IO_BUFFER_BYTES: usize = 32 * 1024;

/// Builds an agent for endpoints other than EWS (sinks, token endpoints), on ureq's
/// native-tls (OpenSSL) stack with the system trust store. Applies `verify_tls`; the cipher
/// list has no native-tls setting and is for EWS only (see [`ews_agent`]).
///
/// Each fetcher thread owns one agent: NTLM authenticates a TCP connection, and one
/// agent shared between threads swaps connections between handshakes (measured: 72 of 160
/// sessions failed). With one idle connection per host, the next request of a thread always
/// goes out on the connection that thread authenticated.
pub fn agent(settings: &AgentSettings) -> Agent {
    let tls = TlsConfig::builder()
        // The default provider is Rustls even when only native-tls is compiled in, and an
        // https call would then panic.
        .provider(TlsProvider::NativeTls)
        .root_certs(RootCerts::PlatformVerifier)
        .disable_verification(!settings.verify_tls)
        .build();
    config_builder().tls_config(tls).build().into()
}

/// Checks and prepares the EWS TLS settings once, at start-up: an unusable cipher list is a
/// configuration error (see [`TlsSetupError::is_config_error`]).
pub fn ews_tls(settings: &AgentSettings) -> Result<TlsClient, TlsSetupError> {
    TlsClient::new(settings.verify_tls, settings.ciphers.as_deref())
}

/// Builds one fetcher thread's EWS agent on our OpenSSL connector, with the slot where each
/// new TLS connection leaves its server certificate hash for NTLM channel binding.
///
/// The connector chain is ureq's default one minus SOCKS (not compiled in either way): a
/// CONNECT tunnel when HTTPS_PROXY/HTTP_PROXY/ALL_PROXY applies (and NO_PROXY does not),
/// else a direct TCP connection; then TLS for https URLs.
pub fn ews_agent(tls: &TlsClient) -> (Agent, CertSlot) {
    let slot = CertSlot::default();
    let connector =
        ().chain(ConnectProxyConnector::default())
            .chain(TcpConnector::default())
            .chain(tls.connector(slot.clone()));
    let agent = Agent::with_parts(
        config_builder().build(),
        connector,
        DefaultResolver::default(),
    );
    (agent, slot)
}

/// Reads a whole response body, up to `limit_bytes`.
///
/// ureq's own `read_to_vec` stops at 10 MB, which a single large email in base64 exceeds.
/// Reading to the end also returns the connection to the pool, which NTLM depends on.
pub fn read_body(body: &mut ureq::Body, limit_bytes: u64) -> Result<Vec<u8>, ureq::Error> {
    let capacity = body.content_length().unwrap_or(0).min(limit_bytes) as usize;
    let mut out = Vec::with_capacity(capacity);
    body.with_config()
        .limit(limit_bytes)
        .reader()
        .read_to_end(&mut out)
        .map_err(ureq::Error::Io)?;
    Ok(out)
}

/// Which kind of endpoint an HTTP request went to: the `endpoint` label of
/// `exchange_sync_http_request_duration_seconds` and the first word of the level-2 log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointClass {
    /// Exchange Web Services (every NTLM leg is one request).
    Ews,
    /// Microsoft Graph.
    Graph,
    /// An OAuth2 token endpoint (or the Azure credential chain's).
    Token,
    /// The Communications Mining API.
    Reinfer,
    /// Azure Blob Storage.
    AzureBlob,
}

impl EndpointClass {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointClass::Ews => "ews",
            EndpointClass::Graph => "graph",
            EndpointClass::Token => "token",
            EndpointClass::Reinfer => "reinfer",
            EndpointClass::AzureBlob => "azure_blob",
        }
    }
}

/// Response headers shown in the level-2 log: ones that help diagnose throttling, routing
/// and errors. Everything else (`Set-Cookie`, and on the request side `Authorization`, which
/// is never passed here) stays out.
const LOGGED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "retry-after",
    "location",
    "www-authenticate",
    "persistent-auth",
    "request-id",
    "client-request-id",
    "x-request-id",
    "x-ms-request-id",
    "x-ms-error-code",
    "x-ms-version",
    "x-ms-ags-diagnostic",
    "x-ms-diagnostics",
    "x-backendhttpstatus",
    "x-diaginfo",
    "x-feserver",
    "x-beserver",
    "x-calculatedbetarget",
    "etag",
];

/// Query parameters whose values are shown; any other value (a SAS `sig`, a `code`, a
/// token) is replaced, since URLs are logged and put in errors.
const SHOWN_QUERY_PARAMS: &[&str] = &[
    "restype",
    "comp",
    "prefix",
    "delimiter",
    "marker",
    "maxresults",
    "include",
    "timeout",
    "api-version",
    "no_charge",
    "$select",
    "$filter",
    "$orderby",
    "$top",
    "$skip",
    "$expand",
    "$count",
];

/// `url` safe to log: user information (`user:password@`) removed, and the values of query
/// parameters not known to be harmless replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (base, fragment) = url
        .split_once('#')
        .map_or((url, None), |(b, f)| (b, Some(f)));
    let (base, query) = base
        .split_once('?')
        .map_or((base, None), |(b, q)| (b, Some(q)));
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _))
                    if !SHOWN_QUERY_PARAMS.contains(&name.to_ascii_lowercase().as_str()) =>
                {
                    format!("{name}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    if fragment.is_some() {
        out.push_str("#…");
    }
    out
}

/// Records one HTTP request/response: its duration in the metrics of the calling pipeline
/// thread (if any), and at `--debug-level 2` a log line with method, URL (redacted), status,
/// duration and body bytes. `status` is `None` when no response came (refused, reset, timed
/// out). Call it once per request, where the client sends it, after reading the body.
pub fn log_exchange(
    endpoint: EndpointClass,
    method: &str,
    url: &str,
    status: Option<u16>,
    elapsed: Duration,
    bytes: u64,
) {
    log_exchange_with_headers(endpoint, method, url, status, elapsed, bytes, None);
}

/// [`log_exchange`] that also shows the allow-listed response headers ([`LOGGED_HEADERS`]);
/// `WWW-Authenticate` only by scheme, never a challenge or token.
pub fn log_exchange_with_headers(
    endpoint: EndpointClass,
    method: &str,
    url: &str,
    status: Option<u16>,
    elapsed: Duration,
    bytes: u64,
    headers: Option<&ureq::http::HeaderMap>,
) {
    crate::metrics::observe_http(endpoint.as_str(), elapsed);
    if !log::log_enabled!(target: "exchange_sync::http", log::Level::Trace) {
        return;
    }
    let outcome = match status {
        Some(status) => format!("HTTP {status}"),
        None => "no response".to_owned(),
    };
    let mut line = format!(
        "{} {method} {} → {outcome} in {:.1} ms, {bytes} bytes",
        endpoint.as_str(),
        redact_url(url),
        elapsed.as_secs_f64() * 1000.0
    );
    if let Some(headers) = headers {
        let shown: Vec<String> = headers
            .iter()
            .filter(|(name, _)| LOGGED_HEADERS.contains(&name.as_str()))
            .map(|(name, value)| {
                let value = value.to_str().unwrap_or("(not text)");
                let value = match name.as_str() {
                    "www-authenticate" => value.split(' ').next().unwrap_or("").to_owned(),
                    "location" => redact_url(value),
                    _ => value.to_owned(),
                };
                format!("{name}: {value}")
            })
            .collect();
        if !shown.is_empty() {
            line.push_str(" [");
            line.push_str(&shown.join("; "));
            line.push(']');
        }
    }
    log::trace!(target: "exchange_sync::http", "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_unknown_query_values() {
        assert_eq!(
            redact_url("https://user:Passw0rd@host:8443/EWS/Exchange.asmx"),
            "https://host:8443/EWS/Exchange.asmx"
        );
        assert_eq!(
            redact_url(
                "https://acct.blob.core.windows.net/c/b?restype=container&sig=SECRET&sv=2021"
            ),
            "https://acct.blob.core.windows.net/c/b?restype=container&sig=***&sv=***"
        );
        assert_eq!(
            redact_url("http://h/api/_private/buckets/o/n/emails"),
            "http://h/api/_private/buckets/o/n/emails"
        );
        assert_eq!(
            redact_url("https://h/p?$top=10#frag"),
            "https://h/p?$top=10#…"
        );
        assert_eq!(redact_url("https://h/p?flag"), "https://h/p?flag");
    }
}
