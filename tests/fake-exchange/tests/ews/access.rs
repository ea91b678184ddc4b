//! Mailbox access: delegate (Mailbox in DistinguishedFolderId), impersonation header,
//! implicit access through ids, and the errors for unknown or mismatched mailboxes.

use fake_exchange::{AccessStyle, Options};
use roxmltree::Document;

use crate::common::*;

fn get_folder(header: &str, folder: &str) -> String {
    envelope(
        header,
        &format!(
            r#"<m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:FolderIds>{folder}</m:FolderIds></m:GetFolder>"#
        ),
    )
}

fn folder_id(text: &str) -> String {
    let doc = Document::parse(text).unwrap();
    elements(&doc, NS_T, "FolderId")[0]
        .attribute("Id")
        .unwrap()
        .to_string()
}

#[test]
fn impersonation_and_delegate_reach_the_same_folder() {
    let server = start(Options::default());
    let inbox = server.data().mailboxes[1].folders[0].id.clone();
    let mut conn = Conn::open(addr(&server));
    let delegate = conn.soap(
        &get_folder("", &distinguished("inbox", Some("USER2@example.test"))),
        &[("X-AnchorMailbox", "user2@example.test")],
    );
    assert_eq!(folder_id(&delegate.text()), inbox);
    let imp = conn.soap(
        &get_folder(
            &impersonate("user2@example.test"),
            &distinguished("inbox", None),
        ),
        &[("X-AnchorMailbox", "user2@example.test")],
    );
    assert_eq!(folder_id(&imp.text()), inbox);
    let implicit = conn.soap(
        &get_folder("", &format!(r#"<t:FolderId Id="{inbox}"/>"#)),
        &[],
    );
    assert_eq!(folder_id(&implicit.text()), inbox);
    let stats = server.stats();
    let styles: Vec<_> = stats
        .access
        .iter()
        .map(|a| (a.style, a.mailbox.clone(), a.anchor_mailbox.clone()))
        .collect();
    let mb = Some("user2@example.test".to_string());
    assert_eq!(
        styles,
        vec![
            (Some(AccessStyle::Delegate), mb.clone(), mb.clone()),
            (Some(AccessStyle::Impersonation), mb.clone(), mb.clone()),
            (Some(AccessStyle::Implicit), mb, None),
        ]
    );
    assert!(
        stats
            .access
            .iter()
            .all(|a| a.server_version == "Exchange2013_SP1")
    );
}

#[test]
fn mailbox_errors() {
    let server = start(Options::default());
    // delegate to an unknown mailbox: per-message error
    let text = post(
        &server,
        &get_folder("", &distinguished("inbox", Some("nobody@example.test"))),
    )
    .text();
    let doc = Document::parse(&text).unwrap();
    assert_eq!(
        messages(&doc),
        vec![("Error".into(), "ErrorNonExistentMailbox".into())]
    );
    // impersonating an unknown mailbox: SOAP fault
    let resp = post(
        &server,
        &get_folder(
            &impersonate("nobody@example.test"),
            &distinguished("inbox", None),
        ),
    );
    assert_eq!(resp.status, 500);
    assert_eq!(fault_code(&resp.text()), "ErrorNonExistentMailbox");
    // no mailbox at all and no mailbox of our own
    let text = post(&server, &get_folder("", &distinguished("inbox", None))).text();
    assert_eq!(
        messages(&Document::parse(&text).unwrap())[0].1,
        "ErrorMissingEmailAddress"
    );
    // impersonating user1 but naming a folder of user2
    let other = server.data().mailboxes[1].folders[0].id.clone();
    let text = post(
        &server,
        &get_folder(
            &impersonate("user1@example.test"),
            &format!(r#"<t:FolderId Id="{other}"/>"#),
        ),
    )
    .text();
    assert_eq!(
        messages(&Document::parse(&text).unwrap())[0].1,
        "ErrorAccessDenied"
    );
    // a well-formed id of nothing, and a malformed one
    let text = post(&server, &get_folder("", r#"<t:FolderId Id="AAMkAGI2="/>"#)).text();
    assert_eq!(
        messages(&Document::parse(&text).unwrap())[0].1,
        "ErrorInvalidIdMalformed"
    );
}
