//! How fast the queue moves jobs: a benchmark, not a test.
//!
//! Starts a throwaway PostgreSQL, a coordinator on loopback and N in-process
//! agents (one slot each) whose runner does nothing, enqueues a batch and
//! measures enqueue time, end-to-end jobs per second (lease + heartbeat-free
//! run + complete), and the latency of single Lease and Complete calls.
//!
//! ```sh
//! cargo run --release --example throughput -- [JOBS] [AGENTS]
//! ```

#[path = "../tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use benchq::proto::Outcome;
use benchq_agent::{Agent, AgentConfig, RunResult, Shutdown, runner_fn};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map_or(5000, |a| a.parse().expect("JOBS"));
    let agents: i32 = args.next().map_or(8, |a| a.parse().expect("AGENTS"));

    let app = support::app::spawn_app().await;
    let mut c = app.client().await;
    let batch = support::app::numbered_batch(jobs, agents);
    let t = Instant::now();
    let batch_id = c.enqueue_batch(batch).await.unwrap().into_inner().job_id;
    let enqueue = t.elapsed();

    let stop = CancellationToken::new();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for slot in 0..agents {
        let runner = runner_fn(|_job, _cancel| async { RunResult::new(Outcome::Passed) });
        let config = AgentConfig::new(app.url(), format!("bench-{slot}"), vec![slot]);
        let agent = Agent::new(config, Arc::new(runner)).unwrap();
        tasks.push(tokio::spawn(agent.run(Shutdown::from(stop.clone()))));
    }
    loop {
        let passed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'passed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        if passed as usize == jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = t.elapsed();
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }

    // Single-call latency on an idle queue.
    let single = support::app::numbered_batch(200, 1);
    c.enqueue_batch(single).await.unwrap();
    let (mut lease, mut complete) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let t = Instant::now();
        let l = c
            .lease(benchq::proto::LeaseRequest {
                agent_id: "probe".into(),
                slots: vec![0],
                wait_ms: 0,
                tenant_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .lease
            .unwrap();
        lease.push(t.elapsed());
        let t = Instant::now();
        c.complete(benchq::proto::CompleteRequest {
            lease_token: l.lease_token,
            outcome: Outcome::Passed as i32,
            ..Default::default()
        })
        .await
        .unwrap();
        complete.push(t.elapsed());
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * p) as usize]
    };
    println!("batch {batch_id}: {jobs} jobs, {agents} agents (one slot each, no-op runner)");
    println!(
        "enqueue: {enqueue:?} ({:.0} jobs/s)",
        jobs as f64 / enqueue.as_secs_f64()
    );
    println!(
        "lease+run+complete: {run:?} ({:.0} jobs/s)",
        jobs as f64 / run.as_secs_f64()
    );
    println!(
        "Lease latency p50 {:?} p99 {:?}; Complete latency p50 {:?} p99 {:?}",
        pct(&mut lease, 0.5),
        pct(&mut lease, 0.99),
        pct(&mut complete, 0.5),
        pct(&mut complete, 0.99)
    );
}
