//! The Graph source against the fake Graph (fake-graph) and the fake token endpoint.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_exchange::{GenSpec, generate};
use fake_graph::{FakeGraph, Fault, Options, RetryAfter, rest_id};
use fake_login::{App, FakeLogin};
use time::macros::datetime;

use super::*;
use crate::auth::TokenProvider;
use crate::auth::client_credentials::{ClientCredential, ClientCredentials};
use crate::secret::Secret;
use crate::shutdown::StopFlag;

const SECRET: &str = "graph-test-s3cret";
const MAILBOX: &str = "user1@example.test";

struct Setup {
    login: Arc<FakeLogin>,
    graph: FakeGraph,
    tokens: Arc<ClientCredentials>,
    mailboxes: Arc<GraphMailboxes>,
    retries: Arc<Mutex<Vec<String>>>,
}

fn setup(emails: usize, options: Options) -> Setup {
    let login =
        Arc::new(FakeLogin::start("contoso", vec![App::with_secret("app", SECRET)]).unwrap());
    let data = generate(&GenSpec {
        seed: 11,
        mailboxes: 2,
        emails_per_mailbox: emails,
        mime_bytes: 600,
        start: datetime!(2024-03-01 08:00 UTC),
    });
    let graph = FakeGraph::start(
        data,
        Options {
            login: Some(login.clone()),
            ..options
        },
    )
    .unwrap();
    let tokens = Arc::new(ClientCredentials::new(
        login.token_url(),
        "app".into(),
        ClientCredential::Secret(Secret::new(SECRET)),
        crate::exchange::transport::oauth_scope_for(&graph.url()).unwrap(),
    ));
    Setup {
        login,
        graph,
        tokens,
        mailboxes: Arc::new(GraphMailboxes::new()),
        retries: Arc::default(),
    }
}

impl Setup {
    fn source(&self) -> GraphSource {
        let retries = self.retries.clone();
        GraphSource::new(GraphClient::new(
            crate::http::agent(&crate::http::AgentSettings::default()),
            &self.graph.url(),
            self.tokens.clone(),
            self.mailboxes.clone(),
            StopFlag::new(),
            Duration::ZERO,
            Arc::new(move |reason: &str| retries.lock().unwrap().push(reason.to_owned())),
        ))
    }
}

fn expected_paths(mailbox: &fake_exchange::Mailbox) -> Vec<Vec<String>> {
    let mut paths: Vec<Vec<String>> = mailbox
        .folders
        .iter()
        .filter(|f| mailbox.is_synced_folder(f))
        .map(|f| mailbox.mail_folder_path(&f.id))
        .collect();
    paths.sort();
    paths
}

#[test]
fn discovers_the_mail_folders_ews_would() {
    let setup = setup(
        40,
        Options {
            // Small pages make every folder listing follow next links.
            max_page: 3,
            ..Options::default()
        },
    );
    let mut source = setup.source();
    let folders = source.discover_folders(MAILBOX).unwrap();
    let mut paths: Vec<Vec<String>> = folders.iter().map(|f| f.path.to_vec()).collect();
    paths.sort();
    let data = setup.graph.data();
    assert_eq!(paths, expected_paths(&data.mailboxes[0]));
    assert!(paths.contains(&vec!["Inbox".into(), "Projects".into(), "2024".into()]));
    // Ids are Graph's: the REST form of the EWS folder ids.
    let inbox = data.mailboxes[0]
        .folders
        .iter()
        .find(|f| f.display_name == "Inbox")
        .unwrap();
    assert!(folders.iter().any(|f| *f.id == rest_id(&inbox.id)));
    assert!(
        setup.graph.stats().rejected.is_empty(),
        "{:?}",
        setup.graph.stats().rejected
    );
}

fn folder_info(setup: &Setup, name: &str) -> (FolderInfo, Vec<fake_exchange::Item>) {
    let data = setup.graph.data();
    let mailbox = &data.mailboxes[0];
    let folder = mailbox
        .folders
        .iter()
        .find(|f| f.display_name == name)
        .unwrap();
    let mut items = folder.items.clone();
    items.sort_by(|a, b| a.received.cmp(&b.received).then(a.id.cmp(&b.id)));
    (
        FolderInfo {
            id: rest_id(&folder.id).into(),
            path: mailbox.mail_folder_path(&folder.id).into(),
            changed_at: None,
            changed_at_settled: false,
        },
        items,
    )
}

#[test]
fn lists_since_a_watermark_in_order_with_limits() {
    let setup = setup(
        300,
        Options {
            max_page: 7,
            ..Options::default()
        },
    );
    let (inbox, items) = folder_info(&setup, "Inbox");
    assert!(items.len() > 40, "{}", items.len());
    let mut source = setup.source();
    let epoch = datetime!(2000-01-01 0:00 UTC);
    let all = source
        .list_items(MAILBOX, &inbox, epoch, None, &HashSet::new(), 100_000)
        .unwrap();
    assert!(all.complete);
    let ids: Vec<String> = all.items.iter().map(|i| i.id.clone()).collect();
    let expected: Vec<String> = items.iter().map(|i| rest_id(&i.id)).collect();
    assert_eq!(ids.len(), expected.len());
    assert_eq!(
        ids.iter().collect::<HashSet<_>>(),
        expected.iter().collect::<HashSet<_>>()
    );
    assert!(all.items.windows(2).all(|w| w[0].received <= w[1].received));
    assert_eq!(all.items[0].size_bytes, Some(items[0].mime.len() as u64));

    // A limit: incomplete, and the next listing from the newest second carries on.
    let first = source
        .list_items(MAILBOX, &inbox, epoch, None, &HashSet::new(), 10)
        .unwrap();
    assert_eq!((first.items.len(), first.complete), (10, false));
    let newest = first.items.last().unwrap().received;
    let at_newest: HashSet<String> = first
        .items
        .iter()
        .filter(|i| i.received == newest)
        .map(|i| i.id.clone())
        .collect();
    let rest = source
        .list_items(MAILBOX, &inbox, newest, None, &at_newest, 100_000)
        .unwrap();
    assert_eq!(first.items.len() + rest.items.len(), expected.len());

    // `until` bounds the listing.
    let until = all.items[all.items.len() / 2].received;
    let bounded = source
        .list_items(
            MAILBOX,
            &inbox,
            epoch,
            Some(until),
            &HashSet::new(),
            100_000,
        )
        .unwrap();
    assert!(bounded.complete && bounded.items.iter().all(|i| i.received <= until));
    assert!(bounded.items.len() >= all.items.len() / 2);
    assert!(
        setup.graph.stats().rejected.is_empty(),
        "{:?}",
        setup.graph.stats().rejected
    );
}

#[test]
fn fetches_mime_and_metadata_and_skips_vanished_items() {
    let setup = setup(60, Options::default());
    let (inbox, items) = folder_info(&setup, "Inbox");
    let doomed = items[1].id.clone();
    setup.graph.set_fault(Fault {
        vanish_after_list: vec![doomed.clone()],
        ..Fault::default()
    });
    let mut source = setup.source();
    let listing = source
        .list_items(
            MAILBOX,
            &inbox,
            datetime!(2000-01-01 0:00 UTC),
            None,
            &HashSet::new(),
            1000,
        )
        .unwrap();
    let outcomes = source.fetch_items(MAILBOX, &listing.items).unwrap();
    assert_eq!(outcomes.len(), listing.items.len());
    let mut skipped = 0;
    for (item_ref, outcome) in listing.items.iter().zip(outcomes) {
        let served = items
            .iter()
            .find(|i| rest_id(&i.id) == item_ref.id)
            .unwrap();
        match outcome {
            ItemOutcome::Fetched(fetched) => {
                assert_eq!(fetched.mime, served.mime);
                assert_eq!(fetched.item_id, served.id, "EWS form of the id");
                assert_eq!(fetched.internet_message_id, served.message_id);
                assert_eq!(
                    fetched.conversation_id.as_deref(),
                    Some(served.conversation_id.as_str())
                );
                assert_eq!(
                    fetched.conversation_topic.as_deref(),
                    Some(served.conversation_topic.as_str())
                );
                assert_eq!(fetched.importance.as_deref(), Some(served.importance));
                assert_eq!(fetched.sensitivity.as_deref(), Some(served.sensitivity));
                assert_eq!(fetched.size_bytes, Some(served.size()));
                assert_eq!(fetched.is_read, Some(served.is_read));
                assert_eq!(fetched.has_attachments, Some(served.has_attachments()));
                assert_eq!(fetched.categories, served.categories);
                assert_eq!(fetched.attachments.len(), served.attachments.len());
            }
            ItemOutcome::Skipped { item_id, code, .. } => {
                assert_eq!(
                    (item_id, code.as_str()),
                    (rest_id(&doomed), "ErrorItemNotFound")
                );
                skipped += 1;
            }
        }
    }
    assert_eq!(skipped, 1);
    // Metadata came with the listing: one request per email, for its MIME.
    let stats = setup.graph.stats();
    assert_eq!(stats.route("message"), 0);
    assert_eq!(stats.route("$value"), listing.items.len() as u64);

    // Without a listing first, metadata is fetched per message.
    let mut fresh = setup.source();
    let outcomes = fresh.fetch_items(MAILBOX, &listing.items[..1]).unwrap();
    assert!(matches!(&outcomes[0], ItemOutcome::Fetched(f) if f.mime == items[0].mime));
    assert_eq!(setup.graph.stats().route("message"), 1);
}

#[test]
fn at_most_four_requests_per_mailbox_across_threads_and_pauses_are_shared() {
    let setup = setup(
        200,
        Options {
            latency: Duration::from_millis(15),
            ..Options::default()
        },
    );
    setup.graph.set_fault(Fault {
        throttle_every_nth: Some(25),
        retry_after: Some(RetryAfter::Value("0.2".into())),
        ..Fault::default()
    });
    let (inbox, items) = folder_info(&setup, "Inbox");
    let mut lister = setup.source();
    let listing = lister
        .list_items(
            MAILBOX,
            &inbox,
            datetime!(2000-01-01 0:00 UTC),
            None,
            &HashSet::new(),
            1000,
        )
        .unwrap();
    assert_eq!(listing.items.len(), items.len());
    let chunks: Vec<Vec<ItemRef>> = listing
        .items
        .chunks(listing.items.len().div_ceil(8))
        .map(<[_]>::to_vec)
        .collect();
    let fetched: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let mut source = setup.source();
                scope.spawn(move || {
                    source
                        .fetch_items(MAILBOX, chunk)
                        .unwrap()
                        .into_iter()
                        .filter(|o| matches!(o, ItemOutcome::Fetched(_)))
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(fetched, items.len());
    let stats = setup.graph.stats();
    assert!(!stats.back_offs.is_empty(), "no throttling was injected");
    assert!(
        stats.max_in_flight_any_mailbox() <= MAX_REQUESTS_PER_MAILBOX,
        "{:?}",
        stats.max_in_flight_per_mailbox
    );
    assert!(
        stats.max_in_flight_any_mailbox() >= 2,
        "threads did not overlap"
    );
    assert!(
        stats.back_off_violations.is_empty(),
        "{:?}",
        stats.back_off_violations
    );
    assert!(setup.retries.lock().unwrap().iter().any(|r| r == "http"));
}

#[test]
fn retry_after_as_an_http_date_is_honoured() {
    let setup = setup(20, Options::default());
    setup.graph.set_fault(Fault {
        unavailable_every_nth: Some(1),
        retry_after: Some(RetryAfter::HttpDateIn(Duration::from_millis(500))),
        ..Fault::default()
    });
    let mut source = setup.source();
    let started = std::time::Instant::now();
    // Every request fails: the source waits as told, then gives up after its budget…
    // so let the fault go away after a moment.
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            setup.graph.set_fault(Fault::default());
        });
        source.discover_folders(MAILBOX).unwrap();
    });
    assert!(started.elapsed() >= Duration::from_millis(500));
    let stats = setup.graph.stats();
    assert!(
        stats.back_off_violations.is_empty(),
        "{:?}",
        stats.back_off_violations
    );
}

#[test]
fn a_dead_token_is_refreshed_once() {
    let setup = setup(10, Options::default());
    let mut source = setup.source();
    source.discover_folders(MAILBOX).unwrap();
    let issued = setup.login.issued().len();
    setup.login.expire_issued_tokens();
    source.discover_folders(MAILBOX).unwrap();
    assert_eq!(setup.login.issued().len(), issued + 1);
    assert_eq!(setup.graph.stats().unauthorized, 1);
}

#[test]
fn a_token_graph_keeps_refusing_is_an_auth_error_without_the_token() {
    let setup = setup(10, Options::default());
    // Tokens for another resource: Graph refuses every one of them.
    let wrong = Arc::new(ClientCredentials::new(
        setup.login.token_url(),
        "app".into(),
        ClientCredential::Secret(Secret::new(SECRET)),
        "https://graph.microsoft.com/.default".into(),
    ));
    let token = wrong.token().unwrap();
    let mut source = GraphSource::new(GraphClient::new(
        crate::http::agent(&crate::http::AgentSettings::default()),
        &setup.graph.url(),
        wrong,
        setup.mailboxes.clone(),
        StopFlag::new(),
        Duration::ZERO,
        Arc::new(|_: &str| {}),
    ));
    let err = source.discover_folders(MAILBOX).unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("InvalidAuthenticationToken"), "{text}");
    assert!(
        !text.contains(token.expose()) && !text.contains(SECRET),
        "{text}"
    );
    assert_eq!(
        setup.graph.stats().unauthorized,
        2,
        "one refresh, then the error"
    );
}

#[test]
fn mailbox_errors_are_mailbox_fatal_codes() {
    let setup = setup(10, Options::default());
    setup.graph.set_fault(Fault {
        mailbox_not_enabled: vec![MAILBOX.into()],
        access_denied: vec!["user2@example.test".into()],
        ..Fault::default()
    });
    let mut source = setup.source();
    match source.discover_folders(MAILBOX).unwrap_err() {
        Error::Ews { code, message, .. } => {
            assert_eq!(code, "MailboxNotEnabledForRESTAPI");
            assert!(message.contains("on-premise"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let denied = source.discover_folders("user2@example.test").unwrap_err();
    assert!(denied.is_mailbox_fatal(), "{denied:?}");
    assert!(!denied.is_retryable());
    // Neither was retried.
    assert_eq!(setup.graph.stats().requests, 2);
}

#[test]
fn next_links_to_another_host_are_refused() {
    let setup = setup(1, Options::default());
    let source = setup.source();
    assert!(
        source
            .client
            .check_link("http://evil.example/v1.0/users")
            .is_err()
    );
    assert!(
        source
            .client
            .check_link(&format!(
                "{}x/users",
                setup.graph.url().trim_end_matches("/v1.0")
            ))
            .is_err()
    );
    let good = format!("{}/users/a?%24skip=10", setup.graph.url());
    assert_eq!(source.client.check_link(&good).unwrap(), good);
}

#[test]
fn mailbox_concurrency_refusals_lower_the_limit() {
    let setup = setup(
        10,
        Options {
            latency: Duration::from_millis(30),
            ..Options::default()
        },
    );
    // A stricter mailbox than Exchange Online's four.
    setup.graph.set_fault(Fault {
        mailbox_concurrency_limit: Some(2),
        retry_after: Some(RetryAfter::Value("0.05".into())),
        ..Fault::default()
    });
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let mut source = setup.source();
            scope.spawn(move || source.discover_folders(MAILBOX).unwrap());
        }
    });
    let stats = setup.graph.stats();
    assert!(
        stats
            .injected
            .iter()
            .any(|i| i.contains("ApplicationThrottled")),
        "{:?}",
        stats.injected
    );
    assert!(setup.mailboxes.limits(MAILBOX).requests.current() < MAX_REQUESTS_PER_MAILBOX);
}
