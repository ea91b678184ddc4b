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

impl EmailDoc {
    /// The document as JSON: exactly the bytes `serde_json::to_vec` writes (a test checks
    /// it), but faster and tighter. The MIME text, nearly all of a document, is escaped eight
    /// bytes at a time instead of one (serde_json's escaping was a fifth of the CPU spent per
    /// email), and the buffer is sized up front instead of growing by doubling, which left up
    /// to half of every document's memory unused while it waited for the sink.
    pub fn to_json(&self) -> Vec<u8> {
        let mime = self.mime_content.len();
        let mut out = Vec::with_capacity(mime + mime / 16 + 1024);
        // Serialising strings and our own plain structs into a Vec cannot fail.
        out.extend_from_slice(br#"{"id":"#);
        let _ = serde_json::to_writer(&mut out, &self.id);
        out.extend_from_slice(br#","mailbox":"#);
        let _ = serde_json::to_writer(&mut out, &self.mailbox);
        out.extend_from_slice(br#","timestamp":"#);
        let _ = serde_json::to_writer(&mut out, &self.timestamp);
        out.extend_from_slice(br#","mime_content":"#);
        write_json_string(&mut out, &self.mime_content);
        out.extend_from_slice(br#","metadata":"#);
        let _ = serde_json::to_writer(&mut out, &self.metadata);
        if !self.attachments.is_empty() {
            out.extend_from_slice(br#","attachments":"#);
            let _ = serde_json::to_writer(&mut out, &self.attachments);
        }
        out.push(b'}');
        if out.capacity() - out.len() > out.len() / 8 {
            out.shrink_to_fit();
        }
        out
    }
}

/// Writes `text` as a JSON string the way serde_json does: quote and backslash escaped, control
/// characters as short escapes or `\u00XX`, everything else (non-ASCII included) as is.
/// Bytes to escape are found eight at a time with exact per-byte bit tests.
fn write_json_string(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // `start`: first byte not copied yet; `i`: where the search goes on.
    let mut start = 0;
    let mut i = 0;
    while let Some(at) = next_escape(bytes, i) {
        out.extend_from_slice(&bytes[start..at]);
        let b = bytes[at];
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0C => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xF)]);
            }
        }
        i = at + 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Position of the first byte at or after `from` that JSON needs escaped: below 0x20, a
/// quote or a backslash.
fn next_escape(bytes: &[u8], from: usize) -> Option<usize> {
    use crate::bytescan::{control_bytes, find_first, splat, zero_bytes};
    find_first(
        bytes,
        from,
        |w| control_bytes(w) | zero_bytes(w ^ splat(b'"')) | zero_bytes(w ^ splat(b'\\')),
        |b| b < 0x20 || b == b'"' || b == b'\\',
    )
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
    format!("exchange-sync:{}", crate::digest::sha256_hex(&input, 16))
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
    fn json_is_exactly_what_serde_json_writes() {
        let mut texts: Vec<String> = vec![
            String::new(),
            "Subject: hi\r\n\r\nbody".into(),
            "quotes \" and \\ backslashes, \u{7f} \u{80} café ✓ 日本語".into(),
            (0u8..0x80).map(char::from).collect(),
            "x".repeat(1000) + "\"" + &"y\r\n".repeat(300),
        ];
        // Every byte value at every offset of an 8-byte word.
        for offset in 0..9 {
            for b in 0u8..0x80 {
                texts.push(format!(
                    "{}{}{}",
                    "a".repeat(offset),
                    char::from(b),
                    "b".repeat(9)
                ));
            }
        }
        for text in texts {
            let doc = EmailDoc {
                id: "<a\"b@x>".into(),
                mailbox: "a@b.c".into(),
                timestamp: "2024-03-01T08:59:58Z".into(),
                mime_content: text,
                metadata: Metadata {
                    folder: vec!["Inbox".into(), "R&D \"x\"".into()],
                    categories: vec!["Projekt Ü".into()],
                    ..Default::default()
                },
                attachments: Vec::new(),
            };
            assert_eq!(doc.to_json(), serde_json::to_vec(&doc).unwrap());
            let with_attachment = EmailDoc {
                attachments: vec![Attachment {
                    name: "a\u{1}.pdf".into(),
                    size: 3,
                    content_type: "application/pdf".into(),
                    inline: false,
                }],
                ..doc
            };
            assert_eq!(
                with_attachment.to_json(),
                serde_json::to_vec(&with_attachment).unwrap()
            );
        }
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
