use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use prune_core::files::write_atomically;

use crate::{FileStore, Key, Result, StoreError};

/// A directory on this machine (the data directory, or a shared file system several nodes
/// mount): the object under `key` is the file `root/key`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }
}

impl FileStore for LocalStore {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn local_path(&self, key: &Key) -> Option<PathBuf> {
        Some(self.path(key))
    }

    fn put(&self, key: &Key, src: &Path) -> Result<()> {
        let dest = self.path(key);
        if dest == src {
            return Ok(()); // written in place
        }
        let io = |e| StoreError::io(key, e);
        let dir = dest.parent().expect("keys are relative to the root");
        fs::create_dir_all(dir).map_err(io)?;
        if fs::rename(src, &dest).is_err() {
            // Another file system: copy through a temporary file next to the destination.
            return write_atomically(&dest, |out| std::io::copy(&mut fs::File::open(src)?, out).map(drop)).map_err(io);
        }
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }

    fn link(&self, key: &Key, src: &Path) -> Result<bool> {
        let dest = self.path(key);
        let io = |e| StoreError::io(key, e);
        let dir = dest.parent().expect("keys are relative to the root");
        fs::create_dir_all(dir).map_err(io)?;
        // Linked under a temporary name, then renamed over any older object: that one stays
        // whole until it is replaced.
        let staged = tempfile::Builder::new().prefix(".link-").make_in(dir, |path| fs::hard_link(src, path));
        match staged {
            // Another file system, or one without hard links: the caller copies.
            Err(_) => Ok(false),
            Ok(staged) => staged.persist(&dest).map(|_| true).map_err(|e| io(e.error)),
        }
    }

    fn open(&self, key: &Key, offset: u64) -> Result<Box<dyn Read + Send>> {
        let io = |e| StoreError::io(key, e);
        let mut file = fs::File::open(self.path(key)).map_err(io)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        Ok(Box::new(file))
    }

    fn size(&self, key: &Key) -> Result<u64> {
        Ok(fs::metadata(self.path(key)).map_err(|e| StoreError::io(key, e))?.len())
    }

    fn delete(&self, key: &Key) -> Result<()> {
        match fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(key, e)),
            _ => Ok(()),
        }
    }

    fn delete_all(&self, prefix: &Key) -> Result<()> {
        match fs::remove_dir_all(self.path(prefix)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(prefix, e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_follows_the_file_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("store"));
        let key = Key::parse("uploads/t/abc/00000000").unwrap();
        let src = dir.path().join("partial");
        fs::write(&src, b"first").unwrap();
        assert!(store.link(&key, &src).unwrap());
        std::io::Write::write_all(&mut fs::OpenOptions::new().append(true).open(&src).unwrap(), b" second").unwrap();
        assert_eq!(store.size(&key).unwrap(), 12);
        assert!(store.link(&key, &src).unwrap(), "linking again replaces the name");
        fs::remove_file(&src).unwrap();
        let mut all = String::new();
        store.open(&key, 0).unwrap().read_to_string(&mut all).unwrap();
        assert_eq!(all, "first second", "the bytes outlive the first name");
        assert!(!store.link(&key, &dir.path().join("missing")).unwrap());
    }

    #[test]
    fn put_open_size_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("store"));
        let key = Key::parse("artifacts/job-1/model.safetensors").unwrap();
        assert!(matches!(store.size(&key), Err(StoreError::NotFound { .. })));
        let src = dir.path().join("out");
        fs::write(&src, b"hello world").unwrap();
        store.put(&key, &src).unwrap();
        assert!(!src.exists(), "moved, not copied, on one file system");
        assert_eq!(store.size(&key).unwrap(), 11);
        let mut rest = String::new();
        store.open(&key, 6).unwrap().read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "world");
        assert_eq!(store.sha256(&key).unwrap(), crate::sha256_file(&store.local_path(&key).unwrap()).unwrap());
        assert_eq!(store.fetch(&key, dir.path()).unwrap(), store.local_path(&key).unwrap());
        store.delete(&key).unwrap();
        store.delete(&key).unwrap();
        let job = Key::parse("artifacts/job-1").unwrap();
        fs::write(&src, b"x").unwrap();
        store.put(&key, &src).unwrap();
        store.delete_all(&job).unwrap();
        store.delete_all(&job).unwrap();
        assert!(matches!(store.open(&key, 0), Err(StoreError::NotFound { .. })));
    }
}
