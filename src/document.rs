//! The email document every sink stores: the Communications Mining `NewEmail` shape.

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::exchange::FetchedItem;

/// One email as stored: `id` is stable across runs and replicas, so storing it twice is an
/// upsert, not a duplicate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EmailDoc {
    pub id: String,
    pub mailbox: String,
    /// Sent time (received time when the server has none), RFC 3339 UTC.
    pub timestamp: String,
    /// The MIME message as Exchange served it (see [`mime_to_text`]).
    pub mime_content: String,
    pub metadata: Metadata,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// What Exchange knows about the email besides its MIME; absent fields are omitted.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Metadata {
    pub folder: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_attachments: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_read: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub importance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Attachment metadata only; the content stays in `mime_content`. `name`, `size` and
/// `content_type` are required by the API's schema, so unknown values get neutral defaults.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Attachment {
    pub name: String,
    /// 0 when the server did not say.
    pub size: u64,
    /// `application/octet-stream` when the server did not say.
    pub content_type: String,
    pub inline: bool,
}

impl EmailDoc {
    /// Builds the document of `item` found in `folder_path` of `mailbox`. `fallback_received`
    /// is the listing's received time, for servers that omit it in GetItem.
    /// The MIME buffer is moved, not copied: emails can be tens of megabytes.
    pub fn from_item(
        mailbox: &str,
        folder_path: &[String],
        item: FetchedItem,
        fallback_received: OffsetDateTime,
    ) -> EmailDoc {
        let received = item.received.unwrap_or(fallback_received);
        let id = email_id(mailbox, &item);
        EmailDoc {
            id,
            mailbox: mailbox.to_owned(),
            timestamp: rfc3339(item.sent.unwrap_or(received)),
            mime_content: mime_to_text(item.mime),
            metadata: Metadata {
                folder: folder_path.to_vec(),
                received_at: Some(rfc3339(received)),
                conversation_id: item.conversation_id,
                conversation_topic: item.conversation_topic,
                has_attachments: item.has_attachments,
                is_read: item.is_read,
                importance: item.importance,
                sensitivity: item.sensitivity,
                categories: item.categories,
                size: item.size_bytes,
            },
            attachments: item
                .attachments
                .into_iter()
                .map(|a| Attachment {
                    name: a.name,
                    size: a.size_bytes.unwrap_or(0),
                    content_type: a
                        .content_type
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| "application/octet-stream".to_owned()),
                    inline: a.inline,
                })
                .collect(),
        }
    }
}

/// The Internet Message-ID (angle brackets included, as the reinfer CLI does) when the email
/// has one; otherwise a stable hash of the mailbox and the Exchange item id.
pub fn email_id(mailbox: &str, item: &FetchedItem) -> String {
    if let Some(id) = item.internet_message_id.as_deref().map(str::trim)
        && !id.is_empty()
    {
        return id.to_owned();
    }
    if let Some(id) = message_id_header(&item.mime) {
        return id;
    }
    let mut input = mailbox.to_lowercase().into_bytes();
    input.push(0);
    input.extend_from_slice(item.item_id.as_bytes());
    let digest = openssl::sha::sha256(&input);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("exchange-sync:{hex}")
}

/// The raw `Message-ID` header of a MIME message, if present.
fn message_id_header(mime: &[u8]) -> Option<String> {
    let message = mail_parser::MessageParser::new().parse_headers(mime)?;
    let id = message.message_id()?.trim();
    (!id.is_empty()).then(|| format!("<{id}>"))
}

fn rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// MIME bytes as JSON text. Valid UTF-8 passes through byte for byte. A byte that is not part
/// of valid UTF-8 (an 8-bit ISO-8859-1 body, say) becomes the character with that byte's
/// Latin-1 code point (0xE9 → 'é'), never U+FFFD: nothing is lost, and the common case of an
/// undeclared Latin-1 body even reads correctly.
pub fn mime_to_text(mime: Vec<u8>) -> String {
    match String::from_utf8(mime) {
        Ok(text) => text,
        Err(err) => {
            let mime = err.into_bytes();
            let mut out = String::with_capacity(mime.len() + mime.len() / 8);
            for chunk in mime.utf8_chunks() {
                out.push_str(chunk.valid());
                out.extend(chunk.invalid().iter().map(|&b| char::from(b)));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::AttachmentInfo;
    use time::macros::datetime;

    #[test]
    fn utf8_passes_through_and_latin1_bytes_are_kept() {
        assert_eq!(mime_to_text("café ✓".into()), "café ✓");
        assert_eq!(mime_to_text(b"caf\xe9 \xe2\x9c\x93".to_vec()), "café ✓");
        assert!(!mime_to_text(b"\xff\xfe\x80".to_vec()).contains('\u{FFFD}'));
    }

    #[test]
    fn id_prefers_message_id_then_header_then_hash() {
        let mut item = FetchedItem {
            item_id: "AAMkAD=".into(),
            mime: b"Message-ID: <hdr@example.com>\r\nSubject: x\r\n\r\nbody".to_vec(),
            internet_message_id: Some("<ews@example.com>".into()),
            ..Default::default()
        };
        assert_eq!(email_id("a@b.c", &item), "<ews@example.com>");
        item.internet_message_id = None;
        assert_eq!(email_id("a@b.c", &item), "<hdr@example.com>");
        item.mime = b"Subject: x\r\n\r\nbody".to_vec();
        let hashed = email_id("A@B.C", &item);
        assert!(hashed.starts_with("exchange-sync:"));
        assert_eq!(hashed, email_id("a@b.c", &item));
        item.item_id = "other".into();
        assert_ne!(hashed, email_id("a@b.c", &item));
    }

    #[test]
    fn document_shape() {
        let item = FetchedItem {
            item_id: "id1".into(),
            mime: b"Subject: hi\r\n\r\nbody".to_vec(),
            received: Some(datetime!(2024-03-01 10:00:05 UTC)),
            sent: Some(datetime!(2024-03-01 09:59:58.250 +01:00)),
            internet_message_id: Some("<m1@example.com>".into()),
            has_attachments: Some(true),
            is_read: Some(false),
            attachments: vec![AttachmentInfo {
                name: "a.pdf".into(),
                size_bytes: Some(12),
                content_type: Some("application/pdf".into()),
                inline: false,
            }],
            ..Default::default()
        };
        let doc = EmailDoc::from_item(
            "a@b.c",
            &["Inbox".into()],
            item,
            datetime!(2000-01-01 0:00 UTC),
        );
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "<m1@example.com>",
                "mailbox": "a@b.c",
                "timestamp": "2024-03-01T08:59:58Z",
                "mime_content": "Subject: hi\r\n\r\nbody",
                "metadata": {"folder": ["Inbox"], "received_at": "2024-03-01T10:00:05Z",
                             "has_attachments": true, "is_read": false},
                "attachments": [{"name": "a.pdf", "size": 12, "content_type": "application/pdf", "inline": false}]
            })
        );
    }
}
