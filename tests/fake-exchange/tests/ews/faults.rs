//! Fault injection at the HTTP level: every kind of throttling (ErrorServerBusy fault, message
//! and inner error with their back-offs, and the stats that catch a client that does not wait;
//! HTTP 503 with Retry-After; ErrorExceededConnectionCount), HTML error pages, dropped and
//! truncated responses, vanished and corrupt items, batch timeouts and version refusal.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fake_exchange::{Arrival, BACK_OFF_GRACE, BackOff, BackOffKind, Fault, Options, Stats};
use roxmltree::Document;

use crate::common::*;

fn body() -> String {
    envelope(
        "",
        &format!(
            r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds>{}</m:FolderIds></m:GetFolder>"#,
            distinguished("inbox", Some("user1@example.test"))
        ),
    )
}

#[test]
fn server_busy_with_back_off() {
    let server = start(Options::default());
    server.set_fault(Fault {
        busy_every_nth: Some(2),
        busy_back_off_ms: 60_000,
        ..Fault::default()
    });
    let mut conn = Conn::open(addr(&server));
    assert_eq!(conn.soap(&body(), &[]).status, 200);
    let busy = conn.soap(&body(), &[]);
    assert_eq!(busy.status, 500);
    let text = busy.text();
    assert_eq!(fault_code(&text), "ErrorServerBusy");
    let doc = Document::parse(&text).unwrap();
    let value = elements(&doc, NS_T, "Value")[0];
    assert_eq!(value.attribute("Name"), Some("BackOffMilliseconds"));
    assert_eq!(value.text(), Some("60000"));
    // the connection stays usable; retrying at once is a violation the stats reveal
    assert_eq!(conn.soap(&body(), &[]).status, 200);
    let stats = server.stats();
    assert_eq!(stats.back_offs.len(), 1);
    assert_eq!(stats.back_offs[0].kind, BackOffKind::ServerBusy);
    assert_eq!(stats.back_off_violations().len(), 1);
}

#[test]
fn http_503_and_dropped_connections() {
    let server = start(Options::default());
    server.set_fault(Fault {
        http_503_every_nth: Some(1),
        ..Fault::default()
    });
    let resp = Conn::open(addr(&server)).soap(&body(), &[]);
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("Retry-After"), Some("1"));
    assert_eq!(server.stats().back_offs[0].kind, BackOffKind::Http503);

    server.set_fault(Fault {
        drop_every_nth: Some(2),
        ..Fault::default()
    });
    let mut conn = Conn::open(addr(&server));
    assert_eq!(conn.soap(&body(), &[]).status, 200);
    let dropped = conn.request(
        "POST",
        "/EWS/Exchange.asmx",
        &[("Content-Type", "text/xml")],
        body().as_bytes(),
    );
    assert!(
        dropped.is_err(),
        "connection should close without an answer"
    );
    assert_eq!(server.stats().dropped_connections, 1);
}

/// Ids of the first `n` items of mailbox 1's Inbox.
fn inbox_ids(server: &fake_exchange::FakeExchange, n: usize) -> Vec<String> {
    let data = server.data();
    let inbox = &data.mailboxes[0].folders[0];
    assert_eq!(inbox.display_name, "Inbox");
    assert!(inbox.items.len() >= n);
    inbox.items.iter().take(n).map(|i| i.id.clone()).collect()
}

fn refs(ids: &[String]) -> Vec<&str> {
    ids.iter().map(String::as_str).collect()
}

/// `t:Value` entries of the `MessageXml` of every response message.
fn message_values(doc: &Document) -> Vec<Vec<(String, String)>> {
    elements(doc, NS_M, "MessageXml")
        .into_iter()
        .map(|x| {
            x.children()
                .filter(|n| n.has_tag_name((NS_T, "Value")))
                .map(|v| {
                    (
                        v.attribute("Name").unwrap().to_string(),
                        v.text().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn vanished_items_are_listed_but_not_served() {
    let server = start(Options::default());
    let ids = inbox_ids(&server, 3);
    server.set_fault(Fault {
        vanish_on_get: vec![ids[1].clone()],
        ..Fault::default()
    });
    let resp = post(&server, &get_items(&refs(&ids)));
    assert_eq!(resp.status, 200);
    let text = resp.text();
    let doc = Document::parse(&text).unwrap();
    assert_eq!(
        messages(&doc),
        pairs(&[
            ("Success", "NoError"),
            ("Error", "ErrorItemNotFound"),
            ("Success", "NoError"),
        ])
    );
    // the shape of the documented partial failure: text, code, link key, empty m:Items
    assert!(text.contains(r#"<m:GetItemResponseMessage ResponseClass="Error"><m:MessageText>The specified object was not found in the store.</m:MessageText><m:ResponseCode>ErrorItemNotFound</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:Items/></m:GetItemResponseMessage>"#), "{text}");
    // FindItem still lists it
    let inbox = server.data().mailboxes[0].folders[0].id.clone();
    let find = envelope(
        "",
        &format!(
            r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned="1000" Offset="0" BasePoint="Beginning"/><m:ParentFolderIds><t:FolderId Id="{inbox}"/></m:ParentFolderIds></m:FindItem>"#
        ),
    );
    assert!(post(&server, &find).text().contains(&ids[1]));
    assert_eq!(server.stats().message_error_count("ErrorItemNotFound"), 1);
}

#[test]
fn corrupt_items_fail_in_a_batch_or_always() {
    let server = start(Options::default());
    let ids = inbox_ids(&server, 3);
    server.set_fault(Fault {
        corrupt_in_batch: vec![ids[0].clone()],
        corrupt_always: vec![ids[2].clone()],
        ..Fault::default()
    });
    let doc_of = |ids: &[&str]| {
        let resp = post(&server, &get_items(ids));
        assert_eq!(resp.status, 200);
        resp.text()
    };
    let text = doc_of(&refs(&ids));
    assert_eq!(
        messages(&Document::parse(&text).unwrap()),
        pairs(&[
            ("Error", "ErrorItemCorrupt"),
            ("Success", "NoError"),
            ("Error", "ErrorMimeContentConversionFailed"),
        ])
    );
    // alone, the batch-corrupt item is served with its MIME
    let text = doc_of(&[&ids[0]]);
    let doc = Document::parse(&text).unwrap();
    assert_eq!(messages(&doc), pairs(&[("Success", "NoError")]));
    let mime = STANDARD
        .decode(elements(&doc, NS_T, "MimeContent")[0].text().unwrap())
        .unwrap();
    let data = server.data();
    assert_eq!(mime, data.mailboxes[0].folders[0].items[0].mime);
    // alone, the always-corrupt one still fails
    let text = doc_of(&[&ids[2]]);
    assert_eq!(
        messages(&Document::parse(&text).unwrap()),
        pairs(&[("Error", "ErrorMimeContentConversionFailed")])
    );
    let stats = server.stats();
    assert_eq!(stats.message_error_count("ErrorItemCorrupt"), 1);
    assert_eq!(
        stats.message_error_count("ErrorMimeContentConversionFailed"),
        2
    );
    assert_eq!(stats.get_item_batch_sizes, vec![3, 1, 1]);
}

#[test]
fn truncated_responses_keep_a_matching_content_length() {
    let server = start(Options::default());
    let ids = inbox_ids(&server, 2);
    let request = get_items(&refs(&ids));
    let mut conn = Conn::open(addr(&server));
    let whole = conn.soap(&request, &[]).body;
    server.set_fault(Fault {
        malformed_responses: 2,
        ..Fault::default()
    });
    for _ in 0..2 {
        let resp = conn.soap(&request, &[]);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("Transfer-Encoding"), None);
        assert_eq!(
            resp.header("Content-Length"),
            Some(resp.body.len().to_string().as_str())
        );
        assert_eq!(resp.body, whole[..whole.len() / 2]);
        assert!(Document::parse(&String::from_utf8_lossy(&resp.body)).is_err());
    }
    // then whole answers again, on the same connection
    assert_eq!(conn.soap(&request, &[]).body, whole);
    assert_eq!(server.stats().truncated_responses, 2);
}

#[test]
fn large_batches_time_out() {
    let server = start(Options::default());
    let ids = inbox_ids(&server, 4);
    server.set_fault(Fault {
        timeout_above_batch: Some(3),
        ..Fault::default()
    });
    let resp = post(&server, &get_items(&refs(&ids)));
    assert_eq!(resp.status, 200);
    let text = resp.text();
    let doc = Document::parse(&text).unwrap();
    assert_eq!(
        messages(&doc),
        vec![pairs(&[("Error", "ErrorTimeoutExpired")])[0].clone(); 4]
    );
    assert!(elements(&doc, NS_T, "MimeContent").is_empty());
    let doc_text = post(&server, &get_items(&refs(&ids[..3]))).text();
    let doc = Document::parse(&doc_text).unwrap();
    assert_eq!(
        messages(&doc),
        vec![pairs(&[("Success", "NoError")])[0].clone(); 3]
    );
    let stats = server.stats();
    assert_eq!(stats.get_item_batch_sizes, vec![4, 3]);
    assert_eq!(stats.message_error_count("ErrorTimeoutExpired"), 1);
}

#[test]
fn newer_request_server_versions_are_refused() {
    let server = start(Options::default());
    server.set_fault(Fault {
        newest_server_version: Some("Exchange2010_SP2".into()),
        ..Fault::default()
    });
    let with_version = |v: &str| {
        body().replace(
            r#"<t:RequestServerVersion Version="Exchange2013_SP1"/>"#,
            &format!(r#"<t:RequestServerVersion Version="{v}"/>"#),
        )
    };
    for (version, status) in [
        ("Exchange2013_SP1", 500),
        ("Exchange2010_SP2", 200),
        ("Exchange2007_SP1", 200),
        ("Exchange2013", 500),
        ("Exchange2016", 500),
    ] {
        let resp = post(&server, &with_version(version));
        assert_eq!(resp.status, status, "{version}");
        if status == 500 {
            let text = resp.text();
            assert_eq!(fault_code(&text), "ErrorInvalidServerVersion");
            assert!(text.contains("<faultcode xmlns:a=\"http://schemas.microsoft.com/exchange/services/2006/types\">a:ErrorInvalidServerVersion</faultcode>"));
            assert!(text.contains("The specified server version is invalid."));
        }
    }
    let stats = server.stats();
    assert_eq!(stats.fault_count("ErrorInvalidServerVersion"), 3);
    let versions: Vec<&str> = stats
        .access
        .iter()
        .map(|a| a.server_version.as_str())
        .collect();
    assert_eq!(
        versions,
        [
            "Exchange2013_SP1",
            "Exchange2010_SP2",
            "Exchange2007_SP1",
            "Exchange2013",
            "Exchange2016"
        ]
    );
}

#[test]
#[should_panic(expected = "newest_server_version")]
fn an_unknown_newest_version_is_a_test_bug() {
    start(Options::default()).set_fault(Fault {
        newest_server_version: Some("Exchange2010SP2".into()),
        ..Fault::default()
    });
}

#[test]
fn requests_beyond_max_connections_are_refused() {
    // The latency keeps the first request in flight while the second arrives.
    let server = start(Options {
        latency: Duration::from_millis(400),
        ..Options::default()
    });
    server.set_fault(Fault {
        max_connections: Some(1),
        ..Fault::default()
    });
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| Conn::open(addr(&server)).soap(&body(), &[]));
        let b = scope.spawn(|| Conn::open(addr(&server)).soap(&body(), &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 500], "exactly one request is refused");
    let refused = if a.status == 500 { a } else { b };
    let text = refused.text();
    assert_eq!(fault_code(&text), "ErrorExceededConnectionCount");
    assert!(text.contains("You have exceeded the available concurrent connections for your account.  Try again once your other requests have completed."));
    let doc = Document::parse(&text).unwrap();
    let values: Vec<(String, String)> = elements(&doc, NS_T, "Value")
        .iter()
        .map(|v| {
            (
                v.attribute("Name").unwrap().to_string(),
                v.text().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        values,
        pairs(&[
            ("Policy", "MaxConcurrency"),
            ("MaxConcurrencyLimit", "1"),
            (
                "ErrorMessage",
                "This operation exceeds the throttling budget for policy part 'MaxConcurrency', policy value '1',  Budget type: 'Ews'.  Suggested backoff time 0 ms."
            ),
        ])
    );
    // alone again: served
    assert_eq!(post(&server, &body()).status, 200);
    let stats = server.stats();
    assert_eq!(stats.fault_count("ErrorExceededConnectionCount"), 1);
    let mut seen: Vec<usize> = stats.arrivals.iter().map(|a| a.in_flight).collect();
    seen.sort();
    assert_eq!(seen, [1, 1, 2]);
}

#[test]
fn server_busy_inside_response_messages() {
    let server = start(Options::default());
    let ids = inbox_ids(&server, 2);
    server.set_fault(Fault {
        busy_in_message_every_nth: Some(2),
        busy_back_off_ms: 60_000,
        ..Fault::default()
    });
    let mut conn = Conn::open(addr(&server));
    assert_eq!(conn.soap(&get_items(&refs(&ids)), &[]).status, 200);
    let resp = conn.soap(&get_items(&refs(&ids)), &[]);
    assert_eq!(
        resp.status, 200,
        "message-level throttling comes with HTTP 200"
    );
    let text = resp.text();
    let doc = Document::parse(&text).unwrap();
    assert_eq!(
        messages(&doc),
        vec![pairs(&[("Error", "ErrorServerBusy")])[0].clone(); 2]
    );
    assert_eq!(
        message_values(&doc),
        vec![pairs(&[("BackOffMilliseconds", "60000")]); 2]
    );
    assert!(text.contains("<m:MessageText>The server cannot service this request right now. Try again later.</m:MessageText>"));
    assert!(elements(&doc, NS_T, "MimeContent").is_empty());
    // a GetFolder gets one message per folder id
    assert_eq!(conn.soap(&body(), &[]).status, 200);
    let text = conn.soap(&body(), &[]).text();
    let doc = Document::parse(&text).unwrap();
    assert_eq!(messages(&doc), pairs(&[("Error", "ErrorServerBusy")]));
    assert!(text.contains("<m:Folders/>"));
    let stats = server.stats();
    assert_eq!(stats.back_offs.len(), 2);
    assert!(
        stats
            .back_offs
            .iter()
            .all(|b| b.kind == BackOffKind::ServerBusyInMessage && b.wait.as_secs() == 60)
    );
    // the two requests after the first busy answer on that connection did not wait
    assert_eq!(stats.back_off_violations().len(), 2);
}

#[test]
fn server_busy_as_an_inner_error() {
    let server = start(Options::default());
    server.set_fault(Fault {
        inner_busy_every_nth: Some(1),
        busy_back_off_ms: 1500,
        ..Fault::default()
    });
    let resp = post(&server, &body());
    assert_eq!(resp.status, 200);
    let text = resp.text();
    let doc = Document::parse(&text).unwrap();
    assert_eq!(
        messages(&doc),
        pairs(&[("Error", "ErrorInternalServerError")])
    );
    assert_eq!(
        message_values(&doc),
        vec![pairs(&[
            (
                "InnerErrorMessageText",
                "The server cannot service this request right now. Try again later."
            ),
            ("InnerErrorResponseCode", "ErrorServerBusy"),
            ("InnerErrorDescriptiveLinkKey", "0"),
            ("BackOffMilliseconds", "1500"),
        ])]
    );
    let stats = server.stats();
    assert_eq!(stats.back_offs[0].kind, BackOffKind::InnerServerBusy);
    assert_eq!(stats.back_offs[0].wait, Duration::from_millis(1500));
    assert_eq!(stats.message_error_count("ErrorInternalServerError"), 1);
}

#[test]
fn html_error_pages() {
    let server = start(Options::default());
    server.set_fault(Fault {
        html_500_every_nth: Some(2),
        ..Fault::default()
    });
    let mut conn = Conn::open(addr(&server));
    assert_eq!(conn.soap(&body(), &[]).status, 200);
    let resp = conn.soap(&body(), &[]);
    assert_eq!(resp.status, 500);
    assert_eq!(
        resp.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert!(resp.text().contains("Server Error in '/EWS' Application."));
    // the connection stays open
    assert_eq!(conn.soap(&body(), &[]).status, 200);
    assert_eq!(server.stats().html_500s, 1);
}

#[test]
fn a_back_off_applies_to_every_connection() {
    let server = start(Options::default());
    server.set_fault(Fault {
        busy_every_nth: Some(1),
        busy_back_off_ms: 60_000,
        ..Fault::default()
    });
    assert_eq!(Conn::open(addr(&server)).soap(&body(), &[]).status, 500);
    server.set_fault(Fault::default());
    // Past the grace another connection is as bound by the pause as the one that was told.
    std::thread::sleep(BACK_OFF_GRACE + Duration::from_millis(10));
    assert_eq!(Conn::open(addr(&server)).soap(&body(), &[]).status, 200);
    let violations = server.stats().back_off_violations();
    assert_eq!(violations.len(), 1);
    assert_ne!(violations[0].0.conn_id, violations[0].1.conn_id);
}

#[test]
fn violations_excuse_other_connections_only_within_the_grace() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let arrival = |at: Duration, conn_id: u64| Arrival {
        at: t0 + at,
        conn_id,
        peer_port: 0,
        in_flight: 1,
    };
    let stats = Stats {
        back_offs: vec![BackOff {
            sent_at: t0 + ms(100),
            wait: BACK_OFF_GRACE * 4,
            kind: BackOffKind::ServerBusy,
            conn_id: 1,
            peer_port: 0,
        }],
        arrivals: vec![
            arrival(ms(50), 2),                           // before: fine
            arrival(ms(101), 1),                          // same connection: violation
            arrival(ms(101), 2),                          // other connection, in the grace
            arrival(ms(100) + BACK_OFF_GRACE + ms(1), 3), // other connection, after it
            arrival(ms(100) + BACK_OFF_GRACE * 4, 2),     // the pause is over
        ],
        ..Stats::default()
    };
    let found: Vec<(u64, Duration)> = stats
        .back_off_violations()
        .iter()
        .map(|(_, a)| (a.conn_id, a.at - t0))
        .collect();
    assert_eq!(found, [(1, ms(101)), (3, ms(100) + BACK_OFF_GRACE + ms(1))]);
}
