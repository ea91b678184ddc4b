//! The wire shapes of the Microsoft identity platform token endpoint: AAD error bodies,
//! form-urlencoded request bodies and the timestamps AAD prints.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// An error answer as AAD sends it: HTTP status, OAuth `error`, the AADSTS codes and the
/// text that follows the first code in `error_description`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AadError {
    pub status: u16,
    pub error: &'static str,
    /// The first code prefixes the description; AAD sometimes chains two
    /// (`AADSTS70002: Error validating credentials. AADSTS50012: …`).
    pub codes: Vec<u32>,
    pub message: String,
}

impl AadError {
    pub fn new(status: u16, error: &'static str, code: u32, message: impl Into<String>) -> Self {
        AadError {
            status,
            error,
            codes: vec![code],
            message: message.into(),
        }
    }

    /// `400 invalid_request AADSTS900144`, AAD's answer to a missing form parameter.
    pub fn missing_parameter(name: &str) -> Self {
        AadError::new(
            400,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    /// The JSON body, with the fields live responses carry (see
    /// samples/graph/token-error-invalid-client-7000215.json).
    pub fn body(&self) -> String {
        let trace_id = random_guid();
        let correlation_id = random_guid();
        let timestamp = aad_timestamp(time::OffsetDateTime::now_utc());
        let first_code = self.codes.first().copied().unwrap_or(0);
        let description = format!(
            "AADSTS{first_code}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
            self.message
        );
        serde_json::json!({
            "error": self.error,
            "error_description": description,
            "error_codes": self.codes,
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={first_code}"),
        })
        .to_string()
    }
}

/// AAD's timestamp form: `2020-07-03 10:55:12Z`.
pub(crate) fn aad_timestamp(at: time::OffsetDateTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01 00:00:00Z".to_owned())
}

/// A random GUID-shaped string, as AAD uses for trace and correlation ids.
pub(crate) fn random_guid() -> String {
    let bytes = random_bytes::<16>();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// An opaque random access token (AAD's are JWTs, but clients must treat them as opaque).
pub(crate) fn random_token() -> String {
    format!("fake.{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if openssl::rand::rand_bytes(&mut bytes).is_err() {
        // The CSPRNG failing is not something a test fake can recover from; a predictable
        // token would silently weaken what the tests check.
        panic!("openssl rand_bytes failed");
    }
    bytes
}

/// Decodes an `application/x-www-form-urlencoded` body. `None` when a percent escape is
/// broken or a value is not UTF-8 (AAD answers AADSTS90013 for that).
pub(crate) fn parse_form(body: &str) -> Option<Vec<(String, String)>> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_live_shape() {
        let err = AadError::new(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        );
        let body: serde_json::Value = serde_json::from_str(&err.body()).unwrap();
        assert_eq!(body["error"], "invalid_client");
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.starts_with("AADSTS7000215: Invalid client secret provided.\r\nTrace ID: ")
        );
        assert!(description.contains("\r\nCorrelation ID: "));
        assert_eq!(body["error_codes"], serde_json::json!([7000215]));
        for key in ["timestamp", "trace_id", "correlation_id"] {
            assert!(body[key].is_string(), "{key}");
        }
        assert_eq!(
            body["error_uri"],
            "https://login.microsoftonline.com/error?code=7000215"
        );
        let timestamp = body["timestamp"].as_str().unwrap();
        assert_eq!(timestamp.len(), "2020-07-03 10:55:12Z".len());
        assert!(timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b' ');
    }

    #[test]
    fn form_decoding() {
        let form =
            parse_form("a=1&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&s=x+y%2Bz&e=")
                .unwrap();
        assert_eq!(
            form,
            vec![
                ("a".into(), "1".into()),
                (
                    "scope".into(),
                    "https://graph.microsoft.com/.default".into()
                ),
                ("s".into(), "x y+z".into()),
                ("e".into(), "".into()),
            ]
        );
        assert_eq!(parse_form("a=%zz"), None);
        assert_eq!(parse_form("a=%4"), None);
        assert_eq!(parse_form("a=%ff"), None);
    }

    #[test]
    fn guids_and_tokens_are_random() {
        let guid = random_guid();
        assert_eq!(guid.len(), 36);
        assert_ne!(guid, random_guid());
        assert_ne!(random_token(), random_token());
    }
}
