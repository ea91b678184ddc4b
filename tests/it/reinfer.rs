//! The binary against the fake Communications Mining API: buckets, emails, state, remote
//! configuration, rejected emails and throttling.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fake_exchange::{FakeExchange, GenSpec, Options};
use fake_reinfer::{Endpoint, FakeReinfer, Fault, FaultKind, RetryAfter};
use serde_json::{Value, json};
use time::macros::datetime;

use crate::support::*;

const TOKEN: &str = "test-api-token-0123456789";

fn exchange(mailboxes: usize, emails: usize, latency_ms: u64) -> FakeExchange {
    let spec = GenSpec {
        seed: 11,
        mailboxes,
        emails_per_mailbox: emails,
        mime_bytes: 1200,
        start: datetime!(2024-05-01 08:00 UTC),
    };
    let options = Options {
        latency: Duration::from_millis(latency_ms),
        ..Options::default()
    };
    FakeExchange::start(fake_exchange::generate(&spec), options).unwrap()
}

/// The binary with the API sink and the config in a file.
fn api_command(api: &FakeReinfer, config: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .env("REINFER_EWS_CONFIG", config)
        .env("REINFER_API_TOKEN", TOKEN)
        .arg("--reinfer-api-endpoint")
        .arg(api.base_url())
        .args(args);
    command
}

/// What the fake stored, in the shape `assert_exact_documents` takes.
fn stored(api: &FakeReinfer) -> Vec<(PathBuf, Value)> {
    api.emails("demo", "emails")
        .into_iter()
        .map(|doc| (PathBuf::from("api:demo/emails"), doc))
        .collect()
}

#[test]
fn buckets_are_created_and_every_email_arrives_as_the_contract_says() {
    let fake = exchange(2, 120, 0);
    let api = FakeReinfer::start(TOKEN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(&fake.url(), &addresses(&fake), json!({})),
    );
    let result = run(api_command(
        &api,
        &config,
        &["--once", "--debug-level", "0"],
    ));
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    assert_eq!(
        api.buckets(),
        vec![("demo".to_owned(), "emails".to_owned())]
    );
    assert_exact_documents(&fake.data(), &stored(&api));
    assert!(
        !api.sync_states("demo", "emails").is_empty(),
        "no sync state was saved"
    );

    // A second run resumes from the state in the bucket and uploads nothing.
    let puts_before = count_puts(&api);
    let result = run(api_command(
        &api,
        &config,
        &["--once", "--debug-level", "0"],
    ));
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    assert_eq!(
        count_puts(&api),
        puts_before,
        "the second run uploaded emails again"
    );
    assert!(!result.stderr.contains(TOKEN) && !result.stdout.contains(TOKEN));
}

fn count_puts(api: &FakeReinfer) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.endpoint == Endpoint::PutEmails)
        .count()
}

#[test]
fn a_rejected_email_does_not_block_the_others() {
    let fake = exchange(1, 60, 0);
    let api = FakeReinfer::start(TOKEN).unwrap();
    let data = fake.data();
    let mailbox = &data.mailboxes[0];
    let (_, victim) = mailbox.synced_items().nth(17).unwrap();
    let victim_id = expected_id(&mailbox.address, victim);
    api.poison(&victim_id);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(&fake.url(), &addresses(&fake), json!({})),
    );
    let result = run(api_command(
        &api,
        &config,
        &["--once", "--debug-level", "0"],
    ));
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    assert!(
        result.stderr.contains(&victim_id),
        "the rejected id is not logged: {}",
        result.stderr
    );
    let docs = stored(&api);
    assert_eq!(docs.len(), mailbox.synced_items().count() - 1);
    assert!(docs.iter().all(|(_, d)| d["id"] != victim_id.as_str()));
}

#[test]
fn a_429_storm_is_ridden_out_without_loss() {
    let fake = exchange(2, 80, 0);
    let api = FakeReinfer::start(TOKEN).unwrap();
    api.inject(Fault::new(
        Endpoint::PutEmails,
        FaultKind::TooManyRequests(RetryAfter::Seconds(0)),
        25,
    ));
    api.inject(Fault::new(Endpoint::PutEmails, FaultKind::ServerError, 3));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(
            &fake.url(),
            &addresses(&fake),
            json!({"reinfer_batch_size": 10}),
        ),
    );
    let result = run(api_command(
        &api,
        &config,
        &["--once", "--debug-level", "0"],
    ));
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    assert_exact_documents(&fake.data(), &stored(&api));
    let throttled = api.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(throttled, 25);
}

#[test]
fn state_in_the_bucket_survives_kill_9() {
    let fake = exchange(2, 400, 2);
    let api = FakeReinfer::start(TOKEN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(
            &fake.url(),
            &addresses(&fake),
            json!({"reinfer_batch_size": 20, "max_concurrent_fetches": 2}),
        ),
    );
    let mut child = api_command(&api, &config, &["--once", "--debug-level", "0"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    wait_until(Duration::from_secs(60), "some saved state", || {
        !api.sync_states("demo", "emails").is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let total = emails_to_copy(&fake.data());
    assert!(
        stored(&api).len() < total,
        "the first run finished before it was killed"
    );

    let result = run(api_command(
        &api,
        &config,
        &["--once", "--debug-level", "0"],
    ));
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    // The fake upserts by (mailbox, id): a replayed email is stored once.
    assert_exact_documents(&fake.data(), &stored(&api));
}

#[test]
fn a_config_edit_in_the_api_takes_effect_without_a_restart() {
    let fake = exchange(2, 40, 0);
    let api = FakeReinfer::start(TOKEN).unwrap();
    let all = addresses(&fake);
    let first = config(&fake.url(), &all[..1], json!({}));
    api.set_config("demo", "prod", &serde_json::to_vec(&first).unwrap());
    let mut child = Command::new(BIN)
        .env_remove("REINFER_EWS_CONFIG")
        .env("REINFER_API_TOKEN", TOKEN)
        .arg("--reinfer-api-endpoint")
        .arg(api.base_url())
        .args([
            "--remote-config-owner",
            "demo",
            "--remote-config-key",
            "prod",
            "--debug-level",
            "0",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let count_for = |mailbox: &str| {
        stored(&api)
            .iter()
            .filter(|(_, d)| d["mailbox"] == mailbox)
            .count()
    };
    let per_mailbox: Vec<usize> = fake
        .data()
        .mailboxes
        .iter()
        .map(|m| m.synced_items().count())
        .collect();
    wait_until(Duration::from_secs(60), "the first mailbox", || {
        count_for(&all[0]) == per_mailbox[0]
    });
    assert_eq!(count_for(&all[1]), 0);

    let both = config(&fake.url(), &all, json!({}));
    api.set_config("demo", "prod", &serde_json::to_vec(&both).unwrap());
    wait_until(Duration::from_secs(60), "the added mailbox", || {
        count_for(&all[1]) == per_mailbox[1]
    });
    terminate(&mut child);
    assert_exact_documents(&fake.data(), &stored(&api));
}

#[test]
fn a_token_without_permission_is_a_clear_fatal_error() {
    let fake = exchange(1, 5, 0);
    let api = FakeReinfer::start(TOKEN).unwrap();
    api.deny("demo", "emails");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(&fake.url(), &addresses(&fake), json!({})),
    );
    let result = run(api_command(
        &api,
        &config,
        &["--once", "--debug-level", "2"],
    ));
    assert_eq!(result.code(), Some(1), "{}", result.stderr);
    assert!(result.stderr.contains("permission"), "{}", result.stderr);
    assert!(!result.stderr.contains(TOKEN));
}
