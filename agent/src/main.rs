//! `benchq-agent`: serves namespace slots for a benchq coordinator, running
//! each leased job as `PROGRAM ARGS…` (see `ProcessRunner` for the contract
//! with the program).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use benchq_agent::{Agent, AgentConfig, ProcessRunner, default_agent_id, parse_duration};
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

    /// How long a cancelled job gets between SIGTERM and SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    grace: Duration,

    /// Where per-job directories (job.json, result.json) are made [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,

    /// The program run for each job, and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    command: Vec<OsString>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

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
    let mut config = AgentConfig::new(cli.coordinator, agent_id, cli.slots);
    config.tenant_id = cli.tenant.unwrap_or_default();
    config.lease_wait = cli.lease_wait;
    let agent = match Agent::new(config, Arc::new(runner)) {
        Ok(agent) => agent,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };

    let shutdown = CancellationToken::new();
    let forced = CancellationToken::new();
    watch_signals(shutdown.clone(), forced.clone());
    tokio::select! {
        _ = agent.run(shutdown) => ExitCode::SUCCESS,
        _ = forced.cancelled() => {
            // Returning drops every worker: the runners' guards kill the jobs'
            // process groups on the way out.
            warn!("second signal: abandoning running jobs");
            ExitCode::from(130)
        }
    }
}

/// The first SIGTERM or Ctrl-C drains (no new leases, running jobs finish and
/// are reported); a second one abandons the running jobs.
///
/// The handlers are installed before this returns, i.e. before any work
/// starts: a signal arriving before them would kill the agent outright.
fn watch_signals(shutdown: CancellationToken, forced: CancellationToken) {
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
        let mut signals = 0;
        loop {
            let got = tokio::select! {
                got = term.recv() => got,
                got = int.recv() => got,
            };
            if got.is_none() {
                return;
            }
            signals += 1;
            if signals == 1 {
                info!(
                    "shutting down: no new jobs; waiting for running jobs to finish and be reported (signal again to abandon them)"
                );
                shutdown.cancel();
            } else {
                forced.cancel();
                return;
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
            "--work-dir=/var/benchq",
            "--",
            "prog",
        ])
        .unwrap();
        assert_eq!(cli.failure_exit_codes, vec![2, 3]);
        assert_eq!(cli.lease_wait, Duration::from_millis(500));
        assert_eq!(cli.grace, Duration::from_secs(60));
        assert_eq!(cli.agent_id.as_deref(), Some("a1"));
        assert_eq!(cli.tenant.as_deref(), Some("acme"));
        assert_eq!(cli.work_dir, Some(PathBuf::from("/var/benchq")));
    }
}
