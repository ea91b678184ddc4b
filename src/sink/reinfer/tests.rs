//! ReinferSink against the loopback fake of the API (`tests/fake-reinfer`).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use fake_reinfer::{Endpoint, FakeReinfer, Fault, FaultKind, RetryAfter};
use serde_json::{Value, json};
use time::macros::datetime;

use super::*;
use crate::document::{Attachment, EmailDoc, Metadata};
use crate::sync::state::FolderState;

const TOKEN: &str = "sekrit-token-7f3a9c";

fn fast() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(40),
        max_inline_wait: Duration::from_secs(5),
    }
}

fn sink(fake: &FakeReinfer) -> ReinferSink {
    ReinferSink::new(
        &fake.base_url(),
        Secret::new(TOKEN),
        "test-host:1:t0".into(),
    )
    .unwrap()
    .with_retry_policy(fast())
}

fn bucket() -> Bucket {
    Bucket {
        owner: "acme".into(),
        name: "mail".into(),
    }
}

/// A real document, as the fetchers build it.
fn doc(n: usize, mime_bytes: usize) -> EmailDoc {
    EmailDoc {
        id: format!("<m{n}@example.com>"),
        mailbox: "alice@example.com".into(),
        timestamp: "2024-03-01T08:59:58Z".into(),
        mime_content: format!("Subject: {n}\r\n\r\n{}", "x".repeat(mime_bytes)),
        metadata: Metadata {
            folder: vec!["Inbox".into()],
            received_at: Some("2024-03-01T10:00:05Z".into()),
            is_read: Some(n.is_multiple_of(2)),
            size: Some(1234),
            ..Metadata::default()
        },
        attachments: vec![Attachment {
            name: "a.pdf".into(),
            size: 12,
            content_type: "application/pdf".into(),
            inline: false,
        }],
    }
}

fn batch(docs: &[EmailDoc]) -> EncodedBatch {
    EncodedBatch {
        docs: docs
            .iter()
            .map(|d| serde_json::to_vec(d).unwrap())
            .collect(),
        ids: docs.iter().map(|d| d.id.clone()).collect(),
        first_received: None,
    }
}

fn docs(count: usize) -> Vec<EmailDoc> {
    (0..count).map(|n| doc(n, 40)).collect()
}

fn puts(fake: &FakeReinfer) -> Vec<fake_reinfer::Request> {
    fake.requests()
        .into_iter()
        .filter(|r| r.endpoint == Endpoint::PutEmails)
        .collect()
}

/// Captures our own log lines (only `exchange_sync`'s: ureq's trace level prints headers,
/// which `logging::init` never lets through).
struct Capture;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("exchange_sync")
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}", record.level(), record.args());
            LINES.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    }

    fn flush(&self) {}
}

/// Whether log capture is on (it is unless another test installed a logger first).
fn capture_logs() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        static CAPTURE: Capture = Capture;
        let ok = log::set_logger(&CAPTURE).is_ok();
        if ok {
            log::set_max_level(log::LevelFilter::Trace);
        }
        ok
    })
}

fn logged(needle: &str) -> Vec<String> {
    LINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

#[test]
fn base_urls_are_validated_and_normalised() {
    let api = |base: &str| normalize_base(base).map_err(|e| e.to_string());
    let want = "https://cloud.uipath.com/org/tenant/reinfer_/api";
    assert_eq!(
        api("https://cloud.uipath.com/org/tenant/reinfer_/api/").unwrap(),
        want
    );
    assert_eq!(
        api("https://cloud.uipath.com/org/tenant/reinfer_/api").unwrap(),
        want
    );
    // The reinfer CLI's endpoint form (without /api) works too.
    assert_eq!(
        api("https://cloud.uipath.com/org/tenant/reinfer_/").unwrap(),
        want
    );
    assert_eq!(
        api("HTTPS://Reinfer.Example.com").unwrap(),
        "https://reinfer.example.com/api"
    );
    assert_eq!(
        api("http://127.0.0.1:8080/api/").unwrap(),
        "http://127.0.0.1:8080/api"
    );
    for bad in [
        "ftp://host/api",
        "host/api",
        "",
        "https://user:pw@host/api",
        "https://host/api?x=1",
        "https://host/api#frag",
    ] {
        let err = api(bad).unwrap_err();
        assert!(err.contains("--reinfer-api-endpoint"), "{bad}: {err}");
        assert!(!err.contains("pw@") || bad.contains("pw@"), "{err}");
    }
    let sink = ReinferSink::new(
        "https://host/x/reinfer_/api/",
        Secret::new(TOKEN),
        "w".into(),
    )
    .unwrap();
    assert_eq!(sink.describe(), "reinfer:https://host/x/reinfer_/api/");
    assert_eq!(
        sink.url(&paths::bucket(&bucket(), &["emails"])),
        "https://host/x/reinfer_/api/_private/buckets/acme/mail/emails"
    );
    assert_eq!(
        sink.url(&paths::bucket_id("00ab", &["keyed-sync-states", ""])),
        "https://host/x/reinfer_/api/_private/buckets/id:00ab/keyed-sync-states/"
    );
    assert!(matches!(
        ReinferSink::new("https://host/api", Secret::new(""), "w".into()),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        ReinferSink::new("https://host/api", Secret::new("tok\n"), "w".into()),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn segments_are_percent_encoded() {
    assert_eq!(encode_segment("owner/name"), "owner%2Fname");
    assert_eq!(encode_segment("a b%?#"), "a%20b%25%3F%23");
    assert_eq!(encode_segment("id:00ff"), "id:00ff");
    assert_eq!(encode_segment("é"), "%C3%A9");
}

#[test]
fn bucket_created_when_missing_and_reused_when_present() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    sink(&fake).prepare_bucket(&bucket()).unwrap();
    assert_eq!(fake.buckets(), vec![("acme".into(), "mail".into())]);
    let seen: Vec<(String, u16)> = fake
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(seen, [("GET".into(), 404), ("PUT".into(), 200)]);
    assert!(
        fake.requests()[1]
            .path
            .ends_with("/reinfer_/api/_private/buckets/acme/mail")
    );

    // A new process finds it and does not create it again.
    sink(&fake).prepare_bucket(&bucket()).unwrap();
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(
        (requests[2].method.as_str(), requests[2].status),
        ("GET", 200)
    );

    let bad = Bucket {
        owner: "acme".into(),
        name: "a/b".into(),
    };
    assert!(matches!(
        sink(&fake).prepare_bucket(&bad),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn forbidden_and_refused_tokens_are_auth_errors() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("acme", "mail");
    fake.deny("acme", "mail");
    let err = sink(&fake).prepare_bucket(&bucket()).unwrap_err();
    assert!(err.is_fatal(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("lacks permission to read or create bucket acme/mail"),
        "{text}"
    );
    assert!(text.contains("HTTP 403"), "{text}");
    let err = sink(&fake)
        .put_emails(&bucket(), "alice@example.com", &batch(&docs(2)))
        .unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(
        err.to_string().contains("lacks permission to add emails"),
        "{err}"
    );

    let wrong = ReinferSink::new(&fake.base_url(), Secret::new("not-the-token"), "w".into())
        .unwrap()
        .with_retry_policy(fast());
    let err = wrong.read_config("p", "k").unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(err.to_string().contains("REINFER_API_TOKEN"), "{err}");
    assert!(!err.to_string().contains("not-the-token"), "{err}");
}

#[test]
fn a_batch_round_trips_exactly() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    let sink = sink(&fake);
    sink.prepare_bucket(&bucket()).unwrap();
    let docs = docs(5);
    let report = sink
        .put_emails(&bucket(), "alice@example.com", &batch(&docs))
        .unwrap();
    assert_eq!(report, PutReport::default());
    let expected: Vec<Value> = docs
        .iter()
        .map(|d| serde_json::to_value(d).unwrap())
        .collect();
    assert_eq!(fake.emails("acme", "mail"), expected);
    let puts = puts(&fake);
    assert_eq!(puts.len(), 1);
    // No `no_charge` (see the module notes) and no doubled slash.
    assert!(
        puts[0]
            .path
            .ends_with("/reinfer_/api/_private/buckets/acme/mail/emails")
    );

    // Storing it again is an upsert.
    sink.put_emails(&bucket(), "alice@example.com", &batch(&docs))
        .unwrap();
    assert_eq!(fake.emails("acme", "mail").len(), 5);
    assert!(
        sink.put_emails(&bucket(), "alice@example.com", &EncodedBatch::default())
            .unwrap()
            .rejected
            .is_empty()
    );
}

#[test]
fn a_poisoned_email_is_isolated_and_reported() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("acme", "mail");
    let docs = docs(8);
    fake.poison(&docs[5].id);
    let report = sink(&fake)
        .put_emails(&bucket(), "alice@example.com", &batch(&docs))
        .unwrap();
    assert_eq!(report.rejected.len(), 1);
    let (id, reason) = &report.rejected[0];
    assert_eq!(id, &docs[5].id);
    assert!(
        reason.contains("HTTP 400") && reason.contains(&docs[5].id),
        "{reason}"
    );
    let stored: Vec<String> = fake
        .emails("acme", "mail")
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored.len(), 7);
    assert!(!stored.contains(&docs[5].id));
    // 8 → 4+4 → the bad half 2+2 → 1+1: 7 requests.
    assert_eq!(puts(&fake).len(), 7);
}

#[test]
fn a_storm_of_429_is_ridden_out() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("acme", "mail");
    fake.inject(Fault::new(
        Endpoint::PutEmails,
        FaultKind::TooManyRequests(RetryAfter::Seconds(0)),
        5,
    ));
    let docs = docs(4);
    sink(&fake)
        .put_emails(&bucket(), "alice@example.com", &batch(&docs))
        .unwrap();
    assert_eq!(fake.emails("acme", "mail").len(), 4);
    let statuses: Vec<u16> = puts(&fake).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 429, 429, 429, 429, 200]);
}

#[test]
fn a_server_error_then_success() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("acme", "mail");
    fake.inject(Fault::new(Endpoint::PutEmails, FaultKind::ServerError, 1));
    sink(&fake)
        .put_emails(&bucket(), "alice@example.com", &batch(&docs(3)))
        .unwrap();
    assert_eq!(fake.emails("acme", "mail").len(), 3);
    let statuses: Vec<u16> = puts(&fake).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 200]);
}

#[test]
fn a_reset_connection_is_retried() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("acme", "mail");
    fake.inject(Fault::new(Endpoint::PutEmails, FaultKind::Reset, 2));
    sink(&fake)
        .put_emails(&bucket(), "alice@example.com", &batch(&docs(3)))
        .unwrap();
    assert_eq!(fake.emails("acme", "mail").len(), 3);
    let statuses: Vec<u16> = puts(&fake).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [0, 0, 200], "0: dropped without an answer");
}

#[test]
fn exhausted_retries_hand_the_demanded_wait_to_the_uploader() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("acme", "mail");
    fake.inject(Fault::new(
        Endpoint::PutEmails,
        FaultKind::TooManyRequests(RetryAfter::Seconds(1)),
        2,
    ));
    let sink = sink(&fake).with_retry_policy(RetryPolicy {
        max_attempts: 2,
        ..fast()
    });
    let err = sink
        .put_emails(&bucket(), "alice@example.com", &batch(&docs(2)))
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.demanded_wait(), Some(Duration::from_secs(1)));
    assert!(
        matches!(
            err,
            Error::Http {
                status: Some(429),
                ..
            }
        ),
        "{err}"
    );

    // A demanded wait beyond what the sink sleeps itself goes back at once, as an HTTP date.
    fake.inject(Fault::new(
        Endpoint::PutEmails,
        FaultKind::TooManyRequests(RetryAfter::HttpDate(Duration::from_secs(120))),
        1,
    ));
    let before = puts(&fake).len();
    let err = sink
        .put_emails(&bucket(), "alice@example.com", &batch(&docs(2)))
        .unwrap_err();
    let wait = err.demanded_wait().unwrap();
    assert!(wait > Duration::from_secs(100), "{wait:?}");
    assert_eq!(puts(&fake).len(), before + 1);
}

#[test]
fn large_batches_are_cut_to_the_byte_cap() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("acme", "mail");
    let docs: Vec<EmailDoc> = (0..10).map(|n| doc(n, 1000)).collect();
    let encoded = batch(&docs);
    let cap = 3000;
    let report = sink(&fake)
        .with_max_body_bytes(cap)
        .put_emails(&bucket(), "alice@example.com", &encoded)
        .unwrap();
    assert!(report.rejected.is_empty());
    let puts = puts(&fake);
    assert!(puts.len() >= 4, "{} requests", puts.len());
    assert!(puts.iter().all(|r| r.body_bytes <= cap && r.status == 200));
    assert_eq!(fake.emails("acme", "mail").len(), 10);
}

#[test]
fn a_gateway_413_splits_the_batch() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("acme", "mail");
    let docs: Vec<EmailDoc> = (0..8).map(|n| doc(n, 1000)).collect();
    let one = serde_json::to_vec(&docs[0]).unwrap().len();
    fake.set_max_body_bytes(Some(2 * one + 100));
    let mut huge = doc(99, 10_000);
    huge.id = "<huge@example.com>".into();
    let mut all = docs.clone();
    all.push(huge);
    let report = sink(&fake)
        .put_emails(&bucket(), "alice@example.com", &batch(&all))
        .unwrap();
    assert_eq!(fake.emails("acme", "mail").len(), 8);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].0, "<huge@example.com>");
    assert!(
        report.rejected[0].1.contains("HTTP 413"),
        "{:?}",
        report.rejected
    );
}

fn folder(path: &str, second: u8, ids: &[&str]) -> FolderState {
    FolderState {
        path: path.split('/').map(str::to_owned).collect(),
        synced_until: datetime!(2024-03-01 10:00:00 UTC) + time::Duration::seconds(second.into()),
        ids_at_synced_until: ids.iter().map(|s| (*s).to_owned()).collect(),
        last_synced_at: Some(datetime!(2024-03-02 08:00:00 UTC)),
        status: "ok".into(),
        last_error: None,
    }
}

fn state_puts(fake: &FakeReinfer) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/keyed-sync-state/"))
        .count()
}

#[test]
fn state_round_trip_and_unchanged_folders_are_not_rewritten() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    let sink = sink(&fake);
    sink.prepare_bucket(&bucket()).unwrap();
    assert_eq!(
        sink.load_state(&bucket(), "alice@example.com").unwrap(),
        None
    );

    let mut state = MailboxState {
        version: crate::sync::state::STATE_VERSION,
        mailbox: "alice@example.com".into(),
        folders: BTreeMap::from([
            (
                "AAMk/inbox+=".to_owned(),
                folder("Inbox", 5, &["<a@x>", "<b@x>"]),
            ),
            ("AAMk/sent".to_owned(), folder("Sent Items/2024", 9, &[])),
        ]),
    };
    sink.save_state(&bucket(), &state).unwrap();
    assert_eq!(state_puts(&fake), 2);
    let stored = fake.sync_states("acme", "mail");
    let key = state_key("alice@example.com", "AAMk/inbox+=");
    let inbox = &stored[&key];
    assert_eq!(inbox["mailbox_name"], "alice@example.com");
    assert_eq!(inbox["folder_id"], "AAMk/inbox+=");
    assert_eq!(inbox["folder_path"], json!(["Inbox"]));
    assert_eq!(inbox["status"], "UP_TO_DATE");
    assert_eq!(inbox["synced_until"], "2024-03-01T10:00:05Z");
    assert_eq!(inbox["last_synced_at"], "2024-03-02T08:00:00Z");
    let ours: Value = serde_json::from_str(inbox["fingerprint"].as_str().unwrap()).unwrap();
    assert_eq!(ours["writer"], "test-host:1:t0");
    assert_eq!(ours["ids_at_synced_until"], json!(["<a@x>", "<b@x>"]));

    // Nothing changed: nothing written.
    sink.save_state(&bucket(), &state).unwrap();
    assert_eq!(state_puts(&fake), 2);
    // One folder changed: one write.
    state.folders.get_mut("AAMk/sent").unwrap().synced_until += time::Duration::hours(1);
    sink.save_state(&bucket(), &state).unwrap();
    assert_eq!(state_puts(&fake), 3);

    // Another process (a restart) loads exactly what was saved, by the mailbox in any case.
    let restarted = self::sink(&fake);
    let loaded = restarted
        .load_state(&bucket(), "Alice@Example.com")
        .unwrap()
        .unwrap();
    assert_eq!(loaded.folders, state.folders);
    // ... and does not rewrite what it found unchanged.
    restarted.save_state(&bucket(), &loaded).unwrap();
    assert_eq!(state_puts(&fake), 3);
    // Other mailboxes of the bucket are not mixed in.
    assert_eq!(
        restarted.load_state(&bucket(), "bob@example.com").unwrap(),
        None
    );
    // A missing bucket has no state.
    let other = Bucket {
        owner: "acme".into(),
        name: "nothing".into(),
    };
    assert_eq!(
        restarted.load_state(&other, "alice@example.com").unwrap(),
        None
    );
}

#[test]
fn another_writer_is_warned_about() {
    let logs = capture_logs();
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("acme", "mail");
    let sink = sink(&fake);
    let key = state_key("carol@example.com", "F1");
    let later = time::OffsetDateTime::now_utc() + time::Duration::minutes(1);
    let theirs = KeyedSyncState {
        mailbox_name: "carol@example.com".into(),
        folder_id: Some("F1".into()),
        folder_path: Some(vec!["Inbox".into()]),
        status: "UP_TO_DATE".into(),
        synced_until: Some(datetime!(2024-03-01 10:00:00 UTC)),
        last_synced_at: None,
        fingerprint: Some(
            json!({"exchange_sync": 1, "writer": "other-host:9:t9",
                   "written_at": later.format(&time::format_description::well_known::Rfc3339).unwrap(),
                   "status": "ok", "ids_at_synced_until": []})
            .to_string(),
        ),
    };
    fake.put_sync_state("acme", "mail", &key, serde_json::to_value(&theirs).unwrap());
    let state = MailboxState {
        version: 1,
        mailbox: "carol@example.com".into(),
        folders: BTreeMap::from([("F1".to_owned(), folder("Inbox", 7, &[]))]),
    };
    // Saving a key never written by us reads it first and notices the other writer.
    sink.save_state(&bucket(), &state).unwrap();
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with(&format!("keyed-sync-state/{key}")))
    );
    fake.put_sync_state("acme", "mail", &key, serde_json::to_value(&theirs).unwrap());
    let loaded = self::sink(&fake)
        .load_state(&bucket(), "carol@example.com")
        .unwrap()
        .unwrap();
    assert_eq!(
        loaded.folders["F1"].synced_until,
        datetime!(2024-03-01 10:00:00 UTC)
    );
    if logs {
        let warnings = logged("other-host:9:t9");
        assert!(warnings.len() >= 2, "{warnings:?}");
        assert!(
            warnings
                .iter()
                .all(|w| w.starts_with("WARN") && w.contains("test-host:1:t0"))
        );
    }
}

#[test]
fn remote_config_from_v1_then_private_then_not_found() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    let sink = sink(&fake);
    let config = br#"{"microsoft_api":"graph","mailboxes":{}}"#;
    fake.set_config("proj", "prod", config);
    assert_eq!(sink.read_config("proj", "prod").unwrap(), config);
    assert!(
        fake.requests()[0]
            .path
            .ends_with("/api/v1/appliance-configs/proj/prod")
    );

    fake.set_config_prefixes(false, true);
    assert_eq!(sink.read_config("proj", "prod").unwrap(), config);
    let paths: Vec<String> = fake.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        paths[2].ends_with("/api/_private/appliance-configs/proj/prod"),
        "{paths:?}"
    );

    let err = sink.read_config("proj", "missing").unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(matches!(
        sink.read_config("../x", "prod"),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn config_envelopes_are_unwrapped() {
    let raw = br#"{"mailboxes":{}}"#.to_vec();
    assert_eq!(config_payload(raw.clone()).unwrap(), raw);
    assert_eq!(config_payload(b"not json".to_vec()).unwrap(), b"not json");
    assert_eq!(
        config_payload(br#"{"status":"ok","config":{"mailboxes":{}}}"#.to_vec()).unwrap(),
        raw
    );
    assert_eq!(
        config_payload(br#"{"status":"ok","file":"{\"mailboxes\":{}}"}"#.to_vec()).unwrap(),
        raw
    );
    assert!(config_payload(br#"{"status":"error","message":"x"}"#.to_vec()).is_err());
}

#[test]
fn the_token_never_shows() {
    let logs = capture_logs();
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("acme", "mail");
    let sink = sink(&fake).with_retry_policy(RetryPolicy {
        max_attempts: 2,
        ..fast()
    });
    let mut shown = vec![format!("{sink:?}"), sink.describe()];
    // A proxy that echoes the request headers into its error page.
    let echo = format!("<html>Authorization: Bearer {TOKEN}</html>");
    fake.inject(Fault::new(
        Endpoint::PutEmails,
        FaultKind::Status {
            code: 502,
            body: echo.clone(),
        },
        2,
    ));
    let err = sink
        .put_emails(&bucket(), "alice@example.com", &batch(&docs(1)))
        .unwrap_err();
    assert!(err.to_string().contains("REDACTED"), "{err}");
    shown.push(err.to_string());
    shown.push(format!("{err:?}"));
    fake.inject(Fault::new(
        Endpoint::PutEmails,
        FaultKind::Status {
            code: 400,
            body: echo,
        },
        1,
    ));
    let report = sink
        .put_emails(&bucket(), "alice@example.com", &batch(&docs(1)))
        .unwrap();
    shown.push(format!("{report:?}"));
    fake.deny("acme", "mail");
    let err = sink.prepare_bucket(&bucket()).unwrap_err();
    shown.push(err.to_string());
    shown.push(format!("{err:?}"));
    let wrong =
        ReinferSink::new(&fake.base_url(), Secret::new("other-token-x"), "w".into()).unwrap();
    let err = wrong.read_config("p", "k").unwrap_err();
    shown.push(err.to_string());
    shown.push(format!("{err:?} {wrong:?}"));
    for text in &shown {
        assert!(!text.contains(TOKEN), "{text}");
        assert!(!text.contains("other-token-x"), "{text}");
    }
    if logs {
        let lines = logged("");
        assert!(!lines.is_empty());
        assert!(lines.iter().all(|l| !l.contains(TOKEN)));
    }
}

#[test]
fn uploads_from_many_threads_run_concurrently_on_pooled_connections() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("acme", "mail");
    let threads = 16;
    let rounds = 3;
    fake.inject(Fault::new(
        Endpoint::PutEmails,
        FaultKind::Delay(Duration::from_millis(100)),
        threads * rounds,
    ));
    let sink = sink(&fake);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let sink = &sink;
            scope.spawn(move || {
                for r in 0..rounds {
                    let docs: Vec<EmailDoc> =
                        (0..3).map(|n| doc(t * 100 + r * 10 + n, 40)).collect();
                    sink.put_emails(&bucket(), "alice@example.com", &batch(&docs))
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(fake.emails("acme", "mail").len(), threads * rounds * 3);
    // One shared agent does not serialise the uploads...
    assert!(
        fake.max_concurrent_puts() >= threads / 2,
        "{} concurrent",
        fake.max_concurrent_puts()
    );
    // ... and keeps connections alive between them (fewer connections than requests).
    assert!(
        fake.connections() < fake.requests().len(),
        "{} connections for {} requests",
        fake.connections(),
        fake.requests().len()
    );
}
