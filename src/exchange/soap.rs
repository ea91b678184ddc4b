//! SOAP envelopes for EWS: building requests, sanitising and parsing responses, decoding faults.

use std::borrow::Cow;
use std::time::Duration;

use roxmltree::{Document, Node};

use super::Error;

pub const NS_SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const NS_TYPES: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
pub const NS_MESSAGES: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
pub const NS_ERRORS: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";

/// Escapes text for an XML element or a double-quoted attribute.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Wraps an operation element in a SOAP envelope with the version header and, when
/// impersonating, the impersonation header.
pub fn envelope(server_version: &str, impersonate: Option<&str>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 600);
    out.push_str(concat!(
        r#"<?xml version="1.0" encoding="utf-8"?>"#,
        r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/""#,
        r#" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types""#,
        r#" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">"#,
        "<soap:Header>"
    ));
    out.push_str(r#"<t:RequestServerVersion Version=""#);
    out.push_str(&escape(server_version));
    out.push_str(r#""/>"#);
    if let Some(address) = impersonate {
        out.push_str("<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>");
        out.push_str(&escape(address));
        out.push_str("</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>");
    }
    out.push_str("</soap:Header><soap:Body>");
    out.push_str(body);
    out.push_str("</soap:Body></soap:Envelope>");
    out
}

/// `t:MimeContent` payloads taken out of a response before it is parsed, and the response
/// without them. Base64 MIME is nearly all of a GetItem response; an XML parser checks it
/// character by character, which cost more CPU than everything else we do with an email.
/// Each payload is replaced by a placeholder text `#<index>` (never base64, whose alphabet
/// has no `#`); [`Lifted::resolve`] turns an element's text back into its payload.
pub struct Lifted<'a> {
    /// The response with every lifted payload replaced by its placeholder.
    pub skeleton: Cow<'a, str>,
    payloads: Vec<&'a str>,
}

/// Payloads shorter than this stay in place: lifting them saves less than it costs.
const MIN_LIFTED_PAYLOAD: usize = 512;

impl<'a> Lifted<'a> {
    /// Lifts the text of every `MimeContent` element (any prefix; the parser still checks the
    /// namespace of the element it is found in). Only text that is plainly base64 (no `&`, no
    /// markup) is lifted; anything else is left for the parser.
    pub fn mime_content(xml: &'a str) -> Lifted<'a> {
        const NAME: &str = "MimeContent";
        let bytes = xml.as_bytes();
        let mut payloads = Vec::new();
        let mut skeleton: Option<String> = None;
        let mut copied_until = 0;
        let mut pos = 0;
        while let Some(found) = xml[pos..].find(NAME) {
            let name_at = pos + found;
            let after_name = name_at + NAME.len();
            pos = after_name;
            // A start tag: `<` then an optional `prefix:` right before the name, and the name
            // ends there (not `MimeContentUTF8`).
            let tag_start = match bytes[..name_at].iter().rposition(|&b| b == b'<') {
                Some(lt) => lt,
                None => continue,
            };
            let prefix = &bytes[tag_start + 1..name_at];
            let prefix_ok = prefix.is_empty()
                || (prefix.last() == Some(&b':')
                    && prefix[..prefix.len() - 1]
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')));
            let name_ends = matches!(
                bytes.get(after_name),
                Some(b'>' | b' ' | b'\t' | b'\r' | b'\n')
            );
            if !prefix_ok || !name_ends {
                continue;
            }
            let Some(gt) = bytes[after_name..].iter().position(|&b| b == b'>') else {
                break;
            };
            let text_start = after_name + gt + 1;
            if bytes[text_start - 2] == b'/' {
                continue; // <t:MimeContent/>
            }
            // The text ends at the next `<`; an `&` first means entities, left to the parser.
            let Some(len) = find_either(&bytes[text_start..], b'<', b'&') else {
                break;
            };
            let text_end = text_start + len;
            pos = text_end;
            if bytes[text_end] == b'&' || len < MIN_LIFTED_PAYLOAD {
                continue;
            }
            let payload = &xml[text_start..text_end];
            let out = skeleton.get_or_insert_with(|| String::with_capacity(xml.len() / 16 + 256));
            out.push_str(&xml[copied_until..text_start]);
            out.push('#');
            out.push_str(&payloads.len().to_string());
            copied_until = text_end;
            payloads.push(payload);
        }
        let skeleton = match skeleton {
            None => Cow::Borrowed(xml),
            Some(mut out) => {
                out.push_str(&xml[copied_until..]);
                Cow::Owned(out)
            }
        };
        Lifted { skeleton, payloads }
    }

    /// The payload an element's text stands for: a placeholder's payload, else the text itself.
    pub fn resolve<'t>(&self, text: &'t str) -> &'t str
    where
        'a: 't,
    {
        text.strip_prefix('#')
            .and_then(|index| index.parse::<usize>().ok())
            .and_then(|index| self.payloads.get(index).copied())
            .unwrap_or(text)
    }
}

/// Replaces numeric character references that XML 1.0 forbids (`&#x1A;`, `&#0;`, ...), which
/// Exchange emits in subjects and names, with U+FFFD so the document parses. Everything else,
/// including base64 MIME content, is left untouched.
pub fn sanitize_char_refs(xml: &str) -> Cow<'_, str> {
    let bytes = xml.as_bytes();
    let mut out: Option<String> = None;
    let mut copied_until = 0;
    let mut pos = 0;
    while let Some(offset) = memchr_amp_hash(&bytes[pos..]) {
        let start = pos + offset;
        let digits_start = start + 2;
        let (radix, digits_start) = match bytes.get(digits_start) {
            Some(b'x') | Some(b'X') => (16, digits_start + 1),
            _ => (10, digits_start),
        };
        let Some(len) = bytes[digits_start..].iter().position(|&b| b == b';') else {
            break;
        };
        let end = digits_start + len;
        pos = end + 1;
        let legal = std::str::from_utf8(&bytes[digits_start..end])
            .ok()
            .and_then(|digits| u32::from_str_radix(digits, radix).ok())
            .is_some_and(is_xml_char);
        if !legal {
            let buf = out.get_or_insert_with(|| String::with_capacity(xml.len()));
            buf.push_str(&xml[copied_until..start]);
            buf.push('\u{FFFD}');
            copied_until = pos;
        }
    }
    match out {
        None => Cow::Borrowed(xml),
        Some(mut buf) => {
            buf.push_str(&xml[copied_until..]);
            Cow::Owned(buf)
        }
    }
}

fn memchr_amp_hash(haystack: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while let Some(amp) = find_either(&haystack[pos..], b'&', b'&') {
        let at = pos + amp;
        if haystack.get(at + 1) == Some(&b'#') {
            return Some(at);
        }
        pos = at + 1;
    }
    None
}

/// Position of the first byte equal to `a` or `b`, found eight bytes at a time (a response
/// is mostly base64, where neither `<` nor `&` occurs).
fn find_either(haystack: &[u8], a: u8, b: u8) -> Option<usize> {
    use crate::bytescan::{find_first, splat, zero_bytes};
    find_first(
        haystack,
        0,
        |w| zero_bytes(w ^ splat(a)) | zero_bytes(w ^ splat(b)),
        |c| c == a || c == b,
    )
}

/// The `Char` production of XML 1.0.
fn is_xml_char(code: u32) -> bool {
    matches!(code, 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

/// Parses a response body into a document, after sanitising illegal character references.
/// Leading whitespace and a UTF-8 BOM are tolerated.
pub fn parse(text: &str) -> Result<Document<'_>, Error> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    Document::parse(trimmed).map_err(|err| Error::Malformed {
        detail: format!("invalid XML: {err}"),
    })
}

/// The first descendant element with this namespace and local name.
pub fn find<'a, 'i>(node: Node<'a, 'i>, ns: &str, name: &str) -> Option<Node<'a, 'i>> {
    node.descendants()
        .find(|n| n.is_element() && n.has_tag_name((ns, name)))
}

/// The first child element with this namespace and local name.
pub fn child<'a, 'i>(node: Node<'a, 'i>, ns: &str, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|n| n.is_element() && n.has_tag_name((ns, name)))
}

/// Trimmed text of a child element in the types namespace.
pub fn child_text<'a>(node: Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(node, NS_TYPES, name)
        .and_then(|n| n.text())
        .map(str::trim)
}

/// Turns a SOAP fault in the body into an error; `Ok(())` when there is none.
pub fn check_fault(doc: &Document<'_>) -> Result<(), Error> {
    let Some(fault) = find(doc.root(), NS_SOAP, "Fault") else {
        return Ok(());
    };
    let detail_code = find(fault, NS_ERRORS, "ResponseCode")
        .and_then(|n| n.text())
        .map(str::trim);
    // faultcode is a QName such as `a:ErrorServerBusy`.
    let fault_code = fault
        .children()
        .find(|n| n.has_tag_name("faultcode"))
        .and_then(|n| n.text())
        .map(|t| t.trim().rsplit(':').next().unwrap_or("").to_owned());
    let code = detail_code
        .map(str::to_owned)
        .or(fault_code)
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "SoapFault".to_owned());
    let message = find(fault, NS_ERRORS, "Message")
        .or_else(|| fault.children().find(|n| n.has_tag_name("faultstring")))
        .and_then(|n| n.text())
        .unwrap_or("")
        .trim()
        .to_owned();
    Err(Error::Ews {
        code,
        message,
        back_off: back_off_in(fault),
    })
}

/// `BackOffMilliseconds` from a `MessageXml` below `node`, if the server sent one.
pub fn back_off_in(node: Node<'_, '_>) -> Option<Duration> {
    node.descendants()
        .filter(|n| n.has_tag_name((NS_TYPES, "Value")))
        .find(|n| n.attribute("Name") == Some("BackOffMilliseconds"))
        .and_then(|n| n.text())
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// One `m:*ResponseMessage` element's status.
#[derive(Debug)]
pub struct MessageStatus {
    pub success: bool,
    pub code: String,
    pub message: String,
    pub back_off: Option<Duration>,
}

impl MessageStatus {
    pub fn into_error(self) -> Error {
        Error::Ews {
            code: self.code,
            message: self.message,
            back_off: self.back_off,
        }
    }
}

/// The response messages of an operation, in order, with their status.
pub fn response_messages<'a, 'i>(
    doc: &'a Document<'i>,
) -> Result<Vec<(Node<'a, 'i>, MessageStatus)>, Error> {
    let container =
        find(doc.root(), NS_MESSAGES, "ResponseMessages").ok_or_else(|| Error::Malformed {
            detail: "no ResponseMessages element in the response".into(),
        })?;
    Ok(container
        .children()
        .filter(|n| n.is_element())
        .map(|node| (node, message_status(node)))
        .collect())
}

fn message_status(node: Node<'_, '_>) -> MessageStatus {
    let class = node.attribute("ResponseClass").unwrap_or("Error");
    let code = child(node, NS_MESSAGES, "ResponseCode")
        .and_then(|n| n.text())
        .map(str::trim)
        .unwrap_or("")
        .to_owned();
    let text = child(node, NS_MESSAGES, "MessageText")
        .and_then(|n| n.text())
        .unwrap_or("")
        .trim()
        .to_owned();
    // ErrorInternalServerError can hide the real code, e.g. an inner ErrorServerBusy.
    let inner = child(node, NS_MESSAGES, "MessageXml").and_then(|xml| {
        xml.children()
            .filter(|n| n.has_tag_name((NS_TYPES, "Value")))
            .find(|n| n.attribute("Name") == Some("InnerErrorResponseCode"))
            .and_then(|n| n.text())
            .map(|t| t.trim().to_owned())
    });
    let code = match inner {
        Some(inner) if code == "ErrorInternalServerError" && !inner.is_empty() => inner,
        _ => code,
    };
    MessageStatus {
        success: class == "Success" && (code == "NoError" || code.is_empty()),
        back_off: back_off_in(node),
        code: if code.is_empty() {
            "NoResponseCode".into()
        } else {
            code
        },
        message: text,
    }
}

/// Parses an `xs:dateTime` as Exchange writes it (`2024-03-01T10:00:00Z`, with or without
/// fractional seconds or an offset).
pub fn parse_datetime(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.to_offset(time::UtcOffset::UTC))
}

/// Formats a UTC instant as EWS expects in restrictions, to the second.
pub fn format_datetime(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a&b<c>\"'"), "a&amp;b&lt;c&gt;&quot;&apos;");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn sanitizes_only_illegal_refs() {
        let xml = "<a>x&#x1A;y&#9;z&#0;&#233;&#xD800;&amp;</a>";
        let clean = sanitize_char_refs(xml);
        assert_eq!(clean, "<a>x\u{FFFD}y&#9;z\u{FFFD}&#233;\u{FFFD}&amp;</a>");
        assert!(Document::parse(&clean).is_ok());
        assert!(matches!(
            sanitize_char_refs("<a>&#65;</a>"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn byte_search_finds_the_first_of_two_bytes_at_any_offset() {
        for len in 0..40 {
            for at in 0..len {
                for (byte, other) in [(b'<', b'&'), (b'&', b'<'), (0x80, 0), (0, 0xFF)] {
                    let mut hay = vec![b'A'; len];
                    hay[at] = byte;
                    assert_eq!(find_either(&hay, byte, other), Some(at), "{len} {at}");
                }
            }
            assert_eq!(find_either(&vec![b'A'; len], b'<', b'&'), None);
        }
        assert_eq!(memchr_amp_hash(b"a&b&&#x1A;"), Some(4));
        assert_eq!(memchr_amp_hash(b"a&amp;&"), None);
    }

    #[test]
    fn mime_payloads_are_lifted_and_resolved() {
        let big = "QUJD".repeat(200);
        let xml = format!(
            concat!(
                r#"<m:Items><t:Message><t:MimeContent CharacterSet="UTF-8">{b}</t:MimeContent>"#,
                r#"<t:Subject>MimeContent &amp; &#x1A;</t:Subject><t:MimeContentUTF8>{b}</t:MimeContentUTF8>"#,
                r#"<MimeContent>{b}</MimeContent><x:MimeContent/><t:MimeContent>c2hvcnQ=</t:MimeContent>"#,
                "</t:Message></m:Items>"
            ),
            b = big
        );
        let lifted = Lifted::mime_content(&xml);
        assert_eq!(
            lifted.skeleton,
            format!(
                concat!(
                    r#"<m:Items><t:Message><t:MimeContent CharacterSet="UTF-8">#0</t:MimeContent>"#,
                    r#"<t:Subject>MimeContent &amp; &#x1A;</t:Subject><t:MimeContentUTF8>{b}</t:MimeContentUTF8>"#,
                    r#"<MimeContent>#1</MimeContent><x:MimeContent/><t:MimeContent>c2hvcnQ=</t:MimeContent>"#,
                    "</t:Message></m:Items>"
                ),
                b = big
            )
        );
        assert_eq!(lifted.resolve("#0"), big);
        assert_eq!(lifted.resolve("#1"), big);
        assert_eq!(lifted.resolve("c2hvcnQ="), "c2hvcnQ=");
        assert_eq!(lifted.resolve("#9"), "#9");
        let plain = "<a>no mime here</a>";
        assert!(matches!(
            Lifted::mime_content(plain).skeleton,
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn fault_with_back_off() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>
<faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorServerBusy</faultcode>
<faultstring xml:lang="en-US">The server cannot service this request right now. Try again later.</faultstring>
<detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorServerBusy </e:ResponseCode>
<e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">The server cannot service this request right now. Try again later.</e:Message>
<t:MessageXml xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><t:Value Name="BackOffMilliseconds">297749</t:Value></t:MessageXml>
</detail></s:Fault></s:Body></s:Envelope>"#;
        let doc = parse(xml).unwrap();
        let err = check_fault(&doc).unwrap_err();
        assert_eq!(
            err,
            Error::Ews {
                code: "ErrorServerBusy".into(),
                message: "The server cannot service this request right now. Try again later."
                    .into(),
                back_off: Some(Duration::from_millis(297749)),
            }
        );
    }

    #[test]
    fn inner_error_code_is_surfaced() {
        let xml = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
<m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
<m:ResponseMessages><m:GetItemResponseMessage ResponseClass="Error">
<m:MessageText>An internal server error occurred.</m:MessageText>
<m:ResponseCode>ErrorInternalServerError</m:ResponseCode>
<m:MessageXml><t:Value Name="InnerErrorResponseCode">ErrorServerBusy</t:Value><t:Value Name="BackOffMilliseconds">1500</t:Value></m:MessageXml>
</m:GetItemResponseMessage></m:ResponseMessages></m:GetItemResponse></s:Body></s:Envelope>"#;
        let doc = parse(xml).unwrap();
        let messages = response_messages(&doc).unwrap();
        let status = &messages[0].1;
        assert!(!status.success);
        assert_eq!(status.code, "ErrorServerBusy");
        assert_eq!(status.back_off, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn datetimes_round_trip() {
        let t = parse_datetime("2024-03-01T10:00:05+02:00").unwrap();
        assert_eq!(format_datetime(t), "2024-03-01T08:00:05Z");
        assert!(parse_datetime("2024-03-01T10:00:05.123Z").is_some());
        assert!(parse_datetime("yesterday").is_none());
    }
}
