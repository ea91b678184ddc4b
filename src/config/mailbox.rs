//! Judges the `mailboxes` entries: addresses, duplicates, buckets and where syncing starts.

use std::collections::BTreeMap;

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::error::{ConfigError, shown_str};
use super::raw::{Field, RawBucket, RawMailbox, Slot};
use super::types::{Bucket, MailboxConfig, StartFrom};

pub(super) const ADDRESS_ALLOWED: &str =
    "an email address: exactly one '@' with text on both sides, no spaces";
const BUCKET_PART_ALLOWED: &str = "1 to 64 characters, each A-Z, a-z, 0-9, '_' or '-' \
     (it becomes a path segment, so nothing else is allowed)";
const BUCKET_PART_MAX_CHARS: usize = 64;

/// Whether `address` looks like `local@domain`. Exchange is the judge of the rest.
pub(super) fn is_address(address: &str) -> bool {
    let mut parts = address.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !address.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Whether `part` is safe as one path segment of a bucket's location.
fn is_bucket_part(part: &str) -> bool {
    (1..=BUCKET_PART_MAX_CHARS).contains(&part.len())
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The valid mailboxes, sorted by address; every problem goes to `errors`.
pub(super) fn validate_all(
    raw: Slot<Vec<RawMailbox>>,
    errors: &mut Vec<ConfigError>,
) -> Vec<MailboxConfig> {
    let Some(field) = raw.required(errors, || ConfigError::Missing {
        key: "mailboxes".to_owned(),
        why: "with at least one mailbox to sync".to_owned(),
    }) else {
        return Vec::new();
    };
    if field.value.is_empty() {
        errors.push(field.invalid(
            "at least one mailbox, e.g. {\"user@example.com\": {\"bucket\": \
             {\"owner\": \"OWNER\", \"name\": \"NAME\"}}}",
        ));
        return Vec::new();
    }
    // Lower-cased address → the spelling seen first, to name it in the duplicate error.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut mailboxes = Vec::with_capacity(field.value.len());
    for raw in field.value {
        let address_ok = if !is_address(&raw.address) {
            errors.push(invalid_address(&raw, ADDRESS_ALLOWED.to_owned()));
            false
        } else if let Some(first) = seen.get(&raw.address.to_lowercase()) {
            errors.push(invalid_address(
                &raw,
                format!(
                    "an address not already listed: it is the same mailbox as {first:?} \
                     (addresses are compared case-insensitively)"
                ),
            ));
            false
        } else {
            seen.insert(raw.address.to_lowercase(), raw.address.clone());
            true
        };
        if let Some(mailbox) = validate_one(raw, errors)
            && address_ok
        {
            mailboxes.push(mailbox);
        }
    }
    mailboxes.sort_by(|a, b| a.address.cmp(&b.address));
    mailboxes
}

fn invalid_address(raw: &RawMailbox, allowed: String) -> ConfigError {
    ConfigError::Invalid {
        key: raw.path.clone(),
        value: shown_str(&raw.address),
        allowed,
    }
}

/// The entry's settings, checked even when its address is bad so that all errors show at once.
fn validate_one(raw: RawMailbox, errors: &mut Vec<ConfigError>) -> Option<MailboxConfig> {
    let bucket = raw
        .bucket
        .required(errors, || ConfigError::Missing {
            key: format!("{}.bucket", raw.path),
            why: "for every mailbox".to_owned(),
        })
        .and_then(|field| bucket(field, errors));
    let start_from = match raw.start_from {
        Slot::Absent => Some(StartFrom::default()),
        Slot::Mistyped => None,
        Slot::Given(field) => match field.value.as_str() {
            "bucket" => Some(StartFrom::Bucket),
            "config" => Some(StartFrom::Config),
            _ => {
                errors.push(field.invalid("\"bucket\" or \"config\""));
                None
            }
        },
    };
    let start_timestamp = match raw.start_timestamp {
        Slot::Absent => Some(None),
        Slot::Mistyped => None,
        Slot::Given(field) => match OffsetDateTime::parse(&field.value, &Rfc3339)
            .ok()
            // An offset can push the UTC instant past year 9999, the last one `time` holds.
            .and_then(|timestamp| timestamp.checked_to_offset(UtcOffset::UTC))
        {
            Some(timestamp) => Some(Some(timestamp)),
            None => {
                errors.push(field.invalid(
                    "an RFC 3339 timestamp with an offset, e.g. \"2020-01-01T00:00:00Z\" or \
                     \"2020-01-01T02:00:00+02:00\"",
                ));
                None
            }
        },
    };
    // A bad timestamp is already reported; only an absent one is missing.
    if start_from == Some(StartFrom::Config) && matches!(start_timestamp, Some(None)) {
        errors.push(ConfigError::Missing {
            key: format!("{}.start_timestamp", raw.path),
            why: "when start_from is \"config\"".to_owned(),
        });
        return None;
    }
    Some(MailboxConfig {
        address: raw.address,
        bucket: bucket?,
        start_from: start_from?,
        start_timestamp: start_timestamp?,
    })
}

fn bucket(field: Field<RawBucket>, errors: &mut Vec<ConfigError>) -> Option<Bucket> {
    let mut part = |part: Slot<String>, name: &str| {
        let part = part.required(errors, || ConfigError::Missing {
            key: format!("{}.{name}", field.key),
            why: "in every bucket".to_owned(),
        })?;
        if is_bucket_part(&part.value) {
            Some(part.value)
        } else {
            errors.push(part.invalid(BUCKET_PART_ALLOWED));
            None
        }
    };
    let owner = part(field.value.owner, "owner");
    let name = part(field.value.name, "name");
    Some(Bucket {
        owner: owner?,
        name: name?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for good in ["a@b.com", "first.last+tag@sub.example.co.uk", "a@b"] {
            assert!(is_address(good), "{good}");
        }
        for bad in ["", "a", "@b.com", "a@", "a@b@c", "a b@c.com", "a@b.com\n"] {
            assert!(!is_address(bad), "{bad:?}");
        }
    }

    #[test]
    fn bucket_parts() {
        for good in ["a", "my-bucket_2", &"x".repeat(64)] {
            assert!(is_bucket_part(good), "{good}");
        }
        for bad in ["", "../x", "a/b", "a.b", "é", "a b", &"x".repeat(65), ".."] {
            assert!(!is_bucket_part(bad), "{bad}");
        }
    }
}
