//! The job a runner is handed: what the coordinator leased, minus the lease
//! token.
//!
//! The token stays with the agent on purpose: heartbeating and reporting are
//! the agent's business, so a runner cannot extend or complete a lease it does
//! not own, and an in-process runner needs nothing from the protocol beyond
//! this struct.

use benchq::proto::{JobSpec, Lease};
use serde::Serialize;

/// One leased job: the fields of a [`Lease`] that describe the work.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeasedJob {
    /// The job's own id (a UUID), unique per scenario run.
    pub id: String,
    /// What to run. `spec.job_id` is the *batch* id.
    pub spec: JobSpec,
    /// 1 on the first attempt.
    pub attempt: i32,
    /// `bench-w{slot}`, or empty when the batch has no namespace isolation.
    pub namespace: String,
}

impl From<&Lease> for LeasedJob {
    fn from(lease: &Lease) -> Self {
        LeasedJob {
            id: lease.id.clone(),
            spec: lease.job.clone().unwrap_or_default(),
            attempt: lease.attempt,
            namespace: lease.namespace.clone(),
        }
    }
}

/// The job as `job.json` for child processes: every field flat, snake_case,
/// in the order of the proto.
#[derive(Serialize)]
struct JobFile<'a> {
    id: &'a str,
    job_id: &'a str,
    tenant_id: &'a str,
    scenario_id: &'a str,
    model: &'a str,
    provider: &'a str,
    mcp_server: &'a str,
    tool_server: &'a str,
    tool_server_version: &'a str,
    skill_file: &'a str,
    skill_id: &'a str,
    skill_version: &'a str,
    skill_source: &'a str,
    skill_sha256: &'a str,
    namespace_slot: i32,
    parallel: i32,
    max_attempts: i32,
    namespace: &'a str,
    attempt: i32,
}

impl LeasedJob {
    /// Every field as a `BENCHQ_<FIELD>` environment variable, the way scripts
    /// driving a benchmark expect their arguments. Numbers are decimal; an
    /// absent namespace is the empty string (the variable is always set, so a
    /// script can tell "no namespace" from "not run by benchq").
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        let s = &self.spec;
        vec![
            ("BENCHQ_ID", self.id.clone()),
            ("BENCHQ_JOB_ID", s.job_id.clone()),
            ("BENCHQ_TENANT_ID", s.tenant_id.clone()),
            ("BENCHQ_SCENARIO_ID", s.scenario_id.clone()),
            ("BENCHQ_MODEL", s.model.clone()),
            ("BENCHQ_PROVIDER", s.provider.clone()),
            ("BENCHQ_MCP_SERVER", s.mcp_server.clone()),
            ("BENCHQ_TOOL_SERVER", s.tool_server.clone()),
            ("BENCHQ_TOOL_SERVER_VERSION", s.tool_server_version.clone()),
            ("BENCHQ_SKILL_FILE", s.skill_file.clone()),
            ("BENCHQ_SKILL_ID", s.skill_id.clone()),
            ("BENCHQ_SKILL_VERSION", s.skill_version.clone()),
            ("BENCHQ_SKILL_SOURCE", s.skill_source.clone()),
            ("BENCHQ_SKILL_SHA256", s.skill_sha256.clone()),
            ("BENCHQ_NAMESPACE_SLOT", s.namespace_slot.to_string()),
            ("BENCHQ_PARALLEL", s.parallel.to_string()),
            ("BENCHQ_MAX_ATTEMPTS", s.max_attempts.to_string()),
            ("BENCHQ_NAMESPACE", self.namespace.clone()),
            ("BENCHQ_ATTEMPT", self.attempt.to_string()),
        ]
    }

    /// The whole job as one JSON object with snake_case keys (`id`, `job_id`,
    /// `tenant_id`, `scenario_id`, …, `namespace`, `attempt`): the same
    /// content as [`LeasedJob::env_vars`], for runners that would rather parse
    /// one file than read twenty variables.
    pub fn to_json(&self) -> String {
        let s = &self.spec;
        let file = JobFile {
            id: &self.id,
            job_id: &s.job_id,
            tenant_id: &s.tenant_id,
            scenario_id: &s.scenario_id,
            model: &s.model,
            provider: &s.provider,
            mcp_server: &s.mcp_server,
            tool_server: &s.tool_server,
            tool_server_version: &s.tool_server_version,
            skill_file: &s.skill_file,
            skill_id: &s.skill_id,
            skill_version: &s.skill_version,
            skill_source: &s.skill_source,
            skill_sha256: &s.skill_sha256,
            namespace_slot: s.namespace_slot,
            parallel: s.parallel,
            max_attempts: s.max_attempts,
            namespace: &self.namespace,
            attempt: self.attempt,
        };
        serde_json::to_string_pretty(&file)
            .expect("a struct of strings and integers always serializes")
    }

    /// The namespace for log lines: `-` when there is none, so a line never
    /// ends in a dangling "namespace".
    pub fn namespace_display(&self) -> &str {
        if self.namespace.is_empty() {
            "-"
        } else {
            &self.namespace
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> LeasedJob {
        LeasedJob {
            id: "j-1".into(),
            spec: JobSpec {
                job_id: "batch".into(),
                scenario_id: "scn".into(),
                namespace_slot: 2,
                parallel: 4,
                ..Default::default()
            },
            attempt: 3,
            namespace: "bench-w2".into(),
        }
    }

    #[test]
    fn json_has_every_field_flat() {
        let v: serde_json::Value = serde_json::from_str(&job().to_json()).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 19);
        assert_eq!(v["id"], "j-1");
        assert_eq!(v["job_id"], "batch");
        assert_eq!(v["namespace_slot"], 2);
        assert_eq!(v["attempt"], 3);
        assert_eq!(v["namespace"], "bench-w2");
        assert_eq!(v["skill_sha256"], "");
        // Same fields as the environment, one for one.
        for (name, _) in job().env_vars() {
            let key = name.trim_start_matches("BENCHQ_").to_lowercase();
            assert!(obj.contains_key(&key), "{key} missing from job.json");
        }
    }

    #[test]
    fn from_lease_without_spec() {
        let lease = Lease {
            id: "x".into(),
            attempt: 1,
            ..Default::default()
        };
        let job = LeasedJob::from(&lease);
        assert_eq!(job.id, "x");
        assert_eq!(job.spec, JobSpec::default());
        assert_eq!(job.namespace_display(), "-");
    }
}
