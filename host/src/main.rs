//! The `simrelay` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use simrelay::config::Config;
use simrelay::relay::{self, Relay};
use simrelay::{delivery, server};
use tracing::info;

#[derive(Parser)]
#[command(
    version,
    about = "WebAssembly plugin host that relays SMS between gateways and marketplaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the configured plugins and serve webhooks.
    Serve {
        #[arg(long)]
        config: PathBuf,
        /// Address to listen on [default: the config's host.listen, else 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where state is kept [default: the config's host.data_dir, else ./data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIMRELAY_LOG")
                .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => serve(config, listen, data_dir),
    }
}

fn serve(
    config_path: PathBuf,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
) -> Result<()> {
    let config = Config::load(&config_path)?;
    let listen = listen
        .or(config.host.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let data_dir = data_dir
        .or_else(|| config.host.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("data"));
    let relay = Relay::start(&config, &data_dir)?;

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let client = reqwest::Client::builder()
            .user_agent(concat!("simrelay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        tokio::spawn(delivery::run_worker(relay.clone(), client));
        tokio::spawn(relay::run_event_worker(relay.clone()));
        relay::spawn_tickers(&relay);
        info!(%listen, data_dir = %data_dir.display(), "simrelay serving");
        axum::serve(listener, server::app(relay))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
