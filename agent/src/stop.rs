//! Why a running job is stopped, and what that makes of its result.
//!
//! Five things stop a job before it ends on its own, and each asks for a
//! different report: a lost lease (report nothing: the job may already run
//! elsewhere, and the coordinator would refuse it), lost contact with the
//! coordinator (`ERROR`, if it still gets through: the agent fenced itself,
//! see [`crate::agent`]), an operator's cancel (`CANCELLED`), its timeout
//! (`ERROR`, retried by the usual rule), an interrupted shutdown
//! (`INTERRUPTED`: back to the queue, attempt given back). The runner sees
//! only its cancel token; the agent loop records the reason in a [`Stop`]
//! *before* cancelling it, and decides the outcome from it, so that no runner
//! has to get this right.
//!
//! The two reasons that mean "the lease is gone, or may be" also *fence* the
//! job: the agent then gives the runner only a short time to stop (see
//! [`Stop::fenced`]), because another agent may run the job next.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use benchq::proto::Outcome;
use tokio_util::sync::CancellationToken;

use crate::runner::RunResult;

/// Why the agent stopped a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The coordinator no longer holds the lease for this agent (or no
    /// longer accepts its credential).
    LeaseLost,
    /// No heartbeat was acknowledged for this long (half the lease's TTL):
    /// the coordinator may take the lease back soon, so the agent stopped
    /// the job before it could.
    ContactLost(Duration),
    /// An operator cancelled the job (CancelJob / CancelBatch).
    Cancelled,
    /// The job ran longer than its timeout.
    Timeout(Duration),
    /// The agent was told to stop without waiting for its jobs.
    Interrupted,
}

impl StopReason {
    /// What to report for a run stopped for this reason: `None` for a lost
    /// lease (nothing is reported), else the outcome and the start of the
    /// error text.
    pub(crate) fn report(self) -> Option<(Outcome, String)> {
        match self {
            StopReason::LeaseLost => None,
            StopReason::ContactLost(silent) => Some((
                Outcome::Error,
                format!(
                    "lost contact with the coordinator for {}: stopped the job so it cannot run twice",
                    seconds(silent)
                ),
            )),
            StopReason::Cancelled => Some((
                Outcome::Cancelled,
                "cancelled: an operator asked for it".into(),
            )),
            StopReason::Timeout(limit) => Some((
                Outcome::Error,
                format!("timeout: ran longer than {}s", limit.as_secs()),
            )),
            StopReason::Interrupted => Some((
                Outcome::Interrupted,
                "interrupted: the agent was shut down".into(),
            )),
        }
    }

    /// Whether the job may soon run elsewhere, so that it must be dead
    /// before long rather than after the runner's own grace period.
    fn fences(self) -> bool {
        matches!(self, StopReason::LeaseLost | StopReason::ContactLost(_))
    }

    /// For log lines: `cancel requested`, `timeout`, …
    pub(crate) fn describe(self) -> &'static str {
        match self {
            StopReason::LeaseLost => "lease lost",
            StopReason::ContactLost(_) => "contact with the coordinator lost",
            StopReason::Cancelled => "cancel requested",
            StopReason::Timeout(_) => "timeout",
            StopReason::Interrupted => "interrupted",
        }
    }
}

/// One running job's stop switch: the reason, then the runner's token.
///
/// The first reason wins (a job being cancelled when the agent is interrupted
/// stays cancelled), except a lost lease, which overrides any other: once the
/// lease is gone nothing may be reported.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    reason: Mutex<Option<StopReason>>,
    token: CancellationToken,
    fence: CancellationToken,
}

impl Stop {
    /// The token the runner watches.
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Records `reason` (see the type's docs for which one wins) and cancels
    /// the runner. Returns whether `reason` is now the recorded one and was
    /// not before, i.e. whether to log it.
    pub(crate) fn request(&self, reason: StopReason) -> bool {
        let recorded = {
            let mut current = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
            let take = match *current {
                None => true,
                Some(StopReason::LeaseLost) => false,
                Some(_) => reason == StopReason::LeaseLost,
            };
            if take {
                *current = Some(reason);
            }
            take
        };
        if reason.fences() {
            self.fence.cancel();
        }
        self.token.cancel();
        recorded
    }

    /// Cancelled once a fencing reason (lost lease, lost contact) was
    /// requested, whichever reason is recorded: the job must then be dead
    /// within a short, fixed time, whatever grace its runner would give it.
    pub(crate) fn fenced(&self) -> CancellationToken {
        self.fence.clone()
    }

    /// The recorded reason, if any.
    pub(crate) fn reason(&self) -> Option<StopReason> {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A duration for people, rounded down: `15s`; below 10 s to a tenth,
/// `1.5s`, without a `.0`.
pub(crate) fn seconds(d: Duration) -> String {
    let tenths = d.as_millis() / 100;
    if d >= Duration::from_secs(10) || tenths.is_multiple_of(10) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}.{}s", tenths / 10, tenths % 10)
    }
}

/// What to report for `result`, given why (if at all) its run was stopped
/// before it returned: `None` when nothing may be reported (lost lease).
///
/// A stopped run keeps its exit code, output and metrics; its outcome is the
/// reason's, and its error says why, followed by what the runner said (or its
/// exit code) in parentheses. A run that finished on its own, or was not
/// stopped, is reported as it is.
pub(crate) fn settle(mut result: RunResult, stopped: Option<StopReason>) -> Option<RunResult> {
    let Some(reason) = stopped.filter(|_| !result.finished_on_its_own) else {
        return Some(result);
    };
    let (outcome, why) = reason.report()?;
    let detail = if !result.error.is_empty() {
        std::mem::take(&mut result.error)
    } else if let Some(code) = result.exit_code {
        format!("exit code {code}")
    } else {
        String::new()
    };
    result.outcome = outcome;
    result.error = if detail.is_empty() {
        why
    } else {
        format!("{why} ({detail})")
    };
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn killed() -> RunResult {
        RunResult {
            output_tail: "tail".into(),
            metrics_json: Some("{}".into()),
            ..RunResult::error("killed by signal 15")
        }
    }

    #[test]
    fn each_reason_decides_the_outcome_and_keeps_the_rest() {
        let r = settle(killed(), Some(StopReason::Cancelled)).unwrap();
        assert_eq!(r.outcome, Outcome::Cancelled);
        assert_eq!(
            r.error,
            "cancelled: an operator asked for it (killed by signal 15)"
        );
        assert_eq!(r.output_tail, "tail");
        assert_eq!(r.metrics_json.as_deref(), Some("{}"));

        let r = settle(killed(), Some(StopReason::Timeout(Duration::from_secs(90)))).unwrap();
        assert_eq!(r.outcome, Outcome::Error);
        assert_eq!(
            r.error,
            "timeout: ran longer than 90s (killed by signal 15)"
        );

        let r = settle(killed(), Some(StopReason::Interrupted)).unwrap();
        assert_eq!(r.outcome, Outcome::Interrupted);
        assert_eq!(
            r.error,
            "interrupted: the agent was shut down (killed by signal 15)"
        );

        assert_eq!(settle(killed(), Some(StopReason::LeaseLost)), None);

        let r = settle(
            killed(),
            Some(StopReason::ContactLost(Duration::from_secs(15))),
        )
        .unwrap();
        assert_eq!(r.outcome, Outcome::Error);
        assert_eq!(
            r.error,
            "lost contact with the coordinator for 15s: stopped the job so it cannot run twice (killed by signal 15)"
        );
        let r = settle(
            killed(),
            Some(StopReason::ContactLost(Duration::from_millis(1500))),
        )
        .unwrap();
        assert!(
            r.error
                .starts_with("lost contact with the coordinator for 1.5s:")
        );
    }

    #[test]
    fn seconds_are_rounded_down() {
        let ms = Duration::from_millis;
        assert_eq!(seconds(ms(1003)), "1s");
        assert_eq!(seconds(ms(1099)), "1s");
        assert_eq!(seconds(ms(1500)), "1.5s");
        assert_eq!(seconds(ms(250)), "0.2s");
        assert_eq!(seconds(ms(15_700)), "15s");
        assert_eq!(seconds(Duration::ZERO), "0s");
    }

    #[test]
    fn a_stopped_pass_is_not_a_pass() {
        let passed = RunResult {
            exit_code: Some(0),
            ..RunResult::new(Outcome::Passed)
        };
        let r = settle(passed.clone(), Some(StopReason::Interrupted)).unwrap();
        assert_eq!(r.outcome, Outcome::Interrupted);
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(
            r.error,
            "interrupted: the agent was shut down (exit code 0)"
        );

        let bare = settle(RunResult::new(Outcome::Passed), Some(StopReason::Cancelled)).unwrap();
        assert_eq!(bare.error, "cancelled: an operator asked for it");
    }

    #[test]
    fn a_run_that_finished_on_its_own_or_was_not_stopped_stands() {
        let finished = RunResult {
            finished_on_its_own: true,
            exit_code: Some(1),
            ..RunResult::new(Outcome::Failed)
        };
        assert_eq!(
            settle(finished.clone(), Some(StopReason::Cancelled)),
            Some(finished.clone())
        );
        assert_eq!(settle(killed(), None), Some(killed()));
    }

    #[test]
    fn the_first_reason_wins_but_a_lost_lease_overrides() {
        let stop = Stop::default();
        let token = stop.token();
        assert_eq!(stop.reason(), None);
        assert!(stop.request(StopReason::Cancelled));
        assert!(token.is_cancelled());
        assert!(!stop.request(StopReason::Interrupted));
        assert!(!stop.request(StopReason::Timeout(Duration::from_secs(1))));
        assert_eq!(stop.reason(), Some(StopReason::Cancelled));
        assert!(stop.request(StopReason::LeaseLost));
        assert!(!stop.request(StopReason::Cancelled));
        assert_eq!(stop.reason(), Some(StopReason::LeaseLost));
    }

    #[test]
    fn only_a_lost_lease_or_lost_contact_fences() {
        let stop = Stop::default();
        stop.request(StopReason::Cancelled);
        stop.request(StopReason::Interrupted);
        stop.request(StopReason::Timeout(Duration::from_secs(1)));
        assert!(!stop.fenced().is_cancelled());
        // Fenced though the first reason stays the recorded one.
        stop.request(StopReason::ContactLost(Duration::from_secs(1)));
        assert!(stop.fenced().is_cancelled());
        assert_eq!(stop.reason(), Some(StopReason::Cancelled));

        let stop = Stop::default();
        stop.request(StopReason::LeaseLost);
        assert!(stop.fenced().is_cancelled());
    }
}
