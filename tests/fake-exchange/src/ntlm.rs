//! Server side of NTLM over HTTP (MS-NLMP): parse NEGOTIATE (Type 1), build CHALLENGE
//! (Type 2) with target info AV pairs, and verify an NTLMv2 AUTHENTICATE (Type 3) response
//! against the configured user (NTProofStr = HMAC-MD5(NTOWFv2, server challenge + blob)).

use md4::{Digest, Md4};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

pub(crate) const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NEGOTIATE_NTLM: u32 = 0x0000_0200;
const ALWAYS_SIGN: u32 = 0x0000_8000;
const TARGET_TYPE_DOMAIN: u32 = 0x0001_0000;
const EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
const TARGET_INFO: u32 = 0x0080_0000;
const NEGOTIATE_VERSION: u32 = 0x0200_0000;
const NEGOTIATE_128: u32 = 0x2000_0000;
const KEY_EXCH: u32 = 0x4000_0000;
const NEGOTIATE_56: u32 = 0x8000_0000;

/// Names the fake server announces in its challenge.
pub(crate) const NB_COMPUTER: &str = "EXCH01";
pub(crate) const DNS_DOMAIN: &str = "example.test";

/// The NTLM message type of a token (1, 2 or 3), if it is an NTLM message at all.
pub(crate) fn message_type(token: &[u8]) -> Option<u32> {
    if token.len() < 12 || &token[..8] != SIGNATURE {
        return None;
    }
    Some(u32::from_le_bytes(token[8..12].try_into().ok()?))
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

fn from_utf16le(b: &[u8]) -> Option<String> {
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let units: Vec<u16> = b
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

fn av_pair(out: &mut Vec<u8>, id: u16, value: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

/// Windows FILETIME (100 ns since 1601-01-01) for now.
fn filetime_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() / 100)
        .unwrap_or(0) as u64;
    unix + 116_444_736_000_000_000
}

/// A challenge sent on one connection, kept until the Type 3 arrives.
#[derive(Clone, Debug)]
pub(crate) struct Challenge {
    pub server_challenge: [u8; 8],
    pub message: Vec<u8>,
}

/// Build a CHALLENGE message for `domain` answering the client's NEGOTIATE flags.
pub(crate) fn challenge(domain: &str, negotiate: &[u8]) -> Challenge {
    let client_flags = if negotiate.len() >= 16 {
        u32::from_le_bytes(negotiate[12..16].try_into().unwrap_or([0; 4]))
    } else {
        0
    };
    let mut server_challenge = [0u8; 8];
    if openssl::rand::rand_bytes(&mut server_challenge).is_err() {
        server_challenge = filetime_now().to_le_bytes();
    }
    let nb_domain = domain.to_uppercase();
    let target_name = utf16le(&nb_domain);
    let mut info = Vec::new();
    av_pair(&mut info, 2, &utf16le(&nb_domain)); // MsvAvNbDomainName
    av_pair(&mut info, 1, &utf16le(NB_COMPUTER)); // MsvAvNbComputerName
    av_pair(&mut info, 4, &utf16le(DNS_DOMAIN)); // MsvAvDnsDomainName
    av_pair(
        &mut info,
        3,
        &utf16le(&format!("{}.{}", NB_COMPUTER.to_lowercase(), DNS_DOMAIN)),
    ); // MsvAvDnsComputerName
    av_pair(&mut info, 5, &utf16le(DNS_DOMAIN)); // MsvAvDnsTreeName
    av_pair(&mut info, 7, &filetime_now().to_le_bytes()); // MsvAvTimestamp
    av_pair(&mut info, 0, &[]); // MsvAvEOL

    let mut flags = NEGOTIATE_UNICODE
        | REQUEST_TARGET
        | NEGOTIATE_NTLM
        | ALWAYS_SIGN
        | TARGET_TYPE_DOMAIN
        | EXTENDED_SESSIONSECURITY
        | TARGET_INFO
        | NEGOTIATE_VERSION;
    flags |= client_flags & (NEGOTIATE_128 | NEGOTIATE_56 | KEY_EXCH);

    let header_len = 56u32;
    let mut m = Vec::with_capacity(56 + target_name.len() + info.len());
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&2u32.to_le_bytes());
    m.extend_from_slice(&(target_name.len() as u16).to_le_bytes());
    m.extend_from_slice(&(target_name.len() as u16).to_le_bytes());
    m.extend_from_slice(&header_len.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&server_challenge);
    m.extend_from_slice(&[0u8; 8]);
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&(info.len() as u16).to_le_bytes());
    m.extend_from_slice(&(header_len + target_name.len() as u32).to_le_bytes());
    m.extend_from_slice(&[6, 1, 0xB1, 0x1D, 0, 0, 0, 0x0F]); // Windows 6.1.7601, NTLMSSP rev 15
    m.extend_from_slice(&target_name);
    m.extend_from_slice(&info);
    Challenge {
        server_challenge,
        message: m,
    }
}

/// The fields of an AUTHENTICATE message the server needs.
#[derive(Clone, Debug)]
pub(crate) struct Authenticate {
    pub nt_response: Vec<u8>,
    pub domain: String,
    pub user: String,
}

fn field(msg: &[u8], at: usize) -> Option<&[u8]> {
    let len = u16::from_le_bytes(msg.get(at..at + 2)?.try_into().ok()?) as usize;
    let off = u32::from_le_bytes(msg.get(at + 4..at + 8)?.try_into().ok()?) as usize;
    msg.get(off..off.checked_add(len)?)
}

/// Parse an AUTHENTICATE (Type 3) message.
pub(crate) fn parse_authenticate(msg: &[u8]) -> Option<Authenticate> {
    if message_type(msg)? != 3 || msg.len() < 64 {
        return None;
    }
    let flags = u32::from_le_bytes(msg[60..64].try_into().ok()?);
    let text = |b: &[u8]| {
        if flags & NEGOTIATE_UNICODE != 0 {
            from_utf16le(b)
        } else {
            Some(b.iter().map(|&c| c as char).collect())
        }
    };
    Some(Authenticate {
        nt_response: field(msg, 20)?.to_vec(),
        domain: text(field(msg, 28)?)?,
        user: text(field(msg, 36)?)?,
    })
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> Option<Vec<u8>> {
    let pkey = PKey::hmac(key).ok()?;
    let mut signer = Signer::new(MessageDigest::md5(), &pkey).ok()?;
    for p in parts {
        signer.update(p).ok()?;
    }
    signer.sign_to_vec().ok()
}

/// NTOWFv2 = HMAC-MD5(MD4(UTF-16LE(password)), UTF-16LE(UPPER(user) + domain)).
pub(crate) fn ntowfv2(password: &str, user: &str, domain: &str) -> Option<Vec<u8>> {
    let nt_hash = Md4::digest(utf16le(password));
    hmac_md5(&nt_hash, &[&utf16le(&(user.to_uppercase() + domain))])
}

/// Why a Type 3 was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Malformed,
    NotNtlmV2,
    UnknownUser,
    WrongPassword,
}

/// Verify an NTLMv2 response for the configured account (user and domain compared
/// case-insensitively; the HMAC uses the domain exactly as the client sent it).
pub(crate) fn verify(
    auth: &Authenticate,
    challenge: &Challenge,
    domain: &str,
    user: &str,
    password: &str,
) -> Result<(), Refusal> {
    if auth.nt_response.len() < 48 {
        return Err(Refusal::NotNtlmV2);
    }
    if auth.user.to_uppercase() != user.to_uppercase()
        || auth.domain.to_uppercase() != domain.to_uppercase()
    {
        return Err(Refusal::UnknownUser);
    }
    let key = ntowfv2(password, &auth.user, &auth.domain).ok_or(Refusal::Malformed)?;
    let (proof, blob) = auth.nt_response.split_at(16);
    if blob[0] != 1 || blob[1] != 1 {
        return Err(Refusal::NotNtlmV2);
    }
    let expected =
        hmac_md5(&key, &[&challenge.server_challenge, blob]).ok_or(Refusal::Malformed)?;
    if openssl::memcmp::eq(&expected, proof) {
        Ok(())
    } else {
        Err(Refusal::WrongPassword)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// MS-NLMP 4.2.4 test vectors.
    #[test]
    fn ms_nlmp_vectors() {
        let key = ntowfv2("Password", "User", "Domain").unwrap();
        assert_eq!(key, hex("0c 86 8a 40 3b fd 7a 93 a3 00 1e f2 2e f0 2e 3f"));
        let mut blob = hex(
            "01 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 aa aa aa aa aa aa aa aa 00 00 00 00",
        );
        blob.extend(hex(
            "02 00 0c 00 44 00 6f 00 6d 00 61 00 69 00 6e 00 01 00 0c 00 53 00 65 00 72 00 76 00 65 00 72 00 00 00 00 00",
        ));
        blob.extend(hex("00 00 00 00"));
        let server_challenge: [u8; 8] = hex("01 23 45 67 89 ab cd ef").try_into().unwrap();
        let proof = hmac_md5(&key, &[&server_challenge, &blob]).unwrap();
        assert_eq!(
            proof,
            hex("68 cd 0a b8 51 e5 1c 96 aa bc 92 7b eb ef 6a 1c")
        );
        let mut nt_response = proof.clone();
        nt_response.extend(&blob);
        let auth = Authenticate {
            nt_response,
            domain: "Domain".into(),
            user: "User".into(),
        };
        let ch = Challenge {
            server_challenge,
            message: Vec::new(),
        };
        assert_eq!(verify(&auth, &ch, "DOMAIN", "user", "Password"), Ok(()));
        assert_eq!(
            verify(&auth, &ch, "DOMAIN", "user", "password"),
            Err(Refusal::WrongPassword)
        );
        assert_eq!(
            verify(&auth, &ch, "OTHER", "user", "Password"),
            Err(Refusal::UnknownUser)
        );
    }

    #[test]
    fn challenge_layout() {
        let mut negotiate = SIGNATURE.to_vec();
        negotiate.extend_from_slice(&1u32.to_le_bytes());
        negotiate
            .extend_from_slice(&(NEGOTIATE_UNICODE | NEGOTIATE_128 | NEGOTIATE_56).to_le_bytes());
        let ch = challenge("testdom", &negotiate);
        let m = &ch.message;
        assert_eq!(message_type(m), Some(2));
        assert_eq!(&m[24..32], &ch.server_challenge);
        assert_eq!(from_utf16le(field(m, 12).unwrap()).unwrap(), "TESTDOM");
        let info = field(m, 40).unwrap();
        let mut ids = Vec::new();
        let mut i = 0;
        while i + 4 <= info.len() {
            let id = u16::from_le_bytes([info[i], info[i + 1]]);
            let len = u16::from_le_bytes([info[i + 2], info[i + 3]]) as usize;
            ids.push(id);
            i += 4 + len;
        }
        assert_eq!(ids, vec![2, 1, 4, 3, 5, 7, 0]);
        let flags = u32::from_le_bytes(m[20..24].try_into().unwrap());
        assert!(flags & NEGOTIATE_128 != 0 && flags & TARGET_INFO != 0);
    }
}
