//! Tests of the Azure credentials: connection strings, and every method of the chain against
//! loopback fakes (fake-login for the environment and workload identity, a tiny_http
//! metadata service and identity endpoint, a fake `az` script). No test sends anything
//! beyond loopback: every environment here points the metadata service at a closed port
//! unless it points it at a fake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::*;

const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// An environment with `vars`, no `az` (an empty PATH directory unless given), and the
/// metadata service on a closed loopback port unless given.
struct Env {
    vars: HashMap<String, String>,
    _empty_path: tempfile::TempDir,
}

impl Env {
    fn new(vars: &[(&str, &str)]) -> Env {
        let empty = tempfile::tempdir().unwrap();
        let mut map: HashMap<String, String> = HashMap::new();
        map.insert("PATH".into(), empty.path().display().to_string());
        map.insert(
            IMDS_ENDPOINT_VAR.into(),
            format!("http://127.0.0.1:{}", closed_port()),
        );
        for (name, value) in vars {
            map.insert(name.to_string(), value.to_string());
        }
        Env {
            vars: map,
            _empty_path: empty,
        }
    }

    fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn credentials(&self, account: &str) -> Result<AzureCredentials, Error> {
        from_environment(account, &|name| self.get(name))
    }

    fn provider(&self) -> Arc<dyn TokenProvider> {
        match self.credentials("acct1").unwrap() {
            AzureCredentials::Bearer { provider, .. } => provider,
            other => panic!("expected token credentials, got {other:?}"),
        }
    }
}

#[test]
fn connection_strings_parse() {
    let parsed = ConnectionString::parse(&Secret::new(format!(
        "DefaultEndpointsProtocol=https;AccountName=acct1;AccountKey={DEV_KEY};\
         EndpointSuffix=core.chinacloudapi.cn"
    )))
    .unwrap();
    assert_eq!(parsed.account, "acct1");
    assert_eq!(parsed.key.expose(), DEV_KEY);
    assert_eq!(
        parsed.blob_endpoint,
        "https://acct1.blob.core.chinacloudapi.cn"
    );

    let parsed = ConnectionString::parse(&Secret::new(format!(
        "accountname=devstoreaccount1; accountkey={DEV_KEY}; \
         BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;"
    )))
    .unwrap();
    assert_eq!(
        parsed.blob_endpoint,
        "http://127.0.0.1:10000/devstoreaccount1"
    );

    let parsed = ConnectionString::parse(&Secret::new(format!(
        "AccountName=acct1;AccountKey={DEV_KEY}"
    )))
    .unwrap();
    assert_eq!(parsed.blob_endpoint, "https://acct1.blob.core.windows.net");

    let parsed = ConnectionString::parse(&Secret::new("UseDevelopmentStorage=true")).unwrap();
    assert_eq!(parsed.account, "devstoreaccount1");
    assert_eq!(
        parsed.blob_endpoint,
        "http://127.0.0.1:10000/devstoreaccount1"
    );
}

#[test]
fn bad_connection_strings_name_the_key_and_never_the_value() {
    let secretish = "c2VjcmV0LWtleS12YWx1ZQ==";
    for (text, expected) in [
        (
            format!("AccountName=a;AccountKey={secretish}x!"),
            "AccountKey is not valid base64",
        ),
        (format!("AccountKey={secretish}"), "AccountName is missing"),
        ("AccountName=acct1".to_owned(), "AccountKey is missing"),
        (
            format!("AccountName=acct1;SharedAccessSignature=sv=2021&sig={secretish}"),
            "SharedAccessSignature",
        ),
        (
            format!("AccountName=acct1;{}", secretish.trim_end_matches('=')),
            "Name=Value",
        ),
        (
            format!("AccountName=acct1;AccountKey={secretish};DefaultEndpointsProtocol=ftp"),
            "DefaultEndpointsProtocol",
        ),
    ] {
        let err = ConnectionString::parse(&Secret::new(text.clone())).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(expected), "{text}: {shown}");
        assert!(shown.contains(CONNECTION_STRING_VAR), "{text}: {shown}");
        assert!(
            !shown.contains(secretish.trim_end_matches('=')),
            "{text}: leaked: {shown}"
        );
    }
}

#[test]
fn a_connection_string_comes_first_and_must_name_the_account() {
    let env = Env::new(&[
        (
            CONNECTION_STRING_VAR,
            &format!("AccountName=acct1;AccountKey={DEV_KEY}"),
        ),
        ("AZURE_CLIENT_SECRET", "also-set"),
    ]);
    let credentials = env.credentials("acct1").unwrap();
    let AzureCredentials::SharedKey {
        account,
        key,
        blob_endpoint,
    } = &credentials
    else {
        panic!("{credentials:?}")
    };
    assert_eq!(account, "acct1");
    assert_eq!(key.expose(), DEV_KEY);
    assert_eq!(
        blob_endpoint.as_deref(),
        Some("https://acct1.blob.core.windows.net")
    );
    let shown = format!("{credentials:?} {}", credentials.describe());
    assert!(!shown.contains(DEV_KEY), "{shown}");

    let err = env.credentials("acct2").unwrap_err();
    assert!(
        err.to_string().contains("acct1") && err.to_string().contains("acct2"),
        "{err}"
    );
    assert!(!err.to_string().contains(DEV_KEY));
}

#[test]
fn when_every_method_fails_one_error_lists_them_all() {
    let env = Env::new(&[("AZURE_CLIENT_ID", "1111")]);
    let provider = env.provider();
    let err = provider.token().unwrap_err();
    assert!(matches!(err, Error::Credential { .. }), "{err:?}");
    let text = err.to_string();
    for expected in [
        "storage account acct1",
        "connection string: AZURE_STORAGE_CONNECTION_STRING is not set",
        "environment: neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH",
        "workload identity: AZURE_FEDERATED_TOKEN_FILE is not set",
        "managed identity: no instance metadata service at http://127.0.0.1:",
        "Azure CLI: az is not installed",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
    // The chain is tried again at the next token, in case something came up meanwhile.
    assert!(provider.token().is_err());
}

#[test]
fn half_configured_environment_methods_say_what_is_missing() {
    let env = Env::new(&[
        ("AZURE_CLIENT_SECRET", "s3cret-value"),
        ("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent/token"),
    ]);
    let err = env.provider().token().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("environment: AZURE_TENANT_ID and AZURE_CLIENT_ID must both be set"),
        "{text}"
    );
    assert!(
        text.contains(
            "workload identity: AZURE_FEDERATED_TOKEN_FILE is set, but AZURE_TENANT_ID or \
             AZURE_CLIENT_ID is not"
        ),
        "{text}"
    );
    assert!(!text.contains("s3cret-value"));
}

/// Each request's URL and headers (names in lower case).
type Requests = Vec<(String, Vec<(String, String)>)>;

/// A scripted loopback JSON server recording request URLs and headers.
struct FakeEndpoint {
    port: u16,
    seen: Arc<Mutex<Requests>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeEndpoint {
    fn start(replies: Vec<(u16, String)>) -> FakeEndpoint {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let replies = Mutex::new(std::collections::VecDeque::from(replies));
        let thread = {
            let (server, seen) = (server.clone(), seen.clone());
            std::thread::spawn(move || {
                while let Ok(mut request) = server.recv() {
                    let mut body = Vec::new();
                    let _ = request.as_reader().read_to_end(&mut body);
                    seen.lock().unwrap().push((
                        request.url().to_owned(),
                        request
                            .headers()
                            .iter()
                            .map(|h| {
                                (
                                    h.field.to_string().to_ascii_lowercase(),
                                    h.value.to_string(),
                                )
                            })
                            .collect(),
                    ));
                    let (status, body) = replies
                        .lock()
                        .unwrap()
                        .pop_front()
                        .unwrap_or((500, "{\"error\":\"script_ended\"}".into()));
                    let _ = request
                        .respond(tiny_http::Response::from_string(body).with_status_code(status));
                }
            })
        };
        FakeEndpoint {
            port,
            seen,
            server,
            thread: Some(thread),
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Requests {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeEndpoint {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn managed_identity_through_the_metadata_service() {
    let imds = FakeEndpoint::start(vec![
        (
            400,
            r#"{"error":"invalid_request","error_description":"Identity not found"}"#.into(),
        ),
        (
            200,
            r#"{"access_token":"imds-token","refresh_token":"","expires_in":"3599","expires_on":"1","resource":"https://storage.azure.com/","token_type":"Bearer"}"#
                .into(),
        ),
    ]);
    let env = Env::new(&[(IMDS_ENDPOINT_VAR, &imds.base())]);
    let provider = env.provider();
    // A VM without an identity: the method does not apply, and the error says so.
    let err = provider.token().unwrap_err();
    assert!(
        err.to_string()
            .contains("managed identity: http://127.0.0.1:")
            && err
                .to_string()
                .contains("invalid_request: HTTP 400: Identity not found"),
        "{err}"
    );
    assert_eq!(provider.token().unwrap().expose(), "imds-token");
    // Cached: no third request.
    assert_eq!(provider.token().unwrap().expose(), "imds-token");
    let seen = imds.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].0,
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fstorage.azure.com%2F"
    );
    assert_eq!(header(&seen[1].1, "metadata"), Some("true"));
    assert!(
        provider
            .describe()
            .contains("system-assigned managed identity")
    );
}

#[test]
fn managed_identity_through_the_app_service_identity_endpoint() {
    let endpoint = FakeEndpoint::start(vec![(
        200,
        format!(
            r#"{{"access_token":"app-service-token","expires_on":"{}","resource":"https://storage.azure.com/","token_type":"Bearer","client_id":"2222"}}"#,
            now_unix() + 3600
        ),
    )]);
    let url = format!("{}/msi/token", endpoint.base());
    let env = Env::new(&[
        ("IDENTITY_ENDPOINT", &url),
        ("IDENTITY_HEADER", "identity-header-secret"),
        ("AZURE_CLIENT_ID", "2222"),
    ]);
    let provider = env.provider();
    assert_eq!(provider.token().unwrap().expose(), "app-service-token");
    let seen = endpoint.seen();
    assert_eq!(
        seen[0].0,
        "/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fstorage.azure.com%2F&client_id=2222"
    );
    assert_eq!(
        header(&seen[0].1, "x-identity-header"),
        Some("identity-header-secret")
    );
    let described = provider.describe();
    assert!(
        described.contains("user-assigned managed identity 2222"),
        "{described}"
    );
    assert!(!described.contains("identity-header-secret"));
}

/// Writes an executable `az` into a new directory; returns the directory.
fn fake_az(script: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("az");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn the_azure_cli_is_the_last_resort() {
    let dir = fake_az(&format!(
        r#"[ "$*" = "account get-access-token --resource https://storage.azure.com/ --output json" ] || {{ echo "ERROR: unexpected arguments: $*" >&2; exit 2; }}
echo '{{"accessToken": "cli-token", "expiresOn": "2030-01-01 00:00:00.000000", "expires_on": {}, "tenant": "t", "tokenType": "Bearer"}}'"#,
        now_unix() + 3600
    ));
    let env = Env::new(&[("PATH", &dir.path().display().to_string())]);
    let provider = env.provider();
    assert_eq!(provider.token().unwrap().expose(), "cli-token");
    assert!(
        provider.describe().contains("Azure CLI"),
        "{}",
        provider.describe()
    );
}

#[test]
fn a_signed_out_azure_cli_says_why() {
    let dir = fake_az("echo \"ERROR: Please run 'az login' to setup account.\" >&2; exit 1");
    let env = Env::new(&[("PATH", &dir.path().display().to_string())]);
    let err = env.provider().token().unwrap_err();
    assert!(
        err.to_string().contains(
            "Azure CLI: az failed (exit status: 1): Please run 'az login' to setup account."
        ),
        "{err}"
    );
}

#[test]
fn token_responses_parse_without_quoting_the_token() {
    let fresh = parse_token_response(br#"{"access_token":"t","expires_in":3599}"#, 0).unwrap();
    assert_eq!(fresh.lifetime, Duration::from_secs(3599));
    let fresh = parse_token_response(br#"{"access_token":"t","expires_in":"60"}"#, 0).unwrap();
    assert_eq!(fresh.lifetime, Duration::from_secs(60));
    let fresh = parse_token_response(br#"{"access_token":"t","expires_on":"1100"}"#, 1000).unwrap();
    assert_eq!(fresh.lifetime, Duration::from_secs(100));
    let fresh = parse_token_response(
        br#"{"accessToken":"t","expiresOn":"2030-01-01 00:00:00"}"#,
        0,
    )
    .unwrap();
    assert_eq!(fresh.lifetime, UNKNOWN_LIFETIME);
    for bad in [
        &br#"{"access_token":"tok-secret"}"#[..],
        br#"{"access_token":"tok-secret","expires_on":5}"#,
        br#"{"expires_in":5}"#,
        b"tok-secret",
    ] {
        let err = parse_token_response(bad, 1000).unwrap_err();
        assert!(!err.contains("tok-secret"), "{err}");
    }
}

#[test]
fn cached_tokens_refresh_ahead_and_survive_a_failed_refresh() {
    let cache = TokenCache::default();
    let fetches = std::cell::Cell::new(0);
    let fetch = |lifetime_secs: u64| {
        fetches.set(fetches.get() + 1);
        Ok(FreshToken {
            token: Secret::new(format!("t{}", fetches.get())),
            lifetime: Duration::from_secs(lifetime_secs),
        })
    };
    assert_eq!(cache.get("test", || fetch(3600)).unwrap().expose(), "t1");
    assert_eq!(cache.get("test", || fetch(3600)).unwrap().expose(), "t1");
    assert_eq!(fetches.get(), 1);
    cache.clear();
    // A token living 2 s is refreshed after 1 s (half its life), …
    assert_eq!(cache.get("test", || fetch(2)).unwrap().expose(), "t2");
    std::thread::sleep(Duration::from_millis(1100));
    // … but while it is still valid a failed refresh falls back to it.
    let failed = cache.get("test", || {
        Err(Error::Transport {
            url: "u".into(),
            detail: "down".into(),
        })
    });
    assert_eq!(failed.unwrap().expose(), "t2");
    assert_eq!(cache.get("test", || fetch(2)).unwrap().expose(), "t3");
}

/// A JWT signed by the app's certificate, standing in for the token Kubernetes projects:
/// fake-login checks client assertions against the registered certificate, as Entra checks
/// federated tokens against the federation trust.
fn federated_token(pem: &str, der: &[u8], audience: &str, client_id: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let key = openssl::pkey::PKey::private_key_from_pem(pem.as_bytes()).unwrap();
    let x5t = B64.encode(openssl::sha::sha1(der));
    let now = now_unix();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": x5t});
    let jti: String = (0..16).map(|_| format!("{:02x}", rand_byte())).collect();
    let claims = serde_json::json!({
        "aud": audience, "iss": client_id, "sub": client_id, "jti": jti,
        "nbf": now, "iat": now, "exp": now + 600,
    });
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let mut signer =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
    let signature = signer.sign_oneshot_to_vec(input.as_bytes()).unwrap();
    format!("{input}.{}", B64.encode(signature))
}

fn rand_byte() -> u8 {
    let mut b = [0u8; 1];
    openssl::rand::rand_bytes(&mut b).unwrap();
    b[0]
}

/// `http://127.0.0.1:PORT`: the fake's authority without the tenant.
fn authority_host_of(login: &fake_login::FakeLogin) -> String {
    let authority = login.authority();
    let tenant_part = format!("/{}/", login.tenant());
    authority.strip_suffix(&tenant_part).unwrap().to_owned()
}

#[test]
fn workload_identity_exchanges_the_federated_token() {
    let (pem, der, _) = fake_login::make_certificate("workload");
    let login = fake_login::FakeLogin::start(
        "contoso",
        vec![fake_login::App::with_certificate("3333", der.clone())],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(
        &token_file,
        federated_token(&pem, &der, &login.token_url(), "3333"),
    )
    .unwrap();
    let host = authority_host_of(&login);
    let env = Env::new(&[
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            &token_file.display().to_string(),
        ),
        ("AZURE_TENANT_ID", "contoso"),
        ("AZURE_CLIENT_ID", "3333"),
        ("AZURE_AUTHORITY_HOST", &host),
    ]);
    let provider = env.provider();
    let token = provider.token().unwrap();
    assert!(login.is_valid_token(token.expose(), STORAGE_SCOPE));
    assert!(
        provider
            .describe()
            .contains("workload identity for client 3333")
    );

    // The file is rotated: the next fetch reads the new one. A replayed one is refused,
    // which ends the chain (it is configured) with the identity platform's reason.
    provider.invalidate();
    std::fs::write(
        &token_file,
        federated_token(&pem, &der, &login.token_url(), "3333"),
    )
    .unwrap();
    let second = provider.token().unwrap();
    assert!(login.is_valid_token(second.expose(), STORAGE_SCOPE));
    provider.invalidate();
    let err = provider.token().unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err:?}");
    assert!(!format!("{err:?}").contains(&std::fs::read_to_string(&token_file).unwrap()));
}

#[test]
fn a_refused_configured_method_ends_the_chain() {
    let (pem, der, _) = fake_login::make_certificate("other");
    let login = fake_login::FakeLogin::start(
        "contoso",
        vec![fake_login::App::with_certificate("3333", der.clone())],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    // Signed for another audience: refused.
    std::fs::write(
        &token_file,
        federated_token(&pem, &der, "api://elsewhere", "3333"),
    )
    .unwrap();
    let imds = FakeEndpoint::start(vec![]);
    let host = authority_host_of(&login);
    let env = Env::new(&[
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            &token_file.display().to_string(),
        ),
        ("AZURE_TENANT_ID", "contoso"),
        ("AZURE_CLIENT_ID", "3333"),
        ("AZURE_AUTHORITY_HOST", &host),
        (IMDS_ENDPOINT_VAR, &imds.base()),
    ]);
    let err = env.provider().token().unwrap_err();
    assert!(matches!(err, Error::Credential { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("the workload identity credential is configured but refused"),
        "{text}"
    );
    assert!(
        imds.seen().is_empty(),
        "managed identity was tried after a refusal"
    );
}

#[test]
fn a_transient_token_endpoint_failure_is_retryable() {
    let (pem, der, _) = fake_login::make_certificate("busy");
    let login = fake_login::FakeLogin::start(
        "contoso",
        vec![fake_login::App::with_certificate("3333", der.clone())],
    )
    .unwrap();
    login.fail_next(503, Some("1"));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        federated_token(&pem, &der, &login.token_url(), "3333"),
    )
    .unwrap();
    let host = authority_host_of(&login);
    let imds = FakeEndpoint::start(vec![]);
    let env = Env::new(&[
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            &token_file.display().to_string(),
        ),
        ("AZURE_TENANT_ID", "contoso"),
        ("AZURE_CLIENT_ID", "3333"),
        ("AZURE_AUTHORITY_HOST", &host),
        (IMDS_ENDPOINT_VAR, &imds.base()),
    ]);
    let provider = env.provider();
    let err = provider.token().unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(imds.seen().is_empty(), "fell back to another identity");
    assert!(login.is_valid_token(provider.token().unwrap().expose(), STORAGE_SCOPE));
}

#[test]
fn the_environment_with_a_client_secret() {
    let login = fake_login::FakeLogin::start(
        "contoso",
        vec![fake_login::App::with_secret("4444", "app-secret-value")],
    )
    .unwrap();
    let host = authority_host_of(&login);
    let env = Env::new(&[
        ("AZURE_TENANT_ID", "contoso"),
        ("AZURE_CLIENT_ID", "4444"),
        ("AZURE_CLIENT_SECRET", "app-secret-value"),
        ("AZURE_AUTHORITY_HOST", &host),
    ]);
    let credentials = env.credentials("acct1").unwrap();
    assert!(!format!("{credentials:?}").contains("app-secret-value"));
    let provider = env.provider();
    let token = provider.token().unwrap();
    assert!(login.is_valid_token(token.expose(), STORAGE_SCOPE));
    assert_eq!(login.issued()[0].method, "secret");
    // Cached: the second call asks nobody.
    let requests = login.requests();
    assert_eq!(provider.token().unwrap(), token);
    assert_eq!(login.requests(), requests);
    assert!(!provider.describe().contains("app-secret-value"));
}

#[test]
fn a_wrong_client_secret_ends_the_chain_with_the_reason() {
    let login = fake_login::FakeLogin::start(
        "contoso",
        vec![fake_login::App::with_secret("4444", "right-secret")],
    )
    .unwrap();
    let imds = FakeEndpoint::start(vec![]);
    let host = authority_host_of(&login);
    let env = Env::new(&[
        ("AZURE_TENANT_ID", "contoso"),
        ("AZURE_CLIENT_ID", "4444"),
        ("AZURE_CLIENT_SECRET", "wrong-secret-value"),
        ("AZURE_AUTHORITY_HOST", &host),
        (IMDS_ENDPOINT_VAR, &imds.base()),
    ]);
    let err = env.provider().token().unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(matches!(err, Error::Credential { .. }), "{text}");
    assert!(text.contains("environment: "), "{text}");
    assert!(text.contains("invalid_client"), "{text}");
    assert!(
        text.contains("the environment credential is configured but refused"),
        "{text}"
    );
    assert!(!text.contains("wrong-secret-value") && !text.contains("right-secret"));
    assert!(
        imds.seen().is_empty(),
        "managed identity was tried after a refusal"
    );
}

#[test]
fn the_environment_with_a_client_certificate() {
    let (pem, der, _) = fake_login::make_certificate("storage-app");
    let login = fake_login::FakeLogin::start(
        "contoso",
        vec![fake_login::App::with_certificate("5555", der)],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.pem");
    std::fs::write(&path, &pem).unwrap();
    let host = authority_host_of(&login);
    let env = Env::new(&[
        ("AZURE_TENANT_ID", "contoso"),
        ("AZURE_CLIENT_ID", "5555"),
        ("AZURE_CLIENT_CERTIFICATE_PATH", &path.display().to_string()),
        ("AZURE_AUTHORITY_HOST", &host),
    ]);
    let provider = env.provider();
    let token = provider.token().unwrap();
    assert!(login.is_valid_token(token.expose(), STORAGE_SCOPE));
    assert_eq!(login.issued()[0].method, "assertion");
    let key_line = pem.lines().nth(1).unwrap();
    assert!(!provider.describe().contains(key_line));

    // An unreadable or wrong certificate file is a configuration error, said at once.
    for (content, expected) in [
        (None, "No such file"),
        (Some("not a pem"), "no private key"),
    ] {
        let bad = dir.path().join("bad.pem");
        let _ = std::fs::remove_file(&bad);
        if let Some(content) = content {
            std::fs::write(&bad, content).unwrap();
        }
        let env = Env::new(&[
            ("AZURE_TENANT_ID", "contoso"),
            ("AZURE_CLIENT_ID", "5555"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", &bad.display().to_string()),
        ]);
        let err = env.credentials("acct1").unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        assert!(
            err.to_string().contains("AZURE_CLIENT_CERTIFICATE_PATH"),
            "{err}"
        );
    }
}
