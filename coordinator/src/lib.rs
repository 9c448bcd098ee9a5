//! The benchq coordinator: a gRPC server that owns the job queue in PostgreSQL.
//!
//! It holds no state of its own beyond the database, so several coordinators
//! can serve one queue. The job state machine lives in [`queue`]; everything
//! else is the edge around it:
//!
//! - [`auth`] says who is calling (bearer tokens, roles, tenants);
//! - [`validate`] turns requests into the queue's types, refusing bad input;
//! - [`service`] maps each RPC onto one transition;
//! - [`wakeup`] wakes long-polling Leases on `NOTIFY`;
//! - [`reaper`] takes back the leases of agents that are gone;
//! - [`server`] wires it together with health and reflection, and shuts down cleanly.

pub mod auth;
pub mod queue;
pub mod reaper;
pub mod server;
pub mod service;
pub mod validate;
pub mod wakeup;

pub use server::{Config, Coordinator};

/// The embedded migrations in `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Applies the migrations that `pool`'s database does not have yet. Applying
/// them again changes nothing.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
