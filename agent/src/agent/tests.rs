//! The agent loop against an in-memory coordinator served over real gRPC on
//! 127.0.0.1:0, with in-process runners: leasing, heartbeats, lease loss,
//! cancel requests, report retries, outages and draining.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use benchq::proto::coordinator_server::{Coordinator, CoordinatorServer};
use benchq::proto::{
    CompleteResponse, EnqueueBatchRequest, EnqueueBatchResponse, EnqueueRequest, EnqueueResponse,
    GetBatchRequest, GetBatchResponse, HeartbeatResponse, JobSpec, JobState, LeaseResponse,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response};

use super::*;
use crate::runner::runner_fn;

/// What the fake coordinator hands out and what it was told.
#[derive(Default)]
struct Fake {
    queue: Mutex<VecDeque<Lease>>,
    lease_requests: Mutex<Vec<LeaseRequest>>,
    heartbeats: Mutex<Vec<String>>,
    completes: Mutex<Vec<CompleteRequest>>,
    /// Heartbeats for these tokens answer FAILED_PRECONDITION.
    lost: Mutex<HashSet<String>>,
    /// Heartbeats for these tokens answer cancel_requested.
    cancel: Mutex<HashSet<String>>,
    /// Completes for these tokens answer FAILED_PRECONDITION.
    refuse: Mutex<HashSet<String>>,
    /// This many Completes answer UNAVAILABLE before one is accepted.
    complete_unavailable: AtomicUsize,
}

impl Fake {
    fn push(&self, lease: Lease) {
        self.queue.lock().unwrap().push_back(lease);
    }

    fn completes(&self) -> Vec<CompleteRequest> {
        self.completes.lock().unwrap().clone()
    }

    fn heartbeats_for(&self, token: &str) -> usize {
        self.heartbeats
            .lock()
            .unwrap()
            .iter()
            .filter(|t| *t == token)
            .count()
    }
}

#[tonic::async_trait]
impl Coordinator for Fake {
    async fn enqueue(
        &self,
        _: Request<EnqueueRequest>,
    ) -> Result<Response<EnqueueResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn enqueue_batch(
        &self,
        _: Request<EnqueueBatchRequest>,
    ) -> Result<Response<EnqueueBatchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn lease(
        &self,
        request: Request<LeaseRequest>,
    ) -> Result<Response<LeaseResponse>, Status> {
        let request = request.into_inner();
        self.lease_requests.lock().unwrap().push(request.clone());
        let until = Instant::now() + Duration::from_millis(request.wait_ms.into());
        loop {
            {
                let mut queue = self.queue.lock().unwrap();
                let pos = queue.iter().position(|l| {
                    request
                        .slots
                        .contains(&l.job.as_ref().map_or(0, |j| j.namespace_slot))
                });
                if let Some(lease) = pos.and_then(|p| queue.remove(p)) {
                    return Ok(Response::new(LeaseResponse { lease: Some(lease) }));
                }
            }
            if Instant::now() >= until {
                return Ok(Response::new(LeaseResponse { lease: None }));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let token = request.into_inner().lease_token;
        self.heartbeats.lock().unwrap().push(token.clone());
        if self.lost.lock().unwrap().contains(&token) {
            return Err(Status::failed_precondition("lease not held"));
        }
        let cancel_requested = self.cancel.lock().unwrap().contains(&token);
        Ok(Response::new(HeartbeatResponse { cancel_requested }))
    }

    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let request = request.into_inner();
        if self.refuse.lock().unwrap().contains(&request.lease_token) {
            return Err(Status::failed_precondition("lease not held"));
        }
        if self
            .complete_unavailable
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable("try again"));
        }
        self.completes.lock().unwrap().push(request);
        Ok(Response::new(CompleteResponse {
            state: JobState::Passed as i32,
        }))
    }

    async fn get_batch(
        &self,
        _: Request<GetBatchRequest>,
    ) -> Result<Response<GetBatchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serves `fake` on `listener` until `stop` is cancelled.
fn serve(fake: Arc<Fake>, listener: TcpListener, stop: CancellationToken) {
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::from_arc(fake))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
            .await
            .unwrap();
    });
}

async fn start_fake() -> (Arc<Fake>, SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake::default());
    let stop = CancellationToken::new();
    serve(fake.clone(), listener, stop.clone());
    (fake, addr, stop)
}

fn lease(token: &str, slot: i32) -> Lease {
    Lease {
        id: format!("id-{token}"),
        job: Some(JobSpec {
            job_id: "batch".into(),
            scenario_id: format!("scn-{token}"),
            namespace_slot: slot,
            parallel: 2,
            ..Default::default()
        }),
        attempt: 1,
        namespace: format!("bench-w{slot}"),
        lease_token: token.into(),
        heartbeat_interval_ms: 50,
        lease_ttl_ms: 150,
    }
}

fn config(addr: SocketAddr, slots: Vec<i32>) -> AgentConfig {
    let mut config = AgentConfig::new(format!("http://{addr}"), "agent-test", slots);
    config.lease_wait = Duration::from_millis(200);
    config.tenant_id = "acme".into();
    config
}

/// Starts `agent`, returning its shutdown token and its task.
fn start(agent: Agent) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    (shutdown, task)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn stop(shutdown: CancellationToken, task: tokio::task::JoinHandle<()>) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("run returns soon after shutdown")
        .unwrap();
}

#[tokio::test]
async fn leases_runs_heartbeats_and_reports() {
    let (fake, addr, _server) = start_fake().await;
    fake.push(lease("t1", 3));
    let runner = runner_fn(|job: LeasedJob, _cancel| async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        RunResult {
            exit_code: Some(0),
            output_tail: format!("ran {} in {}", job.spec.scenario_id, job.namespace),
            metrics_json: Some(r#"{"score":1}"#.into()),
            ..RunResult::new(Outcome::Passed)
        }
    });
    let agent = Agent::new(config(addr, vec![3]), Arc::new(runner)).unwrap();
    let (shutdown, task) = start(agent);
    eventually("the report", || !fake.completes().is_empty()).await;
    stop(shutdown, task).await;

    let done = fake.completes();
    assert_eq!(done.len(), 1);
    let c = &done[0];
    assert_eq!(c.lease_token, "t1");
    assert_eq!(c.outcome, Outcome::Passed as i32);
    assert_eq!(c.exit_code, Some(0));
    assert_eq!(c.output_tail, "ran scn-t1 in bench-w3");
    assert_eq!(c.metrics_json, r#"{"score":1}"#);
    assert!(c.duration_ms >= 250, "{}", c.duration_ms);
    assert!(
        fake.heartbeats_for("t1") >= 3,
        "{} heartbeats",
        fake.heartbeats_for("t1")
    );
    let first = fake.lease_requests.lock().unwrap()[0].clone();
    assert_eq!(first.agent_id, "agent-test");
    assert_eq!(first.slots, vec![3]);
    assert_eq!(first.wait_ms, 200);
    assert_eq!(first.tenant_id, "acme");
}

#[tokio::test]
async fn each_slot_runs_its_own_job_at_the_same_time() {
    let (fake, addr, _server) = start_fake().await;
    fake.push(lease("a", 0));
    fake.push(lease("b", 1));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let runner = runner_fn({
        let (running, peak) = (running.clone(), peak.clone());
        move |_job, _cancel| {
            let (running, peak) = (running.clone(), peak.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                RunResult::new(Outcome::Failed)
            }
        }
    });
    let agent = Agent::new(config(addr, vec![1, 0, 1]), Arc::new(runner)).unwrap();
    assert_eq!(agent.config().slots, vec![0, 1]);
    let (shutdown, task) = start(agent);
    eventually("both reports", || fake.completes().len() == 2).await;
    stop(shutdown, task).await;
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    for request in fake.lease_requests.lock().unwrap().iter() {
        assert_eq!(request.slots.len(), 1, "one slot per worker");
    }
}

#[tokio::test]
async fn lease_lost_cancels_the_run_and_drops_its_result() {
    let (fake, addr, _server) = start_fake().await;
    fake.lost.lock().unwrap().insert("t1".into());
    fake.push(lease("t1", 0));
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let runner = runner_fn({
        let saw_cancel = saw_cancel.clone();
        move |job: LeasedJob, cancel: CancellationToken| {
            let saw_cancel = saw_cancel.clone();
            async move {
                if job.id != "id-t1" {
                    return RunResult::new(Outcome::Passed);
                }
                tokio::select! {
                    _ = cancel.cancelled() => saw_cancel.store(true, Ordering::SeqCst),
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                RunResult::error("cancelled")
            }
        }
    });
    let agent = Agent::new(config(addr, vec![0]), Arc::new(runner)).unwrap();
    let (shutdown, task) = start(agent);
    eventually("the cancellation", || saw_cancel.load(Ordering::SeqCst)).await;
    // The slot goes back to leasing.
    fake.push(lease("t2", 0));
    eventually("the next job's report", || !fake.completes().is_empty()).await;
    stop(shutdown, task).await;
    let tokens: Vec<String> = fake
        .completes()
        .into_iter()
        .map(|c| c.lease_token)
        .collect();
    assert_eq!(tokens, vec!["t2"]);
    assert_eq!(
        fake.heartbeats_for("t1"),
        1,
        "no heartbeats after the lease was lost"
    );
}

#[tokio::test]
async fn cancel_requested_stops_the_run_and_reports_it() {
    let (fake, addr, _server) = start_fake().await;
    fake.cancel.lock().unwrap().insert("t1".into());
    fake.push(lease("t1", 0));
    let runner = runner_fn(|_job, cancel: CancellationToken| async move {
        tokio::select! {
            _ = cancel.cancelled() => RunResult::error("cancelled"),
            _ = tokio::time::sleep(Duration::from_secs(5)) => RunResult::new(Outcome::Passed),
        }
    });
    let agent = Agent::new(config(addr, vec![0]), Arc::new(runner)).unwrap();
    let (shutdown, task) = start(agent);
    eventually("the report", || !fake.completes().is_empty()).await;
    stop(shutdown, task).await;
    let c = &fake.completes()[0];
    assert_eq!(c.outcome, Outcome::Error as i32);
    assert_eq!(c.error, "cancelled");
}

#[tokio::test]
async fn complete_is_retried_until_acknowledged() {
    let (fake, addr, _server) = start_fake().await;
    fake.complete_unavailable.store(2, Ordering::SeqCst);
    fake.push(lease("t1", 0));
    let runner = runner_fn(|_job, _cancel| async { RunResult::new(Outcome::Passed) });
    let agent = Agent::new(config(addr, vec![0]), Arc::new(runner)).unwrap();
    let (shutdown, task) = start(agent);
    eventually("the report", || !fake.completes().is_empty()).await;
    stop(shutdown, task).await;
    assert_eq!(fake.completes().len(), 1);
    assert_eq!(fake.complete_unavailable.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_refused_result_does_not_stop_the_slot() {
    let (fake, addr, _server) = start_fake().await;
    fake.refuse.lock().unwrap().insert("t1".into());
    fake.push(lease("t1", 0));
    fake.push(lease("t2", 0));
    let runner = runner_fn(|_job, _cancel| async { RunResult::new(Outcome::Passed) });
    let agent = Agent::new(config(addr, vec![0]), Arc::new(runner)).unwrap();
    let (shutdown, task) = start(agent);
    eventually("the second report", || !fake.completes().is_empty()).await;
    stop(shutdown, task).await;
    assert_eq!(fake.completes()[0].lease_token, "t2");
}

#[tokio::test]
async fn a_panicking_runner_is_an_error_result() {
    let (fake, addr, _server) = start_fake().await;
    fake.push(lease("t1", 0));
    let runner = runner_fn(|job: LeasedJob, _cancel| async move {
        if job.attempt > 0 {
            panic!("boom");
        }
        RunResult::new(Outcome::Passed)
    });
    let agent = Agent::new(config(addr, vec![0]), Arc::new(runner)).unwrap();
    let (shutdown, task) = start(agent);
    eventually("the report", || !fake.completes().is_empty()).await;
    stop(shutdown, task).await;
    let c = &fake.completes()[0];
    assert_eq!(c.outcome, Outcome::Error as i32);
    assert_eq!(c.error, "runner failed: panicked: boom");
}

#[tokio::test]
async fn shutdown_lets_the_running_job_finish_and_report() {
    let (fake, addr, _server) = start_fake().await;
    fake.push(lease("t1", 0));
    let started = Arc::new(tokio::sync::Notify::new());
    let runner = runner_fn({
        let started = started.clone();
        move |_job, _cancel| {
            let started = started.clone();
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                RunResult::new(Outcome::Passed)
            }
        }
    });
    let agent = Agent::new(config(addr, vec![0]), Arc::new(runner)).unwrap();
    let (shutdown, task) = start(agent);
    started.notified().await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("drained")
        .unwrap();
    assert_eq!(
        fake.completes().len(),
        1,
        "the running job was reported before run returned"
    );
    // No new lease was asked for after shutdown.
    let asked = fake.lease_requests.lock().unwrap().len();
    fake.push(lease("t2", 0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.lease_requests.lock().unwrap().len(), asked);
}

#[tokio::test]
async fn shutdown_abandons_a_pending_long_poll() {
    let (_fake, addr, _server) = start_fake().await;
    let mut config = config(addr, vec![0]);
    config.lease_wait = Duration::from_secs(30);
    let runner = runner_fn(|_job, _cancel| async { RunResult::new(Outcome::Passed) });
    let (shutdown, task) = start(Agent::new(config, Arc::new(runner)).unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop(shutdown, task).await;
}

#[tokio::test]
async fn rides_out_a_coordinator_outage() {
    // A port with nothing behind it yet.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let runner = runner_fn(|_job, _cancel| async { RunResult::new(Outcome::Passed) });
    let agent = Agent::new(config(addr, vec![0]), Arc::new(runner)).unwrap();
    let (shutdown, task) = start(agent);
    tokio::time::sleep(Duration::from_millis(400)).await;

    let listener = TcpListener::bind(addr).await.unwrap();
    let fake = Arc::new(Fake::default());
    fake.push(lease("t1", 0));
    let server = CancellationToken::new();
    serve(fake.clone(), listener, server.clone());
    eventually("the report after the outage", || {
        !fake.completes().is_empty()
    })
    .await;
    stop(shutdown, task).await;
    server.cancel();
}

#[test]
fn heartbeat_interval_falls_back_to_a_third_of_the_ttl() {
    let mut l = lease("t", 0);
    assert_eq!(heartbeat_interval(&l), Duration::from_millis(50));
    l.heartbeat_interval_ms = 0;
    l.lease_ttl_ms = 30_000;
    assert_eq!(heartbeat_interval(&l), Duration::from_secs(10));
    l.lease_ttl_ms = 0;
    assert_eq!(heartbeat_interval(&l), DEFAULT_HEARTBEAT);
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let runner: Arc<dyn Runner> = Arc::new(runner_fn(|_job, _cancel| async {
        RunResult::new(Outcome::Passed)
    }));
    let no_slots = AgentConfig::new("http://127.0.0.1:1", "a", vec![]);
    assert!(matches!(
        Agent::new(no_slots, runner.clone()),
        Err(AgentError::Config(_))
    ));
    let negative = AgentConfig::new("http://127.0.0.1:1", "a", vec![-1]);
    assert!(matches!(
        Agent::new(negative, runner.clone()),
        Err(AgentError::Config(_))
    ));
    let no_id = AgentConfig::new("http://127.0.0.1:1", " ", vec![0]);
    assert!(matches!(
        Agent::new(no_id, runner.clone()),
        Err(AgentError::Config(_))
    ));
    let bad_url = AgentConfig::new("http://[::1", "a", vec![0]);
    assert!(matches!(
        Agent::new(bad_url, runner),
        Err(AgentError::Connect(_))
    ));
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("benchq-agent-loop-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn runs_child_processes_end_to_end() {
    let (fake, addr, _server) = start_fake().await;
    fake.push(lease("t1", 0));
    let dir = scratch_dir("e2e");
    let runner = crate::ProcessRunner::new(
        "sh",
        [
            "-c",
            r#"echo "$BENCHQ_AGENT_ID ran $BENCHQ_SCENARIO_ID in $BENCHQ_NAMESPACE"
               echo '{"x": 1}' > "$BENCHQ_RESULT_FILE"
               exit 1"#,
        ],
    )
    .with_agent_id("agent-test")
    .with_work_dir(&dir);
    let agent = Agent::new(config(addr, vec![0]), Arc::new(runner)).unwrap();
    let (shutdown, task) = start(agent);
    eventually("the report", || !fake.completes().is_empty()).await;
    stop(shutdown, task).await;
    let c = &fake.completes()[0];
    assert_eq!(c.outcome, Outcome::Failed as i32);
    assert_eq!(c.exit_code, Some(1));
    assert_eq!(c.output_tail, "agent-test ran scn-t1 in bench-w0\n");
    assert_eq!(c.metrics_json, r#"{"x": 1}"#);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "job directory left behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A forced exit drops `run` with a job running: its processes must not outlive it.
#[tokio::test]
async fn dropping_the_agent_kills_running_jobs() {
    let (fake, addr, _server) = start_fake().await;
    fake.push(lease("t1", 0));
    let dir = scratch_dir("drop");
    let pid_file = dir.join("pid");
    let script = format!(
        "trap '' TERM; sleep 30 & echo $! > {}; wait",
        pid_file.display()
    );
    let runner = crate::ProcessRunner::new("sh", ["-c", script.as_str()]).with_work_dir(&dir);
    let agent = Agent::new(config(addr, vec![0]), Arc::new(runner)).unwrap();
    let (_shutdown, task) = start(agent);
    eventually("the job to start", || pid_file.exists()).await;
    eventually("the pid", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    task.abort();
    let _ = task.await;
    // Alive means: signal 0 succeeds and /proc does not show a zombie.
    let alive = || {
        // SAFETY: signal 0 only checks that the process exists.
        let exists = unsafe { libc::kill(pid, 0) == 0 };
        exists
            && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                !stat
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
    };
    eventually("the job's processes to die", || !alive()).await;
    assert!(fake.completes().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
