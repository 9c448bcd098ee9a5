//! What runs a job: the [`Runner`] trait and the [`RunResult`] it returns.
//!
//! The agent loop (leasing, heartbeating, reporting) knows nothing about how a
//! scenario is run. Child processes ([`crate::ProcessRunner`]) are the usual
//! way, but a harness written in Rust can run scenarios in-process by
//! implementing this trait, or by wrapping a closure with [`runner_fn`],
//! without touching the loop.
//!
//! The trait returns a boxed future rather than using `async fn` so that it
//! stays object safe: the agent holds an `Arc<dyn Runner>` and the binary
//! picks the implementation at run time.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use benchq::proto::Outcome;
use tokio_util::sync::CancellationToken;

use crate::job::LeasedJob;

/// A `Send` future in a box: what [`Runner::run`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs one leased job to its end.
///
/// The agent cancels `cancel` when the job must stop early: an operator
/// cancelled it, it ran past its timeout, the agent is being interrupted, or
/// the lease was lost (another agent may already be running the job). A
/// runner should then stop promptly and return what it has (exit code,
/// output, metrics). It need not know why: the agent reports a stopped run
/// with the outcome of the reason (`CANCELLED`, `ERROR` for a timeout,
/// `INTERRUPTED`), and nothing at all after a lease loss. A run that returns
/// after `cancel` fired counts as stopped unless it sets
/// [`RunResult::finished_on_its_own`].
///
/// A runner never fails: anything that went wrong is an [`Outcome::Error`]
/// result with an `error` message, which the coordinator retries while
/// attempts are left.
///
/// # Example
///
/// An in-process runner, written as a closure:
///
/// ```
/// use std::sync::Arc;
/// use benchq::proto::Outcome;
/// use benchq_agent::{LeasedJob, RunResult, Runner, runner_fn};
///
/// let runner: Arc<dyn Runner> = Arc::new(runner_fn(|job: LeasedJob, cancel| async move {
///     tokio::select! {
///         // Stopped: the agent decides what to report.
///         _ = cancel.cancelled() => RunResult::error("stopped"),
///         _ = async { /* run job.spec.scenario_id here */ } => RunResult::new(Outcome::Passed),
///     }
/// }));
/// # let _ = runner;
/// ```
pub trait Runner: Send + Sync + 'static {
    /// Runs `job` until it finishes or `cancel` is cancelled.
    fn run(&self, job: LeasedJob, cancel: CancellationToken) -> BoxFuture<'_, RunResult>;
}

/// How a run ended, as reported to the coordinator by `Complete`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// PASSED or FAILED when the scenario ran (a result, never retried);
    /// ERROR when it could not run (retried while attempts are left).
    pub outcome: Outcome,
    /// The exit code of the runner's process, when there was one and it exited.
    pub exit_code: Option<i32>,
    /// What went wrong, for ERROR; notes (e.g. an unreadable result file)
    /// otherwise. The agent cuts it to [`benchq::report::MAX_ERROR`] bytes,
    /// keeping the start.
    pub error: String,
    /// The end of the run's output, at most [`crate::OUTPUT_TAIL_MAX`] bytes
    /// (the agent truncates longer tails, keeping the end).
    pub output_tail: String,
    /// A JSON document the run produced (scores, token counts, …). One the
    /// coordinator could not store (see [`benchq::report::check_metrics`])
    /// is dropped by the agent, with a note in `error`.
    pub metrics_json: Option<String>,
    /// How long the run took. Left at zero, the agent fills in its own
    /// measurement of the `run` call.
    pub duration: Duration,
    /// The job ended by itself, not because `cancel` fired: e.g. the child
    /// process had already exited when the runner saw the cancel. The agent
    /// then reports this result as it is, even if it had asked for a stop
    /// meanwhile. Left `false` (runners that cannot tell), a run that returns
    /// after `cancel` fired is taken as stopped.
    pub finished_on_its_own: bool,
}

impl RunResult {
    /// A result with this outcome and nothing else.
    pub fn new(outcome: Outcome) -> Self {
        RunResult {
            outcome,
            exit_code: None,
            error: String::new(),
            output_tail: String::new(),
            metrics_json: None,
            duration: Duration::ZERO,
            finished_on_its_own: false,
        }
    }

    /// An [`Outcome::Error`] result saying what went wrong.
    pub fn error(message: impl Into<String>) -> Self {
        RunResult {
            error: message.into(),
            ..RunResult::new(Outcome::Error)
        }
    }
}

/// A [`Runner`] made from a closure; see [`runner_fn`].
pub struct FnRunner<F>(F);

/// Wraps `f(job, cancel) -> impl Future<Output = RunResult>` as a [`Runner`]:
/// the shortest way to run scenarios in-process.
pub fn runner_fn<F, Fut>(f: F) -> FnRunner<F>
where
    F: Fn(LeasedJob, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RunResult> + Send + 'static,
{
    FnRunner(f)
}

impl<F, Fut> Runner for FnRunner<F>
where
    F: Fn(LeasedJob, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RunResult> + Send + 'static,
{
    fn run(&self, job: LeasedJob, cancel: CancellationToken) -> BoxFuture<'_, RunResult> {
        Box::pin((self.0)(job, cancel))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A struct runner with state of its own, used through `Arc<dyn Runner>`
    /// exactly as the agent uses it.
    struct Counting {
        runs: AtomicUsize,
    }

    impl Runner for Counting {
        fn run(&self, job: LeasedJob, cancel: CancellationToken) -> BoxFuture<'_, RunResult> {
            Box::pin(async move {
                let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
                if cancel.is_cancelled() {
                    return RunResult::error("cancelled before start");
                }
                RunResult {
                    output_tail: format!("run {n} of {}", job.spec.scenario_id),
                    ..RunResult::new(Outcome::Passed)
                }
            })
        }
    }

    fn job(scenario: &str) -> LeasedJob {
        LeasedJob {
            id: "j".into(),
            spec: benchq::proto::JobSpec {
                scenario_id: scenario.into(),
                ..Default::default()
            },
            attempt: 1,
            namespace: String::new(),
        }
    }

    #[tokio::test]
    async fn struct_runner_behind_dyn() {
        let counting = Arc::new(Counting {
            runs: AtomicUsize::new(0),
        });
        let runner: Arc<dyn Runner> = counting.clone();
        let r = runner.run(job("a"), CancellationToken::new()).await;
        assert_eq!(r.outcome, Outcome::Passed);
        assert_eq!(r.output_tail, "run 1 of a");
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        let r = runner.run(job("b"), cancelled).await;
        assert_eq!(r.outcome, Outcome::Error);
        assert_eq!(counting.runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn closure_runner_sees_job_and_cancellation() {
        let runner: Arc<dyn Runner> = Arc::new(runner_fn(
            |job: LeasedJob, cancel: CancellationToken| async move {
                if job.spec.scenario_id == "wait" {
                    cancel.cancelled().await;
                    return RunResult::error("cancelled");
                }
                RunResult {
                    exit_code: Some(0),
                    metrics_json: Some(format!("{{\"attempt\":{}}}", job.attempt)),
                    ..RunResult::new(Outcome::Passed)
                }
            },
        ));
        let r = runner.run(job("quick"), CancellationToken::new()).await;
        assert_eq!(r.metrics_json.as_deref(), Some("{\"attempt\":1}"));

        let cancel = CancellationToken::new();
        let pending = tokio::spawn({
            let runner = runner.clone();
            let cancel = cancel.clone();
            async move { runner.run(job("wait"), cancel).await }
        });
        cancel.cancel();
        let r = pending.await.unwrap();
        assert_eq!(r, RunResult::error("cancelled"));
    }
}
