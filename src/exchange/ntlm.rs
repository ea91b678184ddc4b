//! NTLMv2 messages for HTTP authentication (the connection handling lives in `transport`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::secret::Secret;

/// An NTLM identity, split from `auth_user` the way Windows does.
#[derive(Debug, Clone)]
pub struct NtlmCredentials {
    /// `DOMAIN\user` gives domain `DOMAIN`; a UPN `user@domain` keeps the whole UPN as the
    /// user name with an empty domain, which NTLM servers resolve.
    pub domain: String,
    pub user: String,
    pub password: Secret,
}

impl NtlmCredentials {
    pub fn from_auth_user(auth_user: &str, password: Secret) -> Self {
        match auth_user.split_once('\\') {
            Some((domain, user)) => NtlmCredentials {
                domain: domain.to_owned(),
                user: user.to_owned(),
                password,
            },
            None => NtlmCredentials {
                domain: String::new(),
                user: auth_user.to_owned(),
                password,
            },
        }
    }

    /// `DOMAIN\user` for messages (never the password).
    pub fn display_name(&self) -> String {
        if self.domain.is_empty() {
            self.user.clone()
        } else {
            format!("{}\\{}", self.domain, self.user)
        }
    }
}

/// The workstation name we announce; servers only log it.
fn workstation() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_uppercase())
        .filter(|h| !h.is_empty() && h.len() <= 15)
        .unwrap_or_else(|| "EXCHANGE-SYNC".to_owned())
}

/// The flags measured to work against pyspnego and IIS with ntlmclient's NTLMv2.
fn negotiate_flags() -> ntlmclient::Flags {
    ntlmclient::Flags::NEGOTIATE_UNICODE
        | ntlmclient::Flags::REQUEST_TARGET
        | ntlmclient::Flags::NEGOTIATE_NTLM
        | ntlmclient::Flags::NEGOTIATE_WORKSTATION_SUPPLIED
}

/// The `Authorization` header value of the first leg (Type 1, negotiate).
pub fn negotiate_header() -> Result<String, String> {
    let message = ntlmclient::Message::Negotiate(ntlmclient::NegotiateMessage {
        flags: negotiate_flags(),
        supplied_domain: String::new(),
        supplied_workstation: workstation(),
        os_version: Default::default(),
    });
    let bytes = message
        .to_bytes()
        .map_err(|e| format!("cannot encode NTLM negotiate message: {e:?}"))?;
    Ok(format!("NTLM {}", BASE64.encode(bytes)))
}

/// Finds the NTLM challenge (Type 2) among `WWW-Authenticate` header values.
pub fn challenge_from_headers<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Vec<u8>> {
    values.into_iter().find_map(|value| {
        // A header may list several schemes separated by commas.
        value.split(',').find_map(|part| {
            let part = part.trim();
            let (scheme, token) = part.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("NTLM") {
                return None;
            }
            BASE64.decode(token.trim()).ok()
        })
    })
}

/// The `Authorization` header value of the third leg (Type 3, authenticate) answering
/// `challenge`.
///
/// `channel_binding` is the application data of the GSS channel bindings of the connection
/// (`tls-server-end-point:` + certificate hash, see `tls::ServerEndPoint`) when it is TLS.
/// Its MD5 goes into the response's target info as MsvAvChannelBindings, which the NTLMv2
/// proof covers, so a server with Extended Protection can tell the handshake was made for its
/// own certificate. Over plain HTTP nothing is added: pyspnego and IIS accept a missing value
/// when they have no bindings to check, and the all-zero value Windows sends would only be
/// refused by an acceptor that requires bindings, which plain HTTP cannot satisfy anyway.
pub fn authenticate_header(
    challenge: &[u8],
    credentials: &NtlmCredentials,
    channel_binding: Option<&[u8]>,
) -> Result<String, String> {
    let message = ntlmclient::Message::try_from(challenge)
        .map_err(|e| format!("server sent an unreadable NTLM challenge: {e:?}"))?;
    let ntlmclient::Message::Challenge(challenge) = message else {
        return Err("server sent an NTLM message that is not a challenge".into());
    };
    let mut entries = challenge.target_information;
    if let Some(application_data) = channel_binding {
        insert_channel_bindings(&mut entries, channel_bindings_hash(application_data)?);
    }
    let target_info: Vec<u8> = entries.iter().flat_map(|entry| entry.to_bytes()).collect();
    let creds = ntlmclient::Credentials {
        username: credentials.user.clone(),
        password: credentials.password.expose().to_owned(),
        domain: credentials.domain.clone(),
    };
    // The NTLMv2 blob (and the proof over it) is computed over the target info as sent,
    // bindings included.
    let response = ntlmclient::respond_challenge_ntlm_v2(
        challenge.challenge,
        &target_info,
        ntlmclient::get_ntlm_time(),
        &creds,
    );
    let flags = ntlmclient::Flags::NEGOTIATE_UNICODE | ntlmclient::Flags::NEGOTIATE_NTLM;
    let bytes = response
        .to_message(&creds, &workstation(), flags)
        .to_bytes()
        .map_err(|e| format!("cannot encode NTLM authenticate message: {e:?}"))?;
    Ok(format!("NTLM {}", BASE64.encode(bytes)))
}

/// The flattened `gss_channel_bindings_struct` (RFC 2744 §3.11, as SSPI and MS-NLMP
/// §3.1.5.1.2 hash it): initiator and acceptor address types and lengths, all zero (HTTP
/// binds to the TLS channel, not to addresses), then the application data with its length,
/// every integer 32-bit little-endian.
fn gss_channel_bindings(application_data: &[u8]) -> Result<Vec<u8>, String> {
    let length = u32::try_from(application_data.len())
        .map_err(|_| "channel binding data too long".to_owned())?;
    let mut out = Vec::with_capacity(20 + application_data.len());
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(application_data);
    Ok(out)
}

/// The MsvAvChannelBindings value: MD5 of the flattened channel bindings.
pub fn channel_bindings_hash(application_data: &[u8]) -> Result<[u8; 16], String> {
    let digest = openssl::hash::hash(
        openssl::hash::MessageDigest::md5(),
        &gss_channel_bindings(application_data)?,
    )
    .map_err(|e| format!("cannot compute the NTLM channel binding hash: {e}"))?;
    <[u8; 16]>::try_from(&digest[..]).map_err(|_| "MD5 gave no 16-byte digest".to_owned())
}

/// Puts MsvAvChannelBindings before MsvAvEOL, replacing any the server sent (none should).
fn insert_channel_bindings(entries: &mut Vec<ntlmclient::TargetInfoEntry>, hash: [u8; 16]) {
    use ntlmclient::TargetInfoType;
    entries.retain(|e| e.entry_type != TargetInfoType::ChannelBindings);
    let entry = ntlmclient::TargetInfoEntry {
        entry_type: TargetInfoType::ChannelBindings,
        data: hash.to_vec(),
    };
    match entries
        .iter()
        .position(|e| e.entry_type == TargetInfoType::Terminator)
    {
        Some(eol) => entries.insert(eol, entry),
        None => {
            // A challenge without a terminated list: terminate it, as the blob requires.
            entries.push(entry);
            entries.push(ntlmclient::TargetInfoEntry {
                entry_type: TargetInfoType::Terminator,
                data: Vec::new(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_auth_user() {
        let c = NtlmCredentials::from_auth_user("CORP\\svc-sync", Secret::new("pw"));
        assert_eq!((c.domain.as_str(), c.user.as_str()), ("CORP", "svc-sync"));
        assert_eq!(c.display_name(), "CORP\\svc-sync");
        let c = NtlmCredentials::from_auth_user("svc@corp.example", Secret::new("pw"));
        assert_eq!(
            (c.domain.as_str(), c.user.as_str()),
            ("", "svc@corp.example")
        );
    }

    #[test]
    fn finds_the_ntlm_challenge_among_schemes() {
        let token = BASE64.encode(b"NTLMSSP\0abc");
        let ntlm = format!("NTLM {token}");
        let headers = ["Negotiate", ntlm.as_str()];
        assert_eq!(
            challenge_from_headers(headers).as_deref(),
            Some(&b"NTLMSSP\0abc"[..])
        );
        assert_eq!(challenge_from_headers(["Negotiate", "NTLM"]), None);
    }

    /// `tls-server-end-point:` + SHA-256 of a fixed self-signed certificate, and the MD5 that
    /// pyspnego 0.12.4 computes for it:
    /// `md5(GssChannelBindings(application_data=...).pack())`.
    const FIXED_CERT_SHA256: &str =
        "4f32e36a001798db5afd238f251e272bbac97b927aee81cde5b36c15e36be998";
    const FIXED_CBT_MD5_BY_PYSPNEGO: &str = "bcb226ad5420000c205c49210c1af81b";

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn fixed_application_data() -> Vec<u8> {
        [&b"tls-server-end-point:"[..], &unhex(FIXED_CERT_SHA256)].concat()
    }

    #[test]
    fn channel_bindings_struct_is_laid_out_as_rfc_2744_flattens_it() {
        let data = fixed_application_data();
        assert_eq!(data.len(), 21 + 32);
        // By hand: initiator addrtype, initiator address length, acceptor addrtype, acceptor
        // address length (all 0), application data length 53 = 0x35, then the data.
        let mut expected = vec![0u8; 16];
        expected.extend_from_slice(&[0x35, 0, 0, 0]);
        expected.extend_from_slice(&data);
        assert_eq!(gss_channel_bindings(&data).unwrap(), expected);

        let md5 = openssl::hash::hash(openssl::hash::MessageDigest::md5(), &expected).unwrap();
        let hash = channel_bindings_hash(&data).unwrap();
        assert_eq!(hash[..], md5[..]);
        assert_eq!(hex(&hash), FIXED_CBT_MD5_BY_PYSPNEGO);
    }

    /// A Type 2 as a server sends it (MS-NLMP §2.2.1.2), with target info ending in MsvAvEOL.
    /// Built by hand: ntlmclient's own Type 2 encoder misplaces the Reserved field.
    fn challenge_bytes(server_challenge: [u8; 8]) -> Vec<u8> {
        let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
        let av = |id: u16, value: &[u8]| -> Vec<u8> {
            let len = u16::try_from(value.len()).unwrap();
            [&id.to_le_bytes()[..], &len.to_le_bytes(), value].concat()
        };
        let target_name = utf16("TESTDOM");
        let target_info = [
            av(2, &utf16("TESTDOM")),
            av(1, &utf16("EXCH01")),
            av(0, &[]),
        ]
        .concat();
        let flags = ntlmclient::Flags::NEGOTIATE_UNICODE
            | ntlmclient::Flags::NEGOTIATE_NTLM
            | ntlmclient::Flags::NEGOTIATE_TARGET_INFO;
        let header_len: u32 = 56;
        let field = |len: usize, offset: u32| -> Vec<u8> {
            let len = u16::try_from(len).unwrap();
            [
                &len.to_le_bytes()[..],
                &len.to_le_bytes(),
                &offset.to_le_bytes(),
            ]
            .concat()
        };
        let name_len = u32::try_from(target_name.len()).unwrap();
        [
            &b"NTLMSSP\0"[..],
            &2u32.to_le_bytes(),
            &field(target_name.len(), header_len),
            &flags.bits().to_le_bytes(),
            &server_challenge,
            &[0; 8],
            &field(target_info.len(), header_len + name_len),
            &[0; 8],
            &target_name,
            &target_info,
        ]
        .concat()
    }

    /// The AV pairs of an NTLMv2 response, as (AvId, value) up to and including MsvAvEOL.
    fn av_pairs(nt_response: &[u8]) -> Vec<(u16, Vec<u8>)> {
        // NTProofStr (16), then RespType..ChallengeFromClient..Reserved3 (28), then AV pairs.
        let mut rest = &nt_response[16 + 28..];
        let mut pairs = Vec::new();
        loop {
            let id = u16::from_le_bytes([rest[0], rest[1]]);
            let len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
            pairs.push((id, rest[4..4 + len].to_vec()));
            rest = &rest[4 + len..];
            if id == 0 {
                return pairs;
            }
        }
    }

    fn type3_nt_response(header: &str) -> Vec<u8> {
        let bytes = BASE64
            .decode(header.strip_prefix("NTLM ").unwrap())
            .unwrap();
        match ntlmclient::Message::try_from(&bytes[..]).unwrap() {
            ntlmclient::Message::Authenticate(m) => m.ntlm_response,
            other => panic!("not a Type3: {other:?}"),
        }
    }

    #[test]
    fn type3_carries_channel_bindings_before_eol_under_the_ntlmv2_proof() {
        let creds = NtlmCredentials::from_auth_user("TESTDOM\\svc-sync", Secret::new("pw-1"));
        let server_challenge = *b"\x01\x23\x45\x67\x89\xab\xcd\xef";
        let challenge = challenge_bytes(server_challenge);
        let data = fixed_application_data();
        let header = authenticate_header(&challenge, &creds, Some(&data)).unwrap();
        let nt = type3_nt_response(&header);

        let pairs = av_pairs(&nt);
        let ids: Vec<u16> = pairs.iter().map(|(id, _)| *id).collect();
        // MsvAvNbDomainName, MsvAvNbComputerName, MsvAvChannelBindings, MsvAvEOL.
        assert_eq!(ids, [2, 1, 0x000A, 0]);
        assert_eq!(hex(&pairs[2].1), FIXED_CBT_MD5_BY_PYSPNEGO);

        // NTProofStr = HMAC-MD5(NTOWFv2, server challenge + blob): the blob it covers is the
        // one holding the bindings, so the server can check them.
        let key = ntlmclient::ntlm_v2_password_func(&ntlmclient::Credentials {
            username: "svc-sync".into(),
            password: "pw-1".into(),
            domain: "TESTDOM".into(),
        });
        let pkey = openssl::pkey::PKey::hmac(&key).unwrap();
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::md5(), &pkey).unwrap();
        signer.update(&server_challenge).unwrap();
        signer.update(&nt[16..]).unwrap();
        assert_eq!(signer.sign_to_vec().unwrap(), nt[..16]);
    }

    #[test]
    fn type3_over_plain_http_has_no_channel_bindings() {
        let creds = NtlmCredentials::from_auth_user("TESTDOM\\svc-sync", Secret::new("pw-1"));
        let header = authenticate_header(&challenge_bytes([7; 8]), &creds, None).unwrap();
        let ids: Vec<u16> = av_pairs(&type3_nt_response(&header))
            .iter()
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(ids, [2, 1, 0]);
    }

    #[test]
    fn bindings_terminate_an_unterminated_list_and_replace_a_stray_one() {
        use ntlmclient::{TargetInfoEntry, TargetInfoType};
        let mut entries = vec![
            TargetInfoEntry::from_string(TargetInfoType::NtDomain, "D"),
            TargetInfoEntry {
                entry_type: TargetInfoType::ChannelBindings,
                data: vec![9; 16],
            },
        ];
        insert_channel_bindings(&mut entries, [1; 16]);
        let kinds: Vec<_> = entries.iter().map(|e| e.entry_type).collect();
        assert_eq!(
            kinds,
            [
                TargetInfoType::NtDomain,
                TargetInfoType::ChannelBindings,
                TargetInfoType::Terminator
            ]
        );
        assert_eq!(entries[1].data, vec![1; 16]);
    }

    #[test]
    fn negotiate_is_a_type1_message() {
        let header = negotiate_header().unwrap();
        let bytes = BASE64
            .decode(header.strip_prefix("NTLM ").unwrap())
            .unwrap();
        assert_eq!(&bytes[..8], b"NTLMSSP\0");
        assert_eq!(bytes[8], 1);
    }
}
