//! Checks a client assertion (RFC 7523 JWT) the way the Microsoft identity platform does:
//! signature by the registered certificate's key, thumbprint header, audience, issuer,
//! subject, time range and one-time `jti`.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::hash::MessageDigest;
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier};
use openssl::x509::X509;
use serde_json::{Map, Value};

use crate::aad::AadError;

/// Clock difference tolerated between the client and us for `nbf`.
pub(crate) const CLOCK_SKEW_SECS: i64 = 300;
/// "exp … keep it short - 5-10 minutes after nbf at most" (certificate-credentials.md).
pub(crate) const MAX_ASSERTION_LIFETIME_SECS: i64 = 600;

/// What a valid assertion told us, for [`crate::Issued`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// `RS256` or `PS256`.
    pub alg: String,
    /// `x5t` or `x5t#S256` (the one that matched; `x5t#S256` when both did).
    pub thumbprint_header: String,
}

/// What the request is checked against.
pub(crate) struct Expected<'a> {
    pub client_id: &'a str,
    pub token_url: &'a str,
    /// The registered certificate (DER), if the app has one.
    pub certificate_der: Option<&'a [u8]>,
    pub now_unix_secs: i64,
}

/// Verifies `assertion`; records its `jti` in `used_jtis` when it is accepted.
pub(crate) fn verify(
    assertion: &str,
    expected: &Expected<'_>,
    used_jtis: &mut HashSet<String>,
) -> Result<Accepted, AadError> {
    let mut parts = assertion.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("the token does not have three parts"));
    };
    let header = decode_json(header_b64, "header")?;
    let claims = decode_json(claims_b64, "payload")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| malformed("the signature is not base64url without padding"))?;

    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if alg != "RS256" && alg != "PS256" {
        return Err(malformed(&format!(
            "the signing algorithm '{alg}' is not supported; use RS256 or PS256"
        )));
    }
    let x5t = header.get("x5t").and_then(Value::as_str);
    let x5t_s256 = header.get("x5t#S256").and_then(Value::as_str);
    if x5t.is_none() && x5t_s256.is_none() {
        return Err(AadError::new(
            401,
            "invalid_client",
            50027,
            "Invalid JWT token. No certificate thumbprint specified in token header.",
        ));
    }
    let sent_thumbprint_hex = x5t
        .or(x5t_s256)
        .map(|t| {
            decode_thumbprint(t)
                .map(|b| hex_upper(&b))
                .unwrap_or_else(|| t.to_owned())
        })
        .unwrap_or_default();
    let key_not_found = || {
        AadError::new(
            401,
            "invalid_client",
            700027,
            format!(
                "Client assertion contains an invalid signature. [Reason - The key was not found., \
                 Thumbprint of key used by client: '{sent_thumbprint_hex}', Please visit the Azure \
                 Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id \
                 '{}'.]",
                expected.client_id
            ),
        )
    };
    let Some(der) = expected.certificate_der else {
        return Err(key_not_found());
    };
    let matches = |sent: Option<&str>, digest: MessageDigest| -> Result<bool, AadError> {
        let Some(sent) = sent else { return Ok(true) };
        let actual = openssl::hash::hash(digest, der).map_err(|_| key_not_found())?;
        Ok(decode_thumbprint(sent).is_some_and(|bytes| bytes == actual.as_ref()))
    };
    if !matches(x5t, MessageDigest::sha1())? || !matches(x5t_s256, MessageDigest::sha256())? {
        return Err(key_not_found());
    }

    let bad_signature = || {
        AadError::new(
            401,
            "invalid_client",
            700027,
            format!(
                "Client assertion contains an invalid signature. [Reason - The provided signature \
                 value did not match the expected signature value., Thumbprint of key used by \
                 client: '{sent_thumbprint_hex}']"
            ),
        )
    };
    let signing_input = &assertion[..header_b64.len() + 1 + claims_b64.len()];
    if !signature_is_valid(der, alg, signing_input.as_bytes(), &signature) {
        return Err(bad_signature());
    }

    check_claims(&claims, expected)?;

    let jti = claims.get("jti").and_then(Value::as_str).unwrap_or("");
    if jti.is_empty() {
        return Err(malformed("the assertion has no 'jti' claim"));
    }
    if !used_jtis.insert(jti.to_owned()) {
        return Err(malformed(&format!(
            "the assertion's 'jti' ({jti}) was already used; every assertion needs a new one"
        )));
    }
    Ok(Accepted {
        alg: alg.to_owned(),
        thumbprint_header: if x5t_s256.is_some() {
            "x5t#S256"
        } else {
            "x5t"
        }
        .to_owned(),
    })
}

fn check_claims(claims: &Map<String, Value>, expected: &Expected<'_>) -> Result<(), AadError> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("aud") != Some(expected.token_url) {
        return Err(AadError {
            status: 401,
            error: "invalid_client",
            codes: vec![70002, 50012],
            message: format!(
                "Error validating credentials. AADSTS50012: Client assertion audience claim does \
                 not match Realm issuer. Expected '{}', got {}.",
                expected.token_url,
                claims
                    .get("aud")
                    .map_or("nothing".to_owned(), Value::to_string)
            ),
        });
    }
    let client_mismatch = |claim: &str| {
        AadError::new(
            401,
            "invalid_client",
            700021,
            format!(
                "Client assertion application identifier doesn't match 'client_id' parameter \
                 (claim '{claim}' is {}, client_id is '{}').",
                claims
                    .get(claim)
                    .map_or("missing".to_owned(), Value::to_string),
                expected.client_id
            ),
        )
    };
    if text("iss") != Some(expected.client_id) {
        return Err(client_mismatch("iss"));
    }
    if text("sub") != Some(expected.client_id) {
        return Err(client_mismatch("sub"));
    }

    let number = |name: &str| claims.get(name).and_then(Value::as_i64);
    let now = expected.now_unix_secs;
    let Some(exp) = number("exp") else {
        return Err(malformed("the assertion has no numeric 'exp' claim"));
    };
    let nbf = number("nbf");
    let out_of_range = |why: &str| {
        AadError::new(
            401,
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, \
                 assertion valid from {}, expiry time of assertion {}. {why}",
                iso(now),
                nbf.map_or("(no nbf)".to_owned(), iso),
                iso(exp)
            ),
        )
    };
    if exp <= now {
        return Err(out_of_range("The assertion has expired."));
    }
    if nbf.is_some_and(|nbf| nbf > now + CLOCK_SKEW_SECS) {
        return Err(out_of_range("The assertion is not valid yet."));
    }
    // MSAL sends no nbf, only iat: the lifetime then starts at iat.
    let start = nbf.or(number("iat")).unwrap_or(now);
    if exp - start > MAX_ASSERTION_LIFETIME_SECS {
        return Err(out_of_range(&format!(
            "Its lifetime of {} s is longer than the {MAX_ASSERTION_LIFETIME_SECS} s allowed.",
            exp - start
        )));
    }
    Ok(())
}

fn signature_is_valid(der: &[u8], alg: &str, signing_input: &[u8], signature: &[u8]) -> bool {
    let check = || -> Result<bool, openssl::error::ErrorStack> {
        let key = X509::from_der(der)?.public_key()?;
        let mut verifier = Verifier::new(MessageDigest::sha256(), &key)?;
        if alg == "PS256" {
            // RFC 7518 §3.5: MGF1 with SHA-256 and a salt as long as the digest.
            verifier.set_rsa_padding(Padding::PKCS1_PSS)?;
            verifier.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
            verifier.set_rsa_mgf1_md(MessageDigest::sha256())?;
        }
        verifier.verify_oneshot(signature, signing_input)
    };
    check().unwrap_or(false)
}

fn decode_json(segment: &str, what: &str) -> Result<Map<String, Value>, AadError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| malformed(&format!("the {what} is not base64url without padding")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(malformed(&format!("the {what} is not a JSON object"))),
    }
}

/// A thumbprint header value: base64url, with or without `=` padding (MSAL pads, the
/// documentation does not).
fn decode_thumbprint(value: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(value.trim_end_matches('=')).ok()
}

fn malformed(why: &str) -> AadError {
    AadError::new(
        401,
        "invalid_client",
        50027,
        format!("JWT token is invalid or malformed: {why}."),
    )
}

pub(crate) fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn iso(unix_secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_secs)
        .map(crate::aad::aad_timestamp)
        .unwrap_or_else(|_| unix_secs.to_string())
}
