//! An instance's configuration on Spin, read from the component's variables.
//!
//! Variables whose names start with `simrelay_` configure the bridge; every other variable
//! of the component is a setting of the plugin, passed on under its own name. Spin variable
//! names are lower case, so plugin settings must be too (all of this repository's are).
//!
//! | variable | meaning |
//! |---|---|
//! | `simrelay_instance` | the instance's name, for logs and the plugin's call context (required) |
//! | `simrelay_store` | the key-value label the instance owns (default: the instance's name) |
//! | `simrelay_forward_to` | components that receive the instance's events, separated by spaces or commas |
//! | `simrelay_stores` | shared stores granted besides its own: `inventory=farm, other=label` |
//! | `simrelay_retry` | the retry policy as JSON, e.g. `{"schedule":"fixed","interval_secs":10}` |
//! | `simrelay_tick_token` | when not empty, the tick route wants `Authorization: Bearer <token>` |
//! | `simrelay_tick_interval_secs` | least seconds between the plugin's `on-tick` calls (default 60); retries run on every tick |

use simrelay_core::model::{CallContext, Descriptor, Pairs};
use simrelay_core::redact::{Redactor, looks_secret};
use simrelay_core::retry::RetryPolicy;

/// Variables with this prefix are the bridge's own, never plugin settings.
pub const RESERVED_PREFIX: &str = "simrelay_";
const INSTANCE: &str = "simrelay_instance";
const STORE: &str = "simrelay_store";
const FORWARD_TO: &str = "simrelay_forward_to";
const STORES: &str = "simrelay_stores";
const RETRY: &str = "simrelay_retry";
const TICK_TOKEN: &str = "simrelay_tick_token";
const TICK_INTERVAL: &str = "simrelay_tick_interval_secs";
/// As the host's default `tick_interval_secs`.
const DEFAULT_TICK_INTERVAL_SECS: u64 = 60;

/// One plugin instance, as its Spin component's variables describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceConfig {
    pub instance: String,
    /// The key-value label the instance owns; it must be in the component's
    /// `key_value_stores`.
    pub store: String,
    /// The plugin's settings, secrets included, sorted by name.
    pub settings: Pairs,
    /// (name the plugin asks for, label), sorted by name.
    pub shared_stores: Pairs,
    /// Spin component ids that receive this instance's events.
    pub forward_to: Vec<String>,
    pub retry: RetryPolicy,
    pub tick_token: Option<String>,
    /// Least time between two `on-tick` calls of the plugin, however often ticks come.
    pub tick_interval_secs: u64,
}

impl InstanceConfig {
    /// The configuration the variables describe. Errors name the variable, never a value.
    pub fn from_variables(
        variables: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        let mut instance = None;
        let mut store = None;
        let mut forward_to = Vec::new();
        let mut shared_stores = Pairs::new();
        let mut retry = RetryPolicy::default();
        let mut tick_token = None;
        let mut tick_interval_secs = DEFAULT_TICK_INTERVAL_SECS;
        let mut settings = Pairs::new();
        for (name, value) in variables {
            let trimmed = value.trim();
            match name.as_str() {
                INSTANCE => instance = Some(component_id(INSTANCE, trimmed)?),
                STORE if !trimmed.is_empty() => store = Some(trimmed.to_string()),
                FORWARD_TO => {
                    forward_to = trimmed
                        .split([' ', ',', '\n', '\t'])
                        .filter(|target| !target.is_empty())
                        .map(|target| component_id(FORWARD_TO, target))
                        .collect::<Result<_, _>>()?;
                }
                STORES => shared_stores = grants(trimmed)?,
                RETRY if !trimmed.is_empty() => retry = retry_policy(trimmed)?,
                TICK_TOKEN if !trimmed.is_empty() => tick_token = Some(trimmed.to_string()),
                TICK_INTERVAL if !trimmed.is_empty() => {
                    tick_interval_secs = trimmed.parse().map_err(|_| {
                        format!("variable `{TICK_INTERVAL}` must be a whole number of seconds")
                    })?;
                }
                STORE | RETRY | TICK_TOKEN | TICK_INTERVAL => {}
                reserved if reserved.starts_with(RESERVED_PREFIX) => {
                    return Err(format!(
                        "unknown variable `{reserved}`: the bridge reads {INSTANCE}, {STORE}, \
                         {FORWARD_TO}, {STORES}, {RETRY}, {TICK_TOKEN} and {TICK_INTERVAL}"
                    ));
                }
                _ => settings.push((name, value)),
            }
        }
        let instance = instance.ok_or_else(|| {
            format!(
                "variable `{INSTANCE}` is missing: name the instance in the component's variables"
            )
        })?;
        settings.sort();
        shared_stores.sort();
        Ok(InstanceConfig {
            store: store.unwrap_or_else(|| instance.clone()),
            instance,
            settings,
            shared_stores,
            forward_to,
            retry,
            tick_token,
            tick_interval_secs,
        })
    }

    /// What the plugin needs that the configuration lacks, as the host checks at start-up.
    pub fn unmet_needs(&self, descriptor: &Descriptor) -> Option<String> {
        let missing_setting = descriptor.settings.iter().find(|spec| {
            spec.required
                && !self
                    .settings
                    .iter()
                    .any(|(name, value)| *name == spec.name && !value.trim().is_empty())
        });
        if let Some(spec) = missing_setting {
            return Some(format!(
                "instance `{}`: plugin {} needs setting `{}` ({}); give the component a \
                 non-empty variable `{}`",
                self.instance, descriptor.name, spec.name, spec.description, spec.name
            ));
        }
        let missing_store = descriptor.stores.iter().find(|spec| {
            spec.required
                && !self
                    .shared_stores
                    .iter()
                    .any(|(name, _)| *name == spec.name)
        });
        missing_store.map(|spec| {
            format!(
                "instance `{}`: plugin {} needs a shared store granted as `{}` ({}); set \
                 `{STORES} = \"{}=LABEL\"` and list LABEL in the component's key_value_stores",
                self.instance, descriptor.name, spec.name, spec.description, spec.name
            )
        })
    }

    /// Removes from text every setting the plugin declares secret, every setting whose name
    /// sounds secret, and the tick token.
    pub fn redactor(&self, descriptor: &Descriptor) -> Redactor {
        let declared_secret = |name: &str| {
            descriptor
                .settings
                .iter()
                .any(|spec| spec.secret && spec.name == name)
        };
        Redactor::new(
            self.settings
                .iter()
                .filter(|(name, _)| declared_secret(name) || looks_secret(name))
                .map(|(_, value)| value.clone())
                .chain(self.tick_token.clone()),
        )
    }

    /// The context of one plugin call.
    pub fn context(&self, message_id: &str, now_ms: u64) -> CallContext {
        CallContext {
            instance: self.instance.clone(),
            settings: self.settings.clone(),
            store: self.store.clone(),
            shared_stores: self.shared_stores.clone(),
            message_id: message_id.to_string(),
            now_ms,
        }
    }
}

/// A Spin component id: it becomes a host name in `http://<id>.spin.internal`.
fn component_id(variable: &str, id: &str) -> Result<String, String> {
    let valid = !id.is_empty()
        && !id.starts_with('-')
        && !id.ends_with('-')
        && id
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    if valid {
        Ok(id.to_string())
    } else {
        Err(format!(
            "variable `{variable}`: `{id}` is not a Spin component id (lower-case letters, \
             digits and inner hyphens)"
        ))
    }
}

/// `inventory=farm, other=label`.
fn grants(text: &str) -> Result<Pairs, String> {
    text.split([',', ' ', '\n', '\t'])
        .filter(|grant| !grant.is_empty())
        .map(|grant| match grant.split_once('=') {
            Some((name, label)) if !name.is_empty() && !label.is_empty() => {
                Ok((name.to_string(), label.to_string()))
            }
            _ => Err(format!(
                "variable `{STORES}`: `{grant}` is not NAME=LABEL, e.g. inventory=farm"
            )),
        })
        .collect()
}

fn retry_policy(json: &str) -> Result<RetryPolicy, String> {
    let policy: RetryPolicy = serde_json::from_str(json)
        .map_err(|error| format!("variable `{RETRY}` is not a retry policy: {error}"))?;
    match policy.problem() {
        Some(problem) => Err(format!("variable `{RETRY}`: {problem}")),
        None => Ok(policy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simrelay_core::model::{SettingSpec, StoreSpec};
    use simrelay_core::retry::Schedule;

    fn variables(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn marketplace() -> Descriptor {
        Descriptor {
            name: "smsbower".into(),
            version: "1".into(),
            api_version: "0.2.0".into(),
            capabilities: Vec::new(),
            settings: vec![
                SettingSpec {
                    name: "base_url".into(),
                    description: "server".into(),
                    required: true,
                    secret: false,
                },
                SettingSpec {
                    name: "partner".into(),
                    description: "who we are".into(),
                    required: false,
                    secret: true,
                },
            ],
            stores: vec![StoreSpec {
                name: "inventory".into(),
                description: "the farm".into(),
                required: true,
            }],
            webhook_key: None,
        }
    }

    #[test]
    fn reserved_variables_configure_the_bridge_and_the_rest_are_settings() {
        let config = InstanceConfig::from_variables(variables(&[
            ("simrelay_instance", "smsbower"),
            ("simrelay_forward_to", "alerts, audit-log"),
            ("simrelay_stores", "inventory=farm"),
            (
                "simrelay_retry",
                r#"{"schedule":"fixed","interval_secs":2,"jitter":0}"#,
            ),
            ("simrelay_tick_token", ""),
            ("simrelay_tick_interval_secs", "5"),
            ("simrelay_store", ""),
            ("services", r#"["tg","wa"]"#),
            ("base_url", "http://127.0.0.1:9000"),
        ]))
        .unwrap();
        assert_eq!(config.instance, "smsbower");
        assert_eq!(
            config.store, "smsbower",
            "the own label defaults to the name"
        );
        assert_eq!(config.forward_to, ["alerts", "audit-log"]);
        assert_eq!(
            config.shared_stores,
            [("inventory".to_string(), "farm".to_string())]
        );
        assert_eq!(config.retry.schedule, Schedule::Fixed);
        assert_eq!(config.retry.interval_secs, 2.0);
        assert_eq!(config.tick_token, None, "an empty token asks for none");
        assert_eq!(config.tick_interval_secs, 5);
        assert_eq!(
            config.settings,
            variables(&[
                ("base_url", "http://127.0.0.1:9000"),
                ("services", r#"["tg","wa"]"#)
            ])
        );
        let ctx = config.context("m1", 42);
        assert_eq!(
            (ctx.instance.as_str(), ctx.store.as_str(), ctx.now_ms),
            ("smsbower", "smsbower", 42)
        );
        assert_eq!(ctx.shared_stores, config.shared_stores);
    }

    #[test]
    fn mistakes_are_named_without_values() {
        let error =
            |pairs: &[(&str, &str)]| InstanceConfig::from_variables(variables(pairs)).unwrap_err();
        assert!(error(&[("api_key", "s3cret")]).contains("simrelay_instance"));
        assert!(error(&[("simrelay_instance", "Bad_Name")]).contains("not a Spin component id"));
        assert!(
            error(&[("simrelay_instance", "a"), ("simrelay_forward_to", "b c_d")])
                .contains("`c_d`")
        );
        assert!(
            error(&[("simrelay_instance", "a"), ("simrelay_stores", "inventory")])
                .contains("NAME=LABEL")
        );
        assert!(
            error(&[
                ("simrelay_instance", "a"),
                ("simrelay_retry", r#"{"interval_secs":0}"#)
            ])
            .contains("interval_secs")
        );
        assert!(
            error(&[("simrelay_instance", "a"), ("simrelay_retyr", "{}")])
                .contains("simrelay_retyr")
        );
    }

    #[test]
    fn required_settings_and_stores_are_checked() {
        let config =
            |pairs: &[(&str, &str)]| InstanceConfig::from_variables(variables(pairs)).unwrap();
        let complete = config(&[
            ("simrelay_instance", "bower"),
            ("simrelay_stores", "inventory=farm"),
            ("base_url", "http://x"),
        ]);
        assert_eq!(complete.unmet_needs(&marketplace()), None);
        let no_url = config(&[
            ("simrelay_instance", "bower"),
            ("simrelay_stores", "inventory=farm"),
            ("base_url", " "),
        ]);
        assert!(
            no_url
                .unmet_needs(&marketplace())
                .unwrap()
                .contains("`base_url`")
        );
        let no_store = config(&[("simrelay_instance", "bower"), ("base_url", "http://x")]);
        assert!(
            no_store
                .unmet_needs(&marketplace())
                .unwrap()
                .contains("simrelay_stores = \"inventory=LABEL\"")
        );
    }

    #[test]
    fn secrets_are_the_declared_ones_the_secret_sounding_ones_and_the_tick_token() {
        let config = InstanceConfig::from_variables(variables(&[
            ("simrelay_instance", "bower"),
            ("simrelay_tick_token", "tick-t0ken"),
            ("partner", "declared-secret"),
            ("api_key", "named-secret"),
            ("base_url", "http://public.example"),
        ]))
        .unwrap();
        let redactor = config.redactor(&marketplace());
        assert_eq!(
            redactor.redact("declared-secret named-secret tick-t0ken http://public.example"),
            "[redacted] [redacted] [redacted] http://public.example"
        );
    }
}
