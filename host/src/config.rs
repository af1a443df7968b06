//! The configuration file: plugin instances, their settings, routes and event wiring.
//!
//! Values may name environment variables as `${NAME}` or `${NAME:-default}`, so one file
//! serves production and a local mock, and secrets stay out of the file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Deserializer, Serialize};
use simrelay_core::retry::RetryPolicy;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub host: HostConfig,
    pub instances: BTreeMap<String, InstanceConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// Limits on webhook clients: connections, timeouts, body sizes.
    pub http: crate::server::HttpLimits,
    /// Attempts in flight at once to one destination (host and port).
    pub deliveries_per_destination: usize,
    /// The operator API's listener and token.
    pub admin: AdminConfig,
    /// How long finished work is kept.
    pub retention: crate::db::Retention,
    /// Instances that get the host's `delivery-health` events.
    pub alerts_to: Vec<String>,
    /// The send API (`POST /v1/messages` on the webhook listener), when configured.
    pub send: Option<SendConfig>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            listen: None,
            data_dir: None,
            http: Default::default(),
            deliveries_per_destination: 8,
            admin: AdminConfig::default(),
            retention: Default::default(),
            alerts_to: Vec::new(),
            send: None,
        }
    }
}

/// `[host.admin]`: the operator API, on its own listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Loopback by default: the API can change what runs.
    pub listen: SocketAddr,
    /// The bearer token every request must carry. When unset, the host makes one at first
    /// start and keeps it in `DATA_DIR/admin-token`, readable by its owner only.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token: None,
        }
    }
}

/// `[host.send]`: who sends SMS asked for through `POST /v1/messages`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendConfig {
    /// The instance that sends, unless a request names another.
    pub instance: String,
    /// The bearer token senders must carry.
    pub token: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Path of the plugin component, relative to the configuration file.
    pub plugin: PathBuf,
    /// Strings as they are; tables and lists become JSON text, numbers and booleans their
    /// plain text, so plugins read every setting as a string.
    #[serde(default, deserialize_with = "settings_as_text")]
    pub settings: BTreeMap<String, String>,
    /// Shared stores granted to this instance besides its own, by the name the plugin asks
    /// for them: `{ inventory = "farm" }`. Every instance granted a label sees its keys.
    #[serde(default)]
    pub stores: BTreeMap<String, String>,
    /// Instances that receive this one's events.
    #[serde(default)]
    pub forward_to: Vec<String>,
    /// Hosts this instance's deliveries may reach: `host`, `host:port` or a URL.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Seconds between `on-tick` calls, for plugins that ask for ticks.
    pub tick_interval_secs: Option<u64>,
    /// When deliveries are retried and when they are given up.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// After this many failed calls in a row, a plugin version installed over a working
    /// one is rolled back to it. 0: keep failing closed (the default).
    #[serde(default)]
    pub rollback_after_failures: u32,
}

fn settings_as_text<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let values = BTreeMap::<String, toml::Value>::deserialize(deserializer)?;
    Ok(values
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Table(_) | toml::Value::Array(_) => {
                    serde_json::to_string(&value).unwrap_or_default()
                }
                other => other.to_string(),
            };
            (name, text)
        })
        .collect())
}

/// The sandbox of every call into an instance.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub timeout_ms: u64,
    pub memory_mb: usize,
    /// Calls one wasm instance serves (each under its own deadline and with the instance's
    /// memory under the cap) before a fresh one replaces it; 1 gives every call a fresh
    /// instance. An instance that fails a call is always replaced.
    pub calls_per_instance: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_ms: 1_000,
            memory_mb: 64,
            calls_per_instance: 1_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path pattern with captures, e.g. `/api/{key}/webhook`.
    pub path: String,
    /// HTTP method; any when absent.
    pub method: Option<String>,
    pub instance: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration {}", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("invalid configuration {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base, &|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    fn resolve(&mut self, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
        for (name, instance) in &mut self.instances {
            instance.plugin = base.join(&instance.plugin);
            for (key, value) in instance.settings.iter_mut() {
                *value = interpolate(value, env)
                    .with_context(|| format!("instances.{name}.settings.{key}"))?;
            }
            for (key, label) in instance.stores.iter_mut() {
                *label = interpolate(label, env)
                    .with_context(|| format!("instances.{name}.stores.{key}"))?;
            }
            for host in instance.allow_hosts.iter_mut() {
                *host = interpolate(host, env)
                    .with_context(|| format!("instances.{name}.allow_hosts"))?;
            }
        }
        if let Some(dir) = &mut self.host.data_dir {
            *dir = base.join(&dir);
        }
        if let Some(token) = &mut self.host.admin.token {
            *token = interpolate(token, env).context("host.admin.token")?;
        }
        if let Some(send) = &mut self.host.send {
            send.token = interpolate(&send.token, env).context("host.send.token")?;
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        if self
            .host
            .send
            .as_ref()
            .is_some_and(|send| send.token.trim().is_empty())
        {
            bail!("host.send.token is empty: senders could not authenticate");
        }
        for name in self
            .host
            .alerts_to
            .iter()
            .chain(self.host.send.as_ref().map(|send| &send.instance))
        {
            if !self.instances.contains_key(name) {
                bail!("host names unknown instance `{name}`");
            }
        }
        for route in &self.routes {
            if !self.instances.contains_key(&route.instance) {
                bail!(
                    "route {} names unknown instance `{}`",
                    route.path,
                    route.instance
                );
            }
            simrelay_core::routing::Pattern::parse(&route.path).map_err(anyhow::Error::msg)?;
        }
        for (name, instance) in &self.instances {
            for target in &instance.forward_to {
                if !self.instances.contains_key(target) {
                    bail!("instances.{name}.forward_to names unknown instance `{target}`");
                }
            }
            for (store, label) in &instance.stores {
                // An instance's own store is labelled with its name: granting that label
                // would hand one instance's private state to another.
                if self.instances.contains_key(label) {
                    bail!(
                        "instances.{name}.stores.{store}: `{label}` is an instance's own store; \
                         name shared stores apart from instances"
                    );
                }
                if label.is_empty() {
                    bail!("instances.{name}.stores.{store} is empty");
                }
            }
            if let Some(problem) = instance.retry.problem() {
                bail!("instances.{name}.retry: {problem}");
            }
        }
        self.reject_cycles()
    }

    /// Events flowing in a circle would never settle.
    fn reject_cycles(&self) -> Result<()> {
        fn visit<'a>(
            config: &'a Config,
            name: &'a str,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Result<()> {
            if let Some(start) = path.iter().position(|seen| *seen == name) {
                let mut cycle = path[start..].to_vec();
                cycle.push(name);
                bail!("forward_to forms a cycle: {}", cycle.join(" -> "));
            }
            if !done.insert(name) {
                return Ok(());
            }
            path.push(name);
            for target in &config.instances[name].forward_to {
                visit(config, target, path, done)?;
            }
            path.pop();
            Ok(())
        }
        let mut done = BTreeSet::new();
        for name in self.instances.keys() {
            visit(self, name, &mut Vec::new(), &mut done)?;
        }
        Ok(())
    }
}

/// Replaces `${NAME}` and `${NAME:-default}` with the environment's values.
fn interpolate(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            bail!("unclosed `${{` in `{value}`");
        };
        let expr = &rest[start + 2..start + end];
        let (name, default) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expr, None),
        };
        match (env(name).filter(|set| !set.is_empty()), default) {
            (Some(set), _) => out.push_str(&set),
            (None, Some(default)) => out.push_str(default),
            (None, None) => bail!("environment variable {name} is not set"),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SET").then(|| "value".to_string())
    }

    #[test]
    fn interpolates_variables_and_defaults() {
        assert_eq!(interpolate("a${SET}b", &env).unwrap(), "avalueb");
        assert_eq!(interpolate("${UNSET:-10}", &env).unwrap(), "10");
        assert_eq!(interpolate("${SET:-10}", &env).unwrap(), "value");
        assert_eq!(interpolate("plain", &env).unwrap(), "plain");
    }

    #[test]
    fn names_the_missing_variable() {
        let error = interpolate("${UNSET}", &env).unwrap_err().to_string();
        assert_eq!(error, "environment variable UNSET is not set");
    }

    fn parse(text: &str) -> Result<Config> {
        let mut config: Config = toml::from_str(text)?;
        config.resolve(Path::new("/etc"), &env)?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn resolves_plugin_paths_against_the_config_file() {
        let config = parse("[instances.a]\nplugin = \"a.wasm\"\n").unwrap();
        assert_eq!(config.instances["a"].plugin, Path::new("/etc/a.wasm"));
    }

    #[test]
    fn settings_tables_arrive_as_json_and_stores_are_granted_apart_from_instances() {
        let config = parse(
            "[instances.a]\nplugin = \"a.wasm\"\nstores = { inventory = \"farm\" }\n\
             [instances.a.settings]\nretry = 10\nservices = { tg = { price = 5 } }\n",
        )
        .unwrap();
        let settings = &config.instances["a"].settings;
        assert_eq!(settings["retry"], "10");
        assert_eq!(settings["services"], r#"{"tg":{"price":5}}"#);
        assert_eq!(config.instances["a"].stores["inventory"], "farm");
        let stealing = "[instances.a]\nplugin = \"a.wasm\"\n[instances.b]\nplugin = \"b.wasm\"\n\
                        stores = { inventory = \"a\" }\n";
        let error = parse(stealing).unwrap_err().to_string();
        assert!(error.contains("`a` is an instance's own store"), "{error}");
        let bad_retry = "[instances.a]\nplugin = \"a.wasm\"\nretry = { jitter = 3.0 }\n";
        assert!(parse(bad_retry).unwrap_err().to_string().contains("jitter"));
    }

    #[test]
    fn rejects_unknown_references_and_cycles() {
        let unknown_route =
            "[instances.a]\nplugin = \"a.wasm\"\n[[routes]]\npath = \"/x\"\ninstance = \"b\"\n";
        assert!(
            parse(unknown_route)
                .unwrap_err()
                .to_string()
                .contains("unknown instance `b`")
        );
        let cycle = "[instances.a]\nplugin = \"a.wasm\"\nforward_to = [\"b\"]\n[instances.b]\nplugin = \"b.wasm\"\nforward_to = [\"a\"]\n";
        assert!(
            parse(cycle)
                .unwrap_err()
                .to_string()
                .contains("cycle: a -> b -> a")
        );
        let no_token =
            "[host.send]\ninstance = \"a\"\ntoken = \"\"\n[instances.a]\nplugin = \"a.wasm\"\n";
        assert!(
            parse(no_token)
                .unwrap_err()
                .to_string()
                .contains("host.send.token is empty")
        );
        let typo = "[instances.a]\nplugin = \"a.wasm\"\nforward = [\"b\"]\n";
        assert!(format!("{:#}", parse(typo).unwrap_err()).contains("unknown field `forward`"));
    }
}
