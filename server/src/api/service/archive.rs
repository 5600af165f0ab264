//! An export of several files (a sharded checkpoint) served as one uncompressed tar archive,
//! assembled while it is read: ustar headers with fixed metadata (mode 0644, mtime 0, no
//! owner), so the same files always give the same bytes and a download resumes at any offset.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;

use prune_store::{FileStore, Key};

use crate::storage::ArtifactRecord;

const BLOCK: u64 = 512;

/// One piece of the archive: bytes made here (headers, padding, the end) or a stored file.
#[derive(Debug)]
enum Segment {
    Bytes(Vec<u8>),
    Stored { key: Key, len: u64 },
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::Bytes(b) => b.len() as u64,
            Segment::Stored { len, .. } => *len,
        }
    }
}

/// The archive of `files` (each stored under its key, named by `name`).
#[derive(Debug)]
pub struct Archive {
    segments: Vec<Segment>,
}

impl Archive {
    pub fn new<'a>(files: impl IntoIterator<Item = (&'a ArtifactRecord, String)>) -> Result<Archive, String> {
        let mut segments = Vec::new();
        for (file, name) in files {
            let key = Key::parse(&file.path).map_err(|e| e.to_string())?;
            let mut header = tar::Header::new_ustar();
            header.set_path(&name).map_err(|e| format!("{name}: {e}"))?;
            header.set_size(file.bytes);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            segments.push(Segment::Bytes(header.as_bytes().to_vec()));
            segments.push(Segment::Stored { key, len: file.bytes });
            let pad = (BLOCK - file.bytes % BLOCK) % BLOCK;
            if pad > 0 {
                segments.push(Segment::Bytes(vec![0; pad as usize]));
            }
        }
        // The end of an archive: two zero blocks.
        segments.push(Segment::Bytes(vec![0; 2 * BLOCK as usize]));
        Ok(Archive { segments })
    }

    pub fn len(&self) -> u64 {
        self.segments.iter().map(Segment::len).sum()
    }

    /// A reader of the archive from byte `offset` on; stored files are opened only when
    /// reached (an S3 store is not asked for every object at once).
    pub fn reader(self, store: Arc<dyn FileStore>, offset: u64) -> ArchiveReader {
        let mut skip = offset;
        let mut pending = VecDeque::new();
        for segment in self.segments {
            let len = segment.len();
            if skip >= len {
                skip -= len;
                continue;
            }
            pending.push_back((segment, skip));
            skip = 0;
        }
        ArchiveReader { store, pending, current: None }
    }
}

pub struct ArchiveReader {
    store: Arc<dyn FileStore>,
    /// Segments still to read, each with the bytes of it to skip.
    pending: VecDeque<(Segment, u64)>,
    current: Option<Box<dyn Read + Send>>,
}

impl Read for ArchiveReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(current) = &mut self.current {
                let n = current.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.current = None;
            }
            let Some((segment, skip)) = self.pending.pop_front() else { return Ok(0) };
            self.current = Some(match segment {
                Segment::Bytes(mut bytes) => {
                    bytes.drain(..skip as usize);
                    Box::new(io::Cursor::new(bytes))
                }
                Segment::Stored { key, len } => {
                    let reader = self.store.open(&key, skip).map_err(|e| io::Error::other(format!("{key}: {e}")))?;
                    // Exactly the recorded length: a file that grew or shrank is an error, not
                    // a shifted archive.
                    Box::new(Exact { inner: reader.take(len - skip), left: len - skip, key })
                }
            });
        }
    }
}

/// A stored file's bytes, which must be exactly as many as recorded.
struct Exact<R> {
    inner: R,
    left: u64,
    key: Key,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::other(format!("{} ended {} bytes early", self.key, self.left)));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prune_store::LocalStore;

    fn record(path: &str, bytes: u64) -> ArtifactRecord {
        ArtifactRecord {
            format: "safetensors".into(),
            path: path.into(),
            sha256: String::new(),
            bytes,
            compression: "zstd".into(),
            sparse_format: "bitmask".into(),
        }
    }

    #[test]
    fn the_archive_holds_the_files_and_resumes_at_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn FileStore> = Arc::new(LocalStore::new(dir.path().to_path_buf()));
        let files = [("artifacts/j/a.safetensors.zst", vec![7u8; 1000]), ("artifacts/j/index.json", b"{}".to_vec())];
        let mut records = Vec::new();
        for (key, data) in &files {
            let src = dir.path().join("src");
            std::fs::write(&src, data).unwrap();
            store.put(&Key::parse(*key).unwrap(), &src).unwrap();
            records.push(record(key, data.len() as u64));
        }
        let named = || records.iter().map(|r| (r, r.path.rsplit('/').next().unwrap().to_string()));
        let archive = Archive::new(named()).unwrap();
        let len = archive.len();
        assert_eq!(len, 512 + 1024 + 512 + 512 + 1024);
        let mut whole = Vec::new();
        archive.reader(store.clone(), 0).read_to_end(&mut whole).unwrap();
        assert_eq!(whole.len() as u64, len);
        let mut entries = tar::Archive::new(whole.as_slice());
        let read: Vec<(String, Vec<u8>)> = entries
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (e.path().unwrap().display().to_string(), data)
            })
            .collect();
        assert_eq!(
            read,
            [("a.safetensors.zst".to_string(), files[0].1.clone()), ("index.json".into(), b"{}".to_vec())]
        );
        for offset in [1, 511, 512, 700, 1536, 2049, len - 1, len] {
            let mut tail = Vec::new();
            Archive::new(named()).unwrap().reader(store.clone(), offset).read_to_end(&mut tail).unwrap();
            assert_eq!(tail, whole[offset as usize..], "from offset {offset}");
        }
        // A stored file shorter than recorded is an error, not a shifted archive.
        let mut short = records.clone();
        short[0].bytes = 1001;
        let named = short.iter().map(|r| (r, r.path.rsplit('/').next().unwrap().to_string()));
        let mut out = Vec::new();
        let err = Archive::new(named).unwrap().reader(store, 0).read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().contains("ended 1 bytes early"), "{err}");
    }
}
