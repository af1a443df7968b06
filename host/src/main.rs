//! The `simrelay` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use simrelay::config::Config;
use simrelay::db::Db;
use simrelay::delivery;
use simrelay::relay::{self, Relay};
use simrelay::server::{self, BodyBudget};
use tokio::net::TcpListener;
use tracing::{error, info};

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
    /// Create, test and manage plugins.
    Plugin {
        #[command(subcommand)]
        command: simrelay::kit::PluginCommand,
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
        Command::Plugin { command } => simrelay::kit::run(command),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("cannot listen for SIGTERM");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    info!("shutting down: finishing requests in flight");
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

    let loaded = Relay::load(&config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let db = open_storage(&listener, &config.host.http, &data_dir).await;
        let relay = tokio::task::block_in_place(|| Relay::start(loaded, db))?;
        let limits = Arc::new(delivery::Limits::new(
            config.host.deliveries_per_destination,
        ));
        tokio::spawn(delivery::run_worker(
            relay.clone(),
            delivery::client()?,
            limits,
        ));
        relay::spawn_event_workers(&relay);
        relay::spawn_tickers(&relay);
        info!(%listen, data_dir = %data_dir.display(), "simrelay serving");
        let budget = BodyBudget::new(&config.host.http);
        let handler = move |request, _peer| server::webhook(relay.clone(), budget.clone(), request);
        server::serve(&listener, &config.host.http, handler, shutdown_signal()).await;
        Ok(())
    })
}

/// Opens the database. While it cannot be written (a full or failing disk), webhooks get
/// 503 on `listener`, so a host restarted on a full disk tells its senders to come back
/// instead of dying at once, and starts for real as soon as the disk has room again.
async fn open_storage(
    listener: &TcpListener,
    limits: &server::HttpLimits,
    data_dir: &std::path::Path,
) -> Arc<Db> {
    let mut first_error = true;
    loop {
        match tokio::task::block_in_place(|| Db::open(data_dir)) {
            Ok(db) => {
                if !first_error {
                    info!("storage writable again: starting");
                }
                return Arc::new(db);
            }
            Err(cause) => {
                if first_error {
                    error!(
                        "storage unavailable: {cause:#}. Refusing webhooks with 503 and trying \
                         again every 2 s; free disk space or fix {} to recover",
                        data_dir.display()
                    );
                    first_error = false;
                }
                let unavailable = |_, _| async {
                    server::json_error(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "storage unavailable; send it again later",
                    )
                };
                server::serve(
                    listener,
                    limits,
                    unavailable,
                    tokio::time::sleep(Duration::from_secs(2)),
                )
                .await;
            }
        }
    }
}
