//! The reaper: takes back leases whose agent is gone.
//!
//! An agent that dies (kill -9, a lost machine, a cut network) stops
//! heartbeating; once its lease expires the job is counted as an infra failure
//! and goes back to the queue (or ends `errored` on its last attempt, or
//! `cancelled` if a cancel was requested). The same happens, as a backstop,
//! to a job that runs well past its timeout because its agent hangs.
//!
//! The reaper scans, then writes each job with a statement that re-checks the
//! state, the lease token and the expiry (`queue::reclaim`), so a job that was
//! completed, heartbeated or re-leased after the scan is never overwritten.
//! Every coordinator runs a reaper; two reapers racing for one job are safe
//! for the same reason.
//!
//! A coordinator that just started waits one lease TTL before its first scan:
//! agents that kept working while it (and maybe every coordinator) was down
//! get the chance to heartbeat before their leases are judged.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::queue;

/// How many expired leases one scan handles; the next tick takes the rest.
const BATCH: i64 = 500;

/// Reaps every `interval` until `shutdown`, starting after `first_delay`.
pub async fn run(
    pool: PgPool,
    interval: Duration,
    first_delay: Duration,
    timeout_margin: Duration,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = tokio::time::sleep(first_delay) => {}
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = reap_once(&pool, timeout_margin).await {
            tracing::warn!("reaper: {e}");
        }
    }
}

/// One scan and its reclaims. Returns how many leases were taken back.
pub async fn reap_once(
    pool: &PgPool,
    timeout_margin: Duration,
) -> Result<usize, queue::QueueError> {
    let expired = queue::expired_leases(pool, timeout_margin, BATCH).await?;
    let mut reclaimed = 0;
    for (id, token, reason) in expired {
        if let Some(state) = queue::reclaim(pool, id, token, &reason, timeout_margin).await? {
            reclaimed += 1;
            tracing::warn!(%id, %state, "took back lease: {reason}");
        }
    }
    Ok(reclaimed)
}
