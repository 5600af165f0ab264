//! Database records and live state -> gRPC messages.

use prune_core::domain::TensorSparsity;
use prune_proto as pb;

use crate::api::convert::spec_to_proto;
use crate::jobs::live::{LiveJob, Progress};
use crate::storage::{ArtifactRecord, AttemptRecord, JobRecord, JobState};

/// The job as stored, overlaid with the running attempt's live progress (fresher than the
/// row, which is written only every few seconds).
pub fn job(
    record: &JobRecord,
    live: Option<&LiveJob>,
    artifacts: &[ArtifactRecord],
    attempts: &[AttemptRecord],
) -> pb::Job {
    let running = record.state == JobState::Running;
    let live = live.filter(|_| running);
    let progress = live.and_then(|l| l.progress.as_ref());
    let finite = |v: f64| v.is_finite().then_some(v);
    let mut job = pb::Job {
        id: record.id.clone(),
        name: record.name.clone(),
        state: pb::JobState::from(record.state).into(),
        error: record.error.clone().unwrap_or_default(),
        attempts: record.attempts,
        max_attempts: record.max_attempts,
        step: record.step,
        total_steps: record.total_steps,
        epoch: record.epoch,
        created_unix_ms: record.created_ms,
        started_unix_ms: record.started_ms.unwrap_or(0),
        finished_unix_ms: record.finished_ms.unwrap_or(0),
        warnings: record.warnings.clone(),
        spec: Some(spec_to_proto(&record.spec)),
        loss: record.loss,
        accuracy: record.accuracy,
        sparsity: sparsity(&record.sparsity),
        worker_pid: live.and_then(|l| l.worker_pid).map_or(0, |pid| pid as i32),
        threads: record.threads,
        artifacts: artifacts.iter().map(artifact).collect(),
        eta_seconds: None,
        node: record.node.clone().unwrap_or_default(),
        attempt_history: attempts.iter().map(attempt).collect(),
        labels: record.labels.clone().into_iter().collect(),
        priority: record.priority as i32,
        kind: pb::JobKind::from(record.kind).into(),
        client: record.client.clone().unwrap_or_default(),
        reported_unix_ms: record.reported_ms.unwrap_or(0),
    };
    if let Some(p) = progress {
        job.step = p.step;
        job.total_steps = p.total_steps.max(job.total_steps);
        job.epoch = p.epoch;
        job.loss = finite(p.loss).or(job.loss);
        job.accuracy = finite(p.accuracy).or(job.accuracy);
        job.sparsity = sparsity(&p.sparsity);
        job.eta_seconds = p.eta_seconds;
    }
    job
}

fn attempt(a: &AttemptRecord) -> pb::AttemptInfo {
    pb::AttemptInfo {
        number: a.number,
        node: a.node.clone(),
        resumed_step: a.resumed_step,
        outcome: a.outcome.clone().unwrap_or_default(),
        error: a.error.clone().unwrap_or_default(),
        started_unix_ms: a.started_ms,
        finished_unix_ms: a.finished_ms.unwrap_or(0),
    }
}

pub fn progress(p: &Progress) -> pb::Progress {
    pb::Progress {
        step: p.step,
        total_steps: p.total_steps,
        epoch: p.epoch,
        loss: p.loss,
        accuracy: p.accuracy,
        sparsity: sparsity(&p.sparsity),
        eta_seconds: p.eta_seconds,
    }
}

fn sparsity(s: &[TensorSparsity]) -> Vec<pb::TensorSparsity> {
    s.iter().map(Into::into).collect()
}

pub fn artifact(a: &ArtifactRecord) -> pb::ArtifactInfo {
    pb::ArtifactInfo {
        format: a.format.clone(),
        size: a.bytes,
        sha256: a.sha256.clone(),
        compression: a.compression.clone(),
        sparse_format: a.sparse_format.clone(),
        file_name: file_name(a),
    }
}

/// The file's name: the last part of its store key.
pub fn file_name(a: &ArtifactRecord) -> String {
    std::path::Path::new(&a.path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_file_name_is_the_stored_name() {
        let a = ArtifactRecord {
            format: "safetensors".into(),
            path: "artifacts/job-1/model.safetensors.zst".into(),
            sha256: "ab".into(),
            bytes: 3,
            compression: "zstd".into(),
            sparse_format: "dense".into(),
        };
        assert_eq!(artifact(&a).file_name, "model.safetensors.zst");
    }
}
