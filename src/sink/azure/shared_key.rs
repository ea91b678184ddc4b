//! Shared Key request signing for Azure Blob Storage (the "Authorize with Shared Key" rules,
//! version 2009-09-19 and later).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

/// The standard headers of the string to sign, in the order the service concatenates them.
const STANDARD_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// The string the service signs for a request.
///
/// `headers` are every header we send (any case); `url_path` is the URL's path exactly as sent
/// (percent-encoded). With a path-style endpoint such as Azurite's
/// `http://127.0.0.1:10000/devstoreaccount1/…` the path already starts with the account, and
/// the canonicalized resource names it twice: `/devstoreaccount1/devstoreaccount1/…`.
/// `query` holds the decoded query parameters.
pub(crate) fn string_to_sign(
    method: &str,
    headers: &[(&str, &str)],
    account: &str,
    url_path: &str,
    query: &[(&str, &str)],
) -> String {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    };
    let mut out = String::with_capacity(256);
    out.push_str(method);
    out.push('\n');
    for name in STANDARD_HEADERS {
        let value = header(name);
        // Since version 2015-02-21 a zero length is signed as the empty string.
        if name == "content-length" && value == "0" {
            out.push('\n');
            continue;
        }
        out.push_str(value);
        out.push('\n');
    }

    let mut ms_headers: Vec<(String, &str)> = headers
        .iter()
        .filter(|(n, _)| n.len() > 5 && n[..5].eq_ignore_ascii_case("x-ms-"))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim()))
        .collect();
    ms_headers.sort();
    for (name, value) in ms_headers {
        out.push_str(&name);
        out.push(':');
        out.push_str(value);
        out.push('\n');
    }

    out.push('/');
    out.push_str(account);
    out.push_str(if url_path.is_empty() { "/" } else { url_path });
    let mut params: Vec<(String, Vec<&str>)> = Vec::new();
    for (name, value) in query {
        let name = name.to_ascii_lowercase();
        match params.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => params.push((name, vec![value])),
        }
    }
    params.sort();
    for (name, mut values) in params {
        values.sort_unstable();
        out.push('\n');
        out.push_str(&name);
        out.push(':');
        out.push_str(&values.join(","));
    }
    out
}

/// Base64 of HMAC-SHA256(`key`, `string_to_sign`): the signature after `SharedKey account:`.
pub(crate) fn sign(key: &[u8], string_to_sign: &str) -> Result<String, ErrorStack> {
    let pkey = PKey::hmac(key)?;
    let mut signer = Signer::new(MessageDigest::sha256(), &pkey)?;
    signer.update(string_to_sign.as_bytes())?;
    Ok(STANDARD.encode(signer.sign_to_vec()?))
}
