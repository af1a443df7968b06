//! The plugin kit: what a plugin author outside the project uses.
//!
//! - `simrelay plugin new NAME` ([`scaffold`]) writes a Rust adapter crate that builds to a
//!   component and passes its own tests, wherever it is created.
//! - `simrelay plugin test PLUGIN.wasm FIXTURE…` ([`runner`]) runs a built plugin, in any
//!   language, against recorded inputs ([`fixture`]) with no running host, and shows where
//!   it did not do what the fixture expects ([`compare`]).
//!
//! The author's guide is `plugins/README.md`; its Rust code is compiled as this module's
//! doctests, so it stays true.

pub mod compare;
pub mod fixture;
pub mod runner;
pub mod scaffold;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;

/// `simrelay plugin …`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a Rust adapter crate that builds to a plugin component, with a unit test, a
    /// fixture and a README saying how to build, test and install it.
    New {
        /// The plugin's name: lower-case letters, digits and dashes, e.g. `my-gateway`.
        name: String,
        /// Directory to create the crate in [default: the current directory].
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Run a built plugin against fixture files, with no running host; exits non-zero when
    /// a step did not do what its fixture expects.
    Test {
        /// The plugin component, e.g. target/wasm32-wasip2/release/my_gateway.wasm.
        plugin: PathBuf,
        /// Fixture files (JSON): steps of inputs and expected outputs.
        #[arg(required = true)]
        fixtures: Vec<PathBuf>,
    },
}

/// Runs a `simrelay plugin` command.
pub fn run(command: PluginCommand) -> Result<()> {
    match command {
        PluginCommand::New { name, path } => {
            let parent = path.unwrap_or_else(|| PathBuf::from("."));
            let dir = scaffold::create(&name, &parent)?;
            println!("created {}", dir.display());
            println!("next: cd {} and see README.md", dir.display());
            Ok(())
        }
        PluginCommand::Test { plugin, fixtures } => {
            let runner = runner::Runner::load(&plugin)?;
            let mut out = std::io::stdout().lock();
            let tally = test(&runner, &fixtures, &mut out)?;
            if tally.failed > 0 {
                bail!(
                    "{} of {} steps did not do what their fixtures expect",
                    tally.failed,
                    tally.passed + tally.failed
                );
            }
            Ok(())
        }
    }
}

/// Runs every fixture and ends with a `cargo test`-like result line.
pub fn test(
    runner: &runner::Runner,
    fixtures: &[PathBuf],
    out: &mut dyn std::io::Write,
) -> Result<runner::Tally> {
    writeln!(out, "{}", runner.banner())?;
    let mut tally = runner::Tally::default();
    for fixture in fixtures {
        tally += runner.run_file(fixture, out)?;
    }
    let result = if tally.failed == 0 { "ok" } else { "FAILED" };
    writeln!(
        out,
        "\ntest result: {result}. {} passed; {} failed",
        tally.passed, tally.failed
    )?;
    Ok(tally)
}

/// The plugin author's guide, `plugins/README.md`: its Rust code blocks run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../plugins/README.md")]
pub struct PluginGuide;
