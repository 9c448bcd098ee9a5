//! Helpers shared by the integration tests. Each test binary includes this
//! directory with `mod support;`.

pub mod app;
pub mod pg;
