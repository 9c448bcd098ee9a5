//! What the agent decides without a coordinator: configuration checks and the
//! heartbeat period. The loop itself is tested against the real coordinator in
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
