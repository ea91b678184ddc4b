//! Strictness: malformed XML, missing version header, schema violations, unknown operations,
//! wrong path, method and content type get what a real server sends.

use fake_exchange::Options;

use crate::common::*;

#[test]
fn malformed_xml_is_a_schema_fault() {
    let server = start(Options::default());
    let resp = post(
        &server,
        "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>",
    );
    assert_eq!(resp.status, 500);
    assert_eq!(resp.header("Content-Type"), Some("text/xml; charset=utf-8"));
    let text = resp.text();
    assert_eq!(fault_code(&text), "ErrorSchemaValidation");
    assert!(text.contains("<faultcode xmlns:a=\"http://schemas.microsoft.com/exchange/services/2006/types\">a:ErrorSchemaValidation</faultcode>"));
    assert!(text.contains("<t:LineNumber>"));
}

#[test]
fn requests_a_real_server_rejects() {
    let server = start(Options::default());
    let get = format!(
        r#"<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds>{}</m:FolderIds></m:GetFolder>"#,
        distinguished("inbox", Some("user1@example.test"))
    );
    let no_version = envelope("", &get).replace(
        r#"<t:RequestServerVersion Version="Exchange2013_SP1"/>"#,
        "",
    );
    let resp = post(&server, &no_version);
    assert_eq!(resp.status, 500);
    assert_eq!(fault_code(&resp.text()), "ErrorIncorrectSchemaVersion");

    let bad_order = envelope(
        "",
        &get.replace(
            "<m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>",
            "",
        )
        .replace(
            "</m:FolderIds>",
            "</m:FolderIds><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>",
        ),
    );
    let resp = post(&server, &bad_order);
    assert_eq!(resp.status, 500);
    let text = resp.text();
    assert_eq!(fault_code(&text), "ErrorSchemaValidation");
    assert!(
        text.contains("has invalid child element 'FolderIds'"),
        "{text}"
    );

    let bad_enum = envelope("", &get.replace("inbox", "invalidparentid"));
    let text = post(&server, &bad_enum).text();
    assert!(
        text.contains("DistinguishedFolderIdNameType' - The Enumeration constraint failed."),
        "{text}"
    );

    let unknown = envelope("", "<m:SyncFolderItems/>");
    let resp = post(&server, &unknown);
    assert_eq!(resp.status, 500);
    assert_eq!(fault_code(&resp.text()), "ErrorInvalidRequest");
    assert!(
        server
            .stats()
            .faults
            .iter()
            .any(|f| f.contains("SyncFolderItems is not implemented"))
    );

    let mut conn = Conn::open(addr(&server));
    assert_eq!(
        conn.request("POST", "/owa/", &[("Content-Type", "text/xml")], b"")
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        conn.request("GET", "/EWS/Exchange.asmx", &[], b"")
            .unwrap()
            .status,
        405
    );
    let json = conn
        .request(
            "POST",
            "/EWS/Exchange.asmx",
            &[("Content-Type", "application/json")],
            b"{}",
        )
        .unwrap();
    assert_eq!(json.status, 415);
}
