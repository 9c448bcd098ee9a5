//! The benchq agent: leases jobs from a coordinator for the namespace slots it
//! owns, runs each scenario, and reports how it went.
//!
//! The pieces, each in its own module:
//! - [`Agent`] / [`AgentConfig`]: the loop that leases, heartbeats and reports,
//!   one worker per slot; it stops jobs on cancel requests, timeouts, a lost
//!   lease and lost contact with the coordinator (so that a job never runs
//!   twice at once), and stops altogether ([`Agent::try_run`]) when the
//!   coordinator refuses its credential.
//! - [`Shutdown`]: drain (running jobs finish) or interrupt (running jobs are
//!   stopped and go back to the queue).
//! - [`Runner`]: what runs a job. [`ProcessRunner`] runs a child process per
//!   job; [`runner_fn`] turns a closure into an in-process runner.
//! - [`LeasedJob`]: the job a runner is handed; [`RunResult`]: what it returns.
//! - [`become_subreaper`]: adopt and reap the orphans of jobs' processes.
//! - [`parse_duration`]: `500ms` / `30s` / `2m` / `1h` for the command line.
//!
//! The binary `benchq-agent` wires these together from its flags.

mod agent;
mod backoff;
mod children;

mod job;
mod process;
mod runner;
mod shutdown;
mod stop;
mod tail;

pub use agent::{Agent, AgentConfig, AgentError, default_agent_id};
pub use benchq::duration::parse as parse_duration;
pub use children::become_subreaper;
pub use job::LeasedJob;
pub use process::{METRICS_MAX, ProcessRunner};
pub use runner::{BoxFuture, FnRunner, RunResult, Runner, runner_fn};
pub use shutdown::Shutdown;
pub use tail::{OUTPUT_TAIL_MAX, Tail, truncate_front};
