//! Unit tests of the fake token endpoint, through real HTTP on loopback. The assertions here
//! are built by a small signer of their own, independent of exchange-sync's jwt.rs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer};
use serde_json::{Value, json};

use super::*;

const TENANT: &str = "contoso.onmicrosoft.com";
const SECRET_APP: &str = "11111111-1111-1111-1111-111111111111";
const CERT_APP: &str = "22222222-2222-2222-2222-222222222222";
const SECRET: &str = "Xy7~secret.value_with+special&chars=";
const GRAPH: &str = "https://graph.microsoft.com/.default";

struct TestCert {
    pem: String,
    der: Vec<u8>,
    thumbprint_hex: String,
    key: PKey<Private>,
}

/// RSA key generation is slow in debug builds; the tests share two certificates.
fn certs() -> &'static (TestCert, TestCert) {
    static CERTS: OnceLock<(TestCert, TestCert)> = OnceLock::new();
    CERTS.get_or_init(|| {
        let make = |cn: &str| {
            let (pem, der, thumbprint_hex) = make_certificate(cn);
            let key = PKey::private_key_from_pem(pem.as_bytes()).unwrap();
            TestCert {
                pem,
                der,
                thumbprint_hex,
                key,
            }
        };
        (make("registered"), make("stranger"))
    })
}

fn start() -> FakeLogin {
    let (registered, _) = certs();
    FakeLogin::start(
        TENANT,
        vec![
            App::with_secret(SECRET_APP, SECRET),
            App::with_certificate(CERT_APP, registered.der.clone()),
        ],
    )
    .unwrap()
}

/// One HTTP/1.1 request on its own connection; returns status, headers (lower-case names)
/// and body.
fn http(
    url: &str,
    method: &str,
    content_type: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = TcpStream::connect(host).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn post_form(login: &FakeLogin, pairs: &[(&str, &str)]) -> (u16, Value) {
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    let (status, _, body) = http(
        &login.token_url(),
        "POST",
        "application/x-www-form-urlencoded",
        &body.join("&"),
    );
    (status, serde_json::from_str(&body).unwrap())
}

fn secret_request<'a>(
    client_id: &'a str,
    secret: &'a str,
    scope: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("scope", scope),
        ("client_secret", secret),
    ]
}

fn assertion_request(assertion: &str) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", CERT_APP),
        ("scope", GRAPH),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
    ]
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(der: &[u8], md: MessageDigest) -> Vec<u8> {
    openssl::hash::hash(md, der).unwrap().to_vec()
}

fn now() -> i64 {
    unix_now_secs()
}

/// A well-formed assertion for CERT_APP signed by `key`; `edit` adjusts header and claims.
fn assertion_with(
    key: &PKey<Private>,
    alg: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>, &mut serde_json::Map<String, Value>),
    token_url: &str,
) -> String {
    let (registered, _) = certs();
    let mut header = json!({"alg": alg, "typ": "JWT", "x5t": b64(&digest(&registered.der, MessageDigest::sha1()))});
    let now = now();
    let mut claims = json!({
        "aud": token_url, "iss": CERT_APP, "sub": CERT_APP,
        "jti": aad::random_guid(), "nbf": now, "iat": now, "exp": now + 600,
    });
    edit(
        header.as_object_mut().unwrap(),
        claims.as_object_mut().unwrap(),
    );
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut signer = Signer::new(MessageDigest::sha256(), key).unwrap();
    if alg == "PS256" {
        signer.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
        signer
            .set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
            .unwrap();
        signer.set_rsa_mgf1_md(MessageDigest::sha256()).unwrap();
    }
    let signature = signer.sign_oneshot_to_vec(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&signature))
}

fn assert_error(reply: (u16, Value), status: u16, error: &str, code: u32) {
    let (got_status, body) = reply;
    assert_eq!(got_status, status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"][0], code, "{body}");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
}

#[test]
fn urls_name_the_tenant() {
    let login = start();
    let authority = login.authority();
    assert!(authority.starts_with("http://127.0.0.1:"));
    assert!(authority.ends_with(&format!("/{TENANT}/")));
    assert_eq!(login.token_url(), format!("{authority}oauth2/v2.0/token"));
    assert_eq!(login.tenant(), TENANT);
}

#[test]
fn secret_grant_issues_a_bearer_token() {
    let login = start();
    let (status, body) = post_form(&login, &secret_request(SECRET_APP, SECRET, GRAPH));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let token = body["access_token"].as_str().unwrap();
    assert!(login.is_valid_token(token, GRAPH));
    assert!(!login.is_valid_token(token, "https://outlook.office365.com/.default"));
    assert!(!login.is_valid_token("forged", GRAPH));
    let issued = login.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].client_id, SECRET_APP);
    assert_eq!(issued[0].scope, GRAPH);
    assert_eq!(issued[0].access_token, token);
    assert_eq!(issued[0].method, "secret");
    assert_eq!(issued[0].assertion_alg, None);
    assert_eq!(login.requests(), 1);
    login.expire_issued_tokens();
    assert!(!login.is_valid_token(token, GRAPH));
}

#[test]
fn lifetime_is_configurable_and_zero_means_expired() {
    let login = start();
    login.set_token_lifetime_secs(60);
    let (_, body) = post_form(&login, &secret_request(SECRET_APP, SECRET, GRAPH));
    assert_eq!(body["expires_in"], 60);
    assert_eq!(login.issued()[0].lifetime_secs, 60);
    login.set_token_lifetime_secs(0);
    let (_, body) = post_form(&login, &secret_request(SECRET_APP, SECRET, GRAPH));
    assert!(!login.is_valid_token(body["access_token"].as_str().unwrap(), GRAPH));
}

#[test]
fn request_errors_like_aad() {
    let login = start();
    assert_error(
        post_form(&login, &secret_request(SECRET_APP, "wrong", GRAPH)),
        401,
        "invalid_client",
        7000215,
    );
    assert_error(
        post_form(
            &login,
            &secret_request("33333333-0000-0000-0000-000000000000", SECRET, GRAPH),
        ),
        400,
        "unauthorized_client",
        700016,
    );
    assert_error(
        post_form(
            &login,
            &secret_request(SECRET_APP, SECRET, "https://graph.microsoft.com/Mail.Read"),
        ),
        400,
        "invalid_scope",
        1002012,
    );
    let mut request = secret_request(SECRET_APP, SECRET, GRAPH);
    request[0].1 = "password";
    assert_error(
        post_form(&login, &request),
        400,
        "unsupported_grant_type",
        70003,
    );
    request.remove(0);
    assert_error(post_form(&login, &request), 400, "invalid_request", 900144);
    let no_credential = &secret_request(SECRET_APP, SECRET, GRAPH)[..3];
    assert_error(
        post_form(&login, no_credential),
        401,
        "invalid_client",
        7000218,
    );
    // An app with only a certificate has no secret to match.
    assert_error(
        post_form(&login, &secret_request(CERT_APP, "", GRAPH)),
        401,
        "invalid_client",
        7000215,
    );
    assert!(login.issued().is_empty());
}

#[test]
fn wrong_tenant_path_method_and_content_type() {
    let login = start();
    let other_tenant = login.token_url().replace(TENANT, "fabrikam.com");
    let (status, _, body) = http(
        &other_tenant,
        "POST",
        "application/x-www-form-urlencoded",
        "",
    );
    assert_eq!(status, 400);
    assert!(body.contains("AADSTS90002"), "{body}");
    let (status, _, _) = http(
        &format!("{}oauth2/token", login.authority()),
        "POST",
        "application/x-www-form-urlencoded",
        "",
    );
    assert_eq!(status, 404);
    let (status, _, body) = http(&login.token_url(), "GET", "text/plain", "");
    assert_eq!(status, 400);
    assert!(body.contains("AADSTS900561"), "{body}");
    let (status, _, body) = http(
        &login.token_url(),
        "POST",
        "application/json",
        "grant_type=client_credentials",
    );
    assert_eq!(status, 400);
    assert!(body.contains("AADSTS900144"), "{body}");
    assert_eq!(login.requests(), 4);
}

#[test]
fn assertions_rs256_and_ps256_are_accepted() {
    let login = start();
    let (registered, _) = certs();
    let url = login.token_url();
    let rs256 = assertion_with(&registered.key, "RS256", |_, _| {}, &url);
    let (status, body) = post_form(&login, &assertion_request(&rs256));
    assert_eq!(status, 200, "{body}");
    assert!(login.is_valid_token(body["access_token"].as_str().unwrap(), GRAPH));

    let sha256 = b64(&digest(&registered.der, MessageDigest::sha256()));
    let ps256 = assertion_with(
        &registered.key,
        "PS256",
        |header, _| {
            header.remove("x5t");
            header.insert("x5t#S256".into(), json!(sha256));
        },
        &url,
    );
    let (status, body) = post_form(&login, &assertion_request(&ps256));
    assert_eq!(status, 200, "{body}");

    // MSAL's form: padded x5t, iat but no nbf.
    let padded = URL_SAFE.encode(digest(&registered.der, MessageDigest::sha1()));
    assert!(padded.ends_with('='));
    let msal_style = assertion_with(
        &registered.key,
        "RS256",
        |header, claims| {
            header.insert("x5t".into(), json!(padded));
            claims.remove("nbf");
        },
        &url,
    );
    let (status, body) = post_form(&login, &assertion_request(&msal_style));
    assert_eq!(status, 200, "{body}");

    let issued = login.issued();
    let summary: Vec<_> = issued
        .iter()
        .map(|i| {
            (
                i.method.as_str(),
                i.assertion_alg.as_deref(),
                i.assertion_thumbprint_header.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("assertion", Some("RS256"), Some("x5t")),
            ("assertion", Some("PS256"), Some("x5t#S256")),
            ("assertion", Some("RS256"), Some("x5t")),
        ]
    );
    assert_eq!(registered.thumbprint_hex.len(), 40);
}

#[test]
fn assertion_errors_like_aad() {
    let login = start();
    let (registered, stranger) = certs();
    let url = login.token_url();
    let now = now();
    let check = |assertion: String, status: u16, code: u32| {
        assert_error(
            post_form(&login, &assertion_request(&assertion)),
            status,
            "invalid_client",
            code,
        );
    };
    // Signed by another key, naming the registered certificate.
    check(
        assertion_with(&stranger.key, "RS256", |_, _| {}, &url),
        401,
        700027,
    );
    // Naming a certificate that is not registered.
    let stranger_x5t = b64(&digest(&stranger.der, MessageDigest::sha1()));
    check(
        assertion_with(
            &stranger.key,
            "RS256",
            |h, _| {
                h.insert("x5t".into(), json!(stranger_x5t));
            },
            &url,
        ),
        401,
        700027,
    );
    // The wrong x5t#S256 next to a right x5t.
    check(
        assertion_with(
            &registered.key,
            "RS256",
            |h, _| {
                h.insert("x5t#S256".into(), json!(stranger_x5t));
            },
            &url,
        ),
        401,
        700027,
    );
    // Header says PS256, signature is PKCS#1 v1.5.
    let rs256 = assertion_with(&registered.key, "RS256", |_, _| {}, &url);
    let (header, rest) = rs256.split_once('.').unwrap();
    let mut header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["alg"] = json!("PS256");
    check(
        format!("{}.{rest}", b64(header.to_string().as_bytes())),
        401,
        700027,
    );
    // Tampered claims.
    let (head, rest) = rs256.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let forged_claims = b64(
        json!({"aud": url, "iss": CERT_APP, "sub": CERT_APP, "jti": "x", "exp": now + 60})
            .to_string()
            .as_bytes(),
    );
    check(format!("{head}.{forged_claims}.{signature}"), 401, 700027);

    check(
        assertion_with(
            &registered.key,
            "RS256",
            |h, _| {
                h.remove("x5t");
            },
            &url,
        ),
        401,
        50027,
    );
    check(
        assertion_with(&registered.key, "HS256", |_, _| {}, &url),
        401,
        50027,
    );
    check("a.b".to_owned(), 401, 50027);
    check(
        assertion_with(
            &registered.key,
            "RS256",
            |_, c| {
                c.remove("jti");
            },
            &url,
        ),
        401,
        50027,
    );
    check(
        assertion_with(
            &registered.key,
            "RS256",
            |_, _| {},
            &format!("{}oauth2/token", login.authority()),
        ),
        401,
        70002,
    );
    check(
        assertion_with(
            &registered.key,
            "RS256",
            |_, c| {
                c.insert("iss".into(), json!("someone"));
            },
            &url,
        ),
        401,
        700021,
    );
    check(
        assertion_with(
            &registered.key,
            "RS256",
            |_, c| {
                c.insert("sub".into(), json!("someone"));
            },
            &url,
        ),
        401,
        700021,
    );
    check(
        assertion_with(
            &registered.key,
            "RS256",
            |_, c| {
                c.insert("nbf".into(), json!(now - 1200));
                c.insert("exp".into(), json!(now - 600));
            },
            &url,
        ),
        401,
        700024,
    );
    check(
        assertion_with(
            &registered.key,
            "RS256",
            |_, c| {
                c.insert("nbf".into(), json!(now + 900));
                c.insert("exp".into(), json!(now + 1200));
            },
            &url,
        ),
        401,
        700024,
    );
    check(
        assertion_with(
            &registered.key,
            "RS256",
            |_, c| {
                c.insert("exp".into(), json!(now + 3600));
            },
            &url,
        ),
        401,
        700024,
    );
    // Five minutes of clock skew on nbf are fine.
    let skewed = assertion_with(
        &registered.key,
        "RS256",
        |_, c| {
            c.insert("nbf".into(), json!(now + 120));
            c.insert("exp".into(), json!(now + 600));
        },
        &url,
    );
    assert_eq!(post_form(&login, &assertion_request(&skewed)).0, 200);
    // A replayed assertion (same jti) is refused.
    check(skewed, 401, 50027);

    let mut wrong_type = assertion_request(&rs256);
    wrong_type[3].1 = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer";
    assert_error(
        post_form(&login, &wrong_type),
        400,
        "invalid_request",
        50027,
    );
    let mut both = assertion_request(&rs256);
    both.push(("client_secret", SECRET));
    assert_error(post_form(&login, &both), 400, "invalid_request", 900144);
    // A secret-only app has no certificate to check an assertion against.
    let mut secret_app = assertion_request(&rs256);
    secret_app[1].1 = SECRET_APP;
    assert_error(
        post_form(&login, &secret_app),
        401,
        "invalid_client",
        700027,
    );
    assert_eq!(login.issued().len(), 1);
}

#[test]
fn injected_failures_come_first_and_carry_retry_after() {
    let login = start();
    login.fail_next(429, Some("2"));
    login.fail_next(503, None);
    let body = "grant_type=client_credentials";
    let (status, headers, text) = http(
        &login.token_url(),
        "POST",
        "application/x-www-form-urlencoded",
        body,
    );
    assert_eq!(status, 429);
    assert!(headers.contains(&("retry-after".to_owned(), "2".to_owned())));
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["error"], "temporarily_unavailable");
    let (status, headers, _) = http(
        &login.token_url(),
        "POST",
        "application/x-www-form-urlencoded",
        body,
    );
    assert_eq!(status, 503);
    assert!(!headers.iter().any(|(name, _)| name == "retry-after"));
    let (status, _) = post_form(&login, &secret_request(SECRET_APP, SECRET, GRAPH));
    assert_eq!(status, 200);
    assert_eq!(login.requests(), 3);
}

#[test]
fn concurrent_requests_are_all_served() {
    let login = start();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                let (status, body) = post_form(&login, &secret_request(SECRET_APP, SECRET, GRAPH));
                assert_eq!(status, 200, "{body}");
            });
        }
    });
    assert_eq!(login.issued().len(), 8);
    let tokens: HashSet<_> = login.issued().into_iter().map(|i| i.access_token).collect();
    assert_eq!(tokens.len(), 8);
}

#[test]
fn drop_joins_the_workers_promptly() {
    let login = start();
    let (status, _) = post_form(&login, &secret_request(SECRET_APP, SECRET, GRAPH));
    assert_eq!(status, 200);
    let started = Instant::now();
    // Drop joins every worker; a worker left blocked in recv() would hang here. (Whether the
    // port refuses connections afterwards is not checked: tiny_http closes its listener on
    // its own thread, and a parallel test may bind the same port at once.)
    drop(login);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn made_certificates_hold_key_and_certificate() {
    let (registered, _) = certs();
    assert!(registered.pem.contains("-----BEGIN PRIVATE KEY-----"));
    assert!(registered.pem.contains("-----BEGIN CERTIFICATE-----"));
    let cert = X509::from_pem(registered.pem.as_bytes()).unwrap();
    assert_eq!(cert.to_der().unwrap(), registered.der);
    assert!(cert.public_key().unwrap().public_eq(&registered.key));
    assert_eq!(
        registered.thumbprint_hex,
        assertion::hex_upper(&digest(&registered.der, MessageDigest::sha1()))
    );
    assert!(
        registered
            .thumbprint_hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
    );
    assert_eq!(registered.key.bits(), 2048);
}
