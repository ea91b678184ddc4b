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
}

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
