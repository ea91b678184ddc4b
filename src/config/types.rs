//! The validated configuration: every value here has been checked, defaulted and normalised.

use std::time::Duration;

use time::OffsetDateTime;

use crate::secret::Secret;

/// The whole validated configuration. Build it with [`super::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub microsoft_api: MicrosoftApi,
    /// `ews_endpoint`, or built from `host` and `port`; always `Some` when `microsoft_api` is EWS.
    pub ews_url: Option<String>,
    /// `graph_endpoint`, without a trailing `/`.
    pub graph_url: String,
    pub auth: Auth,
    pub access_type: AccessType,
    pub ews_ssl_verify: bool,
    /// OpenSSL cipher list; `None` keeps the TLS library's defaults.
    pub ews_ssl_ciphers: Option<String>,
    pub poll_frequency: Duration,
    pub poll_message_sleep: Duration,
    /// Uploads in flight at once; 0 means one at a time, like 1.
    pub max_concurrent_uploads: usize,
    pub max_concurrent_fetches: usize,
    pub emails_per_folder: usize,
    pub reinfer_batch_size: usize,
    pub audit_email: Option<String>,
    /// Sorted by address; never empty.
    pub mailboxes: Vec<MailboxConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MicrosoftApi {
    Ews,
    Graph,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessType {
    Delegate,
    Impersonation,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    /// `user` is `DOMAIN\user`, `user@domain` or `user`.
    Ntlm { user: String, password: Secret },
    /// Client-credentials flow. `authority` ends with exactly one `/`.
    OAuth2 {
        authority: String,
        client_id: String,
        credential: OAuthCredential,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum OAuthCredential {
    Secret(Secret),
    /// `private_key_pem` is PEM text holding the private key (and possibly the certificate);
    /// `thumbprint` is the certificate's SHA-1 as 40 upper-case hex digits.
    Certificate {
        private_key_pem: Secret,
        thumbprint: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct MailboxConfig {
    pub address: String,
    pub bucket: Bucket,
    pub start_from: StartFrom,
    /// In UTC, whatever offset the file used.
    pub start_timestamp: Option<OffsetDateTime>,
}

/// Where a mailbox's email goes. Both parts are 1 to 64 of `[A-Za-z0-9_-]`, so they are safe as
/// path segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub owner: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Resume from the sync state kept in the sink.
    #[default]
    Bucket,
    /// Always start from `start_timestamp`.
    Config,
}

impl MicrosoftApi {
    /// The config-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MicrosoftApi::Ews => "ews",
            MicrosoftApi::Graph => "graph",
        }
    }
}

impl AccessType {
    /// The config-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessType::Delegate => "delegate",
            AccessType::Impersonation => "impersonation",
        }
    }
}

impl StartFrom {
    /// The config-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            StartFrom::Bucket => "bucket",
            StartFrom::Config => "config",
        }
    }
}

impl Auth {
    /// The config-file spelling of `auth_type`.
    pub fn type_str(&self) -> &'static str {
        match self {
            Auth::Ntlm { .. } => "ntlm",
            Auth::OAuth2 { .. } => "oauth2",
        }
    }
}
