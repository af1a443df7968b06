//! Every built component imports only what Spin provides, so the same files serve on Spin:
//! each plugin in `target/wasm32-wasip2/release/`, and the bridge, whose adapter import
//! the plugin satisfies as its component dependency.
//!
//! The components come from `make build` (`make test` builds them first).

use std::path::{Path, PathBuf};

use wasmparser::{Parser, Payload};

/// Interfaces Spin 3 and 4 give every component, by package and interface, for any version
/// with this prefix: `wasi:http` 0.2, `wasi:keyvalue` 0.2.0-draft2, the WASI 0.2 CLI,
/// clocks, random and the I/O streams they use, `wasi:config` for Spin variables, and the
/// WASI 0.2 filesystem and sockets (Spin's WASI factor links them: the filesystem holds only
/// the component's mounted `files`, sockets reach only its `allowed_outbound_hosts`). Guest
/// runtimes such as componentize-py's import those whether or not the plugin uses them.
const SPIN_PROVIDES: &[(&str, &[&str], &str)] = &[
    ("wasi:http", &["types", "outgoing-handler"], "0.2."),
    (
        "wasi:keyvalue",
        &["store", "atomics", "batch"],
        "0.2.0-draft2",
    ),
    (
        "wasi:cli",
        &[
            "environment",
            "exit",
            "stdin",
            "stdout",
            "stderr",
            "terminal-input",
            "terminal-output",
            "terminal-stdin",
            "terminal-stdout",
            "terminal-stderr",
        ],
        "0.2.",
    ),
    ("wasi:clocks", &["wall-clock", "monotonic-clock"], "0.2."),
    (
        "wasi:random",
        &["random", "insecure", "insecure-seed"],
        "0.2.",
    ),
    ("wasi:io", &["error", "poll", "streams"], "0.2."),
    ("wasi:config", &["store"], "0.2.0-draft-2024-09-27"),
    ("wasi:filesystem", &["types", "preopens"], "0.2."),
    (
        "wasi:sockets",
        &[
            "network",
            "instance-network",
            "udp",
            "udp-create-socket",
            "tcp",
            "tcp-create-socket",
            "ip-name-lookup",
        ],
        "0.2.",
    ),
];

/// The adapter interface's types: no functions, so no one has to provide them.
const ADAPTER_TYPES: &str = "simrelay:adapter/types@";
/// What the bridge imports from its dependency, the plugin.
const ADAPTER: &str = "simrelay:adapter/adapter@0.2.0";

fn spin_provides(import: &str) -> bool {
    let Some((path, version)) = import.split_once('@') else {
        return false;
    };
    let Some((package, interface)) = path.split_once('/') else {
        return false;
    };
    SPIN_PROVIDES
        .iter()
        .any(|(provided, interfaces, versions)| {
            *provided == package && interfaces.contains(&interface) && version.starts_with(versions)
        })
}

fn plugin_may_import(import: &str) -> bool {
    spin_provides(import) || import.starts_with(ADAPTER_TYPES)
}

fn bridge_may_import(import: &str) -> bool {
    plugin_may_import(import) || import == ADAPTER
}

/// The top-level imports and exports of a component.
fn imports_and_exports(path: &Path) -> (Vec<String>, Vec<String>) {
    let bytes = std::fs::read(path).unwrap();
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0;
    for payload in Parser::new(0).parse_all(&bytes) {
        match payload.unwrap_or_else(|error| panic!("{}: {error}", path.display())) {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(reader) if depth == 0 => {
                imports.extend(
                    reader
                        .into_iter()
                        .map(|import| import.unwrap().name.name.to_string()),
                );
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                exports.extend(
                    reader
                        .into_iter()
                        .map(|export| export.unwrap().name.name.to_string()),
                );
            }
            _ => {}
        }
    }
    (imports, exports)
}

fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("wasm32-wasip2/release")
}

const BRIDGE_FILE: &str = "simrelay_spin_bridge.wasm";

#[test]
fn the_allowed_list_is_what_spin_provides() {
    assert!(plugin_may_import("wasi:keyvalue/store@0.2.0-draft2"));
    assert!(plugin_may_import("wasi:cli/stderr@0.2.6"));
    assert!(plugin_may_import("simrelay:adapter/types@0.2.0"));
    assert!(bridge_may_import("wasi:http/outgoing-handler@0.2.12"));
    assert!(bridge_may_import(ADAPTER));
    assert!(plugin_may_import("wasi:filesystem/preopens@0.2.9"));
    assert!(plugin_may_import("wasi:sockets/tcp@0.2.6"));
    // An older draft, WASI 0.3, a plugin calling a plugin, Spin's own old key-value: not there.
    assert!(!plugin_may_import("wasi:keyvalue/store@0.2.0-draft"));
    assert!(!plugin_may_import("wasi:sockets/tcp@0.3.0"));
    assert!(!plugin_may_import(ADAPTER));
    assert!(!plugin_may_import("wasi:http/types@0.3.0"));
    assert!(!plugin_may_import("fermyon:spin/key-value@2.0.0"));
}

#[test]
fn every_built_component_imports_only_what_spin_provides() {
    let dir = release_dir();
    let bridge = dir.join(BRIDGE_FILE);
    assert!(
        bridge.exists(),
        "{} is missing: run `make build` (or `make test`) first",
        bridge.display()
    );
    let plugins: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "wasm")
                && path.file_name().is_some_and(|name| name != BRIDGE_FILE)
        })
        .collect();
    assert!(
        plugins.len() >= 3,
        "expected the plugins in {}: run `make build` first",
        dir.display()
    );

    let mut problems = Vec::new();
    for plugin in &plugins {
        let (imports, exports) = imports_and_exports(plugin);
        assert!(
            exports
                .iter()
                .any(|export| export.starts_with("simrelay:adapter/adapter@")),
            "{} exports no adapter: {exports:?}",
            plugin.display()
        );
        for import in imports.iter().filter(|import| !plugin_may_import(import)) {
            problems.push(format!("{}: {import}", plugin.display()));
        }
    }
    let (imports, exports) = imports_and_exports(&bridge);
    assert!(
        exports
            .iter()
            .any(|export| export.starts_with("wasi:http/incoming-handler@0.2.")),
        "the bridge exports {exports:?}"
    );
    assert!(
        imports.iter().any(|import| import == ADAPTER),
        "{imports:?}"
    );
    for import in imports.iter().filter(|import| !bridge_may_import(import)) {
        problems.push(format!("{}: {import}", bridge.display()));
    }
    assert!(
        problems.is_empty(),
        "imports Spin does not provide:\n{}",
        problems.join("\n")
    );
}
