//! What the agent decides without a coordinator: configuration checks, the
//! heartbeat period and fencing bounds, which errors are retried, and how a
//! report is made to fit the coordinator's limits. The loop itself is tested against the real coordinator in
//! the workspace suite (`tests/suite/agent_loop.rs`).

use super::*;
use crate::runner::runner_fn;

#[test]
fn heartbeat_interval_falls_back_to_a_third_of_the_ttl() {
    let mut l = Lease {
        heartbeat_interval_ms: 50,
        lease_ttl_ms: 150,
        ..Default::default()
    };
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
    let duplicates = AgentConfig::new("http://127.0.0.1:1", "a", vec![2, 0, 2]);
    let agent = Agent::new(duplicates, runner.clone()).unwrap();
    assert_eq!(agent.config().slots, vec![0, 2], "sorted and deduplicated");
    let bad_url = AgentConfig::new("http://[::1", "a", vec![0]);
    assert!(matches!(
        Agent::new(bad_url, runner),
        Err(AgentError::Connect(_))
    ));
}

#[test]
fn a_timeout_of_zero_means_an_hour() {
    let mut spec = JobSpec::default();
    assert_eq!(job_timeout(&spec), Duration::from_secs(3600));
    spec.timeout_seconds = 90;
    assert_eq!(job_timeout(&spec), Duration::from_secs(90));
}

#[test]
fn a_busy_slot_is_warned_about_once_per_holder_and_job() {
    let busy = |agent: &str, id: &str| BusySlot {
        slot: 0,
        tenant_id: String::new(),
        agent_id: agent.into(),
        id: id.into(),
    };
    let mut w = BusyWarnings::default();
    assert_eq!(
        w.update(&[busy("a1", "j1")]),
        vec![
            "slot 0 is busy: job j1 is running there on agent a1 \u{2014} is another agent serving slot 0?"
        ]
    );
    assert!(w.update(&[busy("a1", "j1")]).is_empty(), "repeated");
    assert_eq!(w.update(&[busy("a1", "j2")]).len(), 1, "another job");
    assert_eq!(w.update(&[busy("a2", "j2")]).len(), 1, "another agent");
    assert!(w.update(&[]).is_empty());
    assert_eq!(
        w.update(&[busy("a2", "j2")]).len(),
        1,
        "busy again after a free poll"
    );
    w.clear();
    let tenant = BusySlot {
        tenant_id: "acme".into(),
        ..busy("a2", "j2")
    };
    assert_eq!(
        w.update(&[tenant]),
        vec![
            "slot 0 is busy: job j2 (tenant acme) is running there on agent a2 \u{2014} is another agent serving slot 0?"
        ]
    );
}

#[test]
fn fencing_fits_inside_the_lease() {
    let lease = Lease {
        heartbeat_interval_ms: 10_000,
        lease_ttl_ms: 30_000,
        ..Default::default()
    };
    let t = LeaseTiming::of(&lease);
    assert_eq!(t.every, Duration::from_secs(10));
    assert_eq!(t.fence_after(), Duration::from_secs(15));
    assert_eq!(t.stop_within(), Duration::from_millis(7500));
    assert!(t.fence_after() + t.stop_within() < t.ttl);
    assert!(
        t.every < t.fence_after(),
        "a heartbeat is due before the fence"
    );

    // A heartbeat interval too long to keep the lease is shortened.
    let slow = Lease {
        heartbeat_interval_ms: 20_000,
        lease_ttl_ms: 30_000,
        ..Default::default()
    };
    assert_eq!(LeaseTiming::of(&slow).every, Duration::from_secs(10));
    // No TTL named: three heartbeat periods.
    let no_ttl = Lease {
        heartbeat_interval_ms: 2_000,
        ..Default::default()
    };
    assert_eq!(LeaseTiming::of(&no_ttl).ttl, Duration::from_secs(6));
    assert_eq!(
        LeaseTiming::of(&Lease::default()).ttl,
        DEFAULT_HEARTBEAT * 3
    );
}

#[test]
fn a_refused_credential_and_a_field_over_its_limit_are_not_outages() {
    for code in [Code::Unauthenticated, Code::PermissionDenied] {
        assert!(refuses_credential(code));
        assert!(!is_transient(code));
    }
    assert!(!is_transient(Code::ResourceExhausted));
    assert!(!is_transient(Code::InvalidArgument));
    assert!(is_transient(Code::Unavailable));
    assert!(!refuses_credential(Code::FailedPrecondition));
}

#[test]
fn reports_are_cut_to_the_coordinators_limits() {
    let mut r = RunResult {
        error: format!("{}é{}", "e".repeat(MAX_ERROR - 1), "tail of the error"),
        output_tail: format!("head of the output{}", "o".repeat(MAX_OUTPUT_TAIL)),
        ..RunResult::new(Outcome::Failed)
    };
    fit_limits(&mut r);
    assert_eq!(
        r.error,
        "e".repeat(MAX_ERROR - 1),
        "cut on a character boundary"
    );
    assert_eq!(r.output_tail, "o".repeat(MAX_OUTPUT_TAIL));
    let mut short = RunResult::error("short");
    fit_limits(&mut short);
    assert_eq!(short.error, "short");
}

#[test]
fn metrics_of_any_runner_are_checked() {
    let mut r = RunResult {
        metrics_json: Some(r#"{"x":1e400}"#.into()),
        ..RunResult::error("exit code 3")
    };
    let note = check_result_metrics(&mut r).unwrap();
    assert_eq!(r.metrics_json, None);
    assert!(note.starts_with("metrics dropped: the runner's metrics_json is not valid JSON"));
    assert_eq!(r.error, format!("exit code 3; {note}"));

    let mut fine = RunResult {
        metrics_json: Some(r#"{"x":1}"#.into()),
        ..RunResult::new(Outcome::Passed)
    };
    assert_eq!(check_result_metrics(&mut fine), None);

    // A note that would not fit after a long error still does.
    let mut long = RunResult {
        metrics_json: Some("[".repeat(200)),
        ..RunResult::error("e".repeat(MAX_ERROR))
    };
    let note = check_result_metrics(&mut long).unwrap();
    assert_eq!(long.error.len(), MAX_ERROR);
    assert!(long.error.ends_with(&format!("e; {note}")));
    assert_eq!(fine.metrics_json.as_deref(), Some(r#"{"x":1}"#));
    assert_eq!(fine.error, "");
}

#[test]
fn the_minimal_report_keeps_the_verdict_only() {
    let full = CompleteRequest {
        lease_token: "t".into(),
        outcome: Outcome::Failed as i32,
        exit_code: Some(1),
        duration_ms: u64::MAX,
        error: "e".into(),
        output_tail: "o".into(),
        metrics_json: "{}".into(),
    };
    let minimal = minimal_report(
        &full,
        "duration_ms: is out of range",
        Duration::from_secs(2),
    );
    assert_eq!(
        minimal,
        CompleteRequest {
            lease_token: "t".into(),
            outcome: Outcome::Failed as i32,
            exit_code: Some(1),
            duration_ms: 2000,
            error: "the coordinator refused the full report: duration_ms: is out of range".into(),
            output_tail: String::new(),
            metrics_json: String::new(),
        }
    );
    let long = minimal_report(&full, &"x".repeat(2 * MAX_ERROR), Duration::ZERO);
    assert_eq!(long.error.len(), MAX_ERROR);
}
