//! `blobs`: which content-addressed files the store holds (the files are in `blobs/`).

use super::rows::{bigint, narrow, Columns};
use super::{now_ms, Db, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    pub id: String,
    pub size: u64,
    /// Relative to the data directory.
    pub path: String,
}

impl Db {
    /// Records the blob (idempotent: same content, same id) and that `tenant` uploaded it.
    pub async fn insert_blob(&self, tenant: &str, blob: &BlobRecord) -> Result<()> {
        let size = bigint("blob size", blob.size)?;
        let now = now_ms();
        with_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO blobs (id, size, path, created_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&blob.id)
            .bind(size)
            .bind(&blob.path)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO blob_owners (blob_id, tenant, created_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (blob_id, tenant) DO NOTHING",
            )
            .bind(&blob.id)
            .bind(tenant)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The blob, if `tenant` uploaded it; `None` both when nobody did and when only others did.
    pub async fn tenant_blob(&self, tenant: &str, id: &str) -> Result<Option<BlobRecord>> {
        with_pool!(self, |pool| {
            let row = sqlx::query(
                "SELECT b.id, b.size, b.path FROM blobs b JOIN blob_owners o ON o.blob_id = b.id \
                 WHERE b.id = $1 AND o.tenant = $2",
            )
            .bind(id)
            .bind(tenant)
            .fetch_optional(pool)
            .await?;
            row.map(|r| {
                Ok(BlobRecord { id: r.text("id")?, size: narrow("blob size", r.int("size")?)?, path: r.text("path")? })
            })
            .transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    on_both_backends!(insert_is_idempotent_and_blobs_are_seen_by_their_uploaders_only);

    async fn insert_is_idempotent_and_blobs_are_seen_by_their_uploaders_only(db: Db) {
        let blob = BlobRecord { id: "sha256:ab".into(), size: 3, path: "blobs/ab".into() };
        db.insert_blob("alice", &blob).await.unwrap();
        db.insert_blob("alice", &blob).await.unwrap();
        assert_eq!(db.tenant_blob("alice", "sha256:ab").await.unwrap(), Some(blob.clone()));
        assert_eq!(db.tenant_blob("alice", "sha256:cd").await.unwrap(), None);
        assert_eq!(db.tenant_blob("bob", "sha256:ab").await.unwrap(), None);
        db.insert_blob("bob", &blob).await.unwrap();
        assert_eq!(db.tenant_blob("bob", "sha256:ab").await.unwrap(), Some(blob));
    }
}
