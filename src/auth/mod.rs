//! Credentials that produce bearer tokens: OAuth2 client credentials (secret or certificate)
//! for Exchange Online, Graph and Azure Storage, and the Azure credential chain.

pub mod azure;
pub mod client_credentials;
pub mod jwt;

use std::fmt;

use crate::secret::Secret;

/// A source of bearer tokens for one audience (scope). Implementations cache tokens and
/// refresh them ahead of expiry; they are shared by every thread that talks to the service.
pub trait TokenProvider: Send + Sync {
    /// A currently valid access token.
    fn token(&self) -> Result<Secret, Error>;

    /// Forgets the cached token, after the service answered 401 with it; the next `token()`
    /// fetches a new one.
    fn invalidate(&self);

    /// Where tokens come from, for log lines and `--check` (no secrets), e.g.
    /// `client secret for 1111… at https://login…/token`.
    fn describe(&self) -> String;
}

/// A token could not be obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The token endpoint could not be reached or failed (5xx, 429, reset, timeout). A retry
    /// may help.
    Transport { url: String, detail: String },
    /// The identity provider refused: invalid client, wrong secret, expired certificate, bad
    /// scope, consent missing. A retry does not help; `description` is the server's
    /// `error_description` (never a secret of ours).
    Rejected {
        url: String,
        error: String,
        description: String,
    },
    /// Our own credential material is unusable (unparseable private key, no certificate to
    /// take a thumbprint from). A retry does not help.
    Credential { detail: String },
}

impl Error {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Transport { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Transport { url, detail } => write!(f, "token endpoint {url}: {detail}"),
            Error::Rejected {
                url,
                error,
                description,
            } => write!(f, "token endpoint {url} refused: {error}: {description}"),
            Error::Credential { detail } => write!(f, "unusable credential: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

/// A fixed token, for tests and for tokens handed over by the environment.
pub struct StaticToken(pub Secret);

impl TokenProvider for StaticToken {
    fn token(&self) -> Result<Secret, Error> {
        Ok(self.0.clone())
    }

    fn invalidate(&self) {}

    fn describe(&self) -> String {
        "a fixed token".into()
    }
}
