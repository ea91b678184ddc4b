//! FindItem (restriction, sort, paging with Offset, server page cap) and GetItem (MIME
//! round trip, properties, per-item errors in a mixed batch, illegal character references).

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fake_exchange::{Fault, Options};
use roxmltree::Document;

use crate::common::*;

fn find_items(
    folder_id: &str,
    restriction: &str,
    order: &str,
    max: usize,
    offset: usize,
) -> String {
    envelope(
        "",
        &format!(
            r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:DateTimeReceived"/></t:AdditionalProperties></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned="{max}" Offset="{offset}" BasePoint="Beginning"/><m:Restriction>{restriction}</m:Restriction><m:SortOrder><t:FieldOrder Order="{order}"><t:FieldURI FieldURI="item:DateTimeReceived"/></t:FieldOrder></m:SortOrder><m:ParentFolderIds><t:FolderId Id="{folder_id}"/></m:ParentFolderIds></m:FindItem>"#
        ),
    )
}

fn since(op: &str, value: &str) -> String {
    format!(
        r#"<t:{op}><t:FieldURI FieldURI="item:DateTimeReceived"/><t:FieldURIOrConstant><t:Constant Value="{value}"/></t:FieldURIOrConstant></t:{op}>"#
    )
}

/// Page through a FindItem; returns (ids, received strings, totals seen).
fn page_all(
    server: &fake_exchange::FakeExchange,
    folder: &str,
    restriction: &str,
    order: &str,
    page: usize,
) -> (Vec<String>, Vec<String>, Vec<usize>) {
    let mut conn = Conn::open(addr(server));
    let (mut ids, mut times, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    let mut offset = 0;
    loop {
        let resp = conn.soap(&find_items(folder, restriction, order, page, offset), &[]);
        assert_eq!(resp.status, 200, "{}", resp.text());
        let text = resp.text();
        let doc = Document::parse(&text).unwrap();
        assert_eq!(messages(&doc)[0].1, "NoError", "{text}");
        let root = elements(&doc, NS_M, "RootFolder")[0];
        totals.push(root.attribute("TotalItemsInView").unwrap().parse().unwrap());
        for m in child(root, NS_T, "Items")
            .unwrap()
            .children()
            .filter(|n| n.is_element())
        {
            ids.push(
                child(m, NS_T, "ItemId")
                    .unwrap()
                    .attribute("Id")
                    .unwrap()
                    .to_string(),
            );
            times.push(
                child(m, NS_T, "DateTimeReceived")
                    .unwrap()
                    .text()
                    .unwrap()
                    .to_string(),
            );
        }
        offset = root
            .attribute("IndexedPagingOffset")
            .unwrap()
            .parse()
            .unwrap();
        if root.attribute("IncludesLastItemInRange") == Some("true") {
            return (ids, times, totals);
        }
    }
}

#[test]
fn find_item_restriction_sort_and_paging() {
    let server = start(Options::default());
    let data = server.data();
    let inbox = &data.mailboxes[0].folders[0];
    let mut received: Vec<_> = inbox.items.iter().map(|i| i.received).collect();
    received.sort();
    let cut = received[received.len() / 3].replace_millisecond(0).unwrap();
    let cut_text = cut
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let expected: HashSet<String> = inbox
        .items
        .iter()
        .filter(|i| i.received >= cut)
        .map(|i| i.id.clone())
        .collect();
    assert!(expected.len() > 10);

    let (ids, times, totals) = page_all(
        &server,
        &inbox.id,
        &since("IsGreaterThanOrEqualTo", &cut_text),
        "Ascending",
        4,
    );
    assert_eq!(ids.len(), expected.len());
    assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), expected);
    assert!(totals.iter().all(|&t| t == expected.len()));
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "ascending");
    assert!(
        times.iter().all(|t| t.len() == 20 && t.ends_with('Z')),
        "second precision: {times:?}"
    );
    // ties exist and their order is stable across calls
    assert!(times.windows(2).any(|w| w[0] == w[1]));
    let (again, _, _) = page_all(
        &server,
        &inbox.id,
        &since("IsGreaterThanOrEqualTo", &cut_text),
        "Ascending",
        7,
    );
    assert_eq!(ids, again);

    // the same instant written with an offset, inside an And with IsGreaterThan
    let shifted = cut
        .to_offset(time::macros::offset!(+2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let and = format!(
        "<t:And>{}{}</t:And>",
        since("IsGreaterThanOrEqualTo", &shifted),
        since("IsLessThan", "2100-01-01T00:00:00Z")
    );
    let (ids2, times2, _) = page_all(&server, &inbox.id, &and, "Descending", 50);
    assert_eq!(ids2.iter().cloned().collect::<HashSet<_>>(), expected);
    assert!(times2.windows(2).all(|w| w[0] >= w[1]), "descending");
    let later: Vec<_> = inbox.items.iter().filter(|i| i.received > cut).collect();
    let (ids3, _, _) = page_all(
        &server,
        &inbox.id,
        &since("IsGreaterThan", &cut_text),
        "Ascending",
        50,
    );
    assert_eq!(ids3.len(), later.len());
}

#[test]
fn server_caps_the_page_size() {
    let server = start(Options {
        max_find_page: 10,
        ..Options::default()
    });
    let inbox = server.data().mailboxes[0].folders[0].clone();
    let text = post(
        &server,
        &find_items(
            &inbox.id,
            &since("IsGreaterThanOrEqualTo", "2000-01-01T00:00:00Z"),
            "Ascending",
            1000,
            0,
        ),
    )
    .text();
    let doc = Document::parse(&text).unwrap();
    let root = elements(&doc, NS_M, "RootFolder")[0];
    assert_eq!(
        elements(&doc, NS_T, "Message").len()
            + elements(&doc, NS_T, "MeetingRequest").len()
            + elements(&doc, NS_T, "MeetingCancellation").len()
            + elements(&doc, NS_T, "MeetingResponse").len(),
        10
    );
    assert_eq!(root.attribute("IndexedPagingOffset"), Some("10"));
    assert_eq!(root.attribute("IncludesLastItemInRange"), Some("false"));
    assert_eq!(
        root.attribute("TotalItemsInView")
            .map(|t| t.parse::<usize>().unwrap()),
        Some(inbox.items.len())
    );
}

#[test]
fn get_item_returns_exact_mime_and_errors_in_place() {
    let server = start(Options::default());
    let data = server.data();
    let mb = &data.mailboxes[0];
    let synced: Vec<_> = mb.synced_items().collect();
    let (fa, a) = synced[3];
    let (_, b) = synced
        .iter()
        .find(|(_, i)| i.attachments.len() == 2)
        .copied()
        .unwrap();
    let (_, gone) = synced[10];
    assert!(server.delete_item(&mb.address, &gone.id));
    let resp = post(
        &server,
        &get_items(&[&a.id, &gone.id, &b.id, "bm90IGFuIGlk"]),
    );
    assert_eq!(resp.status, 200);
    let text = resp.text();
    let doc = Document::parse(&text).unwrap();
    assert_eq!(
        messages(&doc),
        vec![
            ("Success".into(), "NoError".into()),
            ("Error".into(), "ErrorItemNotFound".into()),
            ("Success".into(), "NoError".into()),
            ("Error".into(), "ErrorInvalidIdMalformed".into()),
        ]
    );
    let texts: Vec<_> = elements(&doc, NS_M, "MessageText")
        .iter()
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(texts[0], "The specified object was not found in the store.");
    let mimes = elements(&doc, NS_T, "MimeContent");
    assert_eq!(mimes.len(), 2);
    assert_eq!(mimes[0].attribute("CharacterSet"), Some("UTF-8"));
    let raw = mimes[0].text().unwrap();
    assert!(!raw.contains('\n'), "one line of base64");
    assert_eq!(STANDARD.decode(raw).unwrap(), a.mime);
    assert_eq!(STANDARD.decode(mimes[1].text().unwrap()).unwrap(), b.mime);
    let parent = elements(&doc, NS_T, "ParentFolderId")[0]
        .attribute("Id")
        .unwrap();
    assert_eq!(parent, fa.id);
    let sizes: Vec<_> = elements(&doc, NS_T, "Size")
        .iter()
        .filter(|n| n.parent().unwrap().tag_name().name() != "FileAttachment")
        .filter_map(|n| n.text())
        .map(str::to_string)
        .collect();
    assert_eq!(sizes[0], a.mime.len().to_string());
    let b_element = elements(&doc, NS_M, "Items")
        .into_iter()
        .filter_map(|n| n.first_element_child())
        .nth(1)
        .unwrap();
    let attachments: Vec<_> = b_element
        .descendants()
        .filter(|n| n.has_tag_name((NS_T, "FileAttachment")))
        .collect();
    assert_eq!(attachments.len(), 2);
    assert_eq!(
        child(attachments[0], NS_T, "IsInline").unwrap().text(),
        Some("true")
    );
    assert_eq!(
        child(attachments[1], NS_T, "Name")
            .unwrap()
            .text()
            .map(str::to_string),
        Some(b.attachments[1].name.replace(|c: char| c.is_control(), ""))
    );
    let message_ids: Vec<_> = elements(&doc, NS_T, "InternetMessageId")
        .iter()
        .filter_map(|n| n.text())
        .map(str::to_string)
        .collect();
    assert_eq!(Some(&message_ids[0]), a.message_id.as_ref());
    let subjects: Vec<_> = elements(&doc, NS_T, "Subject")
        .iter()
        .map(|n| n.text().unwrap_or("").to_string())
        .collect();
    assert_eq!(subjects[0], a.subject.replace('\u{1A}', ""));
    // a deleted item no longer appears in FindItem either
    let text = post(
        &server,
        &find_items(
            &mb.folders[0].id,
            &since("IsGreaterThanOrEqualTo", "2000-01-01T00:00:00Z"),
            "Ascending",
            1000,
            0,
        ),
    )
    .text();
    assert!(!text.contains(&gone.id));
}

#[test]
fn illegal_character_references_only_when_asked() {
    let server = start(Options::default());
    let data = server.data();
    let (_, item) = data.mailboxes[0]
        .synced_items()
        .find(|(_, i)| i.subject.contains('\u{1A}'))
        .unwrap();
    let text = post(&server, &get_items(&[&item.id])).text();
    assert!(!text.contains("&#x1A;"));
    let doc = Document::parse(&text).unwrap();
    assert_eq!(
        elements(&doc, NS_T, "Subject")[0].text(),
        Some("Scanned document from printer")
    );
    server.set_fault(Fault {
        illegal_char_refs: true,
        ..Fault::default()
    });
    let text = post(&server, &get_items(&[&item.id])).text();
    assert!(
        text.contains("<t:Subject>Scanned document&#x1A; from printer</t:Subject>"),
        "{text}"
    );
    assert!(Document::parse(&text).is_err(), "XML 1.0 forbids &#x1A;");
}

#[test]
fn new_items_show_up() {
    let server = start(Options::default());
    let data = server.data();
    let mb = &data.mailboxes[1];
    let folder = &mb.folders[2];
    let latest = folder.items.iter().map(|i| i.received).max().unwrap();
    let mime = b"From: a@b.example\r\nTo: user2@example.test\r\nSubject: late arrival\r\nMessage-ID: <late@b.example>\r\n\r\nhello\r\n".to_vec();
    let item = fake_exchange::make_item(7, latest + time::Duration::hours(1), mime.clone());
    let id = server.add_item(&mb.address, &folder.id, item);
    let cut = (latest + time::Duration::minutes(30))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (ids, _, _) = page_all(
        &server,
        &folder.id,
        &since("IsGreaterThanOrEqualTo", &cut),
        "Ascending",
        10,
    );
    assert_eq!(ids, vec![id.clone()]);
    let text = post(&server, &get_items(&[&id])).text();
    let doc = Document::parse(&text).unwrap();
    assert_eq!(
        STANDARD
            .decode(elements(&doc, NS_T, "MimeContent")[0].text().unwrap())
            .unwrap(),
        mime
    );
    // MIME asked for as a property (exchangelib style) instead of IncludeMimeContent
    let body = envelope(
        "",
        &format!(
            r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:MimeContent"/></t:AdditionalProperties></m:ItemShape><m:ItemIds><t:ItemId Id="{id}"/></m:ItemIds></m:GetItem>"#
        ),
    );
    let text = post(&server, &body).text();
    let doc = Document::parse(&text).unwrap();
    let mime_element = elements(&doc, NS_T, "MimeContent")[0];
    assert_eq!(STANDARD.decode(mime_element.text().unwrap()).unwrap(), mime);
}
