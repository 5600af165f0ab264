//! Uploads of content-addressed blobs: models and data sets uploaded once, referenced by
//! `sha256:<hex>` from any number of jobs, kept in the file store under `blobs/<hex>`.
//!
//! An upload goes to a temporary file of this node, is hashed as it arrives, and becomes visible
//! only after its size and checksum are verified and it is fsynced and published in the store
//! (a rename on a local store): a blob that exists is always complete and correct.
//!
//! Nodes share the store, not their disks: so that an upload cut off on one node (client gone,
//! node killed) continues on another, a resumable upload also saves what it received in the
//! store, one segment (`--upload-segment-bytes`) at a time, as `uploads/<tenant>/<sha256>/<n>`.
//! HasBlob's `uploaded` is the longer of this node's partial file and the saved segments; a
//! resume on a node without the partial file first rebuilds it from the segments.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prune_store::{FileStore, Key, StoreError};
use sha2::{Digest, Sha256};
use tempfile::TempPath;

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
    #[error("upload offset {offset} is beyond the {size} bytes its header announced")]
    OffsetBeyondSize { offset: u64, size: u64 },
    #[error("cannot resume the upload at byte {offset}: the server holds {held} bytes of it (HasBlob's `uploaded`)")]
    ResumeBeyond { offset: u64, held: u64 },
    #[error("another upload of this blob is being resumed right now; try again when it ends")]
    Busy,
    #[error("the upload ended without its sha256: a header without one needs a `checksum` message before the end")]
    NoChecksum,
    #[error("the sha256 was given twice (in the header or an earlier `checksum` message)")]
    ChecksumTwice,
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob store: {0}")]
    Store(#[from] StoreError),
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
    store: Arc<dyn FileStore>,
    tmp: PathBuf,
    /// Partial files being written right now: one writer each.
    writing: Arc<Mutex<HashSet<PathBuf>>>,
    /// Bytes per saved segment of a resumable upload.
    segment: u64,
}

/// The default of `--upload-segment-bytes`: a lost node costs at most this much re-sent.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;

/// Where a tenant's resumable upload of one blob saves its segments in the store.
#[derive(Debug, Clone)]
struct Segments {
    store: Arc<dyn FileStore>,
    /// `uploads/<hex of the tenant>/<sha256>`: tenants' names may hold any character.
    prefix: String,
    size: u64,
}

impl Segments {
    fn key(&self, index: u64) -> Key {
        Key::parse(format!("{}/{index:08}", self.prefix)).expect("hex and digits make a valid key")
    }

    /// Bytes saved from the start: whole segments, then at most one shorter, in order (or one
    /// linked partial file of any length).
    fn saved(&self) -> u64 {
        let mut total = 0;
        for index in 0.. {
            match self.store.size(&self.key(index)) {
                Ok(n) => {
                    total += n;
                    if n < self.size {
                        break;
                    }
                }
                Err(StoreError::NotFound { .. }) => break,
                Err(e) => {
                    tracing::warn!(prefix = self.prefix, "reading a saved upload segment: {e}");
                    break;
                }
            }
        }
        total
    }

    /// Saves bytes `[index * size, index * size + len)` of `partial` as segment `index`.
    fn save(&self, partial: &Path, tmp: &Path, index: u64, len: u64) -> Result<(), BlobError> {
        let mut from = std::fs::File::open(partial)?;
        from.seek(SeekFrom::Start(index * self.size))?;
        let mut staged = tempfile::Builder::new().prefix("upload-segment-").tempfile_in(tmp)?;
        let copied = std::io::copy(&mut from.take(len), staged.as_file_mut())?;
        if copied != len {
            return Err(BlobError::Io(std::io::Error::other(format!("segment {index}: read {copied} of {len} bytes"))));
        }
        let staged = staged.into_temp_path();
        self.store.put(&self.key(index), &staged)?;
        Ok(())
    }

    /// Writes the first `len` saved bytes into `partial` (created), for a resume on this node.
    fn restore(&self, partial: &Path, len: u64) -> Result<(), BlobError> {
        let mut out = std::fs::File::create(partial)?;
        let mut left = len;
        // Segments in order; a linked partial file is one segment of any length.
        for index in 0.. {
            if left == 0 {
                break;
            }
            let copied = std::io::copy(&mut self.store.open(&self.key(index), 0)?.take(left), &mut out)?;
            if copied == 0 {
                return Err(BlobError::ResumeBeyond { offset: len, held: len - left });
            }
            left -= copied;
        }
        out.sync_all()?;
        Ok(())
    }

    /// Makes the store's copy of the upload a second name of `partial` itself where the store
    /// can (a local directory on the same file system): everything written to it is then saved,
    /// with no copy of the bytes. Segments saved before are replaced.
    fn link(&self, partial: &Path) -> bool {
        match self.store.link(&self.key(0), partial) {
            Ok(true) => {
                for index in 1.. {
                    match self.store.size(&self.key(index)) {
                        Ok(_) => {
                            if let Err(e) = self.store.delete(&self.key(index)) {
                                tracing::warn!(prefix = self.prefix, "removing a replaced upload segment: {e}");
                            }
                        }
                        Err(_) => break,
                    }
                }
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(prefix = self.prefix, "linking an upload into the store: {e}");
                false
            }
        }
    }

    fn remove(&self) {
        if let Err(e) =
            Key::parse(self.prefix.as_str()).map_err(StoreError::from).and_then(|k| self.store.delete_all(&k))
        {
            tracing::warn!(prefix = self.prefix, "removing saved upload segments: {e}");
        }
    }
}

/// Interrupted uploads are kept in `tmp` as `resume-<sha256>-<tenant>` for a resume.
const PARTIAL_PREFIX: &str = "resume-";
/// An interrupted upload nobody resumed within this long is removed when the server starts.
const PARTIAL_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

impl BlobStore {
    /// Blobs go to `store`; `tmp` holds this node's uploads in progress (on the store's file
    /// system, for a local store, so that publishing one is a rename).
    ///
    /// Uploads cut short by a crash (kill -9, power loss) leave their `upload-*` temporary files
    /// behind: nothing can finish them, so they are removed here, when the server starts.
    /// Resumable partial uploads stay, unless nobody resumed them for [`PARTIAL_MAX_AGE`].
    pub fn new(store: Arc<dyn FileStore>, tmp: PathBuf) -> Self {
        remove_abandoned_uploads(&tmp);
        remove_stale_partials(&tmp, PARTIAL_MAX_AGE);
        BlobStore { store, tmp, writing: Arc::default(), segment: DEFAULT_SEGMENT_BYTES }
    }

    /// Saves resumable uploads in the store every `bytes` (at least 1).
    pub fn with_segment_bytes(mut self, bytes: u64) -> Self {
        self.segment = bytes.max(1);
        self
    }

    fn segments(&self, tenant: &str, sha256: &str) -> Segments {
        let prefix = format!("uploads/{}/{sha256}", hex::encode(tenant.as_bytes()));
        Segments { store: self.store.clone(), prefix, size: self.segment }
    }

    /// The blob's key in the file store (whether or not it exists).
    pub fn key(id: &BlobId) -> Key {
        Key::blob(id.hex()).expect("a BlobId holds 64 hex digits")
    }

    pub fn store(&self) -> &Arc<dyn FileStore> {
        &self.store
    }

    /// Per tenant: one tenant's partial upload never reveals or feeds another's.
    fn partial_path(&self, tenant: &str, sha256: &str) -> PathBuf {
        self.tmp.join(format!("{PARTIAL_PREFIX}{sha256}-{tenant}"))
    }

    /// Bytes of `tenant`'s interrupted upload of `sha256` kept for a resume (0: none): in this
    /// node's partial file or saved in the store by any node, whichever holds more.
    pub async fn partial_len(&self, tenant: &str, sha256: &str) -> u64 {
        if !is_sha256_hex(sha256) {
            return 0;
        }
        let local = std::fs::metadata(self.partial_path(tenant, sha256)).map_or(0, |m| m.len());
        let segments = self.segments(tenant, sha256);
        let saved = tokio::task::spawn_blocking(move || segments.saved()).await.unwrap_or(0);
        local.max(saved)
    }

    /// [`BlobStore::partial_len`], unless that upload is being written right now (0 then).
    pub async fn resumable_len(&self, tenant: &str, sha256: &str) -> u64 {
        let path = self.partial_path(tenant, sha256);
        if self.writing.lock().unwrap_or_else(|e| e.into_inner()).contains(&path) {
            return 0;
        }
        self.partial_len(tenant, sha256).await
    }

    /// Starts `tenant`'s upload of `size` bytes that must hash to `sha256` (lowercase hex), or
    /// resumes it at `offset` (the bytes before it are those kept from an interrupted upload).
    /// If the upload breaks off, what arrived is kept for the next resume.
    pub async fn begin(&self, tenant: &str, size: u64, sha256: &str, offset: u64) -> Result<Upload, BlobError> {
        if !is_sha256_hex(sha256) {
            return Err(BlobError::InvalidChecksum(sha256.to_string()));
        }
        if offset > size {
            return Err(BlobError::OffsetBeyondSize { offset, size });
        }
        let path = self.partial_path(tenant, sha256);
        let Some(claim) = Claim::take(&self.writing, &path) else {
            // The same tenant uploads the same blob twice at once: the second one starting
            // over gets a private file (not resumable); a resume would race the first.
            return if offset == 0 { self.begin_private(size, Some(sha256)) } else { Err(BlobError::Busy) };
        };
        let segments = self.segments(tenant, sha256);
        let (file, hasher, linked) = {
            let (path, segments) = (path.clone(), segments.clone());
            tokio::task::spawn_blocking(move || {
                // Begun on another node (or this node lost its partial file): rebuild it from
                // the segments saved in the store.
                let local = std::fs::metadata(&path).map_or(0, |m| m.len());
                if offset > local && segments.saved() >= offset {
                    segments.restore(&path, offset)?;
                    tracing::info!(offset, "resuming an upload saved in the store by another node");
                }
                let (file, hasher) = open_partial(&path, offset)?;
                Ok::<_, BlobError>((file, hasher, segments.link(&path)))
            })
            .await
            .map_err(std::io::Error::other)??
        };
        Ok(Upload {
            sink: Some(Sink::new(file, offset)),
            hasher: Some(hasher),
            target: Target::Partial { path, _claim: claim, segments, saved: offset - offset % self.segment, linked },
            written: offset,
            expected_size: size,
            expected_sha256: Some(sha256.to_string()),
            store: self.store.clone(),
            tmp: self.tmp.clone(),
        })
    }

    /// Starts an upload of `size` bytes whose sha256 the client sends later
    /// ([`Upload::set_checksum`]); until then it cannot be resumed.
    pub fn begin_deferred(&self, size: u64) -> Result<Upload, BlobError> {
        self.begin_private(size, None)
    }

    fn begin_private(&self, size: u64, sha256: Option<&str>) -> Result<Upload, BlobError> {
        let tmp = tempfile::Builder::new().prefix("upload-").tempfile_in(&self.tmp)?;
        let (file, path) = tmp.into_parts();
        Ok(Upload {
            sink: Some(Sink::new(file, 0)),
            hasher: Some(Sha256::new()),
            target: Target::Private(path),
            written: 0,
            expected_size: size,
            expected_sha256: sha256.map(str::to_string),
            store: self.store.clone(),
            tmp: self.tmp.clone(),
        })
    }
}

/// Opens the partial file at `offset`: what it holds beyond is dropped, what it holds before is
/// hashed again so that the final checksum covers the whole blob.
fn open_partial(path: &Path, offset: u64) -> Result<(std::fs::File, Sha256), BlobError> {
    // Only a fresh start creates the file: a resume of nothing must not leave an empty one.
    let opened = std::fs::OpenOptions::new().read(true).write(true).create(offset == 0).truncate(false).open(path);
    let mut file = match opened {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::ResumeBeyond { offset, held: 0 }),
        other => other?,
    };
    let held = file.metadata()?.len();
    if offset > held {
        return Err(BlobError::ResumeBeyond { offset, held });
    }
    file.set_len(offset)?;
    let mut hasher = Sha256::new();
    let hashed = std::io::copy(&mut (&mut file).take(offset), &mut hasher)?;
    if hashed != offset {
        return Err(BlobError::ResumeBeyond { offset, held: hashed });
    }
    file.seek(SeekFrom::Start(offset))?;
    Ok((file, hasher))
}

/// Marks a partial file as being written; released on drop.
#[derive(Debug)]
struct Claim {
    writing: Arc<Mutex<HashSet<PathBuf>>>,
    path: PathBuf,
}

impl Claim {
    fn take(writing: &Arc<Mutex<HashSet<PathBuf>>>, path: &Path) -> Option<Claim> {
        let fresh = writing.lock().unwrap_or_else(|e| e.into_inner()).insert(path.to_path_buf());
        fresh.then(|| Claim { writing: writing.clone(), path: path.to_path_buf() })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.writing.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.path);
    }
}

#[derive(Debug)]
enum Target {
    /// Deleted when the upload is dropped unfinished.
    Private(TempPath),
    /// Kept when the upload breaks off, so that it can be resumed; saved in the store up to
    /// `saved` bytes (a multiple of the segment size), so that another node can resume it too;
    /// or, `linked`, the store holds the partial file itself under a second name.
    Partial { path: PathBuf, _claim: Claim, segments: Segments, saved: u64, linked: bool },
}

/// The file an upload writes, used on a blocking thread.
#[derive(Debug)]
struct Sink {
    file: std::fs::File,
    /// Where the last background sync began.
    synced: u64,
    /// A thread making the file durable up to about `synced`, while writes go on.
    syncing: Option<std::thread::JoinHandle<()>>,
}

/// A background fdatasync is started every this many bytes (when the last one is done), so
/// that the disk persists the upload while the network delivers it: written in one go, 1 GB
/// took 1.2 s to fsync at the end here.
const SYNC_EVERY_BYTES: u64 = 64 << 20;

impl Sink {
    fn new(file: std::fs::File, at: u64) -> Sink {
        Sink { file, synced: at, syncing: None }
    }

    /// Appends `chunk`, which ends at byte `end` of the file.
    fn write(&mut self, chunk: &[u8], end: u64) -> std::io::Result<()> {
        use std::io::Write;
        self.file.write_all(chunk)?;
        let idle = self.syncing.as_ref().is_none_or(std::thread::JoinHandle::is_finished);
        if end - self.synced >= SYNC_EVERY_BYTES && idle {
            // Best effort: the final fsync ([`Sink::sync`]) is the one that counts.
            if let Ok(file) = self.file.try_clone() {
                self.syncing = Some(std::thread::spawn(move || drop(file.sync_data())));
                self.synced = end;
            }
        }
        Ok(())
    }

    /// Makes every byte durable.
    fn sync(mut self) -> std::io::Result<()> {
        if let Some(syncing) = self.syncing.take() {
            let _ = syncing.join();
        }
        self.file.sync_all()
    }
}

/// An upload in progress. Dropped unfinished, a resumable upload keeps what it received; a
/// private one deletes its temporary file. Bytes that prove wrong (too many, bad checksum) are
/// never kept.
#[derive(Debug)]
pub struct Upload {
    /// `None` only while a write runs on a blocking thread (or after one failed there).
    sink: Option<Sink>,
    /// Of every byte so far; `None` while it hashes a chunk (or after that failed).
    hasher: Option<Sha256>,
    target: Target,
    written: u64,
    expected_size: u64,
    /// `None` until the client's `checksum` message, for an upload begun without one.
    expected_sha256: Option<String>,
    store: Arc<dyn FileStore>,
    tmp: PathBuf,
}

impl Upload {
    /// Whether the upload still waits for its sha256 (begun without one, no `checksum` yet).
    pub fn awaits_checksum(&self) -> bool {
        self.expected_sha256.is_none()
    }

    /// The file and the hash, for a blocking thread (put back after a write).
    fn take_sink(&mut self) -> std::io::Result<(Sink, Sha256)> {
        match (self.sink.take(), self.hasher.take()) {
            (Some(sink), Some(hasher)) => Ok((sink, hasher)),
            _ => Err(std::io::Error::other("an earlier write of this upload failed")),
        }
    }

    /// Appends `chunk`: hashed on one blocking thread while another writes it (a gigabyte of
    /// hashing is not the async runtime's work, and takes as long as the writing), then the
    /// segments it completes are saved in the store.
    pub async fn write(&mut self, chunk: Vec<u8>) -> Result<(), BlobError> {
        self.written += chunk.len() as u64;
        if self.written > self.expected_size {
            self.discard().await;
            return Err(BlobError::TooLarge { expected: self.expected_size });
        }
        let (mut sink, mut hasher) = self.take_sink()?;
        let end = self.written;
        let chunk = Arc::new(chunk);
        let hashing = tokio::task::spawn_blocking({
            let chunk = chunk.clone();
            move || {
                hasher.update(&*chunk);
                hasher
            }
        });
        // Both return when done, so that what a resume finds in the partial file is everything
        // acknowledged so far.
        let writing = tokio::task::spawn_blocking(move || {
            let written = sink.write(&chunk, end);
            (sink, written)
        });
        let (hashed, written) = tokio::join!(hashing, writing);
        let (sink, written) = written.map_err(std::io::Error::other)?;
        self.sink = Some(sink);
        self.hasher = Some(hashed.map_err(std::io::Error::other)?);
        written?;
        self.save_segments(false).await
    }

    /// The blob's sha256 (lowercase hex) for an upload begun without it: from now on the upload
    /// is kept for a resume, like one that announced it in its header.
    pub async fn set_checksum(&mut self, blobs: &BlobStore, tenant: &str, sha256: &str) -> Result<(), BlobError> {
        if !is_sha256_hex(sha256) {
            return Err(BlobError::InvalidChecksum(sha256.to_string()));
        }
        if self.expected_sha256.is_some() {
            return Err(BlobError::ChecksumTwice);
        }
        self.expected_sha256 = Some(sha256.to_string());
        let path = blobs.partial_path(tenant, sha256);
        // Someone else is writing that partial file: this upload stays private.
        let Some(claim) = Claim::take(&blobs.writing, &path) else { return Ok(()) };
        let Target::Private(temp) = &self.target else { unreachable!("an upload without a checksum is private") };
        // The open file follows the rename; an older partial upload of the same blob is replaced.
        tokio::fs::rename(&**temp, &path).await?;
        let segments = blobs.segments(tenant, sha256);
        let linked = {
            let (segments, path) = (segments.clone(), path.clone());
            tokio::task::spawn_blocking(move || segments.link(&path)).await.map_err(std::io::Error::other)?
        };
        let partial = Target::Partial { path, _claim: claim, segments, saved: 0, linked };
        if let Target::Private(moved) = std::mem::replace(&mut self.target, partial) {
            let _ = moved.keep(); // renamed away: nothing left to delete
        }
        self.save_segments(false).await
    }

    /// Saves the segments completed so far in the store (with `tail`, the last incomplete one
    /// too: the upload is breaking off).
    async fn save_segments(&mut self, tail: bool) -> Result<(), BlobError> {
        let written = self.written;
        let Target::Partial { path, segments, saved, linked, .. } = &mut self.target else { return Ok(()) };
        if *linked {
            return Ok(()); // the store has every byte already
        }
        let complete = written - written % segments.size;
        let until = if tail { written } else { complete };
        if until <= *saved || (tail && written == *saved) {
            return Ok(());
        }
        let (from, path, segments_c, tmp) = (*saved, path.clone(), segments.clone(), self.tmp.clone());
        tokio::task::spawn_blocking(move || {
            let mut at = from;
            while at < until {
                let index = at / segments_c.size;
                let len = ((index + 1) * segments_c.size).min(until) - index * segments_c.size;
                segments_c.save(&path, &tmp, index, len)?;
                at = index * segments_c.size + len;
            }
            Ok::<_, BlobError>(())
        })
        .await
        .map_err(std::io::Error::other)??;
        *saved = complete;
        Ok(())
    }

    /// The client broke off: what arrived is kept here and saved in the store, so that the
    /// upload resumes on any node.
    pub async fn suspend(mut self) {
        if let Err(e) = self.save_segments(true).await {
            tracing::warn!("saving an interrupted upload in the store: {e}");
        }
    }

    /// Removes a partial file (and its saved segments) whose content is known to be wrong.
    /// Done when it returns: a HasBlob right after sees nothing of it (with a linked partial
    /// file, the store's name for it would otherwise still hold every byte).
    async fn discard(&self) {
        if let Target::Partial { path, segments, .. } = &self.target {
            let (path, segments) = (path.clone(), segments.clone());
            let removed = tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_file(path);
                segments.remove();
            });
            if let Err(e) = removed.await {
                tracing::warn!("removing a wrong upload: {e}");
            }
        }
    }

    /// Verifies size and checksum and publishes the file in the store. Finishing an upload of
    /// a blob the store already has replaces it with identical bytes.
    pub async fn finish(mut self) -> Result<(BlobId, u64, Key), BlobError> {
        if self.written != self.expected_size {
            // Kept (if resumable, here and in the store): the rest may still come, to any node.
            if let Err(e) = self.save_segments(true).await {
                tracing::warn!("saving an interrupted upload in the store: {e}");
            }
            return Err(BlobError::Truncated { expected: self.expected_size, got: self.written });
        }
        let Some(expected) = self.expected_sha256.take() else { return Err(BlobError::NoChecksum) };
        let (sink, hasher) = self.take_sink()?;
        let got = hex::encode(hasher.finalize());
        if got != expected {
            self.discard().await;
            return Err(BlobError::ChecksumMismatch { expected, got });
        }
        tokio::task::spawn_blocking(move || sink.sync()).await.map_err(std::io::Error::other)??;
        let id = BlobId::from_hex(&got);
        let key = BlobStore::key(&id);
        let (store, target) = (self.store, self.target);
        tokio::task::spawn_blocking({
            let key = key.clone();
            move || -> Result<(), BlobError> {
                match target {
                    Target::Private(tmp) => {
                        let published = store.put(&key, &tmp);
                        drop(tmp); // gone after a rename; removed if the put failed
                        published?
                    }
                    // The claim is released only after the put (it lives in `target`).
                    Target::Partial { path, _claim, segments, .. } => {
                        store.put(&key, &path)?;
                        segments.remove();
                        // A local store renamed it; a remote one copied it, and the copy is done.
                        if let Err(e) = std::fs::remove_file(&path) {
                            if e.kind() != std::io::ErrorKind::NotFound {
                                tracing::warn!(path = %path.display(), "removing an uploaded partial file: {e}");
                            }
                        }
                    }
                }
                Ok(())
            }
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok((id, self.written, key))
    }
}

/// Deletes partial uploads last written more than `max_age` ago.
fn remove_stale_partials(tmp: &Path, max_age: Duration) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > max_age);
        if stale {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(path = %entry.path().display(), "removed a partial upload nobody resumed"),
                Err(e) => tracing::warn!(path = %entry.path().display(), "removing a stale partial upload: {e}"),
            }
        }
    }
}

/// Deletes the `upload-*` files in `tmp` (only those: nothing else lives there, but a store whose
/// `tmp` is its blob directory must not lose blobs).
fn remove_abandoned_uploads(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("upload-") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(path = %entry.path().display(), "removed an abandoned upload"),
                Err(e) => tracing::warn!(path = %entry.path().display(), "removing an abandoned upload: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (BlobStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        (BlobStore::new(local(dir.path()), dir.path().join("tmp")), dir)
    }

    fn local(root: &Path) -> Arc<dyn FileStore> {
        Arc::new(prune_store::LocalStore::new(root.to_path_buf()))
    }

    /// Two nodes with their own scratch (tmp) directories under `dir` and one `shared` store,
    /// saving every 4 bytes.
    fn two_nodes(dir: &Path, shared: &Arc<dyn FileStore>) -> (BlobStore, BlobStore) {
        let node = |tmp: &str| {
            std::fs::create_dir_all(dir.join(tmp)).unwrap();
            BlobStore::new(shared.clone(), dir.join(tmp)).with_segment_bytes(4)
        };
        (node("a"), node("b"))
    }

    /// A local store that cannot link (as a remote one, or one on another file system): uploads
    /// save copies of their segments in it.
    #[derive(Debug)]
    struct Copying(prune_store::LocalStore);

    impl FileStore for Copying {
        fn url(&self) -> String {
            self.0.url()
        }
        fn local_path(&self, key: &Key) -> Option<PathBuf> {
            self.0.local_path(key)
        }
        fn put(&self, key: &Key, src: &Path) -> prune_store::Result<()> {
            self.0.put(key, src)
        }
        fn open(&self, key: &Key, offset: u64) -> prune_store::Result<Box<dyn Read + Send>> {
            self.0.open(key, offset)
        }
        fn size(&self, key: &Key) -> prune_store::Result<u64> {
            self.0.size(key)
        }
        fn delete(&self, key: &Key) -> prune_store::Result<()> {
            self.0.delete(key)
        }
        fn delete_all(&self, prefix: &Key) -> prune_store::Result<()> {
            self.0.delete_all(prefix)
        }
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[tokio::test]
    async fn verified_upload_lands_under_its_hash() {
        let (store, _dir) = store();
        let data = b"hello blobs";
        let mut up = store.begin("t", data.len() as u64, &sha(data), 0).await.unwrap();
        up.write(data[..5].to_vec()).await.unwrap();
        up.write(data[5..].to_vec()).await.unwrap();
        let (id, size, key) = up.finish().await.unwrap();
        assert_eq!(id.as_str(), format!("sha256:{}", sha(data)));
        assert_eq!(key.as_str(), format!("blobs/{}", sha(data)));
        let path = store.store().local_path(&key).unwrap();
        assert_eq!((size, std::fs::read(&path).unwrap()), (data.len() as u64, data.to_vec()));
        assert_eq!(BlobId::parse(id.as_str()).unwrap(), id);

        // Idempotent: the same upload again succeeds with the same id.
        let mut again = store.begin("t", data.len() as u64, &sha(data), 0).await.unwrap();
        again.write(data.to_vec()).await.unwrap();
        assert_eq!(again.finish().await.unwrap().0, id);
    }

    #[tokio::test]
    async fn rejects_wrong_size_or_checksum_and_cleans_up() {
        let (store, dir) = store();
        let data = b"abc";
        let mut up = store.begin("t", 3, &sha(b"abd"), 0).await.unwrap();
        up.write(data.to_vec()).await.unwrap();
        assert!(matches!(up.finish().await, Err(BlobError::ChecksumMismatch { .. })));
        let mut up = store.begin("t", 2, &sha(data), 0).await.unwrap();
        assert!(matches!(up.write(data.to_vec()).await, Err(BlobError::TooLarge { expected: 2 })));
        drop(up);
        assert!(matches!(store.begin("t", 3, "xyz", 0).await, Err(BlobError::InvalidChecksum(_))));
        assert!(matches!(store.begin("t", 3, &sha(data), 4).await, Err(BlobError::OffsetBeyondSize { .. })));
        assert!(matches!(
            store.begin("t", 3, &sha(data), 2).await,
            Err(BlobError::ResumeBeyond { offset: 2, held: 0 })
        ));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "wrong bytes are not kept");
        // A short upload is kept: the rest may come later.
        let mut up = store.begin("t", 3, &sha(data), 0).await.unwrap();
        up.write(b"ab".to_vec()).await.unwrap();
        assert!(matches!(up.finish().await, Err(BlobError::Truncated { expected: 3, got: 2 })));
        assert_eq!(store.partial_len("t", &sha(data)).await, 2);
        assert!(BlobId::parse("sha256:ABC").is_err());
    }

    #[tokio::test]
    async fn an_upload_cut_off_on_one_node_resumes_on_another() {
        // Two nodes: their own scratch (tmp) directories, one shared store that takes copies.
        let dir = tempfile::tempdir().unwrap();
        let shared: Arc<dyn FileStore> = Arc::new(Copying(prune_store::LocalStore::new(dir.path().join("store"))));
        let (node_a, node_b) = two_nodes(dir.path(), &shared);
        let data = b"twenty-two bytes: done";
        let (hex, size) = (sha(data), data.len() as u64);

        // Node A dies after 10 bytes (no chance to save the tail): two whole segments survive.
        let mut up = node_a.begin("alice", size, &hex, 0).await.unwrap();
        up.write(data[..10].to_vec()).await.unwrap();
        drop(up);
        assert_eq!(node_b.partial_len("alice", &hex).await, 8);
        assert_eq!(node_b.partial_len("bob", &hex).await, 0, "per tenant");
        assert!(matches!(node_b.begin("alice", size, &hex, 9).await, Err(BlobError::ResumeBeyond { .. })));

        // Node B resumes at 8; this time the client breaks off and the tail is saved too.
        let mut up = node_b.begin("alice", size, &hex, 8).await.unwrap();
        up.write(data[8..15].to_vec()).await.unwrap();
        up.suspend().await;
        std::fs::remove_dir_all(dir.path().join("b")).unwrap(); // and node B's disk is lost
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        assert_eq!(node_a.partial_len("alice", &hex).await, 15);

        // Back on node A (its own partial holds 10 bytes; the store has 15): finished there.
        let mut up = node_a.begin("alice", size, &hex, 15).await.unwrap();
        up.write(data[15..].to_vec()).await.unwrap();
        let (id, _, key) = up.finish().await.unwrap();
        assert_eq!(id.hex(), hex);
        assert_eq!(std::fs::read(shared.local_path(&key).unwrap()).unwrap(), data);
        assert!(!dir.path().join("store").join("uploads").join(hex::encode("alice")).join(&hex).exists());
        assert_eq!(node_b.partial_len("alice", &hex).await, 0);
    }

    #[tokio::test]
    async fn a_local_store_holds_the_partial_file_itself_not_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let shared = local(&dir.path().join("store"));
        let (node_a, node_b) = two_nodes(dir.path(), &shared);
        let data = b"linked, not copied: done";
        let (hex, size) = (sha(data), data.len() as u64);
        // Node A dies after 10 bytes: all 10 are in the store (segments would hold 8).
        let mut up = node_a.begin("alice", size, &hex, 0).await.unwrap();
        up.write(data[..10].to_vec()).await.unwrap();
        drop(up);
        let saved = node_a.segments("alice", &hex);
        let linked = shared.local_path(&saved.key(0)).unwrap();
        assert_eq!(std::fs::read(&linked).unwrap(), &data[..10]);
        {
            use std::os::unix::fs::MetadataExt;
            let partial = std::fs::metadata(node_a.partial_path("alice", &hex)).unwrap();
            assert_eq!(std::fs::metadata(&linked).unwrap().ino(), partial.ino(), "one file, two names");
        }
        std::fs::remove_dir_all(dir.path().join("a")).unwrap(); // node A's disk is lost
        assert_eq!(node_b.partial_len("alice", &hex).await, 10);
        let mut up = node_b.begin("alice", size, &hex, 10).await.unwrap();
        up.write(data[10..].to_vec()).await.unwrap();
        let (id, _, key) = up.finish().await.unwrap();
        assert_eq!(std::fs::read(shared.local_path(&key).unwrap()).unwrap(), data);
        assert_eq!(id.hex(), hex);
        assert!(!linked.exists(), "the store's name for the partial upload is removed with it");
    }

    #[tokio::test]
    async fn an_interrupted_upload_resumes_where_it_stopped() {
        let (store, dir) = store();
        let data = b"hello resumable blobs";
        let hex = sha(data);
        let mut up = store.begin("alice", data.len() as u64, &hex, 0).await.unwrap();
        up.write(data[..9].to_vec()).await.unwrap();
        drop(up); // the connection broke
        assert_eq!(store.partial_len("alice", &hex).await, 9);
        assert_eq!(store.partial_len("bob", &hex).await, 0, "partial uploads are per tenant");

        // A server restart keeps it; a resume beyond what is held is refused.
        let store = BlobStore::new(local(dir.path()), dir.path().join("tmp"));
        assert!(matches!(
            store.begin("alice", data.len() as u64, &hex, 12).await,
            Err(BlobError::ResumeBeyond { offset: 12, held: 9 })
        ));
        // Resuming before the end of what is held is fine (the rest is dropped).
        let mut up = store.begin("alice", data.len() as u64, &hex, 7).await.unwrap();
        // While it is being written, a second resume must wait; a fresh upload goes private.
        assert!(matches!(store.begin("alice", data.len() as u64, &hex, 7).await, Err(BlobError::Busy)));
        let private = store.begin("alice", data.len() as u64, &hex, 0).await.unwrap();
        assert!(matches!(private.target, Target::Private(_)));
        drop(private);
        up.write(data[7..].to_vec()).await.unwrap();
        let (id, size, key) = up.finish().await.unwrap();
        assert_eq!((id.hex(), size), (hex.as_str(), data.len() as u64));
        assert_eq!(std::fs::read(store.store().local_path(&key).unwrap()).unwrap(), data);
        assert_eq!(store.partial_len("alice", &hex).await, 0, "the partial file became the blob");

        // A resume with wrong bytes before the break fails the checksum and is dropped.
        let other = b"another blob";
        let mut up = store.begin("alice", other.len() as u64, &sha(other), 0).await.unwrap();
        up.write(b"XXXX".to_vec()).await.unwrap();
        drop(up);
        let mut up = store.begin("alice", other.len() as u64, &sha(other), 4).await.unwrap();
        up.write(other[4..].to_vec()).await.unwrap();
        assert!(matches!(up.finish().await, Err(BlobError::ChecksumMismatch { .. })));
        assert_eq!(store.partial_len("alice", &sha(other)).await, 0);
    }

    #[tokio::test]
    async fn an_upload_begun_without_its_checksum_becomes_resumable_once_it_arrives() {
        let (store, dir) = store();
        let store = store.with_segment_bytes(4);
        let data = b"sent while it was hashed";
        let (hex, size) = (sha(data), data.len() as u64);
        let mut up = store.begin_deferred(size).unwrap();
        up.write(data[..10].to_vec()).await.unwrap();
        assert_eq!(store.partial_len("alice", &hex).await, 0, "not resumable before its checksum");
        up.set_checksum(&store, "alice", &hex).await.unwrap();
        // The bytes so far are now this node's partial file and the store's (linked: all of them).
        assert_eq!(std::fs::metadata(store.partial_path("alice", &hex)).unwrap().len(), 10);
        assert_eq!(store.segments("alice", &hex).saved(), 10);
        assert_eq!(store.resumable_len("alice", &hex).await, 0, "being written: not offered to others");
        assert!(matches!(up.set_checksum(&store, "alice", &hex).await, Err(BlobError::ChecksumTwice)));
        up.write(data[10..].to_vec()).await.unwrap();
        let (id, written, key) = up.finish().await.unwrap();
        assert_eq!((id.hex(), written), (hex.as_str(), size));
        assert_eq!(std::fs::read(store.store().local_path(&key).unwrap()).unwrap(), data);
        assert_eq!(store.partial_len("alice", &hex).await, 0);

        // Cut off after the checksum: resumable like any other upload.
        let other = b"cut off after its checksum";
        let mut up = store.begin_deferred(other.len() as u64).unwrap();
        up.write(other[..9].to_vec()).await.unwrap();
        up.set_checksum(&store, "alice", &sha(other)).await.unwrap();
        up.suspend().await;
        assert_eq!(store.resumable_len("alice", &sha(other)).await, 9);

        // Ended without one, or with a bad one: refused, nothing kept.
        let mut up = store.begin_deferred(3).unwrap();
        up.write(b"abc".to_vec()).await.unwrap();
        assert!(matches!(up.finish().await, Err(BlobError::NoChecksum)));
        let mut up = store.begin_deferred(3).unwrap();
        assert!(matches!(up.set_checksum(&store, "alice", "XYZ").await, Err(BlobError::InvalidChecksum(_))));
        drop(up);
        let mut up = store.begin_deferred(3).unwrap();
        up.write(b"abc".to_vec()).await.unwrap();
        up.set_checksum(&store, "alice", &sha(b"abd")).await.unwrap();
        assert!(matches!(up.finish().await, Err(BlobError::ChecksumMismatch { .. })));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from(format!("resume-{}-alice", sha(other)))]);
    }

    #[tokio::test]
    async fn uploads_abandoned_by_a_crash_are_removed_at_start() {
        let (store, dir) = store();
        let data = b"cut short";
        let mut up = store.begin_private(100, Some(&sha(data))).unwrap();
        up.write(data.to_vec()).await.unwrap();
        std::mem::forget(up); // as a kill -9 would: the temporary file stays
        std::fs::write(dir.path().join("tmp").join("not-an-upload"), b"kept").unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 2);
        let _store = BlobStore::new(local(dir.path()), dir.path().join("tmp"));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["not-an-upload"]);
    }
}
