//! `artifact_files`: the exported files of SUCCEEDED jobs (one or more per format).

use super::rows::{narrow, Columns};
use super::{Db, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    pub format: String,
    /// Relative to the data directory.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    pub compression: String,
    pub sparse_format: String,
}

/// One artifact row (`$1` job .. `$7` sparse format); a job's artifacts are written once, by
/// the attempt that commits the job (`Db::finish_attempt_job`).
pub(super) const INSERT_ARTIFACT: &str = "INSERT INTO artifact_files (job_id, format, path, sha256, bytes, \
     compression, sparse_format) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (job_id, path) DO UPDATE SET \
     format = excluded.format, sha256 = excluded.sha256, bytes = excluded.bytes, \
     compression = excluded.compression, sparse_format = excluded.sparse_format";

impl Db {
    #[cfg(test)]
    pub async fn insert_artifacts(&self, job_id: &str, artifacts: &[ArtifactRecord]) -> Result<()> {
        let sizes =
            artifacts.iter().map(|a| super::rows::bigint("artifact bytes", a.bytes)).collect::<Result<Vec<_>>>()?;
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            for (a, bytes) in artifacts.iter().zip(&sizes) {
                sqlx::query(INSERT_ARTIFACT)
                    .bind(job_id)
                    .bind(&a.format)
                    .bind(&a.path)
                    .bind(&a.sha256)
                    .bind(*bytes)
                    .bind(&a.compression)
                    .bind(&a.sparse_format)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Ordered by format name, then store key (a sharded set's files in name order).
    pub async fn artifacts(&self, job_id: &str) -> Result<Vec<ArtifactRecord>> {
        with_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT format, path, sha256, bytes, compression, sparse_format FROM artifact_files \
                 WHERE job_id = $1 ORDER BY format, path",
            )
            .bind(job_id)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(ArtifactRecord {
                        format: r.text("format")?,
                        path: r.text("path")?,
                        sha256: r.text("sha256")?,
                        bytes: narrow("artifact bytes", r.int("bytes")?)?,
                        compression: r.text("compression")?,
                        sparse_format: r.text("sparse_format")?,
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::new_job;
    use super::*;

    on_both_backends!(round_trip);

    async fn round_trip(db: Db) {
        assert!(db.insert_job(&new_job("job-a"), 100).await.unwrap());
        let a = ArtifactRecord {
            format: "safetensors".into(),
            path: "artifacts/job-a/model.safetensors.zst".into(),
            sha256: "ab".into(),
            bytes: 10,
            compression: "zstd".into(),
            sparse_format: "dense".into(),
        };
        db.insert_artifacts("job-a", std::slice::from_ref(&a)).await.unwrap();
        assert_eq!(db.artifacts("job-a").await.unwrap(), [a]);
        assert_eq!(db.artifacts("job-b").await.unwrap(), []);
    }
}
