//! Prepares an attempt: resolves the spec's blob references to files and picks the checkpoint
//! to resume from.

use std::path::{Path, PathBuf};

use prune_engine::JobInputs;
use sha2::{Digest, Sha256};

use crate::blobs::{BlobError, BlobId, BlobStore};
use crate::config::DataDir;
use crate::protocol::WorkerRequest;
use crate::storage::{CheckpointRecord, Db, JobRecord, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{field}: {source}")]
    Blob { field: &'static str, source: BlobError },
    #[error("creating {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
}

#[derive(Debug)]
pub struct Prepared {
    pub request: WorkerRequest,
    /// The checkpoint it resumes from; `None`: from scratch.
    pub resumed: Option<CheckpointRecord>,
}

pub async fn prepare(
    db: &Db,
    blobs: &BlobStore,
    data_dir: &DataDir,
    job: &JobRecord,
) -> Result<Prepared, PrepareError> {
    let resumed = latest_good_checkpoint(db, data_dir, &job.id).await?;
    let blob = |field: &'static str, id: &Option<String>| -> Result<Option<PathBuf>, PrepareError> {
        id.as_deref()
            .map(|id| {
                BlobId::parse(id).map(|id| blobs.path(&id)).map_err(|source| PrepareError::Blob { field, source })
            })
            .transpose()
    };
    let spec = &job.spec;
    let inputs = JobInputs {
        model_file: blob("model.blob", &spec.model.blob)?,
        weights_file: blob("model.weights", &spec.model.weights)?,
        data_file: blob("data.blob", &spec.data.as_ref().and_then(|d| d.blob.clone()))?,
        checkpoint_dir: create_dir(data_dir.checkpoints(&job.id))?,
        artifact_dir: create_dir(data_dir.artifacts(&job.id))?,
        resume_from: resumed.as_ref().map(|c| data_dir.resolve(&c.path)),
        threads: job.threads as usize,
    };
    Ok(Prepared { request: WorkerRequest { job_id: job.id.clone(), spec: spec.clone(), inputs }, resumed })
}

fn create_dir(path: PathBuf) -> Result<PathBuf, PrepareError> {
    std::fs::create_dir_all(&path).map_err(|source| PrepareError::Dir { path: path.clone(), source })?;
    Ok(path)
}

/// The newest recorded checkpoint whose file is still there with the recorded sha256; older
/// ones are tried in turn (a torn or deleted file must not be resumed from). `None`: start over.
async fn latest_good_checkpoint(
    db: &Db,
    data_dir: &DataDir,
    job_id: &str,
) -> Result<Option<CheckpointRecord>, StorageError> {
    for checkpoint in db.checkpoints_latest_first(job_id).await? {
        let path = data_dir.resolve(&checkpoint.path);
        let expected = checkpoint.sha256.clone();
        let verdict = tokio::task::spawn_blocking(move || sha256_file(&path).map(|got| got == expected)).await;
        match verdict {
            Ok(Ok(true)) => return Ok(Some(checkpoint)),
            Ok(Ok(false)) => tracing::warn!(job_id, step = checkpoint.step, "checkpoint sha256 mismatch, skipping it"),
            Ok(Err(e)) => tracing::warn!(job_id, step = checkpoint.step, "checkpoint unreadable ({e}), skipping it"),
            Err(e) => tracing::warn!(job_id, step = checkpoint.step, "checking a checkpoint: {e}"),
        }
    }
    Ok(None)
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_support::{db, new_job};

    #[tokio::test]
    async fn resumes_from_the_newest_intact_checkpoint() {
        let (db, tmp) = db().await;
        let data_dir = DataDir::create(&tmp.path().join("data")).unwrap();
        assert!(db.insert_job(&new_job("job-a"), 100).await.unwrap());
        let dir = data_dir.checkpoints("job-a");
        std::fs::create_dir_all(&dir).unwrap();
        let record = |step: i64, content: &[u8], recorded: &[u8]| {
            let path = dir.join(format!("step-{step}"));
            std::fs::write(&path, content).unwrap();
            CheckpointRecord {
                step,
                epoch: 0,
                path: data_dir.relative(&path),
                sha256: hex::encode(Sha256::digest(recorded)),
                bytes: content.len() as u64,
            }
        };
        let good = record(10, b"ten", b"ten");
        let torn = record(20, b"twe", b"twenty");
        let gone = record(30, b"thirty", b"thirty");
        std::fs::remove_file(data_dir.resolve(&gone.path)).unwrap();
        for c in [&good, &torn, &gone] {
            db.insert_checkpoint("job-a", c).await.unwrap();
        }
        assert_eq!(latest_good_checkpoint(&db, &data_dir, "job-a").await.unwrap(), Some(good));
        assert_eq!(latest_good_checkpoint(&db, &data_dir, "job-b").await.unwrap(), None);
    }
}
