//! The operator commands of `simrelay`: a client of the running host's operator API.
//! Output is for people by default; `--json` prints the API's answer for scripts.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::Config;

/// Where the operator API is and how to get in.
#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// The operator API [default: from --config, else http://127.0.0.1:8081].
    #[arg(long, env = "SIMRELAY_ADMIN_URL", global = true)]
    pub admin: Option<String>,
    /// The operator token [default: host.admin.token from --config, else DATA_DIR/admin-token].
    #[arg(
        long,
        env = "SIMRELAY_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// The host's configuration file, to find the API and its token.
    #[arg(long, env = "SIMRELAY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// The host's data directory, where a generated token is kept.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print the API's JSON answer.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum InstanceCommand {
    /// List instances with their plugin, version, health and queues.
    List,
    /// Add an instance, or replace an existing one's configuration.
    Set {
        name: String,
        /// The plugin component to upload for it [default: keep the current one].
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// The instance's configuration as JSON (settings, forward_to, allow_hosts, ...),
        /// or @FILE to read it from a file.
        #[arg(long, default_value = "{}")]
        instance_config: String,
    },
    /// Remove an instance; its state and queues are kept.
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum DeliveryCommand {
    /// List deliveries, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        instance: Option<String>,
        #[arg(long)]
        message_id: Option<String>,
        /// Asked for within this long ago (e.g. 30m, 2h, 1d) or since ms since the epoch.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one delivery and every attempt.
    Show { id: u64 },
    /// Retry a dead (or delivered) delivery now.
    Retry { id: u64 },
    /// Retry every finished delivery of an instance asked for within a time window.
    Replay {
        #[arg(long)]
        instance: String,
        /// Start of the window: e.g. 2h (ago) or ms since the epoch.
        #[arg(long)]
        since: String,
        /// End of the window [default: now].
        #[arg(long)]
        until: Option<String>,
    },
}

/// Commands that need a running host.
#[derive(Subcommand, Debug)]
pub enum ControlCommand {
    /// The host's health: uptime, queues, messages per minute.
    Health,
    /// Instances.
    Instance {
        #[command(subcommand)]
        command: InstanceCommand,
    },
    /// Deliveries: list, inspect, retry, replay.
    Deliveries {
        #[command(subcommand)]
        command: DeliveryCommand,
    },
    /// Recent messages the plugins reported.
    Messages {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The last status of every SIM.
    Sims,
    /// Apply the configuration file as it is now (as SIGHUP does).
    Reload,
}

/// Plugin commands that need a running host.
#[derive(Subcommand, Debug)]
pub enum PluginControl {
    /// Upload a component; with --instance, make it serve that instance.
    Install {
        file: PathBuf,
        #[arg(long)]
        instance: Option<String>,
    },
    /// The instances' plugins, and every uploaded component.
    List,
    /// Put an instance back on its previous version.
    Rollback { instance: String },
    /// Delete an uploaded component no instance uses.
    Remove { hash: String },
}

struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Connection {
    fn client(&self) -> Result<Client> {
        let config = match &self.config {
            Some(path) => Some(Config::load(path)?),
            None => None,
        };
        let base = match &self.admin {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!(
                "http://{}",
                config
                    .as_ref()
                    .map_or_else(Default::default, |config| config.host.admin.clone())
                    .listen
            ),
        };
        let token = match &self.token {
            Some(token) => token.clone(),
            None => {
                let configured = config.as_ref().and_then(|c| c.host.admin.token.clone());
                let data_dir = self
                    .data_dir
                    .clone()
                    .or_else(|| config.as_ref().and_then(|c| c.host.data_dir.clone()))
                    .unwrap_or_else(|| PathBuf::from("data"));
                match configured {
                    Some(token) => token,
                    None => std::fs::read_to_string(data_dir.join(crate::admin::TOKEN_FILE))
                        .map(|token| token.trim().to_string())
                        .with_context(|| {
                            format!(
                                "no operator token: pass --token, set SIMRELAY_ADMIN_TOKEN, or \
                                 point --config/--data-dir at the host ({} not readable)",
                                data_dir.join(crate::admin::TOKEN_FILE).display()
                            )
                        })?,
                }
            }
        };
        Ok(Client {
            base,
            token,
            http: reqwest::Client::new(),
        })
    }
}

impl Client {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Body>) -> Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        request = match body {
            Some(Body::Json(json)) => request.json(&json),
            Some(Body::Wasm(bytes)) => request
                .header("content-type", "application/wasm")
                .body(bytes),
            None => request,
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the operator API at {}", self.base))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{}",
                answer["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("HTTP {status}"))
            );
        }
        Ok(answer)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }
}

enum Body {
    Json(Value),
    Wasm(Vec<u8>),
}

/// `30m`, `2h`, `1d` or `45s` ago, or milliseconds since the epoch.
fn moment(text: &str) -> Result<u64> {
    let (number, unit) = text.split_at(text.trim_end_matches(char::is_alphabetic).len());
    let number: u64 = number.parse().with_context(|| {
        format!("`{text}` is not a time: use 30m, 2h, 1d or ms since the epoch")
    })?;
    let seconds = match unit {
        "" => return Ok(number),
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "d" => number * 86_400,
        other => bail!("unknown unit `{other}` in `{text}`: use s, m, h or d"),
    };
    Ok(crate::now_ms().saturating_sub(seconds * 1000))
}

fn print(json: bool, answer: &Value, human: impl FnOnce(&Value)) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(answer).unwrap_or_default()
        );
    } else {
        human(answer);
    }
}

/// Prints rows with columns padded to their widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_instances(answer: &Value) {
    let rows = answer
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                text(&i["name"]),
                format!("{} {}", text(&i["plugin"]), text(&i["version"])),
                text(&i["interface_version"]),
                text(&i["hash"]).chars().take(12).collect(),
                text(&i["health"]),
                format!("{}/{}", text(&i["calls"]), text(&i["failures"])),
                text(&i["events_queued"]),
                text(&i["deliveries_pending"]),
            ]
        })
        .collect();
    table(
        &[
            "instance",
            "plugin",
            "api",
            "hash",
            "health",
            "calls/failed",
            "events",
            "pending",
        ],
        rows,
    );
}

pub async fn run(connection: &Connection, command: ControlCommand) -> Result<()> {
    let client = connection.client()?;
    let json = connection.json;
    match command {
        ControlCommand::Health => {
            let answer = client.get("/v1/health").await?;
            print(json, &answer, |a| {
                for (key, value) in a.as_object().into_iter().flatten() {
                    println!("{key:<26}{}", text(value));
                }
            });
        }
        ControlCommand::Instance { command } => match command {
            InstanceCommand::List => {
                let answer = client.get("/v1/instances").await?;
                print(json, &answer, print_instances);
            }
            InstanceCommand::Set {
                name,
                plugin,
                instance_config,
            } => {
                let config = match instance_config.strip_prefix('@') {
                    Some(path) => std::fs::read_to_string(path)?,
                    None => instance_config,
                };
                let mut config: Value =
                    serde_json::from_str(&config).context("--instance-config is not JSON")?;
                match plugin {
                    Some(file) => {
                        let stored = client
                            .send(
                                reqwest::Method::POST,
                                "/v1/plugins",
                                Some(Body::Wasm(read(&file)?)),
                            )
                            .await?;
                        config["plugin"] = json!(format!("sha256:{}", text(&stored["hash"])));
                    }
                    None if config.get("plugin").is_none() => {
                        let current = client.get("/v1/instances").await?;
                        let hash = current
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|i| i["name"] == name.as_str())
                            .map(|i| text(&i["hash"]))
                            .with_context(|| {
                                format!("no instance `{name}`: give its component with --plugin")
                            })?;
                        config["plugin"] = json!(format!("sha256:{hash}"));
                    }
                    None => {}
                }
                let answer = client
                    .send(
                        reqwest::Method::PUT,
                        &format!("/v1/instances/{name}"),
                        Some(Body::Json(config)),
                    )
                    .await?;
                print(json, &answer, |a| print_instances(&json!([a])));
            }
            InstanceCommand::Remove { name } => {
                let answer = client
                    .send(
                        reqwest::Method::DELETE,
                        &format!("/v1/instances/{name}"),
                        None,
                    )
                    .await?;
                print(json, &answer, |_| println!("removed instance `{name}`"));
            }
        },
        ControlCommand::Deliveries { command } => deliveries(&client, json, command).await?,
        ControlCommand::Messages { limit } => {
            let answer = client.get(&format!("/v1/messages?limit={limit}")).await?;
            print(json, &answer, |a| {
                let rows = a
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        vec![
                            text(&m["at_ms"]),
                            text(&m["instance"]),
                            text(&m["sender"]),
                            text(&m["recipient"]),
                            text(&m["text"]).chars().take(60).collect(),
                        ]
                    })
                    .collect();
                table(&["at_ms", "instance", "from", "to", "text"], rows);
            });
        }
        ControlCommand::Sims => {
            let answer = client.get("/v1/sims").await?;
            print(json, &answer, |a| {
                let rows = a
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        vec![
                            text(&s["device"]),
                            text(&s["port"]),
                            text(&s["number"]),
                            text(&s["state"]),
                            text(&s["operator"]),
                            text(&s["at_ms"]),
                        ]
                    })
                    .collect();
                table(
                    &["gateway", "port", "number", "state", "operator", "seen_ms"],
                    rows,
                );
            });
        }
        ControlCommand::Reload => {
            let answer = client
                .send(reqwest::Method::POST, "/v1/reload", None)
                .await?;
            print(json, &answer, |a| {
                let changes = a["changes"].as_array().cloned().unwrap_or_default();
                if changes.is_empty() {
                    println!("nothing changed");
                }
                for change in changes {
                    println!("{}", text(&change));
                }
            });
        }
    }
    Ok(())
}

fn read(file: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

pub async fn plugin(connection: &Connection, command: PluginControl) -> Result<()> {
    let client = connection.client()?;
    let json = connection.json;
    match command {
        PluginControl::Install { file, instance } => {
            let bytes = read(&file)?;
            let (path, human): (String, bool) = match &instance {
                Some(name) => (format!("/v1/instances/{name}/plugin"), true),
                None => ("/v1/plugins".into(), false),
            };
            let answer = client
                .send(reqwest::Method::POST, &path, Some(Body::Wasm(bytes)))
                .await?;
            print(json, &answer, |a| {
                if human {
                    print_instances(&json!([a]));
                } else {
                    println!(
                        "stored {} {} (api {}) as {}",
                        text(&a["name"]),
                        text(&a["version"]),
                        text(&a["interface_version"]),
                        text(&a["hash"])
                    );
                }
            });
        }
        PluginControl::List => {
            let instances = client.get("/v1/instances").await?;
            let stored = client.get("/v1/plugins").await?;
            let answer = json!({ "instances": instances, "stored": stored });
            print(json, &answer, |a| {
                print_instances(&a["instances"]);
                println!();
                let rows = a["stored"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        vec![
                            text(&p["hash"]),
                            format!("{} {}", text(&p["name"]), text(&p["version"])),
                            text(&p["interface_version"]),
                            text(&p["size"]),
                        ]
                    })
                    .collect();
                table(&["stored component", "plugin", "api", "bytes"], rows);
            });
        }
        PluginControl::Rollback { instance } => {
            let answer = client
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/instances/{instance}/rollback"),
                    None,
                )
                .await?;
            print(json, &answer, |a| print_instances(&json!([a])));
        }
        PluginControl::Remove { hash } => {
            let answer = client
                .send(
                    reqwest::Method::DELETE,
                    &format!("/v1/plugins/{hash}"),
                    None,
                )
                .await?;
            print(json, &answer, |_| println!("removed {hash}"));
        }
    }
    Ok(())
}

async fn deliveries(client: &Client, json: bool, command: DeliveryCommand) -> Result<()> {
    match command {
        DeliveryCommand::List {
            state,
            instance,
            message_id,
            since,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            for (key, value) in [
                ("state", state),
                ("instance", instance),
                ("message_id", message_id),
            ] {
                if let Some(value) = value {
                    query.push(format!(
                        "{key}={}",
                        form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()
                    ));
                }
            }
            if let Some(since) = since {
                query.push(format!("since_ms={}", moment(&since)?));
            }
            let answer = client
                .get(&format!("/v1/deliveries?{}", query.join("&")))
                .await?;
            print(json, &answer, |a| {
                let rows = a
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        vec![
                            text(&d["id"]),
                            text(&d["instance"]),
                            text(&d["state"]["state"]),
                            text(&d["attempts"]),
                            text(&d["message_id"]),
                            text(&d["last_result"]).chars().take(60).collect(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "id",
                        "instance",
                        "state",
                        "attempts",
                        "message",
                        "last result",
                    ],
                    rows,
                );
            });
        }
        DeliveryCommand::Show { id } => {
            let answer = client.get(&format!("/v1/deliveries/{id}")).await?;
            print(json, &answer, |d| {
                println!(
                    "delivery {} of `{}` ({})",
                    text(&d["id"]),
                    text(&d["instance"]),
                    text(&d["idempotency_key"])
                );
                println!("message   {}", text(&d["message_id"]));
                println!(
                    "request   {} {}",
                    text(&d["request"]["method"]),
                    text(&d["request"]["url"])
                );
                println!("state     {}", text(&d["state"]));
                println!("attempts  {}", text(&d["attempts"]));
                let rows = d["history"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| {
                        vec![
                            text(&h["attempt"]),
                            text(&h["at_ms"]),
                            text(&h["result"]).chars().take(70).collect(),
                            text(&h["decision"]),
                        ]
                    })
                    .collect();
                table(&["attempt", "at_ms", "result", "decision"], rows);
            });
        }
        DeliveryCommand::Retry { id } => {
            let answer = client
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/deliveries/{id}/retry"),
                    None,
                )
                .await?;
            print(json, &answer, |_| println!("delivery {id} queued again"));
        }
        DeliveryCommand::Replay {
            instance,
            since,
            until,
        } => {
            let body = json!({
                "instance": instance,
                "since_ms": moment(&since)?,
                "until_ms": until.as_deref().map(moment).transpose()?,
            });
            let answer = client
                .send(
                    reqwest::Method::POST,
                    "/v1/deliveries/replay",
                    Some(Body::Json(body)),
                )
                .await?;
            print(json, &answer, |a| {
                let count = a["replayed"].as_array().map_or(0, Vec::len);
                println!("{count} deliveries queued again");
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_ago_or_absolute() {
        assert_eq!(moment("1700000000000").unwrap(), 1_700_000_000_000);
        let hour_ago = moment("1h").unwrap();
        let expected = crate::now_ms() - 3_600_000;
        assert!(hour_ago.abs_diff(expected) < 1_000);
        assert!(
            moment("2w")
                .unwrap_err()
                .to_string()
                .contains("unknown unit `w`")
        );
        assert!(moment("soon").is_err());
    }
}
