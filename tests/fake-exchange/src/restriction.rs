//! Evaluating FindItem/FindFolder restrictions and sort orders over property values, and
//! parsing `xs:dateTime` constants (`Z` or `±hh:mm` offsets, optional fraction; no zone = UTC).

use std::cmp::Ordering;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::request::{CmpOp, Expr, Operand, PropPath, SortKey};
use crate::xml::MsgError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Time,
    Str,
    Int,
    Bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val {
    Time(OffsetDateTime),
    Str(String),
    Int(i64),
    Bool(bool),
    /// A multi-valued string property (Categories).
    Strs(Vec<String>),
}

/// Parse an `xs:dateTime`.
pub(crate) fn parse_datetime(s: &str) -> Option<OffsetDateTime> {
    let s = s.trim();
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .or_else(|| OffsetDateTime::parse(&format!("{s}Z"), &Rfc3339).ok())
}

fn parse_constant(kind: Kind, s: &str) -> Option<Val> {
    match kind {
        Kind::Time => parse_datetime(s).map(Val::Time),
        Kind::Str => Some(Val::Str(s.to_string())),
        Kind::Int => s.trim().parse::<i64>().ok().map(Val::Int),
        Kind::Bool => match s.trim() {
            "true" | "True" | "1" => Some(Val::Bool(true)),
            "false" | "False" | "0" => Some(Val::Bool(false)),
            _ => None,
        },
    }
}

fn unsupported_path() -> MsgError {
    MsgError::new(
        "ErrorUnsupportedPathForQuery",
        "The property path is not supported in the query.",
    )
}

fn invalid_value() -> MsgError {
    MsgError::new(
        "ErrorInvalidValueForProperty",
        "The value is invalid for property.",
    )
}

/// A restriction with its constants parsed once.
#[derive(Clone, Debug)]
pub(crate) enum Compiled {
    Cmp(CmpOp, PropPath, Rhs),
    And(Vec<Compiled>),
    Or(Vec<Compiled>),
    Not(Box<Compiled>),
    Exists(PropPath),
    Contains {
        path: PropPath,
        needle: String,
        mode: String,
        ignore_case: bool,
    },
    Excludes(PropPath, i64),
}

#[derive(Clone, Debug)]
pub(crate) enum Rhs {
    Value(Val),
    Path(PropPath),
}

/// Check every path is queryable (per `kind_of`) and every constant parses, before any object
/// is looked at (so an empty folder reports the same errors as a full one).
pub(crate) fn compile(
    expr: &Expr,
    kind_of: &dyn Fn(&PropPath) -> Option<Kind>,
) -> Result<Compiled, MsgError> {
    let all = |v: &[Expr]| {
        v.iter()
            .map(|e| compile(e, kind_of))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match expr {
        Expr::And(v) => Compiled::And(all(v)?),
        Expr::Or(v) => Compiled::Or(all(v)?),
        Expr::Not(e) => Compiled::Not(Box::new(compile(e, kind_of)?)),
        Expr::Exists(p) => {
            kind_of(p).ok_or_else(unsupported_path)?;
            Compiled::Exists(p.clone())
        }
        Expr::Excludes(p, mask) => {
            if kind_of(p) != Some(Kind::Int) {
                return Err(unsupported_path());
            }
            Compiled::Excludes(p.clone(), parse_mask(mask).ok_or_else(invalid_value)?)
        }
        Expr::Contains {
            path,
            value,
            mode,
            ignore_case,
        } => {
            if kind_of(path) != Some(Kind::Str) {
                return Err(unsupported_path());
            }
            Compiled::Contains {
                path: path.clone(),
                needle: if *ignore_case {
                    value.to_lowercase()
                } else {
                    value.clone()
                },
                mode: mode.clone(),
                ignore_case: *ignore_case,
            }
        }
        Expr::Cmp(op, p, operand) => {
            let kind = kind_of(p).ok_or_else(unsupported_path)?;
            let rhs = match operand {
                Operand::Constant(c) => {
                    Rhs::Value(parse_constant(kind, c).ok_or_else(invalid_value)?)
                }
                Operand::Path(q) => match kind_of(q) {
                    Some(k) if k == kind => Rhs::Path(q.clone()),
                    _ => return Err(unsupported_path()),
                },
            };
            Compiled::Cmp(*op, p.clone(), rhs)
        }
    })
}

fn parse_mask(s: &str) -> Option<i64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => i64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn compare(a: &Val, b: &Val) -> Option<Ordering> {
    match (a, b) {
        (Val::Time(x), Val::Time(y)) => Some(x.cmp(y)),
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        (Val::Str(x), Val::Str(y)) => Some(x.to_lowercase().cmp(&y.to_lowercase())),
        _ => None,
    }
}

/// Evaluate a compiled restriction; `get` returns `None` when the object lacks the property
/// (such objects never match a comparison).
pub(crate) fn eval(c: &Compiled, get: &dyn Fn(&PropPath) -> Option<Val>) -> bool {
    match c {
        Compiled::And(v) => v.iter().all(|e| eval(e, get)),
        Compiled::Or(v) => v.iter().any(|e| eval(e, get)),
        Compiled::Not(e) => !eval(e, get),
        Compiled::Exists(p) => get(p).is_some(),
        Compiled::Excludes(p, mask) => matches!(get(p), Some(Val::Int(v)) if v & mask == 0),
        Compiled::Contains {
            path,
            needle,
            mode,
            ignore_case,
        } => {
            let test = |hay: &str| {
                let hay = if *ignore_case {
                    hay.to_lowercase()
                } else {
                    hay.to_string()
                };
                match mode.as_str() {
                    "FullString" => &hay == needle,
                    "Prefixed" => hay.starts_with(needle.as_str()),
                    "PrefixOnWords" => hay
                        .split_whitespace()
                        .any(|w| w.starts_with(needle.as_str())),
                    _ => hay.contains(needle.as_str()),
                }
            };
            match get(path) {
                Some(Val::Str(s)) => test(&s),
                Some(Val::Strs(v)) => v.iter().any(|s| test(s)),
                _ => false,
            }
        }
        Compiled::Cmp(op, p, rhs) => {
            let Some(left) = get(p) else { return false };
            let right = match rhs {
                Rhs::Value(v) => v.clone(),
                Rhs::Path(q) => match get(q) {
                    Some(v) => v,
                    None => return false,
                },
            };
            let test = |l: &Val| match compare(l, &right) {
                Some(ord) => match op {
                    CmpOp::Eq => ord == Ordering::Equal,
                    CmpOp::Ne => ord != Ordering::Equal,
                    CmpOp::Gt => ord == Ordering::Greater,
                    CmpOp::Ge => ord != Ordering::Less,
                    CmpOp::Lt => ord == Ordering::Less,
                    CmpOp::Le => ord != Ordering::Greater,
                },
                None => false,
            };
            match &left {
                Val::Strs(v) => v.iter().any(|s| test(&Val::Str(s.clone()))),
                l => test(l),
            }
        }
    }
}

/// Order two objects by sort keys; missing values sort first (ascending). Ties are left to
/// the caller's stable secondary key.
pub(crate) fn compare_by(
    keys: &[SortKey],
    a: &dyn Fn(&PropPath) -> Option<Val>,
    b: &dyn Fn(&PropPath) -> Option<Val>,
) -> Ordering {
    for key in keys {
        let ord = match (a(&key.path), b(&key.path)) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => compare(&x, &y).unwrap_or(Ordering::Equal),
        };
        let ord = if key.descending { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn datetimes() {
        assert_eq!(
            parse_datetime("2024-03-01T10:00:00Z"),
            Some(datetime!(2024-03-01 10:00:00 UTC))
        );
        assert_eq!(
            parse_datetime("2024-03-01T12:00:00+02:00"),
            Some(datetime!(2024-03-01 10:00:00 UTC))
        );
        assert_eq!(
            parse_datetime("2024-03-01T10:00:00.250Z"),
            Some(datetime!(2024-03-01 10:00:00.25 UTC))
        );
        assert_eq!(
            parse_datetime("2024-03-01T10:00:00"),
            Some(datetime!(2024-03-01 10:00:00 UTC))
        );
        assert_eq!(parse_datetime("yesterday"), None);
    }

    #[test]
    fn evaluates() {
        let received = PropPath::Field("item:DateTimeReceived".into());
        let kind_of = |p: &PropPath| match p {
            PropPath::Field(f) if f == "item:DateTimeReceived" => Some(Kind::Time),
            _ => None,
        };
        let at = datetime!(2024-03-01 10:00:00.5 UTC);
        let get = |p: &PropPath| kind_of(p).map(|_| Val::Time(at));
        let ge = Expr::Cmp(
            CmpOp::Ge,
            received.clone(),
            Operand::Constant("2024-03-01T10:00:00Z".into()),
        );
        let gt = Expr::Cmp(
            CmpOp::Gt,
            received.clone(),
            Operand::Constant("2024-03-01T10:00:00.500Z".into()),
        );
        let run = |e: &Expr| eval(&compile(e, &kind_of).unwrap(), &get);
        assert!(run(&ge));
        assert!(!run(&gt));
        assert!(run(&Expr::Not(Box::new(gt.clone()))));
        assert!(run(&Expr::Or(vec![ge.clone(), gt])));
        let bad = Expr::Cmp(CmpOp::Ge, received, Operand::Constant("nope".into()));
        assert_eq!(
            compile(&bad, &kind_of).unwrap_err().code,
            "ErrorInvalidValueForProperty"
        );
        let other = Expr::Exists(PropPath::Field("item:Body".into()));
        assert_eq!(
            compile(&other, &kind_of).unwrap_err().code,
            "ErrorUnsupportedPathForQuery"
        );
    }
}
