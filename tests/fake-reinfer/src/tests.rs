//! The fake's own tests, over raw HTTP/1.1 so they depend on no client library.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{API_PATH, Endpoint, FakeReinfer, Fault, FaultKind, RetryAfter};

const TOKEN: &str = "t0ken";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn send(
    fake: &FakeReinfer,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Reply {
    let base = fake.base_url();
    let authority = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut stream = TcpStream::connect(&authority).unwrap();
    let mut head = format!(
        "{method} {API_PATH}{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn get(fake: &FakeReinfer, path: &str) -> Reply {
    send(fake, "GET", path, Some(TOKEN), None, b"")
}

fn put_json(fake: &FakeReinfer, path: &str, body: &Value) -> Reply {
    send(
        fake,
        "PUT",
        path,
        Some(TOKEN),
        Some("application/json"),
        body.to_string().as_bytes(),
    )
}

fn email(id: &str) -> Value {
    json!({"id": id, "mailbox": "a@x.com", "timestamp": "2024-01-01T00:00:00Z",
           "mime_content": "Subject: x\r\n\r\nbody", "metadata": {"folder": ["Inbox"]}})
}

#[test]
fn bearer_token_is_required() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("o", "b");
    for token in [None, Some("wrong")] {
        let reply = send(&fake, "GET", "_private/buckets/o/b", token, None, b"");
        assert_eq!(reply.status, 401);
        assert_eq!(reply.json()["status"], "error");
        assert!(!reply.message().is_empty());
    }
    assert_eq!(get(&fake, "_private/buckets/o/b").status, 200);
}

#[test]
fn buckets_get_create_and_conflict() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    let missing = get(&fake, "_private/buckets/o/b");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["status"], "error");

    let bad = put_json(
        &fake,
        "_private/buckets/o/b",
        &json!({"bucket": {"kind": "emails"}}),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.message().contains("\"kind\""), "{}", bad.message());
    let no_type = send(
        &fake,
        "PUT",
        "_private/buckets/o/b",
        Some(TOKEN),
        None,
        b"{}",
    );
    assert_eq!(no_type.status, 415);

    let created = put_json(
        &fake,
        "_private/buckets/o/b",
        &json!({"bucket": {"bucket_type": "emails"}}),
    );
    assert_eq!(created.status, 200);
    let created = created.json();
    assert_eq!(created["status"], "ok");
    assert_eq!(created["bucket"]["name"], "b");
    let id = created["bucket"]["id"].as_str().unwrap().to_owned();

    let again = put_json(
        &fake,
        "_private/buckets/o/b",
        &json!({"bucket": {"bucket_type": "emails"}}),
    );
    assert_eq!(again.status, 409);
    assert_eq!(
        get(&fake, "_private/buckets/o/b").json()["bucket"]["id"],
        id
    );
    assert_eq!(get(&fake, &format!("_private/buckets/id:{id}")).status, 200);
    // The CLI's encoded form routes too; a doubled slash does not.
    assert_eq!(get(&fake, "_private/buckets/o%2Fb").status, 200);
    assert_eq!(get(&fake, "_private//buckets/o/b").status, 404);
    assert_eq!(fake.buckets(), vec![("o".to_owned(), "b".to_owned())]);
    assert_eq!(
        put_json(
            &fake,
            "_private/buckets/o/b.c",
            &json!({"bucket": {"bucket_type": "emails"}})
        )
        .status,
        400
    );
}

#[test]
fn emails_are_validated_upserted_and_poison_refused() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("o", "b");
    let path = "_private/buckets/o/b/emails";
    let ok = put_json(&fake, path, &json!({"emails": [email("1"), email("2")]}));
    assert_eq!((ok.status, ok.json()), (200, json!({"status": "ok"})));
    let mut changed = email("1");
    changed["mime_content"] = json!("Subject: y\r\n\r\nnew");
    let mut other_mailbox = email("1");
    other_mailbox["mailbox"] = json!("b@x.com");
    assert_eq!(
        put_json(
            &fake,
            path,
            &json!({"emails": [changed.clone(), other_mailbox]})
        )
        .status,
        200
    );
    let stored = fake.emails("o", "b");
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0], changed);

    let mut bad = email("3");
    bad["subject"] = json!("x");
    let reply = put_json(&fake, path, &json!({"emails": [email("4"), bad]}));
    assert_eq!(reply.status, 400);
    assert!(reply.message().contains("emails[1]"), "{}", reply.message());
    assert!(
        reply.message().contains("\"subject\""),
        "{}",
        reply.message()
    );
    assert_eq!(
        fake.emails("o", "b").len(),
        3,
        "a refused batch stores nothing"
    );

    fake.poison("5");
    let reply = put_json(&fake, path, &json!({"emails": [email("5")]}));
    assert_eq!(reply.status, 400);
    assert!(reply.message().contains("\"5\""), "{}", reply.message());

    let query = put_json(
        &fake,
        &format!("{path}?no_charge=false"),
        &json!({"emails": []}),
    );
    assert_eq!(query.status, 200);
    let query = put_json(&fake, &format!("{path}?charge=no"), &json!({"emails": []}));
    assert_eq!(query.status, 400);
    assert_eq!(
        put_json(
            &fake,
            "_private/buckets/o/none/emails",
            &json!({"emails": []})
        )
        .status,
        404
    );

    fake.set_max_body_bytes(Some(100));
    let big = put_json(&fake, path, &json!({"emails": [email("6"), email("7")]}));
    assert_eq!(big.status, 413);
    assert!(big.json().is_null(), "a gateway's 413 is HTML");
}

#[test]
fn keyed_sync_states() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("o", "b");
    let id = fake.bucket_id("o", "b").unwrap();
    let base = format!("_private/buckets/id:{id}");
    let state = json!({"mailbox_name": "a@x.com", "folder_id": "F1", "folder_path": ["Inbox"],
                       "status": "UP_TO_DATE", "synced_until": "2024-01-01T00:00:00Z",
                       "last_synced_at": "2024-01-02T00:00:00Z", "fingerprint": "{}"});
    assert_eq!(
        get(&fake, &format!("{base}/keyed-sync-state/ab12")).status,
        404
    );
    let stored = put_json(
        &fake,
        &format!("{base}/keyed-sync-state/ab12"),
        &json!({ "keyed_sync_state": state }),
    );
    assert_eq!(stored.status, 200);
    let mut unknown = state.clone();
    unknown["ids"] = json!([]);
    let refused = put_json(
        &fake,
        &format!("{base}/keyed-sync-state/ab13"),
        &json!({ "keyed_sync_state": unknown }),
    );
    assert_eq!(refused.status, 400);
    assert!(refused.message().contains("\"ids\""));
    assert_eq!(
        put_json(
            &fake,
            &format!("{base}/keyed-sync-state/not-hex"),
            &json!({ "keyed_sync_state": state })
        )
        .status,
        400
    );
    assert_eq!(
        get(&fake, &format!("{base}/keyed-sync-state/ab12")).json()["keyed_sync_state"],
        state
    );
    let list = get(&fake, &format!("{base}/keyed-sync-states/"));
    assert_eq!(list.json()["keyed_sync_states"], json!([state]));
    assert_eq!(
        get(&fake, &format!("{base}/keyed-sync-states")).status,
        404,
        "the list path has a trailing slash"
    );
    let ids = send(
        &fake,
        "POST",
        &format!("{base}/keyed-sync-state-ids"),
        Some(TOKEN),
        Some("application/json"),
        br#"{"mailbox_name":"a@x.com"}"#,
    );
    assert_eq!(ids.json()["keyed_sync_state_ids"], json!(["ab12"]));
    assert_eq!(fake.sync_states("o", "b").len(), 1);
    // Keyed states are addressed by bucket id only.
    assert_eq!(
        get(&fake, "_private/buckets/o/b/keyed-sync-state/ab12").status,
        404
    );
    let deleted = send(
        &fake,
        "DELETE",
        &format!("{base}/keyed-sync-state/ab12"),
        Some(TOKEN),
        None,
        b"",
    );
    assert_eq!(deleted.status, 200);
    assert!(fake.sync_states("o", "b").is_empty());
}

#[test]
fn appliance_configs_under_both_prefixes() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.set_config("p", "k", br#"{"mailboxes":{}}"#);
    for prefix in ["v1", "_private"] {
        let reply = get(&fake, &format!("{prefix}/appliance-configs/p/k"));
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, br#"{"mailboxes":{}}"#);
        assert_eq!(
            reply.header("Content-Type"),
            Some("application/octet-stream")
        );
    }
    assert_eq!(get(&fake, "v1/appliance-configs/p/other").status, 404);
    fake.set_config_prefixes(false, true);
    assert_eq!(get(&fake, "v1/appliance-configs/p/k").status, 404);
    assert_eq!(get(&fake, "_private/appliance-configs/p/k").status, 200);
}

#[test]
fn faults_per_endpoint_and_records() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("o", "b");
    let path = "_private/buckets/o/b/emails";
    fake.inject(Fault::new(
        Endpoint::PutEmails,
        FaultKind::TooManyRequests(RetryAfter::Seconds(3)),
        1,
    ));
    fake.inject(Fault::new(
        Endpoint::PutEmails,
        FaultKind::TooManyRequests(RetryAfter::HttpDate(Duration::from_secs(60))),
        1,
    ));
    fake.inject(Fault::new(Endpoint::PutEmails, FaultKind::ServerError, 1));
    // Other endpoints are untouched by faults aimed at PUT emails.
    assert_eq!(get(&fake, "_private/buckets/o/b").status, 200);
    let body = json!({"emails": [email("1")]});
    let first = put_json(&fake, path, &body);
    assert_eq!(
        (first.status, first.header("Retry-After")),
        (429, Some("3"))
    );
    assert_eq!(first.json()["status"], "error");
    let second = put_json(&fake, path, &body);
    assert_eq!(second.status, 429);
    assert!(second.header("Retry-After").unwrap().ends_with(" GMT"));
    assert_eq!(put_json(&fake, path, &body).status, 500);
    assert_eq!(put_json(&fake, path, &body).status, 200);

    fake.inject(Fault::new(
        Endpoint::Any,
        FaultKind::Delay(Duration::from_millis(300)),
        1,
    ));
    let started = Instant::now();
    assert_eq!(get(&fake, "_private/buckets/o/b").status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    fake.deny("o", "b");
    let denied = get(&fake, "_private/buckets/o/b");
    assert_eq!(denied.status, 403);
    let id = fake.bucket_id("o", "b").unwrap();
    assert_eq!(
        get(
            &fake,
            &format!("_private/buckets/id:{id}/keyed-sync-states/")
        )
        .status,
        403
    );

    let requests = fake.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 429, 429, 500, 200, 200, 403, 403]);
    assert_eq!(requests[1].method, "PUT");
    assert_eq!(requests[1].path, format!("{API_PATH}{path}"));
    assert_eq!(requests[1].endpoint, Endpoint::PutEmails);
    assert!(requests[1].body_bytes > 0);
}

#[test]
fn counts_concurrent_puts() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("o", "b");
    fake.inject(Fault::new(
        Endpoint::PutEmails,
        FaultKind::Delay(Duration::from_millis(300)),
        16,
    ));
    std::thread::scope(|scope| {
        for i in 0..16 {
            let fake = &fake;
            scope.spawn(move || {
                let body = json!({"emails": [email(&i.to_string())]});
                assert_eq!(
                    put_json(fake, "_private/buckets/o/b/emails", &body).status,
                    200
                );
            });
        }
    });
    assert_eq!(fake.max_concurrent_puts(), 16);
    assert_eq!(fake.emails("o", "b").len(), 16);
    assert_eq!(fake.connections(), 16);
}

#[test]
fn keep_alive_and_injected_resets() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    fake.create_bucket("o", "b");
    let authority = fake
        .base_url()
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut stream = TcpStream::connect(&authority).unwrap();
    let request = format!(
        "GET {API_PATH}_private/buckets/o/b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    for _ in 0..2 {
        stream.write_all(request.as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
    assert_eq!(fake.connections(), 1);

    fake.inject(Fault::new(Endpoint::Bucket, FaultKind::Reset, 1));
    stream.write_all(request.as_bytes()).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed without an answer");
    assert_eq!(fake.requests().last().unwrap().status, 0);
}

#[test]
fn drop_stops_the_server() {
    let fake = FakeReinfer::start(TOKEN).unwrap();
    let base = fake.base_url();
    let authority = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    drop(fake);
    assert!(started.elapsed() < Duration::from_secs(5), "threads joined");
    // tiny_http's accept thread closes the listener on its own, shortly after.
    while TcpStream::connect(&authority).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
