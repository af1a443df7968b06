//! The plugin kit as an author outside the project uses it: `simrelay plugin test` on every
//! plugin's fixtures, a fixture that fails, and `simrelay plugin new` from an empty folder
//! to a plugin serving webhooks in a running host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;
use simrelay_e2e::*;

fn simrelay(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(simrelay_binary())
        .args(args)
        .output()
        .expect("cannot run simrelay")
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// `simrelay plugin test PLUGIN FIXTURES…`.
fn plugin_test(plugin: &Path, fixtures: &[PathBuf]) -> Output {
    let mut args = vec!["plugin".as_ref(), "test".as_ref(), plugin.as_os_str()];
    args.extend(fixtures.iter().map(|fixture| fixture.as_os_str()));
    simrelay(&args)
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

/// Whether `dir` holds a plugin (a component crate or a Python app) rather than a library.
fn is_plugin(dir: &Path) -> bool {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
    manifest.contains("cdylib") || dir.join("app.py").exists()
}

#[test]
fn every_plugin_passes_its_fixtures() {
    let mut plugins: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("plugins"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|dir| is_plugin(dir))
        .collect();
    plugins.sort();
    assert!(plugins.len() >= 6, "plugins found: {plugins:?}");
    for dir in plugins {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let fixtures = dir.join("fixtures");
        assert!(fixtures.is_dir(), "plugins/{name} has no fixtures/");
        let output = plugin_test(&plugin_path(&name), &json_files(&fixtures));
        let report = text(&output);
        assert!(
            output.status.success(),
            "{name} fails its fixtures:\n{report}"
        );
        assert!(report.contains("test result: ok."), "{report}");
    }
}

#[test]
fn a_fixture_the_plugin_does_not_match_fails_and_shows_where() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("wrong.json");
    let body =
        json!({ "type": "dev-status", "mac": "m1", "status": [{ "port": "1.01", "st": 3 }] });
    let steps = json!({
        "settings": { "api_key": "k3y-for-the-test" },
        "steps": [
            { "webhook": { "params": { "key": "k3y-for-the-test" }, "body": body },
              "expect": { "reply": { "status": 200 } } },
            { "webhook": { "params": { "key": "k3y-for-the-test" }, "body": body },
              "expect": { "reply": { "body": { "message": "Fine" } },
                          "events": [{ "SimStatusChanged": { "state": "NoSim" } }] } },
        ],
    });
    std::fs::write(&fixture, steps.to_string()).unwrap();
    let output = plugin_test(&plugin_path("ejoin"), &[fixture]);
    let report = text(&output);
    assert!(!output.status.success(), "{report}");
    for line in [
        "step 1: webhook POST /\n  reply: 200 {\"message\":\"Ok\"}",
        "  ok in ",
        "  FAILED in ",
        "  at reply.body.message\n    expected: \"Fine\"\n      actual: \"Ok\"\n",
        "  at events[0].SimStatusChanged.state\n    expected: \"NoSim\"\n      actual: \"Registered\"\n",
        "test result: FAILED. 1 passed; 1 failed",
        "1 of 2 steps did not do what their fixtures expect",
    ] {
        assert!(report.contains(line), "no `{line}` in:\n{report}");
    }
    assert!(
        !report.contains("k3y-for-the-test"),
        "the runner shows a secret setting:\n{report}"
    );
}

/// Runs a command to completion, failing the test with its output when it fails.
fn run(command: &mut Command) -> String {
    let output = command.output().expect("cannot run the command");
    let report = text(&output);
    assert!(output.status.success(), "{command:?} failed:\n{report}");
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scaffolded_plugin_builds_passes_its_tests_and_serves_in_a_host() {
    let dir = tempfile::tempdir().unwrap();
    let output = simrelay(&[
        "plugin".as_ref(),
        "new".as_ref(),
        "hello-kit".as_ref(),
        "--path".as_ref(),
        dir.path().as_os_str(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let crate_dir = dir.path().join("hello-kit");

    // Its own target directory under the repository's, kept between runs, so compiled
    // dependencies are reused; `--offline`, so the test reaches no registry (the crates
    // are in cargo's cache from building the repository).
    let target = workspace_root().join("target/scaffold");
    let cargo = || {
        let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        command
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", &target);
        command
    };
    let tests = run(cargo().args(["test", "--offline"]));
    assert!(
        tests.contains("test tests::echoes_counts_and_passes_messages_on ... ok"),
        "{tests}"
    );
    run(cargo().args([
        "build",
        "--offline",
        "--release",
        "--target",
        "wasm32-wasip2",
    ]));
    let wasm = target.join("wasm32-wasip2/release/hello_kit.wasm");
    let fixtures = run(Command::new(simrelay_binary())
        .args(["plugin", "test"])
        .arg(&wasm)
        .arg(crate_dir.join("fixtures/echo.json")));
    assert!(
        fixtures.contains("test result: ok. 2 passed; 0 failed"),
        "{fixtures}"
    );

    // Installed by configuration, as its README says.
    let config = format!(
        r#"
[instances.hello-kit]
plugin = "{}"
settings = {{ greeting = "hi" }}

[[routes]]
path = "/hello"
method = "POST"
instance = "hello-kit"
"#,
        wasm.display()
    );
    let host = Host::start(dir.path(), &config).await;
    let sms = r#"{"from":"Bank","to":"+100","text":"code 1234"}"#;
    let (status, reply) = post_json(&host, "/hello", sms).await;
    assert_eq!(status, 200);
    assert_eq!(
        reply,
        json!({ "hi": { "from": "Bank", "to": "+100", "text": "code 1234" }, "count": 1 })
    );
    let (_, reply) = post_json(&host, "/hello", "{}").await;
    assert_eq!(reply["count"], 2, "the instance keeps its state: {reply}");
}
