//! Credentials for Azure Blob Storage: a connection string (Shared Key), or bearer tokens
//! from the DefaultAzureCredential chain (environment, workload identity, managed identity,
//! Azure CLI), each cached and refreshed ahead of expiry.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client_credentials::{Certificate, ClientCredential, ClientCredentials};
use super::jwt::JwtAlgorithm;
use super::{Error, TokenProvider};
use crate::secret::Secret;

/// The OAuth2 scope of Azure Storage, for the client-credentials flows.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// The same audience as a resource, for managed identity and the Azure CLI.
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com/";

/// The variable holding a storage connection string.
pub const CONNECTION_STRING_VAR: &str = "AZURE_STORAGE_CONNECTION_STRING";
/// Ours: the blob endpoint to use with token credentials (sovereign clouds, custom domains,
/// an emulator over https). Unset: `https://ACCOUNT.blob.core.windows.net`.
pub const BLOB_ENDPOINT_VAR: &str = "AZURE_STORAGE_BLOB_ENDPOINT";
/// Ours: where the instance metadata service is, for tests. Unset: `http://169.254.169.254`.
pub const IMDS_ENDPOINT_VAR: &str = "EXCHANGE_SYNC_IMDS_ENDPOINT";
const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// Azurite's well-known development account (`UseDevelopmentStorage=true`). Public, printed
/// in Microsoft's documentation; not a secret of anyone's.
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const DEV_BLOB_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

/// Off Azure nothing answers at the metadata address: give up on connecting quickly.
const IMDS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Token endpoints and the metadata service answer within seconds when they answer at all.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `az account get-access-token` may refresh its own tokens first; it is slow, not this slow.
const AZ_CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Refresh a token this long before it expires (MSAL uses 5 minutes) …
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// … and reuse an Azure CLI token this long when it does not say when it expires (older
/// releases give only `expiresOn` in local time, whose offset we cannot know).
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(300);
/// Token responses are small JSON documents.
const MAX_TOKEN_RESPONSE_BYTES: u64 = 1024 * 1024;

/// How the Azure sink authenticates.
#[derive(Clone)]
pub enum AzureCredentials {
    /// The account key from a connection string; requests are signed, the key is never sent.
    SharedKey {
        account: String,
        key: Secret,
        /// None: `https://ACCOUNT.blob.core.windows.net`.
        blob_endpoint: Option<String>,
    },
    /// OAuth2 bearer tokens for `https://storage.azure.com/`.
    Bearer {
        provider: Arc<dyn TokenProvider>,
        /// None: `https://ACCOUNT.blob.core.windows.net`.
        blob_endpoint: Option<String>,
    },
}

impl AzureCredentials {
    /// What authenticates, for logs (no secrets).
    pub fn describe(&self) -> String {
        match self {
            AzureCredentials::SharedKey { account, .. } => {
                format!("the account key of {account} (connection string)")
            }
            AzureCredentials::Bearer { provider, .. } => provider.describe(),
        }
    }
}

impl fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureCredentials::SharedKey {
                account,
                key,
                blob_endpoint,
            } => f
                .debug_struct("SharedKey")
                .field("account", account)
                .field("key", key)
                .field("blob_endpoint", blob_endpoint)
                .finish(),
            AzureCredentials::Bearer {
                provider,
                blob_endpoint,
            } => f
                .debug_struct("Bearer")
                .field("provider", &provider.describe())
                .field("blob_endpoint", blob_endpoint)
                .finish(),
        }
    }
}

/// What a storage connection string says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub account: String,
    pub key: Secret,
    pub blob_endpoint: String,
}

impl ConnectionString {
    /// Parses `Key=Value;…`: `AccountName`, `AccountKey`, and `BlobEndpoint` or
    /// `DefaultEndpointsProtocol` + `EndpointSuffix`; or `UseDevelopmentStorage=true` for
    /// Azurite's defaults. Errors name the key that is wrong, never a value.
    pub fn parse(text: &Secret) -> Result<ConnectionString, Error> {
        let bad = |detail: String| Error::Credential {
            detail: format!("{CONNECTION_STRING_VAR}: {detail}"),
        };
        let mut fields: Vec<(String, String)> = Vec::new();
        for part in text.expose().split(';').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            // Keys end in '=' padding, so split at the first '=' only.
            let Some((name, value)) = part.split_once('=') else {
                return Err(bad("every part must look like Name=Value".into()));
            };
            fields.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        if get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(ConnectionString {
                account: DEV_ACCOUNT.into(),
                key: Secret::new(DEV_KEY),
                blob_endpoint: DEV_BLOB_ENDPOINT.into(),
            });
        }
        if get("sharedaccesssignature").is_some() {
            return Err(bad(
                "SharedAccessSignature connection strings are not supported; use one with \
                 AccountName and AccountKey, or unset it to use Entra ID credentials"
                    .into(),
            ));
        }
        let account = get("accountname").ok_or_else(|| bad("AccountName is missing".into()))?;
        let key = get("accountkey").ok_or_else(|| bad("AccountKey is missing".into()))?;
        if base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key).is_err() {
            return Err(bad("AccountKey is not valid base64".into()));
        }
        let blob_endpoint = match get("blobendpoint") {
            Some(endpoint) => {
                if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                    return Err(bad(format!(
                        "BlobEndpoint {endpoint:?} is not an http(s) URL"
                    )));
                }
                endpoint.trim_end_matches('/').to_owned()
            }
            None => {
                let protocol = get("defaultendpointsprotocol").unwrap_or("https");
                if protocol != "https" && protocol != "http" {
                    return Err(bad(format!(
                        "DefaultEndpointsProtocol {protocol:?}: allowed https or http"
                    )));
                }
                let suffix = get("endpointsuffix").unwrap_or("core.windows.net");
                format!("{protocol}://{account}.blob.{suffix}")
            }
        };
        Ok(ConnectionString {
            account: account.to_owned(),
            key: Secret::new(key),
            blob_endpoint,
        })
    }
}

/// The credentials for storage account `account`, in DefaultAzureCredential's order:
///
/// 1. `AZURE_STORAGE_CONNECTION_STRING` (Shared Key, honouring `BlobEndpoint`);
/// 2. environment: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` or
///    `AZURE_CLIENT_CERTIFICATE_PATH` (a PEM file with the private key and the certificate);
///    `AZURE_AUTHORITY_HOST` overrides `https://login.microsoftonline.com`;
/// 3. workload identity: `AZURE_FEDERATED_TOKEN_FILE` with `AZURE_TENANT_ID` and
///    `AZURE_CLIENT_ID`;
/// 4. managed identity: `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` (App Service, Container
///    Apps), else the instance metadata service; `AZURE_CLIENT_ID` picks a user-assigned
///    identity;
/// 5. the Azure CLI (`az` on `PATH`).
///
/// A connection string is decided here. The token methods are tried when the first token is
/// needed, so a start-up without network access (`--print-config`) probes nothing; the first
/// that yields a token is kept. Each method that fails logs one debug line saying why; when
/// all fail, the error lists every method and its reason. A method that is configured in the
/// environment (2, 3) and refused stops the chain: falling back to another identity would
/// hide the mistake.
pub fn from_environment(
    account: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AzureCredentials, Error> {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if let Some(text) = var(CONNECTION_STRING_VAR) {
        let parsed = ConnectionString::parse(&Secret::new(text))?;
        if parsed.account != account {
            return Err(Error::Credential {
                detail: format!(
                    "{CONNECTION_STRING_VAR} is for storage account {}, but \
                     --private-file-prefix names {account}",
                    parsed.account
                ),
            });
        }
        log::debug!(
            "Azure credential: {CONNECTION_STRING_VAR} (Shared Key for {}, endpoint {})",
            parsed.account,
            parsed.blob_endpoint
        );
        return Ok(AzureCredentials::SharedKey {
            account: parsed.account,
            key: parsed.key,
            blob_endpoint: Some(parsed.blob_endpoint),
        });
    }

    let mut methods = vec![Method {
        name: "connection string",
        candidate: Err(format!("{CONNECTION_STRING_VAR} is not set")),
        configured: false,
    }];
    let environment = environment_credential(&var)?;
    methods.push(Method {
        name: "environment",
        configured: environment.is_ok(),
        candidate: environment,
    });
    let workload = workload_identity(&var);
    methods.push(Method {
        name: "workload identity",
        configured: workload.is_ok(),
        candidate: workload,
    });
    methods.push(Method {
        name: "managed identity",
        candidate: Ok(Arc::new(ManagedIdentity::from_env(&var))),
        configured: false,
    });
    methods.push(Method {
        name: "Azure CLI",
        candidate: AzureCli::from_env(&var).map(|cli| Arc::new(cli) as Arc<dyn TokenProvider>),
        configured: false,
    });
    Ok(AzureCredentials::Bearer {
        provider: Arc::new(DefaultChain {
            account: account.to_owned(),
            methods,
            chosen: Mutex::new(None),
        }),
        blob_endpoint: var(BLOB_ENDPOINT_VAR).map(|e| e.trim_end_matches('/').to_owned()),
    })
}

/// Why a method failed, without the "unusable credential" prefix of `Credential` (the list it
/// goes into says that once).
fn reason(err: Error) -> String {
    match err {
        Error::Credential { detail } => detail,
        other => other.to_string(),
    }
}

/// The authority host (`AZURE_AUTHORITY_HOST`), without a trailing slash.
fn authority_host(var: &dyn Fn(&str) -> Option<String>) -> String {
    var("AZURE_AUTHORITY_HOST")
        .map(|h| h.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_owned())
}

/// The environment method: Ok(provider), Err(why it does not apply), or an outer error for a
/// configured credential that cannot work (an unreadable certificate).
fn environment_credential(var: &dyn Fn(&str) -> Option<String>) -> Result<Candidate, Error> {
    enum Material {
        Secret(String),
        CertificatePath(String),
    }
    let material = match (
        var("AZURE_CLIENT_SECRET"),
        var("AZURE_CLIENT_CERTIFICATE_PATH"),
    ) {
        (Some(secret), _) => Material::Secret(secret),
        (None, Some(path)) => Material::CertificatePath(path),
        (None, None) => {
            return Ok(Err(
                "neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH is set".into(),
            ));
        }
    };
    let (Some(tenant), Some(client_id)) = (var("AZURE_TENANT_ID"), var("AZURE_CLIENT_ID")) else {
        return Ok(Err(
            "AZURE_TENANT_ID and AZURE_CLIENT_ID must both be set with a client secret or \
             certificate"
                .into(),
        ));
    };
    let authority = format!("{}/{tenant}", authority_host(var));
    let credential = match material {
        Material::Secret(secret) => ClientCredential::Secret(Secret::new(secret)),
        Material::CertificatePath(path) => {
            if var("AZURE_CLIENT_CERTIFICATE_PASSWORD").is_some() {
                return Err(Error::Credential {
                    detail: "AZURE_CLIENT_CERTIFICATE_PASSWORD is set, but only unencrypted PEM \
                             certificates are supported: convert it with \
                             `openssl pkcs12 -in cert.pfx -nodes -out cert.pem`"
                        .into(),
                });
            }
            let pem = std::fs::read_to_string(&path).map_err(|e| Error::Credential {
                detail: format!("AZURE_CLIENT_CERTIFICATE_PATH {path}: {e}"),
            })?;
            let certificate = Certificate::from_pem(&Secret::new(pem), None, JwtAlgorithm::Rs256)
                .map_err(|e| Error::Credential {
                detail: format!("AZURE_CLIENT_CERTIFICATE_PATH {path}: {}", reason(e)),
            })?;
            ClientCredential::Certificate(certificate)
        }
    };
    Ok(Ok(Arc::new(ClientCredentials::new(
        ClientCredentials::token_url_for(&authority),
        client_id,
        credential,
        STORAGE_SCOPE.to_owned(),
    ))))
}

fn workload_identity(var: &dyn Fn(&str) -> Option<String>) -> Candidate {
    let Some(token_file) = var("AZURE_FEDERATED_TOKEN_FILE") else {
        return Err("AZURE_FEDERATED_TOKEN_FILE is not set".into());
    };
    let (Some(tenant), Some(client_id)) = (var("AZURE_TENANT_ID"), var("AZURE_CLIENT_ID")) else {
        return Err(
            "AZURE_FEDERATED_TOKEN_FILE is set, but AZURE_TENANT_ID or AZURE_CLIENT_ID is not"
                .into(),
        );
    };
    let authority = format!("{}/{tenant}", authority_host(var));
    Ok(Arc::new(WorkloadIdentity {
        token_url: ClientCredentials::token_url_for(&authority),
        client_id,
        token_file: PathBuf::from(token_file),
        scope: STORAGE_SCOPE.to_owned(),
        cache: TokenCache::default(),
    }))
}

/// A provider to try, or why a method does not apply.
type Candidate = Result<Arc<dyn TokenProvider>, String>;

/// One method of the chain.
struct Method {
    name: &'static str,
    candidate: Candidate,
    /// Set up explicitly in the environment: its refusal ends the chain.
    configured: bool,
}

/// DefaultAzureCredential: tries the methods in order at the first token, keeps the first
/// that works.
struct DefaultChain {
    account: String,
    methods: Vec<Method>,
    /// Index into `methods`; the lock also keeps two threads from probing at once.
    chosen: Mutex<Option<usize>>,
}

impl DefaultChain {
    fn resolve(&self) -> Result<Secret, Error> {
        let mut chosen = self.chosen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = *chosen
            && let Ok(provider) = &self.methods[index].candidate
        {
            return provider.token();
        }
        let mut reasons = Vec::with_capacity(self.methods.len());
        let mut transient = false;
        for (index, method) in self.methods.iter().enumerate() {
            let provider = match &method.candidate {
                Ok(provider) => provider,
                Err(reason) => {
                    log::debug!("Azure credential {}: unavailable: {reason}", method.name);
                    reasons.push(format!("{}: {reason}", method.name));
                    continue;
                }
            };
            match provider.token() {
                Ok(token) => {
                    log::info!(
                        "Azure Storage account {}: using {} ({})",
                        self.account,
                        method.name,
                        provider.describe()
                    );
                    *chosen = Some(index);
                    return Ok(token);
                }
                Err(err) => {
                    let reason = reason(err.clone());
                    log::debug!("Azure credential {}: failed: {reason}", method.name);
                    reasons.push(format!("{}: {reason}", method.name));
                    transient |= err.is_retryable();
                    if method.configured && err.is_retryable() {
                        // Not another identity meanwhile: the next token tries this one again.
                        return Err(Error::Transport {
                            url: "the Azure credential chain".into(),
                            detail: format!(
                                "storage account {}: the {} credential: {reason}",
                                self.account, method.name
                            ),
                        });
                    }
                    if method.configured {
                        return Err(Error::Credential {
                            detail: format!(
                                "no Azure credential for storage account {}: {}; the {} \
                                 credential is configured but refused, so the remaining \
                                 methods were not tried",
                                self.account,
                                reasons.join("; "),
                                method.name
                            ),
                        });
                    }
                }
            }
        }
        let detail = format!(
            "no Azure credential for storage account {}: {}; set {CONNECTION_STRING_VAR}, or \
             configure one of these methods",
            self.account,
            reasons.join("; ")
        );
        if transient {
            // A token endpoint or the metadata service failed for now: worth another try.
            return Err(Error::Transport {
                url: "the Azure credential chain".into(),
                detail,
            });
        }
        Err(Error::Credential { detail })
    }
}

impl TokenProvider for DefaultChain {
    fn token(&self) -> Result<Secret, Error> {
        self.resolve()
    }

    fn invalidate(&self) {
        let chosen = *self.chosen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = chosen
            && let Ok(provider) = &self.methods[index].candidate
        {
            provider.invalidate();
        }
    }

    fn describe(&self) -> String {
        let chosen = *self.chosen.lock().unwrap_or_else(|e| e.into_inner());
        match chosen.map(|i| &self.methods[i]) {
            Some(Method {
                candidate: Ok(provider),
                ..
            }) => provider.describe(),
            _ => "the Azure credential chain (environment, workload identity, managed \
                  identity, Azure CLI)"
                .into(),
        }
    }
}

/// A token just issued, and how long it lives.
#[derive(Debug)]
pub struct FreshToken {
    pub token: Secret,
    pub lifetime: Duration,
}

#[derive(Debug)]
struct Cached {
    token: Secret,
    refresh_at: Instant,
    expires_at: Instant,
}

/// One cached token, refreshed `REFRESH_MARGIN` before it expires (or halfway, for short
/// lifetimes). While a refresh fails the old token serves until it expires. The lock is held
/// while fetching, so threads wait for one fetch instead of each fetching.
#[derive(Debug, Default)]
pub struct TokenCache {
    cached: Mutex<Option<Cached>>,
}

impl TokenCache {
    pub fn get(
        &self,
        what: &str,
        fetch: impl FnOnce() -> Result<FreshToken, Error>,
    ) -> Result<Secret, Error> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(current) = cached.as_ref()
            && now < current.refresh_at
        {
            return Ok(current.token.clone());
        }
        match fetch() {
            Ok(fresh) => {
                let margin = REFRESH_MARGIN.min(fresh.lifetime / 2);
                let token = fresh.token.clone();
                *cached = Some(Cached {
                    token: fresh.token,
                    refresh_at: now + fresh.lifetime - margin,
                    expires_at: now + fresh.lifetime,
                });
                Ok(token)
            }
            Err(err) => match cached.as_ref() {
                Some(current) if now < current.expires_at => {
                    log::warn!(
                        "{what}: cannot refresh the token yet ({err}); using the current one"
                    );
                    Ok(current.token.clone())
                }
                _ => Err(err),
            },
        }
    }

    pub fn clear(&self) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Reads a token response: `access_token` (or the CLI's `accessToken`) and its lifetime from
/// `expires_in` (seconds, number or string), else `expires_on` (Unix time, number or string).
/// Errors never quote the body: it may hold a token.
pub fn parse_token_response(body: &[u8], now_unix: i64) -> Result<FreshToken, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| format!("the reply is not JSON ({} bytes)", body.len()))?;
    let token = value
        .get("access_token")
        .or_else(|| value.get("accessToken"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or("the reply has no access_token")?;
    let number = |name: &str| match value.get(name) {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    let lifetime_secs = number("expires_in").or_else(|| number("expires_on").map(|t| t - now_unix));
    let lifetime = match lifetime_secs {
        Some(secs) if secs > 0 => Duration::from_secs(secs as u64),
        Some(_) => return Err("the reply's token has already expired".into()),
        None if value.get("expiresOn").is_some() => UNKNOWN_LIFETIME,
        None => return Err("the reply does not say when the token expires".into()),
    };
    Ok(FreshToken {
        token: Secret::new(token),
        lifetime,
    })
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The reason in an OAuth2 or managed-identity error reply: `error` and the first line of
/// `error_description` (Entra appends trace ids on further lines).
fn oauth_error(status: u16, body: &[u8]) -> (String, String) {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = value
        .get("error")
        .and_then(|e| match e {
            Value::String(s) => Some(s.clone()),
            // Some managed identity endpoints nest it: {"error": {"code", "message"}}.
            Value::Object(o) => o.get("code").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| format!("HTTP {status}"));
    let description = value
        .get("error_description")
        .and_then(Value::as_str)
        .or_else(|| {
            value
                .get("error")
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
        })
        .and_then(|d| d.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("(no description)")
        .to_owned();
    (error, description)
}

/// Turns an HTTP reply from a token endpoint into a token or an error.
fn token_reply(url: &str, status: u16, body: &[u8]) -> Result<FreshToken, Error> {
    if status == 200 {
        return parse_token_response(body, now_unix()).map_err(|detail| Error::Transport {
            url: url.to_owned(),
            detail,
        });
    }
    let (error, description) = oauth_error(status, body);
    if status >= 500 || status == 429 || status == 408 {
        return Err(Error::Transport {
            url: url.to_owned(),
            detail: format!("HTTP {status}: {error}: {description}"),
        });
    }
    Err(Error::Rejected {
        url: url.to_owned(),
        error,
        description: format!("HTTP {status}: {description}"),
    })
}

/// Workload identity (AKS, or any federation): the client assertion is the token Kubernetes
/// writes to `AZURE_FEDERATED_TOKEN_FILE`, reread at every fetch because it is rotated.
pub struct WorkloadIdentity {
    token_url: String,
    client_id: String,
    token_file: PathBuf,
    scope: String,
    cache: TokenCache,
}

impl WorkloadIdentity {
    fn fetch(&self) -> Result<FreshToken, Error> {
        let assertion =
            std::fs::read_to_string(&self.token_file).map_err(|e| Error::Credential {
                detail: format!(
                    "cannot read the federated token file {}: {e}",
                    self.token_file.display()
                ),
            })?;
        let assertion = Secret::new(assertion.trim());
        if assertion.is_empty() {
            return Err(Error::Credential {
                detail: format!(
                    "the federated token file {} is empty",
                    self.token_file.display()
                ),
            });
        }
        let agent = crate::http::agent(&crate::http::AgentSettings::default());
        let result = agent
            .post(&self.token_url)
            .config()
            .timeout_global(Some(TOKEN_REQUEST_TIMEOUT))
            .build()
            .send_form([
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("scope", self.scope.as_str()),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.expose()),
            ]);
        let (status, body) = read_reply(&self.token_url, result)?;
        token_reply(&self.token_url, status, &body)
    }
}

impl TokenProvider for WorkloadIdentity {
    fn token(&self) -> Result<Secret, Error> {
        self.cache.get("workload identity", || self.fetch())
    }

    fn invalidate(&self) {
        self.cache.clear();
    }

    fn describe(&self) -> String {
        format!(
            "workload identity for client {} (token file {}) at {}",
            self.client_id,
            self.token_file.display(),
            self.token_url
        )
    }
}

/// Reads a whole reply, or says why there is none.
fn read_reply(
    url: &str,
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, Vec<u8>), Error> {
    let transport = |e: ureq::Error| Error::Transport {
        url: url.to_owned(),
        detail: e.to_string(),
    };
    let mut response = result.map_err(transport)?;
    let status = response.status().as_u16();
    let body =
        crate::http::read_body(response.body_mut(), MAX_TOKEN_RESPONSE_BYTES).map_err(transport)?;
    Ok((status, body))
}

/// Where a managed identity's tokens come from.
enum IdentitySource {
    /// App Service, Functions, Container Apps: `IDENTITY_ENDPOINT` with `IDENTITY_HEADER`.
    AppService { endpoint: String, header: Secret },
    /// Virtual machines, scale sets, AKS nodes: the instance metadata service.
    Imds { base: String },
}

/// A managed identity: system-assigned, or the user-assigned one `AZURE_CLIENT_ID` names.
pub struct ManagedIdentity {
    source: IdentitySource,
    client_id: Option<String>,
    cache: TokenCache,
}

impl ManagedIdentity {
    fn from_env(var: &dyn Fn(&str) -> Option<String>) -> ManagedIdentity {
        let source = match (var("IDENTITY_ENDPOINT"), var("IDENTITY_HEADER")) {
            (Some(endpoint), Some(header)) => IdentitySource::AppService {
                endpoint,
                header: Secret::new(header),
            },
            _ => IdentitySource::Imds {
                base: var(IMDS_ENDPOINT_VAR)
                    .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_owned())
                    .trim_end_matches('/')
                    .to_owned(),
            },
        };
        ManagedIdentity {
            source,
            client_id: var("AZURE_CLIENT_ID"),
            cache: TokenCache::default(),
        }
    }

    fn url(&self) -> String {
        let (base, version) = match &self.source {
            IdentitySource::AppService { endpoint, .. } => (endpoint.clone(), "2019-08-01"),
            IdentitySource::Imds { base } => (
                format!("{base}/metadata/identity/oauth2/token"),
                "2018-02-01",
            ),
        };
        let separator = if base.contains('?') { '&' } else { '?' };
        let mut url = format!(
            "{base}{separator}api-version={version}&resource={}",
            query_encode(STORAGE_RESOURCE)
        );
        if let Some(client_id) = &self.client_id {
            url.push_str("&client_id=");
            url.push_str(&query_encode(client_id));
        }
        url
    }

    fn fetch(&self) -> Result<FreshToken, Error> {
        let url = self.url();
        let agent = crate::http::agent(&crate::http::AgentSettings::default());
        // The identity endpoint is local to the host: never through a proxy.
        let request = agent
            .get(&url)
            .config()
            .proxy(None)
            .timeout_global(Some(TOKEN_REQUEST_TIMEOUT));
        let result = match &self.source {
            IdentitySource::AppService { header, .. } => request
                .build()
                .header("X-IDENTITY-HEADER", header.expose())
                .call(),
            IdentitySource::Imds { .. } => request
                .timeout_connect(Some(IMDS_CONNECT_TIMEOUT))
                .build()
                .header("Metadata", "true")
                .call(),
        };
        let result = match (&self.source, result) {
            // Off Azure there is no metadata service: the method does not apply.
            (IdentitySource::Imds { .. }, Err(err)) => {
                return Err(Error::Credential {
                    detail: format!("no instance metadata service at {url}: {err}"),
                });
            }
            (_, result) => result,
        };
        let (status, body) = read_reply(&url, result)?;
        match token_reply(&url, status, &body) {
            // IMDS answers 400 when the VM has no (such) identity: not there, not transient.
            Err(Error::Rejected {
                url,
                error,
                description,
            }) => Err(Error::Credential {
                detail: format!("{url}: {error}: {description}"),
            }),
            other => other,
        }
    }
}

impl TokenProvider for ManagedIdentity {
    fn token(&self) -> Result<Secret, Error> {
        self.cache.get("managed identity", || self.fetch())
    }

    fn invalidate(&self) {
        self.cache.clear();
    }

    fn describe(&self) -> String {
        let identity = match &self.client_id {
            Some(id) => format!("user-assigned managed identity {id}"),
            None => "system-assigned managed identity".to_owned(),
        };
        match &self.source {
            IdentitySource::AppService { endpoint, .. } => format!("{identity} via {endpoint}"),
            IdentitySource::Imds { base } => format!("{identity} via {base}"),
        }
    }
}

/// The Azure CLI's signed-in account: `az account get-access-token`.
pub struct AzureCli {
    program: PathBuf,
    cache: TokenCache,
}

impl AzureCli {
    /// Finds `az` on the `PATH` that `var` gives.
    fn from_env(var: &dyn Fn(&str) -> Option<String>) -> Result<AzureCli, String> {
        let path = var("PATH").ok_or("PATH is not set, so az cannot be found")?;
        let program = std::env::split_paths(&path)
            .map(|dir| dir.join("az"))
            .find(|candidate| is_executable(candidate))
            .ok_or("az is not installed (not on PATH)")?;
        Ok(AzureCli {
            program,
            cache: TokenCache::default(),
        })
    }

    fn fetch(&self) -> Result<FreshToken, Error> {
        let unavailable = |detail: String| Error::Credential { detail };
        let mut child = Command::new(&self.program)
            .args([
                "account",
                "get-access-token",
                "--resource",
                STORAGE_RESOURCE,
                "--output",
                "json",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| unavailable(format!("cannot run {}: {e}", self.program.display())))?;
        // Read both pipes on threads, so a chatty az never blocks on a full pipe.
        let stdout = child.stdout.take().map(read_on_thread);
        let stderr = child.stderr.take().map(read_on_thread);
        let deadline = Instant::now() + AZ_CLI_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Transport {
                        url: self.program.display().to_string(),
                        detail: format!("az did not answer within {} s", AZ_CLI_TIMEOUT.as_secs()),
                    });
                }
                Err(e) => return Err(unavailable(format!("waiting for az: {e}"))),
            }
        };
        let stdout = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
        let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        if !status.success() {
            let text = String::from_utf8_lossy(&stderr);
            let reason = text
                .lines()
                .map(|l| l.trim().trim_start_matches("ERROR:").trim())
                .find(|l| !l.is_empty())
                .unwrap_or("(no message)");
            return Err(unavailable(format!("az failed ({status}): {reason}")));
        }
        parse_token_response(&stdout, now_unix())
            .map_err(|detail| unavailable(format!("az account get-access-token: {detail}")))
    }
}

fn read_on_thread(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        out
    })
}

impl TokenProvider for AzureCli {
    fn token(&self) -> Result<Secret, Error> {
        self.cache.get("Azure CLI", || self.fetch())
    }

    fn invalidate(&self) {
        self.cache.clear();
    }

    fn describe(&self) -> String {
        format!("the Azure CLI account ({})", self.program.display())
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Percent-encodes a query value (everything but unreserved characters).
fn query_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests;
