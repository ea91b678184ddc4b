//! Client assertions: the signed JWTs (RFC 7523) with which an app proves to the Microsoft
//! identity platform that it holds a registered certificate's private key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer};

use super::Error;
use crate::secret::Secret;

/// How long an assertion is valid: the identity platform asks for "5-10 minutes after `nbf`
/// at most", and a fresh one is made for every token request anyway.
pub const ASSERTION_LIFETIME_SECS: i64 = 600;

/// How the assertion is signed, and how its header names the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JwtAlgorithm {
    /// `alg: RS256` (RSA PKCS#1 v1.5 with SHA-256) and `x5t` (SHA-1 thumbprint): what every
    /// tenant accepts, and what the Azure portal's thumbprint is for.
    #[default]
    Rs256,
    /// `alg: PS256` (RSA-PSS, SHA-256, MGF1 SHA-256, salt as long as the digest) and
    /// `x5t#S256` (SHA-256 thumbprint), as the 2025 documentation describes.
    Ps256,
}

impl JwtAlgorithm {
    /// The JOSE `alg` value.
    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Ps256 => "PS256",
        }
    }
}

/// The header parameter that names the signing certificate; values are base64url (no
/// padding) of the digest of the certificate's DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateId {
    /// `x5t`: SHA-1 (20 bytes).
    X5t(String),
    /// `x5t#S256`: SHA-256 (32 bytes).
    X5tS256(String),
}

impl CertificateId {
    /// The header parameter name and its value.
    pub fn header(&self) -> (&'static str, &str) {
        match self {
            CertificateId::X5t(value) => ("x5t", value),
            CertificateId::X5tS256(value) => ("x5t#S256", value),
        }
    }
}

/// Base64url without padding, the JWT encoding of every part.
pub fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new random `jti`, shaped like a version 4 UUID.
pub fn new_jti() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    openssl::rand::rand_bytes(&mut bytes).map_err(|err| Error::Credential {
        detail: format!("no random bytes for the client assertion's jti: {err}"),
    })?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// A signed client assertion for `client_id` at the token endpoint `audience`, valid from
/// `now_unix_secs` for [`ASSERTION_LIFETIME_SECS`]. It is a bearer credential while it lives,
/// hence a [`Secret`].
pub fn client_assertion(
    key: &PKey<Private>,
    algorithm: JwtAlgorithm,
    certificate: &CertificateId,
    audience: &str,
    client_id: &str,
    now_unix_secs: i64,
) -> Result<Secret, Error> {
    let (id_name, id_value) = certificate.header();
    let mut header = serde_json::Map::new();
    header.insert("alg".into(), algorithm.name().into());
    header.insert("typ".into(), "JWT".into());
    header.insert(id_name.into(), id_value.into());
    let claims = serde_json::json!({
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": new_jti()?,
        "nbf": now_unix_secs,
        "iat": now_unix_secs,
        "exp": now_unix_secs + ASSERTION_LIFETIME_SECS,
    });
    let signing_input = format!(
        "{}.{}",
        base64url(serde_json::Value::Object(header).to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let signature =
        sign(key, algorithm, signing_input.as_bytes()).map_err(|err| Error::Credential {
            detail: format!(
                "could not sign the client assertion with {}: {err}",
                algorithm.name()
            ),
        })?;
    Ok(Secret::new(format!(
        "{signing_input}.{}",
        base64url(&signature)
    )))
}

/// Signs `signing_input` with SHA-256 and the padding `algorithm` calls for.
pub fn sign(
    key: &PKey<Private>,
    algorithm: JwtAlgorithm,
    signing_input: &[u8],
) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let mut signer = Signer::new(MessageDigest::sha256(), key)?;
    if algorithm == JwtAlgorithm::Ps256 {
        // RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash output.
        signer.set_rsa_padding(Padding::PKCS1_PSS)?;
        signer.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
        signer.set_rsa_mgf1_md(MessageDigest::sha256())?;
    }
    signer.sign_oneshot_to_vec(signing_input)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;

    use openssl::sign::Verifier;
    use openssl::x509::X509;
    use serde_json::Value;

    use super::*;

    const CLIENT_ID: &str = "97e0a5b7-d745-40b6-94fe-5f77d35c6e05";
    const AUDIENCE: &str =
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token";
    const NOW: i64 = 1_484_592_741;

    struct TestCert {
        pem: String,
        key: PKey<Private>,
        cert: X509,
    }

    /// Key generation is slow in debug builds; the tests share one certificate.
    fn test_cert() -> &'static TestCert {
        static CERT: OnceLock<TestCert> = OnceLock::new();
        CERT.get_or_init(|| {
            let (pem, _, _) = fake_login::make_certificate("jwt-tests");
            TestCert {
                key: PKey::private_key_from_pem(pem.as_bytes()).unwrap(),
                cert: X509::from_pem(pem.as_bytes()).unwrap(),
                pem,
            }
        })
    }

    fn x5t(cert: &X509) -> CertificateId {
        CertificateId::X5t(base64url(&cert.digest(MessageDigest::sha1()).unwrap()))
    }

    fn x5t_s256(cert: &X509) -> CertificateId {
        CertificateId::X5tS256(base64url(&cert.digest(MessageDigest::sha256()).unwrap()))
    }

    fn decode_part(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    fn verify(cert: &X509, algorithm: JwtAlgorithm, token: &str) -> bool {
        let (input, signature) = token.rsplit_once('.').unwrap();
        let key = cert.public_key().unwrap();
        let mut verifier = Verifier::new(MessageDigest::sha256(), &key).unwrap();
        if algorithm == JwtAlgorithm::Ps256 {
            verifier.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
            verifier
                .set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
                .unwrap();
            verifier.set_rsa_mgf1_md(MessageDigest::sha256()).unwrap();
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        verifier
            .verify_oneshot(&signature, input.as_bytes())
            .unwrap_or(false)
    }

    #[test]
    fn rs256_assertion_has_the_documented_shape() {
        let tc = test_cert();
        let id = x5t(&tc.cert);
        let token =
            client_assertion(&tc.key, JwtAlgorithm::Rs256, &id, AUDIENCE, CLIENT_ID, NOW).unwrap();
        let token = token.expose();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(!token.contains('=') && !token.contains('+') && !token.contains('/'));
        let header = decode_part(parts[0]);
        assert_eq!(
            header,
            serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": id.header().1})
        );
        // SHA-1 → 20 bytes → 27 base64url characters without padding.
        assert_eq!(id.header().1.len(), 27);
        let claims = decode_part(parts[1]);
        assert_eq!(claims["aud"], AUDIENCE);
        assert_eq!(claims["iss"], CLIENT_ID);
        assert_eq!(claims["sub"], CLIENT_ID);
        assert_eq!(claims["nbf"], NOW);
        assert_eq!(claims["iat"], NOW);
        assert_eq!(claims["exp"], NOW + 600);
        let jti = claims["jti"].as_str().unwrap();
        assert_eq!(jti.len(), 36);
        assert_eq!(claims.as_object().unwrap().len(), 7);
        assert!(verify(&tc.cert, JwtAlgorithm::Rs256, token));
        assert!(!verify(&tc.cert, JwtAlgorithm::Ps256, token));
        // PKCS#1 v1.5 signatures are deterministic: the same input gives the same signature.
        let input = token.rsplit_once('.').unwrap().0;
        let again = sign(&tc.key, JwtAlgorithm::Rs256, input.as_bytes()).unwrap();
        assert_eq!(base64url(&again), parts[2]);
    }

    #[test]
    fn ps256_assertion_uses_pss_and_x5t_s256() {
        let tc = test_cert();
        let id = x5t_s256(&tc.cert);
        let token =
            client_assertion(&tc.key, JwtAlgorithm::Ps256, &id, AUDIENCE, CLIENT_ID, NOW).unwrap();
        let token = token.expose();
        let header = decode_part(token.split('.').next().unwrap());
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["x5t#S256"], id.header().1);
        assert_eq!(id.header().1.len(), 43);
        assert!(header.get("x5t").is_none());
        assert!(verify(&tc.cert, JwtAlgorithm::Ps256, token));
        assert!(!verify(&tc.cert, JwtAlgorithm::Rs256, token));
        // PSS is randomised: signing twice gives two different valid signatures.
        let input = token.rsplit_once('.').unwrap().0;
        let first = sign(&tc.key, JwtAlgorithm::Ps256, input.as_bytes()).unwrap();
        let second = sign(&tc.key, JwtAlgorithm::Ps256, input.as_bytes()).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn jti_is_a_fresh_uuid_v4_every_time() {
        let first = new_jti().unwrap();
        let second = new_jti().unwrap();
        assert_ne!(first, second);
        let groups: Vec<&str> = first.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('4'));
        assert!(matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert!(
            first
                .chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }

    #[test]
    fn assertion_debug_and_display_are_redacted() {
        let tc = test_cert();
        let token = client_assertion(
            &tc.key,
            JwtAlgorithm::Rs256,
            &x5t(&tc.cert),
            AUDIENCE,
            CLIENT_ID,
            NOW,
        )
        .unwrap();
        assert_eq!(format!("{token:?}"), crate::secret::REDACTED);
        assert_eq!(format!("{token}"), crate::secret::REDACTED);
    }

    // ---- interop: PyJWT (tests/peers/verify_jwt.py) verifies what we sign ----

    /// The Python that scripts/test.sh prepares, with PyJWT and cryptography.
    fn test_python() -> PathBuf {
        if let Some(path) = std::env::var_os("EXCHANGE_SYNC_TEST_PYTHON") {
            return PathBuf::from(path);
        }
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
        assert!(
            venv.exists(),
            "the JWT interop test needs Python with PyJWT and cryptography: run scripts/test.sh, \
             which installs tests/peers/requirements.txt into .venv (or set \
             EXCHANGE_SYNC_TEST_PYTHON); missing: {}",
            venv.display()
        );
        venv
    }

    /// Runs the PyJWT verifier; returns its exit code and output.
    fn py_verify(token: &str, cert_pem: &Path) -> (i32, String) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/verify_jwt.py");
        let python = test_python();
        let output = Command::new(&python)
            .arg(&script)
            .arg(token)
            .arg(cert_pem)
            .arg(AUDIENCE)
            .arg(CLIENT_ID)
            .output()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run {} (run scripts/test.sh to install the test peers): {err}",
                    python.display()
                )
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code().unwrap_or(-1), text.trim().to_owned())
    }

    #[test]
    fn pyjwt_verifies_rs256_and_ps256_and_rejects_tampering() {
        let tc = test_cert();
        let dir = tempfile::tempdir().unwrap();
        // Only the certificate goes to the verifier; it must not need the private key.
        let cert_path = dir.path().join("cert.pem");
        std::fs::write(&cert_path, tc.cert.to_pem().unwrap()).unwrap();
        assert!(tc.pem.contains("PRIVATE KEY"));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();

        for (algorithm, id) in [
            (JwtAlgorithm::Rs256, x5t(&tc.cert)),
            (JwtAlgorithm::Ps256, x5t_s256(&tc.cert)),
        ] {
            let token =
                client_assertion(&tc.key, algorithm, &id, AUDIENCE, CLIENT_ID, now).unwrap();
            let token = token.expose();
            let (code, output) = py_verify(token, &cert_path);
            assert_eq!((code, output.as_str()), (0, "ok"), "{}", algorithm.name());

            // One changed claim character: the signature no longer matches.
            let (header, rest) = token.split_once('.').unwrap();
            let (claims, signature) = rest.split_once('.').unwrap();
            let mut forged: Value = decode_part(claims);
            forged["sub"] = "someone-else".into();
            let forged = format!(
                "{header}.{}.{signature}",
                base64url(forged.to_string().as_bytes())
            );
            let (code, output) = py_verify(&forged, &cert_path);
            assert_eq!(
                code,
                1,
                "{}: tampered token accepted: {output}",
                algorithm.name()
            );
            assert!(!output.is_empty());

            // A thumbprint header naming another certificate is refused too.
            let mut wrong_header: Value = decode_part(header);
            let (name, _) = id.header();
            wrong_header[name] = base64url(&[0u8; 20]).into();
            let wrong = format!("{}.{rest}", base64url(wrong_header.to_string().as_bytes()));
            let (code, output) = py_verify(&wrong, &cert_path);
            assert_eq!(
                code,
                1,
                "{}: wrong thumbprint accepted: {output}",
                algorithm.name()
            );
        }

        // Wrong audience: PyJWT's own check.
        let token = client_assertion(
            &tc.key,
            JwtAlgorithm::Rs256,
            &x5t(&tc.cert),
            "https://login.microsoftonline.com/other/oauth2/v2.0/token",
            CLIENT_ID,
            now,
        )
        .unwrap();
        let (code, output) = py_verify(token.expose(), &cert_path);
        assert_eq!(code, 1, "wrong audience accepted: {output}");
    }
}
