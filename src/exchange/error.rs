//! Errors from talking to Exchange, each classified for retry.

use std::fmt;
use std::time::Duration;

/// An Exchange request that failed. Context (URL without secrets, mailbox) travels as data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The server could not be reached, or the connection broke or timed out mid-request.
    /// A retry may help.
    Transport { url: String, detail: String },
    /// An HTTP status we did not expect (HTML 500 under load, 503 queueing, 429, a redirect).
    /// A retry may help for 5xx and 429, honouring `retry_after`.
    Http {
        url: String,
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// The server rejected our credentials after a complete authentication handshake.
    /// A retry does not help: the operator must fix the credentials.
    Auth { url: String, detail: String },
    /// The server answered with an EWS error code (in a SOAP fault or a response message).
    /// Whether a retry helps depends on the code; `back_off` is the server's demanded wait.
    Ews {
        code: String,
        message: String,
        back_off: Option<Duration>,
    },
    /// The response could not be understood (not XML, missing elements). A retry may help once:
    /// proxies and overloaded servers sometimes truncate responses.
    Malformed { detail: String },
    /// The configuration asks for something this build cannot do. Not retryable.
    Unsupported { detail: String },
}

/// EWS codes after which the same request may succeed later.
const TRANSIENT_EWS_CODES: &[&str] = &[
    "ErrorServerBusy",
    "ErrorExceededConnectionCount",
    "ErrorTooManyObjectsOpened",
    "ErrorInternalServerTransientError",
    "ErrorTimeoutExpired",
    "ErrorMailboxStoreUnavailable",
    "ErrorMailboxMoveInProgress",
    "ErrorMailboxFailover",
    "ErrorConnectionFailed",
    "ErrorBatchProcessingStopped",
];

/// EWS codes that mean this mailbox cannot be read with this configuration.
const MAILBOX_FATAL_EWS_CODES: &[&str] = &[
    "ErrorNonExistentMailbox",
    "ErrorImpersonateUserDenied",
    "ErrorImpersonationDenied",
    "ErrorInvalidExchangeImpersonationHeaderData",
    "ErrorMissingEmailAddress",
    "ErrorAccessDenied",
    "ErrorMailboxConfiguration",
    "MailboxNotEnabledForRESTAPI",
    "ErrorInvalidUser",
];

impl Error {
    /// Whether repeating the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::Malformed { .. } => true,
            Error::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            Error::Ews { code, .. } => TRANSIENT_EWS_CODES.contains(&code.as_str()),
            Error::Auth { .. } | Error::Unsupported { .. } => false,
        }
    }

    /// Whether nothing can be synced at all until the operator acts (bad credentials).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Auth { .. } | Error::Unsupported { .. })
    }

    /// Whether this mailbox cannot be read with the current configuration.
    pub fn is_mailbox_fatal(&self) -> bool {
        matches!(self, Error::Ews { code, .. } if MAILBOX_FATAL_EWS_CODES.contains(&code.as_str()))
    }

    /// The wait the server demanded before the next request, if any.
    pub fn demanded_wait(&self) -> Option<Duration> {
        match self {
            Error::Ews { back_off, .. } => *back_off,
            Error::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short label for metrics and log lines.
    pub fn kind(&self) -> &str {
        match self {
            Error::Transport { .. } => "transport",
            Error::Http { .. } => "http",
            Error::Auth { .. } => "auth",
            Error::Ews { code, .. } => code,
            Error::Malformed { .. } => "malformed",
            Error::Unsupported { .. } => "unsupported",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Transport { url, detail } => write!(f, "cannot reach {url}: {detail}"),
            Error::Http {
                url,
                status,
                detail,
                ..
            } => write!(f, "{url} answered HTTP {status}: {detail}"),
            Error::Auth { url, detail } => write!(f, "authentication to {url} failed: {detail}"),
            Error::Ews {
                code,
                message,
                back_off,
            } => {
                write!(f, "exchange error {code}: {message}")?;
                if let Some(wait) = back_off {
                    write!(f, " (server asks to wait {} ms)", wait.as_millis())?;
                }
                Ok(())
            }
            Error::Malformed { detail } => write!(f, "malformed response: {detail}"),
            Error::Unsupported { detail } => write!(f, "not supported: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ews(code: &str) -> Error {
        Error::Ews {
            code: code.into(),
            message: String::new(),
            back_off: None,
        }
    }

    #[test]
    fn classification() {
        assert!(ews("ErrorServerBusy").is_retryable());
        assert!(!ews("ErrorItemNotFound").is_retryable());
        assert!(ews("ErrorNonExistentMailbox").is_mailbox_fatal());
        let auth = Error::Auth {
            url: "u".into(),
            detail: "d".into(),
        };
        assert!(auth.is_fatal() && !auth.is_retryable());
        let http = |status| Error::Http {
            url: "u".into(),
            status,
            detail: String::new(),
            retry_after: None,
        };
        assert!(http(503).is_retryable() && http(429).is_retryable());
        assert!(!http(404).is_retryable());
    }
}
