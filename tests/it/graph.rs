//! The binary with `microsoft_api: "graph"` against the fake Graph (fake-graph) and the fake
//! token endpoint (fake-login), into the local sink: exact copies, restarts, Graph's
//! per-mailbox concurrency limit under throttling, certificate credentials, a mailbox Graph
//! refuses, a message deleted between listing and fetching, and documents identical to EWS's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fake_exchange::{DataSet, FakeExchange, GenSpec};
use fake_graph::{FakeGraph, Fault, Options, RetryAfter, rest_id};
use fake_login::{App, FakeLogin};
use serde_json::{Value, json};
use time::macros::datetime;

use crate::support::*;

const CLIENT_ID: &str = "5a1e0c1d-0000-4000-8000-000000000001";
const SECRET: &str = "graph-Cl1ent~Secret.value";

fn data(mailboxes: usize, emails: usize) -> DataSet {
    fake_exchange::generate(&GenSpec {
        seed: 21,
        mailboxes,
        emails_per_mailbox: emails,
        mime_bytes: 1200,
        start: datetime!(2024-03-01 08:00 UTC),
    })
}

fn login_with_secret() -> Arc<FakeLogin> {
    Arc::new(FakeLogin::start("contoso", vec![App::with_secret(CLIENT_ID, SECRET)]).unwrap())
}

fn start_graph(data: DataSet, login: &Arc<FakeLogin>, options: Options) -> FakeGraph {
    FakeGraph::start(
        data,
        Options {
            login: Some(login.clone()),
            ..options
        },
    )
    .unwrap()
}

fn mailboxes_of(data: &DataSet) -> Vec<String> {
    data.mailboxes.iter().map(|m| m.address.clone()).collect()
}

/// A Graph config with the client secret; `extra` keys are merged in.
fn graph_config(graph: &FakeGraph, login: &FakeLogin, mailboxes: &[String], extra: Value) -> Value {
    let server = json!({
        "microsoft_api": "graph",
        "graph_endpoint": graph.url(),
        "auth_type": "oauth2",
        "auth_oauth_authority": login.authority(),
        "auth_oauth_client_id": CLIENT_ID,
        "auth_oauth_client_secret": SECRET,
    });
    config_with(server, mailboxes, extra)
}

fn assert_clean(graph: &FakeGraph) {
    let stats = graph.stats();
    assert!(
        stats.rejected.is_empty(),
        "requests Graph would refuse: {:?}",
        stats.rejected
    );
    assert!(
        stats.back_off_violations.is_empty(),
        "pauses not honoured: {:?}",
        stats.back_off_violations
    );
    assert!(
        stats.max_in_flight_any_mailbox() <= 4,
        "more than 4 requests in flight for one mailbox: {:?}",
        stats.max_in_flight_per_mailbox
    );
}

#[test]
fn graph_once_copies_two_mailboxes_exactly() {
    let login = login_with_secret();
    let graph = start_graph(
        data(2, 300),
        &login,
        Options {
            // Small server pages: folder listings follow next links, message listings page
            // by received time and follow next links within a second.
            max_page: 4,
            ..Options::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &graph_config(
            &graph,
            &login,
            &mailboxes_of(&graph.data()),
            json!({"emails_per_folder": 50, "reinfer_batch_size": 20}),
        ),
    );
    let prefix = dir.path().join("sink");
    run_once(&config, &prefix);
    let copied = assert_exact_copy(&graph.data(), &prefix);
    assert!(copied >= 550, "{copied}");
    assert_clean(&graph);
    let stats = graph.stats();
    assert!(stats.route("childFolders") >= 3, "{:?}", stats.routes);
    assert!(
        stats.log.iter().any(|r| r.target.contains("%24skiptoken=")),
        "folder listings never followed a next link"
    );
    assert!(
        stats.log.iter().any(|r| r.target.contains("%24skip=")),
        "message listings never followed a next link"
    );
    assert!(login.issued().iter().all(|t| t.scope == graph.scope()));

    // A second run finds nothing new and copies nothing again.
    run_once(&config, &prefix);
    assert_exact_copy(&graph.data(), &prefix);
}

#[test]
fn graph_restart_after_kill_9_resumes_with_nothing_missing() {
    let login = login_with_secret();
    let graph = start_graph(
        data(2, 300),
        &login,
        Options {
            latency: Duration::from_millis(4),
            ..Options::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &graph_config(
            &graph,
            &login,
            &mailboxes_of(&graph.data()),
            json!({"reinfer_batch_size": 10, "max_concurrent_fetches": 2}),
        ),
    );
    let prefix = dir.path().join("sink");
    let mut child = command(&config, &prefix, &["--once", "--debug-level", "0"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "the first saved state", || {
        prefix.join("state").exists() && !files_under(&prefix.join("state")).is_empty()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let before = read_docs(&prefix).len();
    let total = emails_to_copy(&graph.data());
    assert!(
        before < total,
        "finished before the kill ({before} of {total})"
    );

    run_once(&config, &prefix);
    // Replays after the kill are upserts of the same id; the set must be complete.
    let docs = read_docs(&prefix);
    let mut unique: Vec<(String, String)> = docs
        .iter()
        .map(|(_, d)| {
            (
                d["mailbox"].as_str().unwrap().to_owned(),
                d["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), total);
    for mailbox in &graph.data().mailboxes {
        for (_, item) in mailbox.synced_items() {
            let key = (mailbox.address.clone(), expected_id(&mailbox.address, item));
            assert!(
                unique.binary_search(&key).is_ok(),
                "{} lost across kill -9",
                item.id
            );
        }
    }
    assert_clean(&graph);
}

#[test]
fn graph_never_gets_more_than_four_requests_per_mailbox_under_throttling() {
    let login = login_with_secret();
    let graph = start_graph(
        data(2, 250),
        &login,
        Options {
            latency: Duration::from_millis(8),
            ..Options::default()
        },
    );
    graph.set_fault(Fault {
        // Exchange Online's own answer beyond four…
        mailbox_concurrency_limit: Some(4),
        // …and throttling with every form of Retry-After along the way.
        throttle_every_nth: Some(40),
        unavailable_every_nth: Some(97),
        retry_after: Some(RetryAfter::Value("0.3".into())),
        ..Fault::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &graph_config(
            &graph,
            &login,
            &mailboxes_of(&graph.data()),
            json!({"max_concurrent_fetches": 8, "emails_per_folder": 40}),
        ),
    );
    let prefix = dir.path().join("sink");
    let run = run(command(&config, &prefix, &["--once", "--debug-level", "0"]));
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_exact_copy(&graph.data(), &prefix);
    let stats = graph.stats();
    assert!(!stats.back_offs.is_empty(), "no throttling happened");
    assert!(
        !stats
            .injected
            .iter()
            .any(|i| i.contains("ApplicationThrottled")),
        "Graph had to refuse requests beyond four: {:?}",
        stats.injected
    );
    assert!(
        stats.max_in_flight > 4,
        "8 fetchers never had more than 4 requests out ({}): the test proves nothing",
        stats.max_in_flight
    );
    assert_clean(&graph);
    assert!(
        run.stderr.contains("retry") && run.stderr.contains("429"),
        "retries are not logged with their reason:\n{}",
        run.stderr
    );

    // Retry-After as an HTTP date pauses the mailbox too.
    graph.set_fault(Fault {
        throttle_every_nth: Some(60),
        retry_after: Some(RetryAfter::HttpDateIn(Duration::from_millis(200))),
        ..Fault::default()
    });
    graph.reset_stats();
    let dir2 = tempfile::tempdir().unwrap();
    let config = write_config(
        dir2.path(),
        &graph_config(
            &graph,
            &login,
            &mailboxes_of(&graph.data())[..1],
            json!({"max_concurrent_fetches": 8}),
        ),
    );
    run_once(&config, &dir2.path().join("sink"));
    assert!(!graph.stats().back_offs.is_empty());
    assert_clean(&graph);
}

#[test]
fn graph_with_a_client_certificate() {
    let (pem, der, thumbprint) = fake_login::make_certificate("exchange-sync graph test");
    let login =
        Arc::new(FakeLogin::start("contoso", vec![App::with_certificate(CLIENT_ID, der)]).unwrap());
    let graph = start_graph(data(1, 60), &login, Options::default());
    let dir = tempfile::tempdir().unwrap();
    let mut config = graph_config(&graph, &login, &mailboxes_of(&graph.data()), json!({}));
    let map = config.as_object_mut().unwrap();
    map.remove("auth_oauth_client_secret");
    map.insert(
        "auth_oauth_client_credential_private_key".into(),
        json!(pem),
    );
    map.insert(
        "auth_oauth_client_credential_thumbprint".into(),
        json!(thumbprint),
    );
    let path = write_config(dir.path(), &config);
    let prefix = dir.path().join("sink");
    run_once(&path, &prefix);
    assert_exact_copy(&graph.data(), &prefix);
    let issued = login.issued();
    assert!(!issued.is_empty());
    for token in issued {
        assert_eq!(token.method, "assertion");
        assert_eq!(token.assertion_alg.as_deref(), Some("RS256"));
        assert_eq!(token.assertion_thumbprint_header.as_deref(), Some("x5t"));
    }
}

#[test]
fn a_mailbox_graph_refuses_fails_alone() {
    let login = login_with_secret();
    let set = data(2, 80);
    let graph = start_graph(set.clone(), &login, Options::default());
    let refused = set.mailboxes[1].address.clone();
    graph.set_fault(Fault {
        mailbox_not_enabled: vec![refused.clone()],
        ..Fault::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &graph_config(&graph, &login, &mailboxes_of(&set), json!({})),
    );
    let prefix = dir.path().join("sink");
    let run = run(command(&config, &prefix, &["--once", "--debug-level", "0"]));
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("mailbox={refused}"))
            && run.stderr.contains("MailboxNotEnabledForRESTAPI"),
        "{}",
        run.stderr
    );
    // The other mailbox is complete, and nothing of the refused one was stored.
    let only_first = DataSet {
        mailboxes: vec![set.mailboxes[0].clone()],
    };
    assert_exact_copy(&only_first, &prefix);
    // Refused at once, not retried.
    let refused_requests = graph
        .stats()
        .log
        .iter()
        .filter(|r| r.mailbox.as_deref() == Some(refused.as_str()))
        .count();
    assert!(
        refused_requests <= 3,
        "{refused_requests} requests for a refused mailbox"
    );
}

#[test]
fn a_message_deleted_between_listing_and_fetching_is_skipped_and_named() {
    let login = login_with_secret();
    let set = data(1, 60);
    let graph = start_graph(set.clone(), &login, Options::default());
    let (_, doomed) = set.mailboxes[0]
        .synced_items()
        .find(|(f, _)| f.display_name == "Inbox")
        .unwrap();
    graph.set_fault(Fault {
        vanish_after_list: vec![doomed.id.clone()],
        ..Fault::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &graph_config(&graph, &login, &mailboxes_of(&set), json!({})),
    );
    let prefix = dir.path().join("sink");
    let run = run_once(&config, &prefix);
    assert_eq!(graph.stats().vanished, vec![rest_id(&doomed.id)]);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains(&rest_id(&doomed.id)))
        .unwrap_or_else(|| panic!("the skipped message is not named:\n{}", run.stderr));
    assert!(
        line.contains("ErrorItemNotFound") && line.contains("Inbox"),
        "{line}"
    );
    // Everything else arrived (the fake's data no longer holds the deleted message).
    assert_exact_copy(&graph.data(), &prefix);
}

/// Every stored document by (mailbox, id).
fn documents(prefix: &Path) -> std::collections::BTreeMap<(String, String), Value> {
    read_docs(prefix)
        .into_iter()
        .map(|(_, d)| {
            (
                (
                    d["mailbox"].as_str().unwrap().to_owned(),
                    d["id"].as_str().unwrap().to_owned(),
                ),
                d,
            )
        })
        .collect()
}

#[test]
fn the_same_email_through_ews_and_graph_gives_the_same_document() {
    let mut set = data(1, 40);
    // One message with everything: attachments (one inline, one attached message),
    // categories, sensitivity, importance, read, a reply topic.
    let mime = concat!(
        "Message-ID: <parity-1@contoso.example>\r\n",
        "Date: Fri, 01 Mar 2024 09:00:00 +0100\r\n",
        "From: Alice <alice@contoso.example>\r\n",
        "To: user1@example.test\r\n",
        "Subject: RE: Budget 2025 review\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
        "\r\n",
        "Looks good — thanks.\r\n"
    );
    let mut item = fake_exchange::make_item(
        4242,
        datetime!(2024-03-01 08:00:07.250 UTC),
        mime.as_bytes().to_vec(),
    );
    item.categories = vec!["Red category".into(), "Finance".into()];
    item.sensitivity = "Confidential";
    item.importance = "High";
    item.is_read = true;
    item.attachments = vec![
        fake_exchange::Attachment {
            name: "budget.xlsx".into(),
            content_type: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
                .into(),
            size: 12345,
            inline: false,
        },
        fake_exchange::Attachment {
            name: "logo.png".into(),
            content_type: "image/png".into(),
            size: 999,
            inline: true,
        },
        fake_exchange::Attachment {
            name: "Original message".into(),
            content_type: "message/rfc822".into(),
            size: 4321,
            inline: false,
        },
    ];
    // An email without a Message-ID: its id is a hash of the item id, which must agree too.
    let mut anonymous = fake_exchange::make_item(
        4343,
        datetime!(2024-03-01 08:00:09 UTC),
        b"Subject: no id\r\n\r\nbody\r\n".to_vec(),
    );
    anonymous.message_id = None;
    let inbox = set.mailboxes[0]
        .folders
        .iter()
        .position(|f| f.display_name == "Inbox")
        .unwrap();
    // Same ids in both servers (the items get ids of this mailbox's Inbox).
    item.id =
        fake_exchange::ids::encode(fake_exchange::ids::IdKind::Item, 0, inbox as u16, 900_001);
    anonymous.id =
        fake_exchange::ids::encode(fake_exchange::ids::IdKind::Item, 0, inbox as u16, 900_002);
    set.mailboxes[0].folders[inbox].items.push(item);
    set.mailboxes[0].folders[inbox].items.push(anonymous);

    let ews = FakeExchange::start(set.clone(), fake_exchange::Options::default()).unwrap();
    // Characters XML forbids as real Exchange writes them (`&#x1F;`); the fake would leave
    // them out otherwise.
    ews.set_fault(fake_exchange::Fault {
        illegal_char_refs: true,
        ..fake_exchange::Fault::default()
    });
    let login = login_with_secret();
    let graph = start_graph(set.clone(), &login, Options::default());
    let mailboxes = mailboxes_of(&set);

    let dir = tempfile::tempdir().unwrap();
    let ews_dir = dir.path().join("ews");
    std::fs::create_dir_all(&ews_dir).unwrap();
    let ews_config = write_config(&ews_dir, &config(&ews.url(), &mailboxes, json!({})));
    run_once(&ews_config, &ews_dir.join("sink"));
    let graph_dir = dir.path().join("graph");
    std::fs::create_dir_all(&graph_dir).unwrap();
    let graph_config = write_config(
        &graph_dir,
        &graph_config(&graph, &login, &mailboxes, json!({})),
    );
    run_once(&graph_config, &graph_dir.join("sink"));

    let through_ews = documents(&ews_dir.join("sink"));
    let through_graph = documents(&graph_dir.join("sink"));
    assert_eq!(through_ews.len(), set.mailboxes[0].synced_items().count());
    assert_eq!(
        through_ews.keys().collect::<Vec<_>>(),
        through_graph.keys().collect::<Vec<_>>()
    );
    for (key, ews_doc) in &through_ews {
        assert_eq!(
            ews_doc, &through_graph[key],
            "{key:?} differs between EWS and Graph"
        );
    }
    let parity = &through_graph[&(
        mailboxes[0].clone(),
        "<parity-1@contoso.example>".to_owned(),
    )];
    let metadata = &parity["metadata"];
    assert_eq!(metadata["conversation_topic"], "Budget 2025 review");
    assert_eq!(metadata["sensitivity"], "Confidential");
    assert_eq!(metadata["importance"], "High");
    assert_eq!(metadata["categories"], json!(["Red category", "Finance"]));
    assert_eq!(metadata["size"], mime.len());
    assert_eq!(parity["attachments"][2]["content_type"], "message/rfc822");
    assert_eq!(parity["timestamp"], "2024-03-01T08:00:00Z");
    assert_eq!(metadata["received_at"], "2024-03-01T08:00:07Z");
}

#[test]
fn graph_logs_carry_no_secrets_even_at_full_debug() {
    let login = login_with_secret();
    let graph = start_graph(data(1, 20), &login, Options::default());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &graph_config(&graph, &login, &mailboxes_of(&graph.data()), json!({})),
    );
    let prefix = dir.path().join("sink");
    let run = run(command(&config, &prefix, &["--once", "--debug-level", "2"]));
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_exact_copy(&graph.data(), &prefix);
    let output = format!("{}{}", run.stdout, run.stderr);
    assert!(!output.contains(SECRET), "the client secret leaked");
    for token in login.issued() {
        assert!(
            !output.contains(&token.access_token),
            "a bearer token leaked"
        );
    }
}
