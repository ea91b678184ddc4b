//! What can be wrong with a config, and how each problem is shown to the operator.

use std::fmt;

use serde_json::Value;

use super::json::PathSegment;

/// Every problem found in one config, so the operator can fix them all in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// One problem in a config.
///
/// No variant ever holds a secret: values of secret keys are shown as [`crate::secret::REDACTED`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The file is not valid JSON (or not an object): names origin, line and column.
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A key has a value outside what is allowed.
    Invalid {
        key: String,
        value: String,
        allowed: String,
    },
    /// A required key is absent.
    Missing { key: String, why: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Syntax {
                origin,
                line,
                column,
                message,
            } => write!(f, "{origin}:{line}:{column}: {message}"),
            ConfigError::Invalid {
                key,
                value,
                allowed,
            } => write!(f, "`{key}` = {value}: allowed {allowed}"),
            ConfigError::Missing { key, why } => write!(f, "`{key}` is required {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Longest value text put in a message: a whole PEM file pasted into the wrong key should not
/// flood the log, and the less of a misplaced value is echoed the better.
const MAX_SHOWN_CHARS: usize = 80;

/// A value as the operator wrote it (JSON text, strings quoted), cut short if long.
pub(super) fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// A string value as JSON text.
pub(super) fn shown_str(text: &str) -> String {
    shown(&Value::String(text.to_owned()))
}

/// One segment of a key path: bare when it is a plain identifier, else JSON-quoted so that
/// dots, quotes and spaces inside it stay unambiguous.
pub(super) fn segment(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        key.to_owned()
    } else {
        Value::String(key.to_owned()).to_string()
    }
}

/// The path of one mailbox entry. Addresses are always quoted (they contain `@` and `.`, and a
/// malformed one should look like the string it is).
pub(super) fn mailbox_path(address: &str) -> String {
    format!("mailboxes.{}", Value::String(address.to_owned()))
}

/// A path found by the duplicate-key scan, spelt like every other key path.
pub(super) fn format_path(path: &[PathSegment]) -> String {
    let mut text = String::new();
    for (depth, part) in path.iter().enumerate() {
        match part {
            PathSegment::Key(key) if depth == 1 && text == "mailboxes" => {
                text = mailbox_path(key);
            }
            PathSegment::Key(key) => {
                if depth > 0 {
                    text.push('.');
                }
                text.push_str(&segment(key));
            }
            PathSegment::Index(index) => text.push_str(&format!("[{index}]")),
        }
    }
    text
}

/// `prefix` is empty at the top level, else a path ending in `.`.
pub(super) fn child_path(prefix: &str, key: &str) -> String {
    format!("{prefix}{}", segment(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_the_documented_shapes() {
        let errors = ConfigErrors(vec![
            ConfigError::Syntax {
                origin: "config.json".into(),
                line: 3,
                column: 14,
                message: "expected `,` or `}`".into(),
            },
            ConfigError::Invalid {
                key: "max_concurrent_uploads".into(),
                value: "40".into(),
                allowed: "0 to 32".into(),
            },
            ConfigError::Missing {
                key: "auth_password".into(),
                why: "when auth_type is \"ntlm\"".into(),
            },
        ]);
        assert_eq!(
            errors.to_string(),
            "config.json:3:14: expected `,` or `}`\n\
             `max_concurrent_uploads` = 40: allowed 0 to 32\n\
             `auth_password` is required when auth_type is \"ntlm\""
        );
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let long = "é".repeat(200);
        let text = shown_str(&long);
        assert_eq!(text.chars().count(), MAX_SHOWN_CHARS + 1);
        assert!(text.starts_with("\"é"));
        assert!(text.ends_with('…'));
    }

    #[test]
    fn paths_quote_only_what_needs_it() {
        assert_eq!(segment("poll_frequency"), "poll_frequency");
        assert_eq!(segment("a.b"), "\"a.b\"");
        assert_eq!(segment(""), "\"\"");
        assert_eq!(mailbox_path("a@b.com"), "mailboxes.\"a@b.com\"");
        assert_eq!(
            child_path("mailboxes.\"a@b.com\".", "bar"),
            "mailboxes.\"a@b.com\".bar"
        );
        let key = |name: &str| PathSegment::Key(name.to_owned());
        assert_eq!(
            format_path(&[key("mailboxes"), key("a@b.com"), key("bucket")]),
            "mailboxes.\"a@b.com\".bucket"
        );
        assert_eq!(
            format_path(&[key("x"), PathSegment::Index(2), key("a b")]),
            "x[2].\"a b\""
        );
    }
}
