//! From the request's blob ids and store keys to the local files the engine reads and writes,
//! and back: what the engine wrote is published in the store under its key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prune_core::domain::JobOutcome;
use prune_core::worker_protocol::WorkerRequest;
use prune_engine::{EngineError, JobInputs, Output, ShardFiles};
use prune_store::{FileStore, Key};

/// Where the engine writes, so that the results can be published afterwards.
pub struct Outputs {
    artifacts: Output,
}

impl Outputs {
    /// Publishes the artifacts under their keys.
    pub fn publish(&self, store: &dyn FileStore, outcome: &JobOutcome) -> Result<(), EngineError> {
        for artifact in &outcome.artifacts {
            publish(store, &self.artifacts, &artifact.key)?;
        }
        Ok(())
    }
}

/// Resolves the request into the engine's local inputs.
pub fn resolve(
    request: &WorkerRequest,
    shared_store: &Arc<dyn FileStore>,
    scratch: &Path,
) -> Result<(JobInputs, Outputs), EngineError> {
    let store = shared_store.as_ref();
    let spec = &request.spec;
    let blob = |field: &str, id: Option<&str>| id.map(|id| local_blob(store, scratch, field, id)).transpose();
    let inputs = &request.inputs;
    let calibration = spec.calibration.as_ref();
    let checkpoints = output(store, scratch, &inputs.checkpoint_prefix)?;
    let artifacts = output(store, scratch, &inputs.artifact_prefix)?;
    let resume_from = match &inputs.resume_from {
        Some(key) => Some(fetch(store, &key_of(key)?, scratch)?),
        None => None,
    };
    let job_inputs = JobInputs {
        model_file: blob("model.blob", spec.model.blob.as_deref())?,
        model_shards: shard_files(spec, store, scratch)?,
        weights_file: blob("model.weights", spec.model.weights.as_deref())?,
        data_file: blob("data.blob", spec.data.as_ref().and_then(|d| d.blob.as_deref()))?,
        checkpoints,
        artifacts: artifacts.clone(),
        resume_from,
        threads: inputs.threads,
        masks_applied: inputs.masks_applied,
        model_files: model_files(spec, store, scratch)?,
        calibration_file: blob("calibration", calibration.and_then(|c| c.text.as_deref().or(c.tokens.as_deref())))?,
        evaluation_file: blob("evaluation.text", spec.evaluation.as_ref().and_then(|e| e.text.as_deref()))?,
        store: Some(prune_engine::StoreAccess(Arc::new(WorkerStore {
            store: shared_store.clone(),
            scratch: scratch.to_path_buf(),
        }))),
    };
    Ok((job_inputs, Outputs { artifacts }))
}

/// The local file of the blob `id` that spec field `field` names.
fn local_blob(store: &dyn FileStore, scratch: &Path, field: &str, id: &str) -> Result<PathBuf, EngineError> {
    let hex = id.strip_prefix("sha256:").ok_or_else(|| EngineError::Spec(format!("{field}: not a blob id: {id}")))?;
    let key = Key::blob(hex).map_err(|e| EngineError::Spec(format!("{field}: {e}")))?;
    fetch(store, &key, scratch)
}

/// A sharded checkpoint's index and shards as local files (each shard is its own blob).
fn shard_files(
    spec: &prune_core::JobSpec,
    store: &dyn FileStore,
    scratch: &Path,
) -> Result<Option<ShardFiles>, EngineError> {
    let Some(index) = &spec.model.index else { return Ok(None) };
    let index = local_blob(store, scratch, "model.index", index)?;
    let mut shards = std::collections::BTreeMap::new();
    for (name, id) in spec.model.shards.iter().flatten() {
        shards.insert(name.clone(), local_blob(store, scratch, &format!("model.shards.{name}"), id)?);
    }
    Ok(Some(ShardFiles { index, shards }))
}

/// A Hugging Face directory's other files (`model.files`) as local files, by name.
fn model_files(
    spec: &prune_core::JobSpec,
    store: &dyn FileStore,
    scratch: &Path,
) -> Result<std::collections::BTreeMap<String, PathBuf>, EngineError> {
    let mut files = std::collections::BTreeMap::new();
    for (name, id) in spec.model.files.iter().flatten() {
        files.insert(name.clone(), local_blob(store, scratch, &format!("model.files.{name}"), id)?);
    }
    Ok(files)
}

/// The store as the engine sees it beyond checkpoint events (a language model's pruned layers).
struct WorkerStore {
    store: Arc<dyn FileStore>,
    scratch: PathBuf,
}

impl prune_engine::KeyStore for WorkerStore {
    fn fetch(&self, key: &str) -> Result<PathBuf, String> {
        let key = Key::parse(key).map_err(|e| e.to_string())?;
        self.store.fetch(&key, &self.scratch).map_err(|e| e.to_string())
    }

    fn publish(&self, key: &str, path: &Path) -> Result<(), String> {
        let key = Key::parse(key).map_err(|e| e.to_string())?;
        self.store.put(&key, path).map_err(|e| e.to_string())
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        let key = Key::parse(key).map_err(|e| e.to_string())?;
        self.store.delete(&key).map_err(|e| e.to_string())
    }
}

/// Publishes a file the engine wrote under `output` (a no-op where the store is this machine's
/// directory and the engine wrote in place).
pub fn publish(store: &dyn FileStore, output: &Output, key: &str) -> Result<(), EngineError> {
    let key = key_of(key)?;
    let written = output
        .path(key.as_str())
        .ok_or_else(|| EngineError::Export(format!("{key} is not under {}", output.key_prefix)))?;
    store.put(&key, &written).map_err(|e| EngineError::Export(e.to_string()))
}

/// The local directory the engine writes a key prefix's files into: in place for a local store.
fn output(store: &dyn FileStore, scratch: &Path, prefix: &str) -> Result<Output, EngineError> {
    let trimmed = key_of(prefix.trim_end_matches('/'))?;
    let dir = store.local_path(&trimmed).unwrap_or_else(|| scratch.join(trimmed.as_str()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| EngineError::Io(std::io::Error::new(e.kind(), format!("creating {}: {e}", dir.display()))))?;
    Ok(Output { dir, key_prefix: prefix.to_string() })
}

fn fetch(store: &dyn FileStore, key: &Key, scratch: &Path) -> Result<PathBuf, EngineError> {
    store.fetch(key, scratch).map_err(|e| EngineError::Data(e.to_string()))
}

fn key_of(key: &str) -> Result<Key, EngineError> {
    Key::parse(key).map_err(|e| EngineError::Spec(e.to_string()))
}
