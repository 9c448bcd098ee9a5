//! The job state machine, in SQL.
//!
//! Every transition a job can take is one statement in this module, guarded in
//! its `WHERE` clause by the state it expects and, for leased jobs, by the lease
//! token. Nothing else in benchq writes to `jobs` or `attempts`, so this file is
//! the whole state machine: read it together with `docs/state-machine.md`.
//!
//! The database enforces what must hold whoever writes: a running job has a
//! lease token and nothing else does, at most one job runs per (tenant,
//! namespace slot), and attempts never exceed `max_attempts`.

use std::time::Duration;

use sqlx::{FromRow, PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

/// The channel on which the coordinator hears that queued work appeared.
pub const JOBS_CHANNEL: &str = "benchq_jobs";

/// The name of the index that keeps one running job per (tenant, slot).
const ONE_RUNNING_PER_SLOT: &str = "jobs_one_running_per_slot";

/// What can go wrong in a transition, beyond the database itself.
#[derive(Debug)]
pub enum QueueError {
    /// The lease token is not the job's current lease (stale, unknown or completed
    /// with another outcome). Nothing was changed.
    LeaseNotHeld(String),
    /// The lease was taken by another credential. Nothing was changed.
    LeaseOfOtherCredential,
    /// The batch id is already taken (EnqueueBatch never appends).
    BatchExists(Uuid),
    /// The batch belongs to another tenant.
    BatchOfOtherTenant(Uuid),
    /// Too many concurrent writers raced for the same rows; nothing was
    /// written and the caller may try again.
    Contended,
    Database(sqlx::Error),
}

impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
        QueueError::Database(e)
    }
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::LeaseNotHeld(why) => write!(f, "lease not held: {why}"),
            QueueError::LeaseOfOtherCredential => {
                write!(f, "the lease belongs to another credential")
            }
            QueueError::BatchExists(id) => write!(f, "batch {id} already exists"),
            QueueError::BatchOfOtherTenant(id) => {
                write!(f, "batch {id} belongs to another tenant")
            }
            QueueError::Contended => write!(f, "too many concurrent writers; try again"),
            QueueError::Database(e) => write!(f, "database error: {e}"),
        }
    }
}

impl std::error::Error for QueueError {}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// The arguments of a job, as validated at the edge (see `validate.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobArgs {
    pub tenant_id: String,
    pub scenario_id: String,
    pub model: String,
    pub provider: String,
    pub mcp_server: String,
    pub tool_server: String,
    pub tool_server_version: String,
    pub skill_file: String,
    pub skill_id: String,
    pub skill_version: String,
    pub skill_source: String,
    pub skill_sha256: String,
    pub namespace_slot: i32,
    pub parallel: i32,
    pub max_attempts: i32,
    pub timeout_seconds: i32,
}

/// A stored job: its arguments and where it is in the state machine.
#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub batch_id: Uuid,
    pub position: i32,
    pub tenant_id: String,
    pub scenario_id: String,
    pub model: String,
    pub provider: String,
    pub mcp_server: String,
    pub tool_server: String,
    pub tool_server_version: String,
    pub skill_file: String,
    pub skill_id: String,
    pub skill_version: String,
    pub skill_source: String,
    pub skill_sha256: String,
    pub namespace_slot: i32,
    pub parallel: i32,
    pub max_attempts: i32,
    pub timeout_seconds: i32,
    pub state: String,
    pub attempt: i32,
    pub cancel_requested: bool,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
}

/// One lease of a job and how it ended.
#[derive(Debug, Clone, FromRow)]
pub struct AttemptRow {
    pub lease_token: Uuid,
    pub job_id: Uuid,
    pub attempt: i32,
    pub agent_id: String,
    pub started_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
    pub outcome: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    pub output_tail: Option<String>,
    pub metrics: Option<serde_json::Value>,
}

/// What an agent reports at the end of a lease.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `PASSED`, `FAILED`, `ERROR`, `CANCELLED` or `INTERRUPTED`.
    pub outcome: &'static str,
    pub exit_code: Option<i32>,
    pub duration_ms: i64,
    pub error: String,
    pub output_tail: String,
    pub metrics: Option<serde_json::Value>,
}

/// Whether a report sends the job back to the queue: an infra error with
/// attempts left, or an interruption, and no cancel requested. Used by
/// `complete`, where `$2` is the outcome.
macro_rules! requeue {
    () => {
        "(cancel_requested_at IS NULL AND ($2 = 'INTERRUPTED' \
          OR ($2 = 'ERROR' AND attempt < max_attempts)))"
    };
}

/// The rest of `cancel`, after the `WHERE` of `sel` that picks the jobs.
/// `u` changes the jobs that have not finished; the result counts every
/// selected job by state, where `cancelled*` marks the ones this call cancelled.
macro_rules! cancel_rest {
    () => {
        "), u AS ( \
             UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()), \
                 state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END, \
                 finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END \
             WHERE id IN (SELECT id FROM sel) AND state IN ('queued', 'running') \
             RETURNING id, CASE WHEN state = 'cancelled' THEN 'cancelled*' ELSE state END AS state \
         ) \
         SELECT coalesce(u.state, s.state) AS state, count(*) AS n \
         FROM sel s LEFT JOIN u ON u.id = s.id GROUP BY 1"
    };
}

/// A running job the reaper may take back: its lease expired (the agent
/// stopped heartbeating), or it ran `$margin` past its timeout (the agent did
/// not stop it). Shared by the reaper's scan and its guarded write, which
/// re-checks it; `$M` is the bind position of the margin in seconds.
macro_rules! overdue {
    ($m:literal) => {
        concat!(
            "(lease_expires_at < now() \
              OR leased_at + make_interval(secs => timeout_seconds + $",
            $m,
            ") < now())"
        )
    };
}

/// The columns of [`JobRow`], for `concat!` into static SQL.
macro_rules! job_columns {
    () => {
        "id, batch_id, position, tenant_id, scenario_id, model, provider, \
         mcp_server, tool_server, tool_server_version, skill_file, skill_id, skill_version, \
         skill_source, skill_sha256, namespace_slot, parallel, max_attempts, timeout_seconds, \
         state, attempt, cancel_requested_at IS NOT NULL AS cancel_requested, created_at, \
         started_at, finished_at"
    };
}

/// Transition `(none) -> queued` for a whole batch: one job per scenario id,
/// job `i` on slot `i % parallel`, all in one transaction.
///
/// `shared` carries the fields every job has in common; its `scenario_id` and
/// `namespace_slot` are ignored. Fails with [`QueueError::BatchExists`] when
/// `batch_id` is already used, and writes nothing.
pub async fn enqueue_batch(
    pool: &PgPool,
    batch_id: Uuid,
    shared: &JobArgs,
    scenario_ids: &[String],
) -> Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = scenario_ids.iter().map(|_| Uuid::new_v4()).collect();
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, batch_id, position, tenant_id, scenario_id, model, provider, \
             mcp_server, tool_server, tool_server_version, skill_file, skill_id, skill_version, \
             skill_source, skill_sha256, namespace_slot, parallel, max_attempts, timeout_seconds) \
         SELECT s.id, $1, (s.ord - 1)::int, $2, s.scenario, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, ((s.ord - 1) % $13)::int, $13, $14, $17 \
         FROM unnest($15::uuid[], $16::text[]) WITH ORDINALITY AS s(id, scenario, ord)",
    )
    .bind(batch_id)
    .bind(&shared.tenant_id)
    .bind(&shared.model)
    .bind(&shared.provider)
    .bind(&shared.mcp_server)
    .bind(&shared.tool_server)
    .bind(&shared.tool_server_version)
    .bind(&shared.skill_file)
    .bind(&shared.skill_id)
    .bind(&shared.skill_version)
    .bind(&shared.skill_source)
    .bind(&shared.skill_sha256)
    .bind(shared.parallel)
    .bind(shared.max_attempts)
    .bind(&ids)
    .bind(scenario_ids)
    .bind(shared.timeout_seconds)
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(e) if is_unique_violation(&e, "jobs_batch_id_position_key") => {
            return Err(QueueError::BatchExists(batch_id));
        }
        other => other?,
    };
    notify_queued(&mut tx).await?;
    tx.commit().await?;
    Ok(ids)
}

/// Transition `(none) -> queued` for one job. With a new `batch_id` the job is
/// the first of its batch; with an existing one it is appended, provided the
/// batch belongs to the same tenant.
pub async fn enqueue(pool: &PgPool, batch_id: Uuid, args: &JobArgs) -> Result<Uuid> {
    let id = Uuid::new_v4();
    // Two Enqueues appending to one batch at once may pick the same position;
    // the unique (batch_id, position) key makes one of them try again.
    for _ in 0..16 {
        let mut tx = pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, batch_id, position, tenant_id, scenario_id, model, provider, \
                 mcp_server, tool_server, tool_server_version, skill_file, skill_id, \
                 skill_version, skill_source, skill_sha256, namespace_slot, parallel, max_attempts, \
                 timeout_seconds) \
             SELECT $1, $2, coalesce(max(position) + 1, 0), $3, $4, $5, $6, $7, $8, $9, $10, \
                 $11, $12, $13, $14, $15, $16, $17, $18 \
             FROM jobs WHERE batch_id = $2 \
             HAVING bool_and(tenant_id = $3) IS NOT FALSE",
        )
        .bind(id)
        .bind(batch_id)
        .bind(&args.tenant_id)
        .bind(&args.scenario_id)
        .bind(&args.model)
        .bind(&args.provider)
        .bind(&args.mcp_server)
        .bind(&args.tool_server)
        .bind(&args.tool_server_version)
        .bind(&args.skill_file)
        .bind(&args.skill_id)
        .bind(&args.skill_version)
        .bind(&args.skill_source)
        .bind(&args.skill_sha256)
        .bind(args.namespace_slot)
        .bind(args.parallel)
        .bind(args.max_attempts)
        .bind(args.timeout_seconds)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e, "jobs_batch_id_position_key") => continue,
            Err(e) => return Err(e.into()),
            Ok(r) if r.rows_affected() == 0 => {
                return Err(QueueError::BatchOfOtherTenant(batch_id));
            }
            Ok(_) => {}
        }
        notify_queued(&mut tx).await?;
        tx.commit().await?;
        return Ok(id);
    }
    Err(QueueError::Contended)
}

/// Wakes every coordinator's waiting Leases once the transaction commits.
async fn notify_queued(tx: &mut Transaction<'_, Postgres>) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(JOBS_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Transition `queued -> running`: the oldest queued job on one of `slots`
/// (of `tenant`, when not empty) whose (tenant, slot) has nothing running.
///
/// `FOR UPDATE SKIP LOCKED` keeps concurrent leasers off each other's rows; the
/// `state = 'queued'` guard and the one-running-per-slot index make a double
/// lease impossible even if they did not. The attempt row is written by the
/// same statement. Returns `None` when there is nothing to lease.
pub async fn lease(
    pool: &PgPool,
    credential: &str,
    agent_id: &str,
    slots: &[i32],
    tenant: &str,
    ttl: Duration,
) -> Result<Option<(JobRow, Uuid)>> {
    let token = Uuid::new_v4();
    const SQL: &str = concat!(
        "WITH candidate AS ( \
             SELECT j.id FROM jobs j \
             WHERE j.state = 'queued' AND j.namespace_slot = ANY($1) \
               AND ($2 = '' OR j.tenant_id = $2) \
               AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.state = 'running' \
                   AND r.tenant_id = j.tenant_id AND r.namespace_slot = j.namespace_slot) \
             ORDER BY j.seq LIMIT 1 \
             FOR UPDATE SKIP LOCKED \
         ), leased AS ( \
             UPDATE jobs SET state = 'running', attempt = jobs.attempt + 1, lease_token = $3, \
                 leased_at = now(), lease_expires_at = now() + make_interval(secs => $4), \
                 heartbeat_at = now(), started_at = coalesce(jobs.started_at, now()) \
             FROM candidate WHERE jobs.id = candidate.id AND jobs.state = 'queued' \
             RETURNING jobs.* \
         ), recorded AS ( \
             INSERT INTO attempts (job_id, attempt, lease_token, agent_id, credential) \
             SELECT id, attempt, lease_token, $5, $6 FROM leased \
         ) \
         SELECT ",
        job_columns!(),
        " FROM leased"
    );
    // Two leasers of one (tenant, slot) can both see it idle and race; the
    // index lets one win and the other looks again (and then sees it busy).
    for _ in 0..8 {
        let row = sqlx::query_as::<_, JobRow>(SQL)
            .bind(slots)
            .bind(tenant)
            .bind(token)
            .bind(ttl.as_secs_f64())
            .bind(agent_id)
            .bind(credential)
            .fetch_optional(pool)
            .await;
        match row {
            Err(e) if is_unique_violation(&e, ONE_RUNNING_PER_SLOT) => continue,
            Err(e) => return Err(e.into()),
            Ok(row) => return Ok(row.map(|r| (r, token))),
        }
    }
    Ok(None)
}

/// Slots among `slots` (of `tenant`, when not empty) where a job leased by
/// another agent is running: (slot, tenant, agent, job id). Read only; lets
/// an agent that finds nothing to do say why.
pub async fn busy_slots(
    pool: &PgPool,
    agent_id: &str,
    slots: &[i32],
    tenant: &str,
) -> Result<Vec<(i32, String, String, Uuid)>> {
    Ok(sqlx::query_as(
        "SELECT j.namespace_slot, j.tenant_id, a.agent_id, j.id \
         FROM jobs j JOIN attempts a ON a.lease_token = j.lease_token \
         WHERE j.state = 'running' AND j.namespace_slot = ANY($1) \
           AND ($2 = '' OR j.tenant_id = $2) AND a.agent_id <> $3 \
         ORDER BY j.namespace_slot, j.tenant_id",
    )
    .bind(slots)
    .bind(tenant)
    .bind(agent_id)
    .fetch_all(pool)
    .await?)
}

/// Keeps a lease alive: `running -> running` with a later expiry, for the
/// current lease token only. Returns whether an operator asked for the job to
/// stop.
pub async fn heartbeat(
    pool: &PgPool,
    credential: &str,
    token: Uuid,
    ttl: Duration,
) -> Result<bool> {
    let kept: Option<bool> = sqlx::query_scalar(
        "UPDATE jobs SET heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => $2) \
         WHERE lease_token = $1 AND state = 'running' \
           AND EXISTS (SELECT 1 FROM attempts a WHERE a.lease_token = $1 AND a.credential = $3) \
         RETURNING cancel_requested_at IS NOT NULL",
    )
    .bind(token)
    .bind(ttl.as_secs_f64())
    .bind(credential)
    .fetch_optional(pool)
    .await?;
    match kept {
        Some(cancel_requested) => Ok(cancel_requested),
        None => Err(not_held(lease_record(pool, token).await?, credential, None)),
    }
}

/// Transition `running -> passed | failed | errored | cancelled | queued` for
/// the current lease token, recording the attempt's result in the same
/// statement:
///
/// - `PASSED` -> `passed`, `FAILED` -> `failed` (a scenario result, never
///   retried, even when a cancel was requested meanwhile: the result stands);
/// - `ERROR` -> `queued` while attempts are left, `errored` on the last one;
/// - `INTERRUPTED` (agent shut down) -> `queued`, giving the attempt back;
/// - `CANCELLED`, or `ERROR`/`INTERRUPTED` after a cancel request -> `cancelled`.
///
/// A report already recorded with the same token and outcome (an agent retrying
/// after a lost reply) succeeds and changes nothing. Any other report for a
/// token that is not the job's current lease is refused with
/// [`QueueError::LeaseNotHeld`]. Returns the job's state afterwards.
pub async fn complete(
    pool: &PgPool,
    credential: &str,
    token: Uuid,
    report: &Report,
) -> Result<String> {
    let mut tx = pool.begin().await?;
    let state: Option<String> = sqlx::query_scalar(concat!(
        "WITH done AS ( \
                 UPDATE jobs SET \
                     state = CASE WHEN ",
        requeue!(),
        " THEN 'queued' \
                         WHEN $2 = 'PASSED' THEN 'passed' \
                         WHEN $2 = 'FAILED' THEN 'failed' \
                         WHEN $2 = 'ERROR' AND cancel_requested_at IS NULL THEN 'errored' \
                         ELSE 'cancelled' END, \
                     attempt = CASE WHEN $2 = 'INTERRUPTED' AND ",
        requeue!(),
        " THEN attempt - 1 ELSE attempt END, \
                     finished_at = CASE WHEN ",
        requeue!(),
        " THEN NULL ELSE now() END, \
                     lease_token = NULL, leased_at = NULL, lease_expires_at = NULL, \
                     heartbeat_at = NULL \
                 WHERE lease_token = $1 AND state = 'running' \
                   AND EXISTS (SELECT 1 FROM attempts a WHERE a.lease_token = $1 \
                       AND a.credential = $8) \
                 RETURNING id, state \
             ), recorded AS ( \
                 UPDATE attempts a SET finished_at = now(), outcome = $2, exit_code = $3, \
                     duration_ms = $4, error = $5, output_tail = $6, metrics = $7 \
                 FROM done \
                 WHERE a.lease_token = $1 AND a.job_id = done.id AND a.outcome IS NULL \
             ) \
             SELECT state FROM done"
    ))
    .bind(token)
    .bind(report.outcome)
    .bind(report.exit_code)
    .bind(report.duration_ms)
    .bind(&report.error)
    .bind(&report.output_tail)
    .bind(&report.metrics)
    .bind(credential)
    .fetch_optional(&mut *tx)
    .await?;
    match state {
        Some(state) => {
            if state == "queued" {
                notify_queued(&mut tx).await?;
            }
            tx.commit().await?;
            Ok(state)
        }
        None => {
            drop(tx);
            // Not the current lease. The same report sent again is fine.
            match lease_record(pool, token).await? {
                Some(r)
                    if r.credential == credential
                        && r.outcome.as_deref() == Some(report.outcome) =>
                {
                    Ok(r.job_state)
                }
                record => Err(not_held(record, credential, Some(report.outcome))),
            }
        }
    }
}

/// Which leases the reaper should take back: running jobs whose lease expired
/// (the agent stopped heartbeating), or that ran `margin` past their timeout
/// (the agent did not stop them). Returns (job id, lease token, reason).
///
/// This is only a scan: [`reclaim`] re-checks everything when it writes, so a
/// job completed or heartbeated in between is left alone.
pub async fn expired_leases(
    pool: &PgPool,
    margin: Duration,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid, String)>> {
    Ok(sqlx::query_as(concat!(
        "SELECT id, lease_token, \
             CASE WHEN lease_expires_at < now() THEN 'lease expired: agent lost' \
             ELSE format('timeout: ran past its %ss timeout and its agent did not stop it', \
                 timeout_seconds) END \
         FROM jobs \
         WHERE state = 'running' AND ",
        overdue!("1"),
        " ORDER BY lease_expires_at LIMIT $2"
    ))
    .bind(margin.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Transition `running -> queued | errored | cancelled` by the reaper, for a
/// lease found by [`expired_leases`]: counted as an infra failure (outcome
/// `RECLAIMED`, with `reason`), or `cancelled` when a cancel was requested.
///
/// Guarded like every transition: the job must still be running under the
/// same token, and its lease still expired (or its timeout still passed) at
/// the moment of the write. A job completed, re-leased or heartbeated since
/// the scan is not touched, and `None` is returned.
pub async fn reclaim(
    pool: &PgPool,
    id: Uuid,
    token: Uuid,
    reason: &str,
    margin: Duration,
) -> Result<Option<String>> {
    let mut tx = pool.begin().await?;
    let state: Option<String> = sqlx::query_scalar(concat!(
        "WITH done AS ( \
             UPDATE jobs SET \
                 state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' \
                     WHEN attempt < max_attempts THEN 'queued' ELSE 'errored' END, \
                 finished_at = CASE WHEN cancel_requested_at IS NULL AND attempt < max_attempts \
                     THEN NULL ELSE now() END, \
                 lease_token = NULL, leased_at = NULL, lease_expires_at = NULL, \
                 heartbeat_at = NULL \
             WHERE id = $1 AND lease_token = $2 AND state = 'running' AND ",
        overdue!("4"),
        " RETURNING id, state \
         ), recorded AS ( \
             UPDATE attempts a SET finished_at = now(), outcome = 'RECLAIMED', error = $3 \
             FROM done WHERE a.lease_token = $2 AND a.job_id = done.id AND a.outcome IS NULL \
         ) \
         SELECT state FROM done"
    ))
    .bind(id)
    .bind(token)
    .bind(reason)
    .bind(margin.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    if state.as_deref() == Some("queued") {
        notify_queued(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(state)
}

/// What a cancel did: queued jobs cancelled at once, running jobs asked to
/// stop, and jobs that had already finished.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled {
    pub cancelled: u32,
    pub stopping: u32,
    pub finished: u32,
}

/// Transition `queued -> cancelled`, and a stored stop request on `running`
/// jobs (their agent sees it on its next heartbeat and reports `CANCELLED`; if
/// it never does, the reaper ends the job `cancelled` when its lease expires).
/// `batch` selects every job of the batch `id`, otherwise the job `id`.
/// Returns `None` when no such job or batch exists (in `tenant`, when given).
pub async fn cancel(
    pool: &PgPool,
    id: Uuid,
    batch: bool,
    tenant: Option<&str>,
) -> Result<Option<Cancelled>> {
    const BY_JOB: &str = concat!(
        "WITH sel AS (SELECT id, state FROM jobs \
             WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
        cancel_rest!()
    );
    const BY_BATCH: &str = concat!(
        "WITH sel AS (SELECT id, state FROM jobs \
             WHERE batch_id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
        cancel_rest!()
    );
    let rows: Vec<(String, i64)> = sqlx::query_as(if batch { BY_BATCH } else { BY_JOB })
        .bind(id)
        .bind(tenant)
        .fetch_all(pool)
        .await?;
    let mut out = Cancelled::default();
    let mut any = false;
    for (state, n) in rows {
        any = true;
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        match state.as_str() {
            "cancelled*" => out.cancelled += n,
            "running" => out.stopping += n,
            _ => out.finished += n,
        }
    }
    Ok(any.then_some(out))
}

/// What is known of a lease, current or not: its attempt and the job's state.
#[derive(Debug, FromRow)]
struct LeaseRecord {
    job_id: Uuid,
    attempt: i32,
    outcome: Option<String>,
    credential: String,
    job_state: String,
    job_attempt: i32,
}

async fn lease_record(pool: &PgPool, token: Uuid) -> Result<Option<LeaseRecord>> {
    Ok(sqlx::query_as(
        "SELECT a.job_id, a.attempt, a.outcome, a.credential, j.state AS job_state, \
             j.attempt AS job_attempt \
         FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.lease_token = $1",
    )
    .bind(token)
    .fetch_optional(pool)
    .await?)
}

/// The error for a lease token that is not a current lease of `credential`,
/// explaining why from its `record`.
fn not_held(record: Option<LeaseRecord>, credential: &str, outcome: Option<&str>) -> QueueError {
    let Some(r) = record else {
        return QueueError::LeaseNotHeld("unknown lease token".to_string());
    };
    if r.credential != credential {
        return QueueError::LeaseOfOtherCredential;
    }
    let (job, attempt) = (r.job_id, r.attempt);
    QueueError::LeaseNotHeld(match (r.outcome, outcome) {
        (Some(recorded), Some(o)) if o != recorded => {
            format!("attempt {attempt} of job {job} was already completed as {recorded}, not {o}")
        }
        (Some(recorded), _) => {
            format!("attempt {attempt} of job {job} is already completed ({recorded})")
        }
        (None, _) => format!(
            "attempt {attempt} of job {job} is no longer current (job is {} on attempt {})",
            r.job_state, r.job_attempt
        ),
    })
}

/// Counts of a batch's jobs by state. Empty means the batch does not exist.
///
/// With `tenant`, only that tenant's jobs are seen: another tenant's batch
/// looks like no batch at all (here and in [`get_batch`]).
pub async fn batch_counts(
    pool: &PgPool,
    batch_id: Uuid,
    tenant: Option<&str>,
) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT state, count(*) FROM jobs \
         WHERE batch_id = $1 AND ($2::text IS NULL OR tenant_id = $2) GROUP BY state",
    )
    .bind(batch_id)
    .bind(tenant)
    .fetch_all(pool)
    .await?)
}

/// One page of a batch: up to `limit` jobs after position `after`, in
/// position order, and every attempt of those jobs.
pub async fn get_batch(
    pool: &PgPool,
    batch_id: Uuid,
    tenant: Option<&str>,
    with_output: bool,
    after: i32,
    limit: i64,
) -> Result<(Vec<JobRow>, Vec<AttemptRow>)> {
    let jobs = sqlx::query_as::<_, JobRow>(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE batch_id = $1 AND ($2::text IS NULL OR tenant_id = $2) \
          AND position > $3 ORDER BY position LIMIT $4"
    ))
    .bind(batch_id)
    .bind(tenant)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    let attempts = sqlx::query_as::<_, AttemptRow>(
        "SELECT a.lease_token, a.job_id, a.attempt, a.agent_id, a.started_at, a.finished_at, \
             a.outcome, a.exit_code, a.duration_ms, a.error, \
             CASE WHEN $2 THEN a.output_tail END AS output_tail, a.metrics \
         FROM attempts a JOIN jobs j ON j.id = a.job_id \
         WHERE a.job_id = ANY($1) \
         ORDER BY j.position, a.started_at",
    )
    .bind(&ids)
    .bind(with_output)
    .fetch_all(pool)
    .await?;
    Ok((jobs, attempts))
}

/// Whether `e` is a unique violation of the named constraint or index.
fn is_unique_violation(e: &sqlx::Error, constraint: &str) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() && db.constraint() == Some(constraint)
        }
        _ => false,
    }
}
