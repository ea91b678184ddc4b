//! End-to-end tests of `parse`: every error class, env overrides, defaults, warnings, the
//! redacted JSON, the shipped example configs, and that no input panics or leaks a secret.

use std::time::Duration;

use serde_json::{Value, json};
use time::macros::datetime;

use super::*;
use crate::secret::{REDACTED, Secret};

const ORIGIN: &str = "config.json";

fn no_env(_: &str) -> Option<String> {
    None
}

/// The smallest valid config: EWS, NTLM, one mailbox.
fn base() -> Value {
    json!({
        "host": "mail.example.com",
        "auth_user": "CORP\\alice",
        "auth_password": "pw",
        "mailboxes": {"a@example.com": {"bucket": {"owner": "o", "name": "n"}}}
    })
}

/// A minimal valid Graph config.
fn graph() -> Value {
    json!({
        "microsoft_api": "graph",
        "auth_oauth_authority": "https://login.microsoftonline.com/tenant",
        "auth_oauth_client_id": "client",
        "auth_oauth_client_secret": "shh",
        "mailboxes": {"a@example.com": {"bucket": {"owner": "o", "name": "n"}}}
    })
}

/// `doc` with its top-level keys replaced by those of `changes`; a `null` change removes the key.
fn with(mut doc: Value, changes: Value) -> Value {
    if let (Value::Object(map), Value::Object(changes)) = (&mut doc, changes) {
        for (key, value) in changes {
            if value.is_null() {
                map.remove(&key);
            } else {
                map.insert(key, value);
            }
        }
    }
    doc
}

/// `base()` with mailbox `a@example.com` replaced by `entry`.
fn with_mailbox(entry: Value) -> Value {
    with(base(), json!({"mailboxes": {"a@example.com": entry}}))
}

fn load_env(doc: &Value, vars: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
    let env = |name: &str| {
        vars.iter()
            .find(|(var, _)| *var == name)
            .map(|(_, value)| (*value).to_owned())
    };
    parse(doc.to_string().as_bytes(), ORIGIN, &env)
}

fn load(doc: &Value) -> Result<Loaded, ConfigErrors> {
    load_env(doc, &[])
}

fn ok(doc: &Value) -> Loaded {
    match load(doc) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

fn errors_env(doc: &Value, vars: &[(&str, &str)]) -> Vec<ConfigError> {
    match load_env(doc, vars) {
        Ok(loaded) => panic!("expected errors, got {:?}", loaded.config),
        Err(ConfigErrors(errors)) => {
            assert!(!errors.is_empty(), "Err must carry at least one error");
            errors
        }
    }
}

fn errors(doc: &Value) -> Vec<ConfigError> {
    errors_env(doc, &[])
}

fn one_error(doc: &Value) -> ConfigError {
    let mut all = errors(doc);
    assert_eq!(all.len(), 1, "expected exactly one error, got {all:#?}");
    all.remove(0)
}

fn invalid(key: &str, value: &str, allowed: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        allowed: allowed.into(),
    }
}

fn missing(key: &str, why: &str) -> ConfigError {
    ConfigError::Missing {
        key: key.into(),
        why: why.into(),
    }
}

/// The key of an `Invalid` or `Missing` error.
fn key_of(error: &ConfigError) -> &str {
    match error {
        ConfigError::Invalid { key, .. } | ConfigError::Missing { key, .. } => key,
        ConfigError::Syntax { .. } => "<syntax>",
    }
}

fn keys_of(errors: &[ConfigError]) -> Vec<&str> {
    errors.iter().map(key_of).collect()
}

// ---------------------------------------------------------------------------------------------
// Defaults and happy paths

#[test]
fn defaults_fill_every_optional_key() {
    let loaded = ok(&base());
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = loaded.config;
    assert_eq!(
        config,
        Config {
            microsoft_api: MicrosoftApi::Ews,
            ews_url: Some("http://mail.example.com/EWS/Exchange.asmx".into()),
            graph_url: "https://graph.microsoft.com/v1.0".into(),
            auth: Auth::Ntlm {
                user: "CORP\\alice".into(),
                password: Secret::new("pw"),
            },
            access_type: AccessType::Delegate,
            ews_ssl_verify: true,
            ews_ssl_ciphers: None,
            poll_frequency: Duration::from_secs(15),
            poll_message_sleep: Duration::from_millis(100),
            max_concurrent_uploads: 8,
            max_concurrent_fetches: 8,
            emails_per_folder: 2520,
            reinfer_batch_size: 80,
            audit_email: None,
            mailboxes: vec![MailboxConfig {
                address: "a@example.com".into(),
                bucket: Bucket {
                    owner: "o".into(),
                    name: "n".into(),
                },
                start_from: StartFrom::Bucket,
                start_timestamp: None,
            }],
        }
    );
}

#[test]
fn graph_defaults_to_oauth2_and_needs_no_ews_url() {
    let config = ok(&graph()).config;
    assert_eq!(config.microsoft_api, MicrosoftApi::Graph);
    assert_eq!(config.ews_url, None);
    assert_eq!(
        config.auth,
        Auth::OAuth2 {
            authority: "https://login.microsoftonline.com/tenant/".into(),
            client_id: "client".into(),
            credential: OAuthCredential::Secret(Secret::new("shh")),
        }
    );
}

#[test]
fn every_key_set_explicitly_is_taken() {
    let doc = with(
        base(),
        json!({
            "microsoft_api": "ews",
            "access_type": "impersonation",
            "ews_ssl_verify": false,
            "ews_ssl_ciphers": "DEFAULT:@SECLEVEL=1",
            "poll_frequency": 2.5,
            "poll_message_sleep": 0,
            "max_concurrent_uploads": 0,
            "max_concurrent_fetches": 27,
            "emails_per_folder": 100000,
            "reinfer_batch_size": 1000,
            "audit_email": "audit@example.com",
            "graph_endpoint": "https://graph.microsoft.us/v1.0/",
        }),
    );
    let config = ok(&doc).config;
    assert_eq!(config.access_type, AccessType::Impersonation);
    assert!(!config.ews_ssl_verify);
    assert_eq!(
        config.ews_ssl_ciphers.as_deref(),
        Some("DEFAULT:@SECLEVEL=1")
    );
    assert_eq!(config.poll_frequency, Duration::from_millis(2500));
    assert_eq!(config.poll_message_sleep, Duration::ZERO);
    assert_eq!(config.max_concurrent_uploads, 0);
    assert_eq!(config.max_concurrent_fetches, 27);
    assert_eq!(config.emails_per_folder, 100_000);
    assert_eq!(config.reinfer_batch_size, 1000);
    assert_eq!(config.audit_email.as_deref(), Some("audit@example.com"));
    assert_eq!(config.graph_url, "https://graph.microsoft.us/v1.0");
}

#[test]
fn null_means_absent() {
    let mut doc = base();
    doc["poll_frequency"] = Value::Null;
    doc["audit_email"] = Value::Null;
    doc["ews_ssl_ciphers"] = Value::Null;
    doc["mailboxes"]["a@example.com"]["start_timestamp"] = Value::Null;
    let loaded = ok(&doc);
    assert!(loaded.warnings.is_empty());
    assert_eq!(loaded.config.poll_frequency, Duration::from_secs(15));
    assert_eq!(loaded.config.audit_email, None);
    assert_eq!(loaded.config.mailboxes[0].start_timestamp, None);

    let mut doc = base();
    doc["mailboxes"] = Value::Null;
    assert_eq!(
        one_error(&doc),
        missing("mailboxes", "with at least one mailbox to sync")
    );
}

#[test]
fn integral_floats_count_as_integers() {
    let config = ok(&with(base(), json!({"emails_per_folder": 100.0}))).config;
    assert_eq!(config.emails_per_folder, 100);
}

#[test]
fn mailboxes_are_sorted_by_address() {
    let doc = with(
        base(),
        json!({"mailboxes": {
            "zed@example.com": {"bucket": {"owner": "o", "name": "n"}},
            "Bob@example.com": {"bucket": {"owner": "o", "name": "n"}},
            "amy@example.com": {"bucket": {"owner": "o", "name": "n"}},
        }}),
    );
    let addresses: Vec<String> = ok(&doc)
        .config
        .mailboxes
        .into_iter()
        .map(|mailbox| mailbox.address)
        .collect();
    assert_eq!(
        addresses,
        ["Bob@example.com", "amy@example.com", "zed@example.com"]
    );
}

// ---------------------------------------------------------------------------------------------
// EWS URL resolution

#[test]
fn host_and_port_build_the_ews_url() {
    for (port, url) in [
        (None, "http://mail.example.com/EWS/Exchange.asmx"),
        (Some(80), "http://mail.example.com/EWS/Exchange.asmx"),
        (Some(443), "https://mail.example.com/EWS/Exchange.asmx"),
        (Some(8080), "http://mail.example.com:8080/EWS/Exchange.asmx"),
    ] {
        let doc = with(base(), json!({ "port": port }));
        assert_eq!(
            ok(&doc).config.ews_url.as_deref(),
            Some(url),
            "port {port:?}"
        );
    }
    let doc = with(base(), json!({"host": "[fe80::1]", "port": 443}));
    assert_eq!(
        ok(&doc).config.ews_url.as_deref(),
        Some("https://[fe80::1]/EWS/Exchange.asmx")
    );
}

#[test]
fn ews_endpoint_wins_over_host_and_port_with_a_warning() {
    let doc = with(
        base(),
        json!({"ews_endpoint": "https://ex.example.com/EWS/Exchange.asmx", "port": 443}),
    );
    let loaded = ok(&doc);
    assert_eq!(
        loaded.config.ews_url.as_deref(),
        Some("https://ex.example.com/EWS/Exchange.asmx")
    );
    assert_eq!(
        loaded.warnings,
        [
            "`host` ignored because `ews_endpoint` is given",
            "`port` ignored because `ews_endpoint` is given"
        ]
    );
}

#[test]
fn ews_needs_an_endpoint_or_a_host() {
    let doc = with(base(), json!({"host": null, "port": 443}));
    assert_eq!(
        one_error(&doc),
        missing(
            "ews_endpoint",
            "when microsoft_api is \"ews\", unless `host` is given"
        )
    );
}

#[test]
fn bad_urls_and_hosts_are_invalid() {
    let cases = [
        (
            json!({"ews_endpoint": "mail.example.com/EWS/Exchange.asmx"}),
            "ews_endpoint",
        ),
        (
            json!({"ews_endpoint": "ftp://mail.example.com/"}),
            "ews_endpoint",
        ),
        (json!({"ews_endpoint": "https://"}), "ews_endpoint"),
        (
            json!({"graph_endpoint": "graph.microsoft.com"}),
            "graph_endpoint",
        ),
        (json!({"graph_endpoint": "https:///"}), "graph_endpoint"),
        (json!({"host": "https://mail.example.com"}), "host"),
        (json!({"host": "mail.example.com:443"}), "host"),
        (json!({"host": ""}), "host"),
    ];
    for (changes, key) in cases {
        let doc = with(base(), changes.clone());
        let error = one_error(&doc);
        assert_eq!(key_of(&error), key, "{changes}");
        let expected = changes[key].to_string();
        assert!(
            matches!(&error, ConfigError::Invalid { value, .. } if *value == expected),
            "{error:?}"
        );
    }
    let doc = with(
        graph(),
        json!({"auth_oauth_authority": "login.microsoftonline.com/t"}),
    );
    let error = one_error(&doc);
    assert_eq!(key_of(&error), "auth_oauth_authority");
    assert!(
        error.to_string().contains("an http:// or https:// URL"),
        "{error}"
    );
}

#[test]
fn authority_ends_with_exactly_one_slash() {
    for authority in [
        "https://login.microsoftonline.com/tenant",
        "https://login.microsoftonline.com/tenant/",
        "https://login.microsoftonline.com/tenant///",
    ] {
        let doc = with(graph(), json!({ "auth_oauth_authority": authority }));
        match ok(&doc).config.auth {
            Auth::OAuth2 { authority, .. } => {
                assert_eq!(authority, "https://login.microsoftonline.com/tenant/")
            }
            other => panic!("{other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ranges

#[test]
fn ranged_keys_accept_their_bounds_and_reject_one_beyond() {
    // (key, accepted values, rejected values, allowed text)
    let cases: [(&str, &[Value], &[Value], &str); 7] = [
        (
            "max_concurrent_uploads",
            &[json!(0), json!(32)],
            &[json!(-1), json!(33)],
            "0 to 32",
        ),
        (
            "max_concurrent_fetches",
            &[json!(1), json!(27)],
            &[json!(0), json!(28)],
            "1 to 27",
        ),
        (
            "emails_per_folder",
            &[json!(1), json!(100000)],
            &[json!(0), json!(100001)],
            "1 to 100000",
        ),
        (
            "reinfer_batch_size",
            &[json!(1), json!(1000)],
            &[json!(0), json!(1001)],
            "1 to 1000",
        ),
        (
            "poll_frequency",
            &[json!(0.001), json!(86400)],
            &[json!(0), json!(-0.001), json!(86400.001)],
            "more than 0 and at most 86400 (seconds)",
        ),
        (
            "poll_message_sleep",
            &[json!(0), json!(60)],
            &[json!(-0.001), json!(60.001)],
            "0 to 60 (seconds)",
        ),
        (
            "port",
            &[json!(1), json!(65535)],
            &[json!(0), json!(65536)],
            "a TCP port number, 1 to 65535",
        ),
    ];
    for (key, accepted, rejected, allowed) in cases {
        for value in accepted {
            let loaded = load(&with(base(), json!({ key: value })));
            assert!(loaded.is_ok(), "{key} = {value}: {:?}", loaded.err());
        }
        for value in rejected {
            assert_eq!(
                one_error(&with(base(), json!({ key: value }))),
                invalid(key, &value.to_string(), allowed),
                "{key} = {value}"
            );
        }
    }
}

#[test]
fn range_error_displays_as_documented() {
    let error = one_error(&with(base(), json!({"max_concurrent_uploads": 40})));
    assert_eq!(
        error.to_string(),
        "`max_concurrent_uploads` = 40: allowed 0 to 32"
    );
}

#[test]
fn fractions_are_rejected_for_integer_keys() {
    assert_eq!(
        one_error(&with(base(), json!({"reinfer_batch_size": 1.5}))),
        invalid("reinfer_batch_size", "1.5", "a whole number, 1 to 1000")
    );
    assert_eq!(
        key_of(&one_error(&with(base(), json!({"port": 80.5})))),
        "port"
    );
}

#[test]
fn a_poll_frequency_too_small_for_a_nanosecond_is_rejected() {
    assert_eq!(
        key_of(&one_error(&with(base(), json!({"poll_frequency": 1e-300})))),
        "poll_frequency"
    );
}

// ---------------------------------------------------------------------------------------------
// Types

#[test]
fn wrong_types_are_invalid_errors_naming_the_expected_type() {
    let cases = [
        ("poll_frequency", json!("15"), "a number, not a string"),
        (
            "max_concurrent_uploads",
            json!(true),
            "a number, not a boolean",
        ),
        ("port", json!("443"), "a number, not a string"),
        (
            "ews_ssl_verify",
            json!("true"),
            "true or false, not a string",
        ),
        ("ews_ssl_verify", json!(1), "true or false, not a number"),
        ("host", json!(42), "a string, not a number"),
        ("microsoft_api", json!(["ews"]), "a string, not an array"),
        ("auth_user", json!({"name": "x"}), "a string, not an object"),
        (
            "mailboxes",
            json!([]),
            "an object mapping each address to its settings, not an array",
        ),
    ];
    for (key, value, allowed) in cases {
        let all = errors(&with(base(), json!({ key: value.clone() })));
        assert!(
            all.contains(&invalid(key, &value.to_string(), allowed)),
            "{key} = {value}: {all:#?}"
        );
    }
}

#[test]
fn a_mistyped_key_is_not_also_reported_missing() {
    for changes in [
        json!({"auth_password": ["pw"]}),
        json!({"auth_user": 7}),
        json!({"host": 42}),
        json!({"host": null, "ews_endpoint": {}}),
        json!({"mailboxes": []}),
        json!({"auth_type": 1}),
        json!({"microsoft_api": true}),
    ] {
        let all = errors(&with(base(), changes.clone()));
        assert_eq!(all.len(), 1, "{changes}: {all:#?}");
    }
    for changes in [
        json!({"auth_oauth_client_secret": 1}),
        json!({"auth_oauth_client_secret": null, "auth_oauth_client_credential_private_key": []}),
        json!({"auth_oauth_authority": false}),
        json!({"auth_oauth_client_id": 5}),
    ] {
        let all = errors(&with(graph(), changes.clone()));
        assert_eq!(all.len(), 1, "{changes}: {all:#?}");
    }
}

#[test]
fn wrong_types_inside_mailboxes_are_reported_by_path() {
    let doc = with(
        base(),
        json!({"mailboxes": {
            "a@example.com": "bucket",
            "b@example.com": {"bucket": "o/n"},
            "c@example.com": {"bucket": {"owner": 1, "name": ["n"]}, "start_from": 0, "start_timestamp": 0},
        }}),
    );
    let all = errors(&doc);
    assert_eq!(
        keys_of(&all),
        [
            "mailboxes.\"a@example.com\"",
            "mailboxes.\"b@example.com\".bucket",
            "mailboxes.\"c@example.com\".bucket.owner",
            "mailboxes.\"c@example.com\".bucket.name",
            "mailboxes.\"c@example.com\".start_from",
            "mailboxes.\"c@example.com\".start_timestamp",
        ],
        "{all:#?}"
    );
    assert_eq!(
        all[0].to_string().split(": allowed ").next(),
        Some("`mailboxes.\"a@example.com\"` = \"bucket\"")
    );
}

// ---------------------------------------------------------------------------------------------
// Words

#[test]
fn unknown_words_list_the_allowed_ones() {
    let cases = [
        ("microsoft_api", "rest", "\"ews\" or \"graph\""),
        ("access_type", "admin", "\"delegate\" or \"impersonation\""),
        ("auth_type", "basic", "\"ntlm\" or \"oauth2\""),
    ];
    for (key, value, allowed) in cases {
        assert_eq!(
            one_error(&with(base(), json!({ key: value }))),
            invalid(key, &format!("\"{value}\""), allowed)
        );
    }
}

#[test]
fn graph_only_allows_oauth2() {
    assert_eq!(
        one_error(&with(graph(), json!({"auth_type": "ntlm"}))),
        invalid(
            "auth_type",
            "\"ntlm\"",
            "\"oauth2\" (the only one Graph supports)"
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Required keys

#[test]
fn ews_ntlm_requires_an_endpoint_user_and_password() {
    let doc = json!({"mailboxes": {"a@example.com": {"bucket": {"owner": "o", "name": "n"}}}});
    assert_eq!(
        errors(&doc),
        [
            missing(
                "ews_endpoint",
                "when microsoft_api is \"ews\", unless `host` is given"
            ),
            missing("auth_user", "when auth_type is \"ntlm\""),
            missing("auth_password", "when auth_type is \"ntlm\""),
        ]
    );
    assert_eq!(
        errors(&with(base(), json!({"auth_password": null})))[0].to_string(),
        "`auth_password` is required when auth_type is \"ntlm\""
    );
}

#[test]
fn ews_oauth2_requires_authority_client_id_and_a_credential() {
    let doc = with(
        base(),
        json!({"auth_type": "oauth2", "auth_user": null, "auth_password": null}),
    );
    assert_eq!(
        errors(&doc),
        [
            missing("auth_oauth_authority", "when auth_type is \"oauth2\""),
            missing("auth_oauth_client_id", "when auth_type is \"oauth2\""),
            missing(
                "auth_oauth_client_secret",
                "when auth_type is \"oauth2\" (or give `auth_oauth_client_credential_private_key` instead)"
            ),
        ]
    );
}

#[test]
fn graph_requires_authority_client_id_and_a_credential() {
    let doc = json!({
        "microsoft_api": "graph",
        "mailboxes": {"a@example.com": {"bucket": {"owner": "o", "name": "n"}}}
    });
    assert_eq!(
        keys_of(&errors(&doc)),
        [
            "auth_oauth_authority",
            "auth_oauth_client_id",
            "auth_oauth_client_secret"
        ]
    );
}

#[test]
fn empty_credentials_are_invalid() {
    assert_eq!(
        one_error(&with(base(), json!({"auth_password": ""}))),
        invalid("auth_password", REDACTED, "a non-empty password")
    );
    assert_eq!(
        one_error(&with(graph(), json!({"auth_oauth_client_secret": ""}))),
        invalid(
            "auth_oauth_client_secret",
            REDACTED,
            "a non-empty client secret"
        )
    );
    assert_eq!(
        key_of(&one_error(&with(
            graph(),
            json!({"auth_oauth_client_id": " "})
        ))),
        "auth_oauth_client_id"
    );
}

#[test]
fn ntlm_user_forms() {
    for user in ["CORP\\alice", "alice@corp.example.com", "alice"] {
        let doc = with(base(), json!({ "auth_user": user }));
        assert!(
            matches!(ok(&doc).config.auth, Auth::Ntlm { user: ref got, .. } if got == user),
            "{user}"
        );
    }
    for user in ["", "CORP\\", "\\alice", "a@b@c", "CORP\\alice@corp"] {
        let error = one_error(&with(base(), json!({ "auth_user": user })));
        assert_eq!(
            error,
            invalid(
                "auth_user",
                &json!(user).to_string(),
                "a user name: DOMAIN\\user, user@domain or user"
            )
        );
    }
}

// ---------------------------------------------------------------------------------------------
// OAuth credentials

const FAKE_PEM: &str =
    "-----BEGIN PRIVATE KEY-----\nTk9UIEEgUkVBTCBLRVk=\n-----END PRIVATE KEY-----\n";

#[test]
fn both_oauth_credentials_is_an_error_naming_both_keys() {
    let doc = with(
        graph(),
        json!({"auth_oauth_client_credential_private_key": FAKE_PEM}),
    );
    let error = one_error(&doc);
    let text = error.to_string();
    assert!(text.contains("auth_oauth_client_secret"), "{text}");
    assert!(
        text.contains("auth_oauth_client_credential_private_key"),
        "{text}"
    );
    assert!(matches!(error, ConfigError::Invalid { ref value, .. } if value == REDACTED));
}

#[test]
fn neither_oauth_credential_is_missing() {
    let doc = with(graph(), json!({"auth_oauth_client_secret": null}));
    assert_eq!(
        one_error(&doc),
        missing(
            "auth_oauth_client_secret",
            "when auth_type is \"oauth2\" (or give `auth_oauth_client_credential_private_key` instead)"
        )
    );
}

#[test]
fn certificate_credential_with_normalised_thumbprint() {
    let doc = with(
        graph(),
        json!({
            "auth_oauth_client_secret": null,
            "auth_oauth_client_credential_private_key": FAKE_PEM,
            "auth_oauth_client_credential_thumbprint": "0a:1b:2c:3d:4e:5f:60:71:82:93:a4:b5:c6:d7:e8:f9:0a:1b:2c:3d",
        }),
    );
    match ok(&doc).config.auth {
        Auth::OAuth2 {
            credential:
                OAuthCredential::Certificate {
                    private_key_pem,
                    thumbprint,
                },
            ..
        } => {
            assert_eq!(private_key_pem.expose(), FAKE_PEM);
            assert_eq!(
                thumbprint.as_deref(),
                Some("0A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D")
            );
        }
        other => panic!("{other:?}"),
    }
    // The thumbprint is optional: it can be derived from a certificate in the PEM.
    let doc = with(
        graph(),
        json!({"auth_oauth_client_secret": null, "auth_oauth_client_credential_private_key": FAKE_PEM}),
    );
    assert!(matches!(
        ok(&doc).config.auth,
        Auth::OAuth2 {
            credential: OAuthCredential::Certificate {
                thumbprint: None,
                ..
            },
            ..
        }
    ));
}

#[test]
fn bad_thumbprints_and_keys_are_invalid() {
    for thumbprint in [
        "0A1B",
        "0A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3DFF",
        "ZZ1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D",
        "",
    ] {
        let doc = with(
            graph(),
            json!({
                "auth_oauth_client_secret": null,
                "auth_oauth_client_credential_private_key": FAKE_PEM,
                "auth_oauth_client_credential_thumbprint": thumbprint,
            }),
        );
        assert_eq!(
            one_error(&doc),
            invalid(
                "auth_oauth_client_credential_thumbprint",
                &json!(thumbprint).to_string(),
                "a SHA-1 thumbprint: 40 hex digits (colons and spaces allowed)"
            )
        );
    }
    for key in [
        "not a key",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
    ] {
        let doc = with(
            graph(),
            json!({"auth_oauth_client_secret": null, "auth_oauth_client_credential_private_key": key}),
        );
        let error = one_error(&doc);
        assert_eq!(key_of(&error), "auth_oauth_client_credential_private_key");
        assert!(matches!(error, ConfigError::Invalid { ref value, .. } if value == REDACTED));
    }
}

#[test]
fn keys_of_the_other_auth_type_are_ignored_with_a_warning() {
    let doc = with(base(), json!({"auth_oauth_client_id": "client"}));
    assert_eq!(
        ok(&doc).warnings,
        ["`auth_oauth_client_id` ignored because auth_type is \"ntlm\""]
    );
    let doc = with(
        graph(),
        json!({"auth_password": "pw", "auth_oauth_client_credential_thumbprint": "00"}),
    );
    assert_eq!(
        ok(&doc).warnings,
        [
            "`auth_password` ignored because auth_type is \"oauth2\"",
            "`auth_oauth_client_credential_thumbprint` ignored because `auth_oauth_client_secret` is used instead of a certificate"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Mailboxes

#[test]
fn bucket_parts_must_be_safe_path_segments() {
    let allowed = "1 to 64 characters, each A-Z, a-z, 0-9, '_' or '-' \
                   (it becomes a path segment, so nothing else is allowed)";
    for name in ["../x", "", "a/b", "a.b", "a b", "ü", &"x".repeat(65)] {
        let doc = with_mailbox(json!({"bucket": {"owner": "o", "name": name}}));
        assert_eq!(
            one_error(&doc),
            invalid(
                "mailboxes.\"a@example.com\".bucket.name",
                &json!(name).to_string(),
                allowed
            )
        );
    }
    let doc = with_mailbox(json!({"bucket": {"owner": "..", "name": "n"}}));
    assert_eq!(
        key_of(&one_error(&doc)),
        "mailboxes.\"a@example.com\".bucket.owner"
    );
    let doc = with_mailbox(json!({"bucket": {"owner": "x".repeat(64), "name": "A-z_09"}}));
    assert!(load(&doc).is_ok());
}

#[test]
fn bucket_and_its_parts_are_required() {
    assert_eq!(
        one_error(&with_mailbox(json!({}))),
        missing("mailboxes.\"a@example.com\".bucket", "for every mailbox")
    );
    assert_eq!(
        errors(&with_mailbox(json!({"bucket": {}}))),
        [
            missing(
                "mailboxes.\"a@example.com\".bucket.owner",
                "in every bucket"
            ),
            missing("mailboxes.\"a@example.com\".bucket.name", "in every bucket"),
        ]
    );
}

#[test]
fn addresses_must_look_like_addresses() {
    for address in [
        "",
        "alice",
        "@example.com",
        "alice@",
        "a@b@c",
        "a b@example.com",
    ] {
        let doc = with(
            base(),
            json!({"mailboxes": {address: {"bucket": {"owner": "o", "name": "n"}}}}),
        );
        assert_eq!(
            one_error(&doc),
            invalid(
                &format!("mailboxes.{}", json!(address)),
                &json!(address).to_string(),
                "an email address: exactly one '@' with text on both sides, no spaces"
            )
        );
    }
}

#[test]
fn duplicate_mailboxes_are_errors() {
    let doc = with(
        base(),
        json!({"mailboxes": {
            "Alice@Example.com": {"bucket": {"owner": "o", "name": "n"}},
            "alice@example.com": {"bucket": {"owner": "o", "name": "m"}},
        }}),
    );
    let error = one_error(&doc);
    assert_eq!(key_of(&error), "mailboxes.\"alice@example.com\"");
    assert!(error.to_string().contains("Alice@Example.com"), "{error}");

    // serde_json would silently keep only the last of two identical keys.
    let text = r#"{"host": "h", "auth_user": "u", "auth_password": "p", "mailboxes": {
        "a@example.com": {"bucket": {"owner": "o", "name": "n"}},
        "a@example.com": {"bucket": {"owner": "o", "name": "m"}}}}"#;
    match parse(text.as_bytes(), ORIGIN, &no_env) {
        Err(ConfigErrors(all)) => assert_eq!(
            all,
            [invalid(
                "mailboxes.\"a@example.com\"",
                "\"a@example.com\"",
                "each address once (this one is listed 2 times)"
            )]
        ),
        Ok(loaded) => panic!("{:?}", loaded.config),
    }
}

#[test]
fn a_top_level_key_given_twice_warns_and_the_last_wins() {
    let text = r#"{"host": "h", "auth_user": "u", "auth_password": "p", "poll_frequency": 5,
        "poll_frequency": 7, "mailboxes": {"a@example.com": {"bucket": {"owner": "o", "name": "n"}}}}"#;
    let loaded = parse(text.as_bytes(), ORIGIN, &no_env).expect("valid");
    assert_eq!(loaded.config.poll_frequency, Duration::from_secs(7));
    assert_eq!(
        loaded.warnings,
        ["config key `poll_frequency` is given 2 times; only the last one is used"]
    );
}

#[test]
fn empty_or_absent_mailboxes_are_errors() {
    assert_eq!(
        one_error(&with(base(), json!({"mailboxes": {}}))),
        invalid(
            "mailboxes",
            "{}",
            "at least one mailbox, e.g. {\"user@example.com\": {\"bucket\": {\"owner\": \"OWNER\", \"name\": \"NAME\"}}}"
        )
    );
    assert_eq!(
        one_error(&with(base(), json!({"mailboxes": null}))),
        missing("mailboxes", "with at least one mailbox to sync")
    );
}

#[test]
fn start_timestamp_accepts_any_offset_and_is_stored_in_utc() {
    for (text, utc) in [
        (
            "2020-01-01T00:00:00+00:00",
            datetime!(2020-01-01 00:00:00 UTC),
        ),
        ("2020-01-01T00:00:00Z", datetime!(2020-01-01 00:00:00 UTC)),
        (
            "2020-01-01T02:00:00+02:00",
            datetime!(2020-01-01 00:00:00 UTC),
        ),
        (
            "2020-01-01T00:30:00.5-05:30",
            datetime!(2020-01-01 06:00:00.5 UTC),
        ),
    ] {
        let doc = with_mailbox(json!({
            "bucket": {"owner": "o", "name": "n"},
            "start_from": "config",
            "start_timestamp": text,
        }));
        let mailbox = &ok(&doc).config.mailboxes[0];
        assert_eq!(mailbox.start_from, StartFrom::Config);
        let stored = mailbox.start_timestamp.expect("timestamp");
        assert_eq!(stored, utc, "{text}");
        assert!(stored.offset().is_utc(), "{text}");
    }
}

#[test]
fn bad_start_timestamps_are_invalid() {
    for text in [
        "2020-01-01",
        "2020-01-01T00:00:00",
        "yesterday",
        "2020-13-01T00:00:00Z",
        // Valid RFC 3339, but the UTC instant is in year 10000.
        "9999-12-31T23:59:59-23:59",
    ] {
        let doc = with_mailbox(json!({
            "bucket": {"owner": "o", "name": "n"},
            "start_timestamp": text,
        }));
        let error = one_error(&doc);
        assert_eq!(
            key_of(&error),
            "mailboxes.\"a@example.com\".start_timestamp",
            "{text}"
        );
        assert!(error.to_string().contains("RFC 3339"), "{error}");
    }
}

#[test]
fn start_from_config_requires_a_timestamp() {
    let doc = with_mailbox(json!({"bucket": {"owner": "o", "name": "n"}, "start_from": "config"}));
    assert_eq!(
        one_error(&doc),
        missing(
            "mailboxes.\"a@example.com\".start_timestamp",
            "when start_from is \"config\""
        )
    );
    let doc = with_mailbox(json!({"bucket": {"owner": "o", "name": "n"}, "start_from": "newest"}));
    assert_eq!(
        one_error(&doc),
        invalid(
            "mailboxes.\"a@example.com\".start_from",
            "\"newest\"",
            "\"bucket\" or \"config\""
        )
    );
}

#[test]
fn audit_email_must_be_an_address() {
    assert_eq!(
        key_of(&one_error(&with(base(), json!({"audit_email": "audit"})))),
        "audit_email"
    );
}

#[test]
fn empty_cipher_list_is_invalid() {
    assert_eq!(
        key_of(&one_error(&with(base(), json!({"ews_ssl_ciphers": " "})))),
        "ews_ssl_ciphers"
    );
}

// ---------------------------------------------------------------------------------------------
// Syntax

#[test]
fn syntax_errors_name_origin_line_and_column() {
    let text = "{\n  \"host\": \"h\",\n  \"port\": 80 \"x\": 1\n}";
    match parse(text.as_bytes(), ORIGIN, &no_env) {
        Err(ConfigErrors(all)) => {
            assert_eq!(
                all,
                [ConfigError::Syntax {
                    origin: ORIGIN.into(),
                    line: 3,
                    column: 14,
                    message: "expected `,` or `}`".into(),
                }]
            );
            assert_eq!(all[0].to_string(), "config.json:3:14: expected `,` or `}`");
        }
        Ok(_) => panic!("accepted bad JSON"),
    }
}

#[test]
fn non_objects_and_empty_files_are_one_syntax_error() {
    for text in [
        "",
        "[]",
        "\"config\"",
        "  42",
        "null",
        "{\"a\": 1} trailing",
    ] {
        match parse(text.as_bytes(), ORIGIN, &no_env) {
            Err(ConfigErrors(all)) => {
                assert_eq!(all.len(), 1, "{text:?}: {all:?}");
                assert!(
                    matches!(&all[0], ConfigError::Syntax { origin, .. } if origin == ORIGIN),
                    "{text:?}: {all:?}"
                );
            }
            Ok(_) => panic!("accepted {text:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Several errors at once

#[test]
fn all_errors_are_reported_together() {
    let doc = json!({
        "microsoft_api": "ews",
        "ews_endpoint": "outlook.office365.com",
        "auth_user": "alice",
        "poll_frequency": "15",
        "max_concurrent_uploads": 40,
        "ews_ssl_verify": "yes",
        "mailboxes": {
            "bad-address": {"bucket": {"owner": "o", "name": "../x"}},
            "b@example.com": {"bucket": {"owner": "o", "name": "n"}, "start_from": "config"},
        }
    });
    let all = errors(&doc);
    assert_eq!(
        keys_of(&all),
        [
            // Type errors first, in key order of the file format, then value errors.
            "ews_ssl_verify",
            "poll_frequency",
            "ews_endpoint",
            "auth_password",
            "max_concurrent_uploads",
            "mailboxes.\"b@example.com\".start_timestamp",
            "mailboxes.\"bad-address\"",
            "mailboxes.\"bad-address\".bucket.name",
        ],
        "{all:#?}"
    );
    let text = ConfigErrors(all).to_string();
    assert_eq!(text.lines().count(), 8, "{text}");
}

#[test]
fn a_wrong_microsoft_api_does_not_cascade() {
    let doc = with(graph(), json!({"microsoft_api": "Graph"}));
    assert_eq!(keys_of(&errors(&doc)), ["microsoft_api"]);
}

// ---------------------------------------------------------------------------------------------
// Environment overrides

#[test]
fn each_env_override_replaces_its_key() {
    let doc = with(
        base(),
        json!({"host": null, "auth_user": null, "auth_password": null}),
    );
    let vars = [
        ("REINFER_EWS_AUTH_USER", "CORP\\bob"),
        ("REINFER_EWS_AUTH_PASS", "env-pass"),
        ("REINFER_EWS_ACCESS_TYPE", "impersonation"),
        ("REINFER_EWS_HOST", "env.example.com"),
        ("REINFER_EWS_PORT", "8443"),
    ];
    let config = load_env(&doc, &vars).expect("valid").config;
    assert_eq!(
        config.auth,
        Auth::Ntlm {
            user: "CORP\\bob".into(),
            password: Secret::new("env-pass"),
        }
    );
    assert_eq!(config.access_type, AccessType::Impersonation);
    assert_eq!(
        config.ews_url.as_deref(),
        Some("http://env.example.com:8443/EWS/Exchange.asmx")
    );
}

#[test]
fn env_overrides_win_over_the_file() {
    let doc = with(
        base(),
        json!({"access_type": "delegate", "port": 80, "auth_password": ["wrong type"]}),
    );
    for (var, check) in [
        ("REINFER_EWS_AUTH_USER", "bob"),
        ("REINFER_EWS_AUTH_PASS", "env-pass"),
        ("REINFER_EWS_ACCESS_TYPE", "impersonation"),
        ("REINFER_EWS_HOST", "env.example.com"),
        ("REINFER_EWS_PORT", "443"),
    ] {
        // The file's password has the wrong type: every case but the password override fails.
        let mut vars = vec![(var, check)];
        if var != "REINFER_EWS_AUTH_PASS" {
            vars.push(("REINFER_EWS_AUTH_PASS", "env-pass"));
        }
        let config = load_env(&doc, &vars).expect("valid").config;
        match var {
            "REINFER_EWS_AUTH_USER" => {
                assert!(matches!(config.auth, Auth::Ntlm { ref user, .. } if user == "bob"))
            }
            "REINFER_EWS_AUTH_PASS" => assert!(
                matches!(config.auth, Auth::Ntlm { ref password, .. } if password.expose() == "env-pass")
            ),
            "REINFER_EWS_ACCESS_TYPE" => {
                assert_eq!(config.access_type, AccessType::Impersonation)
            }
            "REINFER_EWS_HOST" => assert_eq!(
                config.ews_url.as_deref(),
                Some("http://env.example.com/EWS/Exchange.asmx")
            ),
            _ => assert_eq!(
                config.ews_url.as_deref(),
                Some("https://mail.example.com/EWS/Exchange.asmx")
            ),
        }
    }
}

#[test]
fn errors_about_env_values_name_the_variable() {
    let all = errors_env(
        &base(),
        &[
            ("REINFER_EWS_PORT", "https"),
            ("REINFER_EWS_ACCESS_TYPE", "admin"),
            ("REINFER_EWS_HOST", "http://x"),
            ("REINFER_EWS_AUTH_USER", ""),
            ("REINFER_EWS_AUTH_PASS", ""),
        ],
    );
    assert_eq!(
        all[0],
        invalid(
            "REINFER_EWS_PORT",
            "\"https\"",
            "a TCP port number, 1 to 65535"
        )
    );
    assert_eq!(
        keys_of(&all),
        [
            "REINFER_EWS_PORT",
            "REINFER_EWS_ACCESS_TYPE",
            "REINFER_EWS_HOST",
            "REINFER_EWS_AUTH_USER",
            "REINFER_EWS_AUTH_PASS",
        ]
    );
    for port in ["0", "65536", "-5", "80.0", ""] {
        assert_eq!(
            keys_of(&errors_env(&base(), &[("REINFER_EWS_PORT", port)])),
            ["REINFER_EWS_PORT"],
            "{port:?}"
        );
    }
}

#[test]
fn an_env_host_ignored_for_ews_endpoint_is_named_in_the_warning() {
    let doc = with(
        base(),
        json!({"host": null, "ews_endpoint": "https://ex.example.com/EWS/Exchange.asmx"}),
    );
    let loaded = load_env(&doc, &[("REINFER_EWS_HOST", "other")]).expect("valid");
    assert_eq!(
        loaded.warnings,
        ["`REINFER_EWS_HOST` ignored because `ews_endpoint` is given"]
    );
}

#[test]
fn only_the_override_variables_are_looked_up() {
    let asked = std::cell::RefCell::new(Vec::new());
    let env = |name: &str| {
        asked.borrow_mut().push(name.to_owned());
        None
    };
    let _ = parse(base().to_string().as_bytes(), ORIGIN, &env);
    let expected: Vec<String> = ENV_OVERRIDES.iter().map(|o| o.var.to_owned()).collect();
    assert_eq!(*asked.borrow(), expected);
}

// ---------------------------------------------------------------------------------------------
// Warnings

#[test]
fn unknown_keys_warn_with_their_path() {
    let mut doc = base();
    doc["foo"] = json!(1);
    doc["weird key"] = json!(null);
    doc["mailboxes"]["a@example.com"]["bar"] = json!(true);
    doc["mailboxes"]["a@example.com"]["bucket"]["title"] = json!("t");
    let loaded = ok(&doc);
    assert_eq!(
        loaded.warnings,
        [
            "unknown config key `mailboxes.\"a@example.com\".bucket.title` ignored",
            "unknown config key `mailboxes.\"a@example.com\".bar` ignored",
            "unknown config key `foo` ignored",
            "unknown config key `\"weird key\"` ignored",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Redacted JSON

#[test]
fn redacted_json_uses_the_file_key_names() {
    let doc = with(
        base(),
        json!({
            "port": 443,
            "audit_email": "audit@example.com",
            "mailboxes": {"a@example.com": {
                "bucket": {"owner": "o", "name": "n"},
                "start_from": "config",
                "start_timestamp": "2020-01-01T02:00:00+02:00",
            }},
        }),
    );
    assert_eq!(
        ok(&doc).config.to_redacted_json(),
        json!({
            "microsoft_api": "ews",
            "ews_endpoint": "https://mail.example.com/EWS/Exchange.asmx",
            "graph_endpoint": "https://graph.microsoft.com/v1.0",
            "auth_type": "ntlm",
            "auth_user": "CORP\\alice",
            "auth_password": REDACTED,
            "access_type": "delegate",
            "ews_ssl_verify": true,
            "poll_frequency": 15,
            "poll_message_sleep": 0.1,
            "max_concurrent_uploads": 8,
            "max_concurrent_fetches": 8,
            "emails_per_folder": 2520,
            "reinfer_batch_size": 80,
            "audit_email": "audit@example.com",
            "mailboxes": {"a@example.com": {
                "bucket": {"owner": "o", "name": "n"},
                "start_from": "config",
                "start_timestamp": "2020-01-01T00:00:00Z",
            }},
        })
    );
}

#[test]
fn redacted_json_of_a_certificate_config() {
    let doc = with(
        graph(),
        json!({
            "auth_oauth_client_secret": null,
            "auth_oauth_client_credential_private_key": FAKE_PEM,
            "auth_oauth_client_credential_thumbprint": "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d",
            "ews_ssl_ciphers": "HIGH",
        }),
    );
    let printed = ok(&doc).config.to_redacted_json();
    assert_eq!(printed["auth_type"], "oauth2");
    assert_eq!(
        printed["auth_oauth_authority"],
        "https://login.microsoftonline.com/tenant/"
    );
    assert_eq!(
        printed["auth_oauth_client_credential_private_key"],
        REDACTED
    );
    assert_eq!(
        printed["auth_oauth_client_credential_thumbprint"],
        "0A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D"
    );
    assert_eq!(printed["ews_ssl_ciphers"], "HIGH");
    assert!(printed.get("ews_endpoint").is_none());
    assert!(printed.get("auth_oauth_client_secret").is_none());
}

#[test]
fn redacted_json_parses_back_to_the_same_config() {
    let doc = with(
        base(),
        json!({"poll_frequency": 2.5, "poll_message_sleep": 0, "host": "h", "port": 8080}),
    );
    let config = ok(&doc).config;
    let again = ok(&config.to_redacted_json()).config;
    let Auth::Ntlm { password, .. } = &again.auth else {
        panic!("{again:?}");
    };
    assert_eq!(password.expose(), REDACTED);
    assert_eq!(
        Config {
            auth: config.auth.clone(),
            ..again
        },
        config
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets never leak

const PLANTED: &str = "PLANTED-s3cr3t-Zq9";

/// Everything a person could see from one parse: errors, warnings, Debug, the printed config.
fn everything_shown(result: &Result<Loaded, ConfigErrors>) -> String {
    match result {
        Ok(loaded) => format!(
            "{:?}\n{:#?}\n{}\n{}",
            loaded,
            loaded.config,
            loaded.config.to_redacted_json(),
            loaded.warnings.join("\n")
        ),
        Err(errors) => format!("{errors}\n{errors:?}\n{errors:#?}"),
    }
}

#[test]
fn secrets_never_appear_in_errors_debug_or_printed_config() {
    let pem_with_secret =
        format!("-----BEGIN PRIVATE KEY-----\n{PLANTED}\n-----END PRIVATE KEY-----\n");
    let docs = [
        // Valid configs holding each secret.
        with(base(), json!({ "auth_password": PLANTED })),
        with(graph(), json!({ "auth_oauth_client_secret": PLANTED })),
        with(
            graph(),
            json!({"auth_oauth_client_secret": null, "auth_oauth_client_credential_private_key": pem_with_secret}),
        ),
        // Each secret next to errors elsewhere.
        with(
            base(),
            json!({ "auth_password": PLANTED, "port": 0, "mailboxes": {} }),
        ),
        with(
            graph(),
            json!({ "auth_oauth_client_secret": PLANTED, "auth_oauth_client_credential_private_key": pem_with_secret, "poll_frequency": "x" }),
        ),
        with(
            graph(),
            json!({ "auth_oauth_client_secret": PLANTED, "auth_type": "ntlm", "microsoft_api": "graph" }),
        ),
        // The secret is the bad value itself.
        with(
            graph(),
            json!({"auth_oauth_client_secret": null, "auth_oauth_client_credential_private_key": PLANTED}),
        ),
        with(base(), json!({ "auth_password": [PLANTED] })),
        with(base(), json!({ "auth_password": {"value": PLANTED} })),
        with(graph(), json!({ "auth_oauth_client_secret": [PLANTED] })),
        // Secrets for the other auth type, ignored with a warning.
        with(graph(), json!({ "auth_password": PLANTED })),
        with(
            base(),
            json!({ "auth_oauth_client_secret": PLANTED, "auth_oauth_client_credential_private_key": pem_with_secret }),
        ),
    ];
    for doc in &docs {
        for vars in [vec![], vec![("REINFER_EWS_AUTH_PASS", PLANTED)]] {
            let result = load_env(doc, &vars);
            let shown = everything_shown(&result);
            assert!(!shown.contains(PLANTED), "leaked from {doc}:\n{shown}");
            assert!(
                !shown.contains("s3cr3t"),
                "partly leaked from {doc}:\n{shown}"
            );
        }
    }
    // Via the environment only, with other errors present.
    for doc in [
        with(base(), json!({"auth_password": null, "port": -1})),
        base(),
    ] {
        let result = load_env(&doc, &[("REINFER_EWS_AUTH_PASS", PLANTED)]);
        let shown = everything_shown(&result);
        assert!(!shown.contains(PLANTED), "{shown}");
    }
    // A syntax error right after a secret.
    let text = format!("{{\"auth_password\": \"{PLANTED}\" \"x\": 1}}");
    let result = parse(text.as_bytes(), ORIGIN, &no_env);
    assert!(!everything_shown(&result).contains(PLANTED));
    let text = format!("{{\"auth_password\": \"{PLANTED}\u{1}\"}}");
    let result = parse(text.as_bytes(), ORIGIN, &no_env);
    assert!(!everything_shown(&result).contains(PLANTED));
}

// ---------------------------------------------------------------------------------------------
// No input panics

#[test]
fn odd_documents_never_panic() {
    let mut documents: Vec<Vec<u8>> = [
        "",
        " ",
        "\u{feff}",
        "\u{feff}{}",
        "{}",
        "{",
        "}",
        "[",
        "null",
        "true",
        "0",
        "-0",
        "1e999",
        "\"x\"",
        "[]",
        "[{}]",
        "{\"a\":}",
        "{\"a\" 1}",
        "{\"\\ud800\": 1}",
        "{\"mailboxes\": null}",
        "{\"mailboxes\": []}",
        "{\"mailboxes\": \"x\"}",
        "{\"mailboxes\": 1}",
        "{\"mailboxes\": {\"\": null}}",
        "{\"mailboxes\": {\"\": {}}}",
        "{\"mailboxes\": {\"@\": {\"bucket\": []}}}",
        "{\"mailboxes\": {\"a@b\": {\"bucket\": {\"owner\": {}, \"name\": [1]}, \"start_from\": 5, \"start_timestamp\": false}}}",
        "{\"mailboxes\": {\"a@b\": {\"bucket\": null, \"start_from\": null}}}",
        "{\"mailboxes\": {\"a@b\": {\"bucket\": {\"owner\": \"o\", \"name\": \"n\"}, \"start_from\": \"config\", \"start_timestamp\": \"0000-01-01T00:00:00+23:59\"}}}",
        "{\"mailboxes\": {\"a@b\": {\"bucket\": {\"owner\": \"o\", \"name\": \"n\"}, \"start_timestamp\": \"9999-12-31T23:59:60Z\"}}}",
        "{\"poll_frequency\": 1e308}",
        "{\"poll_frequency\": -1e308}",
        "{\"poll_frequency\": 1e-320}",
        "{\"poll_message_sleep\": 5e-324}",
        "{\"max_concurrent_uploads\": 18446744073709551616}",
        "{\"max_concurrent_uploads\": 18446744073709551615}",
        "{\"max_concurrent_uploads\": -9223372036854775809}",
        "{\"emails_per_folder\": 1e19}",
        "{\"port\": 1e10}",
        "{\"port\": -0.0}",
        "{\"host\": \"\\u0000\"}",
        "{\"ews_endpoint\": \"https://\\u0000\"}",
        "{\"auth_type\": null, \"microsoft_api\": \"graph\", \"auth_oauth_client_credential_private_key\": 1}",
        "{\"auth_type\": \"oauth2\", \"auth_oauth_client_credential_thumbprint\": \"ééééééééééééééééééééééééééééééééééééééééé\"}",
        "{\"microsoft_api\": {\"ews\": true}, \"auth_type\": [], \"access_type\": 0}",
        "{\"a\": 1, \"a\": 2, \"a\": {\"b\": 1, \"b\": [{\"c\": 1, \"c\": 2}]}}",
        "{\"mailboxes\": {\"a@b\": 1, \"a@b\": 2, \"A@B\": 3}}",
    ]
    .iter()
    .map(|text| text.as_bytes().to_vec())
    .collect();
    documents.push(b"\xff\xfe{}".to_vec());
    documents.push(b"{\"host\": \"\xff\"}".to_vec());
    documents.push(b"{\"host\": \"a\x00b\"}".to_vec());
    documents.push("[".repeat(100_000).into_bytes());
    documents.push("{\"a\":".repeat(10_000).into_bytes());
    documents.push(format!("{{\"host\": \"{}\"}}", "é".repeat(100_000)).into_bytes());
    let odd_env = |name: &str| match name {
        "REINFER_EWS_PORT" => Some("99999999999999999999".to_owned()),
        "REINFER_EWS_HOST" => Some("\u{0}".to_owned()),
        _ => Some(String::new()),
    };
    for document in &documents {
        for env in [&no_env as &dyn Fn(&str) -> Option<String>, &odd_env] {
            match parse(document, ORIGIN, env) {
                Ok(loaded) => {
                    let _ = loaded.config.to_redacted_json();
                }
                Err(ConfigErrors(all)) => {
                    assert!(!all.is_empty(), "{:?}", String::from_utf8_lossy(document));
                    for error in &all {
                        let _ = error.to_string();
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shipped examples and docs

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/config")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn load_fixture(name: &str) -> Loaded {
    match parse(&fixture(name), name, &no_env) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("{name}:\n{errors}"),
    }
}

#[test]
fn example_configs_parse() {
    let loaded = load_fixture("ews-ntlm.json");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(
        loaded.config.ews_url.as_deref(),
        Some("https://mail.example.com/EWS/Exchange.asmx")
    );
    assert!(matches!(loaded.config.auth, Auth::Ntlm { .. }));
    assert_eq!(loaded.config.mailboxes.len(), 2);
    assert_eq!(
        loaded.config.mailboxes[0].start_timestamp,
        Some(datetime!(2024-06-01 07:00:00 UTC))
    );

    let loaded = load_fixture("ews-oauth-secret.json");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert!(matches!(
        loaded.config.auth,
        Auth::OAuth2 {
            credential: OAuthCredential::Secret(_),
            ..
        }
    ));

    let loaded = load_fixture("ews-oauth-certificate.json");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert!(matches!(
        loaded.config.auth,
        Auth::OAuth2 {
            credential: OAuthCredential::Certificate {
                thumbprint: Some(_),
                ..
            },
            ..
        }
    ));

    let loaded = load_fixture("graph-secret.json");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.config.microsoft_api, MicrosoftApi::Graph);
    assert_eq!(loaded.config.poll_frequency, Duration::from_secs(60));

    let loaded = load_fixture("original-product.json");
    assert_eq!(loaded.config.access_type, AccessType::Impersonation);
    assert_eq!(
        loaded.warnings,
        [
            "unknown config key `mailboxes.\"def@example.com\".folder_allowlist` ignored",
            "unknown config key `ews_version` ignored",
        ]
    );
}

/// Every key in the docs' key table is one the parser knows, and every override is documented.
#[test]
fn docs_agree_with_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let docs = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let table = docs
        .split("## Keys")
        .nth(1)
        .and_then(|rest| rest.split("\n#").next())
        .expect("a `## Keys` section");
    let keys: Vec<&str> = table
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .collect();
    assert_eq!(keys.len(), 24, "{keys:?}");
    let mut doc = serde_json::Map::new();
    for key in &keys {
        doc.insert((*key).to_owned(), Value::Null);
    }
    let checked = check(Value::Object(doc).to_string().as_bytes(), ORIGIN, &no_env);
    assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);

    for entry in ENV_OVERRIDES {
        let row = format!("| `{}` | `{}` |", entry.var, entry.key);
        assert!(docs.contains(&row), "docs lack the row {row}");
    }
    for example in docs.split("```json").skip(1) {
        let example = example.split("```").next().unwrap_or_default();
        if let Err(errors) = parse(example.as_bytes(), "docs example", &no_env) {
            panic!("a docs example does not parse:\n{errors}\n{example}");
        }
    }
}
