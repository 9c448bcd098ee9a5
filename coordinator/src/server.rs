//! Building and running the coordinator: bind, connect, migrate, serve, stop.
//!
//! [`Coordinator::build`] does everything that can fail at start (binding the
//! port, reaching PostgreSQL, applying migrations) so that [`Coordinator::run`]
//! only serves. Tests build it on port 0 and read [`Coordinator::local_addr`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use benchq::proto::coordinator_server::CoordinatorServer;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::auth::{Auth, AuthInterceptor};
use crate::service::{CoordinatorService, Timing};
use crate::wakeup::Wakeup;

/// The largest request accepted: a batch of the most scenarios allowed, each
/// with the longest id, fits. Larger requests are refused (`OUT_OF_RANGE`)
/// before they are decoded.
pub const MAX_REQUEST: usize = 32 * 1024 * 1024;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a coordinator needs to start.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub max_connections: u32,
    pub timing: Timing,
    /// Who may call. [`Auth::disabled`] by default: the binary makes running
    /// without authentication an explicit, loopback-only choice.
    pub auth: Arc<Auth>,
    /// Serve TLS with these PEM files; plaintext when `None`.
    pub tls: Option<TlsFiles>,
}

/// The PEM files of the coordinator's TLS identity, and optionally the CA
/// whose client certificates it requires (mutual TLS).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub client_ca: Option<std::path::PathBuf>,
}

impl TlsFiles {
    fn server_config(&self) -> Result<tonic::transport::ServerTlsConfig, BoxError> {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
        };
        let identity = tonic::transport::Identity::from_pem(
            read("--tls-cert", &self.cert)?,
            read("--tls-key", &self.key)?,
        );
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
                "--client-ca",
                ca,
            )?));
        }
        Ok(tls)
    }
}

impl Config {
    pub fn new(listen: SocketAddr, database_url: impl Into<String>) -> Self {
        Config {
            listen,
            database_url: database_url.into(),
            max_connections: 20,
            timing: Timing::default(),
            auth: Arc::new(Auth::disabled()),
            tls: None,
        }
    }
}

/// A coordinator that is bound, connected and migrated, ready to [`run`](Self::run).
pub struct Coordinator {
    listener: TcpListener,
    pool: PgPool,
    timing: Timing,
    auth: Arc<Auth>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    tls_mode: TlsMode,
}

#[derive(Debug, Clone, Copy)]
enum TlsMode {
    Plain,
    Tls,
    Mutual,
}

impl Coordinator {
    /// Binds the listen address, connects to PostgreSQL and applies migrations.
    pub async fn build(config: Config) -> Result<Self, BoxError> {
        config.timing.check()?;
        if config.max_connections == 0 {
            return Err("--db-connections must be at least 1".into());
        }
        // Bad certificate files are found before anything else starts.
        let tls = config
            .tls
            .as_ref()
            .map(TlsFiles::server_config)
            .transpose()?;
        let pool = connect(&config.database_url, config.max_connections).await?;
        crate::migrate(&pool)
            .await
            .map_err(|e| format!("applying migrations: {e}"))?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        Ok(Coordinator {
            listener,
            pool,
            timing: config.timing,
            auth: config.auth,
            tls,
            tls_mode: match &config.tls {
                None => TlsMode::Plain,
                Some(t) if t.client_ca.is_some() => TlsMode::Mutual,
                Some(_) => TlsMode::Tls,
            },
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The database pool, for tests and tools that inspect the queue.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight requests finish
    /// (waiting Leases return at once with no job) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BoxError> {
        let addr = self.local_addr();
        let wakeup = Arc::new(Wakeup::default());
        let listen_task = tokio::spawn(
            wakeup
                .clone()
                .listen(self.pool.clone(), shutdown.child_token()),
        );

        let reaper_task = tokio::spawn(crate::reaper::run(
            self.pool.clone(),
            self.timing.reap_interval,
            self.timing.lease_ttl,
            self.timing.timeout_margin,
            shutdown.child_token(),
        ));

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<CoordinatorServer<CoordinatorService>>()
            .await;
        // Both reflection versions: older grpcurl speaks only v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(benchq::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let service = CoordinatorService::new(
            self.pool.clone(),
            wakeup,
            self.timing.clone(),
            shutdown.clone(),
        );

        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| format!("TLS configuration: {e}"))?;
        }
        let security = match (self.tls_mode, self.auth.is_enabled()) {
            (TlsMode::Plain, false) => "plaintext, no authentication",
            (TlsMode::Plain, true) => "plaintext, tokens",
            (TlsMode::Tls, false) => "TLS, no authentication",
            (TlsMode::Tls, true) => "TLS, tokens",
            (TlsMode::Mutual, false) => "mutual TLS, no authentication",
            (TlsMode::Mutual, true) => "mutual TLS, tokens",
        };
        tracing::info!(%addr, "benchq-coordinator ready on {addr} ({security})");
        let stopping = {
            let shutdown = shutdown.clone();
            let health = health.clone();
            async move {
                shutdown.cancelled().await;
                tracing::info!("shutting down: finishing in-flight requests");
                health
                    .set_not_serving::<CoordinatorServer<CoordinatorService>>()
                    .await;
            }
        };
        builder
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(InterceptedService::new(
                CoordinatorServer::new(service).max_decoding_message_size(MAX_REQUEST),
                AuthInterceptor(self.auth.clone()),
            ))
            .serve_with_incoming_shutdown(
                // Small request/reply messages: Nagle's algorithm would hold each
                // reply for a delayed ACK.
                TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                stopping,
            )
            .await?;
        shutdown.cancel();
        let _ = listen_task.await;
        let _ = reaper_task.await;
        self.pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// A pool to `url` that fails fast when PostgreSQL is down rather than
/// holding requests for long.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, BoxError> {
    use sqlx::ConnectOptions;
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| format!("--database-url is not a PostgreSQL URL: {e}"))?;
    let place = format!(
        "{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    );
    // One connection first: its error says what is wrong ("connection
    // refused", "role does not exist"); the pool's would only say it timed out.
    options
        .connect()
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL at {place}: {}", plain(&e)))?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL at {place}: {}", plain(&e)).into())
}

/// A database error without sqlx's "error returned from database" wrapping
/// and source positions.
fn plain(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    }
}
