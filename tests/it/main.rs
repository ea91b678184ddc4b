//! Integration tests: the exchange-sync binary against the loopback fake Exchange, a real
//! NTLM acceptor (pyspnego), and the local-files sink.

mod azure;
mod ews_oauth;
mod graph;
mod hard_servers;
mod ops;
mod reinfer;
mod support;
mod tls;

use std::time::Duration;

use fake_exchange::{FakeExchange, GenSpec, NtlmUser, Options};
use serde_json::json;
use support::*;
use time::macros::datetime;

fn spec(mailboxes: usize, emails_per_mailbox: usize) -> GenSpec {
    GenSpec {
        seed: 7,
        mailboxes,
        emails_per_mailbox,
        mime_bytes: 1500,
        start: datetime!(2024-03-01 08:00 UTC),
    }
}

fn ntlm_user() -> NtlmUser {
    NtlmUser {
        domain: NTLM_DOMAIN.into(),
        user: NTLM_USER.into(),
        password: NTLM_PASSWORD.into(),
    }
}

#[test]
fn once_copies_5000_emails_in_nested_folders_exactly() {
    let fake = FakeExchange::start(
        fake_exchange::generate(&spec(2, 2500)),
        Options {
            ntlm: Some(ntlm_user()),
            // Small server pages force FindFolder and FindItem paging.
            max_find_page: 7,
            ..Options::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A small per-folder cap makes big folders take several turns.
    let config = write_config(
        dir.path(),
        &config(
            &fake.url(),
            &addresses(&fake),
            json!({"emails_per_folder": 300, "reinfer_batch_size": 50}),
        ),
    );
    let prefix = dir.path().join("sink");
    run_once(&config, &prefix);
    let copied = assert_exact_copy(&fake.data(), &prefix);
    assert!(
        copied >= 4500,
        "the data set should hold about 5000 syncable emails, got {copied}"
    );
    let stats = fake.stats();
    assert!(
        stats.operation("FindFolder") >= 4,
        "FindFolder was not paged: {stats:?}"
    );

    // A second run finds nothing new and copies nothing again.
    run_once(&config, &prefix);
    assert_exact_copy(&fake.data(), &prefix);
}

#[test]
fn emails_sharing_the_watermark_second_are_neither_lost_nor_repeated() {
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(1, 60)), Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(&fake.url(), &addresses(&fake), json!({})),
    );
    let prefix = dir.path().join("sink");
    run_once(&config, &prefix);
    assert_exact_copy(&fake.data(), &prefix);

    // New mail arrives in the same second as the newest copied email of a folder, and after.
    let data = fake.data();
    let mailbox = &data.mailboxes[0];
    let (folder, newest) = mailbox
        .synced_items()
        .max_by_key(|(_, item)| item.received)
        .unwrap();
    for n in 0..3u64 {
        let mime = format!(
            "Message-ID: <same-second-{n}@test>\r\nSubject: same second {n}\r\n\r\nbody {n}\r\n"
        );
        fake.add_item(
            &mailbox.address,
            &folder.id,
            fake_exchange::make_item(1000 + n, newest.received, mime.into_bytes()),
        );
    }
    let later = newest.received + time::Duration::seconds(1);
    fake.add_item(
        &mailbox.address,
        &folder.id,
        fake_exchange::make_item(
            2000,
            later,
            b"Message-ID: <later@test>\r\nSubject: later\r\n\r\nx\r\n".to_vec(),
        ),
    );
    run_once(&config, &prefix);
    assert_exact_copy(&fake.data(), &prefix);
}

#[test]
fn restart_after_kill_9_resumes_with_nothing_missing() {
    let fake = FakeExchange::start(
        fake_exchange::generate(&spec(2, 600)),
        Options {
            latency: Duration::from_millis(3),
            ..Options::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(
            &fake.url(),
            &addresses(&fake),
            json!({"reinfer_batch_size": 20, "max_concurrent_fetches": 2}),
        ),
    );
    let prefix = dir.path().join("sink");
    let mut child = command(&config, &prefix, &["--once", "--debug-level", "0"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    // Kill it between batches: once some state is saved, long before it is done.
    wait_until(Duration::from_secs(60), "the first saved state", || {
        prefix.join("state").exists() && !files_under(&prefix.join("state")).is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let before = read_docs(&prefix).len();
    let total = emails_to_copy(&fake.data());
    assert!(
        before < total,
        "the first run finished before it was killed ({before} of {total})"
    );

    run_once(&config, &prefix);
    let docs = read_docs(&prefix);
    let ids: std::collections::HashSet<(String, String)> = docs
        .iter()
        .map(|(_, d)| {
            (
                d["mailbox"].as_str().unwrap().to_owned(),
                d["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for mailbox in &fake.data().mailboxes {
        for (_, item) in mailbox.synced_items() {
            let key = (mailbox.address.clone(), expected_id(&mailbox.address, item));
            assert!(ids.contains(&key), "item {} lost across kill -9", item.id);
        }
    }
    assert_eq!(ids.len(), total);
    // No partial file ever sits under a final name.
    for path in files_under(&prefix.join("data")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".jsonl") || name.starts_with(".tmp-"),
            "{name}"
        );
    }
}

#[test]
fn sigterm_stops_cleanly_and_saves_state() {
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(1, 50)), Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(&fake.url(), &addresses(&fake), json!({})),
    );
    let prefix = dir.path().join("sink");
    let child = command(&config, &prefix, &["--debug-level", "0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    wait_until(Duration::from_secs(60), "the first copy", || {
        read_docs(&prefix).len() == fake.data().mailboxes[0].synced_items().count()
    });
    send_sigterm(&child);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("stopping"), "{stderr}");
    assert!(!files_under(&prefix.join("state")).is_empty());
    assert_exact_copy(&fake.data(), &prefix);
}

#[test]
fn ntlm_against_a_real_acceptor_uses_one_connection_per_handshake() {
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(2, 150)), Options::default()).unwrap();
    let proxy = NtlmProxy::start(&fake.url());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(
            &proxy.url,
            &addresses(&fake),
            json!({"max_concurrent_fetches": 4}),
        ),
    );
    let prefix = dir.path().join("sink");
    run_once(&config, &prefix);
    assert_exact_copy(&fake.data(), &prefix);
    let stats = proxy.stats();
    let ok = stats["handshakes_ok"].as_u64().unwrap();
    assert!(ok >= 1, "{stats}");
    // Kept-alive connections: about one handshake per fetcher thread, not one per request.
    assert!(
        ok <= 8,
        "too many NTLM handshakes ({ok}): connections are not reused: {stats}"
    );
    assert_eq!(stats["handshakes_failed"], 0, "{stats}");
    for legs in stats["ports_per_handshake"].as_array().unwrap() {
        let ports = legs.as_array().unwrap();
        assert_eq!(
            ports[1], ports[2],
            "Type1 and Type3 on different connections: {stats}"
        );
    }
}

#[test]
fn wrong_ntlm_password_is_a_clear_fatal_error() {
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(1, 5)), Options::default()).unwrap();
    let proxy = NtlmProxy::start(&fake.url());
    let dir = tempfile::tempdir().unwrap();
    let wrong = "Wrong-Passw0rd-42";
    let config = write_config(
        dir.path(),
        &config(
            &proxy.url,
            &addresses(&fake),
            json!({"auth_password": wrong}),
        ),
    );
    let result = run(command(
        &config,
        &dir.path().join("sink"),
        &["--once", "--debug-level", "2"],
    ));
    assert_eq!(result.code(), Some(1), "{}", result.stderr);
    assert!(
        result
            .stderr
            .contains("rejected the credentials of TESTDOM\\svc-sync"),
        "{}",
        result.stderr
    );
    assert!(
        !result.stderr.contains(wrong) && !result.stdout.contains(wrong),
        "the password leaked"
    );
}

#[test]
fn impersonation_names_the_mailbox_in_the_header() {
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(2, 20)), Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(
            &fake.url(),
            &addresses(&fake),
            json!({"access_type": "impersonation"}),
        ),
    );
    let prefix = dir.path().join("sink");
    run_once(&config, &prefix);
    assert_exact_copy(&fake.data(), &prefix);
}

#[test]
fn config_errors_are_all_reported_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "ews_endpoint": "ftp://exchange",
        "auth_type": "ntlm",
        "auth_user": "CORP\\svc",
        "max_concurrent_uploads": 40,
        "mailboxes": {"a@example.com": {"bucket": {"owner": "o", "name": "../x"}}}
    });
    let path = write_config(dir.path(), &config);
    let result = run(command(&path, &dir.path().join("sink"), &["--once"]));
    assert_eq!(result.code(), Some(2), "{}", result.stderr);
    for key in [
        "ews_endpoint",
        "max_concurrent_uploads",
        "auth_password",
        "bucket.name",
    ] {
        assert!(
            result.stderr.contains(key),
            "error for {key} missing:\n{}",
            result.stderr
        );
    }

    std::fs::write(&path, b"{\n  \"mailboxes\": {,\n}").unwrap();
    let result = run(command(&path, &dir.path().join("sink"), &["--once"]));
    assert_eq!(result.code(), Some(2));
    assert!(
        result.stderr.contains(":2:"),
        "syntax error without line: {}",
        result.stderr
    );
}

#[test]
fn print_config_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config(
            "http://127.0.0.1:9/EWS/Exchange.asmx",
            &["a@example.com".into()],
            json!({}),
        ),
    );
    let result = run(command(
        &path,
        &dir.path().join("sink"),
        &["--print-config"],
    ));
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    let printed: serde_json::Value = serde_json::from_str(&result.stdout).unwrap();
    assert_eq!(printed["auth_password"], "**REDACTED**");
    assert!(!result.stdout.contains(NTLM_PASSWORD) && !result.stderr.contains(NTLM_PASSWORD));
}

#[test]
fn remote_config_is_read_from_the_sink_and_a_local_file_wins() {
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(1, 10)), Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("sink");
    let stored = config(&fake.url(), &addresses(&fake), json!({}));
    std::fs::create_dir_all(prefix.join("config/demo")).unwrap();
    std::fs::write(
        prefix.join("config/demo/prod.json"),
        serde_json::to_vec(&stored).unwrap(),
    )
    .unwrap();
    let mut command = std::process::Command::new(BIN);
    command
        .env_remove("REINFER_EWS_CONFIG")
        .args(["--local-files-prefix"])
        .arg(&prefix)
        .args([
            "--remote-config-owner",
            "demo",
            "--remote-config-key",
            "prod",
            "--once",
            "--debug-level",
            "0",
        ]);
    let result = run(command);
    assert_eq!(result.code(), Some(0), "{}", result.stderr);
    assert_exact_copy(&fake.data(), &prefix);

    let missing = run({
        let mut c = std::process::Command::new(BIN);
        c.env_remove("REINFER_EWS_CONFIG")
            .arg("--local-files-prefix")
            .arg(&prefix)
            .args([
                "--remote-config-owner",
                "demo",
                "--remote-config-key",
                "nope",
                "--once",
            ]);
        c
    });
    assert_eq!(missing.code(), Some(2));
    assert!(missing.stderr.contains("nope.json"), "{}", missing.stderr);
}

#[test]
fn sink_and_flag_mistakes_exit_2_with_a_clear_message() {
    for (args, expected) in [
        (
            vec!["--reinfer-api-endpoint", "https://x/api/"],
            "REINFER_API_TOKEN",
        ),
        (
            vec!["--private-file-prefix", "az://"],
            "--private-file-prefix",
        ),
        (
            vec!["--private-file-prefix", "https://acct/container"],
            "--private-file-prefix",
        ),
        (
            vec![
                "--local-files-prefix",
                "/tmp/x",
                "--reinfer-api-endpoint",
                "https://x/",
            ],
            "exactly one sink",
        ),
        (
            vec!["--local-files-prefix", "/tmp/x", "--shard-name", "s-1"],
            "--total-shards",
        ),
        (vec!["--local-files-prefix", "/tmp/x", "--bogus"], "--bogus"),
        (vec!["--local-files-prefix", "/tmp/x"], "REINFER_EWS_CONFIG"),
    ] {
        let mut command = std::process::Command::new(BIN);
        command
            .env_remove("REINFER_EWS_CONFIG")
            .env_remove("REINFER_API_TOKEN")
            .env_remove("AZURE_STORAGE_CONNECTION_STRING")
            .args(&args);
        let result = run(command);
        assert_eq!(
            result.code(),
            Some(2),
            "{args:?}: {}{}",
            result.stdout,
            result.stderr
        );
        assert!(
            result.stderr.contains(expected),
            "{args:?}: expected {expected:?} in: {}",
            result.stderr
        );
    }
}

#[test]
fn shards_split_mailboxes_without_overlap() {
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(6, 4)), Options::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config(&fake.url(), &addresses(&fake), json!({})),
    );
    let prefix = dir.path().join("sink");
    let mut seen: Vec<String> = Vec::new();
    for shard in ["exchange-sync-0", "exchange-sync-1", "exchange-sync-2"] {
        let before: std::collections::HashSet<String> = read_docs(&prefix)
            .iter()
            .map(|(_, d)| d["mailbox"].as_str().unwrap().to_owned())
            .collect();
        let args = [
            "--once",
            "--debug-level",
            "0",
            "--shard-name",
            shard,
            "--total-shards",
            "3",
        ];
        let result = run(command(&config, &prefix, &args));
        assert_eq!(result.code(), Some(0), "{}", result.stderr);
        let after: std::collections::HashSet<String> = read_docs(&prefix)
            .iter()
            .map(|(_, d)| d["mailbox"].as_str().unwrap().to_owned())
            .collect();
        for mailbox in after.difference(&before) {
            let index = shard.rsplit('-').next().unwrap().parse::<u32>().unwrap();
            assert_eq!(
                exchange_sync::shard::shard_of(mailbox, 3),
                index,
                "{mailbox}"
            );
            seen.push(mailbox.clone());
        }
    }
    seen.sort();
    let mut all = addresses(&fake);
    all.sort();
    assert_eq!(seen, all, "every mailbox synced by exactly one shard");
    assert_exact_copy(&fake.data(), &prefix);
}

#[test]
fn config_edits_apply_without_a_restart_and_bad_edits_are_rejected() {
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(2, 30)), Options::default()).unwrap();
    let all = addresses(&fake);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config(&fake.url(), &all[..1], json!({})));
    let prefix = dir.path().join("sink");
    let mut child = command(&path, &prefix, &["--debug-level", "0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let mailboxes_with_docs = |prefix: &std::path::Path| -> std::collections::HashSet<String> {
        read_docs(prefix)
            .iter()
            .map(|(_, d)| d["mailbox"].as_str().unwrap().to_owned())
            .collect()
    };
    wait_until(Duration::from_secs(60), "the first mailbox", || {
        mailboxes_with_docs(&prefix).len() == 1
    });

    // A broken edit is rejected; the running configuration keeps working.
    std::fs::write(&path, b"{ not json").unwrap();
    // Then a valid edit adds the second mailbox.
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = crossbeam_channel::unbounded();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let line = lines_rx.recv_deadline(deadline).unwrap_or_else(|_| {
            panic!("the broken edit was not reported; stderr so far: {seen:#?}")
        });
        if line.contains("rejected, keeping the running one") {
            break;
        }
        seen.push(line);
    }
    write_config(dir.path(), &config(&fake.url(), &all, json!({})));
    let total = emails_to_copy(&fake.data());
    wait_until(
        Duration::from_secs(60),
        "every email of the added mailbox",
        || read_docs(&prefix).len() == total,
    );
    terminate(&mut child);
    reader.join().unwrap();
    assert_exact_copy(&fake.data(), &prefix);
}

/// Waits until every mailbox was polled twice (two FindFolders each) without any FindItem;
/// returns the FindItem count then.
fn wait_for_polls_without_listings(fake: &FakeExchange, mailboxes: usize) -> u64 {
    let (mut find_items, mut find_folders_then) = (u64::MAX, 0);
    wait_until(Duration::from_secs(60), "polls that list no folder", || {
        let stats = fake.stats();
        let (items, folders) = (stats.operation("FindItem"), stats.operation("FindFolder"));
        if items != find_items {
            (find_items, find_folders_then) = (items, folders);
        }
        folders >= find_folders_then + 2 * mailboxes as u64
    });
    find_items
}

#[test]
fn the_daemon_lists_only_folders_that_changed_since_their_last_complete_listing() {
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(2, 40)), Options::default()).unwrap();
    let all = addresses(&fake);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config(&fake.url(), &all, json!({})));
    let prefix = dir.path().join("sink");
    let mut child = command(&path, &prefix, &["--debug-level", "0"])
        .spawn()
        .unwrap();
    let _guard = KillOnPanic(child.id());
    let data = fake.data();
    let total = emails_to_copy(&data);
    wait_until(Duration::from_secs(60), "the first copy", || {
        read_docs(&prefix).len() == total
    });
    // Polls go on (one FindFolder per mailbox each second) but list nothing once every
    // folder's change time is covered by a listing. The generated folders last changed long
    // before the server's clock (its `Date`), so their first listing already covers them.
    let before = wait_for_polls_without_listings(&fake, all.len());
    let mail_folders: usize = data
        .mailboxes
        .iter()
        .map(|m| m.folders.iter().filter(|f| m.is_synced_folder(f)).count())
        .sum();
    assert_eq!(before, mail_folders as u64, "one FindItem per mail folder");

    // New mail in one folder: it is copied, and only that folder is listed again.
    let mailbox = &data.mailboxes[0];
    let inbox = mailbox
        .folders
        .iter()
        .find(|f| f.display_name == "Inbox")
        .unwrap();
    let received = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let mime = b"Message-ID: <arrived-later@test>\r\nSubject: later\r\n\r\nx\r\n".to_vec();
    fake.add_item(
        &mailbox.address,
        &inbox.id,
        fake_exchange::make_item(5000, received, mime),
    );
    wait_until(Duration::from_secs(60), "the new email", || {
        read_docs(&prefix)
            .iter()
            .any(|(_, doc)| doc["id"] == "<arrived-later@test>")
    });
    let after = wait_for_polls_without_listings(&fake, all.len());
    // Listed until a listing began well after the new change time was first seen, or the
    // server's clock vouched for it: 2 to 4 times, against 40-odd mail folders polled.
    assert!(
        (1..=4).contains(&(after - before)),
        "{} listings for one changed folder",
        after - before
    );
    terminate(&mut child);
    assert_exact_copy(&fake.data(), &prefix);
}

#[test]
fn a_server_that_refuses_folder_change_times_still_gets_every_email() {
    let fake =
        FakeExchange::start(fake_exchange::generate(&spec(2, 40)), Options::default()).unwrap();
    fake.set_fault(fake_exchange::Fault {
        refused_folder_tags: vec![0x670A],
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config(&fake.url(), &addresses(&fake), json!({})),
    );
    let prefix = dir.path().join("sink");
    let run = run_once(&path, &prefix);
    assert!(
        run.stderr.contains("refuses PR_LOCAL_COMMIT_TIME_MAX"),
        "{}",
        run.stderr
    );
    assert!(
        fake.stats()
            .message_error_count("ErrorInvalidPropertyRequest")
            >= 1
    );
    assert_exact_copy(&fake.data(), &prefix);
}
