//! Environment variables that override config keys, kept in one table so the docs and the code
//! agree.

use serde_json::{Map, Number, Value};

use super::error::{ConfigError, shown_str};

/// One environment variable that replaces a top-level config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvOverride {
    pub var: &'static str,
    pub key: &'static str,
    /// Whether the text is used as is or read as a TCP port.
    pub is_port: bool,
}

/// Every override, in the order the docs list them. A set variable wins over the config file,
/// even when empty (an empty value is then reported against the variable).
pub const ENV_OVERRIDES: &[EnvOverride] = &[
    EnvOverride {
        var: "REINFER_EWS_AUTH_USER",
        key: "auth_user",
        is_port: false,
    },
    EnvOverride {
        var: "REINFER_EWS_AUTH_PASS",
        key: "auth_password",
        is_port: false,
    },
    EnvOverride {
        var: "REINFER_EWS_ACCESS_TYPE",
        key: "access_type",
        is_port: false,
    },
    EnvOverride {
        var: "REINFER_EWS_HOST",
        key: "host",
        is_port: false,
    },
    EnvOverride {
        var: "REINFER_EWS_PORT",
        key: "port",
        is_port: true,
    },
];

/// Which config keys now hold a value from the environment, so that messages about them name
/// the variable the operator actually set.
#[derive(Debug, Clone, Default)]
pub(super) struct EnvSources(Vec<EnvOverride>);

impl EnvSources {
    /// The name to show for top-level `key`: the variable that supplied it, if any.
    pub fn var_for(&self, key: &str) -> Option<&'static str> {
        self.0
            .iter()
            .find(|entry| entry.key == key)
            .map(|entry| entry.var)
    }
}

/// Replaces the raw values of `map` with those of the set variables.
pub(super) fn apply(
    map: &mut Map<String, Value>,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> EnvSources {
    let mut applied = Vec::new();
    for entry in ENV_OVERRIDES {
        let Some(text) = env(entry.var) else {
            continue;
        };
        let value = if entry.is_port {
            match text.parse::<u16>() {
                Ok(port) if port > 0 => Value::Number(Number::from(port)),
                _ => {
                    errors.push(ConfigError::Invalid {
                        key: entry.var.to_owned(),
                        value: shown_str(&text),
                        allowed: "a TCP port number, 1 to 65535".to_owned(),
                    });
                    continue;
                }
            }
        } else {
            Value::String(text)
        };
        map.insert(entry.key.to_owned(), value);
        applied.push(*entry);
    }
    EnvSources(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_variables_replace_keys_and_are_remembered() {
        let mut map = Map::new();
        map.insert("host".into(), Value::String("file-host".into()));
        map.insert("port".into(), Value::from(80));
        let env = |var: &str| match var {
            "REINFER_EWS_HOST" => Some("env-host".to_owned()),
            "REINFER_EWS_PORT" => Some("8443".to_owned()),
            _ => None,
        };
        let mut errors = Vec::new();
        let sources = apply(&mut map, &env, &mut errors);
        assert!(errors.is_empty());
        assert_eq!(map["host"], "env-host");
        assert_eq!(map["port"], 8443);
        assert_eq!(sources.var_for("host"), Some("REINFER_EWS_HOST"));
        assert_eq!(sources.var_for("auth_user"), None);
    }

    #[test]
    fn bad_ports_are_reported_against_the_variable() {
        for bad in ["0", "65536", "-1", "http", "", " 80"] {
            let mut map = Map::new();
            let mut errors = Vec::new();
            let env = |var: &str| (var == "REINFER_EWS_PORT").then(|| bad.to_owned());
            let sources = apply(&mut map, &env, &mut errors);
            assert_eq!(
                errors,
                vec![ConfigError::Invalid {
                    key: "REINFER_EWS_PORT".into(),
                    value: format!("\"{bad}\""),
                    allowed: "a TCP port number, 1 to 65535".into(),
                }]
            );
            assert!(map.is_empty());
            assert_eq!(sources.var_for("port"), None);
        }
    }

    #[test]
    fn every_override_targets_a_distinct_key() {
        for (index, entry) in ENV_OVERRIDES.iter().enumerate() {
            assert!(
                ENV_OVERRIDES[index + 1..]
                    .iter()
                    .all(|other| other.key != entry.key)
            );
            assert!(entry.var.starts_with("REINFER_EWS_"));
        }
    }
}
