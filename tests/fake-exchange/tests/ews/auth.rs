//! NTLM over HTTP: the three legs on one connection, reuse of the authenticated connection,
//! wrong password, and a Type 3 sent on another connection.

use fake_exchange::{AuthEventKind, NtlmUser, Options};
use roxmltree::Document;

use crate::common::*;

fn ntlm_server() -> fake_exchange::FakeExchange {
    start(Options {
        ntlm: Some(NtlmUser {
            domain: "TESTDOM".into(),
            user: "svc-sync".into(),
            password: "Passw0rd!".into(),
        }),
        ..Options::default()
    })
}

fn body() -> String {
    envelope(
        "",
        &format!(
            r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds>{}</m:FolderIds></m:GetFolder>"#,
            distinguished("msgfolderroot", Some("user1@example.test"))
        ),
    )
}

/// Anonymous and Type 1 legs; returns the Type 2 header value.
fn negotiate(conn: &mut Conn) -> String {
    let anonymous = conn.soap(&body(), &[]);
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.all("WWW-Authenticate"), vec!["Negotiate", "NTLM"]);
    assert_eq!(anonymous.header("Content-Length"), Some("0"));
    let type1 = ntlm_type1();
    let challenge = conn.soap(&body(), &[("Authorization", &type1)]);
    assert_eq!(challenge.status, 401);
    assert!(challenge.body.is_empty());
    challenge
        .all("WWW-Authenticate")
        .into_iter()
        .find(|v| v.starts_with("NTLM "))
        .expect("NTLM challenge")
        .to_string()
}

#[test]
fn full_handshake_authenticates_the_connection() {
    let server = ntlm_server();
    let mut conn = Conn::open(addr(&server));
    let type2 = negotiate(&mut conn);
    // domain case differs from the server's: accepted
    let type3 = ntlm_type3(&type2, "testdom", "SVC-SYNC", "Passw0rd!");
    let ok = conn.soap(&body(), &[("Authorization", &type3)]);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.header("Persistent-Auth"), Some("true"));
    let text = ok.text();
    assert_eq!(messages(&Document::parse(&text).unwrap())[0].1, "NoError");
    let again = conn.soap(&body(), &[]);
    assert_eq!(again.status, 200);
    let stats = server.stats();
    assert_eq!(stats.ntlm_handshakes, 1);
    assert_eq!(stats.ntlm_failures, 0);
    assert_eq!(stats.authenticated_ports, vec![conn.local_port(); 2]);
    let kinds: Vec<_> = stats
        .auth_events
        .iter()
        .map(|e| (e.kind, e.peer_port))
        .collect();
    let p = conn.local_port();
    assert_eq!(
        kinds,
        vec![
            (AuthEventKind::Challenged, p),
            (AuthEventKind::Negotiated, p),
            (AuthEventKind::Authenticated, p),
            (AuthEventKind::Reused, p),
        ]
    );
    // a new connection starts from scratch
    let mut other = Conn::open(addr(&server));
    assert_eq!(other.soap(&body(), &[]).status, 401);
}

#[test]
fn wrong_password_is_refused() {
    let server = ntlm_server();
    let mut conn = Conn::open(addr(&server));
    let type2 = negotiate(&mut conn);
    let type3 = ntlm_type3(&type2, "TESTDOM", "svc-sync", "wrong");
    let refused = conn.soap(&body(), &[("Authorization", &type3)]);
    assert_eq!(refused.status, 401);
    assert!(
        refused
            .text()
            .contains("401 - Unauthorized: Access is denied due to invalid credentials.")
    );
    // the connection is not authenticated
    assert_eq!(conn.soap(&body(), &[]).status, 401);
    let stats = server.stats();
    assert_eq!((stats.ntlm_handshakes, stats.ntlm_failures), (0, 1));
}

#[test]
fn type3_on_another_connection_is_refused() {
    let server = ntlm_server();
    let mut first = Conn::open(addr(&server));
    let type2 = negotiate(&mut first);
    let type3 = ntlm_type3(&type2, "TESTDOM", "svc-sync", "Passw0rd!");
    let mut second = Conn::open(addr(&server));
    assert_eq!(
        second.soap(&body(), &[("Authorization", &type3)]).status,
        401
    );
    // and the pending challenge of the first connection still works
    assert_eq!(
        first.soap(&body(), &[("Authorization", &type3)]).status,
        200
    );
    let stats = server.stats();
    assert_eq!((stats.ntlm_handshakes, stats.ntlm_failures), (1, 1));
}
