//! Starting benchq for a test: a migrated database of its own, a coordinator
//! on a loopback port (in-process, or the real binary), agent processes.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use benchq::proto::{self, EnqueueBatchRequest, JobSpec};
use benchq_coordinator::service::Timing;
use benchq_coordinator::{Config, Coordinator};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::pg;

/// A fresh, migrated database: its URL and a pool to inspect it.
pub async fn migrated_db() -> (String, PgPool) {
    let url = pg::cluster().fresh_database().await;
    let pool = PgPool::connect(&url)
        .await
        .expect("connect to test database");
    benchq_coordinator::migrate(&pool).await.expect("migrate");
    (url, pool)
}

/// Timing for tests: short enough to be quick, with the safety-net poll long
/// enough that a test relying on NOTIFY would notice if it did not work.
pub fn test_timing() -> Timing {
    Timing {
        lease_ttl: Duration::from_secs(10),
        max_lease_wait: Duration::from_secs(10),
        poll_interval: Duration::from_secs(60),
        fallback_poll_interval: Duration::from_millis(200),
        reap_interval: Duration::from_millis(200),
        timeout_margin: Duration::from_secs(5),
    }
}

/// A coordinator served in-process over real gRPC on a loopback port.
pub struct TestApp {
    pub addr: SocketAddr,
    pub db_url: String,
    pub pool: PgPool,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_timing()).await
}

pub async fn spawn_app_with(timing: Timing) -> TestApp {
    spawn_app_configured(|c| c.timing = timing).await
}

/// A coordinator with test timing, adjusted by `configure` (auth, TLS, …).
pub async fn spawn_app_configured(configure: impl FnOnce(&mut Config)) -> TestApp {
    let (db_url, pool) = migrated_db().await;
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), db_url.clone());
    config.timing = test_timing();
    config.max_connections = 30;
    configure(&mut config);
    let coordinator = Coordinator::build(config).await.expect("build coordinator");
    let addr = coordinator.local_addr();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        coordinator.run(token).await.expect("coordinator run");
    });
    TestApp {
        addr,
        db_url,
        pool,
        shutdown,
        task: Some(task),
    }
}

impl TestApp {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> benchq::client::Client {
        benchq::client::connect(&self.url())
            .await
            .expect("connect to coordinator")
    }

    /// Stops the coordinator and waits for it to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("coordinator task");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A batch request with the fields every test needs.
pub fn batch(scenarios: &[&str], parallel: i32) -> EnqueueBatchRequest {
    EnqueueBatchRequest {
        scenario_ids: scenarios.iter().map(|s| s.to_string()).collect(),
        parallel,
        shared: Some(JobSpec {
            model: "model-a".into(),
            provider: "provider-a".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A batch of `n` scenarios named `s0`, `s1`, … over `parallel` slots.
pub fn numbered_batch(n: usize, parallel: i32) -> EnqueueBatchRequest {
    EnqueueBatchRequest {
        scenario_ids: (0..n).map(|i| format!("s{i}")).collect(),
        ..batch(&[], parallel)
    }
}

pub fn lease_req(agent: &str, slots: &[i32], wait_ms: u32) -> proto::LeaseRequest {
    proto::LeaseRequest {
        agent_id: agent.into(),
        slots: slots.to_vec(),
        wait_ms,
        tenant_id: String::new(),
    }
}

pub fn complete_req(token: &str, outcome: proto::Outcome) -> proto::CompleteRequest {
    proto::CompleteRequest {
        lease_token: token.into(),
        outcome: outcome as i32,
        exit_code: Some(0),
        duration_ms: 10,
        ..Default::default()
    }
}

/// Every row of both queue tables as text, in a stable order: compare two
/// snapshots to prove a refused request changed nothing.
pub async fn snapshot(pool: &PgPool) -> String {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT j::text FROM jobs j \
         UNION ALL SELECT '#' || a::text FROM attempts a ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("snapshot");
    rows.into_iter().map(|(r,)| r + "\n").collect()
}

/// A binary of the workspace, built next to the test binary.
pub fn bin(name: &str) -> PathBuf {
    // target/debug/deps/suite-XXXX -> target/debug/NAME
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds every binary",
        path.display()
    );
    path
}

/// A child process that is killed when dropped, with its stderr collected.
pub struct Proc {
    pub child: Child,
    pub name: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Proc {
    /// Starts `program`, copying its stderr into a buffer (see [`Proc::log`]).
    /// Lines are also sent to `lines`, when given.
    pub fn spawn(
        name: &str,
        cmd: &mut Command,
        lines: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Proc {
        cmd.stderr(Stdio::piped())
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(tx) = &lines {
                    let _ = tx.send(line.clone());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Proc {
            child,
            name: name.to_string(),
            log,
        }
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running child") as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Sends SIGTERM and waits for the exit, at most `limit`.
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "{} did not stop within {limit:?} of SIGTERM; log:\n{}",
                self.name,
                self.log()
            ),
        }
    }
}

/// Starts the real `benchq-coordinator` binary on a free loopback port and
/// waits for its "ready" line. Returns the process and its URL.
pub async fn spawn_coordinator_bin(db_url: &str, extra: &[&str]) -> (Proc, String) {
    spawn_coordinator_bin_on("127.0.0.1:0", db_url, extra).await
}

/// Like [`spawn_coordinator_bin`], on a given address (to restart on the same port).
pub async fn spawn_coordinator_bin_on(
    listen: &str,
    db_url: &str,
    extra: &[&str],
) -> (Proc, String) {
    spawn_coordinator_bin_logging(listen, db_url, extra, "info").await
}

/// Like [`spawn_coordinator_bin_on`], with a `RUST_LOG` filter.
pub async fn spawn_coordinator_bin_logging(
    listen: &str,
    db_url: &str,
    extra: &[&str],
    rust_log: &str,
) -> (Proc, String) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut cmd = Command::new(bin("benchq-coordinator"));
    cmd.args(["--listen", listen, "--database-url", db_url]);
    if !extra.contains(&"--tokens") {
        cmd.arg("--insecure-no-auth");
    }
    cmd.args(extra)
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1");
    let proc = Proc::spawn("benchq-coordinator", &mut cmd, Some(tx));
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = rx.recv().await {
            if let Some(rest) = line.split("ready on ").nth(1) {
                return Some(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
        None
    })
    .await;
    match ready {
        Ok(Some(addr)) => (proc, format!("http://{addr}")),
        _ => panic!("coordinator did not become ready; log:\n{}", proc.log()),
    }
}

/// Starts a real `benchq-agent` for `slots`, running `program`.
pub fn spawn_agent_bin(url: &str, agent_id: &str, slots: &[i32], program: &[&str]) -> Proc {
    spawn_agent_bin_with(url, agent_id, slots, &[], program)
}

/// Like [`spawn_agent_bin`], with extra agent flags (`--grace 1s`, …).
pub fn spawn_agent_bin_with(
    url: &str,
    agent_id: &str,
    slots: &[i32],
    extra: &[&str],
    program: &[&str],
) -> Proc {
    let mut cmd = Command::new(bin("benchq-agent"));
    cmd.args(["--coordinator", url, "--agent-id", agent_id])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    for s in slots {
        cmd.args(["--slot", &s.to_string()]);
    }
    cmd.arg("--").args(program);
    Proc::spawn(agent_id, &mut cmd, None)
}

/// One agent process per slot `0..count`, named `agent-{slot}`, running `program`.
pub fn spawn_slot_agents(url: &str, count: i32, program: &Path) -> Vec<Proc> {
    (0..count)
        .map(|slot| {
            spawn_agent_bin(
                url,
                &format!("agent-{slot}"),
                &[slot],
                &[program.to_str().expect("a UTF-8 path")],
            )
        })
        .collect()
}

/// Polls `check` every 25 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Counts of jobs by state in the test database.
pub async fn state_counts(pool: &PgPool) -> std::collections::BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT state, count(*) FROM jobs GROUP BY 1")
        .fetch_all(pool)
        .await
        .expect("state counts")
        .into_iter()
        .collect()
}

/// A directory for this test process's files, removed when the process exits.
pub fn test_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    extern "C" fn remove() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("benchq-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("test dir");
        // SAFETY: registering a plain `extern "C" fn` with no captured state.
        unsafe { libc::atexit(remove) };
        dir
    })
}

/// Writes an executable shell script into a fresh temp dir and returns its path.
pub fn script(name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = test_dir().join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).expect("script dir");
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Runs the `benchq` CLI to completion: (exit code, stdout, stderr).
pub async fn cli(args: &[&str]) -> (i32, String, String) {
    cli_with_env(args, &[]).await
}

/// [`cli`] with extra environment variables.
pub async fn cli_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin("benchq"))
        .args(args)
        .env_remove("BENCHQ_COORDINATOR")
        .env_remove("BENCHQ_TOKEN")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run benchq");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (job id, attempt) pairs an agent says it leased, from its log.
pub fn leased_in_log(log: &str) -> Vec<(String, i32)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("leased job ").nth(1)?;
            let mut words = rest.split_whitespace();
            let id = words.next()?.to_string();
            let attempt = rest
                .split(" attempt ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((id, attempt))
        })
        .collect()
}

/// Every job passed, with exactly one PASSED attempt; attempts the coordinator
/// took back (RECLAIMED) were never received by any agent, so no job was
/// dispatched twice while its agent lived.
pub async fn assert_each_job_ran_once(pool: &PgPool, agents: &[Proc]) {
    let counts = state_counts(pool).await;
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["passed"], "{counts:?}");
    let rows: Vec<(uuid::Uuid, i64, i64)> = sqlx::query_as(
        "SELECT job_id, count(*) FILTER (WHERE outcome = 'PASSED'), \
             count(*) FILTER (WHERE outcome IS DISTINCT FROM 'PASSED' AND outcome <> 'RECLAIMED') \
         FROM attempts GROUP BY job_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, jobs);
    for (job, passed, other) in rows {
        assert_eq!(
            (passed, other),
            (1, 0),
            "job {job}: one result, from one live lease"
        );
    }
    let reclaimed: Vec<(uuid::Uuid, i32)> =
        sqlx::query_as("SELECT job_id, attempt FROM attempts WHERE outcome = 'RECLAIMED'")
            .fetch_all(pool)
            .await
            .unwrap();
    let seen: Vec<(String, i32)> = agents
        .iter()
        .flat_map(|a| leased_in_log(&a.log()))
        .collect();
    for (job, attempt) in reclaimed {
        assert!(
            !seen.contains(&(job.to_string(), attempt)),
            "job {job} attempt {attempt} was taken back from a live agent"
        );
    }
}

/// One Lease call: the job handed out, if any.
pub async fn leased(
    c: &mut benchq::client::Client,
    agent: &str,
    slots: &[i32],
    wait_ms: u32,
) -> Option<proto::Lease> {
    c.lease(lease_req(agent, slots, wait_ms))
        .await
        .expect("lease")
        .into_inner()
        .lease
}
