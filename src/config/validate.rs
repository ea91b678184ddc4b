//! Judges the raw values: ranges, allowed words, URLs, rules between keys, and defaults.
//! Every check runs even after an earlier one failed, so all problems are reported together.

use std::time::Duration;

use serde_json::Number;

use super::error::{ConfigError, shown_str};
use super::mailbox;
use super::raw::{Field, RawConfig, Slot};
use super::types::{AccessType, Auth, Config, MicrosoftApi, OAuthCredential};
use crate::secret::Secret;

const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com/v1.0";
const DEFAULT_PORT: u16 = 80;
const DEFAULT_POLL_FREQUENCY: Duration = Duration::from_secs(15);
const DEFAULT_POLL_MESSAGE_SLEEP: Duration = Duration::from_millis(100);
const MAX_POLL_FREQUENCY_SECONDS: f64 = 86_400.0;
const MAX_POLL_MESSAGE_SLEEP_SECONDS: f64 = 60.0;

/// An integer key's default and inclusive bounds.
struct IntRange {
    default: usize,
    min: u64,
    max: u64,
}

const MAX_CONCURRENT_UPLOADS: IntRange = IntRange {
    default: 8,
    min: 0,
    max: 32,
};
/// 27 is `EWSMaxConcurrency` on Exchange 2013 and later, and on Exchange Online: more
/// concurrent requests per user would only be throttled.
const MAX_CONCURRENT_FETCHES: IntRange = IntRange {
    default: 8,
    min: 1,
    max: 27,
};
const EMAILS_PER_FOLDER: IntRange = IntRange {
    default: 2520,
    min: 1,
    max: 100_000,
};
const REINFER_BATCH_SIZE: IntRange = IntRange {
    default: 80,
    min: 1,
    max: 1000,
};

const NTLM_USER_FORMS: &str = "a user name: DOMAIN\\user, user@domain or user";
const HTTP_URL: &str = "an http:// or https:// URL";
const SHA1_THUMBPRINT_HEX_DIGITS: usize = 40;

/// `None` only when an error explains why.
pub(super) fn validate(
    raw: RawConfig,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Option<Config> {
    // `None` when the word is wrong: the checks that depend on it then stay quiet rather than
    // piling guesses onto the one real mistake.
    let api = one_of(
        raw.microsoft_api,
        &[("ews", MicrosoftApi::Ews), ("graph", MicrosoftApi::Graph)],
        Some(MicrosoftApi::Ews),
        errors,
    );
    let access_type = one_of(
        raw.access_type,
        &[
            ("delegate", AccessType::Delegate),
            ("impersonation", AccessType::Impersonation),
        ],
        Some(AccessType::Delegate),
        errors,
    );
    let ews_url = ews_url(raw.ews_endpoint, raw.host, raw.port, api, errors, warnings);
    let graph_url = graph_url(raw.graph_endpoint.given(), errors);
    let auth = auth(
        AuthFields {
            auth_type: raw.auth_type,
            user: raw.auth_user,
            password: raw.auth_password,
            authority: raw.auth_oauth_authority,
            client_id: raw.auth_oauth_client_id,
            client_secret: raw.auth_oauth_client_secret,
            private_key: raw.auth_oauth_client_credential_private_key,
            thumbprint: raw.auth_oauth_client_credential_thumbprint,
        },
        api,
        errors,
        warnings,
    );
    let ews_ssl_ciphers = raw.ews_ssl_ciphers.given().and_then(|field| {
        if field.value.trim().is_empty() {
            errors.push(field.invalid("a non-empty OpenSSL cipher list, e.g. \"HIGH:!aNULL\""));
            None
        } else {
            Some(field.value)
        }
    });
    let poll_frequency = seconds(
        raw.poll_frequency.given(),
        DEFAULT_POLL_FREQUENCY,
        false,
        MAX_POLL_FREQUENCY_SECONDS,
        errors,
    );
    let poll_message_sleep = seconds(
        raw.poll_message_sleep.given(),
        DEFAULT_POLL_MESSAGE_SLEEP,
        true,
        MAX_POLL_MESSAGE_SLEEP_SECONDS,
        errors,
    );
    let max_concurrent_uploads = integer(
        raw.max_concurrent_uploads.given(),
        &MAX_CONCURRENT_UPLOADS,
        errors,
    );
    let max_concurrent_fetches = integer(
        raw.max_concurrent_fetches.given(),
        &MAX_CONCURRENT_FETCHES,
        errors,
    );
    let emails_per_folder = integer(raw.emails_per_folder.given(), &EMAILS_PER_FOLDER, errors);
    let reinfer_batch_size = integer(raw.reinfer_batch_size.given(), &REINFER_BATCH_SIZE, errors);
    let audit_email = raw.audit_email.given().and_then(|field| {
        if mailbox::is_address(&field.value) {
            Some(field.value)
        } else {
            errors.push(field.invalid(mailbox::ADDRESS_ALLOWED));
            None
        }
    });
    let mailboxes = mailbox::validate_all(raw.mailboxes, errors);

    Some(Config {
        microsoft_api: api?,
        ews_url,
        graph_url,
        auth: auth?,
        access_type: access_type?,
        ews_ssl_verify: raw.ews_ssl_verify.given().is_none_or(|field| field.value),
        ews_ssl_ciphers,
        poll_frequency,
        poll_message_sleep,
        max_concurrent_uploads,
        max_concurrent_fetches,
        emails_per_folder,
        reinfer_batch_size,
        audit_email,
        mailboxes,
    })
}

/// The value named by one of `choices`, `default` when absent, `None` when wrong (reported).
fn one_of<T: Copy>(
    slot: Slot<String>,
    choices: &[(&str, T)],
    default: Option<T>,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let field = match slot {
        Slot::Absent => return default,
        Slot::Mistyped => return None,
        Slot::Given(field) => field,
    };
    if let Some(&(_, value)) = choices.iter().find(|(word, _)| *word == field.value) {
        return Some(value);
    }
    errors.push(field.invalid(words(choices.iter().map(|(word, _)| *word))));
    None
}

/// `"a" or "b"`, `"a", "b" or "c"`.
fn words<'a>(words: impl Iterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = words.map(shown_str).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// Whether `url` is `http://` or `https://` followed by a host, with no whitespace anywhere.
pub(super) fn is_http_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !authority.is_empty() && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A host name or IP address: no scheme, path, port or whitespace. IPv6 needs brackets so
/// that a `HOST:PORT` typo is caught rather than taken for an address.
fn is_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return !inner.is_empty()
            && inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    }
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn ews_url(
    endpoint: Slot<String>,
    host: Slot<String>,
    port: Slot<Number>,
    api: Option<MicrosoftApi>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let port = port.given().and_then(|field| match field.value.as_u64() {
        Some(port @ 1..=65535) => u16::try_from(port).ok().map(|port| (port, field.key)),
        _ => {
            errors.push(field.invalid("a TCP port number, 1 to 65535"));
            None
        }
    });
    let endpoint = match (endpoint, &host) {
        (Slot::Given(endpoint), _) => Some(endpoint),
        // Either one already reported: the other is not missing.
        (Slot::Mistyped, _) | (Slot::Absent, Slot::Mistyped) => return None,
        (Slot::Absent, _) => None,
    };
    if let Some(endpoint) = endpoint {
        for ignored in [
            host.given().map(|field| field.key),
            port.map(|(_, key)| key),
        ]
        .into_iter()
        .flatten()
        {
            warnings.push(format!(
                "`{ignored}` ignored because `{}` is given",
                endpoint.key
            ));
        }
        if is_http_url(&endpoint.value) {
            return Some(endpoint.value);
        }
        errors.push(endpoint.invalid(format!(
            "{HTTP_URL}, e.g. \"https://mail.example.com/EWS/Exchange.asmx\""
        )));
        return None;
    }
    let Some(host) = host.given() else {
        if api == Some(MicrosoftApi::Ews) {
            errors.push(ConfigError::Missing {
                key: "ews_endpoint".to_owned(),
                why: "when microsoft_api is \"ews\", unless `host` is given".to_owned(),
            });
        }
        return None;
    };
    if !is_host(&host.value) {
        errors.push(host.invalid(
            "a host name or IP address without scheme, port or path, e.g. \"mail.example.com\" \
             ([...] around IPv6)",
        ));
        return None;
    }
    let port = port.map_or(DEFAULT_PORT, |(port, _)| port);
    let host = host.value;
    Some(match port {
        443 => format!("https://{host}/EWS/Exchange.asmx"),
        80 => format!("http://{host}/EWS/Exchange.asmx"),
        other => format!("http://{host}:{other}/EWS/Exchange.asmx"),
    })
}

fn graph_url(field: Option<Field<String>>, errors: &mut Vec<ConfigError>) -> String {
    let Some(field) = field else {
        return DEFAULT_GRAPH_URL.to_owned();
    };
    let trimmed = field.value.trim_end_matches('/');
    if is_http_url(trimmed) {
        trimmed.to_owned()
    } else {
        errors.push(field.invalid(format!("{HTTP_URL}, e.g. \"{DEFAULT_GRAPH_URL}\"")));
        DEFAULT_GRAPH_URL.to_owned()
    }
}

/// A duration in seconds, from a JSON number that may be fractional.
fn seconds(
    field: Option<Field<Number>>,
    default: Duration,
    zero_allowed: bool,
    max_seconds: f64,
    errors: &mut Vec<ConfigError>,
) -> Duration {
    let Some(field) = field else {
        return default;
    };
    let allowed = if zero_allowed {
        format!("0 to {max_seconds} (seconds)")
    } else {
        format!("more than 0 and at most {max_seconds} (seconds)")
    };
    let duration = field
        .value
        .as_f64()
        .filter(|&seconds| seconds <= max_seconds)
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        // A positive value too small for a nanosecond would otherwise become zero.
        .filter(|duration| zero_allowed || !duration.is_zero());
    match duration {
        Some(duration) => duration,
        None => {
            errors.push(field.invalid(allowed));
            default
        }
    }
}

/// A whole number within `range`; `8.0` counts as whole.
fn integer(field: Option<Field<Number>>, range: &IntRange, errors: &mut Vec<ConfigError>) -> usize {
    let Some(field) = field else {
        return range.default;
    };
    let whole = field.value.as_u64().or_else(|| {
        field
            .value
            .as_f64()
            .filter(|value| value.fract() == 0.0 && *value >= 0.0 && *value <= range.max as f64)
            .map(|value| value as u64)
    });
    match whole
        .filter(|value| (range.min..=range.max).contains(value))
        .and_then(|value| usize::try_from(value).ok())
    {
        Some(value) => value,
        None => {
            let allowed = if field.value.as_i64().is_some() || field.value.as_u64().is_some() {
                format!("{} to {}", range.min, range.max)
            } else {
                format!("a whole number, {} to {}", range.min, range.max)
            };
            errors.push(field.invalid(allowed));
            range.default
        }
    }
}

struct AuthFields {
    auth_type: Slot<String>,
    user: Slot<String>,
    password: Slot<Secret>,
    authority: Slot<String>,
    client_id: Slot<String>,
    client_secret: Slot<Secret>,
    private_key: Slot<Secret>,
    thumbprint: Slot<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthType {
    Ntlm,
    OAuth2,
}

fn auth(
    fields: AuthFields,
    api: Option<MicrosoftApi>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Option<Auth> {
    let auth_type = match (fields.auth_type, api) {
        (Slot::Mistyped, _) | (Slot::Absent, None) => return None,
        (Slot::Absent, Some(MicrosoftApi::Ews)) => AuthType::Ntlm,
        (Slot::Absent, Some(MicrosoftApi::Graph)) => AuthType::OAuth2,
        (Slot::Given(field), _) if field.value == "oauth2" => AuthType::OAuth2,
        (Slot::Given(field), Some(MicrosoftApi::Graph)) => {
            errors.push(field.invalid("\"oauth2\" (the only one Graph supports)"));
            return None;
        }
        (Slot::Given(field), _) if field.value == "ntlm" => AuthType::Ntlm,
        (Slot::Given(field), _) => {
            errors.push(field.invalid("\"ntlm\" or \"oauth2\""));
            return None;
        }
    };
    let type_word = match auth_type {
        AuthType::Ntlm => "ntlm",
        AuthType::OAuth2 => "oauth2",
    };
    let mut ignored = |keys: &[Option<String>]| {
        for key in keys.iter().flatten() {
            warnings.push(format!(
                "`{key}` ignored because auth_type is \"{type_word}\""
            ));
        }
    };
    let missing = |key: &'static str| {
        move || ConfigError::Missing {
            key: key.to_owned(),
            why: format!("when auth_type is \"{type_word}\""),
        }
    };
    let key_of = |slot: &Slot<String>| match slot {
        Slot::Given(field) => Some(field.key.clone()),
        Slot::Absent | Slot::Mistyped => None,
    };
    let secret_key_of = |slot: &Slot<Secret>| match slot {
        Slot::Given(field) => Some(field.key.clone()),
        Slot::Absent | Slot::Mistyped => None,
    };
    match auth_type {
        AuthType::Ntlm => {
            ignored(&[
                key_of(&fields.authority),
                key_of(&fields.client_id),
                secret_key_of(&fields.client_secret),
                secret_key_of(&fields.private_key),
                key_of(&fields.thumbprint),
            ]);
            let user = fields
                .user
                .required(errors, missing("auth_user"))
                .and_then(|field| {
                    if is_ntlm_user(&field.value) {
                        Some(field.value)
                    } else {
                        errors.push(field.invalid(NTLM_USER_FORMS));
                        None
                    }
                });
            let password = fields
                .password
                .required(errors, missing("auth_password"))
                .and_then(|field| {
                    if field.value.is_empty() {
                        errors.push(field.invalid("a non-empty password"));
                        None
                    } else {
                        Some(field.value)
                    }
                });
            Some(Auth::Ntlm {
                user: user?,
                password: password?,
            })
        }
        AuthType::OAuth2 => {
            ignored(&[key_of(&fields.user), secret_key_of(&fields.password)]);
            let authority = fields
                .authority
                .required(errors, missing("auth_oauth_authority"))
                .and_then(|field| {
                    if is_http_url(&field.value) {
                        Some(format!("{}/", field.value.trim_end_matches('/')))
                    } else {
                        errors.push(field.invalid(format!(
                            "{HTTP_URL}, e.g. \"https://login.microsoftonline.com/TENANT-ID/\""
                        )));
                        None
                    }
                });
            let client_id = fields
                .client_id
                .required(errors, missing("auth_oauth_client_id"))
                .and_then(|field| {
                    if field.value.trim().is_empty() {
                        errors.push(field.invalid("a non-empty application (client) id"));
                        None
                    } else {
                        Some(field.value)
                    }
                });
            let credential = oauth_credential(
                fields.client_secret,
                fields.private_key,
                fields.thumbprint.given(),
                errors,
                warnings,
            );
            Some(Auth::OAuth2 {
                authority: authority?,
                client_id: client_id?,
                credential: credential?,
            })
        }
    }
}

/// `DOMAIN\user`, `user@domain` or `user`: one separator at most, with text on both sides.
fn is_ntlm_user(user: &str) -> bool {
    if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let parts_ok = |separator: char| {
        let parts: Vec<&str> = user.split(separator).collect();
        parts.len() == 1 || (parts.len() == 2 && parts.iter().all(|part| !part.is_empty()))
    };
    let forms = usize::from(user.contains('\\')) + usize::from(user.contains('@'));
    forms <= 1 && parts_ok('\\') && parts_ok('@')
}

fn oauth_credential(
    client_secret: Slot<Secret>,
    private_key: Slot<Secret>,
    thumbprint: Option<Field<String>>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Option<OAuthCredential> {
    match (client_secret, private_key) {
        // Already reported; whether the other one is wanted is unknowable.
        (Slot::Mistyped, _) | (_, Slot::Mistyped) => None,
        (Slot::Given(secret), Slot::Given(key)) => {
            errors.push(secret.invalid(format!(
                "only one of `{}` and `{}`, not both",
                secret.key, key.key
            )));
            None
        }
        (Slot::Absent, Slot::Absent) => {
            errors.push(ConfigError::Missing {
                key: "auth_oauth_client_secret".to_owned(),
                why: "when auth_type is \"oauth2\" (or give \
                      `auth_oauth_client_credential_private_key` instead)"
                    .to_owned(),
            });
            None
        }
        (Slot::Given(secret), Slot::Absent) => {
            if let Some(thumbprint) = thumbprint {
                warnings.push(format!(
                    "`{}` ignored because `{}` is used instead of a certificate",
                    thumbprint.key, secret.key
                ));
            }
            if secret.value.is_empty() {
                errors.push(secret.invalid("a non-empty client secret"));
                return None;
            }
            Some(OAuthCredential::Secret(secret.value))
        }
        (Slot::Absent, Slot::Given(key)) => {
            let pem = key.value.expose();
            let key_ok = pem.contains("-----BEGIN") && pem.contains("PRIVATE KEY-----");
            if !key_ok {
                errors.push(key.invalid(
                    "PEM text holding a private key (-----BEGIN ... PRIVATE KEY----- ... \
                     -----END ... PRIVATE KEY-----)",
                ));
            }
            let thumbprint = match thumbprint {
                None => Some(None),
                Some(field) => match normalise_thumbprint(&field.value) {
                    Some(hex) => Some(Some(hex)),
                    None => {
                        errors.push(field.invalid(
                            "a SHA-1 thumbprint: 40 hex digits (colons and spaces allowed)",
                        ));
                        None
                    }
                },
            };
            if !key_ok {
                return None;
            }
            Some(OAuthCredential::Certificate {
                private_key_pem: key.value,
                thumbprint: thumbprint?,
            })
        }
    }
}

/// 40 upper-case hex digits, from a thumbprint that may be lower-case and grouped with colons or
/// spaces (as `openssl x509 -fingerprint` and the Windows certificate dialog show it).
fn normalise_thumbprint(text: &str) -> Option<String> {
    let hex: String = text.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    (hex.len() == SHA1_THUMBPRINT_HEX_DIGITS && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls() {
        for good in [
            "https://graph.microsoft.com/v1.0",
            "http://10.0.0.1:8080/EWS/Exchange.asmx",
            "https://login.microsoftonline.com/tenant/",
            "https://h",
        ] {
            assert!(is_http_url(good), "{good}");
        }
        for bad in [
            "",
            "https://",
            "https:///path",
            "ftp://h",
            "HTTPS://h",
            "mail.example.com",
            "https://h/a b",
            " https://h",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        for good in [
            "mail.example.com",
            "10.0.0.1",
            "exch-01",
            "[::1]",
            "[fe80::1]",
        ] {
            assert!(is_host(good), "{good}");
        }
        for bad in [
            "",
            "http://mail",
            "mail:443",
            "mail/ews",
            "::1",
            "[]",
            "a b",
        ] {
            assert!(!is_host(bad), "{bad}");
        }
    }

    #[test]
    fn ntlm_users() {
        for good in ["CORP\\alice", "alice@corp.example.com", "alice"] {
            assert!(is_ntlm_user(good), "{good}");
        }
        for bad in [
            "",
            "\\alice",
            "CORP\\",
            "@corp",
            "a@b@c",
            "A\\B\\c",
            "CORP\\a@b",
            "al ice",
        ] {
            assert!(!is_ntlm_user(bad), "{bad}");
        }
    }

    #[test]
    fn thumbprints() {
        let hex = "0123456789abcdef0123456789ABCDEF01234567";
        assert_eq!(
            normalise_thumbprint(hex).as_deref(),
            Some("0123456789ABCDEF0123456789ABCDEF01234567")
        );
        let grouped = "01:23:45:67:89:ab:cd:ef:01:23:45:67:89:AB:CD:EF:01:23:45:67";
        assert_eq!(normalise_thumbprint(grouped), normalise_thumbprint(hex));
        assert_eq!(
            normalise_thumbprint("01 23 45 67 89 ab cd ef 01 23 45 67 89 AB CD EF 01 23 45 67"),
            normalise_thumbprint(hex)
        );
        assert_eq!(normalise_thumbprint(&hex[..39]), None);
        assert_eq!(normalise_thumbprint(&format!("{hex}0")), None);
        assert_eq!(normalise_thumbprint(&format!("{}g", &hex[..39])), None);
        assert_eq!(normalise_thumbprint(""), None);
    }

    #[test]
    fn words_lists_choices() {
        assert_eq!(words(["a"].into_iter()), "\"a\"");
        assert_eq!(words(["a", "b"].into_iter()), "\"a\" or \"b\"");
        assert_eq!(words(["a", "b", "c"].into_iter()), "\"a\", \"b\" or \"c\"");
    }
}
