//! `benchq-coordinator`: serve the queue, or apply its migrations.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use std::path::PathBuf;
use std::sync::Arc;

use benchq_coordinator::auth::{self, Auth, Role};
use benchq_coordinator::server::TlsFiles;
use benchq_coordinator::{Config, Coordinator};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The benchq coordinator: owns the job queue in PostgreSQL and serves it over gRPC.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
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

    /// The tokens file (see `token add`): callers need one of its tokens.
    #[arg(long, env = "BENCHQ_TOKENS", conflicts_with = "insecure_no_auth")]
    tokens: Option<PathBuf>,

    /// Serve without authentication: anyone who reaches the port may do
    /// anything. Only allowed on a loopback address.
    #[arg(long)]
    insecure_no_auth: bool,

    /// The coordinator's TLS certificate chain (PEM). With --tls-key, serve TLS.
    #[arg(long, env = "BENCHQ_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "BENCHQ_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "BENCHQ_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,

    /// Size of the PostgreSQL connection pool.
    #[arg(long, env = "BENCHQ_DB_CONNECTIONS", default_value_t = 20)]
    db_connections: u32,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply the database migrations and exit (the server also applies them on start).
    Migrate {
        /// PostgreSQL connection URL.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// Manage the tokens file.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Add a token to the tokens file (created if missing) and print its secret,
    /// once: only its hash is stored. A running coordinator picks it up on SIGHUP.
    Add {
        /// The tokens file.
        #[arg(long)]
        file: PathBuf,
        /// A unique name for the token (shown in logs and job records).
        #[arg(long)]
        name: String,
        /// agent (Lease/Heartbeat/Complete), operator (Enqueue, read, cancel) or admin (all tenants).
        #[arg(long)]
        role: Role,
        /// The tenant the token acts for (not needed for admin).
        #[arg(long, default_value = "")]
        tenant: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    if let Some(Command::Token(TokenCommand::Add {
        file,
        name,
        role,
        tenant,
    })) = &cli.command
    {
        let secret = auth::add_token(file, name, *role, tenant)?;
        eprintln!(
            "added token {name:?} ({}{}) to {}; its secret, shown only now:",
            role.name(),
            if tenant.is_empty() {
                String::new()
            } else {
                format!(", tenant {tenant}")
            },
            file.display()
        );
        println!("{secret}");
        return Ok(());
    }
    let migrate_url = match &cli.command {
        Some(Command::Migrate { database_url }) => Some(database_url.clone()),
        _ => None,
    };
    let url = migrate_url
        .clone()
        .flatten()
        .or(cli.database_url)
        .ok_or("no database: pass --database-url URL or set DATABASE_URL")?;
    if migrate_url.is_some() {
        let pool = benchq_coordinator::server::connect(&url, 1).await?;
        benchq_coordinator::migrate(&pool).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let auth = match (&cli.tokens, cli.insecure_no_auth) {
        (Some(path), _) => Auth::from_file(path)?,
        (None, true) if cli.listen.ip().is_loopback() => {
            tracing::warn!(
                "running WITHOUT authentication (--insecure-no-auth): anyone who can reach {} can do anything",
                cli.listen
            );
            Auth::disabled()
        }
        (None, true) => {
            return Err(format!(
                "--insecure-no-auth is only allowed on a loopback address, not {}: \
                 create tokens with `benchq-coordinator token add` and pass --tokens FILE",
                cli.listen
            )
            .into());
        }
        (None, false) => {
            return Err("no authentication configured: pass --tokens FILE (see \
                        `benchq-coordinator token add --help`), or --insecure-no-auth on a \
                        loopback address"
                .into());
        }
    };
    let mut config = Config::new(cli.listen, url);
    config.auth = Arc::new(auth);
    config.tls = cli.tls_cert.map(|cert| TlsFiles {
        cert,
        key: cli
            .tls_key
            .expect("clap requires --tls-key with --tls-cert"),
        client_ca: cli.client_ca,
    });
    if config.tls.is_none() && !cli.listen.ip().is_loopback() {
        tracing::warn!(
            "serving plaintext gRPC on {}: tokens and results cross the network unencrypted; \
             pass --tls-cert and --tls-key",
            cli.listen
        );
    }
    config.max_connections = cli.db_connections;
    config.timing.lease_ttl = cli.lease_ttl;
    config.timing.max_lease_wait = cli.max_lease_wait;
    config.timing.reap_interval = cli.reap_interval;
    config.timing.timeout_margin = cli.timeout_margin;
    let auth = config.auth.clone();
    let coordinator = Coordinator::build(config).await?;
    if auth.is_enabled() {
        tokio::spawn(reload_on_sighup(auth));
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    coordinator.run(shutdown).await
}

/// Reads the tokens file again on each SIGHUP.
async fn reload_on_sighup(auth: Arc<Auth>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match auth.reload() {
            Ok(n) => tracing::info!("SIGHUP: tokens file reloaded, {n} tokens"),
            Err(e) => tracing::error!("SIGHUP: {e}; keeping the tokens in force"),
        }
    }
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
