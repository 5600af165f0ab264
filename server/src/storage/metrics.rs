//! `metrics`: the time series of a job.

use super::leases::{fence, Fence};
use super::rows::Columns;
use super::{Db, Result};
use prune_core::domain::MetricPoint;

/// One point (`$1` job, `$2` name, `$3` step, `$4` value); a step already recorded is replaced.
pub(super) const UPSERT_METRIC: &str = "INSERT INTO metrics (job_id, name, step, value) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (job_id, name, step) DO UPDATE SET value = excluded.value";

impl Db {
    /// One transaction per batch (one engine `Metrics` event; non-finite values are dropped).
    /// Fenced: `NotCurrent` (nothing written) once the attempt is superseded or the job ended.
    pub async fn insert_metrics(&self, fence: Fence<'_>, points: &[MetricPoint]) -> Result<()> {
        let job_id = fence.job_id;
        with_pool!(self, |pool, backend| {
            let mut tx = backend::begin_write(pool).await?;
            fence!(tx, fence);
            upsert_points!(tx, job_id, points);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Ordered by name, then step; only names starting with `prefix` (taken literally: no
    /// LIKE wildcards, since parameter names contain `_`).
    pub async fn metrics(&self, job_id: &str, prefix: &str) -> Result<Vec<MetricPoint>> {
        self.metrics_page(job_id, prefix, None, u32::MAX).await
    }

    /// A page of [`Db::metrics`]: up to `limit` points after `(name, step)`.
    pub async fn metrics_page(
        &self,
        job_id: &str,
        prefix: &str,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> Result<Vec<MetricPoint>> {
        let (after_name, after_step) = after.map_or(("", i64::MIN), |(n, s)| (n, s));
        // substr/length count characters on both backends (PostgreSQL needs `$2` typed TEXT,
        // which sqlx's String binding gives it).
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT name, step, value FROM metrics WHERE job_id = $1 AND substr(name, 1, length($2)) = $2 \
                 AND (name > $3 OR (name = $3 AND step > $4)) ORDER BY name, step LIMIT $5",
            )
            .bind(job_id)
            .bind(prefix)
            .bind(after_name)
            .bind(after_step)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| Ok(MetricPoint { name: r.text("name")?, step: r.int("step")?, value: r.float("value")? }))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{claim, new_job};
    use super::*;

    on_both_backends!(batches_upsert_and_filter_by_literal_prefix);

    fn point(step: i64, name: &str, value: f64) -> MetricPoint {
        MetricPoint { step, name: name.into(), value }
    }

    async fn batches_upsert_and_filter_by_literal_prefix(db: Db) {
        assert!(db.insert_job(&new_job("job-a"), 100).await.unwrap());
        let fence = Fence { job_id: "job-a", attempt: claim(&db, "job-a").await };
        db.insert_metrics(
            fence,
            &[point(1, "loss", 2.0), point(1, "sparsity/0.weight", 0.5), point(1, "val_loss", f64::NAN)],
        )
        .await
        .unwrap();
        db.insert_metrics(fence, &[point(1, "loss", 2.5), point(2, "loss", 1.0), point(2, "sparsityX", 0.1)])
            .await
            .unwrap();
        assert_eq!(db.metrics("job-a", "").await.unwrap().len(), 4);
        assert_eq!(db.metrics("job-a", "loss").await.unwrap(), [point(1, "loss", 2.5), point(2, "loss", 1.0)]);
        assert_eq!(db.metrics("job-a", "sparsity/").await.unwrap(), [point(1, "sparsity/0.weight", 0.5)]);
        assert_eq!(db.metrics("job-a", "_").await.unwrap(), []);
        let page = db.metrics_page("job-a", "", Some(("loss", 1)), 2).await.unwrap();
        assert_eq!(page, [point(2, "loss", 1.0), point(1, "sparsity/0.weight", 0.5)]);
    }
}
