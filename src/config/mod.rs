//! Configuration: turns the JSON config file, plus environment overrides, into a validated
//! [`Config`], reporting every problem at once. The operator's reference is
//! `docs/configuration.md`.
//!
//! Stages: bytes → JSON object (`json`) → environment overrides (`env`) → typed raw values and
//! unknown-key warnings (`raw`) → checked values and defaults (`validate`, `mailbox`).

mod env;
mod error;
mod json;
mod mailbox;
mod raw;
mod redacted;
mod types;
mod validate;

#[cfg(test)]
mod tests;

pub use env::{ENV_OVERRIDES, EnvOverride};
pub use error::{ConfigError, ConfigErrors};
pub use types::{
    AccessType, Auth, Bucket, Config, MailboxConfig, MicrosoftApi, OAuthCredential, StartFrom,
};

use error::{format_path, mailbox_path, shown_str};
use json::PathSegment;
use raw::RawConfig;

/// A valid config, and what was odd but harmless about it (unknown keys, ignored keys).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Reads a config file's bytes. `origin` names the file in syntax errors; `env` looks up the
/// override variables (pass `&|name| std::env::var(name).ok()` in production).
///
/// On failure every problem is returned. Warnings found along the way are logged then, since a
/// warning such as an unknown key `mailboxs` is often the explanation of an error.
pub fn parse(
    json: &[u8],
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    let checked = check(json, origin, env);
    match checked.config {
        Some(config) if checked.errors.is_empty() => Ok(Loaded {
            config,
            warnings: checked.warnings,
        }),
        _ => {
            for warning in &checked.warnings {
                log::warn!("{origin}: {warning}");
            }
            Err(ConfigErrors(checked.errors))
        }
    }
}

/// Everything one pass over a config finds.
struct Checked {
    /// `None` only when `errors` says why.
    config: Option<Config>,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

fn check(json: &[u8], origin: &str, env: &dyn Fn(&str) -> Option<String>) -> Checked {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut map = match json::parse_object(json, origin) {
        Ok(map) => map,
        Err(syntax) => {
            return Checked {
                config: None,
                errors: vec![syntax],
                warnings,
            };
        }
    };
    for duplicate in json::duplicate_keys(json) {
        match duplicate.path.as_slice() {
            [PathSegment::Key(top), PathSegment::Key(address)] if top == "mailboxes" => {
                // Two entries for one mailbox would each claim it; which one is meant is a guess.
                errors.push(ConfigError::Invalid {
                    key: mailbox_path(address),
                    value: shown_str(address),
                    allowed: format!(
                        "each address once (this one is listed {} times)",
                        duplicate.count
                    ),
                });
            }
            // The original product read the file with a parser where the last one wins, as
            // serde_json does: keep loading such files, but say so.
            path => warnings.push(format!(
                "config key `{}` is given {} times; only the last one is used",
                format_path(path),
                duplicate.count
            )),
        }
    }
    let sources = env::apply(&mut map, env, &mut errors);
    let raw = RawConfig::read(map, &sources, &mut errors, &mut warnings);
    let config = validate::validate(raw, &mut errors, &mut warnings);
    Checked {
        config,
        errors,
        warnings,
    }
}
