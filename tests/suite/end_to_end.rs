//! The whole path with the real binaries: the CLI enqueues a batch, the
//! coordinator stores it in PostgreSQL, two agents lease it for their slots and
//! run a real script per job, and the results follow the retry rule.

use std::collections::HashMap;
use std::time::Duration;

use benchq::proto::{GetBatchRequest, JobState};

use crate::support::app::{cli, script, spawn_agent_bin, spawn_coordinator_bin};
use crate::support::pg;

/// The runner under test: checks what the agent hands it, records it as
/// metrics, and ends the way its scenario id says.
const RUNNER: &str = r#"
set -u
[ -f "$BENCHQ_JOB_FILE" ] || { echo "no job file" >&2; exit 4; }
grep -q "$BENCHQ_SCENARIO_ID" "$BENCHQ_JOB_FILE" || { echo "job file lacks the scenario" >&2; exit 4; }
printf '{"scenario":"%s","namespace":"%s","slot":%s,"attempt":%s,"model":"%s"}' \
  "$BENCHQ_SCENARIO_ID" "$BENCHQ_NAMESPACE" "$BENCHQ_NAMESPACE_SLOT" "$BENCHQ_ATTEMPT" \
  "$BENCHQ_MODEL" > "$BENCHQ_RESULT_FILE"
echo "running $BENCHQ_SCENARIO_ID in $BENCHQ_NAMESPACE, attempt $BENCHQ_ATTEMPT"
sleep 0.3
case "$BENCHQ_SCENARIO_ID" in
  pass-*) exit 0 ;;
  fail-*) echo "the deployment is still broken"; exit 1 ;;
  flaky-*) if [ "$BENCHQ_ATTEMPT" = 1 ]; then echo "tool server unreachable" >&2; exit 3; fi; exit 0 ;;
  broken-*) echo "tool server unreachable" >&2; exit 3 ;;
  killed-*) kill -9 $$ ;;
esac
exit 5
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_end_to_end_on_two_agents_with_the_retry_rule() {
    let db_url = pg::cluster().fresh_database().await;
    let (mut coordinator, url) = spawn_coordinator_bin(&db_url, &["--lease-ttl", "10s"]).await;
    let runner = script("runner.sh", RUNNER);
    let runner = runner.to_str().unwrap();
    let mut agents = [
        spawn_agent_bin(&url, "agent-0", &[0], &[runner]),
        spawn_agent_bin(&url, "agent-1", &[1], &[runner]),
    ];

    // (scenario, final state, attempts)
    let expected = [
        ("pass-a", "passed", 1),
        ("fail-b", "failed", 1),
        ("flaky-c", "passed", 2),
        ("broken-d", "errored", 2),
        ("pass-e", "passed", 1),
        ("killed-f", "errored", 2),
        ("pass-g", "passed", 1),
        ("fail-h", "failed", 1),
    ];
    let mut args = vec![
        "--coordinator",
        &url,
        "enqueue",
        "--model",
        "m-1",
        "--provider",
        "p-1",
    ];
    args.extend(["--parallel", "2"]);
    for (s, _, _) in &expected {
        args.extend(["--scenario", s]);
    }
    let (code, out, err) = cli(&args).await;
    assert_eq!(code, 0, "enqueue failed: {err}");
    let batch_id = out.trim().to_string();
    uuid::Uuid::parse_str(&batch_id).expect("enqueue prints the batch id");

    let (code, out, err) = cli(&[
        "--coordinator",
        &url,
        "wait",
        &batch_id,
        "--timeout",
        "90s",
        "--output",
        "json",
    ])
    .await;
    assert_eq!(
        code,
        0,
        "wait failed: {err}\n{out}\ncoordinator:\n{}\nagent-0:\n{}\nagent-1:\n{}",
        coordinator.log(),
        agents[0].log(),
        agents[1].log()
    );
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    let jobs = status["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), expected.len());
    for (job, (scenario, state, attempts)) in jobs.iter().zip(expected) {
        assert_eq!(job["scenario_id"], scenario);
        assert_eq!(job["state"], state, "{scenario}: {job:#}");
        assert_eq!(job["attempt"], attempts, "{scenario}: {job:#}");
        assert_eq!(job["attempts"].as_array().unwrap().len(), attempts as usize);
    }
    assert_eq!(status["counts"]["passed"], 4);
    assert_eq!(status["counts"]["failed"], 2);
    assert_eq!(status["counts"]["errored"], 2);

    // Every attempt ran on the agent that owns its slot, saw its namespace,
    // and no two attempts of one slot overlapped in time.
    let mut client = benchq::client::connect(&url).await.unwrap();
    let batch = client
        .get_batch(GetBatchRequest {
            job_id: batch_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut by_slot: HashMap<i32, Vec<(i64, i64)>> = HashMap::new();
    for job in &batch.jobs {
        let spec = job.spec.clone().unwrap();
        assert_eq!(spec.namespace_slot, job.position % 2, "round-robin slots");
        assert!(JobState::try_from(job.state).unwrap().is_terminal());
        for a in &job.attempts {
            assert_eq!(
                a.agent_id,
                format!("agent-{}", spec.namespace_slot),
                "{}",
                spec.scenario_id
            );
            let nanos = |t: &Option<prost_types::Timestamp>| {
                let t = t.as_ref().expect("timestamp");
                t.seconds * 1_000_000_000 + i64::from(t.nanos)
            };
            by_slot
                .entry(spec.namespace_slot)
                .or_default()
                .push((nanos(&a.started_at), nanos(&a.finished_at)));
            if spec.scenario_id.starts_with("killed-") {
                assert!(
                    a.error.contains("signal 9"),
                    "{}: {:?}",
                    spec.scenario_id,
                    a.error
                );
                continue;
            }
            let metrics: serde_json::Value =
                serde_json::from_str(&a.metrics_json).unwrap_or_else(|e| {
                    panic!("{}: metrics {:?}: {e}", spec.scenario_id, a.metrics_json)
                });
            assert_eq!(metrics["scenario"], spec.scenario_id.as_str());
            assert_eq!(
                metrics["namespace"],
                format!("bench-w{}", spec.namespace_slot)
            );
            assert_eq!(metrics["attempt"], a.attempt);
            assert_eq!(metrics["model"], "m-1");
            assert!(a.output_tail.contains("running"), "{:?}", a.output_tail);
        }
    }
    for (slot, mut spans) in by_slot {
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "slot {slot}: attempts overlap: {w:?}");
        }
    }

    let (code, table, _) = cli(&["--coordinator", &url, "status", &batch_id]).await;
    assert_eq!(code, 0);
    for word in [
        "passed", "failed", "errored", "bench-w0", "bench-w1", "flaky-c",
    ] {
        assert!(table.contains(word), "status table lacks {word}:\n{table}");
    }
    let (code, table, _) =
        cli(&["--coordinator", &url, "status", &batch_id, "--with-output"]).await;
    assert_eq!(code, 0);
    assert!(
        table.contains("--- broken-d, attempt 2 (ERROR) ---")
            && table.contains("tool server unreachable"),
        "the output of failed attempts is shown:\n{table}"
    );

    for agent in &mut agents {
        let status = agent.terminate(Duration::from_secs(10)).await;
        assert!(
            status.success(),
            "{} exit: {status}\n{}",
            agent.name,
            agent.log()
        );
    }
    let status = coordinator.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "coordinator exit: {status}");
}

#[tokio::test]
async fn the_cli_says_clearly_what_is_wrong() {
    // Nothing listens on this port: bind one and drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, _, err) = cli(&[
        "--coordinator",
        &url,
        "status",
        &uuid::Uuid::new_v4().to_string(),
    ])
    .await;
    assert_ne!(code, 0);
    assert!(
        err.starts_with("benchq: coordinator unreachable at"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let db_url = pg::cluster().fresh_database().await;
    let (_coordinator, url) = spawn_coordinator_bin(&db_url, &[]).await;
    let (code, _, err) = cli(&[
        "--coordinator",
        &url,
        "enqueue",
        "--scenario",
        "a",
        "--model",
        "m",
        "--provider",
        "p",
        "--parallel",
        "0",
    ])
    .await;
    assert_ne!(code, 0);
    assert_eq!(
        err.trim(),
        "benchq: invalid argument: parallel: must be between 1 and 4096, got 0"
    );
    let (code, _, err) = cli(&["--coordinator", &url, "status", "not-a-batch"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("job_id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchq_cancel_stops_a_batch_or_one_job() {
    let db_url = pg::cluster().fresh_database().await;
    let (_coordinator, url) = spawn_coordinator_bin(&db_url, &["--lease-ttl", "2s"]).await;
    let runner = script("slow.sh", "exec sleep 30\n");
    let _agent = spawn_agent_bin(&url, "agent-0", &[0], &[runner.to_str().unwrap()]);
    let enqueue = |scenarios: &'static [&'static str]| {
        let url = url.clone();
        async move {
            let mut args = vec![
                "--coordinator",
                &url,
                "enqueue",
                "--model",
                "m",
                "--provider",
                "p",
            ];
            for s in scenarios {
                args.extend(["--scenario", s]);
            }
            let (code, out, err) = cli(&args).await;
            assert_eq!(code, 0, "{err}");
            out.trim().to_string()
        }
    };
    let batch = enqueue(&["first", "second", "third"]).await;
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    crate::support::app::eventually(Duration::from_secs(10), "the first job to run", || {
        let pool = pool.clone();
        async move {
            let running: i64 =
                sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (running == 1).then_some(())
        }
    })
    .await;

    let (code, out, err) = cli(&["--coordinator", &url, "cancel", &batch]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "cancelled 2 queued, stopping 1 running, 0 already finished"
    );
    let (_, table, _) = cli(&["--coordinator", &url, "wait", &batch, "--timeout", "20s"]).await;
    assert!(table.contains("cancelled 3"), "{table}");

    // One job, by its own id.
    let other = enqueue(&["solo"]).await;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1")
        .bind(uuid::Uuid::parse_str(&other).unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    let (code, out, err) = cli(&["--coordinator", &url, "cancel", &id.to_string()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("cancelled"), "{out}");
    let (code, _, err) = cli(&[
        "--coordinator",
        &url,
        "cancel",
        &uuid::Uuid::new_v4().to_string(),
    ])
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("no batch or job"), "{err}");
}
