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
pub fn authenticate_header(
    challenge: &[u8],
    credentials: &NtlmCredentials,
) -> Result<String, String> {
    let message = ntlmclient::Message::try_from(challenge)
        .map_err(|e| format!("server sent an unreadable NTLM challenge: {e:?}"))?;
    let ntlmclient::Message::Challenge(challenge) = message else {
        return Err("server sent an NTLM message that is not a challenge".into());
    };
    let target_info: Vec<u8> = challenge
        .target_information
        .iter()
        .flat_map(|entry| entry.to_bytes())
        .collect();
    let creds = ntlmclient::Credentials {
        username: credentials.user.clone(),
        password: credentials.password.expose().to_owned(),
        domain: credentials.domain.clone(),
    };
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
