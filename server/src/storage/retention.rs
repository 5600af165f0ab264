//! Deleting finished jobs (DeleteJob, `--retention-days`) and collecting blobs nobody uses.

use std::collections::HashSet;

use prune_core::JobSpec;

use super::jobs::JobState;
use super::rows::Columns;
use super::{Db, Result};

/// What [`Db::delete_job`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Yes,
    /// QUEUED or RUNNING: cancel it first.
    Active(JobState),
    NotFound,
}

/// The child tables of `jobs`, deleted first (their foreign keys point at the job).
const CHILD_TABLES: [&str; 6] = ["attempts", "checkpoints", "metrics", "artifact_files", "job_labels", "job_logs"];

impl Db {
    /// Removes a finished (SUCCEEDED, FAILED, CANCELLED) job of `tenant` with every row that
    /// belongs to it, in one transaction; a job still QUEUED or RUNNING stays. The caller
    /// removes its files from the store.
    pub async fn delete_job(&self, tenant: &str, id: &str) -> Result<Deleted> {
        let Some(job) = self.tenant_job(tenant, id).await? else { return Ok(Deleted::NotFound) };
        if !job.state.is_terminal() {
            return Ok(Deleted::Active(job.state));
        }
        with_pool!(self, |pool, backend| {
            let mut tx = backend::begin_write(pool).await?;
            // Re-checked under the write lock: a job is never deleted while it can still run.
            let terminal = sqlx::query("SELECT state FROM jobs WHERE id = $1 AND tenant = $2")
                .bind(id)
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.text("state"))
                .transpose()?;
            match terminal.as_deref().map(str::parse::<JobState>) {
                None => return Ok(Deleted::NotFound),
                Some(Ok(state)) if !state.is_terminal() => return Ok(Deleted::Active(state)),
                _ => {}
            }
            for table in CHILD_TABLES {
                sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE job_id = $1")))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM jobs WHERE id = $1").bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(Deleted::Yes)
    }

    /// Finished jobs (any tenant) that finished before `before_ms`: (tenant, id), oldest first.
    pub async fn jobs_finished_before(&self, before_ms: i64, limit: u32) -> Result<Vec<(String, String)>> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT tenant, id FROM jobs WHERE state IN ($1, $2, $3) AND finished_ms < $4 ORDER BY finished_ms LIMIT $5",
            )
            .bind(JobState::Succeeded.as_str())
            .bind(JobState::Failed.as_str())
            .bind(JobState::Cancelled.as_str())
            .bind(before_ms)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter().map(|r| Ok((r.text("tenant")?, r.text("id")?))).collect()
        })
    }

    /// Blobs created before `before_ms` that no job's spec references: (id, store key).
    pub async fn unreferenced_blobs(&self, before_ms: i64) -> Result<Vec<(String, String)>> {
        let (blobs, specs): (Vec<(String, String)>, Vec<String>) = with_pool!(self, |pool| {
            let blobs = sqlx::query("SELECT id, path FROM blobs WHERE created_ms < $1")
                .bind(before_ms)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((r.text("id")?, r.text("path")?)))
                .collect::<Result<Vec<_>>>()?;
            let specs = sqlx::query("SELECT spec_json FROM jobs")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.text("spec_json"))
                .collect::<Result<Vec<_>>>()?;
            (blobs, specs)
        });
        let mut used = HashSet::new();
        for spec in &specs {
            // A spec that no longer parses keeps nothing alive, but is logged: it is a bug.
            match serde_json::from_str::<JobSpec>(spec) {
                Ok(spec) => used.extend(spec.blob_refs().into_iter().map(|(_, id)| id.to_string())),
                Err(e) => tracing::warn!("a stored spec does not parse ({e}); its blobs are not protected"),
            }
        }
        Ok(blobs.into_iter().filter(|(id, _)| !used.contains(id)).collect())
    }

    /// Removes a blob's rows (the caller removes the file).
    pub async fn delete_blob(&self, id: &str) -> Result<()> {
        with_pool!(self, |pool, backend| {
            let mut tx = backend::begin_write(pool).await?;
            sqlx::query("DELETE FROM blob_owners WHERE blob_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM blobs WHERE id = $1").bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{claim, new_job};
    use super::super::{BlobRecord, CheckpointRecord, Fence, JobEnd};
    use super::*;

    on_both_backends!(finished_jobs_are_deleted_with_their_rows, unreferenced_blobs_are_found);

    async fn finished_jobs_are_deleted_with_their_rows(db: Db) {
        assert!(db.insert_job(&new_job("job-a"), 100).await.unwrap());
        assert_eq!(db.delete_job("default", "job-a").await.unwrap(), Deleted::Active(JobState::Queued));
        let fence = Fence { job_id: "job-a", attempt: claim(&db, "job-a").await };
        assert_eq!(db.delete_job("default", "job-a").await.unwrap(), Deleted::Active(JobState::Running));
        let c = CheckpointRecord { step: 1, epoch: 0, path: "k".into(), sha256: "s".into(), bytes: 1 };
        db.insert_checkpoint(fence, &c).await.unwrap();
        let end = JobEnd { state: JobState::Failed, error: Some("x"), report: None, artifacts: &[] };
        db.finish_attempt_job(fence, &end).await.unwrap();
        assert_eq!(db.delete_job("bob", "job-a").await.unwrap(), Deleted::NotFound, "another tenant's");
        let finished = db.jobs_finished_before(i64::MAX, 10).await.unwrap();
        assert_eq!(finished, [("default".to_string(), "job-a".to_string())]);
        assert_eq!(db.delete_job("default", "job-a").await.unwrap(), Deleted::Yes);
        assert!(db.job("job-a").await.unwrap().is_none());
        assert!(db.checkpoints_latest_first("job-a").await.unwrap().is_empty());
        assert!(db.attempts("job-a").await.unwrap().is_empty());
        assert_eq!(db.delete_job("default", "job-a").await.unwrap(), Deleted::NotFound);
    }

    async fn unreferenced_blobs_are_found(db: Db) {
        let hex = "ab".repeat(32);
        let used = format!("sha256:{hex}");
        let mut job = new_job("job-a");
        let mut spec = prune_core::JobSpec::default();
        spec.model.blob = Some(used.clone());
        job.spec_json = serde_json::to_string(&spec).unwrap();
        assert!(db.insert_job(&job, 100).await.unwrap());
        for id in [used.as_str(), "sha256:cd"] {
            db.insert_blob("default", &BlobRecord { id: id.into(), size: 1, path: format!("blobs/{id}") })
                .await
                .unwrap();
        }
        let free = db.unreferenced_blobs(i64::MAX).await.unwrap();
        assert_eq!(free, [("sha256:cd".to_string(), "blobs/sha256:cd".to_string())]);
        assert!(db.unreferenced_blobs(0).await.unwrap().is_empty(), "within the grace period");
        db.delete_blob("sha256:cd").await.unwrap();
        assert!(db.tenant_blob("default", "sha256:cd").await.unwrap().is_none());
    }
}
