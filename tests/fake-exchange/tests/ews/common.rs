//! Test helpers: a tiny blocking HTTP/1.1 client over one TcpStream, SOAP envelopes,
//! namespace-aware lookups and a client-side NTLMv2 implementation (independent of the
//! server's), so the tests talk to the fake exactly as a client would on the wire.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fake_exchange::{DataSet, FakeExchange, GenSpec, Options, generate};
use roxmltree::{Document, Node};
use time::macros::datetime;

pub const NS_SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const NS_T: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
pub const NS_M: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
pub const NS_E: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";

pub fn small_data() -> DataSet {
    generate(&GenSpec {
        seed: 42,
        mailboxes: 2,
        emails_per_mailbox: 80,
        mime_bytes: 1500,
        start: datetime!(2024-03-01 08:00:00 UTC),
    })
}

pub fn start(options: Options) -> FakeExchange {
    FakeExchange::start(
        small_data(),
        Options {
            threads: 4,
            ..options
        },
    )
    .expect("start fake")
}

pub fn addr(server: &FakeExchange) -> SocketAddr {
    server.addr()
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("utf-8 body")
    }
}

/// One keep-alive connection.
pub struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    pub fn local_port(&self) -> u16 {
        self.writer.local_addr().unwrap().port()
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.writer.write_all(head.as_bytes())?;
        self.writer.write_all(body)?;
        self.writer.flush()?;
        self.read_response()
    }

    /// POST a SOAP body to the EWS path.
    pub fn soap(&mut self, body: &str, extra: &[(&str, &str)]) -> Resp {
        let mut headers = vec![("Content-Type", "text/xml; charset=utf-8")];
        headers.extend_from_slice(extra);
        self.request("POST", "/EWS/Exchange.asmx", &headers, body.as_bytes())
            .expect("http exchange")
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    fn read_response(&mut self) -> std::io::Result<Resp> {
        let status_line = self.read_line()?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').expect("header");
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if get("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let size = usize::from_str_radix(self.read_line()?.trim(), 16).expect("chunk size");
                if size == 0 {
                    self.read_line()?;
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                self.reader.read_exact(&mut body[start..])?;
                self.read_line()?;
            }
        } else if let Some(len) = get("Content-Length") {
            body.resize(len.parse().expect("length"), 0);
            self.reader.read_exact(&mut body)?;
        } else {
            self.reader.read_to_end(&mut body)?;
        }
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

/// A full SOAP envelope with Exchange2013_SP1 and extra header XML.
pub fn envelope(header: &str, body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{NS_SOAP}" xmlns:t="{NS_T}" xmlns:m="{NS_M}"><soap:Header><t:RequestServerVersion Version="Exchange2013_SP1"/>{header}</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"#
    )
}

pub fn impersonate(address: &str) -> String {
    format!(
        "<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{address}</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>"
    )
}

pub fn distinguished(id: &str, mailbox: Option<&str>) -> String {
    match mailbox {
        Some(m) => format!(
            r#"<t:DistinguishedFolderId Id="{id}"><t:Mailbox><t:EmailAddress>{m}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"#
        ),
        None => format!(r#"<t:DistinguishedFolderId Id="{id}"/>"#),
    }
}

/// GetItem with MIME and the properties a sync client asks for.
pub fn get_items(ids: &[&str]) -> String {
    let ids: String = ids
        .iter()
        .map(|id| format!(r#"<t:ItemId Id="{id}"/>"#))
        .collect();
    envelope(
        "",
        &format!(
            r#"<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:IncludeMimeContent>true</t:IncludeMimeContent><t:AdditionalProperties><t:FieldURI FieldURI="item:ParentFolderId"/><t:FieldURI FieldURI="item:Subject"/><t:FieldURI FieldURI="item:DateTimeReceived"/><t:FieldURI FieldURI="item:Size"/><t:FieldURI FieldURI="item:HasAttachments"/><t:FieldURI FieldURI="item:Attachments"/><t:FieldURI FieldURI="item:ConversationId"/><t:FieldURI FieldURI="message:InternetMessageId"/><t:FieldURI FieldURI="message:ConversationTopic"/></t:AdditionalProperties></m:ItemShape><m:ItemIds>{ids}</m:ItemIds></m:GetItem>"#
        ),
    )
}

/// POST on a fresh connection.
pub fn post(server: &FakeExchange, xml: &str) -> Resp {
    Conn::open(addr(server)).soap(xml, &[])
}

pub fn elements<'a, 'i>(doc: &'a Document<'i>, ns: &str, name: &str) -> Vec<Node<'a, 'i>> {
    doc.descendants()
        .filter(|n| n.has_tag_name((ns, name)))
        .collect()
}

pub fn child<'a, 'i>(node: Node<'a, 'i>, ns: &str, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| n.has_tag_name((ns, name)))
}

/// ResponseClass and ResponseCode of every `*ResponseMessage`.
pub fn messages(doc: &Document) -> Vec<(String, String)> {
    doc.descendants()
        .filter(|n| {
            n.is_element()
                && n.tag_name().namespace() == Some(NS_M)
                && n.tag_name().name().ends_with("ResponseMessage")
        })
        .map(|n| {
            (
                n.attribute("ResponseClass").unwrap_or("").to_string(),
                child(n, NS_M, "ResponseCode")
                    .and_then(|c| c.text())
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

/// The `e:ResponseCode` of a SOAP fault, trimmed.
pub fn fault_code(text: &str) -> String {
    let doc = Document::parse(text).expect("fault xml");
    assert!(
        doc.descendants()
            .any(|n| n.has_tag_name((NS_SOAP, "Fault"))),
        "not a fault: {text}"
    );
    elements(&doc, NS_E, "ResponseCode")[0]
        .text()
        .unwrap_or("")
        .trim()
        .to_string()
}

// ---- NTLMv2 client ----

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

fn hmac_md5(key: &[u8], data: &[&[u8]]) -> Vec<u8> {
    let pkey = openssl::pkey::PKey::hmac(key).unwrap();
    let mut s = openssl::sign::Signer::new(openssl::hash::MessageDigest::md5(), &pkey).unwrap();
    for d in data {
        s.update(d).unwrap();
    }
    s.sign_to_vec().unwrap()
}

const FLAGS: u32 =
    0x0000_0001 | 0x0000_0004 | 0x0000_0200 | 0x0000_8000 | 0x0008_0000 | 0x2000_0000 | 0x8000_0000;

/// `NTLM <base64 Type 1>`
pub fn ntlm_type1() -> String {
    let mut m = b"NTLMSSP\0".to_vec();
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&FLAGS.to_le_bytes());
    m.extend_from_slice(&[0u8; 16]);
    format!("NTLM {}", STANDARD.encode(m))
}

/// `NTLM <base64 Type 3>` answering the `WWW-Authenticate: NTLM <Type 2>` value.
pub fn ntlm_type3(www_authenticate: &str, domain: &str, user: &str, password: &str) -> String {
    let token = STANDARD
        .decode(
            www_authenticate
                .strip_prefix("NTLM ")
                .expect("NTLM challenge"),
        )
        .unwrap();
    assert_eq!(&token[..8], b"NTLMSSP\0");
    assert_eq!(u32::from_le_bytes(token[8..12].try_into().unwrap()), 2);
    let server_challenge = &token[24..32];
    let info_len = u16::from_le_bytes([token[40], token[41]]) as usize;
    let info_off = u32::from_le_bytes(token[44..48].try_into().unwrap()) as usize;
    let target_info = &token[info_off..info_off + info_len];
    // MsvAvTimestamp from the server, as Windows clients use it
    let mut timestamp = [0u8; 8];
    let mut i = 0;
    while i + 4 <= target_info.len() {
        let id = u16::from_le_bytes([target_info[i], target_info[i + 1]]);
        let len = u16::from_le_bytes([target_info[i + 2], target_info[i + 3]]) as usize;
        if id == 7 {
            timestamp.copy_from_slice(&target_info[i + 4..i + 12]);
        }
        i += 4 + len;
    }
    let nt_hash = {
        use md4::Digest;
        md4::Md4::digest(utf16(password))
    };
    let ntowf = hmac_md5(&nt_hash, &[&utf16(&(user.to_uppercase() + domain))]);
    let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
    blob.extend_from_slice(&timestamp);
    blob.extend_from_slice(&[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
    blob.extend_from_slice(&[0, 0, 0, 0]);
    blob.extend_from_slice(target_info);
    blob.extend_from_slice(&[0, 0, 0, 0]);
    let proof = hmac_md5(&ntowf, &[server_challenge, &blob]);
    let mut nt = proof;
    nt.extend_from_slice(&blob);
    let lm = vec![0u8; 24];
    let d = utf16(domain);
    let u = utf16(user);
    let w = utf16("TESTHOST");
    let mut m = b"NTLMSSP\0".to_vec();
    m.extend_from_slice(&3u32.to_le_bytes());
    let mut offset = 64u32;
    let mut payload = Vec::new();
    for part in [&lm, &nt, &d, &u, &w] {
        m.extend_from_slice(&(part.len() as u16).to_le_bytes());
        m.extend_from_slice(&(part.len() as u16).to_le_bytes());
        m.extend_from_slice(&offset.to_le_bytes());
        offset += part.len() as u32;
        payload.extend_from_slice(part);
    }
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&offset.to_le_bytes()); // empty session key
    m.extend_from_slice(&FLAGS.to_le_bytes());
    assert_eq!(m.len(), 64);
    m.extend_from_slice(&payload);
    format!("NTLM {}", STANDARD.encode(m))
}
