//! The file store: where blobs, checkpoints and artifacts live, addressed by key.
//!
//! Keys are relative, `/`-separated paths (`blobs/<sha256 hex>`, `checkpoints/<job>/<file>`,
//! `artifacts/<job>/<file>`): the database and the worker protocol name files only by key, so
//! a job's files can move to another store (an object store shared by several nodes) without
//! either changing. [`LocalStore`] is today's data directory. A new backend implements
//! [`FileStore`] and is chosen by URL in [`open`]; see `docs/architecture.md`.

mod key;
mod local;
mod object;
pub mod s3s;

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use key::{Key, KeyError};
pub use local::LocalStore;
pub use object::ObjectStoreS3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{key}: not in the store")]
    NotFound { key: String },
    #[error("{key}: {source}")]
    Io { key: String, source: std::io::Error },
    #[error("store URL {url}: {reason}")]
    Url { url: String, reason: String },
}

impl StoreError {
    pub(crate) fn io(key: &Key, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotFound { key: key.to_string() }
        } else {
            StoreError::Io { key: key.to_string(), source }
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Blobs, checkpoints and artifacts by key. Objects are immutable once put: a reader sees a
/// whole object or none. Blocking calls: async callers run them on a blocking thread.
pub trait FileStore: Send + Sync + std::fmt::Debug {
    /// The store's URL (`file:///var/prune`), for logs and for the worker's command line.
    fn url(&self) -> String;

    /// Where the object (or, for a prefix, the objects) under `key` lie on this machine, when the
    /// store is a local directory: readers may open it in place and a file written there is
    /// published by [`FileStore::put`] without a copy. `None` for remote stores.
    fn local_path(&self, key: &Key) -> Option<PathBuf>;

    /// Publishes the finished local file `src` under `key` (a rename where `src` is on the
    /// store's file system, a copy otherwise), atomically and durably.
    fn put(&self, key: &Key, src: &Path) -> Result<()>;

    /// Makes `key` a second name of the local file `src` while it is still being written (an
    /// upload in progress): readers of `key` see what `src` holds at the time, with no copy.
    /// The one exception to immutable objects, for resumable uploads. `Ok(false)`: this store
    /// cannot (a remote one, or `src` on another file system); the caller copies instead.
    fn link(&self, _key: &Key, _src: &Path) -> Result<bool> {
        Ok(false)
    }

    /// Reads the object from byte `offset` on.
    fn open(&self, key: &Key, offset: u64) -> Result<Box<dyn Read + Send>>;

    /// The object's size; [`StoreError::NotFound`] when there is none.
    fn size(&self, key: &Key) -> Result<u64>;

    /// Removes the object; removing a missing one is not an error.
    fn delete(&self, key: &Key) -> Result<()>;

    /// Removes every object under `prefix/` (a job's checkpoints); none there is not an error.
    fn delete_all(&self, prefix: &Key) -> Result<()>;

    /// A cheap request that fails when the store cannot be used (unreachable, no such bucket,
    /// refused credentials); the server calls it at start-up.
    fn probe(&self) -> Result<()> {
        Ok(())
    }

    /// The object as a local file: in place for a local store, else copied to `scratch`.
    fn fetch(&self, key: &Key, scratch: &Path) -> Result<PathBuf> {
        if let Some(path) = self.local_path(key) {
            return Ok(path);
        }
        let dest = scratch.join(key.as_str());
        let io = |e| StoreError::io(key, e);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut reader = self.open(key, 0)?;
        let mut file = std::fs::File::create(&dest).map_err(io)?;
        std::io::copy(&mut reader, &mut file).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(dest)
    }

    /// Lowercase hex sha256 of the object.
    fn sha256(&self, key: &Key) -> Result<String> {
        let mut hasher = Sha256::new();
        std::io::copy(&mut self.open(key, 0)?, &mut hasher).map_err(|e| StoreError::io(key, e))?;
        Ok(hex::encode(hasher.finalize()))
    }
}

/// Opens the store a URL names: `file:///abs/dir`, a plain directory path, or
/// `s3://bucket/prefix` (an S3-compatible object store configured by the `AWS_*` variables).
pub fn open(url: &str) -> Result<Box<dyn FileStore>> {
    let bad = |reason: &str| StoreError::Url { url: url.to_string(), reason: reason.to_string() };
    match url.split_once("://") {
        Some(("file", path)) if path.starts_with('/') => Ok(Box::new(LocalStore::new(PathBuf::from(path)))),
        Some(("file", _)) => Err(bad("a file:// URL needs an absolute path (file:///var/prune)")),
        Some(("s3", _)) => Ok(Box::new(ObjectStoreS3::from_url(url)?)),
        Some((scheme, _)) => Err(bad(&format!("unsupported scheme `{scheme}` (this build has: file, s3)"))),
        None => Ok(Box::new(LocalStore::new(PathBuf::from(url)))),
    }
}

pub use prune_core::files::sha256_file;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_backend() {
        let store = open("file:///var/prune").unwrap();
        assert_eq!(store.url(), "file:///var/prune");
        assert_eq!(open("s3://bucket/some/prefix/").unwrap().url(), "s3://bucket/some/prefix");
        assert_eq!(open("s3://bucket").unwrap().url(), "s3://bucket");
        assert!(open("s3:///prefix").unwrap_err().to_string().contains("no bucket"));
        assert!(open("s3://bucket/a/../b").unwrap_err().to_string().contains("prefix"));
        assert!(open("gs://bucket").unwrap_err().to_string().contains("unsupported scheme `gs`"));
        assert!(open("file://relative").unwrap_err().to_string().contains("absolute path"));
    }
}
