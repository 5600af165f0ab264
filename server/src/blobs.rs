//! The content-addressed blob store: models and data sets uploaded once, referenced by
//! `sha256:<hex>` from any number of jobs.
//!
//! An upload goes to a temporary file, is hashed as it arrives, and becomes visible only after
//! its size and checksum are verified, it is fsynced and renamed into place (and the directory
//! fsynced): a blob file that exists is always complete and correct.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

const PREFIX: &str = "sha256:";

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("`{0}` is not a blob id: expected `sha256:` followed by 64 lowercase hex digits")]
    InvalidId(String),
    #[error("`{0}` is not a sha256: expected 64 lowercase hex digits")]
    InvalidChecksum(String),
    #[error("upload is larger than the {expected} bytes its header announced")]
    TooLarge { expected: u64 },
    #[error("upload ended after {got} of the {expected} bytes its header announced")]
    Truncated { expected: u64, got: u64 },
    #[error("upload's sha256 is {got}, not the {expected} its header announced")]
    ChecksumMismatch { expected: String, got: String },
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

/// A validated `sha256:<64 lowercase hex>` id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobId(String);

impl BlobId {
    pub fn parse(id: &str) -> Result<Self, BlobError> {
        id.strip_prefix(PREFIX)
            .filter(|hex| is_sha256_hex(hex))
            .map(|_| BlobId(id.to_string()))
            .ok_or_else(|| BlobError::InvalidId(id.to_string()))
    }

    fn from_hex(hex: &str) -> Self {
        BlobId(format!("{PREFIX}{hex}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    /// `dir` holds the blobs, `tmp` (same file system) the uploads in progress.
    pub fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        BlobStore { dir, tmp }
    }

    /// Where the blob's file is (whether or not it exists).
    pub fn path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(id.hex())
    }

    /// Starts an upload of `size` bytes that must hash to `sha256` (lowercase hex).
    pub async fn begin(&self, size: u64, sha256: &str) -> Result<Upload, BlobError> {
        if !is_sha256_hex(sha256) {
            return Err(BlobError::InvalidChecksum(sha256.to_string()));
        }
        let tmp = tempfile::Builder::new().prefix("upload-").tempfile_in(&self.tmp)?;
        let (file, path) = tmp.into_parts();
        Ok(Upload {
            file: tokio::fs::File::from_std(file),
            path,
            hasher: Sha256::new(),
            written: 0,
            expected_size: size,
            expected_sha256: sha256.to_string(),
            final_path: self.dir.join(sha256),
        })
    }
}

/// An upload in progress; dropping it deletes the temporary file.
#[derive(Debug)]
pub struct Upload {
    file: tokio::fs::File,
    path: TempPath,
    hasher: Sha256,
    written: u64,
    expected_size: u64,
    expected_sha256: String,
    final_path: PathBuf,
}

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.written += chunk.len() as u64;
        if self.written > self.expected_size {
            return Err(BlobError::TooLarge { expected: self.expected_size });
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await?;
        Ok(())
    }

    /// Verifies size and checksum and moves the file into the store. Finishing an upload of
    /// a blob the store already has replaces it with identical bytes.
    pub async fn finish(mut self) -> Result<(BlobId, u64, PathBuf), BlobError> {
        if self.written != self.expected_size {
            return Err(BlobError::Truncated { expected: self.expected_size, got: self.written });
        }
        let got = hex::encode(self.hasher.finalize_reset());
        if got != self.expected_sha256 {
            return Err(BlobError::ChecksumMismatch { expected: self.expected_sha256, got });
        }
        self.file.flush().await?;
        self.file.sync_all().await?;
        drop(self.file);
        let final_path = self.final_path;
        let tmp = self.path;
        tokio::task::spawn_blocking({
            let final_path = final_path.clone();
            move || -> std::io::Result<()> {
                tmp.persist(&final_path).map_err(|e| e.error)?;
                sync_dir(final_path.parent().expect("blob paths have a parent"))
            }
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok((BlobId::from_hex(&got), self.written, final_path))
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (BlobStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        (BlobStore::new(dir.path().to_path_buf(), dir.path().join("tmp")), dir)
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[tokio::test]
    async fn verified_upload_lands_under_its_hash() {
        let (store, _dir) = store();
        let data = b"hello blobs";
        let mut up = store.begin(data.len() as u64, &sha(data)).await.unwrap();
        up.write(&data[..5]).await.unwrap();
        up.write(&data[5..]).await.unwrap();
        let (id, size, path) = up.finish().await.unwrap();
        assert_eq!(id.as_str(), format!("sha256:{}", sha(data)));
        assert_eq!((size, std::fs::read(&path).unwrap()), (data.len() as u64, data.to_vec()));
        assert_eq!(store.path(&id), path);
        assert_eq!(BlobId::parse(id.as_str()).unwrap(), id);

        // Idempotent: the same upload again succeeds with the same id.
        let mut again = store.begin(data.len() as u64, &sha(data)).await.unwrap();
        again.write(data).await.unwrap();
        assert_eq!(again.finish().await.unwrap().0, id);
    }

    #[tokio::test]
    async fn rejects_wrong_size_or_checksum_and_cleans_up() {
        let (store, dir) = store();
        let data = b"abc";
        let mut up = store.begin(3, &sha(b"abd")).await.unwrap();
        up.write(data).await.unwrap();
        assert!(matches!(up.finish().await, Err(BlobError::ChecksumMismatch { .. })));
        let mut up = store.begin(2, &sha(data)).await.unwrap();
        assert!(matches!(up.write(data).await, Err(BlobError::TooLarge { expected: 2 })));
        drop(up);
        let up = store.begin(3, &sha(data)).await.unwrap();
        assert!(matches!(up.finish().await, Err(BlobError::Truncated { expected: 3, got: 0 })));
        assert!(matches!(store.begin(3, "xyz").await, Err(BlobError::InvalidChecksum(_))));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(BlobId::parse("sha256:ABC").is_err());
    }
}
