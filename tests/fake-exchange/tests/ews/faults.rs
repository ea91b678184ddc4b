//! Fault injection: ErrorServerBusy with a back-off (and the stats that catch a client that
//! does not wait), HTTP 503 with Retry-After, and dropped connections.

use fake_exchange::{BackOffKind, Fault, Options};
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
