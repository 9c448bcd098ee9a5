//! The queue's promises: each job leased once, one running job per slot,
//! no result from a stale lease, the retry rule.

use std::collections::HashMap;
use std::time::Duration;

use benchq::proto::{HeartbeatRequest, JobState, Outcome};
use tonic::Code;

use benchq_coordinator::service::Timing;

use crate::support::app::{
    batch, complete_req, lease_req, leased, numbered_batch, snapshot, spawn_app, spawn_app_with,
    test_timing,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_leasers_lease_each_of_1000_jobs_exactly_once() {
    // Leases that outlive the test: the reaper must not take any back meanwhile.
    let app = spawn_app_with(Timing {
        lease_ttl: Duration::from_secs(600),
        ..test_timing()
    })
    .await;
    let mut c = app.client().await;
    // 1,000 jobs over 16 slots; every leaser asks for every slot, so they
    // compete for the same rows and for the same slots (one running job per
    // slot). Each leased job is completed at once, freeing its slot.
    c.enqueue_batch(numbered_batch(1000, 16)).await.unwrap();
    let all_slots: Vec<i32> = (0..16).collect();

    let mut leasers = Vec::new();
    for n in 0..8 {
        let mut c = app.client().await;
        let slots = all_slots.clone();
        let pool = app.pool.clone();
        leasers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let lease = c
                    .lease(lease_req(&format!("leaser-{n}"), &slots, 0))
                    .await
                    .expect("lease")
                    .into_inner()
                    .lease;
                match lease {
                    Some(l) => {
                        c.complete(complete_req(&l.lease_token, Outcome::Passed))
                            .await
                            .expect("complete");
                        got.push(l.id);
                    }
                    None => {
                        // Nothing free right now: done once nothing is left at all.
                        let left: i64 = sqlx::query_scalar(
                            "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')",
                        )
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                        if left == 0 {
                            return got;
                        }
                        tokio::task::yield_now().await;
                    }
                }
            }
        }));
    }
    let mut leases_per_job: HashMap<String, usize> = HashMap::new();
    let mut busy_leasers = 0;
    for l in leasers {
        let got = l.await.unwrap();
        if !got.is_empty() {
            busy_leasers += 1;
        }
        for id in got {
            *leases_per_job.entry(id).or_default() += 1;
        }
    }
    assert_eq!(leases_per_job.len(), 1000, "every job leased");
    assert!(
        leases_per_job.values().all(|n| *n == 1),
        "no job leased twice"
    );
    assert!(busy_leasers > 1, "the leasers really competed");
    let (passed, attempts): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'passed' AND attempt = 1), \
             (SELECT count(*) FROM attempts) FROM jobs",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((passed, attempts), (1000, 1000));
}

#[tokio::test]
async fn database_refuses_a_second_running_job_in_one_tenant_slot() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["a", "b"], 1)).await.unwrap();
    let mut other = batch(&["c"], 1);
    other.tenant_id = "other-team".into();
    c.enqueue_batch(other).await.unwrap();

    let start = "UPDATE jobs SET state = 'running', attempt = 1, lease_token = gen_random_uuid(), \
                 leased_at = now(), lease_expires_at = now() + interval '1 minute' \
                 WHERE scenario_id = $1";
    sqlx::query(start)
        .bind("a")
        .execute(&app.pool)
        .await
        .unwrap();
    let refused = sqlx::query(start)
        .bind("b")
        .execute(&app.pool)
        .await
        .unwrap_err();
    let db = refused.as_database_error().expect("a database error");
    assert!(db.is_unique_violation(), "{db}");
    assert_eq!(db.constraint(), Some("jobs_one_running_per_slot"));
    // Another tenant's slot 0 is another namespace.
    sqlx::query(start)
        .bind("c")
        .execute(&app.pool)
        .await
        .unwrap();

    // Through the API, the busy slot simply has nothing to lease.
    let l = c
        .lease(lease_req("agent-x", &[0], 0))
        .await
        .unwrap()
        .into_inner();
    assert!(l.lease.is_none(), "slot 0 of tenant default is busy");
}

#[tokio::test]
async fn two_agents_on_one_slot_never_run_two_jobs_at_once() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["a", "b", "c", "d"], 1))
        .await
        .unwrap();
    let mut c2 = app.client().await;
    let (r1, r2) = tokio::join!(
        c.lease(lease_req("agent-1", &[0], 0)),
        c2.lease(lease_req("agent-2", &[0], 0)),
    );
    let got: Vec<_> = [
        r1.unwrap().into_inner().lease,
        r2.unwrap().into_inner().lease,
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(got.len(), 1, "exactly one of the two agents got a job");
    let token = got[0].lease_token.clone();
    c.complete(complete_req(&token, Outcome::Passed))
        .await
        .unwrap();
    let next = c2
        .lease(lease_req("agent-2", &[0], 0))
        .await
        .unwrap()
        .into_inner();
    assert!(
        next.lease.is_some(),
        "the slot is free again once the job finished"
    );
}

#[tokio::test]
async fn stale_tokens_are_refused_and_repeated_completes_are_idempotent() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["a"], 1)).await.unwrap();

    let first = leased(&mut c, "agent-1", &[0], 0).await.unwrap();
    assert_eq!(first.attempt, 1);
    let state = c
        .complete(complete_req(&first.lease_token, Outcome::Error))
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(
        state,
        JobState::Queued as i32,
        "infra error with attempts left: retried"
    );
    let second = leased(&mut c, "agent-2", &[0], 0).await.unwrap();
    assert_eq!(second.attempt, 2);
    assert_eq!(second.id, first.id);
    assert_ne!(
        second.lease_token, first.lease_token,
        "each lease gets a new token"
    );

    let before = snapshot(&app.pool).await;
    let hb = c
        .heartbeat(HeartbeatRequest {
            lease_token: first.lease_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(hb.code(), Code::FailedPrecondition, "{hb:?}");
    let stale = c
        .complete(complete_req(&first.lease_token, Outcome::Passed))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    assert!(
        stale.message().contains("ERROR"),
        "says what was recorded: {stale:?}"
    );
    let unknown = c
        .complete(complete_req(
            &uuid::Uuid::new_v4().to_string(),
            Outcome::Passed,
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::FailedPrecondition);
    // The first lease's report, sent again as it was (a lost reply): accepted, no change.
    c.complete(complete_req(&first.lease_token, Outcome::Error))
        .await
        .unwrap();
    assert_eq!(
        snapshot(&app.pool).await,
        before,
        "refused and repeated calls changed nothing"
    );

    c.heartbeat(HeartbeatRequest {
        lease_token: second.lease_token.clone(),
    })
    .await
    .expect("the current lease heartbeats");
    let done = c
        .complete(complete_req(&second.lease_token, Outcome::Passed))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, JobState::Passed as i32);
    let after_done = snapshot(&app.pool).await;
    let again = c
        .complete(complete_req(&second.lease_token, Outcome::Passed))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.state,
        JobState::Passed as i32,
        "repeat answers like the first time"
    );
    let other = c
        .complete(complete_req(&second.lease_token, Outcome::Failed))
        .await
        .unwrap_err();
    assert_eq!(
        other.code(),
        Code::FailedPrecondition,
        "same token, other outcome: refused"
    );
    let late_hb = c
        .heartbeat(HeartbeatRequest {
            lease_token: second.lease_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(late_hb.code(), Code::FailedPrecondition);
    assert_eq!(snapshot(&app.pool).await, after_done);
}

/// Runs one job through leases, answering each attempt with the next outcome,
/// and returns its final state and attempt count.
async fn drive(outcomes: &[Outcome], max_attempts: i32) -> (String, i32, Vec<Option<String>>) {
    let app = spawn_app().await;
    let mut c = app.client().await;
    let mut req = batch(&["job"], 1);
    req.shared.as_mut().unwrap().max_attempts = max_attempts;
    c.enqueue_batch(req).await.unwrap();
    for o in outcomes {
        let l = leased(&mut c, "agent", &[0], 0).await;
        let l = l.expect("a job to lease");
        c.complete(complete_req(&l.lease_token, *o)).await.unwrap();
    }
    let nothing = leased(&mut c, "agent", &[0], 0).await;
    assert!(nothing.is_none(), "no further attempt is handed out");
    let (state, attempt): (String, i32) = sqlx::query_as("SELECT state, attempt FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let outcomes: Vec<(Option<String>,)> =
        sqlx::query_as("SELECT outcome FROM attempts ORDER BY attempt")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    (state, attempt, outcomes.into_iter().map(|(o,)| o).collect())
}

#[tokio::test]
async fn scenario_failure_is_a_result_and_never_retried() {
    let (state, attempt, outcomes) = drive(&[Outcome::Failed], 0).await;
    assert_eq!((state.as_str(), attempt), ("failed", 1));
    assert_eq!(outcomes, [Some("FAILED".to_string())]);
}

#[tokio::test]
async fn infra_error_is_retried_once_by_default_then_errored() {
    let (state, attempt, outcomes) = drive(&[Outcome::Error, Outcome::Error], 0).await;
    assert_eq!((state.as_str(), attempt), ("errored", 2));
    assert_eq!(outcomes, [Some("ERROR".into()), Some("ERROR".into())]);
}

#[tokio::test]
async fn infra_error_then_pass_is_passed_on_attempt_two() {
    let (state, attempt, _) = drive(&[Outcome::Error, Outcome::Passed], 0).await;
    assert_eq!((state.as_str(), attempt), ("passed", 2));
}

#[tokio::test]
async fn max_attempts_is_per_job() {
    let (state, attempt, _) = drive(&[Outcome::Error], 1).await;
    assert_eq!((state.as_str(), attempt), ("errored", 1));
    let (state, attempt, _) = drive(&[Outcome::Error, Outcome::Error, Outcome::Passed], 3).await;
    assert_eq!((state.as_str(), attempt), ("passed", 3));
}

#[tokio::test]
async fn lease_hands_out_the_oldest_job_of_the_agents_slots_with_its_namespace() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["a0", "a1", "a2", "a3"], 2))
        .await
        .unwrap();
    c.enqueue_batch(batch(&["solo"], 1)).await.unwrap();

    let l = leased(&mut c, "w1", &[1], 0).await.unwrap();
    let spec = l.job.clone().unwrap();
    assert_eq!((spec.scenario_id.as_str(), spec.namespace_slot), ("a1", 1));
    assert_eq!(l.namespace, "bench-w1");
    assert!(l.heartbeat_interval_ms > 0 && l.heartbeat_interval_ms < l.lease_ttl_ms);
    c.complete(complete_req(&l.lease_token, Outcome::Passed))
        .await
        .unwrap();
    let l = leased(&mut c, "w1", &[1], 0).await.unwrap();
    assert_eq!(l.job.unwrap().scenario_id, "a3");
    c.complete(complete_req(&l.lease_token, Outcome::Passed))
        .await
        .unwrap();
    assert!(leased(&mut c, "w1", &[1], 0).await.is_none());

    let l = leased(&mut c, "w0", &[0], 0).await.unwrap();
    assert_eq!(l.job.unwrap().scenario_id, "a0");
    c.complete(complete_req(&l.lease_token, Outcome::Passed))
        .await
        .unwrap();
    let l = leased(&mut c, "w0", &[0], 0).await.unwrap();
    assert_eq!(l.job.unwrap().scenario_id, "a2");
    c.complete(complete_req(&l.lease_token, Outcome::Passed))
        .await
        .unwrap();
    let l = leased(&mut c, "w0", &[0], 0).await.unwrap();
    assert_eq!(l.job.unwrap().scenario_id, "solo");
    assert_eq!(l.namespace, "", "parallel 1: no namespace isolation");
}

#[tokio::test]
async fn a_waiting_lease_is_woken_by_new_work_not_by_polling() {
    // The safety-net poll is 60 s in tests: only NOTIFY can wake the lease in time.
    let app = spawn_app().await;
    let mut waiting = app.client().await;
    let started = tokio::time::Instant::now();
    let lease = tokio::spawn(async move { waiting.lease(lease_req("agent", &[0], 10_000)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["late"], 1)).await.unwrap();
    let got = lease.await.unwrap().unwrap().into_inner().lease;
    assert_eq!(
        got.expect("woken with the job").job.unwrap().scenario_id,
        "late"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "woken before the wait ran out"
    );

    // With nothing to do, the lease returns empty when its wait runs out.
    let empty = c
        .lease(lease_req("agent", &[5], 200))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.lease.is_none());
}

#[tokio::test]
async fn a_retried_job_wakes_a_waiting_lease() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["flaky"], 1)).await.unwrap();
    let l = leased(&mut c, "a", &[0], 0).await.unwrap();
    let mut waiting = app.client().await;
    let lease = tokio::spawn(async move { waiting.lease(lease_req("b", &[0], 10_000)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.complete(complete_req(&l.lease_token, Outcome::Error))
        .await
        .unwrap();
    let again = lease
        .await
        .unwrap()
        .unwrap()
        .into_inner()
        .lease
        .expect("the retry");
    assert_eq!(again.attempt, 2);
}
