use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A job's lifecycle state, spelled as in the API and the database (`QUEUED`, ..., `CANCELLED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] =
        [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "QUEUED",
            JobState::Running => "RUNNING",
            JobState::Succeeded => "SUCCEEDED",
            JobState::Failed => "FAILED",
            JobState::Cancelled => "CANCELLED",
        }
    }

    /// A job in a terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown job state `{s}`"))
    }
}

/// Who runs a job: the service's workers (`service`, every CreateJob), or a training loop
/// outside that reports to it (`tracked`, StartTrackedRun; its weights are exported at the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    #[default]
    Service,
    Tracked,
}

impl JobKind {
    pub const ALL: [JobKind; 2] = [JobKind::Service, JobKind::Tracked];

    /// As in the database (`service`, `tracked`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Service => "service",
            JobKind::Tracked => "tracked",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown job kind `{s}`: expected service or tracked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in JobKind::ALL {
            assert_eq!(k.as_str().parse::<JobKind>(), Ok(k));
            assert_eq!(k.as_str().to_uppercase().parse::<JobKind>(), Ok(k));
        }
        assert!("batch".parse::<JobKind>().is_err());
    }

    #[test]
    fn names_round_trip_through_text_and_json() {
        for st in JobState::ALL {
            assert_eq!(st.as_str().parse::<JobState>(), Ok(st));
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{st}\""));
        }
        assert!("queued".parse::<JobState>().is_err());
    }
}
