//! The agent loop: lease a job for a slot, run it, keep the lease alive while
//! it runs, report the outcome, repeat.
//!
//! Each namespace slot gets its own worker running one job at a time: a slot
//! is a namespace that only one scenario may use at once, so slots are the
//! agent's unit of concurrency, and a slow job on one slot never holds back
//! another.
//!
//! Heartbeats run in a task of their own rather than between polls of the
//! job, so that a runner that blocks its thread or hogs the executor cannot
//! make the agent lose its lease. The coordinator fences everything by lease
//! token: once a heartbeat says the lease is gone, the job may already run
//! elsewhere, so the agent stops its copy and keeps its result to itself.
//!
//! **The agent also fences itself.** The coordinator's refusal only arrives
//! if the coordinator can be reached. An agent cut off from it (a network
//! partition, a coordinator down for longer than a TTL) would otherwise run
//! its job on while the coordinator's reaper takes the lease back and
//! another agent starts the same job in the same namespace. So the heartbeat
//! task keeps the time at which the last *acknowledged* heartbeat was *sent*
//! (at first: when the lease arrived). The coordinator cannot let the lease
//! expire less than one TTL after that instant, since it renewed the lease
//! when it handled that heartbeat, which was later. Once half a TTL has
//! passed without an acknowledgement, the agent stops the job
//! ([`StopReason::ContactLost`]) and gives the runner at most a quarter of a
//! TTL to end it (its own grace period, cut short by aborting the runner,
//! which kills a [`crate::ProcessRunner`]'s processes). The job is then dead
//! by three quarters of a TTL, before the lease can lapse. Why these fractions:
//! - *Half a TTL* lets a job ride out short outages. Heartbeats go out every
//!   third of a TTL and are retried quickly after a failure, so an outage is
//!   survived when it ends within half a TTL of the last acknowledged
//!   heartbeat: always when it is shorter than a sixth of a TTL, and up to
//!   half a TTL when it starts just after a heartbeat.
//! - *A quarter of a TTL* for the stop leaves the last quarter as a margin:
//!   for the kill to land, for the lease's reply to have been in transit
//!   (the lease's own instant is taken when its reply *arrives*: the
//!   coordinator grants it as it replies, and a long poll makes the time the
//!   request was sent useless), and for clocks that run at slightly
//!   different rates.
//!
//! After fencing, the agent still tries to report `ERROR` (retried as an
//! infrastructure error), for [`AgentConfig::interrupt_report_timeout`] at
//! most; a refusal because the lease was taken back meanwhile is expected.
//!
//! The coordinator may come and go (deploys, failovers): every call is
//! retried with backoff, and the agent logs an outage once rather than once
//! per retry. Only an interrupted shutdown bounds that: an operator who asked
//! the agent to stop now gets it to stop within the jobs' grace period plus
//! [`AgentConfig::interrupt_report_timeout`], reachable coordinator or not.
//! A coordinator that refuses the agent's credential (UNAUTHENTICATED,
//! PERMISSION_DENIED) is not an outage: the agent drains and
//! [`Agent::try_run`] returns [`AgentError::CredentialRefused`].
//!
//! Reports are made to fit what the coordinator accepts
//! ([`benchq::report`]): metrics it could not store are dropped with a note,
//! the error and the output tail are cut to their limits. Should the
//! coordinator still refuse a report as invalid or too large, the agent sends
//! the outcome alone, so that a result is never lost over its details.
//!
//! Every stop of a running job goes through one [`Stop`]: whoever stops it
//! (the heartbeat task on a cancel request or a lost lease, the job's timer,
//! the shutdown) records why, then cancels the runner; the reported outcome
//! follows from the reason (see [`crate::stop`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use benchq::client::{Client, ConnectArgs, ConnectError, connect_lazy};
use benchq::proto::{
    BusySlot, CompleteRequest, HeartbeatRequest, JobSpec, Lease, LeaseRequest, Outcome,
};
use benchq::report::{MAX_ERROR, MAX_OUTPUT_TAIL, check_metrics, keep_head, keep_tail};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::job::LeasedJob;
use crate::runner::{RunResult, Runner};
use crate::shutdown::Shutdown;
use crate::stop::{Stop, StopReason, seconds, settle};

/// How much longer than the long-poll wait a Lease call may take before the
/// agent gives up on it (the coordinator answers by the end of the wait).
const LEASE_SLACK: Duration = Duration::from_secs(15);

/// The shortest time between two Lease calls of one slot when the coordinator
/// answers "no job" at once (e.g. with a zero wait): no busy loop.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long one Complete call may take before it is retried.
const COMPLETE_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The heartbeat period when a lease names neither interval nor TTL.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// The first retry of a failed heartbeat; retries double up to the
/// heartbeat period.
const HEARTBEAT_RETRY: Duration = Duration::from_millis(100);

/// A job's timeout when its spec says 0 (the coordinator's default too).
pub(crate) const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);

/// What an agent serves and how.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The coordinator's URL (`http://`/`https://host:port`, or `host:port`).
    pub coordinator: String,
    /// Token and TLS settings for reaching it.
    pub connection: ConnectArgs,
    /// Who this agent is in job records; see [`default_agent_id`].
    pub agent_id: String,
    /// The namespace slots this agent owns: one worker, one job at a time, each.
    pub slots: Vec<i32>,
    /// Only lease this tenant's jobs; empty for any tenant.
    pub tenant_id: String,
    /// How long one Lease call waits for a job (the coordinator caps it).
    pub lease_wait: Duration,
    /// How long to keep retrying a Complete that cannot get through before
    /// giving up on that result (the lease then expires and the job is retried).
    pub report_timeout: Duration,
    /// How long a drain may last before the running jobs are interrupted;
    /// `None` waits for them however long they take.
    pub drain_timeout: Option<Duration>,
    /// Once interrupted, how long each result may still take to get through
    /// before it is given up on (logged, and left to the lease's expiry), so
    /// that an interrupted agent exits even when the coordinator is gone.
    pub interrupt_report_timeout: Duration,
}

impl AgentConfig {
    /// A configuration with the defaults: any tenant, 30 s lease wait, results
    /// retried for 10 minutes (10 seconds once interrupted), drains without
    /// a time limit.
    pub fn new(
        coordinator: impl Into<String>,
        agent_id: impl Into<String>,
        slots: Vec<i32>,
    ) -> Self {
        AgentConfig {
            coordinator: coordinator.into(),
            connection: ConnectArgs::default(),
            agent_id: agent_id.into(),
            slots,
            tenant_id: String::new(),
            lease_wait: Duration::from_secs(30),
            report_timeout: Duration::from_secs(600),
            drain_timeout: None,
            interrupt_report_timeout: Duration::from_secs(10),
        }
    }
}

/// `{hostname}-{pid}`: unique on a fleet as long as hostnames are, and tells
/// an operator where to look.
pub fn default_agent_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes at
    // most that many.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let host = if host.is_empty() {
        "agent".to_string()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

/// Why an agent could not be set up, or could not go on.
#[derive(Debug)]
pub enum AgentError {
    /// The coordinator URL is not usable.
    Connect(ConnectError),
    /// The configuration makes no sense (no slots, a negative slot, no agent id).
    Config(String),
    /// The coordinator refused this agent's credential (`UNAUTHENTICATED`:
    /// no token, an unknown or revoked one; `PERMISSION_DENIED`: a token
    /// without the agent role, or for another tenant). Retrying cannot help:
    /// an operator has to fix the token.
    CredentialRefused {
        /// `Unauthenticated` or `PermissionDenied`.
        code: Code,
        /// What the coordinator said.
        message: String,
    },
    /// The connection to the coordinator is set up wrong (TLS against
    /// plaintext, an untrusted or expired certificate, a missing client
    /// certificate), seen before any call ever succeeded: retrying cannot help.
    Misconfigured(String),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Connect(e) => e.fmt(f),
            AgentError::Config(msg) => write!(f, "invalid agent configuration: {msg}"),
            AgentError::CredentialRefused { code, message } => write!(
                f,
                "the coordinator refused this agent's credential: {code:?}: {message}"
            ),
            AgentError::Misconfigured(what) => write!(f, "cannot talk to the coordinator: {what}"),
        }
    }
}

impl std::error::Error for AgentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AgentError::Connect(e) => Some(e),
            AgentError::Config(_)
            | AgentError::CredentialRefused { .. }
            | AgentError::Misconfigured(_) => None,
        }
    }
}

impl From<ConnectError> for AgentError {
    fn from(e: ConnectError) -> Self {
        AgentError::Connect(e)
    }
}

/// An agent: workers for its slots, sharing one connection and one runner.
pub struct Agent {
    config: AgentConfig,
    client: Client,
    runner: Arc<dyn Runner>,
    /// Set while the coordinator is unreachable, so an outage is logged once
    /// by whichever worker notices first, and its end once.
    outage: AtomicBool,
    /// Set when the coordinator refused the agent's credential: the first
    /// worker to hear it logs it and drains the agent; `try_run` returns it.
    refused: OnceLock<(Code, String)>,
    /// Set when the connection turned out to be set up wrong before any
    /// call succeeded: the agent stops instead of retrying forever.
    misconfigured: OnceLock<String>,
    /// Some call has succeeded: connection trouble from now on is an outage.
    ever_reached: AtomicBool,
}

impl Agent {
    /// An agent for `config` running jobs with `runner`. Does not connect: the
    /// connection is made on first use and remade whenever the coordinator
    /// went away. Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`AgentError::Connect`] for a malformed URL, [`AgentError::Config`] for
    /// no slots, a negative slot or an empty agent id.
    pub fn new(mut config: AgentConfig, runner: Arc<dyn Runner>) -> Result<Self, AgentError> {
        if config.agent_id.trim().is_empty() {
            return Err(AgentError::Config("the agent id is empty".into()));
        }
        config.slots.sort_unstable();
        config.slots.dedup();
        if config.slots.is_empty() {
            return Err(AgentError::Config("no slots to serve".into()));
        }
        if let Some(slot) = config.slots.iter().find(|s| **s < 0) {
            return Err(AgentError::Config(format!("slot {slot} is negative")));
        }
        let client = connect_lazy(config.connection.options(&config.coordinator))?;
        Ok(Agent {
            config,
            client,
            runner,
            outage: AtomicBool::new(false),
            refused: OnceLock::new(),
            misconfigured: OnceLock::new(),
            ever_reached: AtomicBool::new(false),
        })
    }

    /// The configuration in force (slots sorted and deduplicated).
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Serves every slot until `shutdown` says to stop (see [`Shutdown`]);
    /// a plain `CancellationToken` converts into a drain-only `Shutdown`.
    ///
    /// On a drain: no new leases (a pending long poll is abandoned), running
    /// jobs run to their end and are reported. On an interrupt (asked for, or
    /// [`AgentConfig::drain_timeout`] passed): running jobs are stopped as a
    /// cancelled job is and reported `INTERRUPTED`, each report given up after
    /// [`AgentConfig::interrupt_report_timeout`]. Returns once every slot is idle.
    ///
    /// A job leased by a long poll abandoned at that instant is not lost: its
    /// lease expires unheartbeated and the coordinator hands it out again.
    ///
    /// Also returns, after draining, when the coordinator refuses the agent's
    /// credential; that was logged, and [`Agent::try_run`] tells it apart.
    pub async fn run(self, shutdown: impl Into<Shutdown>) {
        // The refusal has been logged where it happened.
        let _ = self.try_run(shutdown).await;
    }

    /// [`Agent::run`], saying why it returned: `Ok` when `shutdown` asked
    /// for it.
    ///
    /// # Errors
    ///
    /// [`AgentError::CredentialRefused`] when the coordinator refused a
    /// Lease with `UNAUTHENTICATED` or `PERMISSION_DENIED`: the agent then
    /// takes no more jobs, lets the running ones finish (a refused heartbeat
    /// stops them) and returns, rather than retrying forever with a
    /// credential that cannot work. `shutdown` is left as it was.
    pub async fn try_run(self, shutdown: impl Into<Shutdown>) -> Result<(), AgentError> {
        let outer = shutdown.into();
        // The agent drains itself on a refused credential without touching
        // the caller's drain token; an interrupt (the caller's or the drain
        // timeout's) goes through the caller's handle as before.
        let shutdown = Shutdown::from_tokens(outer.drain.child_token(), outer.interrupt.clone());
        info!(
            "agent {} serving slots {:?} of {}",
            self.config.agent_id, self.config.slots, self.config.coordinator
        );
        let agent = Arc::new(self);
        let control = tokio::spawn(control_shutdown(
            shutdown.clone(),
            agent.config.drain_timeout,
        ));
        let _stop_control = AbortOnDrop(control.abort_handle());
        let mut workers = JoinSet::new();
        for &slot in &agent.config.slots {
            workers.spawn(agent.clone().serve_slot(slot, shutdown.clone()));
        }
        while let Some(done) = workers.join_next().await {
            if let Err(e) = done {
                error!("a slot worker died: {e}");
            }
        }
        if let Some(what) = agent.misconfigured.get() {
            return Err(AgentError::Misconfigured(what.clone()));
        }
        if let Some((code, message)) = agent.refused.get() {
            info!(
                "agent {} stopped: every slot drained after its credential was refused",
                agent.config.agent_id
            );
            return Err(AgentError::CredentialRefused {
                code: *code,
                message: message.clone(),
            });
        }
        info!(
            "agent {} stopped: every slot drained",
            agent.config.agent_id
        );
        Ok(())
    }

    /// One slot's worker: lease, run, report, until shutdown.
    async fn serve_slot(self: Arc<Self>, slot: i32, shutdown: Shutdown) {
        let mut client = self.client.clone();
        let mut backoff = Backoff::default();
        let mut busy = BusyWarnings::default();
        let wait_ms = u32::try_from(self.config.lease_wait.as_millis()).unwrap_or(u32::MAX);
        while !shutdown.is_draining() {
            let request = LeaseRequest {
                agent_id: self.config.agent_id.clone(),
                slots: vec![slot],
                wait_ms,
                tenant_id: self.config.tenant_id.clone(),
            };
            let asked = Instant::now();
            let call = with_timeout(self.config.lease_wait + LEASE_SLACK, client.lease(request));
            let reply = tokio::select! {
                biased;
                _ = shutdown.draining() => break,
                reply = call => reply,
            };
            let delay = match reply {
                Ok(reply) => {
                    backoff.reset();
                    self.reachable();
                    let reply = reply.into_inner();
                    match reply.lease {
                        Some(lease) => {
                            busy.clear();
                            // See the module docs: the lease's own instant.
                            let arrived = Instant::now();
                            self.run_lease(&mut client, slot, lease, arrived, &shutdown)
                                .await;
                            continue;
                        }
                        None => {
                            for warning in busy.update(&reply.busy_slots) {
                                warn!("{warning}");
                            }
                            MIN_POLL_INTERVAL.saturating_sub(asked.elapsed())
                        }
                    }
                }
                Err(status) if refuses_credential(status.code()) => {
                    self.credential_refused(&status, &shutdown);
                    break;
                }
                Err(status) => {
                    let problem = (!self.ever_reached.load(Ordering::SeqCst))
                        .then(|| {
                            benchq::client::connection_problem(&self.config.coordinator, &status)
                        })
                        .flatten();
                    if let Some(problem) = problem {
                        self.misconfigured(problem, &status, &shutdown);
                        break;
                    }
                    self.lease_failed(&status);
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = shutdown.draining() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        debug!("slot {slot}: no longer taking leases");
    }

    /// Runs one leased job to its end (or until it is stopped) and reports
    /// it, unless the lease was lost. `arrived`: when the Lease reply came.
    async fn run_lease(
        &self,
        client: &mut Client,
        slot: i32,
        lease: Lease,
        arrived: Instant,
        shutdown: &Shutdown,
    ) {
        let job = LeasedJob::from(&lease);
        info!(
            "leased job {} scenario {} attempt {} on slot {} namespace {}",
            job.id,
            job.spec.scenario_id,
            job.attempt,
            slot,
            job.namespace_display()
        );
        let timeout = job_timeout(&job.spec);
        let timing = LeaseTiming::of(&lease);
        let stop = Arc::new(Stop::default());
        let stop_heartbeat = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            client.clone(),
            lease.lease_token.clone(),
            timing,
            arrived,
            job.id.clone(),
            stop.clone(),
            stop_heartbeat.clone(),
        ));
        let _stop_heartbeat_on_drop = stop_heartbeat.clone().drop_guard();

        // The runner gets a task of its own: a panic in it becomes an ERROR
        // result instead of taking the slot's worker down with it.
        let started = Instant::now();
        let mut run = tokio::spawn({
            let runner = self.runner.clone();
            let job = job.clone();
            let cancel = stop.token();
            async move { runner.run(job, cancel).await }
        });
        let _abort_run_on_drop = AbortOnDrop(run.abort_handle());
        let time_is_up = tokio::time::sleep(timeout);
        tokio::pin!(time_is_up);
        // Armed once the job is fenced: when the runner must have returned.
        let overdue = tokio::time::sleep(Duration::MAX);
        tokio::pin!(overdue);
        let fenced = stop.fenced();
        let (mut timed_out, mut interrupted, mut fencing) = (false, false, false);
        let joined = loop {
            tokio::select! {
                joined = &mut run => break joined,
                _ = &mut time_is_up, if !timed_out => {
                    timed_out = true;
                    if stop.request(StopReason::Timeout(timeout)) {
                        warn!("job {}: ran longer than its {}s timeout; stopping it", job.id, timeout.as_secs());
                    }
                }
                _ = shutdown.interrupted(), if !interrupted => {
                    interrupted = true;
                    if stop.request(StopReason::Interrupted) {
                        info!("job {}: interrupted; stopping it", job.id);
                    }
                }
                _ = fenced.cancelled(), if !fencing => {
                    fencing = true;
                    overdue
                        .as_mut()
                        .reset(tokio::time::Instant::now() + timing.stop_within());
                }
                _ = &mut overdue, if fencing => {
                    // Dropping a ProcessRunner's run kills its processes.
                    run.abort();
                    let limit = seconds(timing.stop_within());
                    break match (&mut run).await {
                        Err(e) if e.is_cancelled() => {
                            warn!("job {}: the runner did not stop within {limit}; aborted it", job.id);
                            Ok(RunResult::error(format!(
                                "the runner did not stop within {limit}: aborted"
                            )))
                        }
                        finished => finished,
                    };
                }
            }
        };
        // Read as the run returns: a stop asked for later found nothing to stop.
        let stopped = stop.reason();
        let mut result = match joined {
            Ok(result) => result,
            Err(e) => RunResult::error(format!("runner failed: {}", join_error_text(e))),
        };
        stop_heartbeat.cancel();
        let _ = heartbeat.await;

        let measured = started.elapsed();
        if result.duration.is_zero() {
            result.duration = measured;
        }
        match result.outcome {
            Outcome::Unspecified => {
                result.outcome = Outcome::Error;
                if result.error.is_empty() {
                    result.error = "the runner returned no outcome".into();
                }
            }
            Outcome::Reclaimed => {
                result.outcome = Outcome::Error;
                let said = std::mem::take(&mut result.error);
                result.error = format!(
                    "the runner returned RECLAIMED, which only the coordinator records{}{said}",
                    if said.is_empty() { "" } else { ": " },
                );
            }
            _ => {}
        }
        let how = match stopped.filter(|_| !result.finished_on_its_own) {
            Some(reason) => format!("stopped ({})", reason.describe()),
            None => "finished".to_string(),
        };
        // A lease lost after the run returned also means: report nothing.
        let lease_lost = stop.reason() == Some(StopReason::LeaseLost);
        let Some(mut result) = settle(result, stopped).filter(|_| !lease_lost) else {
            warn!(
                "job {} scenario {} {how}: result not reported: lease lost",
                job.id, job.spec.scenario_id
            );
            return;
        };
        if let Some(note) = check_result_metrics(&mut result) {
            warn!("job {}: {note}", job.id);
        }
        fit_limits(&mut result);
        let exit = match result.exit_code {
            Some(code) => format!("exit code {code}"),
            None => "no exit code".to_string(),
        };
        let error = if result.error.is_empty() {
            String::new()
        } else {
            format!(": {}", result.error)
        };
        info!(
            "job {} scenario {} {how}: {} ({exit}, {:.1?}){error}",
            job.id,
            job.spec.scenario_id,
            result.outcome.name(),
            result.duration
        );
        // Out of contact, the lease is probably gone already: try for a
        // short while only, as when interrupted.
        let contact_lost =
            matches!(stopped, Some(StopReason::ContactLost(_))) && !result.finished_on_its_own;
        let patience = if contact_lost {
            self.config.interrupt_report_timeout
        } else {
            self.config.report_timeout
        };
        let report = Report {
            lease_token: &lease.lease_token,
            job: &job,
            measured,
            patience,
            contact_lost,
        };
        self.report(client, report, result, shutdown).await;
    }

    /// Sends the result, retrying through coordinator outages: Complete is
    /// idempotent per lease token, so a retry after a lost reply is harmless.
    ///
    /// Gives up after `report.patience`, or, once the agent is interrupted,
    /// [`AgentConfig::interrupt_report_timeout`] after noticing it (the lease
    /// then expires on the coordinator, which retries the job).
    ///
    /// A report refused as invalid or too large (INVALID_ARGUMENT,
    /// RESOURCE_EXHAUSTED, OUT_OF_RANGE) is sent again once, as its outcome,
    /// exit code and the agent's own measure of the duration, with an error
    /// saying what the coordinator refused: the outcome is what matters.
    async fn report(
        &self,
        client: &mut Client,
        report: Report<'_>,
        result: RunResult,
        shutdown: &Shutdown,
    ) {
        let Report {
            lease_token,
            job,
            measured,
            patience,
            contact_lost,
        } = report;
        let outcome = result.outcome;
        let mut request = CompleteRequest {
            lease_token: lease_token.to_string(),
            outcome: outcome as i32,
            exit_code: result.exit_code,
            duration_ms: u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
            error: result.error,
            output_tail: result.output_tail,
            metrics_json: result.metrics_json.unwrap_or_default(),
        };
        let mut minimal = false;
        let began = Instant::now();
        let mut give_up = began + patience;
        let mut hurried = false;
        let mut backoff = Backoff::default();
        let mut retrying = false;
        loop {
            if !hurried && shutdown.is_interrupted() {
                hurried = true;
                give_up = give_up.min(Instant::now() + self.config.interrupt_report_timeout);
            }
            let left = give_up.saturating_duration_since(Instant::now());
            let call = with_timeout(
                COMPLETE_CALL_TIMEOUT
                    .min(left)
                    .max(Duration::from_millis(1)),
                client.complete(request.clone()),
            );
            let reply = tokio::select! {
                reply = call => reply,
                // Interrupted while a call hangs: start again, with the shorter limit.
                _ = shutdown.interrupted(), if !hurried => continue,
            };
            let status = match reply {
                Ok(reply) => {
                    let state = benchq::proto::JobState::try_from(reply.into_inner().state)
                        .unwrap_or_default();
                    if retrying {
                        info!("job {}: result reported after retries", job.id);
                    }
                    debug!("job {}: reported; now {}", job.id, state.name());
                    return;
                }
                Err(status) => status,
            };
            match status.code() {
                Code::FailedPrecondition if contact_lost => {
                    info!(
                        "job {}: result refused: the coordinator took the lease back meanwhile, as expected ({})",
                        job.id,
                        status.message()
                    );
                    return;
                }
                Code::FailedPrecondition => {
                    warn!(
                        "job {}: result refused: lease no longer held ({})",
                        job.id,
                        status.message()
                    );
                    return;
                }
                Code::InvalidArgument | Code::ResourceExhausted | Code::OutOfRange if !minimal => {
                    error!(
                        "job {}: the coordinator refused the full report ({}); sending the outcome alone",
                        job.id,
                        status_text(&status)
                    );
                    request = minimal_report(&request, status.message(), measured);
                    minimal = true;
                    continue;
                }
                code if !is_transient(code) => {
                    error!(
                        "job {}: result refused{}: {code:?}: {}",
                        job.id,
                        if minimal { " (the outcome alone)" } else { "" },
                        status.message()
                    );
                    return;
                }
                _ => {}
            }
            if Instant::now() >= give_up {
                error!(
                    "job {}: giving up reporting {} after {:.1?}{}: {}; the coordinator will take the lease back when it expires",
                    job.id,
                    outcome.name(),
                    began.elapsed(),
                    if hurried { " (interrupted)" } else { "" },
                    status_text(&status)
                );
                return;
            }
            if !retrying {
                warn!(
                    "job {}: could not report the result ({}); retrying",
                    job.id,
                    status_text(&status)
                );
                retrying = true;
            }
            let pause = backoff
                .next_delay()
                .min(give_up.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.interrupted(), if !hurried => {}
            }
        }
    }

    fn lease_failed(&self, status: &Status) {
        if is_transient(status.code()) {
            if !self.outage.swap(true, Ordering::SeqCst) {
                warn!(
                    "coordinator {} unreachable ({}); retrying with backoff",
                    self.config.coordinator,
                    status_text(status)
                );
            }
        } else {
            error!("lease refused: {}", status_text(status));
        }
    }

    /// A Lease refused for the credential: logged once, and the whole agent
    /// drains (see [`Agent::try_run`]).
    fn credential_refused(&self, status: &Status, shutdown: &Shutdown) {
        if self
            .refused
            .set((status.code(), status.message().to_string()))
            .is_ok()
        {
            error!(
                "the coordinator refused this agent's credential: {}; taking no more jobs and stopping once the running ones are done (check the agent's token: it needs the agent role)",
                status_text(status)
            );
        }
        shutdown.drain.cancel();
    }

    /// The connection is set up wrong: logged once, and the whole agent
    /// drains and stops (see [`Agent::try_run`]).
    fn misconfigured(&self, problem: &str, status: &Status, shutdown: &Shutdown) {
        if self.misconfigured.set(problem.to_string()).is_ok() {
            error!(
                "cannot talk to the coordinator {}: {problem} ({})",
                self.config.coordinator,
                status_text(status)
            );
        }
        shutdown.drain.cancel();
    }

    fn reachable(&self) {
        self.ever_reached.store(true, Ordering::SeqCst);
        if self.outage.swap(false, Ordering::SeqCst) {
            info!("coordinator {} reachable again", self.config.coordinator);
        }
    }
}

/// What [`Agent::report`] needs besides the result.
struct Report<'a> {
    lease_token: &'a str,
    job: &'a LeasedJob,
    /// The agent's own measure of the run, for the minimal report.
    measured: Duration,
    /// How long to keep retrying.
    patience: Duration,
    /// The job was stopped for lost contact: a refusal for a lost lease is
    /// expected.
    contact_lost: bool,
}

/// The report sent when the coordinator refused the full one: the outcome
/// and exit code, the agent's own measure of the duration, and why.
fn minimal_report(full: &CompleteRequest, refusal: &str, measured: Duration) -> CompleteRequest {
    let error = format!("the coordinator refused the full report: {refusal}");
    CompleteRequest {
        lease_token: full.lease_token.clone(),
        outcome: full.outcome,
        exit_code: full.exit_code,
        duration_ms: u64::try_from(measured.as_millis()).unwrap_or(u64::MAX),
        error: keep_head(&error, MAX_ERROR).to_string(),
        output_tail: String::new(),
        metrics_json: String::new(),
    }
}

/// Drops metrics the coordinator could not store (whatever the runner), with
/// a note at the end of the result's error, which is cut short if need be so
/// that the note fits within [`MAX_ERROR`]; returns the note.
fn check_result_metrics(result: &mut RunResult) -> Option<String> {
    let metrics = result.metrics_json.take()?;
    match check_metrics(&metrics) {
        Ok(_) => {
            result.metrics_json = Some(metrics);
            None
        }
        Err(why) => {
            let note = format!("metrics dropped: the runner's metrics_json {why}");
            if !result.error.is_empty() {
                let room = MAX_ERROR.saturating_sub(note.len() + 2);
                if result.error.len() > room {
                    result.error = keep_head(&result.error, room).to_string();
                }
                result.error.push_str("; ");
            }
            result.error.push_str(&note);
            Some(note)
        }
    }
}

/// Cuts the error (keeping its start) and the output tail (keeping its end)
/// to what a report may carry.
fn fit_limits(result: &mut RunResult) {
    if result.error.len() > MAX_ERROR {
        result.error = keep_head(&result.error, MAX_ERROR).to_string();
    }
    if result.output_tail.len() > MAX_OUTPUT_TAIL {
        result.output_tail = keep_tail(&result.output_tail, MAX_OUTPUT_TAIL).to_string();
    }
}

/// How a lease must be kept alive, from the Lease reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeaseTiming {
    /// The heartbeat period.
    every: Duration,
    /// How long the coordinator keeps the lease without a heartbeat.
    ttl: Duration,
}

impl LeaseTiming {
    /// The lease's TTL (three heartbeat periods when it names none) and its
    /// heartbeat interval, made at most a third of the TTL so that fencing
    /// never fires between two heartbeats that get through.
    fn of(lease: &Lease) -> Self {
        let every = heartbeat_interval(lease);
        let ttl = if lease.lease_ttl_ms > 0 {
            Duration::from_millis(lease.lease_ttl_ms.into())
        } else {
            every * 3
        };
        LeaseTiming {
            every: every.min(ttl / 3).max(Duration::from_millis(1)),
            ttl,
        }
    }

    /// How long without an acknowledged heartbeat before the agent stops the
    /// job itself: half the TTL (see the module docs).
    fn fence_after(&self) -> Duration {
        self.ttl / 2
    }

    /// How long a fenced job may take to stop: a quarter of the TTL.
    fn stop_within(&self) -> Duration {
        self.ttl / 4
    }
}

/// Keeps a lease alive until `done`; `since` is when the lease arrived.
///
/// A cancel request in a reply stops the job (reason: cancelled), and
/// heartbeats go on while it stops. FAILED_PRECONDITION means the lease is
/// gone, UNAUTHENTICATED or PERMISSION_DENIED that the agent's credential is
/// (so the lease will be): either way the job is stopped at once (reason:
/// lease lost, so nothing is reported). Any other failure is retried soon
/// (from 100 ms, doubling up to the heartbeat period): a coordinator that is
/// back in time still has the lease. But when no heartbeat has been
/// acknowledged for half the TTL, counted from when the last acknowledged one
/// was sent, the job is stopped for lost contact (see the module docs for why
/// that bound).
async fn heartbeat(
    mut client: Client,
    lease_token: String,
    timing: LeaseTiming,
    since: Instant,
    job_id: String,
    stop: Arc<Stop>,
    done: CancellationToken,
) {
    let mut acknowledged = tokio::time::Instant::from_std(since);
    let mut next = acknowledged + timing.every;
    let mut retry = Backoff::new(HEARTBEAT_RETRY, timing.every);
    let mut failing = false;
    // Logged even when the job is already stopping for another reason (a
    // cancel, say): from now on it gets a quarter of a TTL at most.
    let fence = |acknowledged: tokio::time::Instant| {
        let silent = acknowledged.elapsed();
        error!(
            "job {job_id}: no heartbeat acknowledged for {} (half the lease's {} TTL); stopping the job so that it cannot run twice once the coordinator takes the lease back",
            seconds(silent),
            seconds(timing.ttl)
        );
        stop.request(StopReason::ContactLost(silent));
    };
    loop {
        let deadline = acknowledged + timing.fence_after();
        tokio::select! {
            biased;
            _ = done.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => return fence(acknowledged),
            _ = tokio::time::sleep_until(next) => {}
        }
        let request = HeartbeatRequest {
            lease_token: lease_token.clone(),
        };
        let sent = tokio::time::Instant::now();
        let reply = tokio::select! {
            biased;
            _ = done.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => return fence(acknowledged),
            reply = with_timeout(timing.every, client.heartbeat(request)) => reply,
        };
        match reply {
            Ok(reply) => {
                acknowledged = sent;
                next = sent + timing.every;
                retry.reset();
                if failing {
                    info!("job {job_id}: heartbeats get through again");
                    failing = false;
                }
                if reply.into_inner().cancel_requested && stop.request(StopReason::Cancelled) {
                    info!("job {job_id}: cancel requested; stopping it");
                }
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                warn!(
                    "job {job_id}: lease lost ({}); stopping it",
                    status.message()
                );
                stop.request(StopReason::LeaseLost);
                return;
            }
            Err(status) if refuses_credential(status.code()) => {
                warn!(
                    "job {job_id}: heartbeat refused: the coordinator no longer accepts this agent's credential ({}); the lease is lost: stopping the job",
                    status_text(&status)
                );
                stop.request(StopReason::LeaseLost);
                return;
            }
            Err(status) => {
                next = tokio::time::Instant::now() + retry.next_delay();
                if failing {
                    debug!(
                        "job {job_id}: heartbeat failed again: {}",
                        status_text(&status)
                    );
                } else {
                    warn!(
                        "job {job_id}: heartbeat failed ({}); retrying; the job is stopped if none gets through by {} after the last one",
                        status_text(&status),
                        seconds(timing.fence_after())
                    );
                    failing = true;
                }
            }
        }
    }
}

/// Turns a drain into an interrupt once `drain_timeout` has passed, and makes
/// sure an interrupt also drains (for `Shutdown::from_tokens` users who
/// cancel only the interrupt token).
async fn control_shutdown(shutdown: Shutdown, drain_timeout: Option<Duration>) {
    shutdown.draining().await;
    shutdown.drain.cancel();
    let Some(limit) = drain_timeout else { return };
    tokio::select! {
        _ = shutdown.interrupted() => {}
        _ = tokio::time::sleep(limit) => {
            warn!("drain timeout: jobs still running {limit:?} after shutdown began; interrupting them");
            shutdown.interrupt();
        }
    }
}

/// How long a job may run: its `timeout_seconds`, or an hour when 0.
pub(crate) fn job_timeout(spec: &JobSpec) -> Duration {
    match spec.timeout_seconds {
        0 => DEFAULT_JOB_TIMEOUT,
        seconds => Duration::from_secs(seconds.into()),
    }
}

/// The busy-slot reports one slot's worker has warned about, so that each
/// (slot, tenant, holder, job) is warned about once rather than at every poll.
#[derive(Debug, Default)]
pub(crate) struct BusyWarnings {
    seen: Vec<(i32, String, String, String)>,
}

impl BusyWarnings {
    /// Takes the busy slots of a reply with no lease; returns the warnings to
    /// log: one per slot whose holder or job is not one warned about last time.
    pub(crate) fn update(&mut self, busy: &[BusySlot]) -> Vec<String> {
        let now: Vec<_> = busy
            .iter()
            .map(|b| {
                (
                    b.slot,
                    b.tenant_id.clone(),
                    b.agent_id.clone(),
                    b.id.clone(),
                )
            })
            .collect();
        let warnings = now
            .iter()
            .filter(|key| !self.seen.contains(key))
            .map(|(slot, tenant, agent, id)| {
                let tenant = if tenant.is_empty() {
                    String::new()
                } else {
                    format!(" (tenant {tenant})")
                };
                format!(
                    "slot {slot} is busy: job {id}{tenant} is running there on agent {agent} \u{2014} is another agent serving slot {slot}?"
                )
            })
            .collect();
        self.seen = now;
        warnings
    }

    /// The slot was leased: whatever held it is gone.
    pub(crate) fn clear(&mut self) {
        self.seen.clear();
    }
}

/// The lease's heartbeat interval, or a third of its TTL when it names none.
fn heartbeat_interval(lease: &Lease) -> Duration {
    if lease.heartbeat_interval_ms > 0 {
        Duration::from_millis(lease.heartbeat_interval_ms.into())
    } else if lease.lease_ttl_ms > 0 {
        Duration::from_millis((lease.lease_ttl_ms / 3).max(1).into())
    } else {
        DEFAULT_HEARTBEAT
    }
}

/// Errors worth retrying: the coordinator (or the way to it) is down or
/// overloaded, rather than refusing the request itself. Not
/// RESOURCE_EXHAUSTED: the coordinator answers it for a field over its limit,
/// which the same request would hit again.
fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Internal
    )
}

/// The coordinator refuses the caller, not the call: no token, an unknown or
/// revoked one, or one without the agent role or for another tenant.
fn refuses_credential(code: Code) -> bool {
    matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

/// A gRPC call that gives up after `limit`: a half-open connection must not
/// hang a worker forever.
async fn with_timeout<T>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<tonic::Response<T>, Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(reply) => reply,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {limit:?}"
        ))),
    }
}

/// A status on one line with its causes (transport errors hide the useful
/// part, e.g. "Connection refused", in their source chain).
fn status_text(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        let chain = benchq::client::source_chain(source);
        if !text.contains(&chain) {
            text.push_str(": ");
            text.push_str(&chain);
        }
    }
    text
}

fn join_error_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let panic = e.into_panic();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("panicked: {message}")
}

/// Aborts a task when the future awaiting it is dropped (a forced shutdown),
/// so that the runner's own cleanup (killing its processes) runs.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;
