//! Writing EWS XML the way Exchange 2016 does: one line, `s`/`m`/`t` prefixes,
//! `h:ServerVersionInfo` header, response messages with ResponseClass/ResponseCode, SOAP faults
//! with `e:ResponseCode`, and text escaping (including the illegal `&#x1A;`-style references
//! real servers emit, when that fault is switched on).

pub(crate) const NS_SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub(crate) const NS_T: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
pub(crate) const NS_M: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
pub(crate) const NS_E: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";

/// Exchange 2016 CU23 (15.1.2507.x) announces itself like this.
const SERVER_VERSION: &str = r#"<h:ServerVersionInfo MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" MinorBuildNumber="39" Version="V2017_07_11" xmlns:h="http://schemas.microsoft.com/exchange/services/2006/types" xmlns="http://schemas.microsoft.com/exchange/services/2006/types" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"/>"#;

/// True for characters XML 1.0 allows in documents.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn escape_into(out: &mut String, s: &str, attr: bool, illegal_refs: bool) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attr => out.push_str("&quot;"),
            '\r' => out.push_str("&#xD;"),
            '\n' if attr => out.push_str("&#xA;"),
            '\t' if attr => out.push_str("&#x9;"),
            c if !is_xml_char(c) => {
                // Real Exchange writes these as character references, which XML 1.0 forbids.
                if illegal_refs {
                    out.push_str(&format!("&#x{:X};", c as u32));
                }
            }
            c => out.push(c),
        }
    }
}

/// A small append-only XML writer.
pub(crate) struct Xml {
    buf: String,
    illegal_refs: bool,
}

impl Xml {
    pub(crate) fn new(illegal_refs: bool) -> Xml {
        Xml {
            buf: String::with_capacity(4096),
            illegal_refs,
        }
    }

    fn tag(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.buf.push('<');
        self.buf.push_str(name);
        for (k, v) in attrs {
            self.buf.push(' ');
            self.buf.push_str(k);
            self.buf.push_str("=\"");
            escape_into(&mut self.buf, v, true, self.illegal_refs);
            self.buf.push('"');
        }
    }

    /// `<name a="v">`
    pub(crate) fn open(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.tag(name, attrs);
        self.buf.push('>');
    }

    /// `<name a="v"/>`
    pub(crate) fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.tag(name, attrs);
        self.buf.push_str("/>");
    }

    /// `</name>`
    pub(crate) fn close(&mut self, name: &str) {
        self.buf.push_str("</");
        self.buf.push_str(name);
        self.buf.push('>');
    }

    /// `<name>text</name>` (escaped), `<name/>` for empty text as .NET writes it.
    pub(crate) fn leaf(&mut self, name: &str, text: &str) {
        if text.is_empty() {
            self.empty(name, &[]);
            return;
        }
        self.open(name, &[]);
        self.text(text);
        self.close(name);
    }

    pub(crate) fn text(&mut self, text: &str) {
        escape_into(&mut self.buf, text, false, self.illegal_refs);
    }

    pub(crate) fn raw(&mut self, s: &str) {
        self.buf.push_str(s);
    }

    pub(crate) fn finish(self) -> String {
        self.buf
    }
}

/// Start `s:Envelope` with the server version header and open `m:{op}Response/m:ResponseMessages`.
pub(crate) fn response_start(x: &mut Xml, op: &str) {
    x.raw(r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header>"#);
    x.raw(SERVER_VERSION);
    x.raw(r#"</s:Header><s:Body xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">"#);
    x.raw(&format!(
        r#"<m:{op}Response xmlns:m="{NS_M}" xmlns:t="{NS_T}"><m:ResponseMessages>"#
    ));
}

/// Close what [`response_start`] opened.
pub(crate) fn response_end(x: &mut Xml, op: &str) {
    x.raw(&format!(
        "</m:ResponseMessages></m:{op}Response></s:Body></s:Envelope>"
    ));
}

/// `<m:{op}ResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>`
pub(crate) fn success_start(x: &mut Xml, op: &str) {
    x.raw(&format!(
        r#"<m:{op}ResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>"#
    ));
}

pub(crate) fn message_end(x: &mut Xml, op: &str) {
    x.raw(&format!("</m:{op}ResponseMessage>"));
}

/// A per-message error (HTTP 200, `ResponseClass="Error"`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MsgError {
    pub code: &'static str,
    pub text: String,
    /// Inner XML of `m:MessageXml`, already serialised.
    pub xml: Option<String>,
}

impl MsgError {
    pub(crate) fn new(code: &'static str, text: &str) -> MsgError {
        MsgError {
            code,
            text: text.to_string(),
            xml: None,
        }
    }
    pub(crate) fn item_not_found() -> MsgError {
        MsgError::new(
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        )
    }
    pub(crate) fn folder_not_found() -> MsgError {
        MsgError::new(
            "ErrorFolderNotFound",
            "The specified folder could not be found in the store.",
        )
    }
    pub(crate) fn id_malformed() -> MsgError {
        MsgError::new("ErrorInvalidIdMalformed", "Id is malformed.")
    }
    pub(crate) fn non_existent_mailbox(address: &str) -> MsgError {
        let mut x = Xml::new(false);
        x.open("t:Value", &[("Name", "SmtpAddress")]);
        x.text(address);
        x.close("t:Value");
        MsgError {
            code: "ErrorNonExistentMailbox",
            text: "The SMTP address has no mailbox associated with it.".to_string(),
            xml: Some(x.finish()),
        }
    }
    pub(crate) fn access_denied() -> MsgError {
        MsgError::new(
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        )
    }
    pub(crate) fn missing_email_address() -> MsgError {
        MsgError::new(
            "ErrorMissingEmailAddress",
            "When making a request as an account that does not have a mailbox, you must specify the mailbox primary SMTP address for any distinguished folder Ids.",
        )
    }
    /// Message-level throttling (HTTP 200), as Exchange Online sends it: the wait is in
    /// `m:MessageXml/t:Value[@Name="BackOffMilliseconds"]`.
    pub(crate) fn server_busy(back_off_ms: u64) -> MsgError {
        MsgError {
            code: "ErrorServerBusy",
            text: SERVER_BUSY_TEXT.to_string(),
            xml: Some(values_xml(&[(
                "BackOffMilliseconds",
                &back_off_ms.to_string(),
            )])),
        }
    }
    /// The HTTP 200 form of throttling the throttling documentation describes: a generic
    /// ErrorInternalServerError whose inner code is ErrorServerBusy (shape of exchangelib's
    /// inner-error fixture), plus the back-off.
    pub(crate) fn inner_server_busy(back_off_ms: u64) -> MsgError {
        MsgError {
            code: "ErrorInternalServerError",
            text: "An internal server error occurred. The operation failed.".to_string(),
            xml: Some(values_xml(&[
                ("InnerErrorMessageText", SERVER_BUSY_TEXT),
                ("InnerErrorResponseCode", "ErrorServerBusy"),
                ("InnerErrorDescriptiveLinkKey", "0"),
                ("BackOffMilliseconds", &back_off_ms.to_string()),
            ])),
        }
    }
    /// A batch that ran out of its execution time.
    pub(crate) fn timeout_expired() -> MsgError {
        MsgError::new(
            "ErrorTimeoutExpired",
            "The request timed out before the operation could be completed.",
        )
    }
    pub(crate) fn item_corrupt() -> MsgError {
        MsgError::new("ErrorItemCorrupt", "The item is corrupt.")
    }
    pub(crate) fn mime_conversion_failed() -> MsgError {
        MsgError::new(
            "ErrorMimeContentConversionFailed",
            "The MIME content conversion failed.",
        )
    }
    pub(crate) fn invalid_extended_property(tag: u16) -> MsgError {
        let mut x = Xml::new(false);
        let tag = format!("0x{tag:x}");
        x.empty("t:ExtendedFieldURI", &[("PropertyTag", &tag)]);
        MsgError {
            code: "ErrorInvalidPropertyRequest",
            text: "Property is not valid for this object type.".to_string(),
            xml: Some(x.finish()),
        }
    }
    pub(crate) fn invalid_property_request(field_uri: &str) -> MsgError {
        let mut x = Xml::new(false);
        x.empty("t:FieldURI", &[("FieldURI", field_uri)]);
        MsgError {
            code: "ErrorInvalidPropertyRequest",
            text: "Property is not valid for this object type.".to_string(),
            xml: Some(x.finish()),
        }
    }
}

const SERVER_BUSY_TEXT: &str = "The server cannot service this request right now. Try again later.";

/// `<t:Value Name="..">..</t:Value>` entries, the content of a `MessageXml`.
fn values_xml(values: &[(&str, &str)]) -> String {
    let mut x = Xml::new(false);
    for (name, value) in values {
        x.open("t:Value", &[("Name", name)]);
        x.text(value);
        x.close("t:Value");
    }
    x.finish()
}

/// Write a complete error response message; `trailer` is e.g. `<m:Items/>` for GetItem.
pub(crate) fn error_message(x: &mut Xml, op: &str, err: &MsgError, trailer: &str) {
    x.raw(&format!(r#"<m:{op}ResponseMessage ResponseClass="Error">"#));
    x.leaf("m:MessageText", &err.text);
    x.leaf("m:ResponseCode", err.code);
    x.leaf("m:DescriptiveLinkKey", "0");
    if let Some(inner) = &err.xml {
        x.raw("<m:MessageXml>");
        x.raw(inner);
        x.raw("</m:MessageXml>");
    }
    x.raw(trailer);
    message_end(x, op);
}

/// What goes into `detail/t:MessageXml` of a fault.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FaultDetail {
    None,
    /// `t:LineNumber`, `t:LinePosition`, `t:Violation`
    Schema {
        line: u32,
        position: u32,
        violation: String,
    },
    /// `t:Value Name=".."` entries
    Values(Vec<(String, String)>),
}

/// A SOAP fault (sent with HTTP 500).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SoapFault {
    pub code: &'static str,
    pub faultstring: String,
    pub message: String,
    pub detail: FaultDetail,
    /// Why the fake gave this fault (kept in [`crate::Stats`], not sent).
    pub note: Option<String>,
}

impl SoapFault {
    pub(crate) fn schema(line: u32, position: u32, violation: String) -> SoapFault {
        SoapFault {
            code: "ErrorSchemaValidation",
            faultstring: format!("The request failed schema validation: {violation}"),
            message: "The request failed schema validation.".to_string(),
            detail: FaultDetail::Schema {
                line,
                position,
                violation,
            },
            note: None,
        }
    }

    pub(crate) fn invalid_request() -> SoapFault {
        SoapFault::simple("ErrorInvalidRequest", "The request is invalid.")
    }

    pub(crate) fn simple(code: &'static str, text: &str) -> SoapFault {
        SoapFault {
            code,
            faultstring: text.to_string(),
            message: text.to_string(),
            detail: FaultDetail::None,
            note: None,
        }
    }

    pub(crate) fn with_note(mut self, note: impl Into<String>) -> SoapFault {
        self.note = Some(note.into());
        self
    }

    pub(crate) fn server_busy(back_off_ms: u64) -> SoapFault {
        SoapFault {
            code: "ErrorServerBusy",
            faultstring: SERVER_BUSY_TEXT.to_string(),
            message: SERVER_BUSY_TEXT.to_string(),
            detail: FaultDetail::Values(vec![(
                "BackOffMilliseconds".to_string(),
                back_off_ms.to_string(),
            )]),
            note: None,
        }
    }

    /// More requests in flight than EWSMaxConcurrency allows (shape and values of the
    /// Exchange Online fault in samples/ews/soap-fault-exceededconnectioncount.xml).
    pub(crate) fn exceeded_connection_count(limit: usize) -> SoapFault {
        let text = "You have exceeded the available concurrent connections for your account.  Try again once your other requests have completed.";
        SoapFault {
            code: "ErrorExceededConnectionCount",
            faultstring: text.to_string(),
            message: text.to_string(),
            detail: FaultDetail::Values(vec![
                ("Policy".to_string(), "MaxConcurrency".to_string()),
                ("MaxConcurrencyLimit".to_string(), limit.to_string()),
                (
                    "ErrorMessage".to_string(),
                    format!(
                        "This operation exceeds the throttling budget for policy part 'MaxConcurrency', policy value '{limit}',  Budget type: 'Ews'.  Suggested backoff time 0 ms."
                    ),
                ),
            ]),
            note: None,
        }
    }

    /// A RequestServerVersion the server does not support (header-level, so a fault). The
    /// text is what exchangelib looks for in HTTP 500 bodies.
    pub(crate) fn invalid_server_version() -> SoapFault {
        SoapFault::simple(
            "ErrorInvalidServerVersion",
            "The specified server version is invalid.",
        )
    }

    pub(crate) fn render(&self) -> String {
        let mut x = Xml::new(false);
        x.raw(r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>"#);
        x.raw(&format!(
            r#"<faultcode xmlns:a="{NS_T}">a:{}</faultcode>"#,
            self.code
        ));
        x.open("faultstring", &[("xml:lang", "en-US")]);
        x.text(&self.faultstring);
        x.close("faultstring");
        x.raw("<detail>");
        x.raw(&format!(
            r#"<e:ResponseCode xmlns:e="{NS_E}">{}</e:ResponseCode>"#,
            self.code
        ));
        x.raw(&format!(r#"<e:Message xmlns:e="{NS_E}">"#));
        x.text(&self.message);
        x.raw("</e:Message>");
        match &self.detail {
            FaultDetail::None => {}
            FaultDetail::Schema {
                line,
                position,
                violation,
            } => {
                x.raw(&format!(r#"<t:MessageXml xmlns:t="{NS_T}">"#));
                x.leaf("t:LineNumber", &line.to_string());
                x.leaf("t:LinePosition", &position.to_string());
                x.leaf("t:Violation", violation);
                x.raw("</t:MessageXml>");
            }
            FaultDetail::Values(values) => {
                x.raw(&format!(r#"<t:MessageXml xmlns:t="{NS_T}">"#));
                for (name, value) in values {
                    x.open("t:Value", &[("Name", name)]);
                    x.text(value);
                    x.close("t:Value");
                }
                x.raw("</t:MessageXml>");
            }
        }
        x.raw("</detail></s:Fault></s:Body></s:Envelope>");
        x.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        let mut x = Xml::new(false);
        x.open("t:A", &[("N", "a\"b<&")]);
        x.text("x & <y> é \u{1A}z");
        x.close("t:A");
        assert_eq!(
            x.finish(),
            r#"<t:A N="a&quot;b&lt;&amp;">x &amp; &lt;y&gt; é z</t:A>"#
        );
        let mut x = Xml::new(true);
        x.text("a\u{1A}b\u{0}");
        assert_eq!(x.finish(), "a&#x1A;b&#x0;");
    }

    #[test]
    fn fault_parses() {
        let xml = SoapFault::server_busy(1234).render();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let v = doc
            .descendants()
            .find(|n| n.has_tag_name((NS_T, "Value")))
            .unwrap();
        assert_eq!(v.attribute("Name"), Some("BackOffMilliseconds"));
        assert_eq!(v.text(), Some("1234"));
        let code = doc
            .descendants()
            .find(|n| n.has_tag_name((NS_E, "ResponseCode")))
            .unwrap();
        assert_eq!(code.text(), Some("ErrorServerBusy"));
    }
}
