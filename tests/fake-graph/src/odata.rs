//! The OData query options the fake understands, parsed and checked the way Graph does:
//! `$filter` (received-time comparisons), `$orderby` (and the rule that binds it to
//! `$filter`), `$select`, `$expand` (attachments, single-value extended properties), `$top`,
//! `$skip`, `$skiptoken`.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A client error as Graph words it: status, code, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Rejection {
        Rejection {
            status: 400,
            code,
            message: message.into(),
        }
    }
}

/// `%XX` and `+` (a space in query strings) decoded; invalid escapes kept as they are.
pub fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters in order, names and values decoded (`%24top` is `$top`).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name, true), percent_decode(value, true))
        })
        .collect()
}

/// The value of a query option; option names compare case-insensitively, as on Graph.
pub fn option<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A comparison operator of `$filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Ge,
    Gt,
    Le,
    Lt,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        Some(match text.to_ascii_lowercase().as_str() {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "ge" => Op::Ge,
            "gt" => Op::Gt,
            "le" => Op::Le,
            "lt" => Op::Lt,
            _ => return None,
        })
    }

    pub fn holds(self, left: OffsetDateTime, right: OffsetDateTime) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Ne => left != right,
            Op::Ge => left >= right,
            Op::Gt => left > right,
            Op::Le => left <= right,
            Op::Lt => left < right,
        }
    }
}

/// One `property op value` term of a `$filter` conjunction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// As written (the fake compares names case-insensitively).
    pub property: String,
    pub op: Op,
    pub value: OffsetDateTime,
}

/// Properties the fake can filter and sort messages on.
const DATE_PROPERTIES: &[&str] = &["receivedDateTime", "sentDateTime"];

/// Splits on whitespace outside single quotes and parentheses.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut depth = 0usize;
    for ch in text.chars() {
        match ch {
            '\'' => {
                quoted = !quoted;
                current.push(ch);
            }
            '(' if !quoted => {
                depth += 1;
                current.push(ch);
            }
            ')' if !quoted => {
                depth = depth.saturating_sub(1);
                current.push(ch);
            }
            c if c.is_whitespace() && !quoted && depth == 0 => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn invalid_filter(detail: impl Into<String>) -> Rejection {
    Rejection::bad_request(
        "BadRequest",
        format!("Invalid filter clause: {}", detail.into()),
    )
}

/// A DateTimeOffset literal: `2024-01-01T00:00:00Z` (fractions and offsets allowed) or a
/// date `2024-01-01` (midnight UTC).
pub fn parse_datetime(text: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t.to_offset(time::UtcOffset::UTC));
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, format)
        .ok()
        .map(|d| d.midnight().assume_utc())
}

/// `receivedDateTime ge 2024-… and receivedDateTime le 2024-…`: a conjunction of date
/// comparisons. Anything else is answered like Graph answers what it cannot parse.
pub fn parse_filter(text: &str) -> Result<Vec<Comparison>, Rejection> {
    let words = tokens(text);
    if words.is_empty() {
        return Err(invalid_filter("empty"));
    }
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let [property, op, value] = match words.get(i..i + 3) {
            Some([p, o, v]) => [p, o, v],
            _ => return Err(invalid_filter(text)),
        };
        let Some(known) = DATE_PROPERTIES
            .iter()
            .find(|p| p.eq_ignore_ascii_case(property))
        else {
            return Err(Rejection::bad_request(
                "BadRequest",
                format!("The fake filters only on {DATE_PROPERTIES:?}, not '{property}'"),
            ));
        };
        let op = Op::parse(op).ok_or_else(|| invalid_filter(format!("operator '{op}'")))?;
        // A quoted date is a string, and Graph refuses to compare a date with a string.
        let value = parse_datetime(value).ok_or_else(|| {
            Rejection::bad_request(
                "BadRequest",
                format!("The DateTimeOffset text '{value}' should be in format 'yyyy-mm-ddThh:mm:ss('.'s+)?(zzzzzz)?' and each field value is within valid range."),
            )
        })?;
        out.push(Comparison {
            property: (*known).to_owned(),
            op,
            value,
        });
        i += 3;
        match words.get(i) {
            None => return Ok(out),
            Some(and) if and.eq_ignore_ascii_case("and") => i += 1,
            Some(other) => return Err(invalid_filter(format!("unexpected '{other}'"))),
        }
    }
}

/// `$orderby`: `property [asc|desc]`, comma separated. Returns (property, descending).
pub fn parse_orderby(text: &str) -> Result<Vec<(String, bool)>, Rejection> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let words: Vec<&str> = part.split_whitespace().collect();
        let (property, descending) = match words.as_slice() {
            [p] => (*p, false),
            [p, d] if d.eq_ignore_ascii_case("asc") => (*p, false),
            [p, d] if d.eq_ignore_ascii_case("desc") => (*p, true),
            _ => {
                return Err(Rejection::bad_request(
                    "BadRequest",
                    format!("Invalid $orderby clause '{part}'"),
                ));
            }
        };
        let Some(known) = DATE_PROPERTIES
            .iter()
            .find(|p| p.eq_ignore_ascii_case(property))
        else {
            return Err(Rejection::bad_request(
                "BadRequest",
                format!("The fake sorts only on {DATE_PROPERTIES:?}, not '{property}'"),
            ));
        };
        out.push(((*known).to_owned(), descending));
    }
    Ok(out)
}

/// Graph's rule for `$filter` with `$orderby` on messages: properties in `$orderby` must
/// appear in `$filter`, in the same order, before any property that is not sorted on.
pub fn check_filter_and_order(
    filter: &[Comparison],
    orderby: &[(String, bool)],
) -> Result<(), Rejection> {
    if filter.is_empty() || orderby.is_empty() {
        return Ok(());
    }
    let mut filter_properties: Vec<&str> = Vec::new();
    for c in filter {
        if !filter_properties.contains(&c.property.as_str()) {
            filter_properties.push(&c.property);
        }
    }
    let prefix_matches = orderby.len() <= filter_properties.len()
        && orderby
            .iter()
            .zip(&filter_properties)
            .all(|((o, _), f)| o == f);
    if prefix_matches {
        Ok(())
    } else {
        Err(Rejection::bad_request(
            "InefficientFilter",
            "The restriction or sort order is too complex for this operation.",
        ))
    }
}

/// `$select`: names checked against `known` (case-insensitive), answered like Graph when one
/// is unknown. Returns the names in their canonical spelling.
pub fn parse_select(
    text: &str,
    known: &[&'static str],
    type_name: &str,
) -> Result<Vec<&'static str>, Rejection> {
    let mut out = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match known.iter().find(|k| k.eq_ignore_ascii_case(name)) {
            Some(k) => out.push(*k),
            None => {
                return Err(Rejection::bad_request(
                    "RequestBroker--ParseUri",
                    format!("Could not find a property named '{name}' on type '{type_name}'."),
                ));
            }
        }
    }
    Ok(out)
}

/// Splits on commas outside parentheses and quotes.
fn top_level_items(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut quoted = false;
    for ch in text.chars() {
        match ch {
            '\'' => {
                quoted = !quoted;
                current.push(ch);
            }
            '(' if !quoted => {
                depth += 1;
                current.push(ch);
            }
            ')' if !quoted => {
                depth = depth.saturating_sub(1);
                current.push(ch);
            }
            ',' if !quoted && depth == 0 => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out.into_iter().map(|s| s.trim().to_owned()).collect()
}

/// Attachment properties `$select` may name (base type `attachment`; `contentBytes` lives on
/// the derived `fileAttachment`, which Graph refuses here).
pub const ATTACHMENT_PROPERTIES: &[&str] = &[
    "id",
    "name",
    "contentType",
    "size",
    "isInline",
    "lastModifiedDateTime",
];

/// What `$expand` asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expand {
    /// `Some` when attachments are expanded: the selected properties (empty = all).
    pub attachments: Option<Vec<&'static str>>,
    /// Extended property ids asked for, normalised to (type lower-case, tag).
    pub extended: Option<Vec<(String, u32)>>,
}

/// `"String 0x0070"` → (`string`, 0x70).
pub fn property_id(text: &str) -> Option<(String, u32)> {
    let (kind, tag) = text.trim().split_once(' ')?;
    let hex = tag
        .trim()
        .strip_prefix("0x")
        .or_else(|| tag.trim().strip_prefix("0X"))?;
    Some((
        kind.to_ascii_lowercase(),
        u32::from_str_radix(hex, 16).ok()?,
    ))
}

/// `$expand=attachments($select=…),singleValueExtendedProperties($filter=id eq '…' or …)`.
pub fn parse_expand(text: &str) -> Result<Expand, Rejection> {
    let mut expand = Expand::default();
    for item in top_level_items(text) {
        let (name, options) = match item.split_once('(') {
            Some((name, rest)) => (
                name.trim().to_owned(),
                rest.strip_suffix(')').unwrap_or(rest).to_owned(),
            ),
            None => (item.clone(), String::new()),
        };
        let options: Vec<(String, String)> = options
            .split(';')
            .filter(|o| !o.trim().is_empty())
            .map(|o| {
                let (n, v) = o.split_once('=').unwrap_or((o, ""));
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        if name.eq_ignore_ascii_case("attachments") {
            let mut selected = Vec::new();
            for (option, value) in &options {
                if option.eq_ignore_ascii_case("$select") {
                    selected =
                        parse_select(value, ATTACHMENT_PROPERTIES, "microsoft.graph.attachment")?;
                } else {
                    return Err(Rejection::bad_request(
                        "BadRequest",
                        format!("The fake does not support {option} inside $expand=attachments"),
                    ));
                }
            }
            expand.attachments = Some(selected);
        } else if name.eq_ignore_ascii_case("singleValueExtendedProperties") {
            let Some((_, filter)) = options
                .iter()
                .find(|(o, _)| o.eq_ignore_ascii_case("$filter"))
            else {
                return Err(Rejection::bad_request(
                    "ErrorInvalidRequest",
                    "Expanding singleValueExtendedProperties needs a $filter on id.",
                ));
            };
            let mut ids = Vec::new();
            for term in split_or(filter) {
                let words = tokens(&term);
                let id = match words.as_slice() {
                    [id, eq, value]
                        if id.eq_ignore_ascii_case("id") && eq.eq_ignore_ascii_case("eq") =>
                    {
                        value.trim_matches('\'').to_owned()
                    }
                    _ => {
                        return Err(Rejection::bad_request(
                            "ErrorInvalidUrlQueryFilter",
                            format!("Invalid filter on extended properties: '{term}'"),
                        ));
                    }
                };
                let parsed = property_id(&id).ok_or_else(|| {
                    Rejection::bad_request(
                        "ErrorInvalidProperty",
                        format!("The extended property id '{id}' is not valid."),
                    )
                })?;
                ids.push(parsed);
            }
            expand.extended = Some(ids);
        } else {
            return Err(Rejection::bad_request(
                "BadRequest",
                format!(
                    "Could not find a navigation property named '{name}' on type 'microsoft.graph.message'."
                ),
            ));
        }
    }
    Ok(expand)
}

/// Splits `a or b or c` outside quotes.
fn split_or(text: &str) -> Vec<String> {
    let words = tokens(text);
    let mut out = Vec::new();
    let mut current: Vec<String> = Vec::new();
    for word in words {
        if word.eq_ignore_ascii_case("or") {
            out.push(current.join(" "));
            current.clear();
        } else {
            current.push(word);
        }
    }
    out.push(current.join(" "));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%20b+c%24", true), "a b c$");
        assert_eq!(percent_decode("a+b%zz%", false), "a+b%zz%");
        let q = parse_query("%24top=5&%24filter=receivedDateTime+ge+2024-01-01");
        assert_eq!(option(&q, "$TOP"), Some("5"));
        assert_eq!(
            option(&q, "$filter"),
            Some("receivedDateTime ge 2024-01-01")
        );
    }

    #[test]
    fn filters() {
        let f = parse_filter(
            "receivedDateTime ge 2024-03-01T08:00:00Z and ReceivedDateTime le 2024-04-01",
        )
        .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].value, datetime!(2024-03-01 08:00 UTC));
        assert_eq!(f[1].property, "receivedDateTime");
        assert!(parse_filter("receivedDateTime ge '2024-01-01T00:00:00Z'").is_err());
        assert!(parse_filter("subject eq 'x'").is_err());
        assert!(parse_filter("receivedDateTime ge").is_err());
    }

    #[test]
    fn orderby_must_follow_the_filter() {
        let f = parse_filter("receivedDateTime ge 2024-01-01").unwrap();
        let ok = parse_orderby("receivedDateTime asc").unwrap();
        assert!(check_filter_and_order(&f, &ok).is_ok());
        let bad = parse_orderby("sentDateTime desc").unwrap();
        assert_eq!(
            check_filter_and_order(&f, &bad).unwrap_err().code,
            "InefficientFilter"
        );
        let two =
            parse_filter("sentDateTime ge 2024-01-01 and receivedDateTime ge 2024-01-01").unwrap();
        assert!(check_filter_and_order(&two, &ok).is_err());
    }

    #[test]
    fn select_and_expand() {
        assert!(parse_select("id,size", &["id"], "microsoft.graph.message").is_err());
        let e = parse_expand(
            "attachments($select=name,size,contentType,isInline),singleValueExtendedProperties($filter=id eq 'String 0x0070' or id eq 'Integer 0x0E08')",
        )
        .unwrap();
        assert_eq!(e.attachments.unwrap().len(), 4);
        assert_eq!(
            e.extended.unwrap(),
            vec![("string".to_owned(), 0x70), ("integer".to_owned(), 0xe08)]
        );
        assert!(parse_expand("attachments($select=contentBytes)").is_err());
        assert!(parse_expand("mentions").is_err());
    }
}
