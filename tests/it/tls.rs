//! EWS over TLS: certificate verification, cipher lists, and NTLM channel binding, against the
//! pyspnego acceptor serving HTTPS and requiring Extended Protection (--require-cbt).

use std::path::{Path, PathBuf};
use std::process::Command;

use fake_exchange::{FakeExchange, GenSpec, Options};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};
use serde_json::{Value, json};
use time::macros::datetime;

use crate::support::*;

/// A self-signed RSA certificate for 127.0.0.1 and localhost, written as PEM files into `dir`;
/// RSA so that an `ECDHE-RSA-…` cipher list can be negotiated.
fn write_self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, "localhost")
        .unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    let serial = BigNum::from_u32(4242).unwrap().to_asn1_integer().unwrap();
    builder.set_serial_number(&serial).unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_issuer_name(&name).unwrap();
    builder.set_pubkey(&key).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    // Its own CA, so that naming it in SSL_CERT_FILE makes it a trust anchor.
    builder
        .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .dns("localhost")
        .build(&builder.x509v3_context(None, None))
        .unwrap();
    builder.append_extension(san).unwrap();
    builder.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = builder.build();
    let cert_path = dir.join("server-cert.pem");
    let key_path = dir.join("server-key.pem");
    std::fs::write(&cert_path, cert.to_pem().unwrap()).unwrap();
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (cert_path, key_path)
}

/// The fake Exchange (plain HTTP) behind the NTLM acceptor serving HTTPS with required
/// channel bindings.
struct TlsExchange {
    fake: FakeExchange,
    proxy: NtlmProxy,
    dir: tempfile::TempDir,
    cert: PathBuf,
}

impl TlsExchange {
    fn start(mailboxes: usize, emails_per_mailbox: usize) -> TlsExchange {
        let spec = GenSpec {
            seed: 11,
            mailboxes,
            emails_per_mailbox,
            mime_bytes: 1200,
            start: datetime!(2024-05-01 08:00 UTC),
        };
        let fake = FakeExchange::start(fake_exchange::generate(&spec), Options::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_self_signed_cert(dir.path());
        let proxy = NtlmProxy::start_tls(&fake.url(), &cert, &key, true);
        assert!(proxy.url.starts_with("https://127.0.0.1:"), "{}", proxy.url);
        TlsExchange {
            fake,
            proxy,
            dir,
            cert,
        }
    }

    fn addresses(&self) -> Vec<String> {
        self.fake
            .data()
            .mailboxes
            .iter()
            .map(|m| m.address.clone())
            .collect()
    }

    fn prefix(&self) -> PathBuf {
        self.dir.path().join("sink")
    }

    /// `exchange-sync --once` against the acceptor with `extra` config keys, in an
    /// environment without proxies or CA overrides of its own.
    fn command(&self, extra: Value) -> Command {
        let config = write_config(
            self.dir.path(),
            &config(&self.proxy.url, &self.addresses(), extra),
        );
        let mut command = command(&config, &self.prefix(), &["--once", "--debug-level", "1"]);
        for name in [
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "ALL_PROXY",
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "all_proxy",
            "https_proxy",
            "http_proxy",
        ] {
            command.env_remove(name);
        }
        command
    }

    /// The acceptor's statistics, over HTTPS without verification (it is our own cert).
    fn stats(&self) -> Value {
        let base = self.proxy.url.trim_end_matches("/EWS/Exchange.asmx");
        let agent = exchange_sync::http::agent(&exchange_sync::http::AgentSettings {
            verify_tls: false,
            ciphers: None,
        });
        agent
            .get(format!("{base}/__stats"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap()
    }

    /// Every email copied, and every NTLM handshake accepted with its channel binding.
    fn assert_synced_with_channel_binding(&self, run: &Run) {
        assert_eq!(run.code(), Some(0), "exchange-sync failed:\n{}", run.stderr);
        assert!(assert_exact_copy(&self.fake.data(), &self.prefix()) > 0);
        let stats = self.stats();
        assert!(stats["handshakes_ok"].as_u64().unwrap() >= 1, "{stats}");
        assert_eq!(stats["handshakes_failed"], 0, "{stats}");
        assert!(
            run.stderr
                .contains("NTLM with channel binding (tls-server-end-point, SHA256)"),
            "no channel binding logged:\n{}",
            run.stderr
        );
    }
}

#[test]
fn channel_binding_satisfies_an_acceptor_that_requires_it() {
    let exchange = TlsExchange::start(2, 40);
    let result = run(exchange.command(json!({
        "ews_ssl_verify": false,
        "max_concurrent_fetches": 2,
    })));
    exchange.assert_synced_with_channel_binding(&result);
    assert!(
        !result.stderr.contains(NTLM_PASSWORD) && !result.stdout.contains(NTLM_PASSWORD),
        "the password leaked"
    );
}

#[test]
fn untrusted_certificate_is_a_clear_fatal_error() {
    let exchange = TlsExchange::start(1, 5);
    let result = run(exchange.command(json!({"ews_ssl_verify": true})));
    assert_eq!(result.code(), Some(1), "{}", result.stderr);
    for expected in [
        "the server certificate is not trusted",
        "self-signed certificate",
        "SSL_CERT_FILE",
    ] {
        assert!(
            result.stderr.contains(expected),
            "{expected:?} missing:\n{}",
            result.stderr
        );
    }
    assert_eq!(exchange.stats()["handshakes_ok"], 0);
}

#[test]
fn ssl_cert_file_makes_the_certificate_trusted() {
    let exchange = TlsExchange::start(1, 30);
    let mut command = exchange.command(json!({"ews_ssl_verify": true}));
    command.env("SSL_CERT_FILE", &exchange.cert);
    exchange.assert_synced_with_channel_binding(&run(command));
}

#[test]
fn unusable_cipher_list_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(
            "https://127.0.0.1:9/EWS/Exchange.asmx",
            &["a@example.com".to_owned()],
            json!({"ews_ssl_ciphers": "NOT-A-CIPHER"}),
        ),
    );
    let result = run(command(&config, &dir.path().join("sink"), &["--once"]));
    assert_eq!(result.code(), Some(2), "{}", result.stderr);
    assert!(
        result.stderr.contains("ews_ssl_ciphers \"NOT-A-CIPHER\""),
        "{}",
        result.stderr
    );
}

#[test]
fn valid_cipher_list_still_syncs() {
    let exchange = TlsExchange::start(1, 30);
    let result = run(exchange.command(json!({
        "ews_ssl_verify": false,
        "ews_ssl_ciphers": "ECDHE-RSA-AES128-GCM-SHA256",
    })));
    exchange.assert_synced_with_channel_binding(&result);
}
