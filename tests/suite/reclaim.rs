//! Leases the coordinator takes back: expired (agent gone) or overrun (agent
//! hung), and the race between the reaper and a completing agent.

use std::time::Duration;

use benchq::proto::{GetBatchRequest, HeartbeatRequest, JobState, Outcome};
use benchq_coordinator::queue;
use benchq_coordinator::service::Timing;
use tonic::Code;

use crate::support::app::{
    batch, complete_req, lease_req, leased, snapshot, spawn_app, spawn_app_with, test_timing,
};

/// A coordinator whose reaper does nothing on its own in the test's lifetime,
/// so the test drives `expired_leases` and `reclaim` by hand.
fn manual_reaper(lease_ttl: Duration) -> Timing {
    Timing {
        lease_ttl,
        reap_interval: Duration::from_secs(3600),
        ..test_timing()
    }
}

async fn expire_all(pool: &sqlx::PgPool) {
    sqlx::query(
        "UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE state = 'running'",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn reaper_versus_complete_the_completion_wins() {
    let app = spawn_app_with(manual_reaper(Duration::from_secs(600))).await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["race"], 1)).await.unwrap();
    let l = leased(&mut c, "agent", &[0], 0).await.unwrap();
    expire_all(&app.pool).await;

    // The reaper scans and sees the expired lease ...
    let margin = Duration::from_secs(60);
    let found = queue::expired_leases(&app.pool, margin, 10).await.unwrap();
    assert_eq!(found.len(), 1);
    let (id, token, reason) = found[0].clone();
    assert_eq!(reason, "lease expired: agent lost");
    // ... the agent's Complete lands between the scan and the write ...
    c.complete(complete_req(&l.lease_token, Outcome::Passed))
        .await
        .unwrap();
    let after_complete = snapshot(&app.pool).await;
    // ... and the reaper's write finds nothing to do.
    let reclaimed = queue::reclaim(&app.pool, id, token, &reason, margin)
        .await
        .unwrap();
    assert_eq!(reclaimed, None);
    assert_eq!(
        snapshot(&app.pool).await,
        after_complete,
        "result and attempt kept"
    );
    let (state, attempt): (String, i32) = sqlx::query_as("SELECT state, attempt FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((state.as_str(), attempt), ("passed", 1));
}

#[tokio::test]
async fn reaper_versus_heartbeat_and_re_lease_nothing_is_overwritten() {
    let app = spawn_app_with(manual_reaper(Duration::from_secs(600))).await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["hb", "relet"], 2)).await.unwrap();
    let hb = leased(&mut c, "a", &[0], 0).await.unwrap();
    let relet = leased(&mut c, "b", &[1], 0).await.unwrap();
    expire_all(&app.pool).await;
    let margin = Duration::from_secs(60);
    let found = queue::expired_leases(&app.pool, margin, 10).await.unwrap();
    assert_eq!(found.len(), 2);

    // One agent heartbeats in time; the other job is reclaimed by another
    // reaper and leased again, all between this reaper's scan and its writes.
    c.heartbeat(HeartbeatRequest {
        lease_token: hb.lease_token.clone(),
    })
    .await
    .unwrap();
    let relet_id: uuid::Uuid = relet.id.parse().unwrap();
    let (_, relet_token, reason) = found.iter().find(|f| f.0 == relet_id).unwrap().clone();
    assert_eq!(
        queue::reclaim(&app.pool, relet_id, relet_token, &reason, margin)
            .await
            .unwrap()
            .as_deref(),
        Some("queued")
    );
    let again = leased(&mut c, "c", &[1], 0).await.unwrap();
    assert_eq!(again.attempt, 2);
    let before = snapshot(&app.pool).await;
    for (id, token, reason) in found {
        assert_eq!(
            queue::reclaim(&app.pool, id, token, &reason, margin)
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(snapshot(&app.pool).await, before);
}

#[tokio::test]
async fn an_expired_lease_is_reclaimed_and_its_late_complete_refused() {
    let app = spawn_app_with(Timing {
        lease_ttl: Duration::from_millis(600),
        ..test_timing()
    })
    .await;
    let mut c = app.client().await;
    let batch_id = c
        .enqueue_batch(batch(&["lost"], 1))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let first = leased(&mut c, "doomed", &[0], 0).await.unwrap();
    // No heartbeat: the reaper (every 200 ms, first after one TTL) takes it back
    // and the job is handed out again, as attempt 2.
    let second = leased(&mut c, "alive", &[0], 5_000)
        .await
        .expect("the reclaimed job, handed out again");
    assert_eq!((second.id.as_str(), second.attempt), (first.id.as_str(), 2));

    let before = snapshot(&app.pool).await;
    let late = c
        .complete(complete_req(&first.lease_token, Outcome::Error))
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(late.message().contains("RECLAIMED"), "{late:?}");
    let hb = c
        .heartbeat(HeartbeatRequest {
            lease_token: first.lease_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(hb.code(), Code::FailedPrecondition);
    assert_eq!(
        snapshot(&app.pool).await,
        before,
        "the stale lease changed nothing"
    );

    c.complete(complete_req(&second.lease_token, Outcome::Passed))
        .await
        .unwrap();
    let job = c
        .get_batch(GetBatchRequest {
            job_id: batch_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    assert_eq!(job.state, JobState::Passed as i32);
    let outcomes: Vec<_> = job
        .attempts
        .iter()
        .map(|a| (a.agent_id.as_str(), a.outcome, a.error.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (
                "doomed",
                Outcome::Reclaimed as i32,
                "lease expired: agent lost"
            ),
            ("alive", Outcome::Passed as i32, ""),
        ]
    );
}

#[tokio::test]
async fn an_expired_lease_on_the_last_attempt_ends_errored() {
    let app = spawn_app_with(Timing {
        lease_ttl: Duration::from_millis(300),
        ..test_timing()
    })
    .await;
    let mut c = app.client().await;
    let mut req = batch(&["once"], 1);
    req.shared.as_mut().unwrap().max_attempts = 1;
    c.enqueue_batch(req).await.unwrap();
    leased(&mut c, "doomed", &[0], 0).await.unwrap();
    let state = wait_for_state(&app.pool, "errored").await;
    assert_eq!(state, "errored");
}

#[tokio::test]
async fn a_job_that_heartbeats_is_never_reclaimed() {
    // A job running for 10x the TTL, heartbeating every third of it.
    let ttl = Duration::from_millis(300);
    let app = spawn_app_with(Timing {
        lease_ttl: ttl,
        ..test_timing()
    })
    .await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["long"], 1)).await.unwrap();
    let l = leased(&mut c, "a", &[0], 0).await.unwrap();
    let every = Duration::from_millis(l.heartbeat_interval_ms.into());
    let until = tokio::time::Instant::now() + ttl * 10;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(every).await;
        let r = c
            .heartbeat(HeartbeatRequest {
                lease_token: l.lease_token.clone(),
            })
            .await;
        assert!(r.is_ok(), "heartbeat refused: {r:?}");
    }
    let state = c
        .complete(complete_req(&l.lease_token, Outcome::Passed))
        .await
        .unwrap();
    assert_eq!(state.into_inner().state, JobState::Passed as i32);
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn a_job_past_its_timeout_is_taken_back_from_a_hung_agent() {
    // The reaper's first scan comes one TTL after start: keep it short.
    let app = spawn_app_with(Timing {
        lease_ttl: Duration::from_secs(2),
        timeout_margin: Duration::from_millis(500),
        ..test_timing()
    })
    .await;
    let mut c = app.client().await;
    let mut req = batch(&["hang"], 1);
    req.shared.as_mut().unwrap().timeout_seconds = 1;
    c.enqueue_batch(req).await.unwrap();
    let l = leased(&mut c, "hung", &[0], 0).await.unwrap();
    assert_eq!(l.job.as_ref().unwrap().timeout_seconds, 1);
    // The agent keeps heartbeating but never stops the job.
    let second = loop {
        c.heartbeat(HeartbeatRequest {
            lease_token: l.lease_token.clone(),
        })
        .await
        .ok();
        if let Some(next) = leased(&mut c, "other", &[0], 200).await {
            break next;
        }
    };
    assert_eq!(second.attempt, 2);
    let error: String =
        sqlx::query_scalar("SELECT error FROM attempts WHERE outcome = 'RECLAIMED'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(error.starts_with("timeout:"), "{error}");
}

/// Polls the single job's state until it is `want` (10 s at most).
pub async fn wait_for_state(pool: &sqlx::PgPool, want: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state: String = sqlx::query_scalar("SELECT state FROM jobs LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap();
        if state == want || tokio::time::Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn busy_slots_are_named_when_another_agent_holds_them() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["a", "b"], 1)).await.unwrap();
    let held = leased(&mut c, "first", &[0], 0).await.unwrap();
    let reply = c
        .lease(lease_req("second", &[0], 0))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.lease.is_none());
    assert_eq!(reply.busy_slots.len(), 1);
    let busy = &reply.busy_slots[0];
    assert_eq!(
        (busy.slot, busy.agent_id.as_str(), busy.id.as_str()),
        (0, "first", held.id.as_str())
    );
    // The holder itself is not told its own slot is busy.
    let own = c
        .lease(lease_req("first", &[0], 0))
        .await
        .unwrap()
        .into_inner();
    assert!(own.busy_slots.is_empty());
}
