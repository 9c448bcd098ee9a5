//! `benchq-agent`: serves namespace slots for a benchq coordinator, running
//! each leased job as `PROGRAM ARGS…` (see `ProcessRunner` for the contract
//! with the program).
//!
//! Stopping it: the first SIGTERM or Ctrl-C drains (no new jobs; running
//! jobs finish and are reported; exit 0). The second, or `--drain-timeout`
//! passing, interrupts: running jobs are stopped (SIGTERM, `--grace`, SIGKILL)
//! and reported INTERRUPTED, then the agent exits 0. A third exits at once.
//!
//! A coordinator that refuses the agent's credential (no token, a revoked
//! one, one without the agent role) makes it drain and exit 1.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use benchq_agent::{
    Agent, AgentConfig, ProcessRunner, Shutdown, become_subreaper, default_agent_id, parse_duration,
};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// Leases benchmark jobs from a benchq coordinator for the namespace slots
/// given, and runs each as PROGRAM ARGS with the job in BENCHQ_* variables.
#[derive(Debug, Parser)]
#[command(name = "benchq-agent", version)]
struct Cli {
    /// The coordinator's URL (http://host:port or host:port).
    #[arg(long, env = "BENCHQ_COORDINATOR", value_name = "URL")]
    coordinator: String,

    #[command(flatten)]
    connection: benchq::client::ConnectArgs,

    /// A namespace slot this agent serves, one job at a time; repeat for more.
    #[arg(long = "slot", value_name = "N", required = true,
          value_parser = clap::value_parser!(i32).range(0..))]
    slots: Vec<i32>,

    /// Who this agent is in job records [default: HOSTNAME-PID].
    #[arg(long, value_name = "ID")]
    agent_id: Option<String>,

    /// Only run this tenant's jobs.
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,

    /// An exit code meaning "the scenario failed" (FAILED, not retried) rather
    /// than an infrastructure error (ERROR, retried); repeat for more.
    #[arg(long = "failure-exit-code", value_name = "CODE", default_values_t = [1])]
    failure_exit_codes: Vec<i32>,

    /// How long one lease request waits for a job (500ms, 30s, 2m, 1h or seconds).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    lease_wait: Duration,

    /// How long a stopped job (cancelled, timed out, interrupted) gets
    /// between SIGTERM and SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    grace: Duration,

    /// After the first SIGTERM, how long running jobs may take to finish
    /// before they are interrupted (as by a second SIGTERM) [default: no limit].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    drain_timeout: Option<Duration>,

    /// Where per-job directories (job.json, result.json) are made [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,

    /// The program run for each job, and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    command: Vec<OsString>,
}

/// Time allowed on top of the grace period and the interrupt report time for
/// an interrupted agent to stop before it exits regardless: pipes to drain,
/// a heartbeat to finish, SIGKILLed processes to die.
const STOP_SLACK: Duration = Duration::from_secs(5);

/// How long exiting waits for blocking work (a DNS lookup of a coordinator
/// that is gone can take tens of seconds) before leaving it behind.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(cli));
    // Not `drop(runtime)`, which waits for every blocking task to end.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    code
}

async fn serve(cli: Cli) -> ExitCode {
    // First: an orphan of a job must find us its parent from the start.
    if let Err(e) = become_subreaper() {
        warn!("cannot become a child subreaper ({e}): processes orphaned inside jobs go to init");
    }
    let agent_id = cli.agent_id.unwrap_or_else(default_agent_id);
    let (program, args) = cli
        .command
        .split_first()
        .expect("clap requires at least the program");
    let mut runner = ProcessRunner::new(program.clone(), args.iter().cloned())
        .with_agent_id(agent_id.clone())
        .with_failure_exit_codes(cli.failure_exit_codes)
        .with_grace(cli.grace);
    if let Some(dir) = cli.work_dir {
        runner = runner.with_work_dir(dir);
    }
    // Directories of jobs a killed predecessor (same agent id) left behind.
    match runner.remove_stale_job_dirs() {
        Ok(0) => {}
        Ok(n) => info!("removed {n} job directories left behind by a previous run of this agent"),
        Err(e) => warn!("cannot look for stale job directories: {e}"),
    }
    let mut config = AgentConfig::new(cli.coordinator, agent_id, cli.slots);
    config.tenant_id = cli.tenant.unwrap_or_default();
    config.connection = cli.connection;
    config.lease_wait = cli.lease_wait;
    config.drain_timeout = cli.drain_timeout;
    let stop_limit = cli.grace + config.interrupt_report_timeout + STOP_SLACK;
    let agent = match Agent::new(config, Arc::new(runner)) {
        Ok(agent) => agent,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };

    let shutdown = Shutdown::new();
    let exit_now = CancellationToken::new();
    watch_signals(shutdown.clone(), exit_now.clone());
    // Stopping a job is bounded (grace, then SIGKILL) and so is reporting it
    // once interrupted; this is the net under both.
    let overdue = async {
        shutdown.interrupted().await;
        tokio::time::sleep(stop_limit).await;
    };
    // Returning early drops every worker: the runners' guards kill the jobs'
    // process groups on the way out.
    tokio::select! {
        served = agent.try_run(shutdown.clone()) => match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("exiting with code 1: {e}");
                ExitCode::FAILURE
            }
        },
        _ = exit_now.cancelled() => {
            warn!("third signal: exiting now; running jobs are killed and not reported");
            ExitCode::from(130)
        }
        _ = overdue => {
            error!("still not stopped {stop_limit:?} after the interrupt; exiting: running jobs are killed and not reported");
            ExitCode::FAILURE
        }
    }
}

/// The first SIGTERM or Ctrl-C drains; the next one interrupts (unless the
/// drain timeout already did); the one after exits at once.
///
/// The handlers are installed before this returns, i.e. before any work
/// starts: a signal arriving before them would kill the agent outright. They
/// stay installed for the life of the process: once tokio handles a signal,
/// a dropped listener would make the process ignore it.
fn watch_signals(shutdown: Shutdown, exit_now: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            error!("cannot listen for SIGTERM and SIGINT: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let got = tokio::select! {
                got = term.recv() => got,
                got = int.recv() => got,
            };
            if got.is_none() {
                return;
            }
            if !shutdown.is_draining() {
                info!(
                    "shutting down: no new jobs; waiting for running jobs to finish and be reported (signal again to interrupt them)"
                );
                shutdown.drain();
            } else if !shutdown.is_interrupted() {
                info!(
                    "interrupting: stopping running jobs and reporting them INTERRUPTED (signal again to exit at once)"
                );
                shutdown.interrupt();
            } else {
                exit_now.cancel();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_and_defaults() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "benchq-agent",
            "--coordinator",
            "http://c:50051",
            "--slot",
            "0",
            "--slot",
            "2",
            "--",
            "./run.sh",
            "--flag",
            "x",
        ])
        .unwrap();
        assert_eq!(cli.coordinator, "http://c:50051");
        assert_eq!(cli.slots, vec![0, 2]);
        assert_eq!(cli.failure_exit_codes, vec![1]);
        assert_eq!(cli.lease_wait, Duration::from_secs(30));
        assert_eq!(cli.grace, Duration::from_secs(10));
        assert_eq!(cli.drain_timeout, None);
        assert_eq!(cli.agent_id, None);
        assert_eq!(cli.tenant, None);
        assert_eq!(cli.work_dir, None);
        assert_eq!(cli.command, ["./run.sh", "--flag", "x"].map(OsString::from));

        let cli = Cli::try_parse_from([
            "benchq-agent",
            "--coordinator=c:1",
            "--slot=1",
            "--agent-id=a1",
            "--tenant=acme",
            "--failure-exit-code=2",
            "--failure-exit-code=3",
            "--lease-wait=500ms",
            "--grace=1m",
            "--drain-timeout=5m",
            "--work-dir=/var/benchq",
            "--",
            "prog",
        ])
        .unwrap();
        assert_eq!(cli.failure_exit_codes, vec![2, 3]);
        assert_eq!(cli.lease_wait, Duration::from_millis(500));
        assert_eq!(cli.grace, Duration::from_secs(60));
        assert_eq!(cli.drain_timeout, Some(Duration::from_secs(300)));
        assert_eq!(cli.agent_id.as_deref(), Some("a1"));
        assert_eq!(cli.tenant.as_deref(), Some("acme"));
        assert_eq!(cli.work_dir, Some(PathBuf::from("/var/benchq")));
    }
}
