//! Turns the file's bytes into a JSON object, reporting syntax errors by line and column, and
//! finds keys given twice in one object (which `serde_json::Value` would silently collapse).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::error::ConfigError;

/// Editors on Windows may save UTF-8 with a byte-order mark, which is not JSON.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The top-level object of the document, or the one syntax error that stops reading it.
pub(super) fn parse_object(json: &[u8], origin: &str) -> Result<Map<String, Value>, ConfigError> {
    let json = json.strip_prefix(UTF8_BOM).unwrap_or(json);
    let value: Value = serde_json::from_slice(json).map_err(|error| {
        let full = error.to_string();
        // serde_json appends the position, which the Syntax error carries on its own.
        let suffix = format!(" at line {} column {}", error.line(), error.column());
        ConfigError::Syntax {
            origin: origin.to_owned(),
            line: error.line(),
            column: error.column(),
            message: full.strip_suffix(&suffix).unwrap_or(&full).to_owned(),
        }
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => {
            let (line, column) = first_token_position(json);
            Err(ConfigError::Syntax {
                origin: origin.to_owned(),
                line,
                column,
                message: format!(
                    "expected a JSON object at the top level, found {}",
                    kind_name(&other)
                ),
            })
        }
    }
}

/// "a string", "an array", ... for messages.
pub(super) fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// 1-based line and column of the first non-whitespace byte, counted as serde_json counts.
fn first_token_position(json: &[u8]) -> (usize, usize) {
    let start = json
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
        .unwrap_or(json.len());
    let before = &json[..start];
    let line = 1 + before.iter().filter(|&&byte| byte == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |newline| newline + 1);
    (line, start - line_start + 1)
}

/// A key that appears more than once in one object: its path from the top, and its count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DuplicateKey {
    pub path: Vec<PathSegment>,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PathSegment {
    Key(String),
    Index(usize),
}

/// Every key given more than once in the same object, anywhere in the document.
///
/// Only meaningful for a document that already parsed as JSON; anything else yields nothing.
pub(super) fn duplicate_keys(json: &[u8]) -> Vec<DuplicateKey> {
    let json = json.strip_prefix(UTF8_BOM).unwrap_or(json);
    let mut path = Vec::new();
    let mut found = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let walker = Walker {
        path: &mut path,
        found: &mut found,
    };
    if walker.deserialize(&mut deserializer).is_err() {
        return Vec::new();
    }
    found
}

/// Visits every value, remembering where it is, without building anything.
struct Walker<'a> {
    path: &'a mut Vec<PathSegment>,
    found: &'a mut Vec<DuplicateKey>,
}

impl<'de> DeserializeSeed<'de> for Walker<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walker<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            self.path.push(PathSegment::Index(index));
            let more = seq.next_element_seed(Walker {
                path: &mut *self.path,
                found: &mut *self.found,
            })?;
            self.path.pop();
            if more.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            *counts.entry(key.clone()).or_default() += 1;
            self.path.push(PathSegment::Key(key));
            map.next_value_seed(Walker {
                path: &mut *self.path,
                found: &mut *self.found,
            })?;
            self.path.pop();
        }
        for (key, count) in counts {
            if count > 1 {
                let mut path = self.path.clone();
                path.push(PathSegment::Key(key));
                self.found.push(DuplicateKey { path, count });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax(json: &str) -> (usize, usize, String) {
        match parse_object(json.as_bytes(), "c.json") {
            Err(ConfigError::Syntax {
                origin,
                line,
                column,
                message,
            }) => {
                assert_eq!(origin, "c.json");
                (line, column, message)
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn syntax_errors_carry_line_and_column_without_the_position_suffix() {
        let (line, column, message) = syntax("{\n  \"a\": 1,\n  \"b\": 2 \"c\": 3\n}");
        assert_eq!((line, column), (3, 10));
        assert_eq!(message, "expected `,` or `}`");
    }

    #[test]
    fn non_objects_are_syntax_errors_at_their_first_token() {
        assert_eq!(
            syntax("\n\n   [1, 2]"),
            (
                3,
                4,
                "expected a JSON object at the top level, found an array".into()
            )
        );
        assert_eq!(
            syntax("null").2,
            "expected a JSON object at the top level, found null"
        );
    }

    #[test]
    fn a_byte_order_mark_is_tolerated() {
        assert!(parse_object(b"\xEF\xBB\xBF{}", "c.json").is_ok());
    }

    #[test]
    fn duplicates_are_found_at_any_depth() {
        let key = |name: &str| PathSegment::Key(name.to_owned());
        let found =
            duplicate_keys(br#"{"a": 1, "b": {"x": 1, "x": 2, "x": 3}, "a": [ {"y":1,"y":2} ]}"#);
        assert_eq!(
            found,
            vec![
                DuplicateKey {
                    path: vec![key("b"), key("x")],
                    count: 3
                },
                DuplicateKey {
                    path: vec![key("a"), PathSegment::Index(0), key("y")],
                    count: 2
                },
                DuplicateKey {
                    path: vec![key("a")],
                    count: 2
                },
            ]
        );
        assert!(duplicate_keys(br#"{"a": 1, "b": 2}"#).is_empty());
        assert!(duplicate_keys(b"{not json").is_empty());
    }
}
