//! Builds the varied, deterministic RFC 5322 / MIME messages the fake serves as `t:MimeContent`:
//! plain text (UTF-8 quoted-printable, UTF-8 8bit, ISO-8859-1 8bit), multipart/alternative,
//! multipart/mixed with a PDF and an inline image, an attached message, meeting requests and
//! cancellations, an NDR and an S/MIME-signed message. CRLF line ends throughout.
//! Also holds the small header reader used by [`crate::make_item`].

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use crate::model::Attachment;
use crate::rng::Rng;

#[derive(Clone, Debug)]
pub(crate) struct Person {
    pub name: String,
    pub address: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyKind {
    PlainUtf8Qp,
    PlainUtf8Bit8,
    PlainLatin1,
    Alternative,
    MixedPdf,
    WithItemAttachment,
    MeetingRequest,
    MeetingCancel,
    Ndr,
    Signed,
}

#[derive(Clone, Debug)]
pub(crate) struct MailSpec {
    pub from: Person,
    pub to: Vec<Person>,
    pub cc: Vec<Person>,
    pub subject: String,
    /// Encode a non-ASCII subject as `=?iso-8859-1?Q?...?=` (when it is representable).
    pub latin1_subject: bool,
    /// Date header; `None` = no Date header (drafts).
    pub date: Option<OffsetDateTime>,
    pub received: OffsetDateTime,
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub topic: String,
    pub importance: &'static str,
    pub sensitivity: &'static str,
    pub kind: BodyKind,
    pub target_size: usize,
    /// File name of the PDF (MixedPdf) attachment.
    pub attachment_name: String,
}

pub(crate) struct Built {
    pub mime: Vec<u8>,
    pub attachments: Vec<Attachment>,
}

/// Random material drawn once per message so the message can be assembled twice (once to
/// measure, once padded to the target size) with identical bytes.
struct Material {
    boundaries: [String; 3],
    pdf: Vec<u8>,
    png: Vec<u8>,
    signature: Vec<u8>,
    thread_index: String,
    cid: String,
    uid: String,
    greeting: &'static str,
}

const WORDS: &[&str] = &[
    "project",
    "budget",
    "meeting",
    "review",
    "draft",
    "timeline",
    "customer",
    "invoice",
    "schedule",
    "quarter",
    "numbers",
    "proposal",
    "update",
    "please",
    "attached",
    "thanks",
    "regards",
    "follow-up",
    "deadline",
    "contract",
    "report",
    "team",
    "status",
    "action",
    "items",
    "next",
    "week",
    "Monday",
    "agenda",
    "notes",
    "approve",
    "release",
];

const GREETINGS: &[&str] = &[
    "Hi team,",
    "Hello,",
    "Grüße aus Köln — see below.",
    "Bonjour à tous, voici le résumé.",
    "Dear colleagues,",
    "Hej! Tack för senast ✓",
];

pub(crate) fn build(spec: &MailSpec, rng: &mut Rng) -> Built {
    let material = Material {
        boundaries: [0, 1, 2].map(|i| {
            format!(
                "_00{}_{:016X}{:08X}_",
                i,
                rng.next_u64(),
                rng.next_u64() as u32
            )
        }),
        pdf: fake_pdf(rng),
        png: fake_png(rng),
        signature: {
            let n = rng.range(700, 1400) as usize;
            rng.bytes(n)
        },
        thread_index: STANDARD.encode(rng.bytes(22)),
        cid: format!(
            "image001.png@01DA{:04X}.{:08X}",
            rng.below(0xFFFF),
            rng.next_u64() as u32
        ),
        uid: format!(
            "040000008200E00074C5B7101A82E008{:032X}",
            u128::from(rng.next_u64())
        ),
        greeting: rng.pick(GREETINGS),
    };
    let (probe, _) = assemble(spec, &material, "", "");
    let deficit = spec.target_size.saturating_sub(probe.len());
    let (text_share, html_share) = match spec.kind {
        BodyKind::Alternative
        | BodyKind::MixedPdf
        | BodyKind::MeetingRequest
        | BodyKind::MeetingCancel => (deficit * 2 / 5, deficit * 3 / 5),
        _ => (deficit, 0),
    };
    let mut filler_rng = Rng::new(spec.received.unix_timestamp() as u64 ^ deficit as u64);
    let text = filler(&mut filler_rng, text_share * 100 / 104);
    let html = filler(&mut filler_rng, html_share * 100 / 115);
    let (mime, attachments) = assemble(spec, &material, &text, &html);
    Built { mime, attachments }
}

fn filler(rng: &mut Rng, len: usize) -> String {
    let mut out = String::with_capacity(len + 80);
    while out.len() < len {
        let mut line = String::new();
        while line.len() < 66 {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(rng.pick(WORDS));
        }
        line.push_str(".\r\n");
        out.push_str(&line);
    }
    out
}

fn fake_pdf(rng: &mut Rng) -> Vec<u8> {
    let mut pdf =
        b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
            .to_vec();
    pdf.extend_from_slice(b"3 0 obj\n<< /Length 512 /Filter /FlateDecode >>\nstream\n");
    let n = rng.range(600, 1800) as usize;
    pdf.extend(rng.bytes(n));
    pdf.extend_from_slice(b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n");
    pdf
}

fn fake_png(rng: &mut Rng) -> Vec<u8> {
    let mut png =
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00"
            .to_vec();
    let n = rng.range(120, 400) as usize;
    png.extend(rng.bytes(n));
    png.extend_from_slice(b"\x00\x00\x00\x00IEND\xaeB`\x82");
    png
}

fn is_plain_ascii(s: &str) -> bool {
    s.chars().all(|c| (' '..='~').contains(&c))
}

/// RFC 2047 encode a header text when needed (UTF-8 B words of at most 45 bytes each).
pub(crate) fn encode_header_text(s: &str) -> String {
    if is_plain_ascii(s) {
        return s.to_string();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in s.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(format!("=?utf-8?B?{}?=", STANDARD.encode(chunk.as_bytes())));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(format!("=?utf-8?B?{}?=", STANDARD.encode(chunk.as_bytes())));
    }
    words.join("\r\n ")
}

/// RFC 2047 Q encoding in ISO-8859-1; `None` when `s` has characters outside Latin-1.
fn encode_latin1_q(s: &str) -> Option<String> {
    let mut out = String::from("=?iso-8859-1?Q?");
    for c in s.chars() {
        let code = c as u32;
        if code > 0xFF {
            return None;
        }
        match c {
            ' ' => out.push('_'),
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | ',' | '-' | '!' => out.push(c),
            _ => out.push_str(&format!("={code:02X}")),
        }
    }
    out.push_str("?=");
    Some(out)
}

fn address_header(people: &[Person]) -> String {
    people
        .iter()
        .map(|p| {
            if is_plain_ascii(&p.name) {
                format!("{} <{}>", p.name, p.address)
            } else {
                format!("{} <{}>", encode_header_text(&p.name), p.address)
            }
        })
        .collect::<Vec<_>>()
        .join(",\r\n\t")
}

fn rfc2822(t: OffsetDateTime) -> String {
    t.format(&Rfc2822).unwrap_or_default()
}

/// Quoted-printable (RFC 2045) with CRLF hard breaks and soft breaks before 76 columns.
fn quoted_printable(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 11 / 10);
    for (li, line) in data.split(|&b| b == b'\n').enumerate() {
        if li > 0 {
            out.push_str("\r\n");
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut col = 0;
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            let literal =
                ((b == b' ' || b == b'\t') && !last) || ((33..=126).contains(&b) && b != b'=');
            let enc = if literal {
                (b as char).to_string()
            } else {
                format!("={b:02X}")
            };
            if col + enc.len() > 75 {
                out.push_str("=\r\n");
                col = 0;
            }
            col += enc.len();
            out.push_str(&enc);
        }
    }
    out
}

/// Base64 wrapped at 76 columns with CRLF.
fn base64_lines(data: &[u8]) -> String {
    let enc = STANDARD.encode(data);
    let mut out = String::with_capacity(enc.len() + enc.len() / 38 + 2);
    for chunk in enc.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Parts<'a> {
    spec: &'a MailSpec,
    m: &'a Material,
    text: &'a str,
    html: &'a str,
}

impl Parts<'_> {
    fn body_text(&self) -> String {
        format!(
            "{}\r\n\r\n{}\r\n{}\r\nBest regards,\r\n{}\r\n",
            self.m.greeting, self.spec.topic, self.text, self.spec.from.name
        )
    }

    fn body_html(&self, with_image: bool) -> String {
        let img = if with_image {
            format!(
                "<p><img src=\"cid:{}\" width=\"16\" height=\"16\"></p>",
                self.m.cid
            )
        } else {
            String::new()
        };
        format!(
            "<html>\r\n<head>\r\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">\r\n</head>\r\n<body>\r\n<p>{}</p>\r\n<p>{}</p>\r\n{}<p>{}</p>\r\n</body>\r\n</html>\r\n",
            html_escape(self.m.greeting),
            html_escape(&self.spec.topic),
            img,
            html_escape(self.html).replace("\r\n", "<br>\r\n")
        )
    }

    fn text_part(&self) -> String {
        format!(
            "Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n",
            quoted_printable(self.body_text().as_bytes())
        )
    }

    fn html_part(&self, with_image: bool) -> String {
        format!(
            "Content-Type: text/html; charset=\"utf-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n",
            quoted_printable(self.body_html(with_image).as_bytes())
        )
    }

    fn alternative(&self, boundary: &str, with_image: bool, calendar: Option<&str>) -> String {
        let mut s = format!(
            "Content-Type: multipart/alternative;\r\n\tboundary=\"{boundary}\"\r\n\r\n--{boundary}\r\n{}\r\n--{boundary}\r\n{}",
            self.text_part(),
            self.html_part(with_image)
        );
        if let Some(method) = calendar {
            s.push_str(&format!(
                "\r\n--{boundary}\r\nContent-Type: text/calendar; charset=\"utf-8\"; method={method}\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
                base64_lines(self.ics(method).as_bytes())
            ));
        }
        s.push_str(&format!("\r\n--{boundary}--\r\n"));
        s
    }

    fn ics(&self, method: &str) -> String {
        let start = self.spec.received + time::Duration::days(3);
        let fmt = |t: OffsetDateTime| {
            format!(
                "{:04}{:02}{:02}T{:02}0000Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour()
            )
        };
        format!(
            "BEGIN:VCALENDAR\r\nMETHOD:{method}\r\nPRODID:Microsoft Exchange Server 2010\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nORGANIZER;CN={}:mailto:{}\r\nSUMMARY;LANGUAGE=en-US:{}\r\nDTSTART:{}\r\nDTEND:{}\r\nUID:{}\r\nSEQUENCE:0\r\nSTATUS:{}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
            self.spec.from.name,
            self.spec.from.address,
            self.spec.topic,
            fmt(start),
            fmt(start + time::Duration::hours(1)),
            self.m.uid,
            if method == "CANCEL" {
                "CANCELLED"
            } else {
                "CONFIRMED"
            }
        )
    }

    fn embedded_message(&self, subject: &str) -> String {
        format!(
            "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{}@example.test>\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\nMIME-Version: 1.0\r\n\r\nThis is the forwarded original.\r\n{}\r\n",
            address_header(std::slice::from_ref(&self.spec.from)),
            address_header(&self.spec.to),
            encode_header_text(subject),
            rfc2822(self.spec.received - time::Duration::days(2)),
            &self.m.boundaries[2][4..20],
            self.spec.topic
        )
    }
}

fn disposition_name(name: &str) -> String {
    if is_plain_ascii(name) && !name.contains('"') {
        name.to_string()
    } else {
        encode_header_text(name).replace("\r\n ", "")
    }
}

/// Assemble the full message; returns the bytes and the attachment list EWS would show.
fn assemble(spec: &MailSpec, m: &Material, text: &str, html: &str) -> (Vec<u8>, Vec<Attachment>) {
    let parts = Parts {
        spec,
        m,
        text,
        html,
    };
    let mut attachments = Vec::new();
    let [b0, b1, b2] = &m.boundaries;
    let mut has_attach = false;
    let mut content_class = None;

    // Body (everything from Content-Type on) and the attachment list.
    let body: Vec<u8> = match spec.kind {
        BodyKind::PlainUtf8Qp => format!(
            "Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}",
            quoted_printable(parts.body_text().as_bytes())
        )
        .into_bytes(),
        BodyKind::PlainUtf8Bit8 => {
            let mut v = b"Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec();
            v.extend_from_slice(parts.body_text().as_bytes());
            v
        }
        BodyKind::PlainLatin1 => {
            let mut v = b"Content-Type: text/plain; charset=\"iso-8859-1\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec();
            v.extend_from_slice(b"Caf\xE9 cr\xE8me et r\xE9sum\xE9 du projet, d\xE9j\xE0 envoy\xE9.\r\n\r\n");
            let topic: Vec<u8> = spec
                .topic
                .chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect();
            v.extend_from_slice(&topic);
            v.extend_from_slice(b"\r\n");
            v.extend_from_slice(text.as_bytes());
            v.extend_from_slice(b"\r\nCordialement,\r\nL'\xE9quipe\r\n");
            v
        }
        BodyKind::Alternative => parts.alternative(b0, false, None).into_bytes(),
        BodyKind::MeetingRequest | BodyKind::MeetingCancel => {
            content_class = Some("urn:content-classes:calendarmessage");
            let method = if spec.kind == BodyKind::MeetingRequest { "REQUEST" } else { "CANCEL" };
            parts.alternative(b0, false, Some(method)).into_bytes()
        }
        BodyKind::MixedPdf => {
            has_attach = true;
            let png_name = "image001.png";
            let related = format!(
                "Content-Type: multipart/related;\r\n\tboundary=\"{b1}\";\r\n\ttype=\"multipart/alternative\"\r\n\r\n--{b1}\r\n{}\r\n--{b1}\r\nContent-Type: image/png; name=\"{png_name}\"\r\nContent-Description: {png_name}\r\nContent-Disposition: inline; filename=\"{png_name}\"; size={};\r\n\tcreation-date=\"{}\";\r\n\tmodification-date=\"{}\"\r\nContent-ID: <{}>\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--{b1}--\r\n",
                parts.alternative(b0, true, None),
                m.png.len(),
                rfc2822(spec.received),
                rfc2822(spec.received),
                m.cid,
                base64_lines(&m.png)
            );
            let name = disposition_name(&spec.attachment_name);
            attachments.push(Attachment {
                name: png_name.to_string(),
                content_type: "image/png".to_string(),
                size: m.png.len() as u64,
                inline: true,
            });
            attachments.push(Attachment {
                name: spec.attachment_name.clone(),
                content_type: "application/pdf".to_string(),
                size: m.pdf.len() as u64,
                inline: false,
            });
            format!(
                "Content-Type: multipart/mixed;\r\n\tboundary=\"{b2}\"\r\n\r\nThis is a multi-part message in MIME format.\r\n\r\n--{b2}\r\n{related}\r\n--{b2}\r\nContent-Type: application/pdf; name=\"{name}\"\r\nContent-Description: {name}\r\nContent-Disposition: attachment; filename=\"{name}\"; size={};\r\n\tcreation-date=\"{}\";\r\n\tmodification-date=\"{}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--{b2}--\r\n",
                m.pdf.len(),
                rfc2822(spec.received),
                rfc2822(spec.received),
                base64_lines(&m.pdf)
            )
            .into_bytes()
        }
        BodyKind::WithItemAttachment => {
            has_attach = true;
            let inner_subject = format!("FW: {}", spec.topic);
            let inner = parts.embedded_message(&inner_subject);
            attachments.push(Attachment {
                name: inner_subject,
                content_type: "message/rfc822".to_string(),
                size: inner.len() as u64,
                inline: false,
            });
            format!(
                "Content-Type: multipart/mixed;\r\n\tboundary=\"{b2}\"\r\n\r\n--{b2}\r\n{}\r\n--{b2}\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment;\r\n\tcreation-date=\"{}\";\r\n\tmodification-date=\"{}\"\r\n\r\n{inner}\r\n--{b2}--\r\n",
                parts.text_part(),
                rfc2822(spec.received),
                rfc2822(spec.received)
            )
            .into_bytes()
        }
        BodyKind::Ndr => {
            has_attach = true;
            let original_subject = spec.topic.clone();
            let inner = parts.embedded_message(&original_subject);
            attachments.push(Attachment {
                name: original_subject,
                content_type: "message/rfc822".to_string(),
                size: inner.len() as u64,
                inline: false,
            });
            let rcpt = spec.to.first().map(|p| p.address.clone()).unwrap_or_default();
            format!(
                "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{b2}\"\r\n\r\n--{b2}\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\nDelivery has failed to these recipients or groups:\r\n\r\nnobody@nowhere.example.test\r\nThe email address you entered couldn't be found.\r\n\r\n{text}\r\n--{b2}\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns;EXCH01.example.test\r\nReceived-From-MTA: dns;EXCH01.example.test\r\nArrival-Date: {}\r\n\r\nFinal-Recipient: rfc822;nobody@nowhere.example.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp;550 5.1.1 RESOLVER.ADR.RecipNotFound; not found\r\nX-Display-Name: {rcpt}\r\n\r\n--{b2}\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--{b2}--\r\n",
                rfc2822(spec.received)
            )
            .into_bytes()
        }
        BodyKind::Signed => {
            has_attach = true;
            let body = format!(
                "Content-Type: multipart/signed; protocol=\"application/x-pkcs7-signature\";\r\n\tmicalg=SHA1; boundary=\"{b2}\"\r\n\r\n--{b2}\r\n{}\r\n--{b2}\r\nContent-Type: application/pkcs7-signature; name=\"smime.p7s\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"smime.p7s\"\r\n\r\n{}\r\n--{b2}--\r\n",
                parts.text_part(),
                base64_lines(&m.signature)
            );
            attachments.push(Attachment {
                name: "smime.p7m".to_string(),
                content_type: "multipart/signed".to_string(),
                size: body.len() as u64,
                inline: false,
            });
            body.into_bytes()
        }
    };

    let mut h = String::new();
    h.push_str(&format!(
        "Received: from EXCH02.example.test (10.1.2.6) by EXCH01.example.test\r\n (10.1.2.5) with Microsoft SMTP Server (version=TLS1_2,\r\n cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.1.2507.39; {}\r\n",
        rfc2822(spec.received)
    ));
    h.push_str(&format!(
        "From: {}\r\n",
        address_header(std::slice::from_ref(&spec.from))
    ));
    if !spec.to.is_empty() {
        h.push_str(&format!("To: {}\r\n", address_header(&spec.to)));
    }
    if !spec.cc.is_empty() {
        h.push_str(&format!("CC: {}\r\n", address_header(&spec.cc)));
    }
    let subject = if spec.latin1_subject {
        encode_latin1_q(&spec.subject).unwrap_or_else(|| encode_header_text(&spec.subject))
    } else {
        encode_header_text(&spec.subject)
    };
    h.push_str(&format!("Subject: {subject}\r\n"));
    h.push_str(&format!(
        "Thread-Topic: {}\r\n",
        encode_header_text(&spec.topic)
    ));
    h.push_str(&format!("Thread-Index: {}\r\n", m.thread_index));
    if let Some(date) = spec.date {
        h.push_str(&format!("Date: {}\r\n", rfc2822(date)));
    }
    if let Some(id) = &spec.message_id {
        h.push_str(&format!("Message-ID: {id}\r\n"));
    }
    if let Some(parent) = &spec.in_reply_to {
        h.push_str(&format!(
            "References: {parent}\r\nIn-Reply-To: {parent}\r\n"
        ));
    }
    h.push_str("Accept-Language: en-US, de-DE\r\nContent-Language: en-US\r\n");
    h.push_str(&format!(
        "X-MS-Has-Attach: {}\r\n",
        if has_attach { "yes" } else { "" }
    ));
    h.push_str("X-MS-Exchange-Organization-SCL: -1\r\nX-MS-TNEF-Correlator:\r\n");
    match spec.importance {
        "High" => h.push_str("Importance: high\r\nX-Priority: 1\r\n"),
        "Low" => h.push_str("Importance: low\r\nX-Priority: 5\r\n"),
        _ => {}
    }
    match spec.sensitivity {
        "Personal" => h.push_str("Sensitivity: Personal\r\n"),
        "Private" => h.push_str("Sensitivity: Private\r\n"),
        "Confidential" => h.push_str("Sensitivity: Company-Confidential\r\n"),
        _ => {}
    }
    if let Some(class) = content_class {
        h.push_str(&format!("Content-Class: {class}\r\n"));
    }
    let mut mime = h.into_bytes();
    // Exchange writes Content-Type (with the body) after the other headers, then MIME-Version.
    let split = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(body.len());
    mime.extend_from_slice(&body[..split]);
    mime.extend_from_slice(b"\r\nMIME-Version: 1.0");
    mime.extend_from_slice(&body[split..]);
    (mime, attachments)
}

/// The unfolded value of the first header `name` in a MIME message (case-insensitive).
pub(crate) fn header(mime: &[u8], name: &str) -> Option<String> {
    let end = mime
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(mime.len());
    let head = String::from_utf8_lossy(&mime[..end]);
    let mut value: Option<String> = None;
    for line in head.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(v) = value.as_mut() {
                v.push_str(line);
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.eq_ignore_ascii_case(name)
        {
            value = Some(v.trim().to_string());
        }
    }
    value
}

/// Decode RFC 2047 encoded words (B and Q, UTF-8 and ISO-8859-1) in a header value.
pub(crate) fn decode_header_text(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, after) = rest.split_at(start);
        let decoded = decode_word(after);
        if let Some((text, used)) = decoded {
            if !(last_was_word && before.trim().is_empty()) {
                out.push_str(before);
            }
            out.push_str(&text);
            rest = &after[used..];
            last_was_word = true;
        } else {
            out.push_str(before);
            out.push_str("=?");
            rest = &after[2..];
            last_was_word = false;
        }
    }
    out.push_str(rest);
    out
}

fn decode_word(s: &str) -> Option<(String, usize)> {
    let inner = &s[2..];
    let (charset, inner) = inner.split_once('?')?;
    let (enc, inner) = inner.split_once('?')?;
    let end = inner.find("?=")?;
    let payload = &inner[..end];
    let used = 2 + charset.len() + 1 + enc.len() + 1 + end + 2;
    let bytes = match enc {
        "B" | "b" => STANDARD.decode(payload).ok()?,
        "Q" | "q" => {
            let mut v = Vec::new();
            let b = payload.as_bytes();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'_' => v.push(b' '),
                    b'=' if i + 2 < b.len() => {
                        let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
                        v.push(u8::from_str_radix(hex, 16).ok()?);
                        i += 2;
                    }
                    c => v.push(c),
                }
                i += 1;
            }
            v
        }
        _ => return None,
    };
    let text =
        if charset.eq_ignore_ascii_case("iso-8859-1") || charset.eq_ignore_ascii_case("latin1") {
            bytes.iter().map(|&b| b as char).collect()
        } else {
            String::from_utf8_lossy(&bytes).into_owned()
        };
    Some((text, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn spec(kind: BodyKind) -> MailSpec {
        MailSpec {
            from: Person {
                name: "Zoë Example".into(),
                address: "zoe@contoso.example".into(),
            },
            to: vec![Person {
                name: "User One".into(),
                address: "user1@example.test".into(),
            }],
            cc: vec![],
            subject: "Résumé & <draft> ✓".into(),
            latin1_subject: false,
            date: Some(datetime!(2024-03-01 09:59:58 UTC)),
            received: datetime!(2024-03-01 10:00:00 UTC),
            message_id: Some("<abc@example.test>".into()),
            in_reply_to: None,
            topic: "Résumé & <draft> ✓".into(),
            importance: "High",
            sensitivity: "Normal",
            kind,
            target_size: 5000,
            attachment_name: "Données 2024.pdf".into(),
        }
    }

    #[test]
    fn sizes_headers_and_line_ends() {
        for kind in [
            BodyKind::PlainUtf8Qp,
            BodyKind::PlainUtf8Bit8,
            BodyKind::PlainLatin1,
            BodyKind::Alternative,
            BodyKind::MixedPdf,
            BodyKind::WithItemAttachment,
            BodyKind::MeetingRequest,
            BodyKind::MeetingCancel,
            BodyKind::Ndr,
            BodyKind::Signed,
        ] {
            let built = build(&spec(kind), &mut Rng::new(3));
            let len = built.mime.len();
            assert!((4500..7000).contains(&len), "{kind:?} {len}");
            // every LF is preceded by CR
            for (i, &b) in built.mime.iter().enumerate() {
                if b == b'\n' {
                    assert_eq!(built.mime[i - 1], b'\r', "{kind:?} bare LF at {i}");
                }
            }
            let subject = header(&built.mime, "subject").unwrap();
            assert_eq!(decode_header_text(&subject), "Résumé & <draft> ✓");
            assert_eq!(
                header(&built.mime, "Message-ID").unwrap(),
                "<abc@example.test>"
            );
        }
        let latin = build(&spec(BodyKind::PlainLatin1), &mut Rng::new(3));
        assert!(latin.mime.contains(&0xE9));
        assert!(std::str::from_utf8(&latin.mime).is_err());
        let mixed = build(&spec(BodyKind::MixedPdf), &mut Rng::new(3));
        assert_eq!(mixed.attachments.len(), 2);
        assert!(mixed.attachments[0].inline);
    }

    #[test]
    fn latin1_q_subject() {
        let mut s = spec(BodyKind::PlainUtf8Qp);
        s.subject = "Réunion équipe".into();
        s.latin1_subject = true;
        let built = build(&s, &mut Rng::new(1));
        let raw = header(&built.mime, "Subject").unwrap();
        assert!(raw.starts_with("=?iso-8859-1?Q?R=E9union"), "{raw}");
        assert_eq!(decode_header_text(&raw), "Réunion équipe");
    }

    #[test]
    fn qp_breaks_long_lines() {
        let long = "é".repeat(100);
        let qp = quoted_printable(long.as_bytes());
        assert!(qp.split("\r\n").all(|l| l.len() <= 76));
    }
}
