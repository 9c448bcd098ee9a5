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
//! The coordinator may come and go (deploys, failovers): every call is
//! retried with backoff, and the agent logs an outage once rather than once
//! per retry. Only an interrupted shutdown bounds that: an operator who asked
//! the agent to stop now gets it to stop within the jobs' grace period plus
//! [`AgentConfig::interrupt_report_timeout`], reachable coordinator or not.
//!
//! Every stop of a running job goes through one [`Stop`]: whoever stops it
//! (the heartbeat task on a cancel request or a lost lease, the job's timer,
//! the shutdown) records why, then cancels the runner; the reported outcome
//! follows from the reason (see [`crate::stop`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use benchq::client::{Client, ConnectArgs, ConnectError, connect_lazy};
use benchq::proto::{
    BusySlot, CompleteRequest, HeartbeatRequest, JobSpec, Lease, LeaseRequest, Outcome,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::job::LeasedJob;
use crate::runner::{RunResult, Runner};
use crate::shutdown::Shutdown;
use crate::stop::{Stop, StopReason, settle};
use crate::tail::{OUTPUT_TAIL_MAX, truncate_front};

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

/// Why an agent could not be set up.
#[derive(Debug)]
pub enum AgentError {
    /// The coordinator URL is not usable.
    Connect(ConnectError),
    /// The configuration makes no sense (no slots, a negative slot, no agent id).
    Config(String),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Connect(e) => e.fmt(f),
            AgentError::Config(msg) => write!(f, "invalid agent configuration: {msg}"),
        }
    }
}

impl std::error::Error for AgentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AgentError::Connect(e) => Some(e),
            AgentError::Config(_) => None,
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
    pub async fn run(self, shutdown: impl Into<Shutdown>) {
        let shutdown = shutdown.into();
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
        info!(
            "agent {} stopped: every slot drained",
            agent.config.agent_id
        );
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
                            self.run_lease(&mut client, slot, lease, &shutdown).await;
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
                Err(status) => {
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
    /// it, unless the lease was lost.
    async fn run_lease(&self, client: &mut Client, slot: i32, lease: Lease, shutdown: &Shutdown) {
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
        let stop = Arc::new(Stop::default());
        let stop_heartbeat = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            client.clone(),
            lease.lease_token.clone(),
            heartbeat_interval(&lease),
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
        let (mut timed_out, mut interrupted) = (false, false);
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

        if result.duration.is_zero() {
            result.duration = started.elapsed();
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
        result.output_tail =
            truncate_front(std::mem::take(&mut result.output_tail), OUTPUT_TAIL_MAX);
        let how = match stopped.filter(|_| !result.finished_on_its_own) {
            Some(reason) => format!("stopped ({})", reason.describe()),
            None => "finished".to_string(),
        };
        // A lease lost after the run returned also means: report nothing.
        let lease_lost = stop.reason() == Some(StopReason::LeaseLost);
        let Some(result) = settle(result, stopped).filter(|_| !lease_lost) else {
            warn!(
                "job {} scenario {} {how}: result not reported: lease lost",
                job.id, job.spec.scenario_id
            );
            return;
        };
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
        self.report(client, &lease.lease_token, &job, result, shutdown)
            .await;
    }

    /// Sends the result, retrying through coordinator outages: Complete is
    /// idempotent per lease token, so a retry after a lost reply is harmless.
    ///
    /// Gives up after [`AgentConfig::report_timeout`], or, once the agent is
    /// interrupted, [`AgentConfig::interrupt_report_timeout`] after noticing
    /// it (the lease then expires on the coordinator, which retries the job).
    async fn report(
        &self,
        client: &mut Client,
        lease_token: &str,
        job: &LeasedJob,
        result: RunResult,
        shutdown: &Shutdown,
    ) {
        let outcome = result.outcome;
        let request = CompleteRequest {
            lease_token: lease_token.to_string(),
            outcome: outcome as i32,
            exit_code: result.exit_code,
            duration_ms: u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX),
            error: result.error,
            output_tail: result.output_tail,
            metrics_json: result.metrics_json.unwrap_or_default(),
        };
        let began = Instant::now();
        let mut give_up = began + self.config.report_timeout;
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
                Code::FailedPrecondition => {
                    warn!(
                        "job {}: result refused: lease no longer held ({})",
                        job.id,
                        status.message()
                    );
                    return;
                }
                Code::InvalidArgument => {
                    error!(
                        "job {}: result refused as invalid: {}",
                        job.id,
                        status.message()
                    );
                    return;
                }
                code if !is_transient(code) => {
                    error!(
                        "job {}: result refused: {code:?}: {}",
                        job.id,
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

    fn reachable(&self) {
        if self.outage.swap(false, Ordering::SeqCst) {
            info!("coordinator {} reachable again", self.config.coordinator);
        }
    }
}

/// Keeps a lease alive until `done`. A cancel request in a reply stops the
/// job (reason: cancelled), and heartbeats go on while it stops. A
/// FAILED_PRECONDITION reply means the lease is gone: the job is stopped
/// (reason: lease lost, so nothing is reported). Any other failure is
/// retried at the next tick: the lease lives for a few intervals, and a
/// coordinator that is back in time still has it.
async fn heartbeat(
    mut client: Client,
    lease_token: String,
    every: Duration,
    job_id: String,
    stop: Arc<Stop>,
    done: CancellationToken,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let request = HeartbeatRequest {
            lease_token: lease_token.clone(),
        };
        let reply = tokio::select! {
            _ = done.cancelled() => return,
            reply = with_timeout(every, client.heartbeat(request)) => reply,
        };
        match reply {
            Ok(reply) => {
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
            Err(status) => {
                if failing {
                    debug!(
                        "job {job_id}: heartbeat failed again: {}",
                        status_text(&status)
                    );
                } else {
                    warn!(
                        "job {job_id}: heartbeat failed ({}); retrying at the next tick",
                        status_text(&status)
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
/// overloaded, rather than refusing the request itself.
fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Internal
    )
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
