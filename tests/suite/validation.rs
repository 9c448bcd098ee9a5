//! Bad input is refused with INVALID_ARGUMENT naming the field, and writes nothing.

use benchq::proto::{
    CompleteRequest, EnqueueBatchRequest, EnqueueRequest, GetBatchRequest, HeartbeatRequest,
    JobSpec, LeaseRequest, Outcome,
};
use tonic::Code;

use crate::support::app::{
    batch, complete_req, lease_req, leased, numbered_batch, snapshot, spawn_app,
};

fn spec(scenario: &str) -> JobSpec {
    JobSpec {
        scenario_id: scenario.into(),
        model: "m".into(),
        provider: "p".into(),
        parallel: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn every_invalid_request_is_refused_naming_the_field_and_nothing_is_written() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    // Some state to protect: a batch with one job running.
    c.enqueue_batch(batch(&["keep-1", "keep-2"], 2))
        .await
        .unwrap();
    let running = leased(&mut c, "agent", &[0], 0).await.unwrap();
    let before = snapshot(&app.pool).await;

    let with = |f: fn(&mut EnqueueBatchRequest)| {
        let mut r = batch(&["a", "b"], 2);
        f(&mut r);
        r
    };
    let batches: Vec<(&str, EnqueueBatchRequest)> = vec![
        ("scenario_ids", batch(&[], 2)),
        ("parallel", batch(&["a"], 0)),
        ("parallel", batch(&["a"], -3)),
        ("scenario_ids[1]", batch(&["a", ""], 2)),
        ("scenario_ids[0]", batch(&["bad\0id"], 1)),
        ("scenario_ids[0]", batch(&[" padded"], 1)),
        ("scenario_ids[0]", batch(&["-rf"], 1)),
        ("scenario_ids[1]", batch(&["ok", "../../etc"], 2)),
        ("scenario_ids[0]", batch(&["/abs"], 1)),
        ("job_id", with(|r| r.job_id = "not-a-uuid".into())),
        (
            "shared.model",
            with(|r| r.shared.as_mut().unwrap().model.clear()),
        ),
        ("shared.model", with(|r| r.shared = None)),
        (
            "shared.provider",
            with(|r| r.shared.as_mut().unwrap().provider.clear()),
        ),
        (
            "shared.max_attempts",
            with(|r| r.shared.as_mut().unwrap().max_attempts = -1),
        ),
        (
            "shared.skill_sha256",
            with(|r| r.shared.as_mut().unwrap().skill_sha256 = "xyz".into()),
        ),
        (
            "shared.scenario_id",
            with(|r| r.shared.as_mut().unwrap().scenario_id = "x".into()),
        ),
        (
            "shared.parallel",
            with(|r| r.shared.as_mut().unwrap().parallel = 4),
        ),
        ("tenant_id", with(|r| r.tenant_id = "a\nb".into())),
        (
            "shared.skill_file",
            with(|r| r.shared.as_mut().unwrap().skill_file = "fix\u{202E}dm.exe".into()),
        ),
        (
            "shared.model",
            with(|r| r.shared.as_mut().unwrap().model = "m".repeat(300)),
        ),
    ];
    for (field, req) in batches {
        let e = c.enqueue_batch(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}:")),
            "names {field}: {e:?}"
        );
    }

    let singles: Vec<(&str, EnqueueRequest)> = vec![
        ("job", EnqueueRequest { job: None }),
        (
            "job.scenario_id",
            EnqueueRequest {
                job: Some(spec("")),
            },
        ),
        (
            "job.parallel",
            EnqueueRequest {
                job: Some(JobSpec {
                    parallel: 0,
                    ..spec("a")
                }),
            },
        ),
        (
            "job.namespace_slot",
            EnqueueRequest {
                job: Some(JobSpec {
                    parallel: 2,
                    namespace_slot: 2,
                    ..spec("a")
                }),
            },
        ),
        (
            "job.namespace_slot",
            EnqueueRequest {
                job: Some(JobSpec {
                    namespace_slot: -1,
                    ..spec("a")
                }),
            },
        ),
        (
            "job.job_id",
            EnqueueRequest {
                job: Some(JobSpec {
                    job_id: "x".into(),
                    ..spec("a")
                }),
            },
        ),
    ];
    for (field, req) in singles {
        let e = c.enqueue(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}:")),
            "names {field}: {e:?}"
        );
    }

    let leases: Vec<(&str, LeaseRequest)> = vec![
        ("agent_id", lease_req("", &[0], 0)),
        ("slots", lease_req("a", &[], 0)),
        ("slots[1]", lease_req("a", &[0, -1], 0)),
    ];
    for (field, req) in leases {
        let e = c.lease(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}:")),
            "names {field}: {e:?}"
        );
    }

    let token = running.lease_token.clone();
    let completes: Vec<(&str, CompleteRequest)> = vec![
        ("lease_token", complete_req("nope", Outcome::Passed)),
        ("lease_token", complete_req("", Outcome::Passed)),
        ("outcome", complete_req(&token, Outcome::Unspecified)),
        (
            "outcome",
            CompleteRequest {
                outcome: 99,
                ..complete_req(&token, Outcome::Passed)
            },
        ),
        (
            "metrics_json",
            CompleteRequest {
                metrics_json: "{not json".into(),
                ..complete_req(&token, Outcome::Passed)
            },
        ),
        (
            "output_tail",
            CompleteRequest {
                output_tail: "x".repeat(64 * 1024 + 1),
                ..complete_req(&token, Outcome::Passed)
            },
        ),
    ];
    for (field, req) in completes {
        let e = c.complete(req).await.unwrap_err();
        let want = if field == "output_tail" {
            Code::ResourceExhausted
        } else {
            Code::InvalidArgument
        };
        assert_eq!(e.code(), want, "{field}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}:")),
            "names {field}: {e:?}"
        );
    }
    let e = c
        .heartbeat(HeartbeatRequest {
            lease_token: "123".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .get_batch(GetBatchRequest {
            job_id: "123".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("job_id:"));

    assert_eq!(
        snapshot(&app.pool).await,
        before,
        "no refused request wrote anything"
    );
    // And the running lease is still good.
    c.complete(complete_req(&token, Outcome::Passed))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_batch_id_is_used_once_and_a_refused_batch_writes_nothing() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    let id = c
        .enqueue_batch(batch(&["a"], 1))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let before = snapshot(&app.pool).await;
    let mut again = batch(&["b", "c", "d"], 3);
    again.job_id = id.clone();
    let e = c.enqueue_batch(again).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert_eq!(snapshot(&app.pool).await, before);

    let unknown = c
        .get_batch(GetBatchRequest {
            job_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn single_enqueue_appends_to_a_batch_of_its_tenant_only() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    let first = c
        .enqueue(EnqueueRequest {
            job: Some(spec("one")),
        })
        .await
        .unwrap()
        .into_inner();
    let second = c
        .enqueue(EnqueueRequest {
            job: Some(JobSpec {
                job_id: first.job_id.clone(),
                ..spec("two")
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.job_id, first.job_id);
    let before = snapshot(&app.pool).await;
    let e = c
        .enqueue(EnqueueRequest {
            job: Some(JobSpec {
                job_id: first.job_id.clone(),
                tenant_id: "intruder".into(),
                ..spec("three")
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(snapshot(&app.pool).await, before);
    let batch = c
        .get_batch(GetBatchRequest {
            job_id: first.job_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = batch
        .jobs
        .iter()
        .map(|j| j.spec.clone().unwrap().scenario_id)
        .collect();
    assert_eq!(names, ["one", "two"]);
    assert_eq!(batch.jobs[1].position, 1);
}

#[tokio::test]
async fn a_large_batch_is_read_in_pages_with_counts_over_the_whole_batch() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    let batch_id = c
        .enqueue_batch(numbered_batch(2500, 4))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let l = leased(&mut c, "a", &[0], 0).await.unwrap();
    c.complete(complete_req(&l.lease_token, benchq::proto::Outcome::Passed))
        .await
        .unwrap();

    let mut token = String::new();
    let mut positions = Vec::new();
    let mut pages = 0;
    loop {
        let page = c
            .get_batch(GetBatchRequest {
                job_id: batch_id.clone(),
                omit_output: true,
                page_size: 0,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        let counts = page.counts.unwrap();
        assert_eq!(
            (counts.queued, counts.passed),
            (2499, 1),
            "counts cover the whole batch"
        );
        positions.extend(page.jobs.iter().map(|j| j.position));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3, "1,000 jobs a page");
    assert_eq!(
        positions,
        (0..2500).collect::<Vec<_>>(),
        "every job once, in order"
    );

    // With output tails, pages are smaller; a bad token is refused.
    let page = c
        .get_batch(GetBatchRequest {
            job_id: batch_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.jobs.len(), 100);
    let e = c
        .get_batch(GetBatchRequest {
            job_id: batch_id.clone(),
            page_token: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("page_token:"));

    // The CLI reads every page.
    let (code, out, err) = crate::support::app::cli(&[
        "--coordinator",
        &app.url(),
        "status",
        &batch_id,
        "--output",
        "json",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["jobs"].as_array().unwrap().len(), 2500);
}
