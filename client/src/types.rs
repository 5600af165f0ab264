//! What the client hands back: plain serde types converted from the generated `pruning.v1`
//! messages, so that callers get `Option`s instead of proto3 zero values, state names instead of
//! enum integers, and can serialise results as they are (`prunectl --json` does exactly that).

use prune_proto as pb;
use serde::Serialize;

pub use prune_core::domain::{
    BudgetReport, ChannelReport, ChosenSparsity, JobKind, JobState, LanguageModelReport, LayerChannels, LinearError,
    Perplexity, Report, SensitivityPoint, TensorReport, TensorSparsity,
};

use crate::error::ClientError;

/// One point of a job's time series (`sparsity/<param>`, `loss`, `accuracy`, `val_accuracy`,
/// `learning_rate`, ...).
pub type MetricRecord = prune_core::domain::MetricPoint;

/// One exported file of a finished job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArtifactInfo {
    /// `safetensors` or `torchscript`; a sensitivity analysis adds `sensitivity_plot` and
    /// `suggested_overrides`.
    pub format: String,
    /// Bytes of the file as served (compressed).
    pub size: u64,
    /// Lowercase hex sha256 of the file as served.
    pub sha256: String,
    /// `none`, `gzip` or `zstd`.
    pub compression: String,
    /// `dense` or `bitmask`.
    pub sparse_format: String,
    pub file_name: String,
}

impl From<pb::ArtifactInfo> for ArtifactInfo {
    fn from(a: pb::ArtifactInfo) -> Self {
        ArtifactInfo {
            format: a.format,
            size: a.size,
            sha256: a.sha256,
            compression: a.compression,
            sparse_format: a.sparse_format,
            file_name: a.file_name,
        }
    }
}

/// A job as the server reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobInfo {
    pub id: String,
    pub name: String,
    pub state: JobState,
    pub step: i64,
    /// 0 until the worker has loaded the data.
    pub total_steps: i64,
    pub epoch: i64,
    /// Why the job FAILED; `None` otherwise.
    pub error: Option<String>,
    /// Schedule warnings computed at submission.
    pub warnings: Vec<String>,
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub sparsity: Vec<TensorSparsity>,
    pub eta_seconds: Option<f64>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_unix_ms: i64,
    pub started_unix_ms: Option<i64>,
    pub finished_unix_ms: Option<i64>,
    pub artifacts: Vec<ArtifactInfo>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub priority: i32,
    /// The node running the job (or that ran its last attempt); `None` before the first.
    pub node: Option<String>,
    /// Every attempt so far, first first.
    pub attempt_history: Vec<AttemptInfo>,
    /// `service` (the service trains it) or `tracked` (a loop outside reports to it).
    pub kind: JobKind,
    /// TRACKED: who reports (`host:pid`, as the loop said when it started the run).
    pub client: Option<String>,
    /// TRACKED: when the loop last reported; `None` once it no longer reports.
    pub reported_unix_ms: Option<i64>,
}

/// One attempt (worker process) of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptInfo {
    pub number: u32,
    pub node: String,
    /// The checkpoint step it resumed from; `None`: from scratch.
    pub resumed_step: Option<i64>,
    /// `None` while it runs; else succeeded, failed, crashed, interrupted, cancelled, superseded.
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub started_unix_ms: i64,
    pub finished_unix_ms: Option<i64>,
}

impl From<pb::AttemptInfo> for AttemptInfo {
    fn from(a: pb::AttemptInfo) -> Self {
        AttemptInfo {
            number: a.number,
            node: a.node,
            resumed_step: a.resumed_step,
            outcome: Some(a.outcome).filter(|o| !o.is_empty()),
            error: Some(a.error).filter(|e| !e.is_empty()),
            started_unix_ms: a.started_unix_ms,
            finished_unix_ms: Some(a.finished_unix_ms).filter(|&t| t > 0),
        }
    }
}

impl JobInfo {
    /// The export a download takes without `--format`: the model (`safetensors`) where it was
    /// exported, else the first listed (artifacts are listed by format name, so a plot's could
    /// come first).
    pub fn default_format(&self) -> Option<&str> {
        let formats = || self.artifacts.iter().map(|a| a.format.as_str());
        formats().find(|f| *f == "safetensors").or_else(|| formats().next())
    }

    /// Mean sparsity over the pruned tensors: the one number progress displays show.
    pub fn mean_sparsity(&self) -> Option<f64> {
        mean_sparsity(&self.sparsity)
    }
}

impl TryFrom<pb::Job> for JobInfo {
    type Error = ClientError;
    /// A job whose state is not one a job can be in is a protocol error.
    fn try_from(j: pb::Job) -> Result<Self, ClientError> {
        let state = prune_proto::conversions::job_state(j.state)
            .map_err(|e| ClientError::Protocol(format!("job {}: {e}", j.id)))?;
        Ok(JobInfo {
            state,
            id: j.id,
            name: j.name,
            step: j.step,
            total_steps: j.total_steps,
            epoch: j.epoch,
            error: Some(j.error).filter(|e| !e.is_empty()),
            warnings: j.warnings,
            loss: j.loss,
            accuracy: j.accuracy,
            sparsity: j.sparsity.into_iter().map(Into::into).collect(),
            eta_seconds: j.eta_seconds,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            created_unix_ms: j.created_unix_ms,
            started_unix_ms: Some(j.started_unix_ms).filter(|&t| t > 0),
            finished_unix_ms: Some(j.finished_unix_ms).filter(|&t| t > 0),
            artifacts: j.artifacts.into_iter().map(Into::into).collect(),
            labels: j.labels.into_iter().collect(),
            priority: j.priority,
            node: Some(j.node).filter(|n| !n.is_empty()),
            attempt_history: j.attempt_history.into_iter().map(Into::into).collect(),
            kind: prune_proto::conversions::job_kind(j.kind),
            client: Some(j.client).filter(|c| !c.is_empty()),
            reported_unix_ms: Some(j.reported_unix_ms).filter(|&t| t > 0),
        })
    }
}

/// A training progress report of a running job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    pub step: i64,
    pub total_steps: i64,
    pub epoch: i64,
    /// Mean training loss and accuracy since the epoch began; `None` before the first batch
    /// (the engine then reports NaN).
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub sparsity: Vec<TensorSparsity>,
    pub eta_seconds: Option<f64>,
}

impl Progress {
    pub fn mean_sparsity(&self) -> Option<f64> {
        mean_sparsity(&self.sparsity)
    }
}

impl From<pb::Progress> for Progress {
    fn from(p: pb::Progress) -> Self {
        Progress {
            step: p.step,
            total_steps: p.total_steps,
            epoch: p.epoch,
            loss: Some(p.loss).filter(|v| v.is_finite()),
            accuracy: Some(p.accuracy).filter(|v| v.is_finite()),
            sparsity: p.sparsity.into_iter().map(Into::into).collect(),
            eta_seconds: p.eta_seconds,
        }
    }
}

/// One item of [`crate::Client::watch`]. As JSON: an object tagged `"event": "job" | "progress" |
/// "reconnecting"` with the variant's fields beside the tag.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    /// The whole job: first on every (re)connection, then at every state change.
    Job(Box<JobInfo>),
    Progress(Progress),
    /// The stream broke (e.g. the server restarts); the watch resumes after `retry_in_ms`.
    Reconnecting {
        attempt: u32,
        retry_in_ms: u64,
        reason: String,
    },
}

fn mean_sparsity(tensors: &[TensorSparsity]) -> Option<f64> {
    (!tensors.is_empty()).then(|| tensors.iter().map(|t| t.sparsity).sum::<f64>() / tensors.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_json_has_the_contract_fields() {
        let job = JobInfo::try_from(pb::Job {
            id: "job-1".into(),
            state: pb::JobState::Failed as i32,
            error: "data: bad".into(),
            step: 3,
            total_steps: 10,
            warnings: vec!["w".into()],
            ..Default::default()
        })
        .unwrap();
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["id"], "job-1");
        assert_eq!(v["state"], "FAILED");
        assert_eq!(v["step"], 3);
        assert_eq!(v["total_steps"], 10);
        assert_eq!(v["error"], "data: bad");
        assert_eq!(v["warnings"][0], "w");
        assert!(v["started_unix_ms"].is_null());
        assert_eq!(v["kind"], "service");
        let tracked = JobInfo::try_from(pb::Job {
            state: pb::JobState::Running as i32,
            kind: pb::JobKind::Tracked as i32,
            client: "host:42".into(),
            reported_unix_ms: 7,
            ..Default::default()
        })
        .unwrap();
        let v = serde_json::to_value(&tracked).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["client"].as_str(), v["reported_unix_ms"].as_i64()),
            (Some("tracked"), Some("host:42"), Some(7))
        );
    }

    #[test]
    fn no_error_is_null() {
        let job = JobInfo::try_from(pb::Job { state: pb::JobState::Running as i32, ..Default::default() }).unwrap();
        assert_eq!(serde_json::to_value(&job).unwrap()["error"], serde_json::Value::Null);
        let unspecified = JobInfo::try_from(pb::Job { id: "job-2".into(), ..Default::default() }).unwrap_err();
        assert!(unspecified.to_string().contains("job job-2: job state 0 is not a state"), "{unspecified}");
    }

    #[test]
    fn watch_events_are_tagged() {
        let ev = WatchEvent::Reconnecting { attempt: 1, retry_in_ms: 250, reason: "gone".into() };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["event"], "reconnecting");
        assert_eq!(v["attempt"], 1);
    }
}
