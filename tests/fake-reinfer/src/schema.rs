//! Strict validation of request bodies against the shapes the public clients use, so a client
//! that drifts from them fails here instead of against the real service.
//!
//! The real server may ignore unknown fields (serde's default); this fake refuses them on
//! purpose, naming the field, because a field the server ignores is data silently lost.

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `^[A-Za-z0-9-_]{1,256}$`, the rule for each half of a bucket's full name.
pub fn is_bucket_name_part(part: &str) -> bool {
    (1..=256).contains(&part.len())
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Keyed sync state keys are hex encoded ids (the doc comment of `keyed_sync_state_ids`).
pub fn is_state_key(key: &str) -> bool {
    (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `{"bucket":{"bucket_type":"emails","title"?:string}}`; returns the title.
pub fn new_bucket(body: &Value) -> Result<Option<String>, String> {
    let top = object(body, "body")?;
    only_keys(top, "body", &["bucket"])?;
    let bucket = object(
        top.get("bucket").ok_or("missing field \"bucket\"")?,
        "bucket",
    )?;
    only_keys(bucket, "bucket", &["bucket_type", "title"])?;
    match bucket.get("bucket_type") {
        None => {}
        Some(Value::String(t)) if t == "emails" => {}
        Some(other) => {
            return Err(format!(
                "bucket.bucket_type: unknown variant {other}, expected \"emails\""
            ));
        }
    }
    match bucket.get("title") {
        None => Ok(None),
        Some(Value::String(title)) => Ok(Some(title.clone())),
        Some(other) => Err(format!("bucket.title: expected a string, got {other}")),
    }
}

/// `{"emails":[NewEmail,...]}`: returns the emails.
pub fn put_emails(body: &Value) -> Result<&Vec<Value>, String> {
    let top = object(body, "body")?;
    only_keys(top, "body", &["emails"])?;
    let Some(Value::Array(emails)) = top.get("emails") else {
        return Err("missing field \"emails\" (an array)".to_owned());
    };
    for (index, email) in emails.iter().enumerate() {
        new_email(email).map_err(|err| {
            let id = email.get("id").and_then(Value::as_str).unwrap_or("?");
            format!("emails[{index}] (id {id:?}): {err}")
        })?;
    }
    Ok(emails)
}

/// One `NewEmail`, exactly as `reinfer-client` declares it (plus the OpenAPI's `inline`).
fn new_email(email: &Value) -> Result<(), String> {
    let email = object(email, "email")?;
    only_keys(
        email,
        "email",
        &[
            "id",
            "mailbox",
            "timestamp",
            "mime_content",
            "metadata",
            "attachments",
        ],
    )?;
    let id = required_string(email, "id")?;
    if id.is_empty() {
        return Err("id: must not be empty".to_owned());
    }
    required_string(email, "mailbox")?;
    let timestamp = required_string(email, "timestamp")?;
    if OffsetDateTime::parse(timestamp, &Rfc3339).is_err() {
        return Err(format!(
            "timestamp: {timestamp:?} is not an RFC 3339 date-time"
        ));
    }
    required_string(email, "mime_content")?;
    match email.get("metadata") {
        None | Some(Value::Null) => {}
        Some(metadata) => email_metadata(metadata)?,
    }
    match email.get("attachments") {
        None | Some(Value::Null) => {}
        Some(Value::Array(attachments)) => {
            for (index, attachment) in attachments.iter().enumerate() {
                attachment_metadata(attachment)
                    .map_err(|err| format!("attachments[{index}].{err}"))?;
            }
        }
        Some(other) => return Err(format!("attachments: expected an array, got {other}")),
    }
    Ok(())
}

/// The ten `EmailMetadata` keys; `size` is an `i32` in the OpenAPI schema.
fn email_metadata(metadata: &Value) -> Result<(), String> {
    let metadata = object(metadata, "metadata")?;
    for (key, value) in metadata {
        let ok = match key.as_str() {
            "sensitivity" | "importance" | "conversation_id" | "conversation_topic"
            | "received_at" => value.is_string(),
            "has_attachments" | "is_read" => value.is_boolean(),
            "categories" | "folder" => string_array(value),
            "size" => small_size(value),
            _ => return Err(format!("metadata: unknown field {key:?}")),
        };
        if !ok {
            return Err(format!("metadata.{key}: wrong type ({value})"));
        }
    }
    Ok(())
}

/// `AttachmentMetadata`: `name`, `size`, `content_type` required; `inline`, `content_hash`,
/// `attachment_reference` optional.
fn attachment_metadata(attachment: &Value) -> Result<(), String> {
    let attachment = object(attachment, "attachment")?;
    for key in ["name", "size", "content_type"] {
        if !attachment.contains_key(key) {
            return Err(format!("{key}: missing field"));
        }
    }
    for (key, value) in attachment {
        let ok = match key.as_str() {
            "name" | "content_type" | "content_hash" | "attachment_reference" => value.is_string(),
            "size" => small_size(value),
            "inline" => value.is_boolean(),
            _ => return Err(format!("unknown field {key:?}")),
        };
        if !ok {
            return Err(format!("{key}: wrong type ({value})"));
        }
    }
    Ok(())
}

/// `{"keyed_sync_state":{...}}` (the store body `KeyedSyncState1`); returns the inner object.
pub fn keyed_sync_state(body: &Value) -> Result<Value, String> {
    let top = object(body, "body")?;
    only_keys(top, "body", &["keyed_sync_state"])?;
    let state = object(
        top.get("keyed_sync_state")
            .ok_or("missing field \"keyed_sync_state\"")?,
        "keyed_sync_state",
    )?;
    for (key, value) in state {
        let ok = match key.as_str() {
            "mailbox_name" => value.is_string(),
            "folder_id" | "fingerprint" => value.is_string() || value.is_null(),
            "folder_path" => value.is_null() || string_array(value),
            "status" => matches!(value.as_str(), Some("IN_PROGRESS" | "UP_TO_DATE")),
            "synced_until" | "last_synced_at" => {
                value.is_null()
                    || value
                        .as_str()
                        .is_some_and(|t| OffsetDateTime::parse(t, &Rfc3339).is_ok())
            }
            _ => return Err(format!("keyed_sync_state: unknown field {key:?}")),
        };
        if !ok {
            return Err(format!("keyed_sync_state.{key}: invalid value {value}"));
        }
    }
    for key in ["mailbox_name", "status"] {
        if !state.contains_key(key) {
            return Err(format!("keyed_sync_state: missing field {key:?}"));
        }
    }
    Ok(Value::Object(state.clone()))
}

/// `{"mailbox_name":"a@b.com"}`; returns the name.
pub fn keyed_sync_state_ids(body: &Value) -> Result<String, String> {
    let top = object(body, "body")?;
    only_keys(top, "body", &["mailbox_name"])?;
    Ok(required_string(top, "mailbox_name")?.to_owned())
}

fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("{what}: expected an object"))
}

fn only_keys(map: &Map<String, Value>, what: &str, allowed: &[&str]) -> Result<(), String> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(format!("{what}: unknown field {key:?}")),
        None => Ok(()),
    }
}

fn required_string<'a>(map: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match map.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("{key}: expected a string, got {other}")),
        None => Err(format!("missing field {key:?}")),
    }
}

fn string_array(value: &Value) -> bool {
    value
        .as_array()
        .is_some_and(|items| items.iter().all(Value::is_string))
}

fn small_size(value: &Value) -> bool {
    value.as_u64().is_some_and(|n| n <= i32::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn email() -> Value {
        json!({"id": "<a@b>", "mailbox": "m@x", "timestamp": "2024-01-01T00:00:00Z",
               "mime_content": "Subject: x\r\n\r\nbody",
               "metadata": {"folder": ["Inbox"], "size": 12, "is_read": true,
                            "received_at": "2024-01-01T00:00:01Z", "categories": []},
               "attachments": [{"name": "a.pdf", "size": 3, "content_type": "application/pdf",
                                "inline": false}]})
    }

    #[test]
    fn accepts_the_documented_email() {
        let body = json!({"emails": [email()]});
        assert_eq!(put_emails(&body).unwrap().len(), 1);
    }

    #[test]
    fn names_what_is_wrong() {
        let check = |mutate: &dyn Fn(&mut Value), needle: &str| {
            let mut e = email();
            mutate(&mut e);
            let err = put_emails(&json!({"emails": [e]})).unwrap_err();
            assert!(err.contains(needle), "{err} should mention {needle}");
        };
        check(&|e| e["subject"] = json!("x"), "unknown field \"subject\"");
        check(
            &|e| e["metadata"]["flag"] = json!(1),
            "unknown field \"flag\"",
        );
        check(&|e| e["metadata"]["size"] = json!(-1), "metadata.size");
        check(
            &|e| e["metadata"]["size"] = json!(1u64 << 31),
            "metadata.size",
        );
        check(
            &|e| e["metadata"]["folder"] = json!("Inbox"),
            "metadata.folder",
        );
        check(&|e| e["timestamp"] = json!("yesterday"), "timestamp");
        check(&|e| e["mime_content"] = json!(null), "mime_content");
        check(
            &|e| {
                e.as_object_mut().unwrap().remove("mailbox");
            },
            "missing field \"mailbox\"",
        );
        check(
            &|e| e["attachments"][0]["bytes"] = json!("x"),
            "attachments[0].unknown field \"bytes\"",
        );
        check(
            &|e| {
                e["attachments"][0].as_object_mut().unwrap().remove("size");
            },
            "attachments[0].size: missing",
        );
        let err = put_emails(&json!({"emails": [], "extra": 1})).unwrap_err();
        assert!(err.contains("\"extra\""), "{err}");
    }

    #[test]
    fn bucket_and_state_shapes() {
        assert_eq!(
            new_bucket(&json!({"bucket": {"bucket_type": "emails"}})),
            Ok(None)
        );
        assert!(new_bucket(&json!({"bucket": {"bucket_type": "comments"}})).is_err());
        assert!(new_bucket(&json!({"bucket_type": "emails"})).is_err());
        let state = json!({"keyed_sync_state": {"mailbox_name": "a@b", "folder_id": "f",
            "folder_path": ["Inbox"], "status": "UP_TO_DATE",
            "synced_until": "2024-01-01T00:00:00Z", "fingerprint": "x"}});
        assert!(keyed_sync_state(&state).is_ok());
        let mut bad = state.clone();
        bad["keyed_sync_state"]["status"] = json!("ok");
        assert!(keyed_sync_state(&bad).unwrap_err().contains("status"));
        let mut bad = state;
        bad["keyed_sync_state"]["ids"] = json!([]);
        assert!(keyed_sync_state(&bad).unwrap_err().contains("\"ids\""));
        assert!(is_state_key("00ff"));
        assert!(!is_state_key("a/b") && !is_state_key(""));
        assert!(is_bucket_name_part("my-bucket_1") && !is_bucket_name_part("a.b"));
    }
}
