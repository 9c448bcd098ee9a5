//! The `benchq.v1` protocol, generated from `proto/benchq/v1` by `build.rs`.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("benchq.v1");

/// The encoded `FileDescriptorSet` of the benchq protos, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/benchq_descriptor.bin"));

/// The namespace a job runs in: `bench-w{slot}` when the batch runs across more
/// than one namespace, none when `parallel == 1` (no namespace isolation).
pub fn namespace_for(slot: i32, parallel: i32) -> String {
    if parallel > 1 {
        format!("bench-w{slot}")
    } else {
        String::new()
    }
}

impl JobState {
    /// The lower-case name used in the database and by the CLI (`queued`, `running`, …).
    pub fn name(self) -> &'static str {
        match self {
            JobState::Unspecified => "unspecified",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Passed => "passed",
            JobState::Failed => "failed",
            JobState::Errored => "errored",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The inverse of [`JobState::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "passed" => JobState::Passed,
            "failed" => JobState::Failed,
            "errored" => JobState::Errored,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    /// A job in this state will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Passed | JobState::Failed | JobState::Errored
        )
    }
}

impl Outcome {
    /// The upper-case name used in the database and by the CLI (`PASSED`, …).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Unspecified => "",
            Outcome::Passed => "PASSED",
            Outcome::Failed => "FAILED",
            Outcome::Error => "ERROR",
            Outcome::Cancelled => "CANCELLED",
            Outcome::Interrupted => "INTERRUPTED",
            Outcome::Reclaimed => "RECLAIMED",
        }
    }

    /// The inverse of [`Outcome::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "PASSED" => Outcome::Passed,
            "FAILED" => Outcome::Failed,
            "ERROR" => Outcome::Error,
            "CANCELLED" => Outcome::Cancelled,
            "INTERRUPTED" => Outcome::Interrupted,
            "RECLAIMED" => Outcome::Reclaimed,
            _ => return None,
        })
    }
}
