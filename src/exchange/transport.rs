//! One worker thread's HTTP connection to EWS, with NTLM bound to that connection.

use std::time::Duration;

use ureq::Agent;

use super::Error;
use super::ntlm::{self, NtlmCredentials};
use super::tls::{CertSlot, TlsHandshakeError};

/// Largest response we read: one GetItem response carrying a very large email in base64.
pub const MAX_RESPONSE_BYTES: u64 = 512 * 1024 * 1024;

/// How a request proves who we are.
#[derive(Debug, Clone)]
pub enum Credentials {
    Ntlm(NtlmCredentials),
}

/// An HTTP response we read to the end.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
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
        let Credentials::Ntlm(creds) = &self.credentials;
        let creds = creds.clone();
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
        let (status, challenge_headers, first) =
            self.send_raw(anchor_mailbox, body, Some(&negotiate))?;
        if status != 401 {
            // The server did not ask for authentication at all.
            return self.check_status(Reply {
                status,
                body: first,
            });
        }
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
        let (status, _, body) = self.send_raw(anchor_mailbox, body, authorization)?;
        Ok(Reply { status, body })
    }

    /// Sends one request and reads the whole reply, which returns the connection to the pool.
    /// Gives the status, the `WWW-Authenticate` values (for 401) and the body.
    fn send_raw(
        &mut self,
        anchor_mailbox: &str,
        body: &str,
        authorization: Option<&str>,
    ) -> Result<(u16, Vec<String>, Vec<u8>), Error> {
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
        let mut response = request.send(body).map_err(transport_error)?;
        let status = response.status().as_u16();
        let challenges = if status == 401 {
            response
                .headers()
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let bytes = crate::http::read_body(response.body_mut(), MAX_RESPONSE_BYTES)
            .map_err(transport_error)?;
        if matches!(status, 429 | 503) {
            return Err(Error::Http {
                url: self.url.clone(),
                status,
                detail: excerpt(&bytes),
                retry_after,
            });
        }
        Ok((status, challenges, bytes))
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

/// A request that got no response. An untrusted server certificate is an authentication
/// failure of the server: retrying cannot fix it, the operator must.
fn request_error(url: &str, err: ureq::Error) -> Error {
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
    let when =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let wait = when - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
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
    fn excerpt_is_short_and_single_line() {
        assert_eq!(excerpt(b"  a\n b  "), "a b");
        assert_eq!(excerpt(b""), "(empty body)");
        assert!(excerpt(&[b'x'; 5000]).chars().count() <= 201);
    }
}
