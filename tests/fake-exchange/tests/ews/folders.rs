//! GetFolder and FindFolder: root id, Deep paging over every folder, requested properties,
//! element types and client-side path reconstruction.

use std::collections::{HashMap, HashSet};

use fake_exchange::Options;
use roxmltree::Document;

use crate::common::*;

const ADDITIONAL: &str = r#"<t:AdditionalProperties><t:FieldURI FieldURI="folder:ParentFolderId"/><t:FieldURI FieldURI="folder:DisplayName"/><t:FieldURI FieldURI="folder:FolderClass"/><t:FieldURI FieldURI="folder:TotalCount"/><t:FieldURI FieldURI="folder:ChildFolderCount"/><t:ExtendedFieldURI PropertyTag="0x10F4" PropertyType="Boolean"/></t:AdditionalProperties>"#;

fn find_folder(props: &str, max: usize, offset: usize, parent: &str) -> String {
    envelope(
        "",
        &format!(
            r#"<m:FindFolder Traversal="Deep"><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape>{props}</m:FolderShape><m:IndexedPageFolderView MaxEntriesReturned="{max}" Offset="{offset}" BasePoint="Beginning"/><m:ParentFolderIds>{parent}</m:ParentFolderIds></m:FindFolder>"#
        ),
    )
}

#[test]
fn get_folder_gives_the_root_id() {
    let server = start(Options::default());
    let body = envelope(
        "",
        &format!(
            r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="folder:DisplayName"/></t:AdditionalProperties></m:FolderShape><m:FolderIds>{}</m:FolderIds></m:GetFolder>"#,
            distinguished("msgfolderroot", Some("user2@example.test"))
        ),
    );
    let resp = post(&server, &body);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("Content-Type"), Some("text/xml; charset=utf-8"));
    let text = resp.text();
    let doc = Document::parse(&text).unwrap();
    let version = &elements(&doc, NS_T, "ServerVersionInfo")[0];
    assert_eq!(version.attribute("MajorVersion"), Some("15"));
    assert_eq!(
        messages(&doc),
        vec![("Success".to_string(), "NoError".to_string())]
    );
    let id = elements(&doc, NS_T, "FolderId")[0];
    assert_eq!(
        id.attribute("Id").map(str::to_string),
        server.root_folder_id("user2@example.test")
    );
    assert!(id.attribute("ChangeKey").is_some());
    assert_eq!(
        elements(&doc, NS_T, "DisplayName")[0].text(),
        Some("Top of Information Store")
    );
    assert_eq!(elements(&doc, NS_M, "Folders").len(), 1);
}

#[test]
fn find_folder_pages_return_every_folder_once() {
    let server = start(Options::default());
    let data = server.data();
    let mailbox = &data.mailboxes[1];
    let root = server.root_folder_id(&mailbox.address).unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut parents: HashMap<String, String> = HashMap::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut kinds = HashSet::new();
    let mut offset = 0;
    let mut pages = 0;
    loop {
        let resp = post(
            &server,
            &find_folder(
                ADDITIONAL,
                7,
                offset,
                &distinguished("msgfolderroot", Some(&mailbox.address)),
            ),
        );
        assert_eq!(resp.status, 200);
        let text = resp.text();
        let doc = Document::parse(&text).unwrap();
        let root_folder = elements(&doc, NS_M, "RootFolder")[0];
        let total: usize = root_folder
            .attribute("TotalItemsInView")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(total, mailbox.folders.len());
        let folders = child(root_folder, NS_T, "Folders").unwrap();
        let page: Vec<_> = folders.children().filter(|n| n.is_element()).collect();
        assert!(page.len() <= 7);
        for f in page {
            kinds.insert(f.tag_name().name().to_string());
            let id = child(f, NS_T, "FolderId")
                .unwrap()
                .attribute("Id")
                .unwrap()
                .to_string();
            let parent = child(f, NS_T, "ParentFolderId")
                .unwrap()
                .attribute("Id")
                .unwrap()
                .to_string();
            let name = child(f, NS_T, "DisplayName")
                .unwrap()
                .text()
                .unwrap_or("")
                .to_string();
            let model = mailbox.folder(&id).expect("listed folder exists");
            assert_eq!(model.display_name, name);
            assert_eq!(
                child(f, NS_T, "FolderClass")
                    .and_then(|c| c.text())
                    .map(str::to_string),
                model.folder_class
            );
            let hidden = child(f, NS_T, "ExtendedProperty")
                .and_then(|e| child(e, NS_T, "Value"))
                .and_then(|v| v.text())
                == Some("true");
            assert_eq!(hidden, model.hidden, "{name}");
            assert!(child(f, NS_T, "TotalCount").is_some());
            parents.insert(id.clone(), parent);
            names.insert(id.clone(), name);
            seen.push(id);
        }
        pages += 1;
        offset = root_folder
            .attribute("IndexedPagingOffset")
            .unwrap()
            .parse()
            .unwrap();
        if root_folder.attribute("IncludesLastItemInRange") == Some("true") {
            break;
        }
        assert!(pages < 20);
    }
    assert!(pages >= 4);
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a folder was listed twice");
    assert_eq!(seen.len(), mailbox.folders.len());
    for k in [
        "Folder",
        "SearchFolder",
        "CalendarFolder",
        "ContactsFolder",
        "TasksFolder",
    ] {
        assert!(kinds.contains(k), "{k} missing");
    }
    // some child is listed before its parent
    let position: HashMap<&String, usize> =
        seen.iter().enumerate().map(|(i, id)| (id, i)).collect();
    assert!(seen.iter().any(|id| {
        position
            .get(&parents[id])
            .is_some_and(|&p| p > position[id])
    }));
    // client-side paths equal the model's
    for id in &seen {
        let mut path = Vec::new();
        let mut cur = id.clone();
        while cur != root {
            path.push(names[&cur].clone());
            cur = parents[&cur].clone();
        }
        path.reverse();
        assert_eq!(path, mailbox.mail_folder_path(id));
    }
}

#[test]
fn only_requested_properties_are_returned() {
    let server = start(Options::default());
    let resp = post(
        &server,
        &find_folder(
            "",
            100,
            0,
            &distinguished("msgfolderroot", Some("user1@example.test")),
        ),
    );
    let text = resp.text();
    let doc = Document::parse(&text).unwrap();
    assert!(!elements(&doc, NS_T, "FolderId").is_empty());
    for absent in [
        "ParentFolderId",
        "DisplayName",
        "FolderClass",
        "ExtendedProperty",
        "TotalCount",
    ] {
        assert!(
            elements(&doc, NS_T, absent).is_empty(),
            "{absent} was not requested"
        );
    }
    // Shallow from the Inbox by FolderId
    let inbox = server.data().mailboxes[0].folders[0].id.clone();
    let body = envelope(
        "",
        &format!(
            r#"<m:FindFolder Traversal="Shallow"><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape><m:ParentFolderIds><t:FolderId Id="{inbox}"/></m:ParentFolderIds></m:FindFolder>"#
        ),
    );
    let text = post(&server, &body).text();
    let doc = Document::parse(&text).unwrap();
    let names: Vec<_> = elements(&doc, NS_T, "DisplayName")
        .iter()
        .filter_map(|n| n.text())
        .map(str::to_string)
        .collect();
    assert_eq!(
        names,
        vec!["Données", "Projects", "Q1/Q2 Reports", "R&D <Lab>"]
    );
    let root_folder = elements(&doc, NS_M, "RootFolder")[0];
    assert_eq!(root_folder.attribute("IndexedPagingOffset"), None);
    assert_eq!(
        root_folder.attribute("IncludesLastItemInRange"),
        Some("true")
    );
    assert!(text.contains("R&amp;D &lt;Lab&gt;"));
}

const CHANGE_TIME: &str = r#"<t:AdditionalProperties><t:FieldURI FieldURI="folder:DisplayName"/><t:ExtendedFieldURI PropertyTag="0x670A" PropertyType="SystemTime"/></t:AdditionalProperties>"#;

/// Folder id -> PR_LOCAL_COMMIT_TIME_MAX as FindFolder reports it.
fn change_times(server: &fake_exchange::FakeExchange, mailbox: &str) -> HashMap<String, String> {
    let body = find_folder(
        CHANGE_TIME,
        1000,
        0,
        &distinguished("msgfolderroot", Some(mailbox)),
    );
    let text = post(server, &body).text();
    let doc = Document::parse(&text).unwrap();
    assert_eq!(messages(&doc)[0].1, "NoError", "{text}");
    let mut out = HashMap::new();
    for folder in elements(&doc, NS_T, "FolderId") {
        let node = folder.parent().unwrap();
        let prop = child(node, NS_T, "ExtendedProperty").expect("0x670A is reported");
        let uri = child(prop, NS_T, "ExtendedFieldURI").unwrap();
        assert_eq!(uri.attribute("PropertyTag"), Some("0x670a"));
        assert_eq!(uri.attribute("PropertyType"), Some("SystemTime"));
        let value = child(prop, NS_T, "Value").unwrap().text().unwrap();
        out.insert(folder.attribute("Id").unwrap().to_owned(), value.to_owned());
    }
    out
}

#[test]
fn folders_report_when_their_contents_last_changed() {
    let server = start(Options::default());
    let data = server.data();
    let mailbox = &data.mailboxes[0];
    let before = change_times(&server, &mailbox.address);
    let inbox = mailbox
        .folders
        .iter()
        .find(|f| f.display_name == "Inbox")
        .unwrap();
    let newest = inbox.items.iter().map(|i| i.received).max().unwrap();
    // To the second, in UTC, like Exchange: the newest delivery of the generated data.
    assert_eq!(
        before[&inbox.id],
        newest
            .replace_nanosecond(0)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    let item = fake_exchange::make_item(9000, newest, b"Subject: new\r\n\r\nx\r\n".to_vec());
    let id = server.add_item(&mailbox.address, &inbox.id, item);
    let added = change_times(&server, &mailbox.address);
    assert!(added[&inbox.id] > before[&inbox.id], "{added:?}");
    for (folder, time) in &before {
        if folder != &inbox.id {
            assert_eq!(&added[folder], time, "only the inbox changed");
        }
    }
    assert!(server.delete_item(&mailbox.address, &id));
    assert!(change_times(&server, &mailbox.address)[&inbox.id] >= added[&inbox.id]);
}

#[test]
fn a_refused_folder_property_fails_the_find_folder() {
    let server = start(Options::default());
    server.set_fault(fake_exchange::Fault {
        refused_folder_tags: vec![0x670A],
        ..Default::default()
    });
    let address = server.data().mailboxes[0].address.clone();
    let body = find_folder(
        CHANGE_TIME,
        1000,
        0,
        &distinguished("msgfolderroot", Some(&address)),
    );
    let text = post(&server, &body).text();
    let doc = Document::parse(&text).unwrap();
    assert_eq!(
        messages(&doc),
        vec![(
            "Error".to_string(),
            "ErrorInvalidPropertyRequest".to_string()
        )]
    );
    // Without the property the same request works.
    let text = post(
        &server,
        &find_folder(
            ADDITIONAL,
            1000,
            0,
            &distinguished("msgfolderroot", Some(&address)),
        ),
    )
    .text();
    assert!(text.contains("NoError"), "{text}");
}
