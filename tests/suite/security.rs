//! Who may do what: roles, tenants, stolen lease tokens, and a barrage of
//! malformed requests that must all be refused without changing anything.

use std::collections::BTreeMap;
use std::sync::Arc;

use benchq::client::{Client, ClientOptions};
use benchq::proto::{
    CancelBatchRequest, CancelJobRequest, CompleteRequest, EnqueueBatchRequest, EnqueueRequest,
    GetBatchRequest, HeartbeatRequest, JobSpec, LeaseRequest, Outcome,
};
use benchq_coordinator::auth::{Auth, Role, add_token};
use tonic::Code;

use crate::support::app::{
    TestApp, batch, complete_req, lease_req, leased, snapshot, spawn_app, spawn_app_configured,
};

/// A coordinator with tokens for two tenants, and the secrets by name.
async fn app_with_tokens() -> (TestApp, BTreeMap<&'static str, String>) {
    let dir = crate::support::app::test_dir().join(format!("tokens-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens.json");
    let mut secrets = BTreeMap::new();
    for (name, role, tenant) in [
        ("agent-a", Role::Agent, "a"),
        ("agent-a2", Role::Agent, "a"),
        ("agent-b", Role::Agent, "b"),
        ("operator-a", Role::Operator, "a"),
        ("operator-b", Role::Operator, "b"),
        ("admin", Role::Admin, ""),
    ] {
        secrets.insert(name, add_token(&file, name, role, tenant).unwrap());
    }
    let auth = Arc::new(Auth::from_file(&file).unwrap());
    let app = spawn_app_configured(|c| c.auth = auth).await;
    (app, secrets)
}

async fn client_as(app: &TestApp, secret: Option<&str>) -> Client {
    benchq::client::connect(ClientOptions {
        url: app.url(),
        token: secret.map(str::to_string),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// One call of each RPC, built so that a caller allowed to make it gets past
/// authorization (whatever the queue then answers).
async fn call_each_rpc(c: &mut Client) -> Vec<(&'static str, Code)> {
    let unknown = uuid::Uuid::new_v4().to_string();
    vec![
        (
            "Enqueue",
            code(
                c.enqueue(EnqueueRequest {
                    job: Some(JobSpec {
                        scenario_id: "s".into(),
                        model: "m".into(),
                        provider: "p".into(),
                        parallel: 1,
                        ..Default::default()
                    }),
                })
                .await,
            ),
        ),
        (
            "EnqueueBatch",
            code(c.enqueue_batch(batch(&["x"], 1)).await),
        ),
        ("Lease", code(c.lease(lease_req("who", &[99], 0)).await)),
        (
            "Heartbeat",
            code(
                c.heartbeat(HeartbeatRequest {
                    lease_token: unknown.clone(),
                })
                .await,
            ),
        ),
        (
            "Complete",
            code(c.complete(complete_req(&unknown, Outcome::Passed)).await),
        ),
        (
            "GetBatch",
            code(
                c.get_batch(GetBatchRequest {
                    job_id: unknown.clone(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "CancelJob",
            code(
                c.cancel_job(CancelJobRequest {
                    id: unknown.clone(),
                })
                .await,
            ),
        ),
        (
            "CancelBatch",
            code(
                c.cancel_batch(CancelBatchRequest {
                    job_id: unknown.clone(),
                })
                .await,
            ),
        ),
    ]
}

#[tokio::test]
async fn every_role_against_every_rpc() {
    let (app, secrets) = app_with_tokens().await;
    // What each caller may do; every other RPC is refused with the code given.
    let agent = ["Lease", "Heartbeat", "Complete"];
    let operator = [
        "Enqueue",
        "EnqueueBatch",
        "GetBatch",
        "CancelJob",
        "CancelBatch",
    ];
    let table: Vec<(&str, Option<&str>, Vec<&str>, Code)> = vec![
        ("no token", None, vec![], Code::Unauthenticated),
        (
            "unknown token",
            Some("bq_not-a-real-token"),
            vec![],
            Code::Unauthenticated,
        ),
        (
            "agent",
            Some(&secrets["agent-a"]),
            agent.to_vec(),
            Code::PermissionDenied,
        ),
        (
            "operator",
            Some(&secrets["operator-a"]),
            operator.to_vec(),
            Code::PermissionDenied,
        ),
        (
            "admin",
            Some(&secrets["admin"]),
            agent.iter().chain(&operator).copied().collect(),
            Code::PermissionDenied,
        ),
    ];
    for (who, secret, allowed, refused) in table {
        let mut c = client_as(&app, secret).await;
        for (rpc, got) in call_each_rpc(&mut c).await {
            if allowed.contains(&rpc) {
                assert!(
                    ![Code::Unauthenticated, Code::PermissionDenied].contains(&got),
                    "{who} may call {rpc}, got {got:?}"
                );
            } else {
                assert_eq!(got, refused, "{who} calling {rpc}");
            }
        }
    }

    // Health and reflection need no token.
    let channel = benchq::client::endpoint(&app.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn tenants_are_isolated_and_the_tenant_comes_from_the_credential() {
    let (app, secrets) = app_with_tokens().await;
    let mut op_a = client_as(&app, Some(&secrets["operator-a"])).await;
    let mut op_b = client_as(&app, Some(&secrets["operator-b"])).await;
    let mut agent_a = client_as(&app, Some(&secrets["agent-a"])).await;
    let mut agent_b = client_as(&app, Some(&secrets["agent-b"])).await;

    // B's batch, enqueued with no tenant named: it is B's because the token is.
    let b = op_b
        .enqueue_batch(batch(&["b-job"], 1))
        .await
        .unwrap()
        .into_inner();
    let tenant: String = sqlx::query_scalar("SELECT tenant_id FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(tenant, "b");
    let before = snapshot(&app.pool).await;

    // A's operator cannot enqueue into B, see B's batch or job, or cancel them.
    let mut into_b = batch(&["x"], 1);
    into_b.tenant_id = "b".into();
    assert_eq!(
        code(op_a.enqueue_batch(into_b).await),
        Code::PermissionDenied
    );
    let seen = op_a
        .get_batch(GetBatchRequest {
            job_id: b.job_id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        code(seen),
        Code::NotFound,
        "another tenant's batch behaves as not found"
    );
    assert_eq!(
        code(
            op_a.cancel_batch(CancelBatchRequest {
                job_id: b.job_id.clone()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            op_a.cancel_job(CancelJobRequest {
                id: b.ids[0].clone()
            })
            .await
        ),
        Code::NotFound
    );
    // A single Enqueue into B's batch id is refused too.
    let append = op_a
        .enqueue(EnqueueRequest {
            job: Some(JobSpec {
                job_id: b.job_id.clone(),
                scenario_id: "sneaky".into(),
                model: "m".into(),
                provider: "p".into(),
                parallel: 1,
                ..Default::default()
            }),
        })
        .await;
    assert_eq!(code(append), Code::NotFound);

    // A's agent never leases B's job, not even by asking for tenant B.
    assert!(leased(&mut agent_a, "a-1", &[0], 0).await.is_none());
    let mut ask_b = lease_req("a-1", &[0], 0);
    ask_b.tenant_id = "b".into();
    assert_eq!(code(agent_a.lease(ask_b).await), Code::PermissionDenied);
    assert_eq!(snapshot(&app.pool).await, before, "nothing changed");

    // B's own agent does, and B's operator sees it.
    let l = leased(&mut agent_b, "b-1", &[0], 0).await.unwrap();
    assert_eq!(l.job.unwrap().tenant_id, "b");
    let seen = op_b
        .get_batch(GetBatchRequest {
            job_id: b.job_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seen.counts.unwrap().running, 1);
}

#[tokio::test]
async fn a_stolen_lease_token_is_refused() {
    let (app, secrets) = app_with_tokens().await;
    let mut op = client_as(&app, Some(&secrets["operator-a"])).await;
    let mut owner = client_as(&app, Some(&secrets["agent-a"])).await;
    let mut thief = client_as(&app, Some(&secrets["agent-a2"])).await;
    op.enqueue_batch(batch(&["job"], 1)).await.unwrap();
    let l = leased(&mut owner, "owner", &[0], 0).await.unwrap();
    let before = snapshot(&app.pool).await;

    let hb = thief
        .heartbeat(HeartbeatRequest {
            lease_token: l.lease_token.clone(),
        })
        .await;
    assert_eq!(code(hb), Code::PermissionDenied);
    let done = thief
        .complete(complete_req(&l.lease_token, Outcome::Failed))
        .await;
    assert_eq!(code(done), Code::PermissionDenied);
    assert_eq!(
        snapshot(&app.pool).await,
        before,
        "the thief changed nothing"
    );

    owner
        .heartbeat(HeartbeatRequest {
            lease_token: l.lease_token.clone(),
        })
        .await
        .unwrap();
    owner
        .complete(complete_req(&l.lease_token, Outcome::Passed))
        .await
        .unwrap();
    // Even the idempotent repeat is the owner's alone.
    let again = thief
        .complete(complete_req(&l.lease_token, Outcome::Passed))
        .await;
    assert_eq!(code(again), Code::PermissionDenied);
}

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Random bytes read as text: control characters, NULs, invalid UTF-8
    /// (replaced), spaces, multi-byte characters.
    fn junk(&mut self, max: usize) -> String {
        let len = 1 + self.below(max as u64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
        let s = String::from_utf8_lossy(&bytes).into_owned();
        // Make sure it holds at least one character no id may hold.
        format!("{s}\u{7}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_malformed_or_oversized_requests_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    c.enqueue_batch(batch(&["keep-1", "keep-2"], 2))
        .await
        .unwrap();
    let held = leased(&mut c, "agent", &[0], 0).await.unwrap();
    let before = snapshot(&app.pool).await;
    let mut rng = Rng(0x5EED_BE4C_u64);
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();

    for i in 0..1200 {
        let kind = i % 12;
        let (what, got, want): (&str, Code, &[Code]) = match kind {
            0 => {
                let mut r = batch(&["a"], 1);
                r.scenario_ids = vec![rng.junk(40)];
                (
                    "junk scenario id",
                    code(c.enqueue_batch(r).await),
                    &[Code::InvalidArgument],
                )
            }
            1 => {
                let mut r = batch(&["a"], 1);
                r.shared.as_mut().unwrap().model = rng.junk(300);
                (
                    "junk model",
                    code(c.enqueue_batch(r).await),
                    &[Code::InvalidArgument],
                )
            }
            2 => {
                let r = batch(&["a"], -(rng.below(1 << 30) as i32) - 1);
                (
                    "negative parallel",
                    code(c.enqueue_batch(r).await),
                    &[Code::InvalidArgument],
                )
            }
            3 => {
                let mut r = batch(&["a"], 2);
                r.shared.as_mut().unwrap().max_attempts = -(rng.below(1000) as i32) - 1;
                (
                    "negative max_attempts",
                    code(c.enqueue_batch(r).await),
                    &[Code::InvalidArgument],
                )
            }
            4 => {
                let r = CompleteRequest {
                    outcome: 7 + rng.below(1000) as i32,
                    ..complete_req(&held.lease_token, Outcome::Passed)
                };
                (
                    "unknown outcome",
                    code(c.complete(r).await),
                    &[Code::InvalidArgument],
                )
            }
            5 => {
                let r = complete_req(&rng.junk(60), Outcome::Passed);
                (
                    "junk lease token",
                    code(c.complete(r).await),
                    &[Code::InvalidArgument],
                )
            }
            6 => {
                let r = LeaseRequest {
                    agent_id: rng.junk(50),
                    slots: vec![0],
                    wait_ms: 0,
                    tenant_id: String::new(),
                };
                (
                    "junk agent id",
                    code(c.lease(r).await),
                    &[Code::InvalidArgument],
                )
            }
            7 => {
                let r = LeaseRequest {
                    agent_id: "a".into(),
                    slots: vec![-(rng.below(1 << 20) as i32) - 1],
                    wait_ms: 0,
                    tenant_id: String::new(),
                };
                (
                    "negative slot",
                    code(c.lease(r).await),
                    &[Code::InvalidArgument],
                )
            }
            8 => {
                let r = GetBatchRequest {
                    job_id: rng.junk(40),
                    ..Default::default()
                };
                (
                    "junk batch id",
                    code(c.get_batch(r).await),
                    &[Code::InvalidArgument],
                )
            }
            9 => {
                let r = CompleteRequest {
                    output_tail: "x".repeat(64 * 1024 + 1 + rng.below(4096) as usize),
                    ..complete_req(&held.lease_token, Outcome::Passed)
                };
                (
                    "oversized output",
                    code(c.complete(r).await),
                    &[Code::ResourceExhausted],
                )
            }
            10 => {
                let r = EnqueueRequest {
                    job: Some(JobSpec {
                        scenario_id: "s".into(),
                        model: "m".into(),
                        provider: "p".into(),
                        parallel: 2,
                        namespace_slot: 2 + rng.below(100) as i32,
                        ..Default::default()
                    }),
                };
                (
                    "slot beyond parallel",
                    code(c.enqueue(r).await),
                    &[Code::InvalidArgument],
                )
            }
            _ => {
                let mut r = batch(&["a"], 1);
                r.tenant_id = rng.junk(20);
                (
                    "junk tenant",
                    code(c.enqueue_batch(r).await),
                    &[Code::InvalidArgument],
                )
            }
        };
        assert!(
            want.contains(&got),
            "request {i} ({what}): got {got:?}, want {want:?}"
        );
        *by_code.entry(format!("{got:?}")).or_default() += 1;
    }

    // Huge ones: one scenario too many, and a request over the message size limit.
    let too_many: Vec<String> = (0..100_001).map(|i| format!("s{i}")).collect();
    let r = EnqueueBatchRequest {
        scenario_ids: too_many,
        ..batch(&[], 1)
    };
    assert_eq!(code(c.enqueue_batch(r).await), Code::ResourceExhausted);
    let r = EnqueueBatchRequest {
        scenario_ids: vec!["x".repeat(200); 200_000],
        ..batch(&[], 1)
    };
    assert_eq!(
        code(c.enqueue_batch(r).await),
        Code::OutOfRange,
        "over the 32 MiB request limit"
    );
    let r = CompleteRequest {
        metrics_json: format!("\"{}\"", "m".repeat(2 << 20)),
        ..complete_req(&held.lease_token, Outcome::Passed)
    };
    assert_eq!(code(c.complete(r).await), Code::ResourceExhausted);

    eprintln!("refused: {by_code:?}");
    assert_eq!(
        snapshot(&app.pool).await,
        before,
        "the database is unchanged"
    );
    // And the coordinator is still up and serving.
    c.complete(complete_req(&held.lease_token, Outcome::Passed))
        .await
        .unwrap();
}

#[tokio::test]
async fn sighup_reloads_the_tokens_file() {
    use crate::support::app::spawn_coordinator_bin;

    let dir = std::env::temp_dir().join(format!("benchq-hup-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens.json");
    let first = add_token(&file, "first", Role::Operator, "a").unwrap();
    let db_url = crate::support::pg::cluster().fresh_database().await;
    let (coordinator, url) =
        spawn_coordinator_bin(&db_url, &["--tokens", file.to_str().unwrap()]).await;
    let call = |secret: String| {
        let url = url.clone();
        async move {
            let mut c = benchq::client::connect(ClientOptions {
                url,
                token: Some(secret),
                ..Default::default()
            })
            .await
            .unwrap();
            code(c.enqueue_batch(batch(&["x"], 1)).await)
        }
    };
    assert_eq!(call(first.clone()).await, Code::Ok);
    let second = add_token(&file, "second", Role::Operator, "a").unwrap();
    assert_eq!(
        call(second.clone()).await,
        Code::Unauthenticated,
        "not before the reload"
    );
    coordinator.signal(libc::SIGHUP);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while call(second.clone()).await != Code::Ok {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload the tokens"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A broken file keeps the tokens in force.
    std::fs::write(&file, "{broken").unwrap();
    coordinator.signal(libc::SIGHUP);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(call(first).await, Code::Ok);
    assert!(
        coordinator.log().contains("keeping the tokens in force"),
        "{}",
        coordinator.log()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn reflection_needs_no_token_when_authentication_is_on() {
    let (app, _) = app_with_tokens().await;
    let names = crate::grpc_surface::list_services_v1(&app.url()).await;
    assert!(
        names.contains(&"benchq.v1.Coordinator".to_string()),
        "{names:?}"
    );
}
