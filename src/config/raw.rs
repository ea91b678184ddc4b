//! The config as written: each known key taken out of the JSON with its type checked, `null`
//! read as absent and unknown keys turned into warnings. Values are judged later, in `validate`.

use serde_json::{Map, Number, Value};

use super::env::EnvSources;
use super::error::{ConfigError, child_path, mailbox_path, shown, shown_str};
use super::json::kind_name;
use crate::secret::{REDACTED, Secret};

/// A value together with how to name it in messages.
#[derive(Debug, Clone)]
pub(super) struct Field<T> {
    pub value: T,
    /// The key path, or the environment variable that supplied the value.
    pub key: String,
    /// The value as JSON text; [`REDACTED`] for secrets.
    pub shown: String,
}

impl<T> Field<T> {
    pub fn invalid(&self, allowed: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: self.key.clone(),
            value: self.shown.clone(),
            allowed: allowed.into(),
        }
    }
}

/// What the file (or the environment) says about one key.
#[derive(Debug, Clone, Default)]
pub(super) enum Slot<T> {
    /// Not given, or `null`.
    #[default]
    Absent,
    /// Given with the wrong JSON type: already reported, and not to be reported again as
    /// missing.
    Mistyped,
    Given(Field<T>),
}

impl<T> Slot<T> {
    /// The value if there is a usable one.
    pub fn given(self) -> Option<Field<T>> {
        match self {
            Slot::Given(field) => Some(field),
            Slot::Absent | Slot::Mistyped => None,
        }
    }

    /// For a required key: the value, or `None` once its absence is reported.
    pub fn required(
        self,
        errors: &mut Vec<ConfigError>,
        missing: impl FnOnce() -> ConfigError,
    ) -> Option<Field<T>> {
        match self {
            Slot::Given(field) => Some(field),
            Slot::Mistyped => None,
            Slot::Absent => {
                errors.push(missing());
                None
            }
        }
    }

    fn map<U>(self, f: impl FnOnce(Field<T>) -> Field<U>) -> Slot<U> {
        match self {
            Slot::Given(field) => Slot::Given(f(field)),
            Slot::Absent => Slot::Absent,
            Slot::Mistyped => Slot::Mistyped,
        }
    }
}

/// Mirror of the top-level JSON object.
#[derive(Debug, Default)]
pub(super) struct RawConfig {
    pub microsoft_api: Slot<String>,
    pub ews_endpoint: Slot<String>,
    pub host: Slot<String>,
    pub port: Slot<Number>,
    pub graph_endpoint: Slot<String>,
    pub auth_type: Slot<String>,
    pub auth_user: Slot<String>,
    pub auth_password: Slot<Secret>,
    pub access_type: Slot<String>,
    pub ews_ssl_verify: Slot<bool>,
    pub ews_ssl_ciphers: Slot<String>,
    pub auth_oauth_authority: Slot<String>,
    pub auth_oauth_client_id: Slot<String>,
    pub auth_oauth_client_secret: Slot<Secret>,
    pub auth_oauth_client_credential_private_key: Slot<Secret>,
    pub auth_oauth_client_credential_thumbprint: Slot<String>,
    pub poll_frequency: Slot<Number>,
    pub poll_message_sleep: Slot<Number>,
    pub max_concurrent_uploads: Slot<Number>,
    pub max_concurrent_fetches: Slot<Number>,
    pub emails_per_folder: Slot<Number>,
    pub reinfer_batch_size: Slot<Number>,
    pub audit_email: Slot<String>,
    /// `shown` is the whole `mailboxes` value, for the "empty" error.
    pub mailboxes: Slot<Vec<RawMailbox>>,
}

/// One entry of `mailboxes`. An entry that is not an object has every key `Mistyped`.
#[derive(Debug)]
pub(super) struct RawMailbox {
    pub address: String,
    /// `mailboxes."ADDRESS"`, the prefix of every key path inside the entry.
    pub path: String,
    pub bucket: Slot<RawBucket>,
    pub start_from: Slot<String>,
    pub start_timestamp: Slot<String>,
}

/// The `bucket` object of a mailbox entry.
#[derive(Debug)]
pub(super) struct RawBucket {
    pub owner: Slot<String>,
    pub name: Slot<String>,
}

impl RawConfig {
    pub fn read(
        map: Map<String, Value>,
        sources: &EnvSources,
        errors: &mut Vec<ConfigError>,
        warnings: &mut Vec<String>,
    ) -> RawConfig {
        let mut reader = ObjectReader {
            map,
            prefix: String::new(),
            sources: Some(sources),
            errors,
        };
        let raw = RawConfig {
            microsoft_api: reader.string("microsoft_api"),
            ews_endpoint: reader.string("ews_endpoint"),
            host: reader.string("host"),
            port: reader.number("port"),
            graph_endpoint: reader.string("graph_endpoint"),
            auth_type: reader.string("auth_type"),
            auth_user: reader.string("auth_user"),
            auth_password: reader.secret("auth_password"),
            access_type: reader.string("access_type"),
            ews_ssl_verify: reader.boolean("ews_ssl_verify"),
            ews_ssl_ciphers: reader.string("ews_ssl_ciphers"),
            auth_oauth_authority: reader.string("auth_oauth_authority"),
            auth_oauth_client_id: reader.string("auth_oauth_client_id"),
            auth_oauth_client_secret: reader.secret("auth_oauth_client_secret"),
            auth_oauth_client_credential_private_key: reader
                .secret("auth_oauth_client_credential_private_key"),
            auth_oauth_client_credential_thumbprint: reader
                .string("auth_oauth_client_credential_thumbprint"),
            poll_frequency: reader.number("poll_frequency"),
            poll_message_sleep: reader.number("poll_message_sleep"),
            max_concurrent_uploads: reader.number("max_concurrent_uploads"),
            max_concurrent_fetches: reader.number("max_concurrent_fetches"),
            emails_per_folder: reader.number("emails_per_folder"),
            reinfer_batch_size: reader.number("reinfer_batch_size"),
            audit_email: reader.string("audit_email"),
            mailboxes: reader
                .object(
                    "mailboxes",
                    "an object mapping each address to its settings",
                )
                .map(|field| Field {
                    value: read_mailboxes(field.value, reader.errors, warnings),
                    key: field.key,
                    shown: field.shown,
                }),
        };
        reader.finish(warnings);
        raw
    }
}

fn read_mailboxes(
    map: Map<String, Value>,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Vec<RawMailbox> {
    let mut mailboxes = Vec::with_capacity(map.len());
    for (address, value) in map {
        let path = mailbox_path(&address);
        let Value::Object(entry) = value else {
            errors.push(ConfigError::Invalid {
                key: path.clone(),
                value: shown(&value),
                allowed: format!(
                    "an object such as {{\"bucket\": {{\"owner\": \"OWNER\", \"name\": \"NAME\"}}}}, not {}",
                    kind_name(&value)
                ),
            });
            mailboxes.push(RawMailbox {
                address,
                path,
                bucket: Slot::Mistyped,
                start_from: Slot::Mistyped,
                start_timestamp: Slot::Mistyped,
            });
            continue;
        };
        let mut reader = ObjectReader {
            map: entry,
            prefix: format!("{path}."),
            sources: None,
            errors: &mut *errors,
        };
        let bucket = reader
            .object("bucket", "an object with `owner` and `name`")
            .map(|field| {
                let mut bucket_reader = ObjectReader {
                    map: field.value,
                    prefix: format!("{}.", field.key),
                    sources: None,
                    errors: &mut *reader.errors,
                };
                let bucket = RawBucket {
                    owner: bucket_reader.string("owner"),
                    name: bucket_reader.string("name"),
                };
                bucket_reader.finish(warnings);
                Field {
                    value: bucket,
                    key: field.key,
                    shown: field.shown,
                }
            });
        let start_from = reader.string("start_from");
        let start_timestamp = reader.string("start_timestamp");
        reader.finish(warnings);
        mailboxes.push(RawMailbox {
            address,
            path,
            bucket,
            start_from,
            start_timestamp,
        });
    }
    mailboxes
}

/// Takes known keys out of one JSON object, checking their JSON type; what is left over at the
/// end is unknown.
struct ObjectReader<'a> {
    map: Map<String, Value>,
    /// Empty at the top level, else the object's path followed by `.`.
    prefix: String,
    /// Only the top level can be overridden from the environment.
    sources: Option<&'a EnvSources>,
    errors: &'a mut Vec<ConfigError>,
}

impl ObjectReader<'_> {
    /// The value of `key` with the name to show for it; `null` counts as absent.
    fn take(&mut self, key: &str) -> Option<(String, Value)> {
        let value = self.map.remove(key)?;
        if value.is_null() {
            return None;
        }
        let label = match self.sources.and_then(|sources| sources.var_for(key)) {
            Some(var) => var.to_owned(),
            None => child_path(&self.prefix, key),
        };
        Some((label, value))
    }

    /// `key`'s value if `convert` accepts its JSON type (giving the value and how to show it);
    /// otherwise reports what was `expected`.
    fn typed<T>(
        &mut self,
        key: &str,
        expected: &str,
        is_secret: bool,
        convert: impl FnOnce(Value) -> Result<(T, String), Value>,
    ) -> Slot<T> {
        let Some((label, value)) = self.take(key) else {
            return Slot::Absent;
        };
        // A mistyped secret may still hold the secret (e.g. inside an array): never show it.
        let hide = |text: String| if is_secret { REDACTED.to_owned() } else { text };
        match convert(value) {
            Ok((value, text)) => Slot::Given(Field {
                value,
                key: label,
                shown: hide(text),
            }),
            Err(other) => {
                self.errors.push(ConfigError::Invalid {
                    key: label,
                    value: hide(shown(&other)),
                    allowed: format!("{expected}, not {}", kind_name(&other)),
                });
                Slot::Mistyped
            }
        }
    }

    fn string(&mut self, key: &str) -> Slot<String> {
        self.typed(key, "a string", false, |value| match value {
            Value::String(text) => {
                let text_shown = shown_str(&text);
                Ok((text, text_shown))
            }
            other => Err(other),
        })
    }

    fn secret(&mut self, key: &str) -> Slot<Secret> {
        self.typed(key, "a string", true, |value| match value {
            Value::String(text) => Ok((Secret::new(text), REDACTED.to_owned())),
            other => Err(other),
        })
    }

    fn number(&mut self, key: &str) -> Slot<Number> {
        self.typed(key, "a number", false, |value| match value {
            Value::Number(number) => {
                let text = number.to_string();
                Ok((number, text))
            }
            other => Err(other),
        })
    }

    fn boolean(&mut self, key: &str) -> Slot<bool> {
        self.typed(key, "true or false", false, |value| match value {
            Value::Bool(flag) => Ok((flag, flag.to_string())),
            other => Err(other),
        })
    }

    /// Shown as `{}` or `{…}`: only emptiness matters in messages about a whole object.
    fn object(&mut self, key: &str, expected: &str) -> Slot<Map<String, Value>> {
        self.typed(key, expected, false, |value| match value {
            Value::Object(map) => {
                let text = if map.is_empty() { "{}" } else { "{…}" };
                Ok((map, text.to_owned()))
            }
            other => Err(other),
        })
    }

    /// Warns about every key that was not asked for.
    fn finish(self, warnings: &mut Vec<String>) {
        for key in self.map.keys() {
            warnings.push(format!(
                "unknown config key `{}` ignored",
                child_path(&self.prefix, key)
            ));
        }
    }
}
