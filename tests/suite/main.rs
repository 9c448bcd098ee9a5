//! benchq's integration tests: one binary, one throwaway PostgreSQL cluster,
//! a fresh database per test, the coordinator over real gRPC on loopback and
//! agents as real processes.

#[path = "../support/mod.rs"]
mod support;

mod agent_faults;
mod agent_hardening;
mod agent_loop;
mod cancel;
mod end_to_end;
mod faults;
mod grpc_surface;
mod leases;
mod migrations;
mod production;
mod reclaim;
mod security;
mod tls;
mod validation;
