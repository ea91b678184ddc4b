//! The effective config as JSON for `--print-config`: the file's key names, every default filled
//! in, secrets shown as [`REDACTED`]. Feeding the output back to `parse` gives the same config,
//! apart from the secrets.

use std::time::Duration;

use serde_json::{Map, Number, Value};
use time::UtcOffset;
use time::format_description::well_known::Rfc3339;

use super::types::{Auth, Config, MailboxConfig, OAuthCredential};
use crate::secret::{REDACTED, Secret};

impl Config {
    /// The effective config, safe to print: no secret value is in it.
    pub fn to_redacted_json(&self) -> Value {
        let mut out = Map::new();
        let mut put = |key: &str, value: Value| {
            out.insert(key.to_owned(), value);
        };
        put("microsoft_api", self.microsoft_api.as_str().into());
        if let Some(url) = &self.ews_url {
            put("ews_endpoint", url.as_str().into());
        }
        put("graph_endpoint", self.graph_url.as_str().into());
        put("auth_type", self.auth.type_str().into());
        match &self.auth {
            Auth::Ntlm { user, password } => {
                put("auth_user", user.as_str().into());
                put("auth_password", redacted(password));
            }
            Auth::OAuth2 {
                authority,
                client_id,
                credential,
            } => {
                put("auth_oauth_authority", authority.as_str().into());
                put("auth_oauth_client_id", client_id.as_str().into());
                match credential {
                    OAuthCredential::Secret(secret) => {
                        put("auth_oauth_client_secret", redacted(secret));
                    }
                    OAuthCredential::Certificate {
                        private_key_pem,
                        thumbprint,
                    } => {
                        put(
                            "auth_oauth_client_credential_private_key",
                            redacted(private_key_pem),
                        );
                        if let Some(thumbprint) = thumbprint {
                            put(
                                "auth_oauth_client_credential_thumbprint",
                                thumbprint.as_str().into(),
                            );
                        }
                    }
                }
            }
        }
        put("access_type", self.access_type.as_str().into());
        put("ews_ssl_verify", self.ews_ssl_verify.into());
        if let Some(ciphers) = &self.ews_ssl_ciphers {
            put("ews_ssl_ciphers", ciphers.as_str().into());
        }
        put("poll_frequency", seconds(self.poll_frequency));
        put("poll_message_sleep", seconds(self.poll_message_sleep));
        put("max_concurrent_uploads", self.max_concurrent_uploads.into());
        put("max_concurrent_fetches", self.max_concurrent_fetches.into());
        put("emails_per_folder", self.emails_per_folder.into());
        put("reinfer_batch_size", self.reinfer_batch_size.into());
        if let Some(address) = &self.audit_email {
            put("audit_email", address.as_str().into());
        }
        let mailboxes: Map<String, Value> = self
            .mailboxes
            .iter()
            .map(|mailbox| (mailbox.address.clone(), mailbox_json(mailbox)))
            .collect();
        put("mailboxes", Value::Object(mailboxes));
        Value::Object(out)
    }
}

/// Takes the secret only to make each call site say which secret it stands for.
fn redacted(_: &Secret) -> Value {
    Value::String(REDACTED.to_owned())
}

/// Whole seconds as an integer, so the defaults print as the docs write them.
fn seconds(duration: Duration) -> Value {
    if duration.subsec_nanos() == 0 {
        duration.as_secs().into()
    } else {
        Number::from_f64(duration.as_secs_f64()).map_or(Value::Null, Value::Number)
    }
}

fn mailbox_json(mailbox: &MailboxConfig) -> Value {
    let mut entry = Map::new();
    let mut bucket = Map::new();
    bucket.insert("owner".to_owned(), mailbox.bucket.owner.as_str().into());
    bucket.insert("name".to_owned(), mailbox.bucket.name.as_str().into());
    entry.insert("bucket".to_owned(), Value::Object(bucket));
    entry.insert("start_from".to_owned(), mailbox.start_from.as_str().into());
    if let Some(timestamp) = mailbox.start_timestamp {
        let utc = timestamp
            .checked_to_offset(UtcOffset::UTC)
            .unwrap_or(timestamp);
        let text = utc.format(&Rfc3339);
        entry.insert(
            "start_timestamp".to_owned(),
            text.map_or(Value::Null, Value::String),
        );
    }
    Value::Object(entry)
}
