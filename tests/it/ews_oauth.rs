//! The binary with EWS and `auth_type: "oauth2"`: app-only tokens from the fake token endpoint
//! (fake-login), checked by a bearer front (fake-graph's `BearerFront`) before the EWS fake.
//! Secret and certificate credentials, a wrong secret, and a token that dies mid-run.

use std::sync::Arc;
use std::time::Duration;

use fake_exchange::{AccessStyle, FakeExchange, GenSpec};
use fake_graph::BearerFront;
use fake_login::{App, FakeLogin};
use serde_json::{Value, json};
use time::macros::datetime;

use crate::support::*;

const CLIENT_ID: &str = "0ea1c1d2-0000-4000-8000-00000000ea51";
const SECRET: &str = "ews-Cl1ent~Secret.value";

fn exchange(mailboxes: usize, emails: usize, latency_ms: u64) -> FakeExchange {
    FakeExchange::start(
        fake_exchange::generate(&GenSpec {
            seed: 31,
            mailboxes,
            emails_per_mailbox: emails,
            mime_bytes: 1200,
            start: datetime!(2024-04-01 08:00 UTC),
        }),
        fake_exchange::Options {
            latency: Duration::from_millis(latency_ms),
            ..fake_exchange::Options::default()
        },
    )
    .unwrap()
}

/// An EWS config with OAuth2 and the client secret (access_type left at its default,
/// delegate); `extra` keys are merged in.
fn oauth_config(
    front: &BearerFront,
    login: &FakeLogin,
    mailboxes: &[String],
    extra: Value,
) -> Value {
    let server = json!({
        "microsoft_api": "ews",
        "ews_endpoint": front.url(),
        "auth_type": "oauth2",
        "auth_oauth_authority": login.authority(),
        "auth_oauth_client_id": CLIENT_ID,
        "auth_oauth_client_secret": SECRET,
    });
    config_with(server, mailboxes, extra)
}

/// Every request impersonated its mailbox and named it in X-AnchorMailbox.
fn assert_impersonated(ews: &FakeExchange, front: &BearerFront) {
    let stats = ews.stats();
    assert!(!stats.access.is_empty());
    for record in &stats.access {
        assert_eq!(record.style, Some(AccessStyle::Impersonation), "{record:?}");
        let mailbox = record.mailbox.as_deref().unwrap_or_default();
        assert!(
            record
                .anchor_mailbox
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(mailbox)),
            "{record:?}"
        );
    }
    assert!(front.stats().anchors.iter().all(Option::is_some));
}

#[test]
fn ews_oauth_with_a_client_secret_copies_exactly() {
    let ews = exchange(2, 120, 0);
    let login =
        Arc::new(FakeLogin::start("contoso", vec![App::with_secret(CLIENT_ID, SECRET)]).unwrap());
    let front = BearerFront::start(&ews.url(), login.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &oauth_config(
            &front,
            &login,
            &addresses(&ews),
            json!({"max_concurrent_fetches": 4}),
        ),
    );
    let prefix = dir.path().join("sink");
    let run = run_once(&config, &prefix);
    assert_exact_copy(&ews.data(), &prefix);
    assert_impersonated(&ews, &front);
    assert_eq!(front.stats().unauthorized, 0);
    // One token for all fetcher threads, for the EWS origin's scope.
    let issued = login.issued();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0].scope, front.scope());
    assert!(
        run.stderr.contains("impersonates its mailbox"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(SECRET) && !run.stderr.contains(&issued[0].access_token));
}

#[test]
fn ews_oauth_with_a_certificate_and_no_thumbprint_copies_exactly() {
    let ews = exchange(1, 80, 0);
    let (pem, der, _thumbprint) = fake_login::make_certificate("exchange-sync ews test");
    let login =
        Arc::new(FakeLogin::start("contoso", vec![App::with_certificate(CLIENT_ID, der)]).unwrap());
    let front = BearerFront::start(&ews.url(), login.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = oauth_config(
        &front,
        &login,
        &addresses(&ews),
        json!({"access_type": "impersonation"}),
    );
    let map = config.as_object_mut().unwrap();
    map.remove("auth_oauth_client_secret");
    // The thumbprint is computed from the certificate in the PEM.
    map.insert(
        "auth_oauth_client_credential_private_key".into(),
        json!(pem),
    );
    let path = write_config(dir.path(), &config);
    let prefix = dir.path().join("sink");
    let run = run_once(&path, &prefix);
    assert_exact_copy(&ews.data(), &prefix);
    assert_impersonated(&ews, &front);
    let issued = login.issued();
    assert!(!issued.is_empty());
    assert!(issued.iter().all(|t| t.method == "assertion"
        && t.assertion_alg.as_deref() == Some("RS256")
        && t.assertion_thumbprint_header.as_deref() == Some("x5t")));
    assert!(!run.stderr.contains("PRIVATE KEY"), "{}", run.stderr);
}

#[test]
fn ews_oauth_with_a_wrong_secret_fails_clearly_without_showing_it() {
    let ews = exchange(1, 5, 0);
    let login =
        Arc::new(FakeLogin::start("contoso", vec![App::with_secret(CLIENT_ID, SECRET)]).unwrap());
    let front = BearerFront::start(&ews.url(), login.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = "Wr0ng~client.secret-value";
    let config = write_config(
        dir.path(),
        &oauth_config(
            &front,
            &login,
            &addresses(&ews),
            json!({"auth_oauth_client_secret": wrong}),
        ),
    );
    let run = run(command(
        &config,
        &dir.path().join("sink"),
        &["--once", "--debug-level", "2"],
    ));
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("AADSTS7000215"), "{}", run.stderr);
    assert!(run.stderr.contains("invalid_client"), "{}", run.stderr);
    assert!(
        !run.stderr.contains(wrong) && !run.stdout.contains(wrong),
        "the secret leaked:\n{}",
        run.stderr
    );
    assert_eq!(front.stats().forwarded, 0);
}

#[test]
fn a_bad_private_key_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "microsoft_api": "ews",
        "ews_endpoint": "http://127.0.0.1:9/EWS/Exchange.asmx",
        "auth_type": "oauth2",
        "auth_oauth_authority": "http://127.0.0.1:9/contoso/",
        "auth_oauth_client_id": CLIENT_ID,
        "auth_oauth_client_credential_private_key":
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        "mailboxes": {"a@example.com": {"bucket": {"owner": "demo", "name": "emails"}}}
    });
    let path = write_config(dir.path(), &config);
    let run = run(command(&path, &dir.path().join("sink"), &["--once"]));
    assert_eq!(run.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("auth_oauth_client_credential_private_key"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_token_that_dies_mid_run_is_replaced_and_the_sync_completes() {
    let ews = exchange(2, 400, 15);
    let login =
        Arc::new(FakeLogin::start("contoso", vec![App::with_secret(CLIENT_ID, SECRET)]).unwrap());
    let front = BearerFront::start(&ews.url(), login.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &oauth_config(
            &front,
            &login,
            &addresses(&ews),
            json!({"max_concurrent_fetches": 2, "reinfer_batch_size": 10}),
        ),
    );
    let prefix = dir.path().join("sink");
    let child = command(&config, &prefix, &["--once", "--debug-level", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "the first stored emails", || {
        !read_docs(&prefix).is_empty()
    });
    // As if the token had expired early (revoked, or cached past its real lifetime).
    login.expire_issued_tokens();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_exact_copy(&ews.data(), &prefix);
    assert!(
        front.stats().unauthorized >= 1,
        "the token never died mid-run"
    );
    assert!(login.issued().len() >= 2, "no new token was fetched");
    assert!(stderr.contains("fetching a new token"), "{stderr}");
}
