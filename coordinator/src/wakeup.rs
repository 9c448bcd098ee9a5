//! Waking waiting Leases when work arrives.
//!
//! Every transition that makes a job `queued` sends `NOTIFY benchq_jobs` in its
//! own transaction, so the notification is delivered exactly when the job
//! becomes visible, to every coordinator on the database. One task per
//! coordinator LISTENs and wakes all of its waiting Leases, which then race
//! for the work with `SKIP LOCKED`.
//!
//! Notifications can be missed (the LISTEN connection drops, PostgreSQL
//! restarts), so waiting Leases also poll: rarely while the listener is
//! connected, often while it is not. A Lease never waits on a notification that
//! cannot come.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::queue::JOBS_CHANNEL;

/// Shared between the listener task and the Lease handlers.
#[derive(Debug, Default)]
pub struct Wakeup {
    notify: Notify,
    listening: AtomicBool,
}

impl Wakeup {
    /// A future that completes at the next wake-up. Create it *before* looking
    /// for work, so a notification that lands in between is not lost.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Whether the LISTEN connection is up, i.e. whether notifications can be trusted.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    fn set_listening(&self, up: bool) {
        self.listening.store(up, Ordering::Release);
        // Either way, waiters should look again: work may have arrived while
        // the connection was down.
        self.notify.notify_waiters();
    }

    /// Runs the LISTEN loop until `shutdown`, reconnecting with capped backoff.
    pub async fn listen(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let session = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(JOBS_CHANNEL).await?;
                self.set_listening(true);
                tracing::debug!("listening for {JOBS_CHANNEL}");
                // `try_recv` returns None when the connection is lost.
                while listener.try_recv().await?.is_some() {
                    self.notify.notify_waiters();
                }
                Ok::<_, sqlx::Error>(())
            };
            let ended = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = session => r,
            };
            let was_up = self.is_listening();
            self.set_listening(false);
            match ended {
                Ok(()) => tracing::warn!("LISTEN connection lost; polling until it is back"),
                Err(e) if was_up => {
                    tracing::warn!("LISTEN connection lost: {e}; polling until it is back")
                }
                Err(e) => tracing::debug!("LISTEN reconnect failed: {e}"),
            }
            if was_up {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
