//! `blobs`: which content-addressed files the store holds (the files are in `blobs/`).

use sqlx::Row;

use super::{now_ms, Db, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    pub id: String,
    pub size: u64,
    /// Relative to the data directory.
    pub path: String,
}

impl Db {
    /// Idempotent: recording a blob twice keeps the first row (same content, same id).
    pub async fn insert_blob(&self, blob: &BlobRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO blobs (id, size, path, created_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&blob.id)
        .bind(blob.size as i64)
        .bind(&blob.path)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn blob(&self, id: &str) -> Result<Option<BlobRecord>> {
        let row =
            sqlx::query("SELECT id, size, path FROM blobs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| {
            Ok(BlobRecord { id: r.try_get("id")?, size: r.try_get::<i64, _>("size")? as u64, path: r.try_get("path")? })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::db;
    use super::*;

    #[tokio::test]
    async fn insert_is_idempotent() {
        let (db, _dir) = db().await;
        let blob = BlobRecord { id: "sha256:ab".into(), size: 3, path: "blobs/ab".into() };
        db.insert_blob(&blob).await.unwrap();
        db.insert_blob(&blob).await.unwrap();
        assert_eq!(db.blob("sha256:ab").await.unwrap(), Some(blob));
        assert_eq!(db.blob("sha256:cd").await.unwrap(), None);
    }
}
