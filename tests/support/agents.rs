//! Helpers for tests that drive agent processes: pids written by job
//! scripts, agent logs and exits, job rows.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use super::app::{Proc, eventually, script};

/// The pid a script wrote to `file` (a whole line), once it is there.
pub async fn read_pid(file: &Path) -> i32 {
    eventually(
        Duration::from_secs(10),
        &format!("a pid in {}", file.display()),
        || async {
            std::fs::read_to_string(file)
                .ok()
                .filter(|s| s.ends_with('\n'))
                .map(|s| s.trim().parse().expect("a pid"))
        },
    )
    .await
}

/// A job script that writes its pids under its own directory: `$D` in `body`.
/// Returns the script and that directory.
pub fn job_script(name: &str, body: &str) -> (PathBuf, PathBuf) {
    let path = script(name, &format!("D=$(dirname \"$0\")\n{body}"));
    let dir = path.parent().unwrap().to_path_buf();
    (path, dir)
}

/// Waits for a line containing `needle` in `agent`'s log.
pub async fn wait_log(agent: &Proc, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !agent.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log of {} within {limit:?}; log:\n{}",
            agent.name,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits for `agent` to exit on its own, at most `limit`.
pub async fn wait_exit(agent: &mut Proc, limit: Duration) -> std::process::ExitStatus {
    match tokio::time::timeout(limit, agent.child.wait()).await {
        Ok(status) => status.expect("wait for the agent"),
        Err(_) => panic!(
            "{} did not exit within {limit:?}; log:\n{}",
            agent.name,
            agent.log()
        ),
    }
}

pub async fn wait_state(pool: &PgPool, job: Uuid, want: &str, limit: Duration) {
    eventually(limit, &format!("job {job} to be {want}"), || async {
        (job_row(pool, job).await.0 == want).then_some(())
    })
    .await;
}

/// `(state, attempt)` of a job.
pub async fn job_row(pool: &PgPool, job: Uuid) -> (String, i32) {
    sqlx::query_as("SELECT state, attempt FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(pool)
        .await
        .expect("job row")
}
