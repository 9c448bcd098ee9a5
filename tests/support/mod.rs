//! Helpers shared by the integration tests. Each test binary includes this
//! directory with `mod support;`.

pub mod agents;
pub mod app;
pub mod pg;
