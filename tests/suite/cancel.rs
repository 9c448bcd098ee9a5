//! Cancel and interrupt: queued jobs stop at once, running jobs through their
//! agent (or the reaper), interrupted jobs go back without using an attempt.

use std::time::Duration;

use benchq::proto::{
    CancelBatchRequest, CancelJobRequest, GetBatchRequest, HeartbeatRequest, JobState, Outcome,
};
use benchq_coordinator::service::Timing;
use tonic::Code;

use crate::support::app::{
    batch, complete_req, leased, snapshot, spawn_app, spawn_app_with, test_timing,
};

#[tokio::test]
async fn cancel_a_queued_job_a_running_job_and_a_batch() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    let reply = c
        .enqueue_batch(batch(&["run", "wait", "other", "more"], 2))
        .await
        .unwrap()
        .into_inner();
    let running = leased(&mut c, "a", &[0], 0).await.unwrap();
    assert_eq!(running.job.as_ref().unwrap().scenario_id, "run");

    // A queued job: cancelled at once, never leased.
    let r = c
        .cancel_job(CancelJobRequest {
            id: reply.ids[1].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.cancelled, r.stopping, r.finished), (1, 0, 0));
    // A running job: asked to stop; the agent hears it on its next heartbeat.
    let r = c
        .cancel_job(CancelJobRequest {
            id: running.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.cancelled, r.stopping, r.finished), (0, 1, 0));
    let hb = c
        .heartbeat(HeartbeatRequest {
            lease_token: running.lease_token.clone(),
        })
        .await
        .unwrap();
    assert!(hb.into_inner().cancel_requested);
    // The batch: the two remaining queued jobs are cancelled, the running one is already stopping.
    let r = c
        .cancel_batch(CancelBatchRequest {
            job_id: reply.job_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.cancelled, r.stopping, r.finished), (2, 1, 1));
    assert!(leased(&mut c, "b", &[1], 0).await.is_none());

    // The agent stops the job and reports it.
    let done = c
        .complete(complete_req(&running.lease_token, Outcome::Cancelled))
        .await
        .unwrap();
    assert_eq!(done.into_inner().state, JobState::Cancelled as i32);
    let b = c
        .get_batch(GetBatchRequest {
            job_id: reply.job_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.counts.unwrap().cancelled, 4);
    assert!(
        b.jobs
            .iter()
            .all(|j| j.finished_at.is_some() && j.cancel_requested)
    );

    // Cancelling again changes nothing; unknown ids are NOT_FOUND.
    let before = snapshot(&app.pool).await;
    let r = c
        .cancel_batch(CancelBatchRequest {
            job_id: reply.job_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.cancelled, r.stopping, r.finished), (0, 0, 4));
    let e = c
        .cancel_job(CancelJobRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .cancel_batch(CancelBatchRequest {
            job_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(snapshot(&app.pool).await, before);
}

#[tokio::test]
async fn a_cancelled_job_whose_agent_reports_an_error_is_not_retried() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["x"], 1)).await.unwrap();
    let l = leased(&mut c, "a", &[0], 0).await.unwrap();
    c.cancel_job(CancelJobRequest { id: l.id.clone() })
        .await
        .unwrap();
    let done = c
        .complete(complete_req(&l.lease_token, Outcome::Error))
        .await
        .unwrap();
    assert_eq!(done.into_inner().state, JobState::Cancelled as i32);
}

#[tokio::test]
async fn a_cancelled_job_whose_agent_never_answers_ends_cancelled_when_its_lease_expires() {
    let app = spawn_app_with(Timing {
        lease_ttl: Duration::from_millis(300),
        ..test_timing()
    })
    .await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["x"], 1)).await.unwrap();
    let l = leased(&mut c, "gone", &[0], 0).await.unwrap();
    c.cancel_job(CancelJobRequest { id: l.id }).await.unwrap();
    let state = crate::reclaim::wait_for_state(&app.pool, "cancelled").await;
    assert_eq!(state, "cancelled", "finalised, not retried");
    let attempt: i32 = sqlx::query_scalar("SELECT attempt FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempt, 1);
}

#[tokio::test]
async fn an_interrupted_job_goes_back_to_the_queue_without_using_an_attempt() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    let mut req = batch(&["x"], 1);
    req.shared.as_mut().unwrap().max_attempts = 1;
    c.enqueue_batch(req).await.unwrap();
    for _ in 0..3 {
        let l = leased(&mut c, "draining", &[0], 0).await.unwrap();
        assert_eq!(l.attempt, 1, "an interruption gives the attempt back");
        let done = c
            .complete(complete_req(&l.lease_token, Outcome::Interrupted))
            .await
            .unwrap();
        assert_eq!(done.into_inner().state, JobState::Queued as i32);
        // Repeating the report is harmless.
        c.complete(complete_req(&l.lease_token, Outcome::Interrupted))
            .await
            .unwrap();
    }
    let (state, attempt): (String, i32) = sqlx::query_as("SELECT state, attempt FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((state.as_str(), attempt), ("queued", 0));
    let l = leased(&mut c, "fresh", &[0], 0).await.unwrap();
    c.complete(complete_req(&l.lease_token, Outcome::Passed))
        .await
        .unwrap();
    let rows: Vec<(i32, String)> =
        sqlx::query_as("SELECT attempt, outcome FROM attempts ORDER BY started_at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|(a, _)| *a == 1));
    assert_eq!(rows[3].1, "PASSED");
}

#[tokio::test]
async fn agents_cannot_report_reclaimed() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["x"], 1)).await.unwrap();
    let l = leased(&mut c, "a", &[0], 0).await.unwrap();
    let e = c
        .complete(complete_req(&l.lease_token, Outcome::Reclaimed))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("outcome:"));
}
