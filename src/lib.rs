//! benchq: a job queue for fleets that benchmark AI agents.
//!
//! This crate holds what the coordinator, the agents and the CLI share: the
//! gRPC protocol generated from `proto/benchq/v1`, and the client helpers
//! used to reach a coordinator.

pub mod client;
pub mod duration;
pub mod proto;
pub mod report;
