//! `benchq-coordinator`: serve the queue, or apply its migrations.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use benchq_coordinator::{Config, Coordinator};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The benchq coordinator: owns the job queue in PostgreSQL and serves it over gRPC.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    /// Address to serve gRPC on.
    #[arg(long, env = "BENCHQ_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,

    /// How long a lease lives without a heartbeat (e.g. 30s, 500ms, 2m).
    #[arg(long, env = "BENCHQ_LEASE_TTL", default_value = "30s", value_parser = benchq::duration::parse)]
    lease_ttl: Duration,

    /// The longest a Lease call waits for work before returning empty.
    #[arg(long, env = "BENCHQ_MAX_LEASE_WAIT", default_value = "30s", value_parser = benchq::duration::parse)]
    max_lease_wait: Duration,

    /// How often expired leases are looked for.
    #[arg(long, env = "BENCHQ_REAP_INTERVAL", default_value = "2s", value_parser = benchq::duration::parse)]
    reap_interval: Duration,

    /// How long past its timeout a job may run before the coordinator takes it
    /// back from an agent that did not stop it.
    #[arg(long, env = "BENCHQ_TIMEOUT_MARGIN", default_value = "60s", value_parser = benchq::duration::parse)]
    timeout_margin: Duration,

    /// Size of the PostgreSQL connection pool.
    #[arg(long, env = "BENCHQ_DB_CONNECTIONS", default_value_t = 20)]
    db_connections: u32,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply the database migrations and exit (the server also applies them on start).
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchq-coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = cli
        .database_url
        .ok_or("no database: pass --database-url URL or set DATABASE_URL")?;
    if let Some(Command::Migrate) = cli.command {
        let pool = benchq_coordinator::server::connect(&url, 1).await?;
        benchq_coordinator::migrate(&pool).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let mut config = Config::new(cli.listen, url);
    config.max_connections = cli.db_connections;
    config.timing.lease_ttl = cli.lease_ttl;
    config.timing.max_lease_wait = cli.max_lease_wait;
    config.timing.reap_interval = cli.reap_interval;
    config.timing.timeout_margin = cli.timeout_margin;
    let coordinator = Coordinator::build(config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    coordinator.run(shutdown).await
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received"),
    }
    shutdown.cancel();
}
