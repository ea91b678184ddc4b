//! Parsing and validating EWS SOAP requests, namespace-aware (any prefixes, default
//! namespaces), into typed operations. Anything a real server would reject becomes the
//! SOAP fault it would send (ErrorSchemaValidation with line/position, ErrorInvalidRequest,
//! ErrorIncorrectSchemaVersion).

use roxmltree::{Document, Node, ParsingOptions};

use crate::schema::{
    DISTINGUISHED_FOLDERS, DISTINGUISHED_PROPERTY_SETS, FIELD_URIS, MAPI_PROPERTY_TYPES,
    OTHER_OPERATIONS, PATH, SEARCH_EXPRESSION, SERVER_VERSIONS, Slot, UNBOUNDED, Validator, is, m,
    qualified, slot, t,
};
use crate::xml::{NS_M, NS_SOAP, NS_T, SoapFault};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BaseShape {
    IdOnly,
    Default,
    AllProperties,
}

/// A property path from `t:FieldURI`, `t:IndexedFieldURI` or `t:ExtendedFieldURI`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PropPath {
    Field(String),
    Indexed(String, String),
    Extended(ExtProp),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExtProp {
    /// PropertyTag as a number, when the property is addressed by tag.
    pub tag: Option<u16>,
    pub property_type: String,
    /// Attributes to echo in `t:ExtendedFieldURI` of the response (tag normalised to `0x10f4`).
    pub echo: Vec<(&'static str, String)>,
}

#[derive(Clone, Debug)]
pub(crate) struct Shape {
    pub base: BaseShape,
    pub include_mime: bool,
    pub props: Vec<PropPath>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FolderRef {
    Distinguished {
        name: String,
        mailbox: Option<String>,
    },
    Id(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ItemRef {
    Id(String),
    /// OccurrenceItemId, RecurringMasterItemId, ... (the fake has no recurring items)
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Paging {
    Indexed {
        max: Option<i64>,
        offset: i64,
        from_end: bool,
    },
    Fractional {
        max: Option<i64>,
        numerator: i64,
        denominator: i64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Operand {
    Constant(String),
    Path(PropPath),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expr {
    Cmp(CmpOp, PropPath, Operand),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Exists(PropPath),
    Contains {
        path: PropPath,
        value: String,
        mode: String,
        ignore_case: bool,
    },
    Excludes(PropPath, String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SortKey {
    pub path: PropPath,
    pub descending: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Traversal {
    Shallow,
    Deep,
    SoftDeleted,
    Associated,
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    GetFolder {
        shape: Shape,
        ids: Vec<FolderRef>,
    },
    FindFolder {
        traversal: Traversal,
        shape: Shape,
        paging: Option<Paging>,
        restriction: Option<Expr>,
        parents: Vec<FolderRef>,
    },
    FindItem {
        traversal: Traversal,
        shape: Shape,
        paging: Option<Paging>,
        restriction: Option<Expr>,
        sort: Vec<SortKey>,
        parents: Vec<FolderRef>,
    },
    GetItem {
        shape: Shape,
        ids: Vec<ItemRef>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Impersonation {
    /// PrimarySmtpAddress | SmtpAddress | PrincipalName | SID
    pub kind: String,
    pub value: String,
}

#[derive(Clone, Debug)]
pub(crate) struct Request {
    pub version: String,
    pub impersonation: Option<Impersonation>,
    pub precision_ms: bool,
    pub op: Op,
}

/// Name of the body element (for stats), even when the request is otherwise invalid.
pub(crate) fn operation_name(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let doc = Document::parse_with_options(text, options()).ok()?;
    let envelope = doc.root_element();
    let b = envelope.children().find(|n| is(*n, NS_SOAP, "Body"))?;
    let op = b.children().find(|n| n.is_element())?;
    Some(op.tag_name().name().to_string())
}

fn options<'a>() -> ParsingOptions<'a> {
    ParsingOptions {
        allow_dtd: false,
        nodes_limit: 5_000_000,
        ..ParsingOptions::default()
    }
}

fn version_fault() -> SoapFault {
    SoapFault::simple(
        "ErrorIncorrectSchemaVersion",
        "The request is valid but does not specify the correct server version in the RequestServerVersion SOAP header.  Ensure that the RequestServerVersion SOAP header is set with the correct RequestServerVersionValue.",
    )
}

/// Parse and validate one request body.
pub(crate) fn parse(body: &[u8]) -> Result<Request, SoapFault> {
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => {
            let line = body[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count() as u32
                + 1;
            return Err(SoapFault::schema(
                line,
                1,
                "Invalid character in the given encoding.".to_string(),
            )
            .with_note("request body is not UTF-8"));
        }
    };
    if text.trim().is_empty() {
        return Err(
            SoapFault::schema(0, 0, "Root element is missing.".to_string()).with_note("empty body"),
        );
    }
    let doc = match Document::parse_with_options(text, options()) {
        Ok(d) => d,
        Err(e) => {
            let pos = e.pos();
            return Err(SoapFault::schema(pos.row, pos.col, format!("{e}"))
                .with_note(format!("malformed XML: {e}")));
        }
    };
    let v = Validator { doc: &doc };
    let envelope = doc.root_element();
    if !is(envelope, NS_SOAP, "Envelope") {
        return Err(SoapFault::invalid_request().with_note(format!(
            "root element is {} (expected Envelope in {NS_SOAP})",
            qualified(envelope)
        )));
    }
    const HEADER: &[(&str, &str)] = &[(NS_SOAP, "Header")];
    const BODY: &[(&str, &str)] = &[(NS_SOAP, "Body")];
    let parts = v.sequence(envelope, &[slot(HEADER, 0, 1), slot(BODY, 1, 1)])?;
    let mut version = None;
    let mut impersonation = None;
    let mut precision_ms = false;
    if let Some(header) = parts[0].first() {
        for h in v.elements(*header)? {
            if is(h, NS_T, "RequestServerVersion") {
                v.attributes(h, &["Version"], &["Version"])?;
                let value = h.attribute("Version").unwrap_or_default();
                if !SERVER_VERSIONS.contains(&value) {
                    return Err(SoapFault::invalid_request()
                        .with_note(format!("unknown RequestServerVersion '{value}'")));
                }
                version = Some(value.to_string());
            } else if is(h, NS_T, "ExchangeImpersonation") {
                impersonation = Some(parse_impersonation(&v, h)?);
            } else if is(h, NS_T, "DateTimePrecision") {
                precision_ms =
                    v.enum_text(h, &["Seconds", "Milliseconds"], "DateTimePrecisionType")?
                        == "Milliseconds";
            }
        }
    }
    let Some(version) = version else {
        return Err(version_fault().with_note("no t:RequestServerVersion header"));
    };
    let body = parts[1][0];
    let kids = v.elements(body)?;
    let Some(&op) = kids.first() else {
        return Err(SoapFault::invalid_request().with_note("empty soap:Body"));
    };
    if kids.len() > 1 {
        return Err(v.fault(
            kids[1],
            format!(
                "The element 'Body' in namespace '{NS_SOAP}' has invalid child element '{}' in namespace '{}'.",
                kids[1].tag_name().name(),
                kids[1].tag_name().namespace().unwrap_or("")
            ),
        ));
    }
    if op.tag_name().namespace() != Some(NS_M) {
        return Err(v.fault(
            op,
            format!("The '{}' element is not declared.", qualified(op)),
        ));
    }
    let name = op.tag_name().name();
    let op = match name {
        "GetFolder" => parse_get_folder(&v, op)?,
        "FindFolder" => parse_find_folder(&v, op)?,
        "FindItem" => parse_find_item(&v, op)?,
        "GetItem" => parse_get_item(&v, op)?,
        other if OTHER_OPERATIONS.contains(&other) => {
            return Err(SoapFault::invalid_request()
                .with_note(format!("operation {other} is not implemented by the fake")));
        }
        other => {
            return Err(
                SoapFault::invalid_request().with_note(format!("unknown operation {other}"))
            );
        }
    };
    Ok(Request {
        version,
        impersonation,
        precision_ms,
        op,
    })
}

fn parse_impersonation(v: &Validator, h: Node) -> Result<Impersonation, SoapFault> {
    v.attributes(h, &[], &[])?;
    const SID: &[(&str, &str)] = &[t("ConnectingSID")];
    let s = v.sequence(h, &[slot(SID, 1, 1)])?;
    let sid = s[0][0];
    v.attributes(sid, &[], &[])?;
    const CHOICE: &[(&str, &str)] = &[
        t("PrincipalName"),
        t("SID"),
        t("PrimarySmtpAddress"),
        t("SmtpAddress"),
    ];
    let c = v.sequence(sid, &[slot(CHOICE, 1, 1)])?;
    let node = c[0][0];
    v.attributes(node, &[], &[])?;
    Ok(Impersonation {
        kind: node.tag_name().name().to_string(),
        value: node.text().unwrap_or("").trim().to_string(),
    })
}

const BASE_SHAPES: &[&str] = &["IdOnly", "Default", "AllProperties", "PcxPeopleSearch"];

fn base_shape(v: &Validator, node: Node) -> Result<BaseShape, SoapFault> {
    Ok(
        match v.enum_text(node, BASE_SHAPES, "DefaultShapeNamesType")? {
            "IdOnly" => BaseShape::IdOnly,
            "Default" | "PcxPeopleSearch" => BaseShape::Default,
            _ => BaseShape::AllProperties,
        },
    )
}

fn parse_folder_shape(v: &Validator, node: Node) -> Result<Shape, SoapFault> {
    v.attributes(node, &[], &[])?;
    const BASE: &[(&str, &str)] = &[t("BaseShape")];
    const ADD: &[(&str, &str)] = &[t("AdditionalProperties")];
    let s = v.sequence(node, &[slot(BASE, 1, 1), slot(ADD, 0, 1)])?;
    Ok(Shape {
        base: base_shape(v, s[0][0])?,
        include_mime: false,
        props: match s[1].first() {
            Some(ap) => parse_paths(v, *ap)?,
            None => Vec::new(),
        },
    })
}

fn parse_item_shape(v: &Validator, node: Node) -> Result<Shape, SoapFault> {
    v.attributes(node, &[], &[])?;
    const BASE: &[(&str, &str)] = &[t("BaseShape")];
    const MIME: &[(&str, &str)] = &[t("IncludeMimeContent")];
    const BODY: &[(&str, &str)] = &[t("BodyType")];
    const UNIQUE: &[(&str, &str)] = &[t("UniqueBodyType")];
    const NORMALIZED: &[(&str, &str)] = &[t("NormalizedBodyType")];
    const FILTER: &[(&str, &str)] = &[t("FilterHtmlContent")];
    const CONVERT: &[(&str, &str)] = &[t("ConvertHtmlCodePageToUTF8")];
    const TEMPLATE: &[(&str, &str)] = &[t("InlineImageUrlTemplate")];
    const BLOCK: &[(&str, &str)] = &[t("BlockExternalImages")];
    const BLANK: &[(&str, &str)] = &[t("AddBlankTargetToLinks")];
    const MAXBODY: &[(&str, &str)] = &[t("MaximumBodySize")];
    const ADD: &[(&str, &str)] = &[t("AdditionalProperties")];
    let s = v.sequence(
        node,
        &[
            slot(BASE, 1, 1),
            slot(MIME, 0, 1),
            slot(BODY, 0, 1),
            slot(UNIQUE, 0, 1),
            slot(NORMALIZED, 0, 1),
            slot(FILTER, 0, 1),
            slot(CONVERT, 0, 1),
            slot(TEMPLATE, 0, 1),
            slot(BLOCK, 0, 1),
            slot(BLANK, 0, 1),
            slot(MAXBODY, 0, 1),
            slot(ADD, 0, 1),
        ],
    )?;
    let include_mime = match s[1].first() {
        Some(n) => v.bool_text(*n)?,
        None => false,
    };
    for body in s[2].iter().chain(&s[3]).chain(&s[4]) {
        v.enum_text(*body, &["Best", "HTML", "Text"], "BodyTypeResponseType")?;
    }
    for b in s[5].iter().chain(&s[6]).chain(&s[8]).chain(&s[9]) {
        v.bool_text(*b)?;
    }
    Ok(Shape {
        base: base_shape(v, s[0][0])?,
        include_mime,
        props: match s[11].first() {
            Some(ap) => parse_paths(v, *ap)?,
            None => Vec::new(),
        },
    })
}

fn parse_paths(v: &Validator, node: Node) -> Result<Vec<PropPath>, SoapFault> {
    v.attributes(node, &[], &[])?;
    let s = v.sequence(node, &[slot(PATH, 1, UNBOUNDED)])?;
    s[0].iter().map(|p| parse_path(v, *p)).collect()
}

fn parse_path(v: &Validator, node: Node) -> Result<PropPath, SoapFault> {
    v.sequence(node, &[])?;
    match node.tag_name().name() {
        "FieldURI" => {
            v.attributes(node, &["FieldURI"], &["FieldURI"])?;
            let uri = v
                .enum_attr(node, "FieldURI", FIELD_URIS, "UnindexedFieldURIType")?
                .unwrap_or_default();
            Ok(PropPath::Field(uri.to_string()))
        }
        "IndexedFieldURI" => {
            v.attributes(
                node,
                &["FieldURI", "FieldIndex"],
                &["FieldURI", "FieldIndex"],
            )?;
            let uri = node.attribute("FieldURI").unwrap_or_default();
            let known = [
                "message:",
                "contacts:",
                "distributionlist:",
                "item:",
                "calendar:",
                "task:",
            ];
            if !uri.contains(':') || !known.iter().any(|p| uri.starts_with(p)) {
                return Err(v.fault(
                    node,
                    format!(
                        "The 'FieldURI' attribute is invalid - The value '{uri}' is invalid according to its datatype '{NS_T}:DictionaryURIType' - The Enumeration constraint failed."
                    ),
                ));
            }
            Ok(PropPath::Indexed(
                uri.to_string(),
                node.attribute("FieldIndex").unwrap_or_default().to_string(),
            ))
        }
        _ => {
            let allowed = [
                "DistinguishedPropertySetId",
                "PropertySetId",
                "PropertyTag",
                "PropertyName",
                "PropertyId",
                "PropertyType",
            ];
            v.attributes(node, &allowed, &["PropertyType"])?;
            let property_type = v
                .enum_attr(
                    node,
                    "PropertyType",
                    MAPI_PROPERTY_TYPES,
                    "MapiPropertyTypeType",
                )?
                .unwrap_or_default()
                .to_string();
            v.enum_attr(
                node,
                "DistinguishedPropertySetId",
                DISTINGUISHED_PROPERTY_SETS,
                "DistinguishedPropertySetType",
            )?;
            v.int_attr(node, "PropertyId")?;
            let mut echo = Vec::new();
            let mut tag = None;
            for name in [
                "DistinguishedPropertySetId",
                "PropertySetId",
                "PropertyTag",
                "PropertyName",
                "PropertyId",
            ] {
                if let Some(value) = node.attribute(name) {
                    if name == "PropertyTag" {
                        let parsed = parse_tag(value).ok_or_else(|| {
                            v.fault(
                                node,
                                format!(
                                    "The 'PropertyTag' attribute is invalid - The value '{value}' is invalid according to its datatype '{NS_T}:PropertyTagType' - The Pattern constraint failed."
                                ),
                            )
                        })?;
                        tag = Some(parsed);
                        echo.push(("PropertyTag", format!("0x{parsed:x}")));
                    } else {
                        let key: &'static str = match name {
                            "DistinguishedPropertySetId" => "DistinguishedPropertySetId",
                            "PropertySetId" => "PropertySetId",
                            "PropertyName" => "PropertyName",
                            _ => "PropertyId",
                        };
                        echo.push((key, value.to_string()));
                    }
                }
            }
            echo.push(("PropertyType", property_type.clone()));
            Ok(PropPath::Extended(ExtProp {
                tag,
                property_type,
                echo,
            }))
        }
    }
}

/// PropertyTagType: an xs:unsignedShort or `0x` + 1-4 hex digits.
fn parse_tag(s: &str) -> Option<u16> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 4 {
            return None;
        }
        u16::from_str_radix(hex, 16).ok()
    } else {
        s.parse::<u16>().ok()
    }
}

fn parse_folder_ids(v: &Validator, node: Node) -> Result<Vec<FolderRef>, SoapFault> {
    v.attributes(node, &[], &[])?;
    const IDS: &[(&str, &str)] = &[t("FolderId"), t("DistinguishedFolderId")];
    let s = v.sequence(node, &[slot(IDS, 1, UNBOUNDED)])?;
    let mut out = Vec::new();
    for n in &s[0] {
        let n = *n;
        v.attributes(n, &["Id", "ChangeKey"], &["Id"])?;
        if n.tag_name().name() == "FolderId" {
            v.sequence(n, &[])?;
            out.push(FolderRef::Id(
                n.attribute("Id").unwrap_or_default().to_string(),
            ));
        } else {
            let name = v
                .enum_attr(
                    n,
                    "Id",
                    DISTINGUISHED_FOLDERS,
                    "DistinguishedFolderIdNameType",
                )?
                .unwrap_or_default();
            const MAILBOX: &[(&str, &str)] = &[t("Mailbox")];
            let s = v.sequence(n, &[slot(MAILBOX, 0, 1)])?;
            let mailbox = match s[0].first() {
                Some(mb) => Some(parse_mailbox(v, *mb)?),
                None => None,
            };
            out.push(FolderRef::Distinguished {
                name: name.to_string(),
                mailbox,
            });
        }
    }
    Ok(out)
}

fn parse_mailbox(v: &Validator, node: Node) -> Result<String, SoapFault> {
    v.attributes(node, &[], &[])?;
    const NAME: &[(&str, &str)] = &[t("Name")];
    const EMAIL: &[(&str, &str)] = &[t("EmailAddress")];
    const ROUTING: &[(&str, &str)] = &[t("RoutingType")];
    const TYPE: &[(&str, &str)] = &[t("MailboxType")];
    const ITEMID: &[(&str, &str)] = &[t("ItemId")];
    const ORIGINAL: &[(&str, &str)] = &[t("OriginalDisplayName")];
    let s = v.sequence(
        node,
        &[
            slot(NAME, 0, 1),
            slot(EMAIL, 0, 1),
            slot(ROUTING, 0, 1),
            slot(TYPE, 0, 1),
            slot(ITEMID, 0, 1),
            slot(ORIGINAL, 0, 1),
        ],
    )?;
    if let Some(mt) = s[3].first() {
        v.enum_text(
            *mt,
            &[
                "Unknown",
                "OneOff",
                "Mailbox",
                "PublicDL",
                "PrivateDL",
                "Contact",
                "PublicFolder",
                "GroupMailbox",
                "ImplicitContact",
                "User",
            ],
            "MailboxTypeType",
        )?;
    }
    Ok(s[1]
        .first()
        .and_then(|n| n.text())
        .unwrap_or("")
        .trim()
        .to_string())
}

fn parse_paging(v: &Validator, node: Node) -> Result<Paging, SoapFault> {
    let name = node.tag_name().name();
    v.sequence(node, &[])?;
    if name.starts_with("IndexedPage") {
        v.attributes(
            node,
            &["MaxEntriesReturned", "Offset", "BasePoint"],
            &["Offset", "BasePoint"],
        )?;
        let max = v.int_attr(node, "MaxEntriesReturned")?;
        let offset = v.int_attr(node, "Offset")?.unwrap_or(0);
        let base = v
            .enum_attr(
                node,
                "BasePoint",
                &["Beginning", "End"],
                "IndexBasePointType",
            )?
            .unwrap_or("Beginning");
        Ok(Paging::Indexed {
            max,
            offset,
            from_end: base == "End",
        })
    } else {
        v.attributes(
            node,
            &["MaxEntriesReturned", "Numerator", "Denominator"],
            &["Numerator", "Denominator"],
        )?;
        Ok(Paging::Fractional {
            max: v.int_attr(node, "MaxEntriesReturned")?,
            numerator: v.int_attr(node, "Numerator")?.unwrap_or(0),
            denominator: v.int_attr(node, "Denominator")?.unwrap_or(1),
        })
    }
}

fn parse_restriction(v: &Validator, node: Node) -> Result<Expr, SoapFault> {
    v.attributes(node, &[], &[])?;
    let s = v.sequence(node, &[slot(SEARCH_EXPRESSION, 1, 1)])?;
    parse_expr(v, s[0][0])
}

fn parse_expr(v: &Validator, node: Node) -> Result<Expr, SoapFault> {
    let name = node.tag_name().name();
    let single_path = |v: &Validator, node: Node| -> Result<PropPath, SoapFault> {
        let s = v.sequence(node, &[slot(PATH, 1, 1)])?;
        parse_path(v, s[0][0])
    };
    match name {
        "And" | "Or" => {
            v.attributes(node, &[], &[])?;
            let s = v.sequence(node, &[slot(SEARCH_EXPRESSION, 1, UNBOUNDED)])?;
            let parts = s[0]
                .iter()
                .map(|n| parse_expr(v, *n))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(if name == "And" {
                Expr::And(parts)
            } else {
                Expr::Or(parts)
            })
        }
        "Not" => {
            v.attributes(node, &[], &[])?;
            let s = v.sequence(node, &[slot(SEARCH_EXPRESSION, 1, 1)])?;
            Ok(Expr::Not(Box::new(parse_expr(v, s[0][0])?)))
        }
        "Exists" => {
            v.attributes(node, &[], &[])?;
            Ok(Expr::Exists(single_path(v, node)?))
        }
        "Excludes" => {
            v.attributes(node, &[], &[])?;
            const BITMASK: &[(&str, &str)] = &[t("Bitmask")];
            let s = v.sequence(node, &[slot(PATH, 1, 1), slot(BITMASK, 1, 1)])?;
            v.attributes(s[1][0], &["Value"], &["Value"])?;
            Ok(Expr::Excludes(
                parse_path(v, s[0][0])?,
                s[1][0].attribute("Value").unwrap_or_default().to_string(),
            ))
        }
        "Contains" => {
            v.attributes(node, &["ContainmentMode", "ContainmentComparison"], &[])?;
            let mode = v
                .enum_attr(
                    node,
                    "ContainmentMode",
                    &[
                        "FullString",
                        "Prefixed",
                        "Substring",
                        "PrefixOnWords",
                        "ExactPhrase",
                    ],
                    "ContainmentModeType",
                )?
                .unwrap_or("FullString");
            let comparison = v
                .enum_attr(
                    node,
                    "ContainmentComparison",
                    &[
                        "Exact",
                        "IgnoreCase",
                        "IgnoreNonSpacingCharacters",
                        "Loose",
                        "IgnoreCaseAndNonSpacingCharacters",
                        "LooseAndIgnoreCase",
                        "LooseAndIgnoreNonSpace",
                        "LooseAndIgnoreCaseAndIgnoreNonSpace",
                    ],
                    "ContainmentComparisonType",
                )?
                .unwrap_or("Exact");
            const CONSTANT: &[(&str, &str)] = &[t("Constant")];
            let s = v.sequence(node, &[slot(PATH, 1, 1), slot(CONSTANT, 1, 1)])?;
            v.attributes(s[1][0], &["Value"], &["Value"])?;
            Ok(Expr::Contains {
                path: parse_path(v, s[0][0])?,
                value: s[1][0].attribute("Value").unwrap_or_default().to_string(),
                mode: mode.to_string(),
                ignore_case: comparison.contains("IgnoreCase") || comparison.starts_with("Loose"),
            })
        }
        _ => {
            let op = match name {
                "IsEqualTo" => CmpOp::Eq,
                "IsNotEqualTo" => CmpOp::Ne,
                "IsGreaterThan" => CmpOp::Gt,
                "IsGreaterThanOrEqualTo" => CmpOp::Ge,
                "IsLessThan" => CmpOp::Lt,
                _ => CmpOp::Le,
            };
            v.attributes(node, &[], &[])?;
            const OPERAND: &[(&str, &str)] = &[t("FieldURIOrConstant")];
            let s = v.sequence(node, &[slot(PATH, 1, 1), slot(OPERAND, 1, 1)])?;
            let path = parse_path(v, s[0][0])?;
            let holder = s[1][0];
            v.attributes(holder, &[], &[])?;
            const CHOICE: &[(&str, &str)] = &[
                t("FieldURI"),
                t("IndexedFieldURI"),
                t("ExtendedFieldURI"),
                t("Constant"),
            ];
            let c = v.sequence(holder, &[slot(CHOICE, 1, 1)])?;
            let inner = c[0][0];
            let operand = if inner.tag_name().name() == "Constant" {
                v.attributes(inner, &["Value"], &["Value"])?;
                v.sequence(inner, &[])?;
                Operand::Constant(inner.attribute("Value").unwrap_or_default().to_string())
            } else {
                Operand::Path(parse_path(v, inner)?)
            };
            Ok(Expr::Cmp(op, path, operand))
        }
    }
}

fn parse_sort(v: &Validator, node: Node) -> Result<Vec<SortKey>, SoapFault> {
    v.attributes(node, &[], &[])?;
    const ORDER: &[(&str, &str)] = &[t("FieldOrder")];
    let s = v.sequence(node, &[slot(ORDER, 1, UNBOUNDED)])?;
    let mut keys = Vec::new();
    for fo in &s[0] {
        v.attributes(*fo, &["Order"], &["Order"])?;
        let order = v
            .enum_attr(
                *fo,
                "Order",
                &["Ascending", "Descending"],
                "SortDirectionType",
            )?
            .unwrap_or("Ascending");
        let p = v.sequence(*fo, &[slot(PATH, 1, 1)])?;
        keys.push(SortKey {
            path: parse_path(v, p[0][0])?,
            descending: order == "Descending",
        });
    }
    Ok(keys)
}

fn traversal(
    v: &Validator,
    node: Node,
    values: &[&str],
    type_name: &str,
) -> Result<Traversal, SoapFault> {
    Ok(
        match v
            .enum_attr(node, "Traversal", values, type_name)?
            .unwrap_or("Shallow")
        {
            "Deep" => Traversal::Deep,
            "SoftDeleted" => Traversal::SoftDeleted,
            "Associated" => Traversal::Associated,
            _ => Traversal::Shallow,
        },
    )
}

fn unsupported(what: &str) -> SoapFault {
    SoapFault::invalid_request().with_note(format!("{what} is not implemented by the fake"))
}

fn parse_get_folder(v: &Validator, op: Node) -> Result<Op, SoapFault> {
    v.attributes(op, &[], &[])?;
    const SHAPE: &[Slot] = &[
        slot(&[m("FolderShape")], 1, 1),
        slot(&[m("FolderIds")], 1, 1),
    ];
    let s = v.sequence(op, SHAPE)?;
    Ok(Op::GetFolder {
        shape: parse_folder_shape(v, s[0][0])?,
        ids: parse_folder_ids(v, s[1][0])?,
    })
}

fn parse_find_folder(v: &Validator, op: Node) -> Result<Op, SoapFault> {
    v.attributes(op, &["Traversal"], &["Traversal"])?;
    let traversal = traversal(
        v,
        op,
        &["Shallow", "Deep", "SoftDeleted"],
        "FolderQueryTraversalType",
    )?;
    const SLOTS: &[Slot] = &[
        slot(&[m("FolderShape")], 1, 1),
        slot(
            &[m("IndexedPageFolderView"), m("FractionalPageFolderView")],
            0,
            1,
        ),
        slot(&[m("Restriction")], 0, 1),
        slot(&[m("ParentFolderIds")], 1, 1),
    ];
    let s = v.sequence(op, SLOTS)?;
    Ok(Op::FindFolder {
        traversal,
        shape: parse_folder_shape(v, s[0][0])?,
        paging: match s[1].first() {
            Some(p) => Some(parse_paging(v, *p)?),
            None => None,
        },
        restriction: match s[2].first() {
            Some(r) => Some(parse_restriction(v, *r)?),
            None => None,
        },
        parents: parse_folder_ids(v, s[3][0])?,
    })
}

fn parse_find_item(v: &Validator, op: Node) -> Result<Op, SoapFault> {
    v.attributes(op, &["Traversal"], &["Traversal"])?;
    let traversal = traversal(
        v,
        op,
        &["Shallow", "SoftDeleted", "Associated"],
        "ItemQueryTraversalType",
    )?;
    const SLOTS: &[Slot] = &[
        slot(&[m("ItemShape")], 1, 1),
        slot(
            &[
                m("IndexedPageItemView"),
                m("FractionalPageItemView"),
                m("SeekToConditionPageItemView"),
                m("CalendarView"),
                m("ContactsView"),
            ],
            0,
            1,
        ),
        slot(&[m("GroupBy"), m("DistinguishedGroupBy")], 0, 1),
        slot(&[m("Restriction")], 0, 1),
        slot(&[m("SortOrder")], 0, 1),
        slot(&[m("ParentFolderIds")], 1, 1),
        slot(&[m("QueryString")], 0, 1),
    ];
    let s = v.sequence(op, SLOTS)?;
    let paging = match s[1].first() {
        Some(p)
            if p.tag_name().name().starts_with("IndexedPage")
                || p.tag_name().name().starts_with("FractionalPage") =>
        {
            Some(parse_paging(v, *p)?)
        }
        Some(p) => return Err(unsupported(p.tag_name().name())),
        None => None,
    };
    if let Some(g) = s[2].first() {
        return Err(unsupported(g.tag_name().name()));
    }
    if !s[6].is_empty() {
        return Err(unsupported("QueryString"));
    }
    Ok(Op::FindItem {
        traversal,
        shape: parse_item_shape(v, s[0][0])?,
        paging,
        restriction: match s[3].first() {
            Some(r) => Some(parse_restriction(v, *r)?),
            None => None,
        },
        sort: match s[4].first() {
            Some(o) => parse_sort(v, *o)?,
            None => Vec::new(),
        },
        parents: parse_folder_ids(v, s[5][0])?,
    })
}

fn parse_get_item(v: &Validator, op: Node) -> Result<Op, SoapFault> {
    v.attributes(op, &[], &[])?;
    const SLOTS: &[Slot] = &[slot(&[m("ItemShape")], 1, 1), slot(&[m("ItemIds")], 1, 1)];
    let s = v.sequence(op, SLOTS)?;
    let shape = parse_item_shape(v, s[0][0])?;
    let ids_node = s[1][0];
    v.attributes(ids_node, &[], &[])?;
    const IDS: &[(&str, &str)] = &[
        t("ItemId"),
        t("OccurrenceItemId"),
        t("RecurringMasterItemId"),
        t("RecurringMasterItemIdRanges"),
    ];
    let ids = v.sequence(ids_node, &[slot(IDS, 1, UNBOUNDED)])?;
    let mut out = Vec::new();
    for n in &ids[0] {
        if n.tag_name().name() == "ItemId" {
            v.attributes(*n, &["Id", "ChangeKey"], &["Id"])?;
            v.sequence(*n, &[])?;
            out.push(ItemRef::Id(
                n.attribute("Id").unwrap_or_default().to_string(),
            ));
        } else {
            out.push(ItemRef::Other);
        }
    }
    Ok(Op::GetItem { shape, ids: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(header: &str, body: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{NS_SOAP}" xmlns:t="{NS_T}" xmlns:m="{NS_M}"><soap:Header>{header}</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"#
        )
    }
    const V: &str = r#"<t:RequestServerVersion Version="Exchange2013_SP1"/>"#;

    #[test]
    fn find_item_full() {
        let body = r#"<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:DateTimeReceived"/><t:ExtendedFieldURI PropertyTag="4340" PropertyType="Boolean"/></t:AdditionalProperties></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned="100" Offset="5" BasePoint="Beginning"/><m:Restriction><t:And><t:IsGreaterThanOrEqualTo><t:FieldURI FieldURI="item:DateTimeReceived"/><t:FieldURIOrConstant><t:Constant Value="2024-01-01T00:00:00Z"/></t:FieldURIOrConstant></t:IsGreaterThanOrEqualTo><t:IsLessThan><t:FieldURI FieldURI="item:DateTimeReceived"/><t:FieldURIOrConstant><t:Constant Value="2025-01-01T00:00:00+02:00"/></t:FieldURIOrConstant></t:IsLessThan></t:And></m:Restriction><m:SortOrder><t:FieldOrder Order="Ascending"><t:FieldURI FieldURI="item:DateTimeReceived"/></t:FieldOrder></m:SortOrder><m:ParentFolderIds><t:FolderId Id="abc"/></m:ParentFolderIds></m:FindItem>"#;
        let r = parse(env(V, body).as_bytes()).unwrap();
        let Op::FindItem {
            paging,
            restriction,
            sort,
            shape,
            ..
        } = r.op
        else {
            panic!()
        };
        assert_eq!(
            paging,
            Some(Paging::Indexed {
                max: Some(100),
                offset: 5,
                from_end: false
            })
        );
        assert!(matches!(restriction, Some(Expr::And(ref v)) if v.len() == 2));
        assert_eq!(sort.len(), 1);
        let PropPath::Extended(ext) = &shape.props[1] else {
            panic!()
        };
        assert_eq!(ext.tag, Some(0x10F4));
        assert_eq!(ext.echo[0], ("PropertyTag", "0x10f4".to_string()));
    }

    #[test]
    fn prefixes_are_arbitrary() {
        let xml = format!(
            r#"<SOAP-ENV:Envelope xmlns:SOAP-ENV="{NS_SOAP}"><SOAP-ENV:Header><types:RequestServerVersion xmlns:types="{NS_T}" Version="Exchange2010_SP2"/></SOAP-ENV:Header><SOAP-ENV:Body><GetFolder xmlns="{NS_M}" xmlns:t="{NS_T}"><FolderShape><t:BaseShape>IdOnly</t:BaseShape></FolderShape><FolderIds><t:DistinguishedFolderId Id="msgfolderroot"><t:Mailbox><t:EmailAddress>a@b.c</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId></FolderIds></GetFolder></SOAP-ENV:Body></SOAP-ENV:Envelope>"#
        );
        let r = parse(xml.as_bytes()).unwrap();
        let Op::GetFolder { ids, .. } = r.op else {
            panic!()
        };
        assert_eq!(
            ids,
            vec![FolderRef::Distinguished {
                name: "msgfolderroot".into(),
                mailbox: Some("a@b.c".into())
            }]
        );
    }

    #[test]
    fn faults() {
        let code = |xml: &str| parse(xml.as_bytes()).unwrap_err();
        let get = r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id="x"/></m:ItemIds></m:GetItem>"#;
        assert_eq!(code(&env("", get)).code, "ErrorIncorrectSchemaVersion");
        assert_eq!(
            code(&env(
                r#"<t:RequestServerVersion Version="Exchange2019"/>"#,
                get
            ))
            .code,
            "ErrorInvalidRequest"
        );
        assert_eq!(code("<not xml").code, "ErrorSchemaValidation");
        let bad_uri = get.replace(
            "</t:BaseShape>",
            r#"</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI="item:ConversationTopic"/></t:AdditionalProperties>"#,
        );
        let f = code(&env(V, &bad_uri));
        assert_eq!(f.code, "ErrorSchemaValidation");
        assert!(
            f.faultstring.contains("UnindexedFieldURIType"),
            "{}",
            f.faultstring
        );
        let swapped = r#"<m:GetItem><m:ItemIds><t:ItemId Id="x"/></m:ItemIds><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape></m:GetItem>"#;
        let f = code(&env(V, swapped));
        assert!(
            f.faultstring
                .contains("has invalid child element 'ItemIds'"),
            "{}",
            f.faultstring
        );
        let deep = r#"<m:FindItem Traversal="Deep"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ParentFolderIds><t:FolderId Id="x"/></m:ParentFolderIds></m:FindItem>"#;
        assert!(
            code(&env(V, deep))
                .faultstring
                .contains("ItemQueryTraversalType")
        );
        let sync = r#"<m:SyncFolderItems/>"#;
        assert_eq!(code(&env(V, sync)).code, "ErrorInvalidRequest");
        let https = env(V, get).replace(NS_SOAP, "https://schemas.xmlsoap.org/soap/envelope/");
        assert_eq!(code(&https).code, "ErrorInvalidRequest");
    }
}
