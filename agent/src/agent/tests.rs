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
