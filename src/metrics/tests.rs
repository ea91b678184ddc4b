//! Unit tests of the metrics registry, its exposition, `/status` and the health verdicts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::macros::datetime;

use super::prometheus::validate;
use super::*;
use crate::config::{Bucket, MailboxConfig, StartFrom};
use crate::sync::state::MailboxState;

fn mailbox(address: &str) -> MailboxConfig {
    MailboxConfig {
        address: address.into(),
        bucket: Bucket {
            owner: "demo".into(),
            name: "emails".into(),
        },
        start_from: StartFrom::Bucket,
        start_timestamp: None,
    }
}

fn folder(id: &str, path: &[&str]) -> FolderInfo {
    FolderInfo {
        id: id.into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        changed_at: None,
        changed_at_settled: false,
    }
}

fn cursor() -> Cursor {
    Cursor::starting_at(datetime!(2024-01-01 0:00 UTC))
}

/// The folder table of a run whose mailboxes have these saved states.
fn table(states: Vec<MailboxState>) -> Arc<FolderTable> {
    Arc::new(FolderTable::new(
        states.into_iter().map(MailboxFolders::from_state).collect(),
    ))
}

/// What the committer does when a batch of `folder` is stored: records the new cursor in the
/// folder table, then reports the progress.
fn stored(metrics: &Metrics, address: &str, folder: &FolderInfo, moved: &Cursor, covered: usize) {
    {
        let state = metrics.lock();
        let mut folders = state.mailboxes[address].folders();
        let record = folders
            .0
            .as_mut()
            .unwrap()
            .record(folder, cursor().synced_until);
        record.set_cursor(moved);
        record.last_synced_at = Some(OffsetDateTime::now_utc());
    }
    metrics.folder_progress(address, &folder.id, covered);
}

/// A run with one mailbox whose two folders are queued and discovered.
fn running(address: &str) -> Metrics {
    let metrics = Metrics::default();
    metrics.config_loaded("test.json");
    metrics.begin_run(&[mailbox(address)], &table(vec![MailboxState::default()]));
    metrics.discovery_started(address);
    metrics.folder_queued(address, &folder("f1", &["Inbox"]), &cursor());
    metrics.folder_queued(
        address,
        &folder("f2", &["Inbox", "Q1/Q2 Reports"]),
        &cursor(),
    );
    metrics.discovered(
        address,
        &[
            folder("f1", &["Inbox"]),
            folder("f2", &["Inbox", "Q1/Q2 Reports"]),
        ],
    );
    metrics
}

#[test]
fn exposition_is_valid_and_escapes_label_values() {
    let address = "we\"ird\\name\n@example.com";
    let metrics = running(address);
    metrics.folder_listed(address, "f1", 10, false);
    metrics.batch_stored(address, 8, 1, 4000);
    metrics.record_retry("ErrorServerBusy");
    metrics.record_throttle_wait("ErrorServerBusy", Duration::from_millis(1500));
    metrics.record_error("upload", "http_503");
    metrics.observe_http("ews", Duration::from_millis(30));
    metrics.observe_http("ews", Duration::from_secs(1000));
    let text = metrics.render_prometheus();
    let samples = validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(samples > 20, "{text}");
    assert!(
        text.contains(
            r#"exchange_sync_emails_synced_total{mailbox="we\"ird\\name\n@example.com"} 8"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"folder="Inbox/Q1%2FQ2 Reports""#), "{text}");
    assert!(text.contains(
        r#"exchange_sync_http_request_duration_seconds_bucket{endpoint="ews",le="0.05"} 1"#
    ));
    assert!(text.contains(
        r#"exchange_sync_http_request_duration_seconds_bucket{endpoint="ews",le="+Inf"} 2"#
    ));
    assert!(
        text.contains(r#"exchange_sync_throttle_wait_seconds_total{reason="ErrorServerBusy"} 1.5"#)
    );
    assert!(text.contains(r#"exchange_sync_folder_backlog_emails{mailbox="we\"ird\\name\n@example.com",folder="Inbox"} 10"#));
    assert!(text.contains("exchange_sync_ready 1\n"), "{text}");
}

#[test]
fn the_validator_rejects_what_prometheus_would() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{l=\"v\\\"\"} 1\n";
    assert_eq!(validate(good), Ok(1));
    for bad in [
        "a_total 1\n",                              // no TYPE
        "# TYPE a counter\na{l=\"v\"\"} 1\n",       // unescaped quote
        "# TYPE a counter\na{l=\"\\x\"} 1\n",       // bad escape
        "# TYPE a counter\na{1l=\"v\"} 1\n",        // bad label name
        "# TYPE a counter\na one\n",                // bad value
        "# TYPE a counter\n# TYPE a counter\n",     // declared twice
        "# TYPE h histogram\nh 1\n",                // histogram without suffix
        "# TYPE a counter\na 1",                    // no final newline
        "# TYPE a counter\n\na 1\n",                // empty line
        "# TYPE a counter\na{l=\"v\",l=\"w\"} 1\n", // label twice
    ] {
        assert!(validate(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn a_cycle_succeeds_when_every_folder_is_copied() {
    let metrics = running("a@b.c");
    metrics.folder_listed("a@b.c", "f1", 3, true);
    metrics.folder_finished("a@b.c", "f1", None, true);
    let status = metrics.status_json();
    assert_eq!(status["mailboxes"][0]["status"], "syncing");
    assert!(status["mailboxes"][0]["last_success_at"].is_null());
    // A pass with more to copy keeps the folder pending.
    metrics.folder_finished("a@b.c", "f2", None, false);
    assert!(metrics.status_json()["mailboxes"][0]["last_success_at"].is_null());
    metrics.folder_finished("a@b.c", "f2", None, true);
    let status = metrics.status_json();
    assert_eq!(status["mailboxes"][0]["status"], "idle", "{status:#}");
    assert!(status["mailboxes"][0]["last_success_at"].is_string());
    assert!(
        metrics
            .render_prometheus()
            .contains("exchange_sync_mailbox_last_success_timestamp_seconds{mailbox=\"a@b.c\"}")
    );
}

#[test]
fn a_failed_folder_puts_the_mailbox_in_error() {
    let metrics = running("a@b.c");
    metrics.folder_finished("a@b.c", "f1", Some(("transport", "cannot reach x")), false);
    metrics.folder_finished("a@b.c", "f2", None, true);
    let status = metrics.status_json();
    let mailbox = &status["mailboxes"][0];
    assert_eq!(mailbox["status"], "error");
    assert!(mailbox["last_success_at"].is_null());
    let f1 = &mailbox["folders"][0];
    assert_eq!(f1["status"], "error");
    assert_eq!(f1["last_error"]["message"], "cannot reach x");
    let text = metrics.render_prometheus();
    assert!(text.contains(r#"exchange_sync_errors_total{stage="folder",kind="transport"} 1"#));
    assert!(text.contains(r#"exchange_sync_mailbox_error{mailbox="a@b.c"} 1"#));
}

#[test]
fn backlog_and_lag_follow_the_watermark() {
    let metrics = running("a@b.c");
    metrics.folder_listed("a@b.c", "f1", 10, true);
    let mut moved = cursor();
    moved.advance([(datetime!(2024-01-02 0:00 UTC), "x")]);
    stored(&metrics, "a@b.c", &folder("f1", &["Inbox"]), &moved, 4);
    let now = datetime!(2024-01-02 0:01 UTC);
    let text = metrics.render_prometheus_at(now, Instant::now());
    assert!(
        text.contains(r#"exchange_sync_folder_backlog_emails{mailbox="a@b.c",folder="Inbox"} 6"#)
    );
    assert!(
        text.contains(r#"exchange_sync_folder_lag_seconds{mailbox="a@b.c",folder="Inbox"} 60"#)
    );
    assert!(text.contains(
        r#"exchange_sync_folder_watermark_timestamp_seconds{mailbox="a@b.c",folder="Inbox"} 1704153600"#
    ));
    metrics.folder_finished("a@b.c", "f1", None, true);
    let text = metrics.render_prometheus_at(now, Instant::now());
    assert!(
        text.contains(r#"exchange_sync_folder_backlog_emails{mailbox="a@b.c",folder="Inbox"} 0"#)
    );
    assert!(text.contains(r#"exchange_sync_folder_lag_seconds{mailbox="a@b.c",folder="Inbox"} 0"#));
}

#[test]
fn progress_is_logged_at_most_every_interval_per_mailbox() {
    let metrics = running("a@b.c");
    metrics.folder_listed("a@b.c", "f1", 500, false);
    let t0 = Instant::now();
    assert_eq!(metrics.batch_stored_at("a@b.c", 100, 0, 1, t0), None);
    assert_eq!(
        metrics.batch_stored_at("a@b.c", 100, 0, 1, t0 + Duration::from_secs(10)),
        None
    );
    let line = metrics
        .batch_stored_at("a@b.c", 100, 0, 1, t0 + PROGRESS_INTERVAL)
        .expect("a progress line after the interval");
    assert!(
        line.starts_with("mailbox=a@b.c: 300 emails copied so far"),
        "{line}"
    );
    assert!(line.contains("1 folder has more not listed yet"), "{line}");
    assert_eq!(
        metrics.batch_stored_at(
            "a@b.c",
            100,
            0,
            1,
            t0 + PROGRESS_INTERVAL + Duration::from_secs(1)
        ),
        None
    );
    // Another mailbox has its own clock (and is unknown to this run: counted, not logged).
    assert_eq!(
        metrics.batch_stored_at("z@b.c", 1, 0, 1, t0 + PROGRESS_INTERVAL * 3),
        None
    );
}

#[test]
fn liveness_fails_for_a_panic_or_a_wedged_stage_only() {
    let metrics = Arc::new(Metrics::default());
    assert!(metrics.liveness().ok);
    let guard = metrics.enter_thread(Some("fetcher-0"));
    let work = working("folder Inbox of a@b.c");
    let later = Instant::now() + WEDGED_AFTER + Duration::from_secs(1);
    let verdict = metrics.liveness_at(later);
    assert!(!verdict.ok);
    assert!(verdict.lines[0].contains("fetcher-0 wedged"), "{verdict:?}");
    assert!(
        verdict.lines[0].contains("folder Inbox of a@b.c"),
        "{verdict:?}"
    );
    // Blocked on a full channel: the next stage is the one that must progress.
    waiting(|| assert!(metrics.liveness_at(later).ok));
    drop(work);
    assert!(metrics.liveness_at(later).ok);
    drop(guard);
    metrics.thread_panicked("uploader-1");
    let verdict = metrics.liveness();
    assert!(!verdict.ok && verdict.lines[0].contains("uploader-1 panicked"));
    // A new run starts clean.
    metrics.begin_run(&[], &table(vec![]));
    assert!(metrics.liveness().ok);
}

#[test]
fn readiness_needs_config_sink_and_a_first_cycle() {
    let metrics = Metrics::default();
    let verdict = metrics.readiness();
    assert!(!verdict.ok);
    assert_eq!(verdict.lines.len(), 3, "{verdict:?}");
    metrics.config_loaded("c.json");
    metrics.begin_run(&[mailbox("a@b.c")], &table(vec![MailboxState::default()]));
    let verdict = metrics.readiness();
    assert_eq!(
        verdict.lines,
        vec!["the first sync cycle has not started yet".to_owned()]
    );
    metrics.discovery_started("a@b.c");
    assert!(metrics.readiness().ok);
    metrics.restart_scheduled("authentication failed", Duration::from_secs(5));
    let verdict = metrics.readiness();
    assert!(!verdict.ok);
    assert!(
        verdict.lines[0].contains("authentication failed"),
        "{verdict:?}"
    );
    assert!(metrics.liveness().lines[0].contains("restarting"));
    assert_eq!(metrics.status_json()["state"], "restarting");
    // A shard without mailboxes is ready once its (empty) run starts.
    metrics.begin_run(&[], &table(vec![]));
    assert!(metrics.readiness().ok);
}

#[test]
fn thread_context_routes_hooks_and_is_a_no_op_without_one() {
    // Without a context: nothing happens, nothing panics.
    observe_http("ews", Duration::from_millis(1));
    throttle_wait("http_429", Duration::from_secs(1));
    progress();
    let metrics = Arc::new(Metrics::default());
    {
        let _guard = metrics.enter_thread(None);
        observe_http("reinfer", Duration::from_millis(2));
        throttle_wait("http_429", Duration::from_secs(2));
    }
    observe_http("reinfer", Duration::from_millis(2));
    let text = metrics.render_prometheus();
    assert!(
        text.contains(r#"exchange_sync_http_request_duration_seconds_count{endpoint="reinfer"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"exchange_sync_throttle_waits_total{reason="http_429"} 1"#));
    assert!(!text.contains("endpoint=\"ews\""));
}

#[test]
fn status_starts_from_the_stored_state_and_drops_vanished_folders() {
    let metrics = Metrics::default();
    let mut folders = std::collections::BTreeMap::new();
    folders.insert(
        "old".to_owned(),
        crate::sync::state::FolderState {
            path: vec!["Archive".into()],
            synced_until: datetime!(2024-02-01 0:00 UTC),
            ids_at_synced_until: vec!["a".into(), "b".into()],
            last_synced_at: None,
            status: "error".into(),
            last_error: Some("boom".into()),
        },
    );
    let stored = MailboxState {
        version: 1,
        mailbox: "a@b.c".into(),
        folders,
    };
    metrics.begin_run(&[mailbox("a@b.c")], &table(vec![stored]));
    let status = metrics.status_json();
    let folder = &status["mailboxes"][0]["folders"][0];
    assert_eq!(folder["watermark"], "2024-02-01T00:00:00Z");
    assert_eq!(folder["ids_at_watermark"], 2);
    assert_eq!(folder["status"], "error");
    assert_eq!(folder["last_error"]["message"], "boom");
    assert_eq!(status["mailboxes"][0]["bucket"], "demo/emails");
    metrics.discovery_started("a@b.c");
    metrics.discovered("a@b.c", &[]);
    let status = metrics.status_json();
    assert_eq!(status["mailboxes"][0]["folders"], serde_json::json!([]));
    assert_eq!(status["mailboxes"][0]["status"], "idle");
}

#[test]
fn folder_labels_are_unambiguous() {
    assert_eq!(folder_label(["Inbox", "2024"]), "Inbox/2024");
    assert_eq!(folder_label(["Q1/Q2"]), "Q1%2FQ2");
    assert_eq!(folder_label(["100%"]), "100%25");
}
