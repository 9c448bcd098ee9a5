//! `benchq`: the operator's command line for a benchq coordinator.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use benchq::client::{self, source_chain};
use benchq::proto::{self, JobState, Outcome};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// Enqueue bench batches on a benchq coordinator and follow their results.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The coordinator's URL (http://host:port; host:port also works).
    #[arg(
        long,
        env = "BENCHQ_COORDINATOR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    coordinator: String,

    #[command(flatten)]
    connect: client::ConnectArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enqueue a batch: one job per scenario, spread round-robin over `--parallel`
    /// namespace slots. Prints the batch id.
    Enqueue(Box<EnqueueArgs>),
    /// Show a batch: counts by state and a table of its jobs.
    Status {
        /// The batch id printed by `enqueue`.
        batch_id: String,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Also show the tail of each unsuccessful attempt's output (in JSON:
        /// of every attempt).
        #[arg(long)]
        with_output: bool,
    },
    /// Cancel a batch or a single job: queued jobs are cancelled at once,
    /// running ones are stopped by their agents and end `cancelled`.
    Cancel {
        /// A batch id, or the id of one job.
        id: String,
    },
    /// Wait until no job of a batch is queued or running, then show it like `status`.
    Wait {
        /// The batch id printed by `enqueue`.
        batch_id: String,
        /// Give up after this long (e.g. 30s, 10m, 2h).
        #[arg(long, default_value = "24h", value_parser = benchq::duration::parse)]
        timeout: Duration,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Args, Debug)]
struct EnqueueArgs {
    /// A scenario to run (repeat for more). Jobs keep the order given.
    #[arg(long = "scenario", required_unless_present = "scenarios_file")]
    scenarios: Vec<String>,
    /// A file with one scenario id per line (`-` for stdin); blank lines and
    /// lines starting with `#` are skipped.
    #[arg(long)]
    scenarios_file: Option<PathBuf>,
    /// Namespace slots to spread the batch over; 1 means no namespace isolation.
    #[arg(long, default_value_t = 1)]
    parallel: i32,
    /// The batch id to use (a UUID); generated when absent.
    #[arg(long)]
    job_id: Option<String>,
    /// The tenant (team) the batch belongs to; with a token, the token's tenant.
    #[arg(long, env = "BENCHQ_TENANT", default_value = "")]
    tenant: String,
    /// The model the agent under test runs on.
    #[arg(long)]
    model: String,
    /// The model's provider.
    #[arg(long)]
    provider: String,
    /// The MCP server the agent under test uses.
    #[arg(long, default_value = "")]
    mcp_server: String,
    /// The tool server the agent under test uses…
    #[arg(long, default_value = "")]
    tool_server: String,
    /// …and its version.
    #[arg(long, default_value = "")]
    tool_server_version: String,
    /// The skill file given to the agent under test (a label passed to the
    /// runner; benchq does not read it).
    #[arg(long, default_value = "")]
    skill_file: String,
    /// The skill's id, version, source and SHA-256 (passed to the runner).
    #[arg(long, default_value = "")]
    skill_id: String,
    #[arg(long, default_value = "")]
    skill_version: String,
    #[arg(long, default_value = "")]
    skill_source: String,
    #[arg(long, default_value = "")]
    skill_sha256: String,
    /// Attempts per job before an infra error is final [default: 2].
    #[arg(long)]
    max_attempts: Option<i32>,
    /// How long one attempt may run before it is stopped and retried as an
    /// infra error (e.g. 90s, 45m, 2h; default 1h).
    #[arg(long, value_parser = benchq::duration::parse)]
    timeout: Option<Duration>,
}

type CliResult<T> = Result<T, String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("benchq: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> CliResult<ExitCode> {
    let url = cli.coordinator.clone();
    match cli.command {
        Command::Enqueue(args) => {
            let request = enqueue_request(*args)?;
            let mut c = connect(&cli.connect, &url).await?;
            let reply = c
                .enqueue_batch(request)
                .await
                .map_err(|s| describe(&url, &s))?
                .into_inner();
            println!("{}", reply.job_id);
        }
        Command::Status {
            batch_id,
            output,
            with_output,
        } => {
            let mut c = connect(&cli.connect, &url).await?;
            let batch = get_batch(&url, &mut c, &batch_id, with_output).await?;
            show(&batch, output)?;
        }
        Command::Cancel { id } => {
            let mut c = connect(&cli.connect, &url).await?;
            // One id space for the operator: a batch id, else a job id.
            let reply = match c
                .cancel_batch(proto::CancelBatchRequest { job_id: id.clone() })
                .await
            {
                Err(s) if s.code() == tonic::Code::NotFound => c
                    .cancel_job(proto::CancelJobRequest { id: id.clone() })
                    .await
                    .map_err(|s| match s.code() {
                        tonic::Code::NotFound => format!("not found: no batch or job {id}"),
                        _ => describe(&url, &s),
                    })?,
                other => other.map_err(|s| describe(&url, &s).replace("job_id:", "id:"))?,
            }
            .into_inner();
            println!(
                "cancelled {} queued, stopping {} running, {} already finished",
                reply.cancelled, reply.stopping, reply.finished
            );
        }
        Command::Wait {
            batch_id,
            timeout,
            output,
        } => {
            let mut c = connect(&cli.connect, &url).await?;
            let deadline = tokio::time::Instant::now() + timeout;
            // Poll the counts alone; fetch the whole batch once, at the end.
            loop {
                let counts = batch_counts(&url, &mut c, &batch_id).await?;
                let done = counts.queued == 0 && counts.running == 0;
                if done || tokio::time::Instant::now() >= deadline {
                    show(&get_batch(&url, &mut c, &batch_id, false).await?, output)?;
                    if done {
                        break;
                    }
                    return Err(format!(
                        "batch {batch_id} still has {} queued and {} running jobs after {timeout:?}",
                        counts.queued, counts.running
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reaches the coordinator at `url`, or says in one line why not.
async fn connect(args: &client::ConnectArgs, url: &str) -> CliResult<client::Client> {
    client::connect(args.options(url))
        .await
        .map_err(|e| e.to_string())
}

fn enqueue_request(a: EnqueueArgs) -> CliResult<proto::EnqueueBatchRequest> {
    let mut scenarios = a.scenarios;
    if let Some(path) = &a.scenarios_file {
        scenarios.extend(read_scenarios(path)?);
    }
    Ok(proto::EnqueueBatchRequest {
        job_id: a.job_id.unwrap_or_default(),
        tenant_id: a.tenant,
        scenario_ids: scenarios,
        parallel: a.parallel,
        shared: Some(proto::JobSpec {
            model: a.model,
            provider: a.provider,
            mcp_server: a.mcp_server,
            tool_server: a.tool_server,
            tool_server_version: a.tool_server_version,
            skill_file: a.skill_file,
            skill_id: a.skill_id,
            skill_version: a.skill_version,
            skill_source: a.skill_source,
            skill_sha256: a.skill_sha256,
            max_attempts: a.max_attempts.unwrap_or(0),
            timeout_seconds: match a.timeout {
                None => 0,
                Some(t) if t.as_secs() == 0 => return Err("--timeout: must be at least 1s".into()),
                Some(t) => {
                    u32::try_from(t.as_secs()).map_err(|_| "--timeout: too long".to_string())?
                }
            },
            ..Default::default()
        }),
    })
}

fn read_scenarios(path: &PathBuf) -> CliResult<Vec<String>> {
    let read = |r: &mut dyn BufRead| -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for line in r.lines() {
            let line = line?;
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                out.push(line.to_string());
            }
        }
        Ok(out)
    };
    let result = if path.as_os_str() == "-" {
        read(&mut std::io::stdin().lock())
    } else {
        std::fs::File::open(path).and_then(|f| read(&mut std::io::BufReader::new(f)))
    };
    result.map_err(|e| format!("--scenarios-file {}: {e}", path.display()))
}

async fn get_batch(
    url: &str,
    c: &mut client::Client,
    batch_id: &str,
    with_output: bool,
) -> CliResult<proto::GetBatchResponse> {
    // Page through the batch; counts come with every page.
    let mut page_token = String::new();
    let mut all: Option<proto::GetBatchResponse> = None;
    loop {
        let page = c
            .get_batch(proto::GetBatchRequest {
                job_id: batch_id.to_string(),
                omit_output: !with_output,
                page_size: 0,
                page_token,
            })
            .await
            .map_err(|s| describe(url, &s))?
            .into_inner();
        page_token = page.next_page_token.clone();
        match &mut all {
            None => all = Some(page),
            Some(all) => {
                all.jobs.extend(page.jobs);
                all.counts = page.counts;
            }
        }
        if page_token.is_empty() {
            let mut all = all.expect("at least one page");
            all.next_page_token.clear();
            return Ok(all);
        }
    }
}

/// Just the counts of a batch: one small page.
async fn batch_counts(
    url: &str,
    c: &mut client::Client,
    batch_id: &str,
) -> CliResult<proto::StateCounts> {
    let page = c
        .get_batch(proto::GetBatchRequest {
            job_id: batch_id.to_string(),
            omit_output: true,
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .map_err(|s| describe(url, &s))?
        .into_inner();
    Ok(page.counts.unwrap_or_default())
}

/// One line a person can act on, for a status the coordinator returned.
fn describe(url: &str, s: &tonic::Status) -> String {
    use tonic::Code;
    let what = match s.code() {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "refused",
        Code::Unavailable => "coordinator unavailable",
        Code::Unauthenticated => {
            return format!(
                "not authenticated: {} (pass --token or set BENCHQ_TOKEN)",
                s.message()
            );
        }
        Code::PermissionDenied => "permission denied",
        _ => "error",
    };
    let mut msg = client::explain_status(url, s);
    if msg.is_empty() {
        msg = source_chain(s);
    }
    format!("{what}: {msg}")
}

fn show(batch: &proto::GetBatchResponse, output: Output) -> CliResult<()> {
    let mut out = std::io::stdout().lock();
    let written = match output {
        Output::Json => serde_json::to_writer_pretty(&mut out, &BatchJson::from(batch))
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out)),
        Output::Table => write_table(&mut out, batch),
    };
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| format!("writing output: {e}")),
    }
}

fn write_table(out: &mut impl Write, batch: &proto::GetBatchResponse) -> std::io::Result<()> {
    let c = batch.counts.unwrap_or_default();
    writeln!(out, "batch {}", batch.job_id)?;
    writeln!(
        out,
        "queued {}  running {}  passed {}  failed {}  errored {}  cancelled {}  (total {})\n",
        c.queued,
        c.running,
        c.passed,
        c.failed,
        c.errored,
        c.cancelled,
        batch.jobs.len()
    )?;
    let rows: Vec<[String; 8]> = batch
        .jobs
        .iter()
        .map(|j| {
            let spec = j.spec.clone().unwrap_or_default();
            let last = j.attempts.last();
            [
                j.position.to_string(),
                spec.scenario_id.clone(),
                ns_label(&spec),
                if j.cancel_requested && j.state == JobState::Running as i32 {
                    "stopping".to_string()
                } else {
                    state_name(j.state).to_string()
                },
                format!("{}/{}", j.attempt, spec.max_attempts),
                last.map(|a| a.agent_id.clone()).unwrap_or_default(),
                last.filter(|a| a.finished_at.is_some())
                    .map(|a| format!("{:.1}s", a.duration_ms as f64 / 1000.0))
                    .unwrap_or_default(),
                last.map(|a| one_line(&a.error, 60)).unwrap_or_default(),
            ]
        })
        .collect();
    let header = [
        "#",
        "SCENARIO",
        "NAMESPACE",
        "STATE",
        "ATTEMPTS",
        "AGENT",
        "TIME",
        "ERROR",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &header)?;
    for r in &rows {
        line(out, &r.each_ref().map(String::as_str))?;
    }
    // With --with-output: the end of what each unsuccessful attempt printed.
    for j in &batch.jobs {
        let scenario = j.spec.as_ref().map_or("", |s| s.scenario_id.as_str());
        for a in &j.attempts {
            if a.output_tail.is_empty() || a.outcome == Outcome::Passed as i32 {
                continue;
            }
            let outcome = outcome_name(a.outcome).unwrap_or("running");
            writeln!(
                out,
                "\n--- {scenario}, attempt {} ({outcome}) ---",
                a.attempt
            )?;
            let lines: Vec<&str> = a.output_tail.lines().collect();
            for l in &lines[lines.len().saturating_sub(20)..] {
                writeln!(out, "{l}")?;
            }
        }
    }
    Ok(())
}

fn ns_label(spec: &proto::JobSpec) -> String {
    let ns = proto::namespace_for(spec.namespace_slot, spec.parallel);
    if ns.is_empty() { "-".into() } else { ns }
}

fn one_line(s: &str, max: usize) -> String {
    let first = s.lines().next().unwrap_or("");
    if first.chars().count() > max {
        let cut: String = first.chars().take(max - 1).collect();
        format!("{cut}…")
    } else {
        first.to_string()
    }
}

fn state_name(v: i32) -> &'static str {
    JobState::try_from(v).map_or("unknown", JobState::name)
}

fn outcome_name(v: i32) -> Option<&'static str> {
    Outcome::try_from(v)
        .ok()
        .filter(|o| *o != Outcome::Unspecified)
        .map(Outcome::name)
}

fn rfc3339(t: &Option<prost_types::Timestamp>) -> Option<String> {
    let t = t.as_ref()?;
    let dt = time::OffsetDateTime::from_unix_timestamp(t.seconds).ok()?
        + time::Duration::nanoseconds(t.nanos.into());
    dt.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// The stable JSON shape of `status --output json`, for scripts.
#[derive(Serialize)]
struct BatchJson {
    job_id: String,
    counts: CountsJson,
    jobs: Vec<JobJson>,
}

#[derive(Serialize)]
struct CountsJson {
    queued: u32,
    running: u32,
    passed: u32,
    failed: u32,
    errored: u32,
    cancelled: u32,
}

#[derive(Serialize)]
struct JobJson {
    id: String,
    position: i32,
    scenario_id: String,
    tenant_id: String,
    model: String,
    provider: String,
    mcp_server: String,
    tool_server: String,
    tool_server_version: String,
    skill_file: String,
    skill_id: String,
    skill_version: String,
    skill_source: String,
    skill_sha256: String,
    namespace_slot: i32,
    namespace: String,
    parallel: i32,
    state: &'static str,
    attempt: i32,
    max_attempts: i32,
    outcome: Option<&'static str>,
    cancel_requested: bool,
    timeout_seconds: u32,
    created_at: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    attempts: Vec<AttemptJson>,
}

#[derive(Serialize)]
struct AttemptJson {
    attempt: i32,
    agent_id: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    outcome: Option<&'static str>,
    exit_code: Option<i32>,
    duration_ms: u64,
    error: String,
    metrics: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_tail: Option<String>,
}

impl From<&proto::GetBatchResponse> for BatchJson {
    fn from(b: &proto::GetBatchResponse) -> Self {
        let c = b.counts.unwrap_or_default();
        BatchJson {
            job_id: b.job_id.clone(),
            counts: CountsJson {
                queued: c.queued,
                running: c.running,
                passed: c.passed,
                failed: c.failed,
                errored: c.errored,
                cancelled: c.cancelled,
            },
            jobs: b
                .jobs
                .iter()
                .map(|j| {
                    let spec = j.spec.clone().unwrap_or_default();
                    JobJson {
                        id: j.id.clone(),
                        position: j.position,
                        namespace: proto::namespace_for(spec.namespace_slot, spec.parallel),
                        scenario_id: spec.scenario_id,
                        tenant_id: spec.tenant_id,
                        model: spec.model,
                        provider: spec.provider,
                        mcp_server: spec.mcp_server,
                        tool_server: spec.tool_server,
                        tool_server_version: spec.tool_server_version,
                        skill_file: spec.skill_file,
                        skill_id: spec.skill_id,
                        skill_version: spec.skill_version,
                        skill_source: spec.skill_source,
                        skill_sha256: spec.skill_sha256,
                        namespace_slot: spec.namespace_slot,
                        parallel: spec.parallel,
                        state: state_name(j.state),
                        attempt: j.attempt,
                        max_attempts: spec.max_attempts,
                        outcome: outcome_name(j.outcome),
                        cancel_requested: j.cancel_requested,
                        timeout_seconds: spec.timeout_seconds,
                        created_at: rfc3339(&j.created_at),
                        started_at: rfc3339(&j.started_at),
                        finished_at: rfc3339(&j.finished_at),
                        attempts: j
                            .attempts
                            .iter()
                            .map(|a| AttemptJson {
                                attempt: a.attempt,
                                agent_id: a.agent_id.clone(),
                                started_at: rfc3339(&a.started_at),
                                finished_at: rfc3339(&a.finished_at),
                                outcome: outcome_name(a.outcome),
                                exit_code: a.exit_code,
                                duration_ms: a.duration_ms,
                                error: a.error.clone(),
                                metrics: serde_json::from_str(&a.metrics_json).ok(),
                                output_tail: (!a.output_tail.is_empty())
                                    .then(|| a.output_tail.clone()),
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}
