//! What a job attempt runs on: its local files ([`JobInputs`], [`Output`]) and the flag that
//! stops it between steps ([`StopFlag`]). The training loop and the entry point both use these;
//! neither is used by them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

pub use prune_core::domain::{JobOutcome, StopReason};

/// Local files for a job: the worker resolves blob ids and store keys to local paths first.
#[derive(Debug, Clone)]
pub struct JobInputs {
    /// `model.file` / `model.blob`: TorchScript `.pt` or a safetensors state dict.
    pub model_file: Option<PathBuf>,
    /// `model.index` + `model.shards`: a sharded safetensors checkpoint.
    pub model_shards: Option<ShardFiles>,
    /// `model.weights`: initial safetensors weights for a `sequential` model.
    pub weights_file: Option<PathBuf>,
    /// `data.file` / `data.blob`: safetensors with `x` and `y`.
    pub data_file: Option<PathBuf>,
    /// Where this job's checkpoints go.
    pub checkpoints: Output,
    /// Where the finished artifacts go.
    pub artifacts: Output,
    /// Resume from this checkpoint instead of starting fresh.
    pub resume_from: Option<PathBuf>,
    /// libtorch intra-op threads (results depend on it: a resumed job must use the same).
    pub threads: usize,
    /// `model.files`: a Hugging Face directory's other files (`config.json`, `tokenizer.json`,
    /// ...) by file name.
    pub model_files: BTreeMap<String, PathBuf>,
    /// `calibration.text` / `calibration.tokens`.
    pub calibration_file: Option<PathBuf>,
    /// `evaluation.text`.
    pub evaluation_file: Option<PathBuf>,
    /// The file store, for checkpoint files beyond the one each checkpoint event publishes (a
    /// language model keeps every pruned layer, which a resumed attempt reads back). `None`:
    /// files stay in `checkpoints.dir` (engine tests).
    pub store: Option<StoreAccess>,
    /// The model's zeros are its masks (a tracked run's weights, pruned in the client's loop):
    /// the one-shot export takes the selected tensors as they are (`streamed::run`).
    pub masks_applied: bool,
}

/// A sharded checkpoint's local files: its index and each shard by the file name the index
/// gives it.
#[derive(Debug, Clone)]
pub struct ShardFiles {
    pub index: PathBuf,
    pub shards: BTreeMap<String, PathBuf>,
}

/// What the engine may do with the file store besides reporting checkpoints.
pub trait KeyStore: Send + Sync {
    /// A local copy of the file stored under `key`.
    fn fetch(&self, key: &str) -> Result<PathBuf, String>;
    /// Publishes the finished local file `path` under `key`.
    fn publish(&self, key: &str, path: &Path) -> Result<(), String>;
    /// Removes the file under `key`, if any.
    fn delete(&self, key: &str) -> Result<(), String>;
}

/// A shared [`KeyStore`].
#[derive(Clone)]
pub struct StoreAccess(pub Arc<dyn KeyStore>);

impl std::fmt::Debug for StoreAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreAccess")
    }
}

impl JobInputs {
    /// A local copy of checkpoint file `key`: in place when this attempt's checkpoint directory
    /// holds it, else from the store.
    pub fn checkpoint_file(&self, key: &str) -> Result<PathBuf, String> {
        if let Some(path) = self.checkpoints.path(key).filter(|p| p.exists()) {
            return Ok(path);
        }
        match &self.store {
            Some(store) => store.0.fetch(key),
            None => Err(format!("checkpoint {key} is not in {}", self.checkpoints.dir.display())),
        }
    }

    /// Publishes a checkpoint file the engine wrote under this attempt's checkpoint prefix
    /// without reporting it as a checkpoint.
    pub fn keep_checkpoint_file(&self, path: &Path) -> Result<String, String> {
        let key = self.checkpoints.key(path);
        if let Some(store) = &self.store {
            store.0.publish(&key, path)?;
        }
        Ok(key)
    }

    /// Removes checkpoint file `key` (local copy and stored file), best effort.
    pub fn drop_checkpoint_file(&self, key: &str) {
        if let Some(path) = self.checkpoints.path(key) {
            let _ = std::fs::remove_file(path);
        }
        if let Some(store) = &self.store {
            if let Err(e) = store.0.delete(key) {
                tracing::warn!("could not remove {key}: {e}");
            }
        }
    }
}

/// A local directory for files the engine writes, and the file-store key prefix they are known
/// by (`checkpoints/<job>/`): the engine names what it wrote by key, never by local path.
#[derive(Debug, Clone)]
pub struct Output {
    pub dir: PathBuf,
    pub key_prefix: String,
}

impl Output {
    /// The store key of a file the engine wrote into `dir`.
    pub fn key(&self, path: &Path) -> String {
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        format!("{}{name}", self.key_prefix)
    }

    /// The local path of a key under this output (the inverse of [`Output::key`]).
    pub fn path(&self, key: &str) -> Option<PathBuf> {
        key.strip_prefix(&self.key_prefix).filter(|name| !name.contains('/')).map(|name| self.dir.join(name))
    }
}

/// Set from another thread (signal handler, stdin reader) to stop the job between steps.
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicU8>);

impl StopFlag {
    pub fn request(&self, reason: StopReason) {
        let v = match reason {
            StopReason::Cancel => 1,
            StopReason::Checkpoint => 2,
        };
        self.0.store(v, Ordering::SeqCst);
    }
    pub fn requested(&self) -> Option<StopReason> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(StopReason::Cancel),
            2 => Some(StopReason::Checkpoint),
            _ => None,
        }
    }
}
