//! Deleting jobs and what they left in the store: DeleteJob, `--retention-days` expiry, and the
//! collection of blobs no job references.

use std::sync::Arc;
use std::time::Duration;

use prune_store::{FileStore, Key};
use tokio_util::sync::CancellationToken;

use crate::storage::{now_ms, Db, Deleted, StorageError};

/// How often expiry and blob collection run.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Jobs deleted per sweep (the next sweep takes the rest).
const SWEEP_BATCH: u32 = 1000;

/// Removes a finished job's rows, then its checkpoints and artifacts from the store.
pub async fn delete_job(db: &Db, store: &Arc<dyn FileStore>, tenant: &str, id: &str) -> Result<Deleted, StorageError> {
    let deleted = db.delete_job(tenant, id).await?;
    if deleted == Deleted::Yes {
        tracing::info!(job_id = id, tenant, "job deleted");
        remove_files(store.clone(), vec![Key::checkpoints_prefix(id), Key::artifacts_prefix(id)]).await;
    }
    Ok(deleted)
}

/// Removes everything under each key prefix (`checkpoints/<job>/`, ...) on a blocking thread; a
/// failure is logged (the objects stay, nothing else depends on them).
pub async fn remove_files(store: Arc<dyn FileStore>, prefixes: Vec<String>) {
    let removed = tokio::task::spawn_blocking(move || {
        for prefix in prefixes {
            let result = Key::parse(prefix.trim_end_matches('/'))
                .map_err(|e| e.to_string())
                .and_then(|k| store.delete_all(&k).map_err(|e| e.to_string()));
            if let Err(e) = result {
                tracing::warn!(prefix, "removing files from the store: {e}");
            }
        }
    })
    .await;
    if let Err(e) = removed {
        tracing::warn!("removing files from the store: {e}");
    }
}

/// What one sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub jobs: usize,
    pub blobs: usize,
}

/// Deletes jobs finished more than `retention` ago (when set), then blobs older than
/// `blob_grace` that no remaining job references (an upload in progress is not a blob yet, and
/// a blob just uploaded for a job about to be submitted is within the grace period).
pub async fn sweep_once(
    db: &Db,
    store: &Arc<dyn FileStore>,
    retention: Option<Duration>,
    blob_grace: Option<Duration>,
) -> Result<Swept, StorageError> {
    let mut swept = Swept::default();
    if let Some(retention) = retention {
        let before = now_ms().saturating_sub(retention.as_millis() as i64);
        for (tenant, id) in db.jobs_finished_before(before, SWEEP_BATCH).await? {
            if delete_job(db, store, &tenant, &id).await? == Deleted::Yes {
                swept.jobs += 1;
            }
        }
    }
    let Some(blob_grace) = blob_grace else { return Ok(swept) };
    let before = now_ms().saturating_sub(blob_grace.as_millis() as i64);
    for (id, path) in db.unreferenced_blobs(before).await? {
        db.delete_blob(&id).await?;
        let store = store.clone();
        let removed = tokio::task::spawn_blocking(move || {
            Key::parse(path.as_str())
                .map_err(|e| e.to_string())
                .and_then(|k| store.delete(&k).map_err(|e| e.to_string()))
        })
        .await;
        match removed {
            Ok(Ok(())) => tracing::info!(blob = id, "collected a blob no job references"),
            Ok(Err(e)) => tracing::warn!(blob = id, "removing a collected blob's file: {e}"),
            Err(e) => tracing::warn!(blob = id, "removing a collected blob's file: {e}"),
        }
        swept.blobs += 1;
    }
    Ok(swept)
}

/// Sweeps every hour until `shutdown` (`--retention-days`, `--blob-grace-hours`; nothing to do
/// when both are off).
pub fn start(
    db: Db,
    store: Arc<dyn FileStore>,
    retention: Option<Duration>,
    blob_grace: Option<Duration>,
    shutdown: CancellationToken,
) {
    if retention.is_none() && blob_grace.is_none() {
        return;
    }
    tokio::spawn(async move {
        loop {
            match sweep_once(&db, &store, retention, blob_grace).await {
                Ok(Swept { jobs: 0, blobs: 0 }) => {}
                Ok(swept) => tracing::info!(jobs = swept.jobs, blobs = swept.blobs, "retention sweep"),
                Err(e) => tracing::warn!("retention sweep: {e}"),
            }
            tokio::select! {
                () = tokio::time::sleep(SWEEP_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_support::{claim, db, new_job};
    use crate::storage::{BlobRecord, Fence, JobEnd, JobState};

    #[tokio::test]
    async fn expired_jobs_and_unused_blobs_go_with_their_files() {
        let (db, tmp) = db().await;
        let local = prune_store::LocalStore::new(tmp.path().join("store"));
        let store: Arc<dyn FileStore> = Arc::new(local.clone());
        assert!(db.insert_job(&new_job("job-a"), 100).await.unwrap());
        assert!(db.insert_job(&new_job("job-b"), 100).await.unwrap());
        let fence = Fence { job_id: "job-a", attempt: claim(&db, "job-a").await };
        let end = JobEnd { state: JobState::Succeeded, error: None, report: None, artifacts: &[] };
        db.finish_attempt_job(fence, &end).await.unwrap();
        let artifact = local.root().join("artifacts/job-a/attempt-1/model.safetensors");
        std::fs::create_dir_all(artifact.parent().unwrap()).unwrap();
        std::fs::write(&artifact, b"x").unwrap();
        let blob = local.root().join("blobs/cd");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"y").unwrap();
        db.insert_blob("default", &BlobRecord { id: "sha256:cd".into(), size: 1, path: "blobs/cd".into() })
            .await
            .unwrap();

        // Nothing is old enough yet.
        let kept =
            sweep_once(&db, &store, Some(Duration::from_secs(3600)), Some(Duration::from_secs(3600))).await.unwrap();
        assert_eq!(kept, Swept::default());
        let swept = sweep_once(&db, &store, Some(Duration::ZERO), Some(Duration::ZERO)).await.unwrap();
        // `now - 0` may equal the finish time to the millisecond: retry once the clock moved.
        let swept = if swept.jobs == 0 {
            let again = sweep_once(&db, &store, Some(Duration::ZERO), Some(Duration::ZERO)).await.unwrap();
            Swept { jobs: again.jobs, blobs: swept.blobs + again.blobs }
        } else {
            swept
        };
        assert_eq!(swept, Swept { jobs: 1, blobs: 1 });
        assert!(db.job("job-a").await.unwrap().is_none());
        assert!(db.job("job-b").await.unwrap().is_some(), "a queued job is never expired");
        assert!(!artifact.exists() && !blob.exists());
    }
}
