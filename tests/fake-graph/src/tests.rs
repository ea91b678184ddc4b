//! The fake against plain HTTP requests: shapes, paging, the rules Graph enforces, tokens,
//! faults, and the bearer front.

use std::sync::Arc;
use std::time::Duration;

use fake_exchange::{GenSpec, generate};
use fake_login::{App, FakeLogin};
use serde_json::Value;

use super::*;

fn data() -> fake_exchange::DataSet {
    generate(&GenSpec {
        seed: 3,
        mailboxes: 2,
        emails_per_mailbox: 60,
        mime_bytes: 800,
        ..GenSpec::default()
    })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET with an optional bearer token: status, headers we care about, body.
fn get(url: &str, token: Option<&str>) -> (u16, Option<String>, Vec<u8>) {
    let mut request = agent().get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    (status, retry_after, body)
}

fn json(url: &str) -> (u16, Value) {
    let (status, _, body) = get(url, None);
    (status, serde_json::from_slice(&body).unwrap())
}

fn token(login: &FakeLogin, scope: &str) -> String {
    let form = format!(
        "grant_type=client_credentials&client_id=app&client_secret=s3cret&scope={}",
        scope.replace(':', "%3A").replace('/', "%2F")
    );
    let mut response = agent()
        .post(login.token_url())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(form)
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

const MAILBOX: &str = "user1@example.test";

#[test]
fn folders_page_with_links_and_mark_hidden_and_search_folders() {
    let graph = FakeGraph::start(data(), Options::default()).unwrap();
    let base = format!("{}/users/{MAILBOX}", graph.url());
    let mut url = format!("{base}/mailFolders?$top=3&includeHiddenFolders=true");
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let (status, page) = json(&url);
        assert_eq!(status, 200, "{page}");
        assert!(
            page["@odata.context"]
                .as_str()
                .unwrap()
                .contains("/$metadata#users('")
        );
        pages += 1;
        for folder in page["value"].as_array().unwrap() {
            names.push((
                folder["displayName"].as_str().unwrap().to_owned(),
                folder["isHidden"].as_bool().unwrap(),
                folder["@odata.type"].as_str().map(str::to_owned),
            ));
        }
        match page["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(next.contains("%24skiptoken="), "{next}");
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert!(pages > 3);
    let find = |name: &str| names.iter().find(|(n, _, _)| n == name).cloned();
    assert!(find("Inbox").is_some());
    assert!(find("Calendar").is_none(), "calendars are not mail folders");
    assert_eq!(find("Legacy Hidden Mail").map(|f| f.1), Some(true));
    assert_eq!(
        find("Unread Mail").and_then(|f| f.2).as_deref(),
        Some("#microsoft.graph.mailSearchFolder")
    );
    // Without includeHiddenFolders hidden folders are left out.
    let (_, page) = json(&format!("{base}/mailFolders?$top=100"));
    assert!(
        !page["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["isHidden"] == true)
    );
    // wellKnownName is beta-only.
    let (status, body) = json(&format!("{base}/mailFolders?$select=id,wellKnownName"));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "RequestBroker--ParseUri");
}

#[test]
fn messages_follow_graph_rules_and_page() {
    let graph = FakeGraph::start(data(), Options::default()).unwrap();
    let set = graph.data();
    let mailbox = &set.mailboxes[0];
    let inbox = mailbox
        .folders
        .iter()
        .find(|f| f.display_name == "Inbox")
        .unwrap();
    let base = format!(
        "{}/users/{MAILBOX}/mailFolders/{}/messages",
        graph.url(),
        rest_id(&inbox.id)
    );
    let filter = "$filter=receivedDateTime%20ge%202000-01-01T00:00:00Z";

    // $orderby on a property the filter does not start with.
    let (status, body) = json(&format!("{base}?{filter}&$orderby=sentDateTime%20asc"));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("InefficientFilter"))
    );
    // Properties Graph does not have.
    let (status, body) = json(&format!("{base}?$select=id,size"));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("RequestBroker--ParseUri"))
    );
    let (status, _) = json(&format!("{base}?$top=1001"));
    assert_eq!(status, 400);
    assert_eq!(graph.stats().rejected.len(), 3);

    let mut url = format!(
        "{base}?{filter}&$orderby=receivedDateTime%20asc&$top=7&$select=id,receivedDateTime&$expand=singleValueExtendedProperties($filter=id%20eq%20'Integer%200x0E08')"
    );
    let mut seen = Vec::new();
    loop {
        let (status, page) = json(&url);
        assert_eq!(status, 200, "{page}");
        for m in page["value"].as_array().unwrap() {
            assert!(m.get("subject").is_none(), "not selected: {m}");
            assert_eq!(m["singleValueExtendedProperties"][0]["id"], "Integer 0xe08");
            seen.push(m["receivedDateTime"].as_str().unwrap().to_owned());
        }
        match page["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(next.contains("%24skip="), "{next}");
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), inbox.items.len());
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "ascending");

    let item = &inbox.items[0];
    let (status, _, mime) = get(
        &format!(
            "{}/users/{MAILBOX}/messages/{}/$value",
            graph.url(),
            rest_id(&item.id)
        ),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(mime, item.mime);
}

#[test]
fn tokens_are_checked() {
    let login =
        Arc::new(FakeLogin::start("contoso", vec![App::with_secret("app", "s3cret")]).unwrap());
    let graph = FakeGraph::start(
        data(),
        Options {
            login: Some(login.clone()),
            ..Options::default()
        },
    )
    .unwrap();
    let url = format!("{}/users/{MAILBOX}/mailFolders", graph.url());
    assert_eq!(get(&url, None).0, 401);
    let wrong_scope = token(&login, "https://graph.microsoft.com/.default");
    assert_eq!(get(&url, Some(&wrong_scope)).0, 401);
    let good = token(&login, &graph.scope());
    assert_eq!(get(&url, Some(&good)).0, 200);
    login.expire_issued_tokens();
    let (status, _, body) = get(&url, Some(&good));
    assert_eq!(status, 401);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(graph.stats().unauthorized, 3);
}

#[test]
fn faults_are_injected_per_mailbox() {
    let graph = FakeGraph::start(data(), Options::default()).unwrap();
    let url = |mailbox: &str| format!("{}/users/{mailbox}/mailFolders", graph.url());
    graph.set_fault(Fault {
        mailbox_not_enabled: vec!["user2@example.test".into()],
        throttle_every_nth: Some(2),
        retry_after: Some(RetryAfter::Value("0.6".into())),
        ..Fault::default()
    });
    let (status, body) = json(&url("user2@example.test"));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("MailboxNotEnabledForRESTAPI"))
    );
    let (status, retry_after, _) = get(&url(MAILBOX), None);
    assert_eq!((status, retry_after.as_deref()), (429, Some("0.6")));
    // Asking again at once is a back-off violation.
    assert_eq!(get(&url(MAILBOX), None).0, 200);
    assert_eq!(
        graph.stats().back_off_violations.len(),
        0,
        "within the grace period"
    );
    std::thread::sleep(BACK_OFF_GRACE + Duration::from_millis(50));
    get(&url(MAILBOX), None);
    assert_eq!(graph.stats().back_off_violations.len(), 1);

    graph.set_fault(Fault {
        throttle_every_nth: Some(1),
        retry_after: Some(RetryAfter::HttpDateIn(Duration::from_secs(2))),
        ..Fault::default()
    });
    let (status, retry_after, _) = get(&url(MAILBOX), None);
    assert_eq!(status, 429);
    assert!(retry_after.unwrap().ends_with(" GMT"));

    graph.set_fault(Fault {
        gateway_timeout_every_nth: Some(1),
        ..Fault::default()
    });
    let (status, retry_after, _) = get(&url(MAILBOX), None);
    assert_eq!((status, retry_after), (504, None));
}

#[test]
fn listed_items_can_vanish_before_the_fetch() {
    let graph = FakeGraph::start(data(), Options::default()).unwrap();
    let set = graph.data();
    let inbox = set.mailboxes[0]
        .folders
        .iter()
        .find(|f| f.display_name == "Inbox")
        .unwrap();
    let doomed = inbox.items[0].id.clone();
    graph.set_fault(Fault {
        vanish_after_list: vec![doomed.clone()],
        ..Fault::default()
    });
    let (status, page) = json(&format!(
        "{}/users/{MAILBOX}/mailFolders/{}/messages?$top=1000&$select=id",
        graph.url(),
        rest_id(&inbox.id)
    ));
    assert_eq!(status, 200);
    assert!(
        page["value"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == rest_id(&doomed).as_str())
    );
    let (status, body) = json(&format!(
        "{}/users/{MAILBOX}/messages/{}/$value",
        graph.url(),
        rest_id(&doomed)
    ));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("ErrorItemNotFound"))
    );
    assert_eq!(graph.stats().vanished, vec![rest_id(&doomed)]);
}

#[test]
fn concurrency_per_mailbox_is_measured() {
    let graph = Arc::new(
        FakeGraph::start(
            data(),
            Options {
                latency: Duration::from_millis(100),
                ..Options::default()
            },
        )
        .unwrap(),
    );
    graph.set_fault(Fault {
        mailbox_concurrency_limit: Some(4),
        ..Fault::default()
    });
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let url = format!("{}/users/{MAILBOX}/mailFolders", graph.url());
            std::thread::spawn(move || get(&url, None).0)
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let stats = graph.stats();
    assert_eq!(stats.max_in_flight_any_mailbox(), 6, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
}

#[test]
fn bearer_front_passes_valid_tokens_to_the_ews_fake() {
    let login =
        Arc::new(FakeLogin::start("contoso", vec![App::with_secret("app", "s3cret")]).unwrap());
    let ews =
        fake_exchange::FakeExchange::start(data(), fake_exchange::Options::default()).unwrap();
    let front = BearerFront::start(&ews.url(), login.clone()).unwrap();
    let body = concat!(
        r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" "#,
        r#"xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">"#,
        r#"<soap:Header><t:RequestServerVersion Version="Exchange2013_SP1"/><t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>user1@example.test</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></soap:Header>"#,
        r#"<soap:Body><m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"#,
        r#"<m:FolderIds><t:DistinguishedFolderId Id="msgfolderroot"/></m:FolderIds></m:GetFolder></soap:Body></soap:Envelope>"#
    );
    let post = |token: Option<&str>| {
        let mut request = agent()
            .post(front.url())
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("X-AnchorMailbox", MAILBOX);
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let mut response = request.send(body).unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    };
    assert_eq!(post(None).0, 401);
    let good = token(&login, &front.scope());
    let (status, text) = post(Some(&good));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("NoError"), "{text}");
    let stats = front.stats();
    assert_eq!((stats.forwarded, stats.unauthorized), (1, 1));
    assert_eq!(stats.anchors, vec![Some(MAILBOX.to_owned())]);
}

#[test]
fn a_retry_on_the_same_connection_gets_no_grace() {
    let graph = FakeGraph::start(data(), Options::default()).unwrap();
    let url = format!("{}/users/{MAILBOX}/mailFolders", graph.url());
    graph.set_fault(Fault {
        throttle_every_nth: Some(1),
        retry_after: Some(RetryAfter::Value("0.5".into())),
        ..Fault::default()
    });
    let client = agent();
    let status = |client: &ureq::Agent| {
        let mut response = client.get(&url).call().unwrap();
        let _ = response.body_mut().read_to_vec();
        response.status().as_u16()
    };
    assert_eq!(status(&client), 429);
    graph.set_fault(Fault::default());
    assert_eq!(status(&client), 200);
    let violations = graph.stats().back_off_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("same connection"), "{violations:?}");
}
