//! [`Shutdown`]: how an agent is told to stop.
//!
//! Stopping has two stages because the two reasons to stop want different
//! things. A deploy or a scale-down wants the running jobs to *finish*: the
//! agent drains (no new leases, running jobs run to their end and are
//! reported), however long that takes. An operator who means "now" (a second
//! Ctrl-C, a drain that has gone on too long) wants them *interrupted*:
//! stopped like a cancelled job and reported `INTERRUPTED`, which puts them
//! back in the queue without using an attempt, so another agent picks them
//! up at once instead of after a lease expiry.

use tokio_util::sync::CancellationToken;

/// A handle to stop an [`crate::Agent`]: clone it, give one clone to
/// [`crate::Agent::run`], keep the other.
///
/// [`Shutdown::drain`] stops leasing and lets running jobs finish;
/// [`Shutdown::interrupt`] also stops the running jobs and reports them
/// `INTERRUPTED`. The agent itself interrupts through this handle when its
/// [`crate::AgentConfig::drain_timeout`] passes.
///
/// A plain [`CancellationToken`] converts into a `Shutdown` that only drains,
/// and [`Shutdown::from_tokens`] wraps tokens an embedding program already has.
///
/// # Example
///
/// ```no_run
/// # async fn example(agent: benchq_agent::Agent) {
/// use std::time::Duration;
/// use benchq_agent::Shutdown;
///
/// let shutdown = Shutdown::new();
/// let mut running = tokio::spawn(agent.run(shutdown.clone()));
/// // … later: let running jobs finish, but for a minute at most
/// // (what `AgentConfig::drain_timeout` does by itself).
/// shutdown.drain();
/// if tokio::time::timeout(Duration::from_secs(60), &mut running).await.is_err() {
///     shutdown.interrupt();
///     running.await.unwrap();
/// }
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub(crate) drain: CancellationToken,
    pub(crate) interrupt: CancellationToken,
}

impl Shutdown {
    /// A handle that has asked for nothing yet.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// A handle over existing tokens: cancelling `drain` drains, cancelling
    /// `interrupt` interrupts (and drains, since an interrupted agent takes no
    /// new work either). The agent may cancel both.
    pub fn from_tokens(drain: CancellationToken, interrupt: CancellationToken) -> Self {
        Shutdown { drain, interrupt }
    }

    /// Take no new jobs; let the running ones finish and be reported.
    pub fn drain(&self) {
        self.drain.cancel();
    }

    /// Take no new jobs, stop the running ones and report them `INTERRUPTED`.
    pub fn interrupt(&self) {
        self.drain.cancel();
        self.interrupt.cancel();
    }

    /// Whether a drain (or an interrupt) was asked for.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled() || self.interrupt.is_cancelled()
    }

    /// Whether an interrupt was asked for.
    pub fn is_interrupted(&self) -> bool {
        self.interrupt.is_cancelled()
    }

    /// Resolves once a drain (or an interrupt) is asked for.
    pub async fn draining(&self) {
        tokio::select! {
            _ = self.drain.cancelled() => {}
            _ = self.interrupt.cancelled() => {}
        }
    }

    /// Resolves once an interrupt is asked for.
    pub async fn interrupted(&self) {
        self.interrupt.cancelled().await;
    }
}

impl From<CancellationToken> for Shutdown {
    /// Cancelling the token drains; nothing interrupts.
    fn from(drain: CancellationToken) -> Self {
        Shutdown {
            drain,
            interrupt: CancellationToken::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupt_also_drains() {
        let s = Shutdown::new();
        assert!(!s.is_draining());
        s.interrupt();
        assert!(s.is_draining() && s.is_interrupted());
        assert!(s.drain.is_cancelled());

        let s = Shutdown::new();
        s.drain();
        assert!(s.is_draining() && !s.is_interrupted());
    }

    #[tokio::test]
    async fn a_token_only_drains() {
        let token = CancellationToken::new();
        let s = Shutdown::from(token.clone());
        token.cancel();
        s.draining().await;
        assert!(!s.is_interrupted());

        // Interrupting through a foreign token alone still counts as draining.
        let (drain, interrupt) = (CancellationToken::new(), CancellationToken::new());
        let s = Shutdown::from_tokens(drain, interrupt.clone());
        interrupt.cancel();
        s.draining().await;
        assert!(s.is_draining());
    }
}
