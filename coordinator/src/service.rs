//! The `benchq.v1.Coordinator` gRPC service: requests are validated
//! (`validate.rs`), turned into one transition of the state machine
//! (`queue.rs`), and the result mapped back to the protocol.

use std::sync::Arc;
use std::time::Duration;

use benchq::proto::{
    self, CancelBatchRequest, CancelJobRequest, CancelResponse, CompleteRequest, CompleteResponse,
    EnqueueBatchRequest, EnqueueBatchResponse, EnqueueRequest, EnqueueResponse, GetBatchRequest,
    GetBatchResponse, HeartbeatRequest, HeartbeatResponse, JobState, LeaseRequest, LeaseResponse,
    Outcome,
};
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::auth::{Role, caller};
use crate::queue::{self, AttemptRow, JobRow, QueueError};
use crate::validate;
use crate::wakeup::Wakeup;

/// Timing knobs of the service.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long a lease lives without a heartbeat.
    pub lease_ttl: Duration,
    /// The longest a Lease call may wait for work.
    pub max_lease_wait: Duration,
    /// How often a waiting Lease looks for work while notifications work
    /// (a safety net only).
    pub poll_interval: Duration,
    /// How often a waiting Lease looks for work while the LISTEN connection is down.
    pub fallback_poll_interval: Duration,
    /// How often the reaper looks for expired leases.
    pub reap_interval: Duration,
    /// How long past its timeout a job may run before the coordinator takes it
    /// back from an agent that did not stop it (the agent's own kill, grace
    /// period and report should fit in it).
    pub timeout_margin: Duration,
}

impl Timing {
    /// Refuses settings that would quietly break the queue (a reaper that
    /// never runs, leases that expire as they are handed out).
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("--lease-ttl", self.lease_ttl),
            ("--reap-interval", self.reap_interval),
            ("poll interval", self.poll_interval),
            ("fallback poll interval", self.fallback_poll_interval),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(format!("{name} must be more than zero"));
            }
        }
        if self.lease_ttl < Duration::from_millis(100) {
            return Err(format!(
                "--lease-ttl {:?} is too short for agents to heartbeat in time (at least 100ms)",
                self.lease_ttl
            ));
        }
        Ok(())
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_ttl: Duration::from_secs(30),
            max_lease_wait: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            fallback_poll_interval: Duration::from_millis(500),
            reap_interval: Duration::from_secs(2),
            timeout_margin: Duration::from_secs(60),
        }
    }
}

pub struct CoordinatorService {
    pool: PgPool,
    wakeup: Arc<Wakeup>,
    timing: Timing,
    shutdown: CancellationToken,
}

impl CoordinatorService {
    pub fn new(
        pool: PgPool,
        wakeup: Arc<Wakeup>,
        timing: Timing,
        shutdown: CancellationToken,
    ) -> Self {
        CoordinatorService {
            pool,
            wakeup,
            timing,
            shutdown,
        }
    }
}

/// Maps a queue error to the status a client can act on. Database trouble the
/// client should retry (connection lost, server restarting) is `UNAVAILABLE`.
fn status(e: QueueError) -> Status {
    match e {
        QueueError::LeaseNotHeld(why) => {
            Status::failed_precondition(format!("lease not held: {why}"))
        }
        QueueError::LeaseOfOtherCredential => {
            Status::permission_denied("lease_token: the lease was taken by another credential")
        }
        QueueError::BatchExists(id) => {
            Status::already_exists(format!("job_id: batch {id} already exists"))
        }
        // Another tenant's batch behaves as no batch at all.
        QueueError::BatchOfOtherTenant(id) => {
            Status::not_found(format!("job.job_id: no batch {id} in this tenant"))
        }
        QueueError::Contended => Status::unavailable("too many concurrent writers; try again"),
        QueueError::Database(e) => {
            if is_transient(&e) {
                tracing::warn!("database unavailable: {e}");
                Status::unavailable(format!("database unavailable: {e}"))
            } else {
                tracing::error!("database error: {e}");
                Status::internal("internal database error")
            }
        }
    }
}

/// Errors that go away by themselves: lost connections, a restarting server.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 57P01-03: admin/crash shutdown, cannot
            // connect now; 40001/40P01: serialization failure, deadlock.
            c.starts_with("08") || c.starts_with("57P") || c == "40001" || c == "40P01"
        }),
        _ => false,
    }
}

fn ts(t: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

fn spec_of(j: &JobRow) -> proto::JobSpec {
    proto::JobSpec {
        job_id: j.batch_id.to_string(),
        tenant_id: j.tenant_id.clone(),
        scenario_id: j.scenario_id.clone(),
        model: j.model.clone(),
        provider: j.provider.clone(),
        mcp_server: j.mcp_server.clone(),
        tool_server: j.tool_server.clone(),
        tool_server_version: j.tool_server_version.clone(),
        skill_file: j.skill_file.clone(),
        skill_id: j.skill_id.clone(),
        skill_version: j.skill_version.clone(),
        skill_source: j.skill_source.clone(),
        skill_sha256: j.skill_sha256.clone(),
        namespace_slot: j.namespace_slot,
        parallel: j.parallel,
        max_attempts: j.max_attempts,
        timeout_seconds: j.timeout_seconds.max(0) as u32,
    }
}

fn outcome_of(name: Option<&str>) -> Outcome {
    name.and_then(Outcome::from_name)
        .unwrap_or(Outcome::Unspecified)
}

fn state_of(name: &str) -> JobState {
    JobState::from_name(name).unwrap_or(JobState::Unspecified)
}

fn attempt_of(a: &AttemptRow) -> proto::Attempt {
    proto::Attempt {
        attempt: a.attempt,
        agent_id: a.agent_id.clone(),
        started_at: Some(ts(a.started_at)),
        finished_at: a.finished_at.map(ts),
        outcome: outcome_of(a.outcome.as_deref()) as i32,
        exit_code: a.exit_code,
        duration_ms: a.duration_ms.unwrap_or(0).max(0) as u64,
        error: a.error.clone().unwrap_or_default(),
        output_tail: a.output_tail.clone().unwrap_or_default(),
        metrics_json: a
            .metrics
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl proto::coordinator_server::Coordinator for CoordinatorService {
    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn enqueue(
        &self,
        request: Request<EnqueueRequest>,
    ) -> Result<Response<EnqueueResponse>, Status> {
        let who = caller(&request)?;
        who.require("Enqueue", &[Role::Operator])?;
        let (batch, mut args) = validate::enqueue(request.get_ref())?;
        let requested = request
            .get_ref()
            .job
            .as_ref()
            .map_or("", |j| j.tenant_id.as_str());
        args.tenant_id = who.tenant_for("job.tenant_id", requested)?;
        let id = queue::enqueue(&self.pool, batch, &args)
            .await
            .map_err(status)?;
        tracing::info!(%id, %batch, scenario = %args.scenario_id, "enqueued job");
        Ok(Response::new(EnqueueResponse {
            id: id.to_string(),
            job_id: batch.to_string(),
        }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn enqueue_batch(
        &self,
        request: Request<EnqueueBatchRequest>,
    ) -> Result<Response<EnqueueBatchResponse>, Status> {
        let who = caller(&request)?;
        who.require("EnqueueBatch", &[Role::Operator])?;
        let (batch, mut args, scenarios) = validate::enqueue_batch(request.get_ref())?;
        args.tenant_id = who.tenant_for("tenant_id", &request.get_ref().tenant_id)?;
        let ids = queue::enqueue_batch(&self.pool, batch, &args, &scenarios)
            .await
            .map_err(status)?;
        tracing::info!(%batch, jobs = ids.len(), parallel = args.parallel, tenant = %args.tenant_id, "enqueued batch");
        Ok(Response::new(EnqueueBatchResponse {
            job_id: batch.to_string(),
            ids: ids.iter().map(ToString::to_string).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(agent), err(level = "debug"))]
    async fn lease(
        &self,
        request: Request<LeaseRequest>,
    ) -> Result<Response<LeaseResponse>, Status> {
        let who = caller(&request)?;
        who.require("Lease", &[Role::Agent])?;
        let req = request.get_ref();
        let (agent, slots, tenant) = validate::lease(req)?;
        // An agent's credential decides its tenant; an admin may name one, or
        // none for every tenant.
        let tenant = match who.role {
            Role::Admin => tenant,
            _ => who.tenant_for("tenant_id", &tenant)?,
        };
        tracing::Span::current().record("agent", agent.as_str());
        let wait = Duration::from_millis(req.wait_ms.into()).min(self.timing.max_lease_wait);
        let deadline = Instant::now() + wait;
        loop {
            // Register for the wake-up before looking, so work enqueued between
            // the look and the wait still wakes us.
            let notified = self.wakeup.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let leased = queue::lease(
                &self.pool,
                &who.name,
                &agent,
                &slots,
                &tenant,
                self.timing.lease_ttl,
            )
            .await
            .map_err(status)?;
            if let Some((job, token)) = leased {
                tracing::info!(id = %job.id, scenario = %job.scenario_id, slot = job.namespace_slot, attempt = job.attempt, "leased job");
                let ttl_ms = self.timing.lease_ttl.as_millis() as u32;
                return Ok(Response::new(LeaseResponse {
                    lease: Some(proto::Lease {
                        id: job.id.to_string(),
                        namespace: proto::namespace_for(job.namespace_slot, job.parallel),
                        job: Some(spec_of(&job)),
                        attempt: job.attempt,
                        lease_token: token.to_string(),
                        heartbeat_interval_ms: (ttl_ms / 3).max(1),
                        lease_ttl_ms: ttl_ms,
                    }),
                    busy_slots: Vec::new(),
                }));
            }
            let now = Instant::now();
            if now >= deadline {
                let busy_slots = queue::busy_slots(&self.pool, &agent, &slots, &tenant)
                    .await
                    .map_err(status)?
                    .into_iter()
                    .map(|(slot, tenant_id, agent_id, id)| proto::BusySlot {
                        slot,
                        tenant_id,
                        agent_id,
                        id: id.to_string(),
                    })
                    .collect();
                return Ok(Response::new(LeaseResponse {
                    lease: None,
                    busy_slots,
                }));
            }
            let poll = if self.wakeup.is_listening() {
                self.timing.poll_interval
            } else {
                self.timing.fallback_poll_interval
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline.min(now + poll)) => {}
                _ = self.shutdown.cancelled() => {
                    return Ok(Response::new(LeaseResponse::default()));
                }
            }
        }
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let who = caller(&request)?;
        who.require("Heartbeat", &[Role::Agent])?;
        let token = validate::uuid("lease_token", &request.get_ref().lease_token)?;
        let cancel_requested =
            queue::heartbeat(&self.pool, &who.name, token, self.timing.lease_ttl)
                .await
                .map_err(status)?;
        Ok(Response::new(HeartbeatResponse { cancel_requested }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let who = caller(&request)?;
        who.require("Complete", &[Role::Agent])?;
        let (token, report) = validate::complete(request.get_ref())?;
        let state = queue::complete(&self.pool, &who.name, token, &report)
            .await
            .map_err(status)?;
        tracing::info!(outcome = report.outcome, %state, "completed lease");
        Ok(Response::new(CompleteResponse {
            state: state_of(&state) as i32,
        }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn get_batch(
        &self,
        request: Request<GetBatchRequest>,
    ) -> Result<Response<GetBatchResponse>, Status> {
        let who = caller(&request)?;
        who.require("GetBatch", &[Role::Operator])?;
        let req = request.get_ref();
        let batch = validate::uuid("job_id", &req.job_id)?;
        let (after, limit) = validate::page(req)?;
        let tenant = who.visible_tenant();
        let by_state = queue::batch_counts(&self.pool, batch, tenant)
            .await
            .map_err(status)?;
        if by_state.is_empty() {
            return Err(Status::not_found(format!("job_id: no batch {batch}")));
        }
        let mut counts = proto::StateCounts::default();
        for (state, n) in by_state {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            match state_of(&state) {
                JobState::Queued => counts.queued = n,
                JobState::Running => counts.running = n,
                JobState::Passed => counts.passed = n,
                JobState::Failed => counts.failed = n,
                JobState::Errored => counts.errored = n,
                JobState::Cancelled => counts.cancelled = n,
                JobState::Unspecified => {}
            }
        }
        // One row more than the page, to know whether another page follows.
        let (mut jobs, attempts) = queue::get_batch(
            &self.pool,
            batch,
            tenant,
            !req.omit_output,
            after,
            limit + 1,
        )
        .await
        .map_err(status)?;
        let next_page_token = if jobs.len() as i64 > limit {
            jobs.truncate(limit as usize);
            jobs.last()
                .map(|j| j.position.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let mut attempts = attempts.into_iter().peekable();
        let jobs = jobs
            .iter()
            .map(|j| {
                let state = state_of(&j.state);
                // Attempts come ordered by job position, like the jobs.
                let mut mine = Vec::new();
                while let Some(a) = attempts.next_if(|a| a.job_id == j.id) {
                    mine.push(attempt_of(&a));
                }
                let outcome = mine
                    .iter()
                    .rev()
                    .find(|a| a.outcome != Outcome::Unspecified as i32)
                    .map_or(Outcome::Unspecified as i32, |a| a.outcome);
                proto::Job {
                    id: j.id.to_string(),
                    spec: Some(spec_of(j)),
                    state: state as i32,
                    attempt: j.attempt,
                    outcome,
                    created_at: Some(ts(j.created_at)),
                    started_at: j.started_at.map(ts),
                    finished_at: j.finished_at.map(ts),
                    attempts: mine,
                    position: j.position,
                    cancel_requested: j.cancel_requested,
                }
            })
            .collect();
        Ok(Response::new(GetBatchResponse {
            job_id: batch.to_string(),
            jobs,
            counts: Some(counts),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let who = caller(&request)?;
        who.require("CancelJob", &[Role::Operator])?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        let done = queue::cancel(&self.pool, id, false, who.visible_tenant())
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("id: no job {id}")))?;
        tracing::info!(%id, ?done, "cancel job");
        Ok(Response::new(cancel_response(done)))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn cancel_batch(
        &self,
        request: Request<CancelBatchRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let who = caller(&request)?;
        who.require("CancelBatch", &[Role::Operator])?;
        let batch = validate::uuid("job_id", &request.get_ref().job_id)?;
        let done = queue::cancel(&self.pool, batch, true, who.visible_tenant())
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("job_id: no batch {batch}")))?;
        tracing::info!(%batch, ?done, "cancel batch");
        Ok(Response::new(cancel_response(done)))
    }
}

fn cancel_response(c: queue::Cancelled) -> CancelResponse {
    CancelResponse {
        cancelled: c.cancelled,
        stopping: c.stopping,
        finished: c.finished,
    }
}
