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

/// Check every path is queryable (per `kind_of`) and every constant parses; done before
/// evaluation so an empty folder reports the same errors as a full one.
pub(crate) fn check(
    expr: &Expr,
    kind_of: &dyn Fn(&PropPath) -> Option<Kind>,
) -> Result<(), MsgError> {
    match expr {
        Expr::And(v) | Expr::Or(v) => v.iter().try_for_each(|e| check(e, kind_of)),
        Expr::Not(e) => check(e, kind_of),
        Expr::Exists(p) => kind_of(p).map(|_| ()).ok_or_else(unsupported_path),
        Expr::Excludes(p, mask) => {
            if kind_of(p) != Some(Kind::Int) {
                return Err(unsupported_path());
            }
            parse_mask(mask).map(|_| ()).ok_or_else(invalid_value)
        }
        Expr::Contains { path, .. } => match kind_of(path) {
            Some(Kind::Str) => Ok(()),
            _ => Err(unsupported_path()),
        },
        Expr::Cmp(_, p, operand) => {
            let kind = kind_of(p).ok_or_else(unsupported_path)?;
            match operand {
                Operand::Constant(c) => parse_constant(kind, c)
                    .map(|_| ())
                    .ok_or_else(invalid_value),
                Operand::Path(q) => match kind_of(q) {
                    Some(k) if k == kind => Ok(()),
                    _ => Err(unsupported_path()),
                },
            }
        }
    }
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

/// Evaluate a checked expression; `get` returns `None` when the object lacks the property
/// (such objects never match a comparison).
pub(crate) fn eval(
    expr: &Expr,
    kind_of: &dyn Fn(&PropPath) -> Option<Kind>,
    get: &dyn Fn(&PropPath) -> Option<Val>,
) -> bool {
    match expr {
        Expr::And(v) => v.iter().all(|e| eval(e, kind_of, get)),
        Expr::Or(v) => v.iter().any(|e| eval(e, kind_of, get)),
        Expr::Not(e) => !eval(e, kind_of, get),
        Expr::Exists(p) => get(p).is_some(),
        Expr::Excludes(p, mask) => match (get(p), parse_mask(mask)) {
            (Some(Val::Int(v)), Some(m)) => v & m == 0,
            _ => false,
        },
        Expr::Contains {
            path,
            value,
            mode,
            ignore_case,
        } => {
            let norm = |s: &str| {
                if *ignore_case {
                    s.to_lowercase()
                } else {
                    s.to_string()
                }
            };
            let needle = norm(value);
            let test = |hay: &str| {
                let hay = norm(hay);
                match mode.as_str() {
                    "FullString" => hay == needle,
                    "Prefixed" => hay.starts_with(&needle),
                    "PrefixOnWords" => hay.split_whitespace().any(|w| w.starts_with(&needle)),
                    _ => hay.contains(&needle),
                }
            };
            match get(path) {
                Some(Val::Str(s)) => test(&s),
                Some(Val::Strs(v)) => v.iter().any(|s| test(s)),
                _ => false,
            }
        }
        Expr::Cmp(op, p, operand) => {
            let Some(kind) = kind_of(p) else { return false };
            let Some(left) = get(p) else { return false };
            let right = match operand {
                Operand::Constant(c) => parse_constant(kind, c),
                Operand::Path(q) => get(q),
            };
            let Some(right) = right else { return false };
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
        assert!(eval(&ge, &kind_of, &get));
        assert!(!eval(&gt, &kind_of, &get));
        assert!(eval(&Expr::Not(Box::new(gt.clone())), &kind_of, &get));
        assert!(eval(&Expr::Or(vec![ge.clone(), gt]), &kind_of, &get));
        assert!(check(&ge, &kind_of).is_ok());
        let bad = Expr::Cmp(CmpOp::Ge, received, Operand::Constant("nope".into()));
        assert_eq!(
            check(&bad, &kind_of).unwrap_err().code,
            "ErrorInvalidValueForProperty"
        );
        let other = Expr::Exists(PropPath::Field("item:Body".into()));
        assert_eq!(
            check(&other, &kind_of).unwrap_err().code,
            "ErrorUnsupportedPathForQuery"
        );
    }
}
