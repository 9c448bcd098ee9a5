//! The agent where an adversary would push it: a coordinator that vanishes
//! mid-job (the agent must fence itself before the job could run twice),
//! results the coordinator would refuse, processes that leave the job's
//! process group, a credential the coordinator refuses, and job directories
//! left behind by a killed agent.
//!
//! The real coordinator (in-process, or its binary where tokens are needed)
//! and, mostly, the real `benchq-agent` binary running `sh` scripts that
//! write the pids of their processes to files, so that the test checks from
//! the outside which processes are still there.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benchq::client::ClientOptions;
use benchq::proto::{CancelJobRequest, JobSpec, Outcome};
use benchq::report::{MAX_ERROR, MAX_OUTPUT_TAIL};
use benchq_agent::{Agent, AgentConfig, RunResult, runner_fn};
use benchq_coordinator::auth::{Role, add_token};
use benchq_coordinator::service::Timing;
use benchq_coordinator::{Config, Coordinator};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::agents::{job_row, job_script, read_pid, wait_exit, wait_log, wait_state};
use crate::support::app::{
    TestApp, batch, eventually, migrated_db, spawn_agent_bin_with, spawn_app_with,
    spawn_coordinator_bin, test_timing,
};

/// A lease of `ttl`: heartbeats every third of it, fencing at half of it.
fn lease_of(ttl: Duration) -> Timing {
    Timing {
        lease_ttl: ttl,
        ..test_timing()
    }
}

/// Enqueues one batch on slot 0 through `app`: the job ids.
async fn enqueue(app: &TestApp, scenarios: &[&str]) -> Vec<Uuid> {
    enqueue_with(&mut app.client().await, scenarios).await
}

async fn enqueue_with(client: &mut benchq::client::Client, scenarios: &[&str]) -> Vec<Uuid> {
    let mut request = batch(scenarios, 1);
    request.shared = Some(JobSpec {
        max_attempts: 2,
        ..request.shared.unwrap_or_default()
    });
    let reply = client
        .enqueue_batch(request)
        .await
        .expect("enqueue batch")
        .into_inner();
    reply.ids.iter().map(|id| id.parse().unwrap()).collect()
}

/// One attempt as recorded.
#[derive(Debug)]
struct Try {
    attempt: i32,
    outcome: Option<String>,
    exit_code: Option<i32>,
    error: String,
    output_tail: String,
    metrics: Option<String>,
}

/// (attempt, outcome, exit code, error, output tail, metrics as text)
type AttemptRow = (
    i32,
    Option<String>,
    Option<i32>,
    String,
    String,
    Option<String>,
);

async fn attempts(pool: &PgPool, job: Uuid) -> Vec<Try> {
    let rows: Vec<AttemptRow> = sqlx::query_as(
        "SELECT attempt, outcome, exit_code, coalesce(error, ''), \
                    coalesce(output_tail, ''), metrics::text \
             FROM attempts WHERE job_id = $1 ORDER BY started_at",
    )
    .bind(job)
    .fetch_all(pool)
    .await
    .expect("attempts");
    rows.into_iter()
        .map(
            |(attempt, outcome, exit_code, error, output_tail, metrics)| Try {
                attempt,
                outcome,
                exit_code,
                error,
                output_tail,
                metrics,
            },
        )
        .collect()
}

/// When the job's lease was last renewed, as the database says.
async fn heartbeat_at(pool: &PgPool, job: Uuid) -> Option<f64> {
    sqlx::query_scalar("SELECT extract(epoch FROM heartbeat_at)::float8 FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(pool)
        .await
        .expect("heartbeat_at")
}

/// Waits for the job's lease to be renewed after `after` (a `heartbeat_at`).
async fn next_heartbeat(pool: &PgPool, job: Uuid, after: Option<f64>, limit: Duration) -> f64 {
    eventually(limit, "a heartbeat", || async {
        heartbeat_at(pool, job)
            .await
            .filter(|at| Some(*at) != after)
    })
    .await
}

/// The process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) == 0 }
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
}

async fn dead_within(pid: i32, limit: Duration, what: &str) {
    eventually(limit, what, || async { (!alive(pid)).then_some(()) }).await;
}

/// A coordinator on `addr` (a fixed port: a restart) for the database at
/// `db_url`.
async fn coordinator_on(
    addr: SocketAddr,
    db_url: &str,
    timing: Timing,
) -> (CancellationToken, JoinHandle<()>) {
    let mut config = Config::new(addr, db_url);
    config.timing = timing;
    let coordinator = Coordinator::build(config).await.expect("build coordinator");
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        coordinator.run(token).await.expect("coordinator run");
    });
    (shutdown, task)
}

const FENCED: &str = "stopping the job so that it cannot run twice";

/// The coordinator vanishes while a job runs (2 s lease). The agent gets no
/// heartbeat through for half the TTL, and stops the job itself, killing a
/// process that ignores SIGTERM after a quarter of the TTL although its
/// grace period is 10 s: the job is dead before the lease could expire and
/// be handed to another agent. A coordinator back on the same database
/// then gets the agent's ERROR report (the attempt counts, as an infra
/// error), and the job's second attempt passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_coordinator_makes_the_agent_stop_its_job_before_the_lease_expires() {
    let ttl = Duration::from_secs(2);
    let app = spawn_app_with(lease_of(ttl)).await;
    let (addr, db_url, pool) = (app.addr, app.db_url.clone(), app.pool.clone());
    let (runner, dir) = job_script(
        "stubborn.sh",
        r#"[ "$BENCHQ_ATTEMPT" = 1 ] || exit 0
           trap '' TERM
           echo $$ > "$D/leader"
           exec sleep 30"#,
    );
    let agent = spawn_agent_bin_with(
        &app.url(),
        "fenced",
        &[0],
        &["--grace", "10s", "--lease-wait", "1s"],
        &[runner.to_str().unwrap()],
    );
    let job = enqueue(&app, &["stubborn"]).await[0];
    let leader = read_pid(&dir.join("leader")).await;
    // Cut right after a heartbeat got through: the fence is then half a TTL
    // away, measured from the moment that heartbeat was sent.
    let last = heartbeat_at(&pool, job).await;
    next_heartbeat(&pool, job, last, Duration::from_secs(2)).await;
    // That heartbeat was sent a little before this: the coordinator keeps the
    // lease until at least one TTL after it.
    let renewed = Instant::now();
    app.stop().await;

    dead_within(leader, ttl, "the job to be stopped within one TTL").await;
    let dead_after = renewed.elapsed();
    eprintln!("job dead {dead_after:?} after its last heartbeat got through");
    assert!(
        dead_after < ttl,
        "dead only {dead_after:?} after the last heartbeat"
    );
    assert!(
        dead_after >= Duration::from_millis(1200),
        "stopped {dead_after:?} after the last heartbeat: before half the TTL (1 s) \
         plus the quarter given to stopping (0.5 s)"
    );
    wait_log(&agent, FENCED, Duration::from_secs(1)).await;
    // Nothing reported yet: the coordinator is gone.
    assert_eq!(job_row(&pool, job).await, ("running".into(), 1));

    let (server, served) = coordinator_on(addr, &db_url, lease_of(ttl)).await;
    wait_state(&pool, job, "passed", Duration::from_secs(8)).await;
    let tries = attempts(&pool, job).await;
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert_eq!(
        (tries[0].attempt, tries[0].outcome.as_deref()),
        (1, Some("ERROR"))
    );
    assert!(
        tries[0]
            .error
            .starts_with("lost contact with the coordinator for 1")
            && tries[0].error.ends_with(
                "s: stopped the job so it cannot run twice \
                 (the runner did not stop within 0.5s: aborted)"
            ),
        "{}",
        tries[0].error
    );
    assert_eq!(
        (tries[1].attempt, tries[1].outcome.as_deref()),
        (2, Some("PASSED"))
    );
    assert!(!alive(leader));
    server.cancel();
    served.await.unwrap();
}

/// A coordinator restart shorter than half the lease (4 s TTL, fence at
/// 2 s) leaves the running job alone: the same process runs on, heartbeats
/// reach the new coordinator under the same lease, and the job passes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_coordinator_outage_leaves_the_running_job_alone() {
    let ttl = Duration::from_secs(4);
    let app = spawn_app_with(lease_of(ttl)).await;
    let (addr, db_url, pool) = (app.addr, app.db_url.clone(), app.pool.clone());
    let (runner, dir) = job_script(
        "patient.sh",
        r#"echo $$ > "$D/leader"
           while [ ! -e "$D/finish" ]; do sleep 0.05; done"#,
    );
    let agent = spawn_agent_bin_with(
        &app.url(),
        "patient",
        &[0],
        &["--lease-wait", "1s"],
        &[runner.to_str().unwrap()],
    );
    let job = enqueue(&app, &["patient"]).await[0];
    let leader = read_pid(&dir.join("leader")).await;
    let first = heartbeat_at(&pool, job).await;
    let renewed = next_heartbeat(&pool, job, first, Duration::from_secs(3)).await;

    app.stop().await;
    let down = Instant::now();
    let (server, served) = coordinator_on(addr, &db_url, lease_of(ttl)).await;
    let outage = down.elapsed();
    eprintln!("coordinator down for {outage:?}");
    assert!(outage < ttl / 4, "the restart took {outage:?}");
    // A heartbeat through the new coordinator, under the same lease.
    next_heartbeat(&pool, job, Some(renewed), Duration::from_secs(3)).await;
    assert!(alive(leader), "the job was disturbed");

    std::fs::write(dir.join("finish"), "").unwrap();
    wait_state(&pool, job, "passed", Duration::from_secs(5)).await;
    let tries = attempts(&pool, job).await;
    assert_eq!(tries.len(), 1, "{tries:?}");
    assert_eq!(tries[0].outcome.as_deref(), Some("PASSED"));
    assert!(!agent.log().contains(FENCED), "log:\n{}", agent.log());
    server.cancel();
    served.await.unwrap();
}

/// Result files that are JSON to the agent's eye but that PostgreSQL cannot
/// store: the metrics are dropped with a note, and the verdict (FAILED,
/// exit code 1) is recorded at the first attempt rather than lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_the_database_cannot_store_do_not_cost_the_result() {
    let app = spawn_app_with(test_timing()).await;
    let (runner, _) = job_script(
        "bad-metrics.sh",
        r#"case "$BENCHQ_SCENARIO_ID" in
             nul) printf '%s' '{"x":"\u0000"}' ;;
             huge-number) printf '%s' '{"x":1e400}' ;;
             lone-surrogate) printf '%s' '{"x":"\ud800"}' ;;
             deep-nesting) printf '%0200d' 0 | tr 0 '[' ;;
           esac > "$BENCHQ_RESULT_FILE"
           echo "ran $BENCHQ_SCENARIO_ID"
           exit 1"#,
    );
    let _agent = spawn_agent_bin_with(
        &app.url(),
        "metrics",
        &[0],
        &[],
        &[runner.to_str().unwrap()],
    );
    let cases = [
        ("nul", "result file contains a NUL character"),
        (
            "huge-number",
            "result file is not valid JSON: number out of range",
        ),
        (
            "lone-surrogate",
            // serde_json's words for it vary: "lone leading surrogate",
            // "unexpected end of hex escape".
            "result file is not valid JSON: ",
        ),
        (
            "deep-nesting",
            "result file is not valid JSON: recursion limit exceeded",
        ),
    ];
    let scenarios: Vec<&str> = cases.iter().map(|(s, _)| *s).collect();
    let jobs = enqueue(&app, &scenarios).await;
    for (job, (scenario, note)) in jobs.iter().zip(cases) {
        wait_state(&app.pool, *job, "failed", Duration::from_secs(5)).await;
        let tries = attempts(&app.pool, *job).await;
        assert_eq!(tries.len(), 1, "{scenario}: {tries:?}");
        let t = &tries[0];
        assert_eq!(
            (t.outcome.as_deref(), t.exit_code, t.metrics.as_deref()),
            (Some("FAILED"), Some(1), None),
            "{scenario}"
        );
        assert!(
            t.error.starts_with(note) && t.error.ends_with(": dropped"),
            "{scenario}: {}",
            t.error
        );
        assert_eq!(t.output_tail, format!("ran {scenario}\n"));
    }
}

/// A custom runner's oversized report is cut to fit (error kept from its
/// start, output from its end, unstorable metrics dropped with a note);
/// a report the coordinator still refuses (here a duration it cannot
/// store) is sent again as the verdict alone. Either way the outcome
/// arrives at the first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_runners_report_is_made_to_fit_or_sent_as_the_verdict_alone() {
    let app = spawn_app_with(test_timing()).await;
    let jobs = enqueue(&app, &["oversized", "absurd-duration"]).await;
    let runner = runner_fn(|job: benchq_agent::LeasedJob, _cancel| async move {
        let mut result = RunResult {
            exit_code: Some(1),
            error: format!("START{}", "e".repeat(2 * MAX_ERROR)),
            output_tail: format!("{}END", "o".repeat(2 * MAX_OUTPUT_TAIL)),
            metrics_json: Some(r#"{"x":"\u0000"}"#.into()),
            ..RunResult::new(Outcome::Failed)
        };
        if job.spec.scenario_id == "absurd-duration" {
            result.metrics_json = Some(r#"{"score":1}"#.into());
            result.duration = Duration::MAX;
        }
        result
    });
    let mut config = AgentConfig::new(app.url(), "custom", vec![0]);
    config.lease_wait = Duration::from_secs(2);
    let agent = Agent::new(config, Arc::new(runner)).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    for job in &jobs {
        wait_state(&app.pool, *job, "failed", Duration::from_secs(5)).await;
    }
    shutdown.cancel();
    task.await.unwrap();

    let cut = &attempts(&app.pool, jobs[0]).await;
    assert_eq!(cut.len(), 1);
    let t = &cut[0];
    assert_eq!(
        (t.outcome.as_deref(), t.exit_code),
        (Some("FAILED"), Some(1))
    );
    assert_eq!(t.error.len(), MAX_ERROR);
    assert!(t.error.starts_with("STARTeee"), "the start is kept");
    assert!(
        t.error.ends_with(
            "eee; metrics dropped: the runner's metrics_json contains a NUL character, \
             which PostgreSQL cannot store"
        ),
        "the note is kept: {}",
        &t.error[t.error.len() - 200..]
    );
    assert_eq!(t.output_tail.len(), MAX_OUTPUT_TAIL);
    assert!(t.output_tail.ends_with("oooEND"), "the end is kept");
    assert_eq!(t.metrics, None);

    let minimal = &attempts(&app.pool, jobs[1]).await;
    assert_eq!(minimal.len(), 1);
    let t = &minimal[0];
    assert_eq!(
        (t.outcome.as_deref(), t.exit_code),
        (Some("FAILED"), Some(1))
    );
    assert!(
        t.error
            .starts_with("the coordinator refused the full report: ")
            && t.error.contains("duration_ms"),
        "{}",
        t.error
    );
    assert_eq!((t.output_tail.as_str(), t.metrics.as_deref()), ("", None));
}

/// A job script that starts a daemon out of its process group and session
/// (`setsid`, no shared pipes), then runs on.
const DAEMONIZING: &str = r#"[ "$BENCHQ_ATTEMPT" = 1 ] || exit 0
setsid sh -c 'echo $$ > "$0/daemon"; exec sleep 301' "$D" </dev/null >/dev/null 2>&1 &
echo $$ > "$D/leader"
sleep 60"#;

/// A cancelled job takes its daemon with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_takes_its_daemon_with_it() {
    let app = spawn_app_with(lease_of(Duration::from_millis(1200))).await;
    let (runner, dir) = job_script("daemon.sh", DAEMONIZING);
    let _agent = spawn_agent_bin_with(
        &app.url(),
        "daemon-cancel",
        &[0],
        &["--grace", "1s"],
        &[runner.to_str().unwrap()],
    );
    let job = enqueue(&app, &["daemon"]).await[0];
    let daemon = read_pid(&dir.join("daemon")).await;
    read_pid(&dir.join("leader")).await;
    assert!(alive(daemon));

    app.client()
        .await
        .cancel_job(CancelJobRequest {
            id: job.to_string(),
        })
        .await
        .expect("cancel job");
    wait_state(&app.pool, job, "cancelled", Duration::from_secs(3)).await;
    dead_within(daemon, Duration::from_secs(1), "the daemon to be killed").await;
}

/// An interrupted agent takes its jobs' daemons with it before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_job_takes_its_daemon_with_it() {
    let app = spawn_app_with(test_timing()).await;
    let (runner, dir) = job_script("daemon.sh", DAEMONIZING);
    let mut agent = spawn_agent_bin_with(
        &app.url(),
        "daemon-interrupt",
        &[0],
        &["--grace", "1s"],
        &[runner.to_str().unwrap()],
    );
    let job = enqueue(&app, &["daemon"]).await[0];
    let daemon = read_pid(&dir.join("daemon")).await;
    read_pid(&dir.join("leader")).await;

    agent.signal(libc::SIGTERM);
    wait_log(&agent, "shutting down: no new jobs", Duration::from_secs(5)).await;
    agent.signal(libc::SIGTERM);
    let status = wait_exit(&mut agent, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    dead_within(
        daemon,
        Duration::from_millis(500),
        "the daemon to be killed",
    )
    .await;
    assert_eq!(job_row(&app.pool, job).await, ("queued".into(), 0));
}

/// An agent killed outright: its job's guard kills the daemon too, by the
/// marker in its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_job_takes_its_daemon_with_it() {
    let app = spawn_app_with(test_timing()).await;
    let (runner, dir) = job_script("daemon.sh", DAEMONIZING);
    // The killed agent leaves its job directory behind: not in the shared temp dir.
    let work = tempdir("benchq-work");
    let mut agent = spawn_agent_bin_with(
        &app.url(),
        "daemon-kill",
        &[0],
        &["--work-dir", work.to_str().unwrap()],
        &[runner.to_str().unwrap()],
    );
    enqueue(&app, &["daemon"]).await;
    let daemon = read_pid(&dir.join("daemon")).await;
    let leader = read_pid(&dir.join("leader")).await;

    agent.signal(libc::SIGKILL);
    wait_exit(&mut agent, Duration::from_secs(2)).await;
    dead_within(leader, Duration::from_secs(1), "the job's leader to die").await;
    dead_within(daemon, Duration::from_secs(2), "the daemon to be killed").await;
    let _ = std::fs::remove_dir_all(work);
}

const REFUSED: &str = "the coordinator refused this agent's credential";

/// The agent's last line when it exits for a refused credential.
const EXITING: &str = "exiting with code 1";

/// An agent started with a token the coordinator does not take as an
/// agent's (an operator's, an unknown one) says so once and exits 1,
/// rather than retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_refused_credential_exits_1() {
    let dir = tempdir("benchq-refused");
    let tokens = dir.join("tokens.json");
    let operator = add_token(&tokens, "ci", Role::Operator, "t").unwrap();
    let (db_url, _pool) = migrated_db().await;
    let (_coordinator, url) =
        spawn_coordinator_bin(&db_url, &["--tokens", tokens.to_str().unwrap()]).await;
    for (name, token, code) in [
        ("operator", operator.as_str(), "PermissionDenied"),
        ("stranger", "bq_not_a_token", "Unauthenticated"),
    ] {
        let started = Instant::now();
        let mut agent = spawn_agent_bin_with(&url, name, &[0, 1], &["--token", token], &["true"]);
        let status = wait_exit(&mut agent, Duration::from_secs(5)).await;
        assert_eq!(status.code(), Some(1), "{name}: log:\n{}", agent.log());
        // The log is read from the agent's stderr as it comes: wait for the end.
        wait_log(&agent, EXITING, Duration::from_secs(2)).await;
        let log = agent.log();
        eprintln!("{name}: exited after {:?}", started.elapsed());
        assert!(
            log.contains(&format!("{REFUSED}: {code}")),
            "{name}: log:\n{log}"
        );
        assert_eq!(
            log.matches("taking no more jobs").count(),
            1,
            "{name}: said once, though two slots heard it; log:\n{log}"
        );
        assert!(!log.contains(token), "{name}: the secret is logged:\n{log}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The agent's token is revoked while it runs a job: the next heartbeat is
/// refused, the job is stopped at once and not reported (the lease is lost
/// with the credential), and the agent exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_stops_its_job_and_exits_1() {
    let dir = tempdir("benchq-revoked");
    let tokens = dir.join("tokens.json");
    let agent_secret = add_token(&tokens, "fleet", Role::Agent, "t").unwrap();
    let operator = add_token(&tokens, "ci", Role::Operator, "t").unwrap();
    let (db_url, pool) = migrated_db().await;
    let (coordinator, url) = spawn_coordinator_bin(
        &db_url,
        &["--tokens", tokens.to_str().unwrap(), "--lease-ttl", "2s"],
    )
    .await;
    let (runner, scratch) = job_script(
        "long.sh",
        r#"trap '' TERM
           echo $$ > "$D/leader"
           exec sleep 30"#,
    );
    let mut agent = spawn_agent_bin_with(
        &url,
        "revoked",
        &[0],
        &[
            "--token",
            &agent_secret,
            "--grace",
            "10s",
            "--lease-wait",
            "1s",
        ],
        &[runner.to_str().unwrap()],
    );
    let mut client = benchq::client::connect(ClientOptions {
        url: url.clone(),
        token: Some(operator),
        ..Default::default()
    })
    .await
    .unwrap();
    let job = enqueue_with(&mut client, &["long"]).await[0];
    let leader = read_pid(&scratch.join("leader")).await;

    // Revoke: the file without the agent's token, then SIGHUP.
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tokens).unwrap()).unwrap();
    file["tokens"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["name"] != "fleet");
    std::fs::write(&tokens, file.to_string()).unwrap();
    coordinator.signal(libc::SIGHUP);
    let revoked = Instant::now();

    let status = wait_exit(&mut agent, Duration::from_secs(5)).await;
    eprintln!("agent exited {:?} after the revocation", revoked.elapsed());
    assert_eq!(status.code(), Some(1), "log:\n{}", agent.log());
    assert!(!alive(leader), "the job outlived the lost lease");
    wait_log(&agent, EXITING, Duration::from_secs(2)).await;
    let log = agent.log();
    assert!(log.contains("heartbeat refused"), "log:\n{log}");
    assert!(log.contains(REFUSED), "log:\n{log}");
    assert!(
        log.contains("result not reported: lease lost"),
        "log:\n{log}"
    );
    // Nothing reported: the lease is left to expire.
    assert_eq!(job_row(&pool, job).await, ("running".into(), 1));
    let _ = std::fs::remove_dir_all(dir);
}

/// An agent killed outright leaves its job's directory behind; started
/// again under the same id, it removes it, and leaves another agent's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_removes_the_job_directories_it_left_behind() {
    let app = spawn_app_with(test_timing()).await;
    let work = tempdir("benchq-work");
    let (runner, dir) = job_script(
        "long.sh",
        r#"echo $$ > "$D/leader"
           exec sleep 30"#,
    );
    let args = ["--work-dir", work.to_str().unwrap()];
    let mut agent = spawn_agent_bin_with(
        &app.url(),
        "host-1",
        &[0],
        &args,
        &[runner.to_str().unwrap()],
    );
    let job = enqueue(&app, &["long"]).await[0];
    read_pid(&dir.join("leader")).await;
    let left = work.join(format!("benchq-host-1-{job}-1"));
    assert!(left.join("job.json").exists(), "no {}", left.display());
    // Agent "host-1-a": its directories start with "benchq-host-1-" too.
    let others = work.join(format!("benchq-host-1-a-{job}-1"));
    std::fs::create_dir_all(&others).unwrap();

    agent.signal(libc::SIGKILL);
    wait_exit(&mut agent, Duration::from_secs(2)).await;
    assert!(left.exists(), "nothing was left behind to clean up");

    let again = spawn_agent_bin_with(
        &app.url(),
        "host-1",
        &[0],
        &args,
        &[runner.to_str().unwrap()],
    );
    wait_log(
        &again,
        "removed 1 job directories left behind by a previous run of this agent",
        Duration::from_secs(5),
    )
    .await;
    assert!(!left.exists());
    assert!(others.exists(), "another agent's directory was removed");
    let _ = std::fs::remove_dir_all(work);
}

/// A fresh directory under the system temp dir.
fn tempdir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
