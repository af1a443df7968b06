//! The `simrelay` command line: `serve` runs the host; the other commands talk to a running
//! host through its operator API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use simrelay::config::Config;
use simrelay::control::{self, Connection, ControlCommand, PluginControl};
use simrelay::db::Db;
use simrelay::deploy::Deployer;
use simrelay::relay::{self, Relay};
use simrelay::server::{self, BodyBudget};
use simrelay::{admin, delivery};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    version,
    about = "WebAssembly plugin host that relays SMS between gateways and marketplaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: Connection,
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
        /// Address of the operator API [default: host.admin.listen, else 127.0.0.1:8081].
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Plugins: create and test them, and upload, install, list, roll back, remove them.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    #[command(flatten)]
    Control(ControlCommand),
}

/// `simrelay plugin …`: the kit works offline, the rest talks to a running host.
#[derive(Subcommand)]
enum PluginCommand {
    #[command(flatten)]
    Kit(simrelay::kit::PluginCommand),
    #[command(flatten)]
    Control(PluginControl),
}

// Every webhook allocates many short-lived strings and buffers on several threads; mimalloc
// serves them from thread-local pages: about a fifth more webhooks per second than glibc's
// malloc in `make bench`'s chain. Tuned by [`simrelay::allocator::return_freed_memory_at_once`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MAX_BLOCKING_THREADS: usize = 8;

fn main() -> Result<()> {
    simrelay::allocator::return_freed_memory_at_once();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIMRELAY_LOG")
                .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            admin_listen,
        } => serve(config, listen, data_dir, admin_listen),
        Command::Plugin {
            command: PluginCommand::Kit(command),
        } => simrelay::kit::run(command),
        Command::Plugin {
            command: PluginCommand::Control(command),
        } => client(control::plugin(&cli.connection, command)),
        Command::Control(command) => client(control::run(&cli.connection, command)),
    }
}

fn client(work: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
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
    admin_listen: Option<SocketAddr>,
) -> Result<()> {
    let mut config = Config::load(&config_path)?;
    let listen = listen
        .or(config.host.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let data_dir = data_dir
        .or_else(|| config.host.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("data"));
    let admin_listen = admin_listen.unwrap_or(config.host.admin.listen);
    Deployer::effective_config(&mut config, &data_dir)?;
    let loaded = Relay::load(&config, &data_dir)?;

    // Batches of queued events and plugin calls found running long (`worker`), ticks,
    // retention and operator work each hold a thread of the blocking pool while they run. More threads than that only queue on the same
    // instance locks and the committer, and take CPU from it in thread switches: at 2,600
    // SMS/s, 64 allowed grew to 49 threads, 8 keep 15, and webhooks are acknowledged faster
    // (BENCHMARKS.md, fourth pass).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?;
    // Made before anything listens, so whoever sees the host up can read it.
    let token = admin::token(config.host.admin.token.as_deref(), &data_dir)?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let admin_listener = TcpListener::bind(admin_listen)
            .await
            .with_context(|| format!("cannot listen on {admin_listen} for the operator API"))?;
        let db = open_storage(&listener, &config.host.http, &data_dir).await;
        let relay = tokio::task::block_in_place(|| Relay::start(loaded, db))?;
        let deployer = Deployer::new(relay.clone(), &data_dir, &config_path)?;

        let limits = Arc::new(delivery::Limits::new(
            config.host.deliveries_per_destination,
        ));
        tokio::spawn(delivery::run_worker(
            relay.clone(),
            delivery::client()?,
            limits,
        ));
        relay::spawn_workers(&relay);
        relay::spawn_retention(&relay, config.host.retention.clone());
        spawn_reload_on_hangup(deployer.clone());

        let operator_api = admin::router(deployer, token);
        let admin_limits = config.host.http.clone();
        tokio::spawn(async move {
            let handler = move |request: axum::http::Request<hyper::body::Incoming>, _| {
                let api = operator_api.clone();
                async move {
                    use tower::ServiceExt;
                    match api.oneshot(request.map(axum::body::Body::new)).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                }
            };
            server::serve(
                &admin_listener,
                &admin_limits,
                handler,
                std::future::pending(),
            )
            .await;
        });
        info!(%listen, admin = %admin_listen, data_dir = %data_dir.display(), "simrelay serving");
        let budget = BodyBudget::new(&config.host.http);
        let handler = move |request, _peer| server::webhook(relay.clone(), budget.clone(), request);
        server::serve(&listener, &config.host.http, handler, shutdown_signal()).await;
        Ok(())
    })
}

/// `kill -HUP` applies the configuration file as it is now.
fn spawn_reload_on_hangup(deployer: Arc<Deployer>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            warn!("cannot listen for SIGHUP; use `simrelay reload`");
            return;
        };
        while hangups.recv().await.is_some() {
            let deployer = deployer.clone();
            match tokio::task::spawn_blocking(move || deployer.reload()).await {
                Ok(Ok(changes)) => info!(?changes, "configuration reloaded"),
                Ok(Err(cause)) => error!("reload: {cause:#}"),
                Err(panic) => error!("reload failed: {panic}"),
            }
        }
    });
}

/// Opens the database. While it cannot be written (a full or failing disk), webhooks get
/// 503 on `listener`, so a host restarted on a full disk tells its senders to come back
/// instead of dying at once, and starts for real as soon as the disk has room again.
async fn open_storage(
    listener: &TcpListener,
    limits: &server::HttpLimits,
    data_dir: &Path,
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
