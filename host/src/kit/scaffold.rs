//! `simrelay plugin new NAME`: a Rust adapter crate that builds to a plugin component and
//! passes its own tests out of the box, wherever it is created.
//!
//! The crate carries the guest SDK and the WIT it builds against in `vendor/simrelay-sdk/`
//! and `wit/`, both embedded in this binary when it was built. No crate registry has the
//! SDK, and a machine that reaches only crates.io cannot fetch it from git; a path into a
//! simrelay checkout would tie the crate to one machine's layout. Vendored, the crate
//! builds anywhere with crates.io (or its cache, `--offline`), and keeps building against
//! the interface version it was made for until its author upgrades on purpose.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The SDK's files, by path inside `plugins/sdk/`.
const SDK_FILES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../../plugins/sdk/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
    (
        "src/dedupe.rs",
        include_str!("../../../plugins/sdk/src/dedupe.rs"),
    ),
    (
        "src/encoding.rs",
        include_str!("../../../plugins/sdk/src/encoding.rs"),
    ),
    (
        "src/http.rs",
        include_str!("../../../plugins/sdk/src/http.rs"),
    ),
    (
        "src/lenient.rs",
        include_str!("../../../plugins/sdk/src/lenient.rs"),
    ),
    (
        "src/phone.rs",
        include_str!("../../../plugins/sdk/src/phone.rs"),
    ),
    (
        "src/store.rs",
        include_str!("../../../plugins/sdk/src/store.rs"),
    ),
    (
        "src/testing.rs",
        include_str!("../../../plugins/sdk/src/testing.rs"),
    ),
    (
        "src/time.rs",
        include_str!("../../../plugins/sdk/src/time.rs"),
    ),
];

/// The interface's files, by path inside `wit/` (the frozen `v0.1/` is left out: new
/// plugins are built against the newest version).
const WIT_FILES: &[(&str, &str)] = &[
    ("adapter.wit", include_str!("../../../wit/adapter.wit")),
    (
        "deps/keyvalue-2024-10-17/atomic.wit",
        include_str!("../../../wit/deps/keyvalue-2024-10-17/atomic.wit"),
    ),
    (
        "deps/keyvalue-2024-10-17/batch.wit",
        include_str!("../../../wit/deps/keyvalue-2024-10-17/batch.wit"),
    ),
    (
        "deps/keyvalue-2024-10-17/store.wit",
        include_str!("../../../wit/deps/keyvalue-2024-10-17/store.wit"),
    ),
    (
        "deps/keyvalue-2024-10-17/watch.wit",
        include_str!("../../../wit/deps/keyvalue-2024-10-17/watch.wit"),
    ),
    (
        "deps/keyvalue-2024-10-17/world.wit",
        include_str!("../../../wit/deps/keyvalue-2024-10-17/world.wit"),
    ),
];

/// The workspace manifest, whose shared versions the SDK's manifest refers to.
const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");

/// The crate's own files, with `{{name}}`, `{{crate}}`, `{{Type}}` and `{{api_version}}`
/// to fill in.
const TEMPLATE: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("template/Cargo.toml")),
    ("src/lib.rs", include_str!("template/lib.rs")),
    ("fixtures/echo.json", include_str!("template/fixture.json")),
    ("README.md", include_str!("template/README.md")),
    (".gitignore", include_str!("template/gitignore")),
];

/// The interface version the embedded WIT declares.
fn api_version() -> &'static str {
    WIT_FILES[0]
        .1
        .lines()
        .find_map(|line| line.strip_prefix("package simrelay:adapter@"))
        .and_then(|rest| rest.strip_suffix(';'))
        .expect("wit/adapter.wit declares its package version")
}

/// Creates the crate `parent/NAME` and returns its path.
pub fn create(name: &str, parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists: choose another name or --path",
            dir.display()
        );
    }
    for (path, contents) in files(name)? {
        let path = dir.join(path);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("cannot create {}", folder.display()))?;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

/// Every file of the crate for plugin `name`, by path inside the crate.
pub fn files(name: &str) -> Result<Vec<(PathBuf, String)>> {
    check_name(name)?;
    let crate_name = name.replace('-', "_");
    let type_name: String = name
        .split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect();
    let render = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{Type}}", &type_name)
            .replace("{{api_version}}", api_version())
    };
    let mut files: Vec<(PathBuf, String)> = TEMPLATE
        .iter()
        .map(|(path, template)| (PathBuf::from(path), render(template)))
        .collect();
    // The SDK finds the interface at `../../wit`, as it does in the simrelay repository.
    files.extend(
        WIT_FILES
            .iter()
            .map(|(path, text)| (Path::new("wit").join(path), text.to_string())),
    );
    let sdk = Path::new("vendor/simrelay-sdk");
    for (path, text) in SDK_FILES {
        let text = match *path {
            "Cargo.toml" => standalone_manifest(text)?,
            _ => text.to_string(),
        };
        files.push((sdk.join(path), text));
    }
    Ok(files)
}

/// Names that make a valid crate, library and plugin name alike.
fn check_name(name: &str) -> Result<()> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "`{name}` cannot name a plugin: use lower-case letters, digits and single dashes, \
             starting with a letter, e.g. `my-gateway`"
        );
    }
    Ok(())
}

/// The SDK's manifest with every value it inherits from the simrelay workspace written
/// out, so it builds outside that workspace.
fn standalone_manifest(manifest: &str) -> Result<String> {
    let workspace: toml::Table = toml::from_str(WORKSPACE_MANIFEST)?;
    let workspace = workspace
        .get("workspace")
        .and_then(toml::Value::as_table)
        .context("the workspace manifest has no [workspace]")?;
    let mut manifest: toml::Table = toml::from_str(manifest)?;
    if let Some(toml::Value::Table(package)) = manifest.get_mut("package") {
        for (key, value) in package.iter_mut() {
            if is_inherited(value) {
                *value = workspace
                    .get("package")
                    .and_then(|package| package.get(key))
                    .cloned()
                    .with_context(|| format!("the workspace has no package.{key}"))?;
            }
        }
    }
    for section in ["dependencies", "dev-dependencies"] {
        let Some(toml::Value::Table(dependencies)) = manifest.get_mut(section) else {
            continue;
        };
        for (name, value) in dependencies.iter_mut() {
            if !is_inherited(value) {
                continue;
            }
            let shared = workspace
                .get("dependencies")
                .and_then(|dependencies| dependencies.get(name))
                .with_context(|| format!("the workspace has no dependency `{name}`"))?;
            let mut resolved = match shared {
                toml::Value::String(version) => {
                    toml::Table::from_iter([("version".to_string(), version.clone().into())])
                }
                toml::Value::Table(table) => table.clone(),
                other => {
                    bail!("workspace dependency `{name}` is neither a version nor a table: {other}")
                }
            };
            // What the member adds (`features`, `optional`) goes on top of what it inherits.
            if let toml::Value::Table(own) = value {
                for (key, extra) in own.iter().filter(|(key, _)| *key != "workspace") {
                    match (resolved.get_mut(key), extra) {
                        (Some(toml::Value::Array(inherited)), toml::Value::Array(added)) => {
                            inherited.extend(added.iter().cloned())
                        }
                        _ => {
                            resolved.insert(key.clone(), extra.clone());
                        }
                    }
                }
            }
            *value = toml::Value::Table(resolved);
        }
    }
    let header = "# The simrelay guest SDK, with what it shares with simrelay's other crates \
                  written out by `simrelay plugin new`.\n";
    Ok(header.to_string() + &toml::to_string(&manifest)?)
}

fn is_inherited(value: &toml::Value) -> bool {
    match value {
        toml::Value::Table(table) => table.get("workspace") == Some(&toml::Value::Boolean(true)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Every file under `dir`, by path inside it.
    fn listing(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(folder) = pending.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let inside = path.strip_prefix(dir).unwrap();
                    found.push(inside.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        found.sort();
        found
    }

    fn names(files: &[(&str, &str)]) -> Vec<String> {
        let mut names: Vec<String> = files.iter().map(|(path, _)| path.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn embeds_every_file_of_the_sdk_and_the_interface() {
        // A file added to the SDK or the WIT must be added to the lists above, or scaffolded
        // crates would not build.
        assert_eq!(names(SDK_FILES), listing(&repository().join("plugins/sdk")));
        let wit: Vec<String> = listing(&repository().join("wit"))
            .into_iter()
            .filter(|path| !path.starts_with("v0."))
            .collect();
        assert_eq!(names(WIT_FILES), wit);
        assert_eq!(api_version(), "0.2.0");
    }

    #[test]
    fn fills_in_the_name_everywhere() {
        let files = files("my-gateway").unwrap();
        let file = |path: &str| {
            &files
                .iter()
                .find(|(inside, _)| inside == Path::new(path))
                .unwrap_or_else(|| panic!("no {path}"))
                .1
        };
        assert!(file("Cargo.toml").contains(r#"name = "my-gateway""#));
        assert!(file("src/lib.rs").contains("impl Adapter for MyGateway {"));
        assert!(file("src/lib.rs").contains(r#"Descriptor::new("my-gateway""#));
        assert!(file("README.md").contains("release/my_gateway.wasm fixtures/*.json"));
        assert!(file("README.md").contains("simrelay:adapter@0.2.0"));
        assert!(file("fixtures/echo.json").contains(r#""id": "my-gateway-1""#));
        let leftover: Vec<_> = files
            .iter()
            .filter(|(_, text)| text.contains("{{name}}") || text.contains("{{Type}}"))
            .map(|(path, _)| path)
            .collect();
        assert!(leftover.is_empty(), "{leftover:?}");
    }

    #[test]
    fn the_vendored_sdk_inherits_nothing_from_the_workspace() {
        let files = files("x").unwrap();
        let (_, manifest) = files
            .iter()
            .find(|(path, _)| path == Path::new("vendor/simrelay-sdk/Cargo.toml"))
            .unwrap();
        assert!(!manifest.contains("workspace"), "{manifest}");
        let manifest: toml::Table = toml::from_str(manifest).unwrap();
        assert_eq!(manifest["package"]["edition"].as_str(), Some("2024"));
        assert_eq!(
            manifest["dependencies"]["serde_json"].as_table().unwrap()["version"].as_str(),
            Some("1")
        );
        let proptest = manifest["dependencies"]["proptest"].as_table().unwrap();
        assert_eq!(proptest["optional"].as_bool(), Some(true));
        assert_eq!(proptest["default-features"].as_bool(), Some(false));
    }

    #[test]
    fn refuses_names_that_are_no_crate_name() {
        for bad in ["", "My", "1st", "a_b", "a--b", "a-", "a b", "ä"] {
            let error = files(bad).unwrap_err().to_string();
            assert!(error.contains("cannot name a plugin"), "{bad}: {error}");
        }
        assert!(files("gw2-x").is_ok());
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        create("twice", dir.path()).unwrap();
        let error = create("twice", dir.path()).unwrap_err().to_string();
        assert!(error.contains("already exists"), "{error}");
    }

    /// The guide's walk-through shows the scaffold's code as `simrelay plugin new hello`
    /// writes it.
    #[test]
    fn the_guide_shows_the_scaffold_as_it_is() {
        let guide = std::fs::read_to_string(repository().join("plugins/README.md")).unwrap();
        let files = files("hello").unwrap();
        for path in ["src/lib.rs", "fixtures/echo.json"] {
            let (_, text) = files
                .iter()
                .find(|(inside, _)| inside == Path::new(path))
                .unwrap();
            assert!(
                guide.contains(text.as_str()),
                "plugins/README.md does not show hello/{path} as the scaffold writes it"
            );
        }
    }
}
