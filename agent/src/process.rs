//! [`ProcessRunner`]: runs each job as a child process, the way benchmark
//! harnesses written in any language plug into benchq.
//!
//! The contract with the child:
//! - its arguments arrive as `BENCHQ_*` environment variables (see
//!   [`LeasedJob::env_vars`]) plus `BENCHQ_AGENT_ID`, and as one JSON file
//!   named by `BENCHQ_JOB_FILE`;
//! - it may write a JSON document to `BENCHQ_RESULT_FILE`, which becomes the
//!   attempt's `metrics_json` (when the coordinator could store it: see
//!   [`benchq::report::check_metrics`]; otherwise it is dropped with a note in
//!   the attempt's error);
//! - its exit code is the verdict: 0 passed, a *failure* code (1 unless
//!   configured) failed, anything else is an infrastructure error that the
//!   coordinator retries.
//!
//! Each child leads its own process group, so that stopping a job stops
//! everything it started (a harness typically spawns the agent under test,
//! which spawns tools, …): signals go to the whole group, and the group is
//! killed once the child is gone, whatever happened — even when what happened
//! is the agent's own death (see [`crate::children`]). Processes that leave
//! the group (`setsid`) are found by the marker every process of the run
//! inherits, `BENCHQ_JOB_RUN=<random id>`, and killed with it.
//!
//! Each run gets a directory `benchq-{agent id}-{job id}-{attempt}/` in the
//! work directory, removed when the run ends. An agent killed outright
//! leaves its directories behind; [`ProcessRunner::remove_stale_job_dirs`]
//! removes them when the agent (same id) starts again.
//!
//! The runner only stops a job when asked to (its cancel token); *why* it was
//! asked (an operator's cancel, a timeout, a shutdown, a lost lease) and what
//! that means for the reported outcome is the agent loop's business.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use benchq::proto::Outcome;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::children::{self, OwnedChild, RUN_MARKER_VAR, group_alive, kill_group};
use crate::job::LeasedJob;
use crate::runner::{BoxFuture, RunResult, Runner};
use crate::tail::Tail;

/// Result files larger than this are dropped (with a note in `error`). The
/// same limit as [`benchq::report::MAX_METRICS`], which the coordinator
/// enforces; kept under this name for existing users.
pub const METRICS_MAX: usize = benchq::report::MAX_METRICS;

/// How long to wait for the output pipes to close once the process group is
/// dead. Only a process that left the group (`setsid`) can keep them open.
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// How often to look whether a signalled process group is gone yet.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// Output lines longer than this are logged in pieces.
const LOG_LINE_MAX: usize = 8 * 1024;

/// Runs every job as `PROGRAM ARGS…` in its own process group.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use benchq_agent::ProcessRunner;
///
/// let runner = ProcessRunner::new("./run-scenario.sh", ["--verbose"])
///     .with_agent_id("host-1")
///     .with_failure_exit_codes([1, 2])
///     .with_grace(Duration::from_secs(30));
/// # let _ = runner;
/// ```
#[derive(Debug, Clone)]
pub struct ProcessRunner {
    program: OsString,
    args: Vec<OsString>,
    agent_id: String,
    work_dir: PathBuf,
    failure_exit_codes: Vec<i32>,
    grace: Duration,
}

impl ProcessRunner {
    /// How long a stopped job gets between SIGTERM and SIGKILL unless told otherwise.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

    /// A runner for `program args…`, with the defaults: failure exit code 1,
    /// per-job files in the system temp directory, a 10 s grace period and an
    /// empty `BENCHQ_AGENT_ID`.
    pub fn new<I, A>(program: impl Into<OsString>, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        ProcessRunner {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            agent_id: String::new(),
            work_dir: std::env::temp_dir(),
            failure_exit_codes: vec![1],
            grace: Self::DEFAULT_GRACE,
        }
    }

    /// The agent id the child sees as `BENCHQ_AGENT_ID`.
    pub fn with_agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = agent_id.into();
        self
    }

    /// Where the per-job directories (`benchq-{agent id}-{job id}-{attempt}/`) are made.
    pub fn with_work_dir(mut self, work_dir: impl Into<PathBuf>) -> Self {
        self.work_dir = work_dir.into();
        self
    }

    /// The exit codes that mean "the scenario ran and failed" (FAILED, never
    /// retried) rather than "the runner broke" (ERROR). Replaces the default
    /// `{1}`. Exit code 0 always means PASSED.
    pub fn with_failure_exit_codes(mut self, codes: impl IntoIterator<Item = i32>) -> Self {
        self.failure_exit_codes = codes.into_iter().collect();
        self
    }

    /// How long a stopped job's process group gets to exit after SIGTERM
    /// before it is killed.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The fresh directory holding `job.json` (and maybe `result.json`) for
    /// one attempt: `benchq-{agent id}-{job id}-{attempt}`, or
    /// `benchq-{job id}-{attempt}` without an agent id. The ids are kept to
    /// safe characters so that they can never name a path outside `work_dir`.
    fn job_dir(&self, job: &LeasedJob) -> PathBuf {
        self.work_dir.join(format!(
            "{}{}-{}",
            self.dir_prefix(),
            path_safe(&job.id),
            job.attempt
        ))
    }

    /// `benchq-{agent id}-`, or `benchq-` without an agent id.
    fn dir_prefix(&self) -> String {
        if self.agent_id.is_empty() {
            "benchq-".to_string()
        } else {
            format!("benchq-{}-", path_safe(&self.agent_id))
        }
    }

    /// Removes the job directories a previous run of this agent left behind
    /// in the work directory when it was killed outright: those named
    /// `benchq-{this agent id}-{job UUID}-{attempt}` that no live process
    /// holds (each run holds an `flock` on its directory until it has removed
    /// it; the kernel releases it when the agent dies). Call it at start.
    /// Returns how many were removed.
    ///
    /// Only exact matches go: another agent's id may start with this one's
    /// (`host` and `host-1`), but what follows this one's prefix must then
    /// be a UUID, a dash and a number. Nothing is removed without an agent
    /// id. A directory in use is left alone even when another running agent
    /// has the same id (which it must not). An agent that gets a new id at
    /// each start (the binary's default `HOSTNAME-PID`) never finds its
    /// predecessor's directories: give it a stable `--agent-id`.
    ///
    /// # Errors
    ///
    /// Listing the work directory failed (a missing one is no error).
    /// Directories that cannot be removed are logged and skipped.
    pub fn remove_stale_job_dirs(&self) -> io::Result<usize> {
        if self.agent_id.is_empty() {
            return Ok(0);
        }
        let prefix = self.dir_prefix();
        let entries = match std::fs::read_dir(&self.work_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            if !is_job_dir_suffix(rest) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // Held while removing it, so that it cannot be taken meanwhile.
            let _lock = match lock_dir(&entry.path()) {
                Ok(Some(lock)) => lock,
                Ok(None) => continue, // a live run's
                Err(e) => {
                    warn!(
                        "cannot lock {} to see whether it is stale: {e}",
                        entry.path().display()
                    );
                    continue;
                }
            };
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => warn!(
                    "could not remove the stale job directory {}: {e}",
                    entry.path().display()
                ),
            }
        }
        Ok(removed)
    }

    async fn run_job(&self, job: LeasedJob, cancel: CancellationToken) -> RunResult {
        let started = Instant::now();
        let mut result = self.run_in_dir(&job, &cancel).await;
        result.duration = started.elapsed();
        result
    }

    async fn run_in_dir(&self, job: &LeasedJob, cancel: &CancellationToken) -> RunResult {
        let program = self.program.to_string_lossy().into_owned();
        let dir = self.job_dir(job);
        // From here on, whatever happens (even this future being dropped
        // halfway), the directory and the process group are cleaned up.
        let marker = children::new_run_marker();
        let mut cleanup = Cleanup {
            pgid: None,
            marker: marker.clone(),
            dir: Some(dir.clone()),
            lock: None,
        };
        let job_file = dir.join("job.json");
        let result_file = dir.join("result.json");
        match prepare_dir(&dir, &job_file, &job.to_json()).await {
            Ok(lock) => cleanup.lock = Some(lock),
            Err(e) => {
                return RunResult::error(format!("could not prepare {}: {e}", dir.display()));
            }
        }

        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(job.env_vars())
            .env("BENCHQ_AGENT_ID", &self.agent_id)
            .env("BENCHQ_JOB_FILE", &job_file)
            .env("BENCHQ_RESULT_FILE", &result_file)
            // Marks every process of this run, including those that leave
            // its process group, so that they can be found and killed.
            .env(RUN_MARKER_VAR, &marker)
            // The agent's own credentials are not the job's business: the code
            // under test must not be able to lease, complete or forge results.
            .env_remove("BENCHQ_TOKEN")
            .env_remove("BENCHQ_CLIENT_KEY")
            .env_remove("BENCHQ_CLIENT_CERT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        children::die_with_agent(&mut command);
        let mut child = match children::spawn(command).await {
            Ok(child) => child,
            Err(e) => {
                return RunResult::error(format!(
                    "failed to start {program}: {}",
                    io_error_text(&e)
                ));
            }
        };
        // With process_group(0) the child's pid is its group's id.
        let pgid = child.id().and_then(|pid| i32::try_from(pid).ok());
        cleanup.pgid = pgid;
        debug!(job = %job.id, pid = ?pgid, "started {program}");
        // Declared after `cleanup`, so dropped before it: on a forced drop the
        // guard is killed quietly and `cleanup` kills the group.
        let guard = match pgid {
            Some(pgid) => match children::spawn_guard(pgid, &marker).await {
                Ok(guard) => Some(guard),
                Err(e) => {
                    warn!(job = %job.id, "could not start the guard of process group {pgid} ({}): its processes would outlive a killed agent", io_error_text(&e));
                    None
                }
            },
            None => None,
        };

        let tail = Arc::new(Mutex::new(Tail::default()));
        let mut pipes = JoinSet::new();
        if let Some(out) = child.child_mut().stdout.take() {
            pipes.spawn(pump(out, "stdout", job.id.clone(), tail.clone()));
        }
        if let Some(err) = child.child_mut().stderr.take() {
            pipes.spawn(pump(err, "stderr", job.id.clone(), tail.clone()));
        }

        // Biased: a child that exited just as the cancel came finished on its own.
        let (status, stopped) = tokio::select! {
            biased;
            status = child.wait() => (status, false),
            _ = cancel.cancelled() => (self.stop(&mut child, pgid, &marker, &job.id).await, true),
        };
        // The child is gone; anything it left running goes too: in its group,
        // or out of it (daemons), found by the marker.
        let pgid = cleanup.pgid.take();
        let leftovers = children::kill_leftovers(&marker, pgid);
        if leftovers > 0 {
            debug!(job = %job.id, "killed {leftovers} process(es) the job left running");
        }
        let drained = tokio::time::timeout(PIPE_DRAIN, async {
            while pipes.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(job = %job.id, "output pipes still open after the job's processes were killed (a process that left the group and dropped the job's marker?); ignoring the rest of its output");
            pipes.abort_all();
        }
        if let Some(guard) = guard {
            children::stop_guard(guard).await;
        }
        let output_tail = tail.lock().unwrap_or_else(|p| p.into_inner()).to_text();

        let mut result = match status {
            Ok(status) => classify(status, &self.failure_exit_codes),
            Err(e) => RunResult::error(format!("waiting for {program}: {e}")),
        };
        // How a stopped child exited (SIGTERM handled with exit 0, say) is
        // no verdict on the scenario: the agent reports the stop's outcome.
        result.finished_on_its_own = !stopped;
        result.output_tail = output_tail;

        match read_metrics(&result_file).await {
            Ok(metrics) => result.metrics_json = metrics,
            Err(note) => {
                warn!(job = %job.id, "{note}");
                if !result.error.is_empty() {
                    result.error.push_str("; ");
                }
                result.error.push_str(&note);
            }
        }

        if let Some(dir) = cleanup.dir.take()
            && let Err(e) = tokio::fs::remove_dir_all(&dir).await
        {
            warn!(job = %job.id, "could not remove {}: {e}", dir.display());
        }
        result
    }

    /// Stops a job whose cancel token fired: SIGTERM to the group (and to
    /// the job's processes outside it), up to `grace` for the whole group to
    /// exit, then SIGKILL. Returns the child's exit status.
    async fn stop(
        &self,
        child: &mut OwnedChild,
        pgid: Option<i32>,
        marker: &str,
        job_id: &str,
    ) -> io::Result<ExitStatus> {
        let Some(pgid) = pgid else {
            return child.wait().await;
        };
        debug!(job = %job_id, pgid, "stopping: sending SIGTERM to the process group");
        children::signal_job(marker, Some(pgid), libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + self.grace;
        let status = match tokio::time::timeout_at(deadline, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                warn!(job = %job_id, "still running {:?} after SIGTERM; killing its process group", self.grace);
                kill_group(pgid, libc::SIGKILL);
                return child.wait().await;
            }
        };
        // The leader is gone; give the rest of its group what is left of the
        // grace period to finish cleaning up, as promised. Dead processes
        // not yet reaped (zombies) do not count: they need no time.
        while group_alive(pgid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(GROUP_POLL).await;
        }
        if group_alive(pgid) {
            warn!(job = %job_id, "processes left in the group {:?} after SIGTERM; killing them", self.grace);
        }
        status
    }
}

impl Runner for ProcessRunner {
    fn run(&self, job: LeasedJob, cancel: CancellationToken) -> BoxFuture<'_, RunResult> {
        Box::pin(self.run_job(job, cancel))
    }
}

/// Makes `dir` anew (a leftover from a crashed agent is removed), locks it
/// (see [`lock_dir`]) and writes the job file into it. Returns the lock, to
/// hold until the directory is removed.
async fn prepare_dir(dir: &Path, job_file: &Path, job_json: &str) -> io::Result<std::fs::File> {
    match tokio::fs::remove_dir_all(dir).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    tokio::fs::create_dir_all(dir).await?;
    let lock = lock_dir(dir)?
        .ok_or_else(|| io::Error::other("in use by another process (two agents with one id?)"))?;
    tokio::fs::write(job_file, job_json).await?;
    Ok(lock)
}

/// Takes an exclusive `flock` on the directory `dir` without waiting: `None`
/// when another open file holds it. A run holds its directory's lock until
/// it has removed the directory; the kernel drops the lock when the agent
/// dies, however it dies. So a job directory nobody holds is a stale one.
fn lock_dir(dir: &Path) -> io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    // Opened close-on-exec (as std opens every file): the job's processes
    // never hold it.
    let file = std::fs::File::open(dir)?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(file));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Kills what is left on drop: the job's processes (its group, and those
/// carrying its marker) and the job directory. Disarmed (fields taken) on the
/// normal path, which does both itself.
struct Cleanup {
    pgid: Option<i32>,
    marker: String,
    dir: Option<PathBuf>,
    /// The directory's lock: released (dropped) after the directory is
    /// removed, so no other agent ever takes a live directory for stale.
    lock: Option<std::fs::File>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            children::kill_leftovers(&self.marker, Some(pgid));
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Reads one output pipe to its end: every line goes to the shared tail and
/// to the debug log.
async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: &'static str,
    job_id: String,
    tail: Arc<Mutex<Tail>>,
) {
    let mut buf = vec![0u8; 8192];
    let mut line = Vec::new();
    let emit = |line: &mut Vec<u8>| {
        tail.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        debug!(job = %job_id, stream, "{}", String::from_utf8_lossy(text));
        line.clear();
    };
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&rest[..=pos]);
            emit(&mut line);
            rest = &rest[pos + 1..];
        }
        line.extend_from_slice(rest);
        if line.len() >= LOG_LINE_MAX {
            emit(&mut line);
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
}

/// Maps how the child ended to an outcome.
fn classify(status: ExitStatus, failure_exit_codes: &[i32]) -> RunResult {
    match status.code() {
        Some(0) => RunResult {
            exit_code: Some(0),
            ..RunResult::new(Outcome::Passed)
        },
        Some(code) if failure_exit_codes.contains(&code) => RunResult {
            exit_code: Some(code),
            ..RunResult::new(Outcome::Failed)
        },
        Some(code) => RunResult {
            exit_code: Some(code),
            ..RunResult::error(format!("exit code {code}"))
        },
        None => match status.signal() {
            Some(signal) => RunResult::error(format!("killed by signal {signal}")),
            None => RunResult::error(format!("ended without exit code or signal ({status})")),
        },
    }
}

/// Reads the result file: `Ok(None)` when the child wrote none, `Ok(Some)`
/// with its text when it holds JSON the coordinator can store
/// ([`benchq::report::check_metrics`]), `Err(note)` when it is unusable
/// (the metrics are then dropped, and the note added to the result's error).
async fn read_metrics(path: &Path) -> Result<Option<String>, String> {
    let file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("could not read the result file: {e}")),
    };
    // Never more than one byte past the limit in memory, however big the file.
    let mut bytes = Vec::new();
    let limit = METRICS_MAX as u64 + 1;
    if let Err(e) = file.take(limit).read_to_end(&mut bytes).await {
        return Err(format!("could not read the result file: {e}"));
    }
    if bytes.len() > METRICS_MAX {
        return Err(format!(
            "result file dropped: more than the {METRICS_MAX} bytes allowed"
        ));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| "result file is not valid JSON: not UTF-8".to_string())?;
    let text = text.trim();
    benchq::report::check_metrics(text).map_err(|why| format!("result file {why}: dropped"))?;
    Ok(Some(text.to_string()))
}

/// `id` with every character but ASCII letters, digits, `-` and `_`
/// replaced by `_`.
fn path_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `{UUID}-{attempt}`: what follows `benchq-{agent id}-` in the name of a job
/// directory (job ids are UUIDs, in their hyphenated form).
fn is_job_dir_suffix(rest: &str) -> bool {
    let Some((id, attempt)) = rest.rsplit_once('-') else {
        return false;
    };
    let groups: Vec<&str> = id.split('-').collect();
    !attempt.is_empty()
        && attempt.bytes().all(|b| b.is_ascii_digit())
        && groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An I/O error as people read it: `No such file or directory`, without the
/// `(os error 2)` suffix.
fn io_error_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use benchq::proto::JobSpec;

    use super::*;

    /// A scratch directory per test, removed at the end.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "benchq-agent-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn job() -> LeasedJob {
        LeasedJob {
            id: "job-1".into(),
            spec: JobSpec {
                job_id: "batch-1".into(),
                tenant_id: "acme".into(),
                scenario_id: "scn-7".into(),
                model: "m".into(),
                provider: "p".into(),
                mcp_server: "mcp".into(),
                tool_server: "ts".into(),
                tool_server_version: "1.2".into(),
                skill_file: "skill.md".into(),
                skill_id: "sk".into(),
                skill_version: "3".into(),
                skill_source: "git".into(),
                skill_sha256: "abc".into(),
                namespace_slot: 1,
                parallel: 4,
                max_attempts: 2,
                timeout_seconds: 3600,
            },
            attempt: 2,
            namespace: "bench-w1".into(),
        }
    }

    fn sh(dir: &TestDir, script: &str) -> ProcessRunner {
        ProcessRunner::new("sh", ["-c", script])
            .with_work_dir(&dir.0)
            .with_agent_id("agent-x")
    }

    async fn run(runner: &ProcessRunner, job: LeasedJob) -> RunResult {
        runner.run(job, CancellationToken::new()).await
    }

    /// Alive and not a zombie (killed orphans may wait a while for a reaper).
    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    async fn read_pid(file: &Path) -> i32 {
        for _ in 0..250 {
            if let Ok(text) = std::fs::read_to_string(file)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} never written", file.display());
    }

    /// Waits for `file` to hold a whole line.
    async fn read_line(file: &Path) {
        for _ in 0..250 {
            if std::fs::read_to_string(file).is_ok_and(|s| s.ends_with('\n')) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} never written", file.display());
    }

    async fn gone_within(pid: i32, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        !alive(pid)
    }

    #[tokio::test]
    async fn child_sees_env_and_job_file() {
        let dir = TestDir::new();
        let runner = sh(
            &dir,
            r#"env | grep '^BENCHQ_' | sort
               echo "---"
               cat "$BENCHQ_JOB_FILE"
               echo "---"
               test -e "$BENCHQ_RESULT_FILE" && echo "result file exists"
               echo "dir=$(dirname "$BENCHQ_RESULT_FILE")""#,
        );
        let r = run(&runner, job()).await;
        assert_eq!(r.outcome, Outcome::Passed, "{r:?}");
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.error, "");
        assert_eq!(r.metrics_json, None);
        let parts: Vec<&str> = r.output_tail.split("---\n").collect();
        assert_eq!(parts.len(), 3, "{}", r.output_tail);
        let env: Vec<&str> = parts[0].lines().collect();
        for expected in [
            "BENCHQ_ID=job-1",
            "BENCHQ_JOB_ID=batch-1",
            "BENCHQ_TENANT_ID=acme",
            "BENCHQ_SCENARIO_ID=scn-7",
            "BENCHQ_MODEL=m",
            "BENCHQ_PROVIDER=p",
            "BENCHQ_MCP_SERVER=mcp",
            "BENCHQ_TOOL_SERVER=ts",
            "BENCHQ_TOOL_SERVER_VERSION=1.2",
            "BENCHQ_SKILL_FILE=skill.md",
            "BENCHQ_SKILL_ID=sk",
            "BENCHQ_SKILL_VERSION=3",
            "BENCHQ_SKILL_SOURCE=git",
            "BENCHQ_SKILL_SHA256=abc",
            "BENCHQ_NAMESPACE_SLOT=1",
            "BENCHQ_PARALLEL=4",
            "BENCHQ_MAX_ATTEMPTS=2",
            "BENCHQ_NAMESPACE=bench-w1",
            "BENCHQ_ATTEMPT=2",
            "BENCHQ_AGENT_ID=agent-x",
        ] {
            assert!(env.contains(&expected), "{expected} missing from {env:?}");
        }
        let job_dir = dir.path("benchq-agent-x-job-1-2");
        let job_file = format!("BENCHQ_JOB_FILE={}", job_dir.join("job.json").display());
        let result_file = format!(
            "BENCHQ_RESULT_FILE={}",
            job_dir.join("result.json").display()
        );
        assert!(env.contains(&job_file.as_str()), "{env:?}");
        assert!(env.contains(&result_file.as_str()), "{env:?}");

        let json: serde_json::Value = serde_json::from_str(parts[1]).unwrap();
        assert_eq!(json["id"], "job-1");
        assert_eq!(json["job_id"], "batch-1");
        assert_eq!(json["scenario_id"], "scn-7");
        assert_eq!(json["skill_sha256"], "abc");
        assert_eq!(json["namespace_slot"], 1);
        assert_eq!(json["parallel"], 4);
        assert_eq!(json["namespace"], "bench-w1");
        assert_eq!(json["attempt"], 2);

        assert!(!parts[2].contains("result file exists"));
        assert!(parts[2].contains(&format!("dir={}", job_dir.display())));
        assert!(!job_dir.exists(), "the job directory is removed afterwards");
    }

    #[tokio::test]
    async fn no_namespace_is_an_empty_variable() {
        let dir = TestDir::new();
        let runner = sh(&dir, r#"echo "[${BENCHQ_NAMESPACE-unset}]""#);
        let job = LeasedJob {
            namespace: String::new(),
            ..job()
        };
        let r = run(&runner, job).await;
        assert_eq!(r.output_tail, "[]\n");
    }

    #[tokio::test]
    async fn result_file_becomes_metrics() {
        let dir = TestDir::new();
        let runner = sh(
            &dir,
            r#"printf '{"score": 0.5}\n' > "$BENCHQ_RESULT_FILE"; exit 1"#,
        );
        let r = run(&runner, job()).await;
        assert_eq!(r.outcome, Outcome::Failed);
        assert_eq!(r.metrics_json.as_deref(), Some(r#"{"score": 0.5}"#));
        assert_eq!(r.error, "");
        assert!(!dir.path("benchq-agent-x-job-1-2").exists());
    }

    #[tokio::test]
    async fn invalid_result_json_is_a_note_not_a_failure() {
        let dir = TestDir::new();
        let runner = sh(&dir, r#"echo '{"score": ' > "$BENCHQ_RESULT_FILE""#);
        let r = run(&runner, job()).await;
        assert_eq!(r.outcome, Outcome::Passed);
        assert_eq!(r.metrics_json, None);
        assert!(
            r.error.contains("result file is not valid JSON"),
            "{}",
            r.error
        );

        let runner = sh(&dir, r#"echo 'not json' > "$BENCHQ_RESULT_FILE"; exit 3"#);
        let r = run(&runner, job()).await;
        assert_eq!(r.outcome, Outcome::Error);
        assert!(
            r.error
                .starts_with("exit code 3; result file is not valid JSON"),
            "{}",
            r.error
        );
    }

    #[tokio::test]
    async fn exit_codes_map_to_outcomes() {
        let dir = TestDir::new();
        let r = run(&sh(&dir, "exit 0"), job()).await;
        assert_eq!(
            (r.outcome, r.exit_code, r.error.as_str()),
            (Outcome::Passed, Some(0), "")
        );
        let r = run(&sh(&dir, "exit 1"), job()).await;
        assert_eq!(
            (r.outcome, r.exit_code, r.error.as_str()),
            (Outcome::Failed, Some(1), "")
        );
        let r = run(&sh(&dir, "exit 3"), job()).await;
        assert_eq!(
            (r.outcome, r.exit_code, r.error.as_str()),
            (Outcome::Error, Some(3), "exit code 3")
        );
        assert!(r.duration > Duration::ZERO);
    }

    #[tokio::test]
    async fn custom_failure_exit_codes() {
        let dir = TestDir::new();
        let runner = |script| sh(&dir, script).with_failure_exit_codes([2, 3]);
        assert_eq!(run(&runner("exit 3"), job()).await.outcome, Outcome::Failed);
        assert_eq!(run(&runner("exit 2"), job()).await.outcome, Outcome::Failed);
        let r = run(&runner("exit 1"), job()).await;
        assert_eq!(
            (r.outcome, r.error.as_str()),
            (Outcome::Error, "exit code 1")
        );
        assert_eq!(run(&runner("exit 0"), job()).await.outcome, Outcome::Passed);
    }

    #[tokio::test]
    async fn death_by_signal_is_an_error() {
        let dir = TestDir::new();
        let r = run(&sh(&dir, "echo before; kill -9 $$"), job()).await;
        assert_eq!(r.outcome, Outcome::Error);
        assert_eq!(r.exit_code, None);
        assert_eq!(r.error, "killed by signal 9");
        assert_eq!(r.output_tail, "before\n");
    }

    #[tokio::test]
    async fn program_not_found_is_an_error() {
        let dir = TestDir::new();
        let runner = ProcessRunner::new("/nonexistent/benchq-scenario", Vec::<String>::new())
            .with_work_dir(&dir.0);
        let r = run(&runner, job()).await;
        assert_eq!(r.outcome, Outcome::Error);
        assert_eq!(r.exit_code, None);
        assert_eq!(
            r.error,
            "failed to start /nonexistent/benchq-scenario: No such file or directory"
        );
        assert!(!dir.path("benchq-agent-x-job-1-2").exists());
    }

    #[tokio::test]
    async fn output_tail_keeps_the_last_64_kib_of_both_streams() {
        let dir = TestDir::new();
        // 200 KB on stdout in long lines, then a last word on stderr.
        let runner = sh(
            &dir,
            r#"echo FIRST
               i=0
               while [ $i -lt 100 ]; do
                 head -c 2000 /dev/zero | tr '\0' 'a'; echo
                 i=$((i+1))
               done
               echo "THE END" >&2"#,
        );
        let r = run(&runner, job()).await;
        assert_eq!(r.outcome, Outcome::Passed);
        assert!(r.output_tail.len() <= crate::OUTPUT_TAIL_MAX);
        assert!(r.output_tail.len() > crate::OUTPUT_TAIL_MAX - 10);
        assert!(
            r.output_tail.ends_with("a\nTHE END\n"),
            "{:?}",
            &r.output_tail[r.output_tail.len() - 40..]
        );
        assert!(!r.output_tail.contains("FIRST"));
    }

    /// The script ignores SIGTERM, and so does its grandchild; both must be
    /// gone soon after the grace period.
    #[tokio::test]
    async fn cancel_kills_a_group_that_ignores_sigterm() {
        let dir = TestDir::new();
        let pid_file = dir.path("grandchild.pid");
        let script = format!(
            r#"trap '' TERM
               sh -c 'sleep 30' &
               echo $! > {}
               while :; do sleep 0.05; done"#,
            pid_file.display()
        );
        let grace = Duration::from_millis(500);
        let runner = sh(&dir, &script).with_grace(grace);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { runner.run(job(), cancel).await }
        });
        let grandchild = read_pid(&pid_file).await;
        assert!(alive(grandchild));
        let cancelled_at = Instant::now();
        cancel.cancel();
        let r = tokio::time::timeout(grace + Duration::from_secs(1), task)
            .await
            .expect("run ends within grace + 1 s")
            .unwrap();
        assert!(
            cancelled_at.elapsed() >= grace,
            "SIGKILL came before the grace period ran out"
        );
        assert_eq!(r.outcome, Outcome::Error);
        assert_eq!(r.error, "killed by signal 9");
        assert!(!r.finished_on_its_own, "stopped, not finished");
        assert!(
            gone_within(grandchild, Duration::from_millis(200)).await,
            "grandchild {grandchild} survived"
        );
    }

    /// The script dies on SIGTERM at once, but leaves a grandchild that
    /// ignores it: the group still gets its grace period, then SIGKILL.
    #[tokio::test]
    async fn cancel_kills_grandchildren_the_child_left_behind() {
        let dir = TestDir::new();
        let pid_file = dir.path("grandchild.pid");
        let script = format!(
            r#"sh -c 'trap "" TERM; sleep 30' &
               echo $! > {}
               wait"#,
            pid_file.display()
        );
        let grace = Duration::from_millis(300);
        let runner = sh(&dir, &script).with_grace(grace);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { runner.run(job(), cancel).await }
        });
        let grandchild = read_pid(&pid_file).await;
        cancel.cancel();
        let r = tokio::time::timeout(grace + Duration::from_secs(1), task)
            .await
            .expect("run ends within grace + 1 s")
            .unwrap();
        assert_eq!(r.outcome, Outcome::Error);
        assert_eq!(r.error, "killed by signal 15");
        assert!(!r.finished_on_its_own);
        assert!(
            gone_within(grandchild, Duration::from_millis(200)).await,
            "grandchild {grandchild} survived"
        );
    }

    #[tokio::test]
    async fn a_normal_exit_kills_leftover_grandchildren() {
        let dir = TestDir::new();
        let pid_file = dir.path("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; exit 0", pid_file.display());
        let started = Instant::now();
        let r = run(&sh(&dir, &script), job()).await;
        assert_eq!(r.outcome, Outcome::Passed);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited for the grandchild's output"
        );
        let grandchild = read_pid(&pid_file).await;
        assert!(
            gone_within(grandchild, Duration::from_millis(500)).await,
            "grandchild {grandchild} survived"
        );
    }

    #[tokio::test]
    async fn dropping_the_run_kills_the_group() {
        let dir = TestDir::new();
        let pid_file = dir.path("grandchild.pid");
        let script = format!(
            r#"trap '' TERM
               sleep 30 &
               echo $! > {}
               wait"#,
            pid_file.display()
        );
        let runner = sh(&dir, &script);
        let task = tokio::spawn(async move { runner.run(job(), CancellationToken::new()).await });
        let grandchild = read_pid(&pid_file).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(
            gone_within(grandchild, Duration::from_secs(1)).await,
            "grandchild {grandchild} survived"
        );
        assert!(!dir.path("benchq-agent-x-job-1-2").exists());
    }

    /// A child that ends on its own says so, even with exit codes that a
    /// stopped child could also produce.
    #[tokio::test]
    async fn a_child_that_exits_by_itself_finished_on_its_own() {
        let dir = TestDir::new();
        for script in ["exit 0", "exit 1", "exit 3", "kill -TERM $$"] {
            let r = run(&sh(&dir, script), job()).await;
            assert!(r.finished_on_its_own, "{script}: {r:?}");
        }
    }

    /// A child that handles SIGTERM by exiting 0 was still stopped: its exit
    /// code is kept, and `finished_on_its_own` tells the agent not to take
    /// it for a pass.
    #[tokio::test]
    async fn a_stopped_child_that_exits_zero_was_stopped() {
        let dir = TestDir::new();
        let ready = dir.path("ready");
        let script = format!(
            "trap 'exit 0' TERM; echo > {}; while :; do sleep 0.05; done",
            ready.display()
        );
        let runner = sh(&dir, &script);
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { runner.run(job(), cancel).await }
        });
        read_line(&ready).await;
        cancel.cancel();
        let r = task.await.unwrap();
        assert_eq!((r.outcome, r.exit_code), (Outcome::Passed, Some(0)));
        assert!(!r.finished_on_its_own);
    }

    /// Every process of the job dies at once on SIGTERM: the run ends right
    /// away, not after the (long) grace period.
    #[tokio::test]
    async fn a_group_that_dies_on_sigterm_is_not_waited_for() {
        let dir = TestDir::new();
        let pid_file = dir.path("grandchild.pid");
        let script = format!(
            "sleep 1000 & sleep 1000 & echo $! > {}; wait",
            pid_file.display()
        );
        let runner = sh(&dir, &script).with_grace(Duration::from_secs(10));
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { runner.run(job(), cancel).await }
        });
        let grandchild = read_pid(&pid_file).await;
        let cancelled_at = Instant::now();
        cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .expect("stopped long before the grace period ends")
            .unwrap();
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(1),
            "took {:?}",
            cancelled_at.elapsed()
        );
        assert_eq!(r.error, "killed by signal 15");
        assert!(!alive(grandchild));
    }

    #[test]
    fn job_dir_names_stay_inside_work_dir() {
        let runner = ProcessRunner::new("x", Vec::<String>::new()).with_work_dir("/w");
        let job = LeasedJob {
            id: "../../etc".into(),
            attempt: 1,
            ..Default::default()
        };
        assert_eq!(runner.job_dir(&job), PathBuf::from("/w/benchq-______etc-1"));
        let runner = runner.with_agent_id("host/1");
        assert_eq!(
            runner.job_dir(&job),
            PathBuf::from("/w/benchq-host_1-______etc-1")
        );
    }

    /// Metrics that are JSON but that PostgreSQL cannot store are dropped
    /// with a note, as unparsable ones are; the outcome stands.
    #[tokio::test]
    async fn metrics_the_coordinator_cannot_store_are_dropped_with_a_note() {
        let dir = TestDir::new();
        let nested = "[".repeat(200);
        for (json, why) in [
            (r#"{"x":"\u0000"}"#, "contains a NUL character"),
            (r#"{"x":1e400}"#, "is not valid JSON"),
            (r#"{"x":"\ud800"}"#, "is not valid JSON"),
            (nested.as_str(), "is not valid JSON"),
        ] {
            let script = format!("printf '%s' '{json}' > \"$BENCHQ_RESULT_FILE\"; exit 1");
            let r = run(&sh(&dir, &script), job()).await;
            assert_eq!(
                (r.outcome, r.exit_code),
                (Outcome::Failed, Some(1)),
                "{json}"
            );
            assert_eq!(r.metrics_json, None, "{json}");
            assert!(
                r.error.starts_with(&format!("result file {why}"))
                    && r.error.ends_with(": dropped"),
                "{json}: {}",
                r.error
            );
        }
        // Escaped backslash then "u0000": a plain string, kept.
        let script = r#"printf '%s' '{"x":"\\u0000"}' > "$BENCHQ_RESULT_FILE""#;
        let r = run(&sh(&dir, script), job()).await;
        assert_eq!(r.metrics_json.as_deref(), Some(r#"{"x":"\\u0000"}"#));
        assert_eq!(r.error, "");
    }

    #[tokio::test]
    async fn a_result_file_over_the_limit_is_dropped_unread() {
        let dir = TestDir::new();
        let script = format!(
            r#"printf '"' > "$BENCHQ_RESULT_FILE"
               head -c {} /dev/zero | tr '\0' 'm' >> "$BENCHQ_RESULT_FILE"
               printf '"' >> "$BENCHQ_RESULT_FILE""#,
            METRICS_MAX
        );
        let r = run(&sh(&dir, &script), job()).await;
        assert_eq!(r.outcome, Outcome::Passed);
        assert_eq!(r.metrics_json, None);
        assert_eq!(
            r.error,
            format!("result file dropped: more than the {METRICS_MAX} bytes allowed")
        );
    }

    /// A process that leaves the job's group (`setsid`) and its output pipes
    /// is still killed when the job ends: on its own, stopped, or dropped.
    #[tokio::test]
    async fn a_daemon_that_left_the_group_dies_with_the_job() {
        let dir = TestDir::new();
        let pid_file = dir.path("daemon.pid");
        let daemon = format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 301' </dev/null >/dev/null 2>&1 &",
            pid_file.display()
        );

        // Ends on its own.
        let script = format!(
            "{daemon} while [ ! -s {} ]; do sleep 0.01; done",
            pid_file.display()
        );
        let started = Instant::now();
        let r = run(&sh(&dir, &script), job()).await;
        assert_eq!(r.outcome, Outcome::Passed, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited for the daemon"
        );
        let pid = read_pid(&pid_file).await;
        assert!(
            gone_within(pid, Duration::from_secs(1)).await,
            "daemon {pid} survived"
        );

        // Stopped.
        std::fs::remove_file(&pid_file).unwrap();
        let runner = sh(&dir, &format!("{daemon} sleep 60")).with_grace(Duration::from_secs(5));
        let cancel = CancellationToken::new();
        let task = tokio::spawn({
            let cancel = cancel.clone();
            async move { runner.run(job(), cancel).await }
        });
        let pid = read_pid(&pid_file).await;
        assert!(alive(pid));
        cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .expect("stopped well within the grace period")
            .unwrap();
        assert!(!r.finished_on_its_own);
        assert!(
            gone_within(pid, Duration::from_secs(1)).await,
            "daemon {pid} survived"
        );

        // Dropped.
        std::fs::remove_file(&pid_file).unwrap();
        let runner = sh(&dir, &format!("{daemon} sleep 60"));
        let task = tokio::spawn(async move { runner.run(job(), CancellationToken::new()).await });
        let pid = read_pid(&pid_file).await;
        task.abort();
        let _ = task.await;
        assert!(
            gone_within(pid, Duration::from_secs(1)).await,
            "daemon {pid} survived"
        );
    }

    /// Every run has a marker of its own, which the guard is not given.
    #[tokio::test]
    async fn each_run_is_marked_afresh() {
        let dir = TestDir::new();
        let script = r#"echo "$BENCHQ_JOB_RUN""#;
        let a = run(&sh(&dir, script), job()).await.output_tail;
        let b = run(&sh(&dir, script), job()).await.output_tail;
        assert_eq!(a.trim().len(), 32, "{a:?}");
        assert!(a.trim().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn stale_job_dirs_of_this_agent_only_are_removed() {
        let dir = TestDir::new();
        let uuid = "0b7e7c1e-5f1a-4c4e-9d59-2f0a8f6c1a11";
        let ours = [
            format!("benchq-host-{uuid}-1"),
            format!("benchq-host-{uuid}-12"),
        ];
        let others = [
            format!("benchq-host-1-{uuid}-1"), // agent "host-1"
            format!("benchq-hostx-{uuid}-1"),
            format!("benchq-host-{uuid}-"),
            format!("benchq-host-{uuid}"),
            "benchq-host-not-a-uuid-1".to_string(),
            format!("benchq-{uuid}-1"), // no agent id
        ];
        for name in ours.iter().chain(&others) {
            std::fs::create_dir_all(dir.path(name).join("sub")).unwrap();
        }
        // A file with a matching name is not a job directory.
        std::fs::write(dir.path(&format!("benchq-host-{uuid}-3")), "x").unwrap();
        // A directory a live run holds is not stale.
        let live = dir.path(&format!("benchq-host-{uuid}-4"));
        std::fs::create_dir_all(&live).unwrap();
        let held = lock_dir(&live).unwrap().expect("unlocked");
        let runner = ProcessRunner::new("x", Vec::<String>::new())
            .with_work_dir(&dir.0)
            .with_agent_id("host");
        assert_eq!(runner.remove_stale_job_dirs().unwrap(), 2);
        for name in &ours {
            assert!(!dir.path(name).exists(), "{name} left");
        }
        for name in &others {
            assert!(dir.path(name).exists(), "{name} removed");
        }
        assert!(dir.path(&format!("benchq-host-{uuid}-3")).exists());
        assert!(live.exists(), "a directory in use was removed");
        assert!(lock_dir(&live).unwrap().is_none(), "the lock is exclusive");
        drop(held);
        assert_eq!(runner.remove_stale_job_dirs().unwrap(), 1);
        assert!(!live.exists());
        // Nothing to tell ours from others' without an id; no work dir is no error.
        let anonymous = ProcessRunner::new("x", Vec::<String>::new()).with_work_dir(&dir.0);
        assert_eq!(anonymous.remove_stale_job_dirs().unwrap(), 0);
        let missing = ProcessRunner::new("x", Vec::<String>::new())
            .with_work_dir(dir.path("missing"))
            .with_agent_id("host");
        assert_eq!(missing.remove_stale_job_dirs().unwrap(), 0);
    }
}
