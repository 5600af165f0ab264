//! Prepares an attempt: the worker's request (blob ids in the spec, store keys for checkpoints
//! and artifacts) and the checkpoint to resume from.

use std::sync::Arc;

use prune_core::worker_protocol::{WorkerInputs, WorkerRequest};
use prune_store::{FileStore, Key};

use crate::storage::{CheckpointRecord, Db, JobKind, JobRecord, StorageError};

#[derive(Debug)]
pub struct Prepared {
    pub request: WorkerRequest,
    /// The checkpoint it resumes from; `None`: from scratch.
    pub resumed: Option<CheckpointRecord>,
}

/// Attempt `attempt` writes under keys of its own (`Key::attempt_*_prefix`).
pub async fn prepare(
    db: &Db,
    store: &Arc<dyn FileStore>,
    job: &JobRecord,
    attempt: u32,
) -> Result<Prepared, StorageError> {
    let resumed = latest_good_checkpoint(db, store, &job.id).await?;
    let inputs = WorkerInputs {
        checkpoint_prefix: Key::attempt_checkpoints_prefix(&job.id, attempt),
        artifact_prefix: Key::attempt_artifacts_prefix(&job.id, attempt),
        resume_from: resumed.as_ref().map(|c| c.path.clone()),
        threads: job.threads as usize,
        masks_applied: job.kind == JobKind::Tracked,
    };
    Ok(Prepared { request: WorkerRequest { job_id: job.id.clone(), spec: job.spec.clone(), inputs }, resumed })
}

/// The newest recorded checkpoint still in the store with the recorded sha256; older ones are
/// tried in turn (a torn or deleted file must not be resumed from). `None`: start over.
async fn latest_good_checkpoint(
    db: &Db,
    store: &Arc<dyn FileStore>,
    job_id: &str,
) -> Result<Option<CheckpointRecord>, StorageError> {
    for checkpoint in db.checkpoints_latest_first(job_id).await? {
        let expected = checkpoint.sha256.clone();
        let (store, key) = (store.clone(), checkpoint.path.clone());
        let verdict = tokio::task::spawn_blocking(move || {
            let key = Key::parse(key).map_err(|e| e.to_string())?;
            store.sha256(&key).map(|got| got == expected).map_err(|e| e.to_string())
        })
        .await;
        match verdict {
            Ok(Ok(true)) => return Ok(Some(checkpoint)),
            Ok(Ok(false)) => tracing::warn!(job_id, step = checkpoint.step, "checkpoint sha256 mismatch, skipping it"),
            Ok(Err(e)) => tracing::warn!(job_id, step = checkpoint.step, "checkpoint unreadable ({e}), skipping it"),
            Err(e) => tracing::warn!(job_id, step = checkpoint.step, "checking a checkpoint: {e}"),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_support::{claim, db, new_job};
    use crate::storage::Fence;
    use sha2::{Digest, Sha256};

    #[tokio::test]
    async fn resumes_from_the_newest_intact_checkpoint() {
        let (db, tmp) = db().await;
        let local = prune_store::LocalStore::new(tmp.path().join("data"));
        let store: Arc<dyn FileStore> = Arc::new(local.clone());
        assert!(db.insert_job(&new_job("job-a"), 100).await.unwrap());
        let fence = Fence { job_id: "job-a", attempt: claim(&db, "job-a").await };
        let dir = local.root().join(Key::checkpoints_prefix("job-a"));
        std::fs::create_dir_all(&dir).unwrap();
        let record = |step: i64, content: &[u8], recorded: &[u8]| {
            let key = format!("{}step-{step}", Key::checkpoints_prefix("job-a"));
            std::fs::write(local.root().join(&key), content).unwrap();
            CheckpointRecord {
                step,
                epoch: 0,
                path: key,
                sha256: hex::encode(Sha256::digest(recorded)),
                bytes: content.len() as u64,
            }
        };
        let good = record(10, b"ten", b"ten");
        let torn = record(20, b"twe", b"twenty");
        let gone = record(30, b"thirty", b"thirty");
        std::fs::remove_file(local.root().join(&gone.path)).unwrap();
        for c in [&good, &torn, &gone] {
            db.insert_checkpoint(fence, c).await.unwrap();
        }
        assert_eq!(latest_good_checkpoint(&db, &store, "job-a").await.unwrap(), Some(good));
        assert_eq!(latest_good_checkpoint(&db, &store, "job-b").await.unwrap(), None);
        let prepared = prepare(&db, &store, &db.job("job-a").await.unwrap().unwrap(), 2).await.unwrap();
        assert_eq!(prepared.request.inputs.resume_from.as_deref(), Some("checkpoints/job-a/step-10"));
        assert_eq!(prepared.request.inputs.artifact_prefix, "artifacts/job-a/attempt-2/");
        assert_eq!(prepared.request.inputs.checkpoint_prefix, "checkpoints/job-a/attempt-2/");
    }
}
