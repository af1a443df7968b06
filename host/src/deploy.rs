//! Changing what runs while the host runs: plugins installed, upgraded, rolled back and
//! removed, and instances added, reconfigured and removed, from the operator API, the
//! command line or a reloaded configuration file.
//!
//! Uploaded plugins are kept by content hash in `DATA_DIR/plugins/`. What the operator
//! changed through the API is kept in `DATA_DIR/deployments.json`, so a restart does not
//! silently undo an upgrade; an instance whose entry in the configuration file changes
//! afterwards follows the file again. Every change is validated before it serves: the file
//! must be a component, speak an interface version this host supports, describe itself,
//! and get the settings and stores it asks for. A change that fails any check leaves the
//! working version serving, and the error says why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::config::{Config, InstanceConfig};
use crate::relay::{self, Active, Relay};

/// A plugin reference in an instance's configuration that names an uploaded component.
pub const STORED_PREFIX: &str = "sha256:";

/// The SHA-256 of a file, hex.
pub fn file_hash(path: &Path) -> Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))?;
    Ok(hash(&bytes))
}

pub fn hash(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// What the operator changed through the API, by instance.
#[derive(Default, Serialize, Deserialize)]
struct Deployments {
    instances: BTreeMap<String, Deployment>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Deployment {
    /// The configuration that serves, or `None` when the operator removed the instance.
    config: Option<InstanceConfig>,
    /// Earlier configurations, newest first, for rollback.
    #[serde(default)]
    history: Vec<InstanceConfig>,
    /// The configuration file's entry when the operator made the change: once the file
    /// says something else, the file wins.
    file_entry: Option<InstanceConfig>,
}

/// Summary of a plugin as stored, for `plugin list`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredPlugin {
    pub hash: String,
    pub name: String,
    pub version: String,
    pub interface_version: String,
    pub size: u64,
}

pub struct Deployer {
    relay: Arc<Relay>,
    data_dir: PathBuf,
    config_path: PathBuf,
    /// Serialises changes; holds what is persisted.
    state: Mutex<Deployments>,
    runtime: tokio::runtime::Handle,
}

impl Deployer {
    /// The configuration to start with: the file, with the operator's changes applied.
    pub fn effective_config(config: &mut Config, data_dir: &Path) -> Result<()> {
        let deployments = read_deployments(data_dir)?;
        for (name, deployment) in deployments.instances {
            let file_entry = config.instances.get(&name);
            if file_entry != deployment.file_entry.as_ref() {
                info!(instance = %name, "the configuration file changed this instance: it wins over the operator's earlier change");
                continue;
            }
            match deployment.config {
                Some(mut instance) => {
                    resolve_plugin(&mut instance, data_dir);
                    config.instances.insert(name, instance);
                }
                None => {
                    config.instances.remove(&name);
                }
            }
        }
        Ok(())
    }

    pub fn new(relay: Arc<Relay>, data_dir: &Path, config_path: &Path) -> Result<Arc<Self>> {
        std::fs::create_dir_all(data_dir.join("plugins"))?;
        let deployer = Arc::new(Deployer {
            relay: relay.clone(),
            data_dir: data_dir.to_path_buf(),
            config_path: config_path.to_path_buf(),
            state: Mutex::new(read_deployments(data_dir)?),
            runtime: tokio::runtime::Handle::current(),
        });
        let weak = Arc::downgrade(&deployer);
        relay.on_rollback(move |name, restored| {
            if let Some(deployer) = weak.upgrade()
                && let Err(error) = deployer.note_rollback(name, restored)
            {
                tracing::error!("cannot record the rollback of `{name}`: {error:#}");
            }
        });
        Ok(deployer)
    }

    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Deployments> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn plugin_path(&self, hash: &str) -> PathBuf {
        self.data_dir.join("plugins").join(format!("{hash}.wasm"))
    }

    /// Checks and keeps an uploaded component; returns it as stored.
    pub fn upload(&self, bytes: &[u8]) -> Result<StoredPlugin> {
        let hash = hash(bytes);
        let path = self.plugin_path(&hash);
        // Validated before it is kept: a broken upload leaves nothing behind.
        let plugin = self
            .relay
            .runtime()
            .load_bytes(bytes, &Default::default())
            .context("the plugin was refused")?;
        if !path.exists() {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, bytes)?;
            std::fs::File::open(&partial)?.sync_all()?;
            std::fs::rename(&partial, &path)?;
        }
        let stored = StoredPlugin {
            hash,
            name: plugin.descriptor.name.clone(),
            version: plugin.descriptor.version.clone(),
            interface_version: plugin.interface_version().to_string(),
            size: bytes.len() as u64,
        };
        std::fs::write(path.with_extension("json"), serde_json::to_vec(&stored)?)?;
        info!(plugin = %stored.name, version = %stored.version, hash = %stored.hash, "plugin stored");
        Ok(stored)
    }

    /// The uploaded plugins.
    pub fn stored_plugins(&self) -> Result<Vec<StoredPlugin>> {
        let mut plugins = Vec::new();
        for entry in std::fs::read_dir(self.data_dir.join("plugins"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                plugins.push(serde_json::from_slice(&std::fs::read(&path)?)?);
            }
        }
        Ok(plugins)
    }

    /// Deletes an uploaded plugin that no instance uses or could roll back to.
    pub fn remove_plugin(&self, hash: &str) -> Result<()> {
        let state = self.state();
        let mut stored = format!("{hash}.wasm");
        let refers = |config: &InstanceConfig| {
            let plugin = config.plugin.to_string_lossy();
            plugin.strip_prefix(STORED_PREFIX) == Some(hash) || plugin.ends_with(&stored)
        };
        let in_use = self.relay.instances().into_iter().any(|instance| {
            let active = instance.active();
            active.hash == hash || active.previous.iter().any(|previous| previous.hash == hash)
        }) || state.instances.values().any(|deployment| {
            deployment
                .config
                .iter()
                .chain(&deployment.history)
                .any(refers)
        });
        stored.clear();
        if in_use {
            bail!(
                "plugin {hash} is in use or kept for rollback; upgrade or remove those instances first"
            );
        }
        let path = self.plugin_path(hash);
        if !path.exists() {
            bail!("no stored plugin {hash}");
        }
        std::fs::remove_file(&path)?;
        let _ = std::fs::remove_file(path.with_extension("json"));
        Ok(())
    }

    /// Upgrades (or downgrades) `instance` to the stored plugin `hash`.
    pub fn install(&self, instance: &str, hash: &str) -> Result<()> {
        let current = self
            .relay
            .instance(instance)
            .with_context(|| format!("no instance `{instance}`"))?
            .active();
        let mut config = current.config.clone();
        config.plugin = PathBuf::from(format!("{STORED_PREFIX}{hash}"));
        self.apply(instance, config)
    }

    /// Adds `name`, or reconfigures it when it exists, with `config`.
    pub fn apply(&self, name: &str, config: InstanceConfig) -> Result<()> {
        let mut state = self.state();
        let file_entry = self.file_entry(name)?;
        let existing = self.relay.instance(name);
        let active = self.load_active(name, &config, existing.as_ref().map(|i| i.active()))?;
        let deployment = state
            .instances
            .entry(name.to_string())
            .or_insert_with(|| Deployment {
                config: None,
                history: Vec::new(),
                file_entry: file_entry.clone(),
            });
        if let Some(old) = deployment
            .config
            .take()
            .or_else(|| existing.as_ref().map(|i| i.active().config.clone()))
        {
            deployment.history.insert(0, old);
            deployment.history.truncate(5);
        }
        deployment.config = Some(config);
        deployment.file_entry = file_entry;
        match existing {
            Some(instance) => self.relay.swap(&instance, active),
            None => {
                let instance = self.relay.insert_instance(name, active);
                let _runtime = self.runtime.enter();
                relay::spawn_instance_workers(&self.relay, &instance);
            }
        }
        write_deployments(&self.data_dir, &state)
    }

    /// Goes back to the instance's previous version.
    pub fn rollback(&self, name: &str) -> Result<()> {
        let instance = self
            .relay
            .instance(name)
            .with_context(|| format!("no instance `{name}`"))?;
        let mut state = self.state();
        let deployment = state.instances.get_mut(name);
        let previous = match deployment.as_ref().and_then(|d| d.history.first()) {
            Some(config) => config.clone(),
            None => bail!("instance `{name}` has no earlier version to roll back to"),
        };
        let active = self.load_active(name, &previous, Some(instance.active()))?;
        let deployment = deployment.expect("history came from it");
        deployment.history.remove(0);
        deployment.config = Some(previous);
        self.relay.swap(&instance, active);
        write_deployments(&self.data_dir, &state)
    }

    /// Removes an instance; its state and queues stay for an instance of the same name.
    pub fn remove_instance(&self, name: &str) -> Result<()> {
        let mut state = self.state();
        let instance = self
            .relay
            .remove_instance(name)
            .with_context(|| format!("no instance `{name}`"))?;
        let file_entry = self.file_entry(name)?;
        let deployment = state
            .instances
            .entry(name.to_string())
            .or_insert(Deployment {
                config: None,
                history: Vec::new(),
                file_entry: None,
            });
        deployment
            .history
            .insert(0, instance.active().config.clone());
        deployment.history.truncate(5);
        deployment.config = None;
        deployment.file_entry = file_entry;
        write_deployments(&self.data_dir, &state)
    }

    /// Records an automatic rollback, so a restart does not bring the failing version back.
    pub fn note_rollback(&self, name: &str, restored: &InstanceConfig) -> Result<()> {
        let mut state = self.state();
        if let Some(deployment) = state.instances.get_mut(name) {
            deployment.config = Some(restored.clone());
            if !deployment.history.is_empty() {
                deployment.history.remove(0);
            }
            write_deployments(&self.data_dir, &state)?;
        }
        Ok(())
    }

    /// Applies the configuration file as it is now: new instances are added, changed ones
    /// swapped, missing ones removed, and the routes replaced. Returns a line per change;
    /// an instance that fails to load keeps its working version and its error is returned.
    pub fn reload(&self) -> Result<Vec<String>> {
        let mut config = Config::load(&self.config_path)?;
        Deployer::effective_config(&mut config, &self.data_dir)?;
        let mut changes = Vec::new();
        let mut errors = Vec::new();
        for (name, wanted) in &config.instances {
            let current = self.relay.instance(name).map(|instance| instance.active());
            let plugin_changed = current.as_ref().is_none_or(|active| {
                file_hash(&wanted.plugin).ok().as_deref() != Some(active.hash.as_str())
            });
            if !plugin_changed
                && current
                    .as_ref()
                    .is_some_and(|active| &active.config == wanted)
            {
                continue;
            }
            let loaded = self.load_active(name, wanted, current.clone());
            match (loaded, self.relay.instance(name)) {
                (Ok(active), Some(instance)) => {
                    self.relay.swap(&instance, active);
                    changes.push(format!("instance `{name}` updated"));
                }
                (Ok(active), None) => {
                    let instance = self.relay.insert_instance(name, active);
                    let _runtime = self.runtime.enter();
                    relay::spawn_instance_workers(&self.relay, &instance);
                    changes.push(format!("instance `{name}` added"));
                }
                (Err(error), _) => errors.push(format!("instance `{name}`: {error:#}")),
            }
        }
        for instance in self.relay.instances() {
            if !config.instances.contains_key(&instance.name) {
                self.relay.remove_instance(&instance.name);
                changes.push(format!("instance `{}` removed", instance.name));
            }
        }
        self.relay.set_routes(&config.routes)?;
        self.relay.set_alerts_to(config.host.alerts_to.clone());
        self.relay.set_send(config.host.send.clone());
        if !errors.is_empty() {
            bail!(
                "{}{}",
                errors.join("; "),
                if changes.is_empty() {
                    String::new()
                } else {
                    format!(" (applied: {})", changes.join(", "))
                }
            );
        }
        Ok(changes)
    }

    /// Loads and checks what would serve `name` under `config`.
    fn load_active(
        &self,
        name: &str,
        config: &InstanceConfig,
        replacing: Option<Arc<Active>>,
    ) -> Result<Active> {
        let mut config = config.clone();
        resolve_plugin(&mut config, &self.data_dir);
        let bytes = std::fs::read(&config.plugin)
            .with_context(|| format!("cannot read plugin {}", config.plugin.display()))?;
        let plugin = self
            .relay
            .runtime()
            .load_bytes(&bytes, &config.limits)
            .context("the plugin was refused")?;
        let previous = replacing
            .map(|active| {
                let mut previous = vec![active.clone()];
                previous.extend(active.previous.iter().cloned());
                previous
            })
            .unwrap_or_default();
        self.relay
            .activate(name, config, Arc::new(plugin), hash(&bytes), previous)
    }

    /// The instance's entry in the configuration file as it is now.
    fn file_entry(&self, name: &str) -> Result<Option<InstanceConfig>> {
        Ok(Config::load(&self.config_path)
            .map(|config| config.instances.get(name).cloned())
            .unwrap_or(None))
    }
}

/// Turns a `sha256:…` plugin reference into the stored file's path.
fn resolve_plugin(config: &mut InstanceConfig, data_dir: &Path) {
    if let Some(hash) = config
        .plugin
        .to_str()
        .and_then(|p| p.strip_prefix(STORED_PREFIX))
    {
        config.plugin = data_dir.join("plugins").join(format!("{hash}.wasm"));
    }
}

fn deployments_path(data_dir: &Path) -> PathBuf {
    data_dir.join("deployments.json")
}

fn read_deployments(data_dir: &Path) -> Result<Deployments> {
    match std::fs::read(deployments_path(data_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes).context("corrupt deployments.json"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Deployments::default()),
        Err(error) => Err(error.into()),
    }
}

/// Written whole to a new file and renamed, so a crash leaves the old or the new one.
fn write_deployments(data_dir: &Path, deployments: &Deployments) -> Result<()> {
    let path = deployments_path(data_dir);
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(deployments)?)?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, &path)?;
    Ok(())
}
