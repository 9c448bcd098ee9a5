//! Real faults against real processes: agents and coordinators killed with
//! SIGKILL, database connections cut. No job is lost, none runs twice at
//! once, and no result comes from a stale attempt.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use benchq::proto::{GetBatchRequest, Outcome};
use benchq_coordinator::service::Timing;
use sqlx::PgPool;

use crate::support::app::{
    assert_each_job_ran_once, batch, eventually, numbered_batch, script, spawn_agent_bin,
    spawn_app_with, spawn_coordinator_bin_on, spawn_slot_agents, state_counts, test_timing,
};
use crate::support::pg;

fn fast_reaper(lease_ttl: Duration) -> Timing {
    Timing {
        lease_ttl,
        reap_interval: Duration::from_millis(200),
        ..test_timing()
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn ts_nanos(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp");
    t.seconds * 1_000_000_000 + i64::from(t.nanos)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_job_is_reclaimed_and_runs_again_on_a_live_agent() {
    let ttl = Duration::from_secs(1);
    let app = spawn_app_with(fast_reaper(ttl)).await;
    let marks = script("marks", "");
    let marks = marks.parent().unwrap().to_path_buf();
    let runner = script(
        "runner.sh",
        &format!(
            "echo $$ > {dir}/started-$BENCHQ_ATTEMPT\n\
             if [ \"$BENCHQ_ATTEMPT\" = 1 ]; then sleep 30; fi\nexit 0\n",
            dir = marks.display()
        ),
    );
    let runner = runner.to_str().unwrap();
    let mut victim = spawn_agent_bin(&app.url(), "victim", &[0], &[runner]);
    let mut c = app.client().await;
    let batch_id = c
        .enqueue_batch(batch(&["doomed"], 1))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let started = marks.join("started-1");
    eventually(Duration::from_secs(10), "attempt 1 to start", || async {
        started.exists().then_some(())
    })
    .await;

    victim.signal(libc::SIGKILL);
    let killed_at = SystemTime::now();
    victim.child.wait().await.unwrap();
    let survivor = spawn_agent_bin(&app.url(), "survivor", &[0], &[runner]);

    let job = eventually(
        Duration::from_secs(15),
        "the job to pass on attempt 2",
        || {
            let mut c = c.clone();
            let batch_id = batch_id.clone();
            async move {
                let b = c
                    .get_batch(GetBatchRequest {
                        job_id: batch_id,
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                let job = b.jobs.into_iter().next()?;
                (job.outcome == Outcome::Passed as i32).then_some(job)
            }
        },
    )
    .await;
    assert_eq!(job.attempt, 2);
    let attempts: Vec<_> = job
        .attempts
        .iter()
        .map(|a| (a.agent_id.as_str(), a.outcome, a.error.as_str()))
        .collect();
    assert_eq!(
        attempts,
        [
            (
                "victim",
                Outcome::Reclaimed as i32,
                "lease expired: agent lost"
            ),
            ("survivor", Outcome::Passed as i32, ""),
        ],
        "exactly one result"
    );
    let waited = Duration::from_nanos(
        (ts_nanos(&job.attempts[0].finished_at) - unix_nanos(killed_at)).max(0) as u64,
    );
    eprintln!("reclaimed {waited:?} after the agent was killed (TTL {ttl:?}, reaper tick 200ms)");
    assert!(
        waited <= ttl + Duration::from_millis(200) + Duration::from_millis(500),
        "{waited:?}"
    );
    drop(survivor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_ten_times_the_ttl_on_a_heartbeating_agent_is_never_reclaimed() {
    let ttl = Duration::from_secs(1);
    let app = spawn_app_with(fast_reaper(ttl)).await;
    let runner = script("long.sh", "sleep 10\nexit 0\n");
    let _agent = spawn_agent_bin(&app.url(), "steady", &[0], &[runner.to_str().unwrap()]);
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["long"], 1)).await.unwrap();
    let pool = app.pool.clone();
    eventually(Duration::from_secs(30), "the long job to pass", || {
        let pool = pool.clone();
        async move { (state_counts(&pool).await.get("passed") == Some(&1)).then_some(()) }
    })
    .await;
    let attempts: Vec<(String,)> = sqlx::query_as("SELECT outcome FROM attempts")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, [("PASSED".to_string(),)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_batch_and_restarted_loses_nothing_and_dispatches_nothing_twice() {
    let db_url = pg::cluster().fresh_database().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    // A TTL well above the restart time: agents stop their jobs after half a
    // TTL without the coordinator, and this test is about surviving a restart.
    let flags = ["--lease-ttl", "10s", "--reap-interval", "200ms"];
    let (mut coordinator, url) = spawn_coordinator_bin_on(&listen, &db_url, &flags).await;
    let pool = PgPool::connect(&db_url).await.unwrap();
    let runner = script("quick.sh", "exit 0\n");
    let agents = spawn_slot_agents(&url, 4, &runner);
    let started = std::time::Instant::now();
    let mut c = benchq::client::connect(&url).await.unwrap();
    c.enqueue_batch(numbered_batch(500, 4)).await.unwrap();

    eventually(Duration::from_secs(60), "100 jobs to finish", || {
        let pool = pool.clone();
        async move {
            (state_counts(&pool)
                .await
                .get("passed")
                .copied()
                .unwrap_or(0)
                >= 100)
                .then_some(())
        }
    })
    .await;
    coordinator.signal(libc::SIGKILL);
    coordinator.child.wait().await.unwrap();
    let down = state_counts(&pool).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_coordinator, _) = spawn_coordinator_bin_on(&listen, &db_url, &flags).await;

    eventually(Duration::from_secs(120), "all 500 jobs to finish", || {
        let pool = pool.clone();
        async move { (state_counts(&pool).await.get("passed") == Some(&500)).then_some(()) }
    })
    .await;
    eprintln!(
        "500 jobs on 4 agents with a coordinator kill -9 at {down:?}: {:?}",
        started.elapsed()
    );
    assert_each_job_ran_once(&pool, &agents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_coordinators_database_connections_again_and_again_loses_no_job() {
    // Cut connections fail calls for a moment: well under half this TTL.
    let app = spawn_app_with(fast_reaper(Duration::from_secs(10))).await;
    let runner = script("quick.sh", "exit 0\n");
    let agents = spawn_slot_agents(&app.url(), 2, &runner);
    let mut c = app.client().await;
    c.enqueue_batch(numbered_batch(150, 2)).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut cuts = 0;
    loop {
        let killed: Result<Vec<(bool,)>, _> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&app.pool)
        .await;
        if let Ok(k) = killed {
            cuts += k.len();
        }
        if state_counts(&app.pool).await.get("passed") == Some(&150) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch did not finish: {:?}",
            state_counts(&app.pool).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(cuts > 5, "connections were really cut ({cuts})");
    eprintln!("{cuts} backends terminated during the batch");
    assert_each_job_ran_once(&app.pool, &agents).await;
    let _ = HashMap::<(), ()>::new();
}
