//! Graph's JSON shapes (folders, messages, attachments, errors) and how they map to what the
//! sync pipeline needs, so the same email reads the same through Graph and EWS.

use serde::Deserialize;
use time::OffsetDateTime;

use super::super::soap;
use super::super::{AttachmentInfo, FetchedItem};

/// One page of a collection. Unknown fields (`@odata.context`, …) are ignored.
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
}

/// A mail folder as `mailFolders` and `childFolders` list it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawFolder {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub child_folder_count: Option<u64>,
    #[serde(default)]
    pub is_hidden: Option<bool>,
    /// `#microsoft.graph.mailSearchFolder` for search folders; absent for plain folders.
    #[serde(rename = "@odata.type", default)]
    pub odata_type: Option<String>,
}

impl RawFolder {
    /// A search folder only shows copies of mail that lives in real folders.
    pub fn is_search_folder(&self) -> bool {
        self.odata_type
            .as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().ends_with("mailsearchfolder"))
    }
}

/// `$select` of a folder listing.
pub const FOLDER_SELECT: &str = "id,displayName,parentFolderId,childFolderCount,isHidden";

/// `$select` of a message: exactly what the email document needs. Graph has no property for
/// the conversation topic, the sensitivity or the store size: those come from their MAPI
/// properties (`EXTENDED_PROPERTIES`), the same ones EWS reads.
pub const MESSAGE_SELECT: &str = "id,receivedDateTime,sentDateTime,internetMessageId,\
conversationId,hasAttachments,isRead,importance,categories";

/// PR_CONVERSATION_TOPIC: what EWS calls `message:ConversationTopic`.
const TAG_CONVERSATION_TOPIC: u32 = 0x0070;
/// PR_SENSITIVITY: `item:Sensitivity` (0 Normal, 1 Personal, 2 Private, 3 Confidential).
const TAG_SENSITIVITY: u32 = 0x0036;
/// PR_MESSAGE_SIZE: `item:Size`.
const TAG_MESSAGE_SIZE: u32 = 0x0E08;

/// `$expand` of a message: attachment metadata without content (`contentBytes` would carry
/// whole files), and the three MAPI properties Graph has no name for.
pub const MESSAGE_EXPAND: &str = "attachments($select=name,size,contentType,isInline),\
singleValueExtendedProperties($filter=id eq 'String 0x0070' or id eq 'Integer 0x0036' or \
id eq 'Integer 0x0E08')";

/// A message as listed or fetched with [`MESSAGE_SELECT`] and [`MESSAGE_EXPAND`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawMessage {
    pub id: String,
    #[serde(default)]
    pub received_date_time: Option<String>,
    #[serde(default)]
    pub sent_date_time: Option<String>,
    #[serde(default)]
    pub internet_message_id: Option<String>,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub has_attachments: Option<bool>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub is_read: Option<bool>,
    #[serde(default)]
    pub importance: Option<String>,
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    #[serde(default)]
    pub attachments: Option<Vec<RawAttachment>>,
    #[serde(default)]
    pub single_value_extended_properties: Option<Vec<ExtendedProperty>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawAttachment {
    #[serde(rename = "@odata.type", default)]
    pub odata_type: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub is_inline: Option<bool>,
}

/// `{"id": "String 0x70", "value": "…"}`: Graph sends every value as a string.
#[derive(Debug, Deserialize)]
pub struct ExtendedProperty {
    pub id: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// A boolean that some documentation samples (and maybe proxies) send as `"true"`.
fn lenient_bool<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<bool>, D::Error> {
    Ok(match serde_json::Value::deserialize(de)? {
        serde_json::Value::Bool(b) => Some(b),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        serde_json::Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    })
}

/// `"String 0x0070"`, `"String 0x70"` → (`string`, 0x70). Graph answers with the shortest hex
/// form, whatever form the request used.
fn property_tag(id: &str) -> Option<(String, u32)> {
    let (kind, tag) = id.trim().split_once(char::is_whitespace)?;
    let hex = tag
        .trim()
        .strip_prefix("0x")
        .or_else(|| tag.trim().strip_prefix("0X"))?;
    Some((
        kind.to_ascii_lowercase(),
        u32::from_str_radix(hex, 16).ok()?,
    ))
}

impl RawMessage {
    pub fn received(&self) -> Option<OffsetDateTime> {
        self.received_date_time
            .as_deref()
            .and_then(soap::parse_datetime)
    }

    fn extended(&self, kind: &str, tag: u32) -> Option<&str> {
        self.single_value_extended_properties
            .iter()
            .flatten()
            .find(|p| property_tag(&p.id).is_some_and(|(k, t)| k == kind && t == tag))
            .and_then(|p| p.value.as_deref())
    }

    /// PR_MESSAGE_SIZE, the size EWS reports as `item:Size`.
    pub fn size_bytes(&self) -> Option<u64> {
        self.extended("integer", TAG_MESSAGE_SIZE)
            .and_then(|v| v.trim().parse().ok())
    }

    /// The metadata, in EWS's vocabulary, without the MIME (fetched separately).
    pub fn into_item(self) -> FetchedItem {
        let sensitivity = self
            .extended("integer", TAG_SENSITIVITY)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .and_then(sensitivity_name)
            .map(str::to_owned);
        // As the EWS source reads it: trimmed, and an empty topic is none.
        let conversation_topic = self
            .extended("string", TAG_CONVERSATION_TOPIC)
            .map(as_ews_text)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let size_bytes = self.size_bytes();
        FetchedItem {
            item_id: ews_id(&self.id),
            mime: Vec::new(),
            received: self.received(),
            sent: self
                .sent_date_time
                .as_deref()
                .and_then(soap::parse_datetime),
            internet_message_id: self.internet_message_id.filter(|s| !s.trim().is_empty()),
            conversation_id: self.conversation_id.as_deref().map(ews_id),
            conversation_topic,
            has_attachments: self.has_attachments,
            is_read: self.is_read,
            importance: self.importance.as_deref().map(capitalised),
            sensitivity,
            categories: self
                .categories
                .unwrap_or_default()
                .iter()
                .map(|c| as_ews_text(c))
                .collect(),
            size_bytes,
            attachments: self
                .attachments
                .unwrap_or_default()
                .into_iter()
                .map(RawAttachment::into_info)
                .collect(),
        }
    }
}

impl RawAttachment {
    fn into_info(self) -> AttachmentInfo {
        let is_item = self
            .odata_type
            .as_deref()
            .is_some_and(|t| t.to_ascii_lowercase().ends_with("itemattachment"));
        AttachmentInfo {
            // Trimmed, as the EWS source reads element text.
            name: as_ews_text(self.name.as_deref().unwrap_or_default())
                .trim()
                .to_owned(),
            size_bytes: self.size,
            // As on EWS: an attached item without a content type is an attached message.
            content_type: self
                .content_type
                .map(|t| as_ews_text(&t).trim().to_owned())
                .filter(|t| !t.is_empty())
                .or_else(|| is_item.then(|| "message/rfc822".to_owned())),
            inline: self.is_inline.unwrap_or(false),
        }
    }
}

/// Text as the EWS source reads it: characters XML 1.0 forbids (U+001F in an attachment
/// name, say), which Exchange sends in EWS as illegal character references, become U+FFFD
/// there (`soap::sanitize_char_refs`); Graph's JSON carries them as they are. Replacing them
/// here too keeps the documents of both sources identical.
fn as_ews_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if matches!(u32::from(c), 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF) {
                c
            } else {
                '\u{FFFD}'
            }
        })
        .collect()
}

/// EWS's spelling of PR_SENSITIVITY values.
fn sensitivity_name(value: i64) -> Option<&'static str> {
    match value {
        0 => Some("Normal"),
        1 => Some("Personal"),
        2 => Some("Private"),
        3 => Some("Confidential"),
        _ => None,
    }
}

/// Graph's `normal` as EWS's `Normal`.
fn capitalised(value: &str) -> String {
    let mut chars = value.trim().chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The EWS form of a Graph id: Graph's default (REST) ids are EWS ids in base64's URL-safe
/// alphabet (`-` for `/`, `_` for `+`), as Office.js `convertToEwsId` converts them. Standard
/// base64 has neither `-` nor `_`, so an id that is already in EWS form stays as it is.
/// Documents of emails without a Message-ID hash this id, and conversation ids are stored in
/// this form, so both read the same as through EWS.
pub fn ews_id(id: &str) -> String {
    id.replace('-', "/").replace('_', "+")
}

/// Graph's error body: `{"error": {"code", "message", "innerError": {…}}}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, alias = "innererror", rename = "innerError")]
    inner_error: Option<serde_json::Value>,
}

/// Graph's error code, its message, and the request id (for Microsoft support), when the body
/// is a Graph error.
pub fn error_of(body: &[u8]) -> Option<(String, String, Option<String>)> {
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    let request_id = parsed
        .error
        .inner_error
        .as_ref()
        .and_then(|inner| inner.get("request-id"))
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    Some((
        parsed.error.code.unwrap_or_default(),
        parsed.error.message.unwrap_or_default(),
        request_id,
    ))
}

/// Percent-encodes a path segment (a mailbox address or an id): everything but unreserved
/// characters, `@` and `=`, so `/`, `+`, `#` (guest UPNs) and spaces cannot change the path.
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@=".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Percent-encodes a query value we build: OData needs its `$ ( ) ' , =` as they are, only
/// spaces and characters that are not allowed in a URL at all are encoded (`+` too, which some
/// servers read as a space).
pub fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~$()',=:/@!*;".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A link the server gave, made acceptable to the HTTP stack without changing what it means:
/// characters that may not appear in a URL (a space, `"`, `<`, non-ASCII) are percent-encoded;
/// everything else, escapes included, stays as given.
pub fn as_given(link: &str) -> String {
    let mut out = String::with_capacity(link.len());
    for ch in link.trim().chars() {
        let allowed = ch.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(ch);
        if allowed {
            out.push(ch);
        } else {
            let mut buf = [0u8; 4];
            for byte in ch.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_maps_to_the_ews_vocabulary() {
        let json = r##"{
            "@odata.etag": "W/\"CQAAABYAAAC4\"",
            "id": "AAMkAD-x_y=",
            "receivedDateTime": "2024-03-01T08:00:05Z",
            "sentDateTime": "2024-03-01T07:59:58Z",
            "internetMessageId": "<m1@example.test>",
            "conversationId": "AAQkA-b_c=",
            "hasAttachments": "true",
            "isRead": false,
            "importance": "high",
            "categories": ["Red category"],
            "attachments": [
                {"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.pdf", "size": 12,
                 "contentType": "application/pdf", "isInline": false},
                {"@odata.type": "#microsoft.graph.itemAttachment", "name": "fwd", "size": 99,
                 "contentType": null, "isInline": false}
            ],
            "singleValueExtendedProperties": [
                {"id": "String 0x70", "value": "Budget"},
                {"id": "Integer 0x36", "value": "2"},
                {"id": "Integer 0xe08", "value": "4711"}
            ]
        }"##;
        let raw: RawMessage = serde_json::from_str(json).unwrap();
        assert_eq!(raw.size_bytes(), Some(4711));
        let item = raw.into_item();
        assert_eq!(item.item_id, "AAMkAD/x+y=");
        assert_eq!(item.conversation_id.as_deref(), Some("AAQkA/b+c="));
        assert_eq!(item.conversation_topic.as_deref(), Some("Budget"));
        assert_eq!(item.importance.as_deref(), Some("High"));
        assert_eq!(item.sensitivity.as_deref(), Some("Private"));
        assert_eq!(item.has_attachments, Some(true));
        assert_eq!(item.is_read, Some(false));
        assert_eq!(item.size_bytes, Some(4711));
        assert_eq!(item.categories, ["Red category"]);
        assert_eq!(
            item.sent.map(soap::format_datetime).as_deref(),
            Some("2024-03-01T07:59:58Z")
        );
        assert_eq!(item.attachments.len(), 2);
        assert_eq!(
            item.attachments[1].content_type.as_deref(),
            Some("message/rfc822")
        );
    }

    #[test]
    fn text_reads_as_through_ews() {
        let raw: RawMessage = serde_json::from_str(
            r#"{"id": "x", "categories": ["a\u0001b"],
                "attachments": [{"name": " scan\u001f01.pdf ", "contentType": "application/pdf"}],
                "singleValueExtendedProperties": [{"id": "String 0x70", "value": "  "}]}"#,
        )
        .unwrap();
        let item = raw.into_item();
        assert_eq!(item.categories, ["a\u{FFFD}b"]);
        assert_eq!(item.attachments[0].name, "scan\u{FFFD}01.pdf");
        assert_eq!(item.conversation_topic, None);
    }

    #[test]
    fn missing_fields_stay_absent() {
        let raw: RawMessage = serde_json::from_str(r#"{"id": "x"}"#).unwrap();
        let item = raw.into_item();
        assert_eq!(item.received, None);
        assert_eq!(item.importance, None);
        assert_eq!(item.sensitivity, None);
        assert_eq!(item.size_bytes, None);
        assert!(item.attachments.is_empty() && item.categories.is_empty());
    }

    #[test]
    fn property_tags_parse_in_both_forms() {
        assert_eq!(property_tag("String 0x0070"), Some(("string".into(), 0x70)));
        assert_eq!(
            property_tag("Integer 0xE08"),
            Some(("integer".into(), 0xe08))
        );
        assert_eq!(property_tag("nonsense"), None);
    }

    #[test]
    fn search_folders_are_recognised() {
        let raw: RawFolder = serde_json::from_str(
            r##"{"@odata.type": "#microsoft.graph.mailSearchFolder", "id": "s", "displayName": "x"}"##,
        )
        .unwrap();
        assert!(raw.is_search_folder());
    }

    #[test]
    fn errors_parse_with_either_inner_error_spelling() {
        let body = br#"{"error":{"code":"ErrorItemNotFound","message":"gone","innererror":{"request-id":"r1"}}}"#;
        assert_eq!(
            error_of(body),
            Some(("ErrorItemNotFound".into(), "gone".into(), Some("r1".into())))
        );
        assert_eq!(error_of(b"<html>"), None);
    }

    #[test]
    fn encoding() {
        assert_eq!(
            path_segment("a b/c+d#EXT#@x.y="),
            "a%20b%2Fc%2Bd%23EXT%23@x.y="
        );
        assert_eq!(
            query_value("receivedDateTime ge 2024-01-01T00:00:00Z"),
            "receivedDateTime%20ge%202024-01-01T00:00:00Z"
        );
        assert_eq!(
            as_given("https://h/x?$skip=1&a=b c"),
            "https://h/x?$skip=1&a=b%20c"
        );
        assert_eq!(as_given("https://h/x?%24skip=1"), "https://h/x?%24skip=1");
        assert_eq!(ews_id("AA-b_c="), "AA/b+c=");
    }
}
