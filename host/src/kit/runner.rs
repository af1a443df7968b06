//! `simrelay plugin test`: runs a built plugin against fixtures, with no running host.
//!
//! Each fixture gets a fresh database in a temporary directory. Every step is one sandboxed
//! call through the same [`Runtime`] and `wasi:keyvalue` implementation the host uses; the
//! key-value writes of a call that succeeded are committed before the next step, so state
//! carries across steps exactly as it does in a host (and a failed call, as in a host,
//! commits nothing).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use super::compare::{Difference, differences};
use super::fixture::{Expect, Fixture, StepInput};
use crate::abi::{Input, Output};
use crate::db::{Commit, Db};
use crate::kv::{KvOverlay, StoreState};
use crate::model::{CallContext, Effects, Pairs};
use crate::redact::{Redactor, looks_secret};
use crate::runtime::{CallError, LoadedPlugin, Runtime};

/// Steps that matched and steps that did not, over one or more fixtures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// A plugin loaded once for any number of fixtures.
pub struct Runner {
    runtime: Arc<Runtime>,
    plugin: LoadedPlugin,
}

impl Runner {
    pub fn load(plugin: &Path) -> Result<Self> {
        let runtime = Runtime::new()?;
        let plugin = runtime.load(plugin, &Default::default())?;
        Ok(Runner { runtime, plugin })
    }

    /// What the runner says about the plugin before its fixtures.
    pub fn banner(&self) -> String {
        let descriptor = &self.plugin.descriptor;
        format!(
            "plugin {} {} (interface {})",
            descriptor.name,
            descriptor.version,
            self.plugin.interface_version()
        )
    }

    /// Runs every step of the fixture at `path`, printing each input, what the plugin did and
    /// how that compares with what the fixture expects.
    pub fn run_file(&self, path: &Path, out: &mut dyn Write) -> Result<Tally> {
        let fixture = Fixture::load(path)?;
        let name = path.file_stem().map_or_else(
            || "fixture".to_string(),
            |stem| stem.to_string_lossy().into_owned(),
        );
        writeln!(out, "\nfixture {}", path.display())?;
        self.run(&name, &fixture, out)
    }

    pub fn run(&self, name: &str, fixture: &Fixture, out: &mut dyn Write) -> Result<Tally> {
        if let Some(description) = &fixture.description {
            writeln!(out, "  {description}")?;
        }
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let db = Arc::new(Db::open(dir.path())?);
        let mut stores = vec![StoreState::new(&fixture.instance)];
        for label in fixture.shared_stores.values() {
            if stores.iter().all(|store| &store.label != label) {
                stores.push(StoreState::new(label));
            }
        }
        let settings = fixture.settings_as_text();
        let redactor = self.redactor(&settings);
        let mut ctx = CallContext {
            instance: fixture.instance.clone(),
            settings,
            store: fixture.instance.clone(),
            shared_stores: fixture
                .shared_stores
                .iter()
                .map(|(name, label)| (name.clone(), label.clone()))
                .collect(),
            message_id: String::new(),
            now_ms: fixture.now_ms,
        };
        let mut asked_for = HashSet::new();
        let mut tally = Tally::default();
        for (index, step) in fixture.steps.iter().enumerate() {
            let number = index + 1;
            let input = step.input().with_context(|| format!("step {number}"))?;
            ctx.now_ms = step.clock().unwrap_or(ctx.now_ms);
            ctx.message_id = format!("{name}-{number}");
            let mut report = format!("step {number}: {}", input.summary());
            if let Some(step_name) = &step.name {
                write!(report, " — {step_name}")?;
            }
            report.push('\n');

            let call = self.call(&db, &stores, fixture, &ctx, &input)?;
            for line in call.output.lines().filter(|line| !line.trim().is_empty()) {
                writeln!(report, "  | {line}")?;
            }
            describe(&call.view, &mut asked_for, &mut report);
            let found = judge(&call.view, step.expect.as_ref());
            let took = format!("{:.2} ms", call.took.as_secs_f64() * 1000.0);
            if found.is_empty() {
                tally.passed += 1;
                writeln!(report, "  ok in {took}")?;
            } else {
                tally.failed += 1;
                writeln!(report, "  FAILED in {took}")?;
                for difference in &found {
                    write!(report, "{difference}")?;
                }
            }
            out.write_all(redactor.redact(&report).as_bytes())?;
        }
        Ok(tally)
    }

    /// One sandboxed call; its writes are committed when it succeeded.
    fn call(
        &self,
        db: &Arc<Db>,
        stores: &[Arc<StoreState>],
        fixture: &Fixture,
        ctx: &CallContext,
        input: &StepInput,
    ) -> Result<Call> {
        let input = match input {
            StepInput::Webhook(request) => Input::Webhook(request),
            StepInput::Event(event) => Input::Event(event),
            StepInput::Response(delivery, outcome) => Input::Response(delivery, outcome),
            StepInput::Tick => Input::Tick,
        };
        let started = Instant::now();
        let record = {
            let _locks: Vec<_> = stores.iter().map(|store| store.lock()).collect();
            let overlay = KvOverlay::new(db.clone(), stores);
            self.runtime
                .call(&self.plugin, overlay, &fixture.limits, ctx, input)
        };
        let took = started.elapsed();
        let view = match record.result {
            Ok(output) => {
                let writes = record.kv.into_writes();
                let commit = Commit {
                    instance: ctx.instance.clone(),
                    message_id: ctx.message_id.clone(),
                    now_ms: ctx.now_ms,
                    kv: writes
                        .stores
                        .into_iter()
                        .map(|(label, writes)| (label, Arc::new(writes)))
                        .collect(),
                    ..Commit::default()
                };
                db.submit(commit)
                    .wait()
                    .context("cannot commit the step's key-value writes")?;
                output_view(output)
            }
            Err(error) => error_view(&error),
        };
        Ok(Call {
            view,
            output: record.output,
            took,
        })
    }

    /// Hides the values of settings the plugin declares secret, or whose names say they
    /// are, as the host's logs do.
    fn redactor(&self, settings: &Pairs) -> Redactor {
        let declared: Vec<&str> = self
            .plugin
            .descriptor
            .settings
            .iter()
            .filter(|spec| spec.secret)
            .map(|spec| spec.name.as_str())
            .collect();
        Redactor::new(
            settings
                .iter()
                .filter(|(name, _)| declared.contains(&name.as_str()) || looks_secret(name))
                .map(|(_, value)| value.clone()),
        )
    }
}

/// What one call did, as JSON in the fixture's terms.
struct Call {
    /// `reply`, `verdict`, `events`, `deliveries` or `error`, as the call produced them.
    view: Map<String, Value>,
    /// What the plugin printed.
    output: String,
    /// How long the sandboxed call took (a fresh instance, the call, its key-value reads),
    /// without the commit: the plugin's own cost.
    took: Duration,
}

fn output_view(output: Output) -> Map<String, Value> {
    let mut view = Map::new();
    let effects = match output {
        Output::Webhook(outcome) => {
            let reply = outcome.reply;
            view.insert(
                "reply".into(),
                json!({
                    "status": reply.status,
                    "headers": headers_view(&reply.headers),
                    "body": body_view(&reply.body),
                }),
            );
            outcome.effects
        }
        Output::Response(outcome) => {
            view.insert("verdict".into(), to_value(&outcome.verdict));
            outcome.effects
        }
        Output::Effects(effects) => effects,
    };
    let Effects { events, deliveries } = effects;
    view.insert(
        "events".into(),
        Value::Array(events.iter().map(to_value).collect()),
    );
    let deliveries = deliveries
        .into_iter()
        .map(|delivery| {
            let request = delivery.request;
            json!({
                "idempotency_key": delivery.idempotency_key,
                "request": {
                    "method": request.method,
                    "url": request.url,
                    "headers": headers_view(&request.headers),
                    "body": body_view(&request.body),
                    "timeout_ms": request.timeout_ms,
                },
            })
        })
        .collect();
    view.insert("deliveries".into(), Value::Array(deliveries));
    view
}

fn error_view(error: &CallError) -> Map<String, Value> {
    let mut view = Map::new();
    view.insert("error".into(), Value::String(error.to_string()));
    view
}

fn to_value(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("model types serialise to JSON")
}

/// Headers as an object, so fixtures can expect some of them by name.
fn headers_view(headers: &Pairs) -> Value {
    let mut map = Map::new();
    for (name, value) in headers {
        match map.get_mut(name) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(value);
            }
            _ => {
                map.insert(name.clone(), Value::String(value.clone()));
            }
        }
    }
    Value::Object(map)
}

/// JSON bodies as JSON, so fixtures can expect some of their fields; other text as text;
/// anything else as its bytes.
fn body_view(body: &[u8]) -> Value {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
        Err(_) => Value::Array(body.iter().map(|byte| Value::from(*byte)).collect()),
    }
}

/// Prints what the call did; notes deliveries whose key the instance already used, which a
/// host drops.
fn describe(view: &Map<String, Value>, asked_for: &mut HashSet<String>, report: &mut String) {
    if let Some(error) = view.get("error").and_then(Value::as_str) {
        let _ = writeln!(report, "  error: {error}");
        return;
    }
    if let Some(reply) = view.get("reply") {
        let _ = writeln!(report, "  reply: {} {}", reply["status"], reply["body"]);
    }
    if let Some(verdict) = view.get("verdict") {
        let _ = writeln!(report, "  verdict: {verdict}");
    }
    for event in view["events"].as_array().into_iter().flatten() {
        let _ = writeln!(report, "  event: {event}");
    }
    for delivery in view["deliveries"].as_array().into_iter().flatten() {
        let key = delivery["idempotency_key"].as_str().unwrap_or_default();
        let request = &delivery["request"];
        let repeat = if asked_for.insert(key.to_string()) {
            ""
        } else {
            " (a key asked for before: a host drops it)"
        };
        let _ = writeln!(
            report,
            "  delivery {key}{repeat}: {} {} {}",
            request["method"].as_str().unwrap_or_default(),
            request["url"].as_str().unwrap_or_default(),
            request["body"]
        );
    }
}

/// Where the call's output differs from what the step expects. A call that failed fails
/// its step unless the step expects that error.
fn judge(view: &Map<String, Value>, expect: Option<&Expect>) -> Vec<Difference> {
    let default = Expect::default();
    let expect = expect.unwrap_or(&default);
    let actual_error = view.get("error");
    let mut found = Vec::new();
    match (&expect.error, actual_error) {
        (Some(expected), Some(Value::String(actual))) if actual.contains(expected.as_str()) => {}
        (None, None) => {}
        (expected, actual) => found.push(Difference {
            path: "error".into(),
            expected: expected.clone().map_or(Value::Null, Value::String),
            actual: Some(actual.cloned().unwrap_or(Value::Null)),
        }),
    }
    if actual_error.is_some() {
        return found;
    }
    let expected = [
        ("reply", expect.reply.clone()),
        ("verdict", expect.verdict.clone()),
        ("events", expect.events.clone().map(Value::Array)),
        ("deliveries", expect.deliveries.clone().map(Value::Array)),
    ];
    for (field, expected) in expected {
        let Some(expected) = expected else { continue };
        match view.get(field) {
            Some(actual) => found.extend(differences(field, &expected, actual)),
            None => found.push(Difference {
                path: field.into(),
                expected,
                actual: None,
            }),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn an_unexpected_error_fails_the_step_and_an_expected_one_passes_it() {
        let failed = view(json!({ "error": "plugin error: setting `api_key` is not configured" }));
        let found = judge(&failed, None);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "error");
        let expect = Expect {
            error: Some("`api_key`".into()),
            ..Expect::default()
        };
        assert!(judge(&failed, Some(&expect)).is_empty());
        let fine = view(json!({ "events": [], "deliveries": [] }));
        assert_eq!(judge(&fine, Some(&expect))[0].actual, Some(Value::Null));
    }

    #[test]
    fn only_what_is_expected_is_compared() {
        let actual = view(json!({
            "reply": { "status": 200, "headers": {}, "body": { "message": "Ok" } },
            "events": [{ "SimStatusChanged": { "state": "Registered" } }],
            "deliveries": [],
        }));
        assert!(judge(&actual, None).is_empty());
        let expect = Expect {
            reply: Some(json!({ "body": { "message": "Ok" } })),
            deliveries: Some(Vec::new()),
            verdict: Some(json!("Delivered")),
            ..Expect::default()
        };
        let found = judge(&actual, Some(&expect));
        assert_eq!(
            found,
            [Difference {
                path: "verdict".into(),
                expected: json!("Delivered"),
                actual: None,
            }]
        );
    }

    #[test]
    fn bodies_and_headers_are_shown_as_fixtures_write_them() {
        assert_eq!(body_view(br#"{"a":1}"#), json!({ "a": 1 }));
        assert_eq!(body_view(b"Ok"), json!("Ok"));
        assert_eq!(body_view(&[0xff, 1]), json!([255, 1]));
        let headers = vec![
            ("set-cookie".to_string(), "a".to_string()),
            ("set-cookie".to_string(), "b".to_string()),
        ];
        assert_eq!(headers_view(&headers), json!({ "set-cookie": "a, b" }));
    }
}
