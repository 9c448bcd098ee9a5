//! The agent loop: the real `benchq_agent::Agent`, in-process, against the
//! real coordinator over gRPC on loopback, each test on a database of its own.
//!
//! Runners are in-process closures where a test is about the loop (leasing,
//! heartbeats, lease loss, refused results, panics, draining, outages) and
//! real `sh` children where it is about processes. What happened is read back
//! from the coordinator (GetBatch) or its tables, never from the agent: the
//! queue is what an operator sees.
//!
//! A lease is taken back by the coordinator's own reaper (`reap_once`) after
//! the lease is made to look expired, as if the agent's heartbeats had stopped
//! getting through: the attempt is recorded `RECLAIMED`, the job goes back to
//! the queue, and the agent's heartbeats and reports for the old token are
//! refused from then on.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benchq::proto::{CancelJobRequest, GetBatchRequest, Job, JobState, Outcome};
use benchq_agent::{Agent, AgentConfig, LeasedJob, ProcessRunner, RunResult, runner_fn};
use benchq_coordinator::reaper;
use benchq_coordinator::service::Timing;
use benchq_coordinator::{Config, Coordinator};
use sqlx::PgPool;
use tokio::sync::{Barrier, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::app::{TestApp, batch, migrated_db, spawn_app, spawn_app_with, test_timing};

const AGENT_ID: &str = "agent-test";

/// How long any awaited condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(5);

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(25);

/// A 1 s lease, so the agent heartbeats every ~333 ms.
fn short_lease() -> Timing {
    Timing {
        lease_ttl: Duration::from_secs(1),
        ..test_timing()
    }
}

fn config(url: &str, slots: Vec<i32>) -> AgentConfig {
    let mut config = AgentConfig::new(url, AGENT_ID, slots);
    // Long polls wake on NOTIFY: a longer wait costs nothing.
    config.lease_wait = Duration::from_secs(2);
    config
}

/// Starts `agent` on a task of its own: its shutdown token and the task.
fn start(agent: Agent) -> (CancellationToken, JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    (shutdown, task)
}

/// Shuts the agent down and waits for `run` to return.
async fn stop(shutdown: CancellationToken, task: JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("run returns soon after shutdown")
        .expect("agent task");
}

/// Polls `check` until it yields a value, failing the test after [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Enqueues one batch (job `i` on slot `i % parallel`): its id and its job ids.
async fn enqueue(app: &TestApp, scenarios: &[&str], parallel: i32) -> (String, Vec<Uuid>) {
    enqueue_for(app, "", scenarios, parallel).await
}

async fn enqueue_for(
    app: &TestApp,
    tenant: &str,
    scenarios: &[&str],
    parallel: i32,
) -> (String, Vec<Uuid>) {
    let mut request = batch(scenarios, parallel);
    request.tenant_id = tenant.into();
    let reply = app
        .client()
        .await
        .enqueue_batch(request)
        .await
        .expect("enqueue batch")
        .into_inner();
    let ids = reply.ids.iter().map(|id| id.parse().unwrap()).collect();
    (reply.job_id, ids)
}

/// Every job of a batch, as the coordinator reports it, in position order.
async fn get_batch(app: &TestApp, batch_id: &str) -> Vec<Job> {
    app.client()
        .await
        .get_batch(GetBatchRequest {
            job_id: batch_id.into(),
            ..Default::default()
        })
        .await
        .expect("get batch")
        .into_inner()
        .jobs
}

async fn state(pool: &PgPool, job: Uuid) -> String {
    sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(pool)
        .await
        .expect("job state")
}

/// Waits until `job` is in `want` (`running`, `passed`, …).
async fn wait_state(pool: &PgPool, job: Uuid, want: &str) {
    eventually(&format!("job {job} to be {want}"), || async {
        (state(pool, job).await == want).then_some(())
    })
    .await;
}

/// Takes `job`'s current lease back as the reaper does once an agent's
/// heartbeats stop arriving: the lease is made to look expired and the
/// reaper's scan-and-reclaim runs. A heartbeat landing between the two pushes
/// the expiry back and the reclaim is skipped, so this repeats until the
/// attempt is recorded `RECLAIMED`.
async fn take_lease_back(pool: &PgPool, job: Uuid) {
    let token: Uuid =
        sqlx::query_scalar("SELECT lease_token FROM jobs WHERE id = $1 AND state = 'running'")
            .bind(job)
            .fetch_optional(pool)
            .await
            .expect("the job's lease")
            .unwrap_or_else(|| panic!("job {job} is not running"));
    let outcome: String = eventually("the reaper to take the lease back", || async {
        sqlx::query(
            "UPDATE jobs SET lease_expires_at = now() - interval '1 second' \
             WHERE lease_token = $1",
        )
        .bind(token)
        .execute(pool)
        .await
        .expect("expire the lease");
        reaper::reap_once(pool, test_timing().timeout_margin)
            .await
            .expect("reap");
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT outcome FROM attempts WHERE lease_token = $1",
        )
        .bind(token)
        .fetch_one(pool)
        .await
        .expect("the lease's attempt")
    })
    .await;
    assert_eq!(outcome, "RECLAIMED");
}

/// `(attempt, outcome)` of every attempt of `job`, in order; `None` for an
/// attempt that has no result.
async fn attempt_outcomes(pool: &PgPool, job: Uuid) -> Vec<(i32, Option<String>)> {
    sqlx::query_as(
        "SELECT attempt, outcome FROM attempts WHERE job_id = $1 ORDER BY attempt, started_at",
    )
    .bind(job)
    .fetch_all(pool)
    .await
    .expect("attempts")
}

/// A directory of its own under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("benchq-agent-loop-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// A subdirectory, created.
    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).expect("scratch subdir");
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pid a script wrote to `file` (a whole line), once it is there.
async fn read_pid(file: &Path) -> i32 {
    eventually("the child to write its pid", || async {
        std::fs::read_to_string(file)
            .ok()
            .filter(|s| s.ends_with('\n'))
            .map(|s| s.trim().parse().expect("a pid"))
    })
    .await
}

/// Alive means: signal 0 succeeds and /proc does not show a zombie.
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) == 0 };
    exists
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
}

/// A port on loopback where nothing listens (for now).
fn unused_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe");
    probe.local_addr().expect("probe address")
}

/// A coordinator on `addr` (a fixed port) for the database at `db_url`.
async fn coordinator_on(addr: SocketAddr, db_url: &str) -> (CancellationToken, JoinHandle<()>) {
    let mut config = Config::new(addr, db_url);
    config.timing = test_timing();
    let coordinator = Coordinator::build(config).await.expect("build coordinator");
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        coordinator.run(token).await.expect("coordinator run");
    });
    (shutdown, task)
}

/// The agent leases only jobs of its slots and tenant, and what the runner
/// returns is recorded on the attempt, under the agent's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_its_own_slots_and_tenant_and_records_the_result() {
    let app = spawn_app().await;
    // Enqueued first, so the oldest queued job of slot 3 is another tenant's.
    let (other, _) = enqueue_for(&app, "other", &["o0", "o1", "o2", "o3"], 4).await;
    let (acme, ids) = enqueue_for(&app, "acme", &["a0", "a1", "a2", "a3"], 4).await;
    let runner = runner_fn(|job: LeasedJob, _cancel| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        RunResult {
            exit_code: Some(0),
            output_tail: format!("ran {} in {}", job.spec.scenario_id, job.namespace),
            metrics_json: Some(r#"{"score":1}"#.into()),
            ..RunResult::new(Outcome::Passed)
        }
    });
    let mut config = config(&app.url(), vec![3]);
    config.tenant_id = "acme".into();
    let (shutdown, task) = start(Agent::new(config, Arc::new(runner)).unwrap());
    wait_state(&app.pool, ids[3], "passed").await;
    stop(shutdown, task).await;

    let jobs = get_batch(&app, &acme).await;
    let done = &jobs[3];
    assert_eq!(done.spec.as_ref().unwrap().scenario_id, "a3");
    assert_eq!(done.state, JobState::Passed as i32);
    assert_eq!(done.attempts.len(), 1);
    let a = &done.attempts[0];
    assert_eq!(a.agent_id, AGENT_ID);
    assert_eq!(a.outcome, Outcome::Passed as i32);
    assert_eq!(a.exit_code, Some(0));
    assert_eq!(a.output_tail, "ran a3 in bench-w3");
    let metrics: serde_json::Value = serde_json::from_str(&a.metrics_json).unwrap();
    assert_eq!(metrics, serde_json::json!({"score": 1}));
    assert!(a.duration_ms >= 100, "duration {} ms", a.duration_ms);
    for job in jobs[..3].iter().chain(&get_batch(&app, &other).await) {
        assert_eq!(
            (job.state, job.attempt),
            (JobState::Queued as i32, 0),
            "{} of another slot or tenant was leased",
            job.spec.as_ref().unwrap().scenario_id
        );
    }
}

/// A job running for longer than its lease's TTL keeps its lease. The
/// coordinator's reaper (every 200 ms, from one TTL after start) takes back
/// any expired lease; the agent's heartbeats push the expiry back
/// (heartbeat_at advances), so the lease never lapses and the result is
/// accepted under the original token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_job_leased() {
    let app = spawn_app_with(short_lease()).await;
    let (batch_id, ids) = enqueue(&app, &["long"], 1).await;
    let runner = runner_fn(|_job, _cancel| async {
        tokio::time::sleep(Duration::from_millis(1400)).await;
        RunResult::new(Outcome::Passed)
    });
    let (shutdown, task) =
        start(Agent::new(config(&app.url(), vec![0]), Arc::new(runner)).unwrap());
    wait_state(&app.pool, ids[0], "running").await;

    let leased_at = Instant::now();
    let mut token: Option<Uuid> = None;
    let mut heartbeats: Vec<f64> = Vec::new();
    let mut held_for = Duration::ZERO;
    loop {
        let row: (String, Option<Uuid>, Option<f64>, Option<bool>) = sqlx::query_as(
            "SELECT state, lease_token, extract(epoch FROM heartbeat_at)::float8, \
                    lease_expires_at > now() \
             FROM jobs WHERE id = $1",
        )
        .bind(ids[0])
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let (state, current, heartbeat_at, unexpired) = row;
        if state != "running" {
            break;
        }
        held_for = leased_at.elapsed();
        assert!(held_for < PATIENCE, "the job never finished");
        assert_eq!(
            unexpired,
            Some(true),
            "the lease expired after {held_for:?}"
        );
        assert_eq!(*token.get_or_insert(current.unwrap()), current.unwrap());
        let heartbeat_at = heartbeat_at.unwrap();
        if heartbeats.last() != Some(&heartbeat_at) {
            heartbeats.push(heartbeat_at);
        }
        tokio::time::sleep(POLL).await;
    }
    stop(shutdown, task).await;

    assert!(
        held_for > Duration::from_millis(1100),
        "observed running for only {held_for:?}, not past the 1 s TTL"
    );
    // The lease's own heartbeat_at, then one per ~333 ms.
    assert!(
        heartbeats.len() >= 4,
        "heartbeat_at took only {} values: {heartbeats:?}",
        heartbeats.len()
    );
    let job = &get_batch(&app, &batch_id).await[0];
    assert_eq!(job.state, JobState::Passed as i32);
    assert_eq!(
        job.attempts.len(),
        1,
        "the original lease completed the job"
    );
}

/// One worker per slot: two slots run their jobs at the same time, which the
/// coordinator sees as overlapping attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slots_run_their_jobs_at_the_same_time() {
    let app = spawn_app().await;
    let (batch_id, ids) = enqueue(&app, &["s0", "s1"], 2).await;
    let both = Arc::new(Barrier::new(2));
    let runner = runner_fn(move |_job, _cancel| {
        let both = both.clone();
        async move {
            // Passes only if the other slot's job is running too.
            match tokio::time::timeout(Duration::from_secs(3), both.wait()).await {
                Ok(_) => RunResult::new(Outcome::Passed),
                Err(_) => RunResult::new(Outcome::Failed),
            }
        }
    });
    let agent = Agent::new(config(&app.url(), vec![1, 0, 1]), Arc::new(runner)).unwrap();
    assert_eq!(agent.config().slots, vec![0, 1]);
    let (shutdown, task) = start(agent);
    for id in &ids {
        wait_state(&app.pool, *id, "passed").await;
    }
    stop(shutdown, task).await;

    let jobs = get_batch(&app, &batch_id).await;
    let span = |job: &Job| {
        let a = &job.attempts[0];
        let t = |ts: &prost_types::Timestamp| (ts.seconds, ts.nanos);
        (
            t(a.started_at.as_ref().unwrap()),
            t(a.finished_at.as_ref().unwrap()),
        )
    };
    let ((start0, end0), (start1, end1)) = (span(&jobs[0]), span(&jobs[1]));
    assert!(
        start0 < end1 && start1 < end0,
        "attempts did not overlap: {jobs:?}"
    );
}

/// The coordinator takes the lease back: the next heartbeat is refused, the
/// runner's cancel token fires, its result is not recorded (the attempt keeps
/// what the reaper wrote), and the slot goes on to lease the job again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_cancels_the_runner_and_records_nothing() {
    let app = spawn_app_with(short_lease()).await;
    let (batch_id, ids) = enqueue(&app, &["lost"], 1).await;
    let cancelled = Arc::new(Notify::new());
    let runner = runner_fn({
        let cancelled = cancelled.clone();
        move |job: LeasedJob, cancel: CancellationToken| {
            let cancelled = cancelled.clone();
            async move {
                if job.attempt > 1 {
                    return RunResult::new(Outcome::Passed);
                }
                tokio::select! {
                    _ = cancel.cancelled() => cancelled.notify_one(),
                    _ = tokio::time::sleep(Duration::from_secs(4)) => {}
                }
                RunResult {
                    output_tail: "the stale attempt's output".into(),
                    ..RunResult::new(Outcome::Failed)
                }
            }
        }
    });
    let (shutdown, task) =
        start(Agent::new(config(&app.url(), vec![0]), Arc::new(runner)).unwrap());
    wait_state(&app.pool, ids[0], "running").await;

    take_lease_back(&app.pool, ids[0]).await;
    let taken = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), cancelled.notified())
        .await
        .expect("the runner is cancelled after the next heartbeat");
    let noticed = taken.elapsed();
    wait_state(&app.pool, ids[0], "passed").await;
    stop(shutdown, task).await;

    assert!(
        noticed < Duration::from_secs(1),
        "noticed after {noticed:?}"
    );
    let job = &get_batch(&app, &batch_id).await[0];
    let outcomes: Vec<(i32, i32, &str, &str)> = job
        .attempts
        .iter()
        .map(|a| {
            (
                a.attempt,
                a.outcome,
                a.error.as_str(),
                a.output_tail.as_str(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (
                1,
                Outcome::Reclaimed as i32,
                "lease expired: agent lost",
                ""
            ),
            (2, Outcome::Passed as i32, "", ""),
        ]
    );
}

/// The same with a real child: losing the lease stops the child's whole
/// process group, and the agent records nothing for that attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_child_process() {
    let app = spawn_app_with(short_lease()).await;
    let (_, ids) = enqueue(&app, &["lost-child"], 1).await;
    let scratch = Scratch::new();
    let pid_file = scratch.path().join("sleep.pid");
    let script = format!(
        r#"[ "$BENCHQ_ATTEMPT" = 1 ] || exit 0
           sleep 30 &
           echo $! > '{}'
           wait"#,
        pid_file.display()
    );
    let runner = ProcessRunner::new("sh", ["-c", script.as_str()])
        .with_work_dir(scratch.dir("work"))
        .with_grace(Duration::from_millis(300));
    let (shutdown, task) =
        start(Agent::new(config(&app.url(), vec![0]), Arc::new(runner)).unwrap());
    let pid = read_pid(&pid_file).await;
    assert!(alive(pid));

    take_lease_back(&app.pool, ids[0]).await;
    eventually("the child's process group to be stopped", || async {
        (!alive(pid)).then_some(())
    })
    .await;
    wait_state(&app.pool, ids[0], "passed").await;
    stop(shutdown, task).await;

    assert_eq!(
        attempt_outcomes(&app.pool, ids[0]).await,
        vec![(1, Some("RECLAIMED".into())), (2, Some("PASSED".into()))]
    );
    assert_eq!(
        std::fs::read_dir(scratch.path().join("work"))
            .unwrap()
            .count(),
        0,
        "job directory left behind"
    );
}

/// An operator cancels the running job (CancelJob): the agent learns it from
/// its next heartbeat and cancels the runner, and — unlike a lost lease — the
/// result is reported; the job ends `cancelled` and is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_stops_the_runner_and_its_result_is_reported() {
    let app = spawn_app_with(short_lease()).await;
    let (batch_id, ids) = enqueue(&app, &["cancel-me"], 1).await;
    let runner = runner_fn(|_job, cancel: CancellationToken| async move {
        tokio::select! {
            _ = cancel.cancelled() => RunResult::error("stopped: cancel requested"),
            _ = tokio::time::sleep(Duration::from_secs(4)) => RunResult::new(Outcome::Passed),
        }
    });
    let (shutdown, task) =
        start(Agent::new(config(&app.url(), vec![0]), Arc::new(runner)).unwrap());
    wait_state(&app.pool, ids[0], "running").await;

    app.client()
        .await
        .cancel_job(CancelJobRequest {
            id: ids[0].to_string(),
        })
        .await
        .expect("cancel job");
    wait_state(&app.pool, ids[0], "cancelled").await;
    stop(shutdown, task).await;

    let job = &get_batch(&app, &batch_id).await[0];
    assert_eq!(job.state, JobState::Cancelled as i32);
    assert_eq!(job.attempts.len(), 1, "a cancelled job is not retried");
    let a = &job.attempts[0];
    assert!(a.finished_at.is_some(), "the agent reported the attempt");
    assert_eq!(a.agent_id, AGENT_ID);
    // The agent, not the runner, decides what a stopped run is reported as.
    assert_eq!(a.outcome, Outcome::Cancelled as i32);
    assert_eq!(
        a.error,
        "cancelled: an operator asked for it (stopped: cancel requested)"
    );
}

/// A result the coordinator refuses (the lease was taken back while the job
/// was finishing) is dropped, and the slot goes on with the next jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_result_does_not_stop_the_slot() {
    // A 10 s lease: no heartbeat is due while these runners run, so the first
    // the agent hears of the loss is the refusal of its Complete.
    let app = spawn_app().await;
    let (_, ids) = enqueue(&app, &["taken-back", "next"], 1).await;
    let pool = app.pool.clone();
    let runner = runner_fn(move |job: LeasedJob, _cancel| {
        let pool = pool.clone();
        async move {
            if job.spec.scenario_id == "taken-back" && job.attempt == 1 {
                take_lease_back(&pool, job.id.parse().unwrap()).await;
            }
            RunResult::new(Outcome::Passed)
        }
    });
    let (shutdown, task) =
        start(Agent::new(config(&app.url(), vec![0]), Arc::new(runner)).unwrap());
    wait_state(&app.pool, ids[0], "passed").await;
    wait_state(&app.pool, ids[1], "passed").await;
    stop(shutdown, task).await;

    assert_eq!(
        attempt_outcomes(&app.pool, ids[0]).await,
        vec![(1, Some("RECLAIMED".into())), (2, Some("PASSED".into()))]
    );
    assert_eq!(
        attempt_outcomes(&app.pool, ids[1]).await,
        vec![(1, Some("PASSED".into()))]
    );
}

/// A runner that panics is an infrastructure error: recorded as ERROR with
/// the panic message, and retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_runner_is_recorded_as_error_and_retried() {
    let app = spawn_app().await;
    let (batch_id, ids) = enqueue(&app, &["panics"], 1).await;
    let runner = runner_fn(|job: LeasedJob, _cancel| async move {
        if job.attempt == 1 {
            panic!("boom");
        }
        RunResult::new(Outcome::Passed)
    });
    let (shutdown, task) =
        start(Agent::new(config(&app.url(), vec![0]), Arc::new(runner)).unwrap());
    wait_state(&app.pool, ids[0], "passed").await;
    stop(shutdown, task).await;

    let job = &get_batch(&app, &batch_id).await[0];
    assert_eq!(job.attempts.len(), 2);
    let first = &job.attempts[0];
    assert_eq!(first.outcome, Outcome::Error as i32);
    assert_eq!(first.error, "runner failed: panicked: boom");
    assert_eq!(job.attempts[1].outcome, Outcome::Passed as i32);
}

/// Shutdown mid-job drains: `run` waits for the running job, records its
/// result once, and leases nothing more though work is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_running_job_and_leases_no_more() {
    let app = spawn_app().await;
    let (_, ids) = enqueue(&app, &["first", "second"], 1).await;
    let started = Arc::new(Notify::new());
    let finish = Arc::new(Notify::new());
    let runner = runner_fn({
        let (started, finish) = (started.clone(), finish.clone());
        move |_job, _cancel| {
            let (started, finish) = (started.clone(), finish.clone());
            async move {
                started.notify_one();
                let _ = tokio::time::timeout(Duration::from_secs(4), finish.notified()).await;
                RunResult::new(Outcome::Passed)
            }
        }
    });
    let (shutdown, task) =
        start(Agent::new(config(&app.url(), vec![0]), Arc::new(runner)).unwrap());
    tokio::time::timeout(PATIENCE, started.notified())
        .await
        .expect("the first job starts");

    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "run returned with a job running");
    finish.notify_one();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("run returns once the job is reported")
        .unwrap();

    // Reported before run returned; nothing leased after.
    assert_eq!(state(&app.pool, ids[0]).await, "passed");
    assert_eq!(
        attempt_outcomes(&app.pool, ids[0]).await,
        vec![(1, Some("PASSED".into()))]
    );
    assert_eq!(state(&app.pool, ids[1]).await, "queued");
    assert_eq!(attempt_outcomes(&app.pool, ids[1]).await, vec![]);
}

/// An idle agent in a long poll stops at once on shutdown rather than at the
/// end of the poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_a_pending_long_poll() {
    let app = spawn_app().await; // Long polls of up to 10 s.
    let mut config = config(&app.url(), vec![0]);
    config.lease_wait = Duration::from_secs(10);
    let runner = runner_fn(|_job, _cancel| async { RunResult::new(Outcome::Passed) });
    let (shutdown, task) = start(Agent::new(config, Arc::new(runner)).unwrap());
    // Time to connect and be waiting in Lease; nothing to observe it by.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished());
    let asked = Instant::now();
    stop(shutdown, task).await;
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "run took {:?} to return",
        asked.elapsed()
    );
}

/// The coordinator goes away while a job runs and comes back on the same
/// address and database: the agent keeps retrying its result until the new
/// coordinator records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_survives_a_coordinator_restart() {
    let app = spawn_app().await;
    let (addr, db_url, pool) = (app.addr, app.db_url.clone(), app.pool.clone());
    let (batch_id, ids) = enqueue(&app, &["survivor"], 1).await;
    let finish = Arc::new(Notify::new());
    let runner = runner_fn({
        let finish = finish.clone();
        move |_job, _cancel| {
            let finish = finish.clone();
            async move {
                let _ = tokio::time::timeout(Duration::from_secs(4), finish.notified()).await;
                RunResult {
                    exit_code: Some(0),
                    ..RunResult::new(Outcome::Passed)
                }
            }
        }
    });
    let (shutdown, task) =
        start(Agent::new(config(&app.url(), vec![0]), Arc::new(runner)).unwrap());
    wait_state(&pool, ids[0], "running").await;

    app.stop().await;
    finish.notify_one();
    // The first Complete fails (nothing listens); retries back off from 100 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state(&pool, ids[0]).await, "running");
    let (server, served) = coordinator_on(addr, &db_url).await;
    wait_state(&pool, ids[0], "passed").await;
    stop(shutdown, task).await;

    let reply = benchq::client::connect(&format!("http://{addr}"))
        .await
        .unwrap()
        .get_batch(GetBatchRequest {
            job_id: batch_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let attempts = &reply.jobs[0].attempts;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Outcome::Passed as i32);
    assert_eq!(attempts[0].exit_code, Some(0));
    server.cancel();
    served.await.unwrap();
}

/// An agent started before its coordinator retries leasing with backoff and
/// picks up work once the coordinator is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_waits_for_a_coordinator_that_is_not_up_yet() {
    let (db_url, pool) = migrated_db().await;
    let addr = unused_addr();
    let runner = runner_fn(|_job, _cancel| async { RunResult::new(Outcome::Passed) });
    let (shutdown, task) =
        start(Agent::new(config(&format!("http://{addr}"), vec![0]), Arc::new(runner)).unwrap());
    // A few failed Lease calls: 100, 200, 400 ms apart (with jitter).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!task.is_finished());

    let (server, served) = coordinator_on(addr, &db_url).await;
    let reply = benchq::client::connect(&format!("http://{addr}"))
        .await
        .unwrap()
        .enqueue_batch(batch(&["late"], 1))
        .await
        .unwrap()
        .into_inner();
    let id: Uuid = reply.ids[0].parse().unwrap();
    wait_state(&pool, id, "passed").await;
    stop(shutdown, task).await;
    server.cancel();
    served.await.unwrap();
}

/// A real child end to end: the job arrives in BENCHQ_* variables, the
/// exit code is the verdict, the output tail and the result file are recorded,
/// and the job directory is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_child_process_end_to_end() {
    let app = spawn_app().await;
    let (batch_id, ids) = enqueue(&app, &["e2e", "other-slot"], 2).await;
    let scratch = Scratch::new();
    let runner = ProcessRunner::new(
        "sh",
        [
            "-c",
            r#"echo "$BENCHQ_AGENT_ID ran $BENCHQ_SCENARIO_ID in $BENCHQ_NAMESPACE"
               echo '{"x": 1}' > "$BENCHQ_RESULT_FILE"
               exit 1"#,
        ],
    )
    .with_agent_id(AGENT_ID)
    .with_work_dir(scratch.path());
    let (shutdown, task) =
        start(Agent::new(config(&app.url(), vec![0]), Arc::new(runner)).unwrap());
    wait_state(&app.pool, ids[0], "failed").await;
    stop(shutdown, task).await;

    let job = &get_batch(&app, &batch_id).await[0];
    assert_eq!(job.attempts.len(), 1, "FAILED is a result, not retried");
    let a = &job.attempts[0];
    assert_eq!(a.outcome, Outcome::Failed as i32);
    assert_eq!(a.exit_code, Some(1));
    assert_eq!(a.output_tail, "agent-test ran e2e in bench-w0\n");
    let metrics: serde_json::Value = serde_json::from_str(&a.metrics_json).unwrap();
    assert_eq!(metrics, serde_json::json!({"x": 1}));
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "job directory left behind"
    );
}

/// A forced exit drops `run` with a job running: its processes must not
/// outlive it, and no result is recorded (the lease is left to expire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_agent_kills_its_running_jobs() {
    let app = spawn_app().await;
    let (_, ids) = enqueue(&app, &["abandoned"], 1).await;
    let scratch = Scratch::new();
    let pid_file = scratch.path().join("sleep.pid");
    // The child ignores SIGTERM: only the kill on drop stops it.
    let script = format!(
        "trap '' TERM; sleep 30 & echo $! > '{}'; wait",
        pid_file.display()
    );
    let runner =
        ProcessRunner::new("sh", ["-c", script.as_str()]).with_work_dir(scratch.dir("work"));
    let (_shutdown, task) =
        start(Agent::new(config(&app.url(), vec![0]), Arc::new(runner)).unwrap());
    let pid = read_pid(&pid_file).await;
    assert!(alive(pid));

    task.abort();
    let _ = task.await;
    eventually("the job's processes to die", || async {
        (!alive(pid)).then_some(())
    })
    .await;
    assert_eq!(state(&app.pool, ids[0]).await, "running");
    assert_eq!(attempt_outcomes(&app.pool, ids[0]).await, vec![(1, None)]);
}
