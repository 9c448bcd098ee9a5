//! The agent under real faults: cancels, timeouts, drains and interrupts,
//! a SIGKILLed agent, two agents on one slot. Mostly the real `benchq-agent`
//! binary against the real coordinator, with `sh` scripts as jobs that write
//! the pids of their processes to files, so that the test can check from the
//! outside which processes are still there.
//!
//! "Gone" is checked two ways. Where the agent lives on, its processes must
//! not exist at all (`kill(pid, 0)` fails with ESRCH): the agent is their
//! subreaper and reaps them. Where the agent itself was killed, a zombie
//! counts as gone: reaping it is then init's job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benchq::proto::{CancelJobRequest, JobSpec};
use benchq_agent::{Agent, AgentConfig, ProcessRunner, Shutdown};
use benchq_coordinator::service::Timing;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::agents::{job_row, job_script, read_pid, wait_exit, wait_log, wait_state};
use crate::support::app::{
    Proc, TestApp, batch, eventually, spawn_agent_bin_with, spawn_app_with, test_timing,
};

/// A 1.2 s lease: agents heartbeat (and so learn of cancels) every 400 ms,
/// and a loaded machine's hiccups stay well under the half TTL after which
/// an agent stops its job for lost contact.
fn quick_heartbeats() -> Timing {
    Timing {
        lease_ttl: Duration::from_millis(1200),
        ..test_timing()
    }
}

/// Enqueues one batch on slot 0, every job with `timeout_seconds`: job ids.
async fn enqueue(app: &TestApp, scenarios: &[&str], timeout_seconds: u32) -> Vec<Uuid> {
    let mut request = batch(scenarios, 1);
    request.shared = Some(JobSpec {
        timeout_seconds,
        ..request.shared.unwrap_or_default()
    });
    let reply = app
        .client()
        .await
        .enqueue_batch(request)
        .await
        .expect("enqueue batch")
        .into_inner();
    reply.ids.iter().map(|id| id.parse().unwrap()).collect()
}

async fn cancel(app: &TestApp, job: Uuid) {
    app.client()
        .await
        .cancel_job(CancelJobRequest {
            id: job.to_string(),
        })
        .await
        .expect("cancel job");
}

/// `(attempt, outcome, error, agent)` of every attempt of a job, in order.
async fn attempts(pool: &PgPool, job: Uuid) -> Vec<(i32, Option<String>, String, String)> {
    sqlx::query_as(
        "SELECT attempt, outcome, coalesce(error, ''), agent_id FROM attempts \
         WHERE job_id = $1 ORDER BY started_at",
    )
    .bind(job)
    .fetch_all(pool)
    .await
    .expect("attempts")
}

/// The process exists, zombie or not.
fn exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let found = unsafe { libc::kill(pid, 0) == 0 };
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    exists(pid)
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
}

/// Sends SIGTERM, and waits until the agent has seen it (two signals in a row
/// could otherwise be taken as one).
async fn sigterm(agent: &Proc, seen: &str) {
    agent.signal(libc::SIGTERM);
    wait_log(agent, seen, Duration::from_secs(5)).await;
}

const DRAINING: &str = "shutting down: no new jobs";
const INTERRUPTING: &str = "interrupting: stopping running jobs";

/// An operator cancels a job whose processes all ignore SIGTERM: the agent
/// gives them the grace period, kills the group, reaps every process (none
/// is even left a zombie), and reports CANCELLED; the job is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_kills_the_whole_tree_after_the_grace_period_and_reports_cancelled() {
    let app = spawn_app_with(quick_heartbeats()).await;
    let (runner, dir) = job_script(
        "stubborn.sh",
        r#"trap '' TERM
           sleep 1000 & echo $! > "$D/gc1"
           sleep 1000 & echo $! > "$D/gc2"
           echo $$ > "$D/leader"
           wait"#,
    );
    let _agent = spawn_agent_bin_with(
        &app.url(),
        "canceller",
        &[0],
        &["--grace", "1s"],
        &[runner.to_str().unwrap()],
    );
    let job = enqueue(&app, &["stubborn"], 0).await[0];
    let mut pids = Vec::new();
    for name in ["gc1", "gc2", "leader"] {
        pids.push(read_pid(&dir.join(name)).await);
    }
    assert!(pids.iter().all(|p| alive(*p)));

    let asked = Instant::now();
    cancel(&app, job).await;
    // Grace (1 s) + one heartbeat interval (200 ms) + 1 s.
    eventually(
        Duration::from_millis(2200),
        "every process to be gone",
        || async { pids.iter().all(|p| !exists(*p)).then_some(()) },
    )
    .await;
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "killed after {took:?}: before the 1 s grace period was over"
    );
    wait_state(&app.pool, job, "cancelled", Duration::from_secs(2)).await;
    let tries = attempts(&app.pool, job).await;
    assert_eq!(tries.len(), 1, "{tries:?}");
    let (attempt, outcome, error, _) = &tries[0];
    assert_eq!((*attempt, outcome.as_deref()), (1, Some("CANCELLED")));
    assert_eq!(
        error,
        "cancelled: an operator asked for it (killed by signal 9)"
    );
}

/// A cancelled job whose processes all die at once on SIGTERM is reported
/// at once, though its grace period is 10 s: the dead processes (zombies
/// until reaped) are not taken for live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_that_dies_at_once_is_reported_at_once() {
    let app = spawn_app_with(quick_heartbeats()).await;
    let (runner, dir) = job_script(
        "meek.sh",
        r#"sleep 1000 & sleep 1000 &
           echo $$ > "$D/leader"
           wait"#,
    );
    let _agent = spawn_agent_bin_with(
        &app.url(),
        "meek",
        &[0],
        &["--grace", "10s"],
        &[runner.to_str().unwrap()],
    );
    let job = enqueue(&app, &["meek"], 0).await[0];
    read_pid(&dir.join("leader")).await;

    let asked = Instant::now();
    cancel(&app, job).await;
    wait_state(&app.pool, job, "cancelled", Duration::from_secs(3)).await;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(1200),
        "reported {took:?} after the cancel"
    );
    let tries = attempts(&app.pool, job).await;
    assert_eq!(tries[0].1.as_deref(), Some("CANCELLED"));
    assert_eq!(
        tries[0].2,
        "cancelled: an operator asked for it (killed by signal 15)"
    );
}

/// A job that runs past its `timeout_seconds` is stopped by its agent and
/// recorded as an infra error: retried once, then `errored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_timeout_is_stopped_retried_then_errored() {
    let app = spawn_app_with(test_timing()).await;
    let (runner, _) = job_script("slow.sh", "exec sleep 30");
    let _agent = spawn_agent_bin_with(
        &app.url(),
        "timekeeper",
        &[0],
        &["--grace", "1s"],
        &[runner.to_str().unwrap()],
    );
    let started = Instant::now();
    let job = enqueue(&app, &["slow"], 1).await[0];
    wait_state(&app.pool, job, "errored", Duration::from_secs(8)).await;
    let took = started.elapsed();

    let tries = attempts(&app.pool, job).await;
    let summary: Vec<_> = tries
        .iter()
        .map(|(attempt, outcome, _, _)| (*attempt, outcome.as_deref()))
        .collect();
    assert_eq!(summary, [(1, Some("ERROR")), (2, Some("ERROR"))]);
    for (_, _, error, _) in &tries {
        assert_eq!(error, "timeout: ran longer than 1s (killed by signal 15)");
    }
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

/// The first SIGTERM drains: the running job finishes and is recorded once,
/// the queued one is left alone, and the agent exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_job_finish_and_takes_no_more() {
    let app = spawn_app_with(test_timing()).await;
    let (runner, dir) = job_script(
        "steady.sh",
        r#"echo $$ > "$D/started-$BENCHQ_SCENARIO_ID"
           sleep 1.5"#,
    );
    let mut agent = spawn_agent_bin_with(
        &app.url(),
        "drainer",
        &[0],
        &[],
        &[runner.to_str().unwrap()],
    );
    let jobs = enqueue(&app, &["first", "second"], 0).await;
    read_pid(&dir.join("started-first")).await;

    sigterm(&agent, DRAINING).await;
    let status = wait_exit(&mut agent, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());

    assert_eq!(job_row(&app.pool, jobs[0]).await, ("passed".into(), 1));
    let tries = attempts(&app.pool, jobs[0]).await;
    assert_eq!(tries.len(), 1);
    assert_eq!(tries[0].1.as_deref(), Some("PASSED"));
    assert_eq!(job_row(&app.pool, jobs[1]).await, ("queued".into(), 0));
    assert!(attempts(&app.pool, jobs[1]).await.is_empty());
    assert!(!dir.join("started-second").exists());
}

/// A second SIGTERM interrupts: the running job is stopped and goes back to
/// the queue without using an attempt, and the agent exits 0 soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_interrupts_and_requeues_the_running_job() {
    let app = spawn_app_with(test_timing()).await;
    let (runner, dir) = job_script("long.sh", r#"echo $$ > "$D/leader"; exec sleep 30"#);
    let mut agent = spawn_agent_bin_with(
        &app.url(),
        "interrupted",
        &[0],
        &["--grace", "1s"],
        &[runner.to_str().unwrap()],
    );
    let job = enqueue(&app, &["long"], 0).await[0];
    let leader = read_pid(&dir.join("leader")).await;

    sigterm(&agent, DRAINING).await;
    let asked = Instant::now();
    sigterm(&agent, INTERRUPTING).await;
    let status = wait_exit(&mut agent, Duration::from_secs(4)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    eprintln!("exited {:?} after the second SIGTERM", asked.elapsed());
    assert!(!alive(leader));

    assert_eq!(job_row(&app.pool, job).await, ("queued".into(), 0));
    let tries = attempts(&app.pool, job).await;
    assert_eq!(tries.len(), 1);
    assert_eq!(tries[0].1.as_deref(), Some("INTERRUPTED"));
    assert_eq!(
        tries[0].2,
        "interrupted: the agent was shut down (killed by signal 15)"
    );
}

/// With the coordinator gone, an interrupted agent would retry its report
/// for a while (10 s); a third SIGTERM exits at once, still killing the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_sigterm_exits_at_once_when_the_coordinator_is_gone() {
    let app = spawn_app_with(test_timing()).await;
    let (runner, dir) = job_script("long.sh", r#"echo $$ > "$D/leader"; exec sleep 30"#);
    let mut agent = spawn_agent_bin_with(
        &app.url(),
        "stranded",
        &[0],
        &["--grace", "1s"],
        &[runner.to_str().unwrap()],
    );
    let job = enqueue(&app, &["long"], 0).await[0];
    let leader = read_pid(&dir.join("leader")).await;
    let pool = app.pool.clone();
    app.stop().await;

    sigterm(&agent, DRAINING).await;
    sigterm(&agent, INTERRUPTING).await;
    wait_log(
        &agent,
        "could not report the result",
        Duration::from_secs(3),
    )
    .await;
    let asked = Instant::now();
    agent.signal(libc::SIGTERM);
    let status = wait_exit(&mut agent, Duration::from_secs(2)).await;
    assert_eq!(status.code(), Some(130), "log:\n{}", agent.log());
    eprintln!("exited {:?} after the third SIGTERM", asked.elapsed());
    assert!(!alive(leader));
    assert_eq!(job_row(&pool, job).await, ("running".into(), 1));
}

/// With `--drain-timeout`, one SIGTERM is enough: once the drain has lasted
/// that long, the running job is interrupted as by a second signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_timeout_interrupts_what_is_still_running() {
    let app = spawn_app_with(test_timing()).await;
    let (runner, dir) = job_script("long.sh", r#"echo $$ > "$D/leader"; exec sleep 30"#);
    let mut agent = spawn_agent_bin_with(
        &app.url(),
        "impatient",
        &[0],
        &["--grace", "1s", "--drain-timeout", "500ms"],
        &[runner.to_str().unwrap()],
    );
    let job = enqueue(&app, &["long"], 0).await[0];
    read_pid(&dir.join("leader")).await;

    let asked = Instant::now();
    sigterm(&agent, DRAINING).await;
    let status = wait_exit(&mut agent, Duration::from_secs(4)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "exited after {took:?}, before the drain timeout"
    );
    assert!(
        agent.log().contains("drain timeout"),
        "log:\n{}",
        agent.log()
    );
    assert_eq!(job_row(&app.pool, job).await, ("queued".into(), 0));
    let tries = attempts(&app.pool, job).await;
    assert_eq!(tries.len(), 1);
    assert_eq!(tries[0].1.as_deref(), Some("INTERRUPTED"));
}

/// An agent killed with SIGKILL takes its job's processes with it: the
/// child (death signal) and its own children (the job's guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_no_process_behind() {
    let app = spawn_app_with(test_timing()).await;
    let (runner, dir) = job_script(
        "orphan.sh",
        r#"sleep 30 & echo $! > "$D/sleep"
           echo $$ > "$D/leader"
           wait"#,
    );
    let mut agent =
        spawn_agent_bin_with(&app.url(), "doomed", &[0], &[], &[runner.to_str().unwrap()]);
    enqueue(&app, &["orphan"], 0).await;
    let sleep = read_pid(&dir.join("sleep")).await;
    let leader = read_pid(&dir.join("leader")).await;
    assert!(alive(sleep) && alive(leader));

    agent.signal(libc::SIGKILL);
    wait_exit(&mut agent, Duration::from_secs(2)).await;
    eventually(
        Duration::from_secs(1),
        "the job's processes to die",
        || async { (!alive(sleep) && !alive(leader)).then_some(()) },
    )
    .await;
}

/// Two agents serve slot 0: the one left without work is told who holds the
/// slot, and says so once rather than at every poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_warns_once_about_a_slot_another_agent_holds() {
    let app = spawn_app_with(test_timing()).await;
    let (runner, _) = job_script("long.sh", "exec sleep 30");
    let agents: Vec<Proc> = ["twin-a", "twin-b"]
        .iter()
        .map(|id| {
            spawn_agent_bin_with(
                &app.url(),
                id,
                &[0],
                &["--lease-wait", "200ms", "--grace", "100ms"],
                &[runner.to_str().unwrap()],
            )
        })
        .collect();
    let job = enqueue(&app, &["long"], 0).await[0];
    wait_state(&app.pool, job, "running", Duration::from_secs(5)).await;
    let holder = attempts(&app.pool, job).await[0].3.clone();
    let (holding, idle): (Vec<&Proc>, Vec<&Proc>) = agents.iter().partition(|a| a.name == holder);
    let (holding, idle) = (holding[0], idle[0]);

    // `slot 0 is busy: job ID (tenant T) is running there on agent HOLDER — …`
    let warning =
        format!("is running there on agent {holder} \u{2014} is another agent serving slot 0?");
    wait_log(idle, &warning, Duration::from_secs(5)).await;
    assert!(
        idle.log().contains(&format!(
            "WARN benchq_agent::agent: slot 0 is busy: job {job}"
        )),
        "log:\n{}",
        idle.log()
    );
    // Several more polls (200 ms each) with the same answer.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let log = idle.log();
    assert_eq!(log.matches("is busy").count(), 1, "log:\n{log}");
    assert!(!holding.log().contains("is busy"));
}

/// The library, with the coordinator gone: an interrupted agent gives up
/// reporting after `interrupt_report_timeout` and `run` returns, rather than
/// retrying for `report_timeout` (10 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_agent_stops_even_when_the_coordinator_is_gone() {
    let app = spawn_app_with(test_timing()).await;
    let job = enqueue(&app, &["stranded"], 0).await[0];
    let (runner, dir) = job_script("long.sh", r#"echo $$ > "$D/leader"; exec sleep 30"#);
    let runner =
        ProcessRunner::new(runner, Vec::<String>::new()).with_grace(Duration::from_secs(1));
    let mut config = AgentConfig::new(app.url(), "stranded", vec![0]);
    config.lease_wait = Duration::from_secs(2);
    config.interrupt_report_timeout = Duration::from_secs(1);
    let agent = Agent::new(config, Arc::new(runner)).unwrap();
    let shutdown = Shutdown::new();
    let run = tokio::spawn(agent.run(shutdown.clone()));
    let leader = read_pid(&dir.join("leader")).await;
    let pool = app.pool.clone();
    app.stop().await;

    let asked = Instant::now();
    shutdown.drain();
    shutdown.interrupt();
    tokio::time::timeout(Duration::from_secs(4), run)
        .await
        .expect("run returns within grace + interrupt_report_timeout")
        .unwrap();
    eprintln!("returned {:?} after the interrupt", asked.elapsed());
    assert!(!alive(leader));
    // Never reported: the lease is left to expire.
    assert_eq!(job_row(&pool, job).await, ("running".into(), 1));
}
