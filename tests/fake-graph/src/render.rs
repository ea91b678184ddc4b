//! Graph's JSON for folders, messages, attachments and errors, in the shapes of the reference
//! samples (`samples/graph/`).

use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use fake_exchange::{Attachment, Folder, FolderKind, Item};

use crate::odata::Expand;
use crate::rest_id;

/// Message properties of Graph v1.0 (`resources/message.md`): `$select` accepts these and
/// nothing else. Note what is not here: `size`, `sensitivity`, `conversationTopic`.
pub const MESSAGE_PROPERTIES: &[&str] = &[
    "bccRecipients",
    "body",
    "bodyPreview",
    "categories",
    "ccRecipients",
    "changeKey",
    "conversationId",
    "conversationIndex",
    "createdDateTime",
    "flag",
    "from",
    "hasAttachments",
    "id",
    "importance",
    "inferenceClassification",
    "internetMessageHeaders",
    "internetMessageId",
    "isDeliveryReceiptRequested",
    "isDraft",
    "isRead",
    "isReadReceiptRequested",
    "lastModifiedDateTime",
    "parentFolderId",
    "receivedDateTime",
    "replyTo",
    "sender",
    "sentDateTime",
    "subject",
    "toRecipients",
    "uniqueBody",
    "webLink",
];

/// Returned only when selected.
const SELECT_ONLY: &[&str] = &["internetMessageHeaders", "uniqueBody"];

/// mailFolder properties of Graph v1.0 (`wellKnownName` exists only in beta).
pub const FOLDER_PROPERTIES: &[&str] = &[
    "id",
    "displayName",
    "parentFolderId",
    "childFolderCount",
    "unreadItemCount",
    "totalItemCount",
    "isHidden",
];

/// Whole seconds in UTC with `Z`, as Graph writes times.
pub fn datetime(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// innerError's `date`: no zone, as Graph writes it.
fn inner_date() -> String {
    let now = OffsetDateTime::now_utc();
    datetime(now).trim_end_matches('Z').to_owned()
}

/// `{"error": {"code", "message", "innerError": {"date", "request-id", "client-request-id"}}}`.
pub fn error(code: &str, message: &str, request_id: &str) -> Value {
    json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": inner_date(),
                "request-id": request_id,
                "client-request-id": request_id,
            }
        }
    })
}

/// What a folder listing says about one folder.
pub struct FolderView<'a> {
    pub folder: &'a Folder,
    pub parent_rest_id: String,
    pub child_count: usize,
}

fn keep(selected: Option<&[&str]>, name: &str) -> bool {
    match selected {
        None => true,
        Some(list) => name == "id" || list.contains(&name),
    }
}

pub fn folder(view: &FolderView<'_>, selected: Option<&[&str]>) -> Value {
    let f = view.folder;
    let unread = f.items.iter().filter(|i| !i.is_read).count();
    let mut out = Map::new();
    if f.kind == FolderKind::Search {
        // Type annotations of derived types come whatever `$select` says.
        out.insert(
            "@odata.type".into(),
            json!("#microsoft.graph.mailSearchFolder"),
        );
    }
    let fields: [(&str, Value); 7] = [
        ("id", json!(rest_id(&f.id))),
        ("displayName", json!(f.display_name)),
        ("parentFolderId", json!(view.parent_rest_id)),
        ("childFolderCount", json!(view.child_count)),
        ("unreadItemCount", json!(unread)),
        ("totalItemCount", json!(f.items.len())),
        ("isHidden", json!(f.hidden)),
    ];
    for (name, value) in fields {
        if keep(selected, name) {
            out.insert(name.into(), value);
        }
    }
    if f.kind == FolderKind::Search && selected.is_none() {
        out.insert("isSupported".into(), json!(true));
        out.insert("filterQuery".into(), json!("isRead eq false"));
    }
    Value::Object(out)
}

/// msgfolderroot ("Top of Information Store").
pub fn root_folder(id: &str, child_count: usize, selected: Option<&[&str]>) -> Value {
    let mut out = Map::new();
    let fields: [(&str, Value); 7] = [
        ("id", json!(id)),
        ("displayName", json!("Top of Information Store")),
        ("parentFolderId", json!(format!("{id}root"))),
        ("childFolderCount", json!(child_count)),
        ("unreadItemCount", json!(0)),
        ("totalItemCount", json!(0)),
        ("isHidden", json!(false)),
    ];
    for (name, value) in fields {
        if keep(selected, name) {
            out.insert(name.into(), value);
        }
    }
    Value::Object(out)
}

/// Where a message sits, for the properties that depend on it.
pub struct MessageContext<'a> {
    pub folder_rest_id: &'a str,
    pub in_drafts: bool,
    pub base: &'a str,
}

/// PR_SENSITIVITY from EWS's spelling.
fn sensitivity_value(name: &str) -> i64 {
    match name {
        "Personal" => 1,
        "Private" => 2,
        "Confidential" => 3,
        _ => 0,
    }
}

fn importance_value(name: &str) -> i64 {
    match name {
        "Low" => 0,
        "High" => 2,
        _ => 1,
    }
}

/// A MAPI property of an item by (type, tag), as Graph renders extended properties: the id
/// in its shortest hex form, the value always a string.
fn extended_value(item: &Item, kind: &str, tag: u32) -> Option<String> {
    match (kind, tag) {
        ("string", 0x0070) => Some(item.conversation_topic.clone()),
        ("string", 0x0037) => Some(item.subject.clone()),
        ("string", 0x1035) => item.message_id.clone(),
        ("string", 0x001a) => Some(item.item_class.clone()),
        ("integer", 0x0036) => Some(sensitivity_value(item.sensitivity).to_string()),
        ("integer", 0x0017) => Some(importance_value(item.importance).to_string()),
        ("integer", 0x0e08) => Some(item.size().to_string()),
        _ => None,
    }
}

fn type_name(kind: &str) -> &str {
    match kind {
        "string" => "String",
        "integer" => "Integer",
        "boolean" => "Boolean",
        "systime" => "SystemTime",
        _ => kind,
    }
}

pub fn attachment(item: &Item, index: usize, a: &Attachment, selected: &[&str]) -> Value {
    let is_item = a.content_type.eq_ignore_ascii_case("message/rfc822");
    let mut out = Map::new();
    out.insert(
        "@odata.type".into(),
        json!(if is_item {
            "#microsoft.graph.itemAttachment"
        } else {
            "#microsoft.graph.fileAttachment"
        }),
    );
    let fields: [(&str, Value); 6] = [
        ("id", json!(format!("{}-att{index}", rest_id(&item.id)))),
        ("lastModifiedDateTime", json!(datetime(item.received))),
        ("name", json!(a.name)),
        // Graph leaves the content type of attached items empty.
        (
            "contentType",
            if is_item {
                Value::Null
            } else {
                json!(a.content_type)
            },
        ),
        ("size", json!(a.size)),
        ("isInline", json!(a.inline)),
    ];
    let all = selected.is_empty();
    for (name, value) in fields {
        if all || name == "id" || selected.contains(&name) {
            out.insert(name.into(), value);
        }
    }
    Value::Object(out)
}

pub fn message(
    item: &Item,
    ctx: &MessageContext<'_>,
    selected: Option<&[&str]>,
    expand: &Expand,
) -> Value {
    let rest = rest_id(&item.id);
    let mut out = Map::new();
    out.insert(
        "@odata.etag".into(),
        json!(format!("W/\"{}\"", item.change_key)),
    );
    for name in MESSAGE_PROPERTIES {
        let wanted = match selected {
            None => !SELECT_ONLY.contains(name),
            Some(list) => *name == "id" || list.contains(name),
        };
        if !wanted {
            continue;
        }
        let value = match *name {
            "id" => json!(rest),
            "createdDateTime" | "lastModifiedDateTime" => json!(datetime(item.received)),
            "changeKey" => json!(item.change_key),
            "categories" => json!(item.categories),
            "receivedDateTime" => json!(datetime(item.received)),
            "sentDateTime" => item.sent.map_or(Value::Null, |s| json!(datetime(s))),
            "hasAttachments" => json!(item.has_attachments()),
            "internetMessageId" => item.message_id.as_ref().map_or(Value::Null, |m| json!(m)),
            "subject" => json!(item.subject),
            "bodyPreview" => json!(""),
            "importance" => json!(item.importance.to_ascii_lowercase()),
            "parentFolderId" => json!(ctx.folder_rest_id),
            // REST ids use base64's URL-safe alphabet; conversation ids too.
            "conversationId" => json!(rest_id(&item.conversation_id)),
            "conversationIndex" => json!("AQHaAAAA"),
            "isDeliveryReceiptRequested" | "isReadReceiptRequested" => json!(false),
            "isRead" => json!(item.is_read),
            "isDraft" => json!(ctx.in_drafts),
            "webLink" => json!(format!(
                "https://outlook.office365.com/owa/?ItemID={}&exvsurl=1&viewmodel=ReadMessageItem",
                rest.replace('=', "%3D")
            )),
            "inferenceClassification" => json!("focused"),
            "body" | "uniqueBody" => json!({"contentType": "html", "content": ""}),
            "flag" => json!({"flagStatus": "notFlagged"}),
            "toRecipients"
            | "ccRecipients"
            | "bccRecipients"
            | "replyTo"
            | "internetMessageHeaders" => json!([]),
            _ => Value::Null,
        };
        out.insert((*name).into(), value);
    }
    if let Some(selected) = &expand.attachments {
        let list: Vec<Value> = item
            .attachments
            .iter()
            .enumerate()
            .map(|(i, a)| attachment(item, i, a, selected))
            .collect();
        out.insert(
            "attachments@odata.context".into(),
            json!(format!("{}/$metadata#users/messages/attachments", ctx.base)),
        );
        out.insert("attachments".into(), Value::Array(list));
    }
    if let Some(ids) = &expand.extended {
        let list: Vec<Value> = ids
            .iter()
            .filter_map(|(kind, tag)| {
                extended_value(item, kind, *tag).map(
                    |value| json!({"id": format!("{} 0x{tag:x}", type_name(kind)), "value": value}),
                )
            })
            .collect();
        out.insert("singleValueExtendedProperties".into(), Value::Array(list));
    }
    Value::Object(out)
}
