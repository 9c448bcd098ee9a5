//! Parse, don't validate: requests are checked once, here, at the edge, and
//! turned into the queue's own types. A refusal is `INVALID_ARGUMENT` naming
//! the field, and nothing has been written when it is returned.

use benchq::proto::{self, Outcome};
use tonic::Status;
use uuid::Uuid;

use crate::queue::{JobArgs, Report};

/// Attempts a job gets when the request leaves `max_attempts` at 0.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 2;
/// Upper bound on `max_attempts`: more is a mistake, not a policy.
pub const MAX_ATTEMPTS_LIMIT: i32 = 20;
/// Timeout of an attempt when the request leaves `timeout_seconds` at 0.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 3600;
/// Upper bound on `timeout_seconds`: a week.
pub const MAX_TIMEOUT_SECONDS: u32 = 7 * 24 * 3600;
/// Upper bound on `parallel` (and so on namespace slots).
pub const MAX_PARALLEL: i32 = 4096;
/// Most scenarios in one EnqueueBatch.
pub const MAX_BATCH: usize = 100_000;
/// Longest identifier (scenario, tenant, agent, model, …).
pub const MAX_ID_LEN: usize = 256;
/// Longest free-text field (skill file path, skill source, …).
pub const MAX_TEXT_LEN: usize = 4096;
/// Longest output tail an agent may report.
pub const MAX_OUTPUT_TAIL: usize = benchq::report::MAX_OUTPUT_TAIL;
/// Longest error message an agent may report.
pub const MAX_ERROR_LEN: usize = benchq::report::MAX_ERROR;
/// Largest metrics document an agent may report.
pub const MAX_METRICS_LEN: usize = benchq::report::MAX_METRICS;
/// The tenant of requests that name none.
pub const DEFAULT_TENANT: &str = "default";

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

/// A payload over its size limit: `RESOURCE_EXHAUSTED`, naming the field.
fn too_big(field: &str, why: impl std::fmt::Display) -> Status {
    Status::resource_exhausted(format!("{field}: {why}"))
}

/// Formatting characters that make text display as something else: bidi
/// overrides and isolates, line and paragraph separators, zero-width
/// characters and the byte order mark.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
}

/// Characters an identifier may hold: letters, digits and `-_.:/@+=`, so ids
/// are safe in namespaces, file names, logs and shell scripts alike.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.:/@+=".contains(c)
}

/// A UUID field that must be set.
pub fn uuid(field: &str, value: &str) -> Result<Uuid, Status> {
    if value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    Uuid::parse_str(value).map_err(|_| invalid(field, format!("{value:?} is not a UUID")))
}

/// A UUID field that may be empty, in which case a new one is made.
fn uuid_or_new(field: &str, value: &str) -> Result<Uuid, Status> {
    if value.is_empty() {
        Ok(Uuid::new_v4())
    } else {
        uuid(field, value)
    }
}

/// An identifier: letters, digits and `-_.:/@+=`, bounded.
fn ident(field: &str, value: &str, required: bool) -> Result<String, Status> {
    if value.is_empty() {
        return if required {
            Err(invalid(field, "is required"))
        } else {
            Ok(String::new())
        };
    }
    if value.len() > MAX_ID_LEN {
        return Err(invalid(field, format!("longer than {MAX_ID_LEN} bytes")));
    }
    if let Some(c) = value.chars().find(|c| !is_id_char(*c)) {
        return Err(invalid(
            field,
            format!("{c:?} is not allowed: use letters, digits and - _ . : / @ + ="),
        ));
    }
    // Not an option (`-rf`), not a path that climbs (`..`, `/x`).
    if !value.starts_with(|c: char| c.is_ascii_alphanumeric()) || value.contains("..") {
        return Err(invalid(
            field,
            "must start with a letter or digit and must not contain \"..\"",
        ));
    }
    Ok(value.to_string())
}

/// Free text: no control characters (tabs allowed), bounded.
fn text(field: &str, value: &str) -> Result<String, Status> {
    if value.len() > MAX_TEXT_LEN {
        return Err(invalid(field, format!("longer than {MAX_TEXT_LEN} bytes")));
    }
    if value
        .chars()
        .any(|c| (c.is_control() && c != '\t') || is_invisible(c))
    {
        return Err(invalid(
            field,
            "contains control or invisible formatting characters",
        ));
    }
    Ok(value.to_string())
}

fn sha256(field: &str, value: &str) -> Result<String, Status> {
    if value.is_empty() || (value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(invalid(field, "must be 64 hexadecimal characters"))
    }
}

fn max_attempts(field: &str, value: i32) -> Result<i32, Status> {
    match value {
        0 => Ok(DEFAULT_MAX_ATTEMPTS),
        1..=MAX_ATTEMPTS_LIMIT => Ok(value),
        _ => Err(invalid(
            field,
            format!("must be between 1 and {MAX_ATTEMPTS_LIMIT} (0 for the default)"),
        )),
    }
}

fn timeout(field: &str, value: u32) -> Result<i32, Status> {
    match value {
        0 => Ok(DEFAULT_TIMEOUT_SECONDS as i32),
        1..=MAX_TIMEOUT_SECONDS => Ok(value as i32),
        _ => Err(invalid(
            field,
            format!("must be at most {MAX_TIMEOUT_SECONDS} (a week; 0 for the default)"),
        )),
    }
}

fn parallel(field: &str, value: i32) -> Result<i32, Status> {
    if (1..=MAX_PARALLEL).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("must be between 1 and {MAX_PARALLEL}, got {value}"),
        ))
    }
}

fn tenant(field: &str, value: &str) -> Result<String, Status> {
    let t = ident(field, value, false)?;
    Ok(if t.is_empty() {
        DEFAULT_TENANT.to_string()
    } else {
        t
    })
}

/// The fields every job has, whether enqueued alone or in a batch.
fn common(prefix: &str, spec: &proto::JobSpec) -> Result<JobArgs, Status> {
    let f = |name: &str| format!("{prefix}{name}");
    Ok(JobArgs {
        tenant_id: String::new(),
        scenario_id: String::new(),
        model: ident(&f("model"), &spec.model, true)?,
        provider: ident(&f("provider"), &spec.provider, true)?,
        mcp_server: ident(&f("mcp_server"), &spec.mcp_server, false)?,
        tool_server: ident(&f("tool_server"), &spec.tool_server, false)?,
        tool_server_version: ident(&f("tool_server_version"), &spec.tool_server_version, false)?,
        skill_file: text(&f("skill_file"), &spec.skill_file)?,
        skill_id: ident(&f("skill_id"), &spec.skill_id, false)?,
        skill_version: ident(&f("skill_version"), &spec.skill_version, false)?,
        skill_source: text(&f("skill_source"), &spec.skill_source)?,
        skill_sha256: sha256(&f("skill_sha256"), &spec.skill_sha256)?,
        namespace_slot: 0,
        parallel: 1,
        max_attempts: max_attempts(&f("max_attempts"), spec.max_attempts)?,
        timeout_seconds: timeout(&f("timeout_seconds"), spec.timeout_seconds)?,
    })
}

/// An `Enqueue` request: the batch to put the job in and its arguments.
pub fn enqueue(req: &proto::EnqueueRequest) -> Result<(Uuid, JobArgs), Status> {
    let spec = req
        .job
        .as_ref()
        .ok_or_else(|| invalid("job", "is required"))?;
    let batch = uuid_or_new("job.job_id", &spec.job_id)?;
    let mut args = common("job.", spec)?;
    args.tenant_id = tenant("job.tenant_id", &spec.tenant_id)?;
    args.scenario_id = ident("job.scenario_id", &spec.scenario_id, true)?;
    args.parallel = parallel("job.parallel", spec.parallel)?;
    if spec.namespace_slot < 0 || spec.namespace_slot >= args.parallel {
        return Err(invalid(
            "job.namespace_slot",
            format!(
                "must be between 0 and parallel - 1 ({}), got {}",
                args.parallel - 1,
                spec.namespace_slot
            ),
        ));
    }
    args.namespace_slot = spec.namespace_slot;
    Ok((batch, args))
}

/// An `EnqueueBatch` request: batch id, shared arguments and scenario ids.
pub fn enqueue_batch(
    req: &proto::EnqueueBatchRequest,
) -> Result<(Uuid, JobArgs, Vec<String>), Status> {
    let batch = uuid_or_new("job_id", &req.job_id)?;
    if req.scenario_ids.is_empty() {
        return Err(invalid("scenario_ids", "at least one scenario is required"));
    }
    if req.scenario_ids.len() > MAX_BATCH {
        return Err(too_big(
            "scenario_ids",
            format!(
                "{} scenarios is more than the {MAX_BATCH} a batch may hold",
                req.scenario_ids.len()
            ),
        ));
    }
    let scenarios = req
        .scenario_ids
        .iter()
        .enumerate()
        .map(|(i, s)| ident(&format!("scenario_ids[{i}]"), s, true))
        .collect::<Result<Vec<_>, _>>()?;
    let shared = req.shared.clone().unwrap_or_default();
    for (field, set) in [
        ("shared.job_id", !shared.job_id.is_empty()),
        ("shared.tenant_id", !shared.tenant_id.is_empty()),
        ("shared.scenario_id", !shared.scenario_id.is_empty()),
        ("shared.namespace_slot", shared.namespace_slot != 0),
        ("shared.parallel", shared.parallel != 0),
    ] {
        if set {
            return Err(invalid(
                field,
                "must be empty: it is set on the batch request itself",
            ));
        }
    }
    let mut args = common("shared.", &shared)?;
    args.tenant_id = tenant("tenant_id", &req.tenant_id)?;
    args.parallel = parallel("parallel", req.parallel)?;
    Ok((batch, args, scenarios))
}

/// Jobs per GetBatch page by default, and at most.
pub const MAX_PAGE: u32 = 1000;
/// Jobs per GetBatch page at most when output tails are included.
pub const MAX_PAGE_WITH_OUTPUT: u32 = 100;

/// A `GetBatch` page: (the position to start after, how many jobs).
pub fn page(req: &proto::GetBatchRequest) -> Result<(i32, i64), Status> {
    let after = if req.page_token.is_empty() {
        -1
    } else {
        req.page_token
            .parse::<i32>()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| invalid("page_token", "is not a token from a previous reply"))?
    };
    let max = if req.omit_output {
        MAX_PAGE
    } else {
        MAX_PAGE_WITH_OUTPUT
    };
    let size = match req.page_size {
        0 => max,
        n => n.min(max),
    };
    Ok((after, i64::from(size)))
}

/// A `Lease` request: agent id, slots (sorted, deduplicated) and tenant filter.
pub fn lease(req: &proto::LeaseRequest) -> Result<(String, Vec<i32>, String), Status> {
    let agent = ident("agent_id", &req.agent_id, true)?;
    if req.slots.is_empty() {
        return Err(invalid("slots", "at least one slot is required"));
    }
    if let Some((i, s)) = req
        .slots
        .iter()
        .enumerate()
        .find(|(_, s)| !(0..MAX_PARALLEL).contains(*s))
    {
        return Err(invalid(
            &format!("slots[{i}]"),
            format!("must be between 0 and {}, got {s}", MAX_PARALLEL - 1),
        ));
    }
    let mut slots = req.slots.clone();
    slots.sort_unstable();
    slots.dedup();
    let tenant = ident("tenant_id", &req.tenant_id, false)?;
    Ok((agent, slots, tenant))
}

/// A `Complete` request: lease token and report.
pub fn complete(req: &proto::CompleteRequest) -> Result<(Uuid, Report), Status> {
    let token = uuid("lease_token", &req.lease_token)?;
    let outcome = match Outcome::try_from(req.outcome) {
        Ok(Outcome::Passed) => "PASSED",
        Ok(Outcome::Failed) => "FAILED",
        Ok(Outcome::Error) => "ERROR",
        Ok(Outcome::Cancelled) => "CANCELLED",
        Ok(Outcome::Interrupted) => "INTERRUPTED",
        Ok(Outcome::Reclaimed) => {
            return Err(invalid(
                "outcome",
                "RECLAIMED is recorded by the coordinator, agents cannot report it",
            ));
        }
        Ok(Outcome::Unspecified) => return Err(invalid("outcome", "is required")),
        Err(_) => return Err(invalid("outcome", format!("unknown value {}", req.outcome))),
    };
    let duration_ms =
        i64::try_from(req.duration_ms).map_err(|_| invalid("duration_ms", "is out of range"))?;
    if req.output_tail.len() > MAX_OUTPUT_TAIL {
        return Err(too_big(
            "output_tail",
            format!("longer than {MAX_OUTPUT_TAIL} bytes: send only the tail"),
        ));
    }
    if req.error.len() > MAX_ERROR_LEN {
        return Err(too_big(
            "error",
            format!("longer than {MAX_ERROR_LEN} bytes"),
        ));
    }
    let metrics = if req.metrics_json.is_empty() {
        None
    } else {
        Some(
            benchq::report::check_metrics(&req.metrics_json).map_err(|why| {
                if req.metrics_json.len() > MAX_METRICS_LEN {
                    too_big("metrics_json", why)
                } else {
                    invalid("metrics_json", why)
                }
            })?,
        )
    };
    Ok((
        token,
        Report {
            outcome,
            exit_code: req.exit_code,
            duration_ms,
            // Output is data, not an identifier: keep it, minus what PostgreSQL
            // text cannot store.
            error: req.error.replace('\0', "\u{fffd}"),
            output_tail: req.output_tail.replace('\0', "\u{fffd}"),
            metrics,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(scenarios: &[&str], parallel: i32) -> proto::EnqueueBatchRequest {
        proto::EnqueueBatchRequest {
            scenario_ids: scenarios.iter().map(|s| s.to_string()).collect(),
            parallel,
            shared: Some(proto::JobSpec {
                model: "m".into(),
                provider: "p".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn field_of(s: Status) -> String {
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        s.message().split(':').next().unwrap().to_string()
    }

    #[test]
    fn batch_errors_name_the_field() {
        assert_eq!(
            field_of(enqueue_batch(&batch(&[], 2)).unwrap_err()),
            "scenario_ids"
        );
        assert_eq!(
            field_of(enqueue_batch(&batch(&["a"], 0)).unwrap_err()),
            "parallel"
        );
        assert_eq!(
            field_of(enqueue_batch(&batch(&["a", ""], 1)).unwrap_err()),
            "scenario_ids[1]"
        );
        let mut r = batch(&["a"], 1);
        r.job_id = "nope".into();
        assert_eq!(field_of(enqueue_batch(&r).unwrap_err()), "job_id");
        let mut r = batch(&["a"], 1);
        r.shared.as_mut().unwrap().model.clear();
        assert_eq!(field_of(enqueue_batch(&r).unwrap_err()), "shared.model");
        let mut r = batch(&["a"], 1);
        r.shared.as_mut().unwrap().skill_sha256 = "abc".into();
        assert_eq!(
            field_of(enqueue_batch(&r).unwrap_err()),
            "shared.skill_sha256"
        );
        let mut r = batch(&["a"], 1);
        r.shared.as_mut().unwrap().max_attempts = -1;
        assert_eq!(
            field_of(enqueue_batch(&r).unwrap_err()),
            "shared.max_attempts"
        );
    }

    #[test]
    fn batch_defaults() {
        let (_, args, scenarios) = enqueue_batch(&batch(&["a", "b"], 2)).unwrap();
        assert_eq!(args.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(args.tenant_id, DEFAULT_TENANT);
        assert_eq!(scenarios, ["a", "b"]);
    }

    #[test]
    fn complete_checks_outcome_and_metrics() {
        let ok = proto::CompleteRequest {
            lease_token: Uuid::new_v4().to_string(),
            outcome: Outcome::Passed as i32,
            output_tail: "a\0b".into(),
            ..Default::default()
        };
        let (_, report) = complete(&ok).unwrap();
        assert_eq!(report.output_tail, "a\u{fffd}b");
        let mut r = ok.clone();
        r.outcome = 42;
        assert_eq!(field_of(complete(&r).unwrap_err()), "outcome");
        let mut r = ok.clone();
        r.metrics_json = "{".into();
        assert_eq!(field_of(complete(&r).unwrap_err()), "metrics_json");
        let mut r = ok;
        r.lease_token = "x".into();
        assert_eq!(field_of(complete(&r).unwrap_err()), "lease_token");
    }

    #[test]
    fn lease_slots() {
        let r = proto::LeaseRequest {
            agent_id: "a".into(),
            slots: vec![1, 1, 0],
            ..Default::default()
        };
        assert_eq!(lease(&r).unwrap().1, [0, 1]);
        let r = proto::LeaseRequest {
            agent_id: "a".into(),
            slots: vec![-1],
            ..Default::default()
        };
        assert_eq!(field_of(lease(&r).unwrap_err()), "slots[0]");
    }
}
