//! `checkpoints`: what the engine reported writing, so a resume can pick the latest good one.

use super::leases::{fence, Fence};
use super::rows::{bigint, narrow, Columns};
use super::{now_ms, Db, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    pub step: i64,
    pub epoch: i64,
    /// Relative to the data directory.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

impl Db {
    /// A checkpoint at a step already recorded (a resumed attempt redoing steps) replaces it.
    /// Fenced: `NotCurrent` (nothing written) once the attempt is superseded or the job ended.
    pub async fn insert_checkpoint(&self, fence: Fence<'_>, c: &CheckpointRecord) -> Result<()> {
        let bytes = bigint("checkpoint bytes", c.bytes)?;
        with_pool!(self, |pool, backend| {
            let mut tx = backend::begin_write(pool).await?;
            fence!(tx, fence);
            sqlx::query(
                "INSERT INTO checkpoints (job_id, step, epoch, path, sha256, bytes, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (job_id, step) DO UPDATE SET \
                 epoch = excluded.epoch, path = excluded.path, sha256 = excluded.sha256, bytes = excluded.bytes, \
                 created_ms = excluded.created_ms",
            )
            .bind(fence.job_id)
            .bind(c.step)
            .bind(c.epoch)
            .bind(&c.path)
            .bind(&c.sha256)
            .bind(bytes)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Latest first: the order in which a resume tries them.
    pub async fn checkpoints_latest_first(&self, job_id: &str) -> Result<Vec<CheckpointRecord>> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT step, epoch, path, sha256, bytes FROM checkpoints WHERE job_id = $1 ORDER BY step DESC",
            )
            .bind(job_id)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(CheckpointRecord {
                        step: r.int("step")?,
                        epoch: r.int("epoch")?,
                        path: r.text("path")?,
                        sha256: r.text("sha256")?,
                        bytes: narrow("checkpoint bytes", r.int("bytes")?)?,
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{claim, new_job};
    use super::*;

    on_both_backends!(latest_first_and_replaced_on_redo);

    async fn latest_first_and_replaced_on_redo(db: Db) {
        assert!(db.insert_job(&new_job("job-a"), 100).await.unwrap());
        let fence = Fence { job_id: "job-a", attempt: claim(&db, "job-a").await };
        let at = |step: i64, sha: &str| CheckpointRecord {
            step,
            epoch: step / 10,
            path: format!("checkpoints/job-a/{step}"),
            sha256: sha.into(),
            bytes: 9,
        };
        for c in [at(10, "a"), at(30, "b"), at(20, "c"), at(30, "d")] {
            db.insert_checkpoint(fence, &c).await.unwrap();
        }
        let steps: Vec<(i64, String)> =
            db.checkpoints_latest_first("job-a").await.unwrap().into_iter().map(|c| (c.step, c.sha256)).collect();
        assert_eq!(steps, [(30, "d".to_string()), (20, "c".into()), (10, "a".into())]);
    }
}
