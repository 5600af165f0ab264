//! Hugging Face style sharded safetensors checkpoints: `model.safetensors.index.json`, whose
//! `weight_map` puts every tensor in one shard file, and the shards themselves.
//!
//! [`ShardedCheckpoint::open`] reads the index and every shard's header (never tensor data) and
//! checks them against each other, so that `prunectl submit` (before uploading anything) and
//! the worker (before writing anything) refuse the same broken checkpoints with the same
//! messages, each naming the shard and the tensor.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tensorstream::{StreamedFile, TensorInfo};

/// The index's file name, where Hugging Face and compressed-tensors look for it.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The model config file, where compressed-tensors looks for its `quantization_config`.
pub const CONFIG_FILE: &str = "config.json";
/// Largest index read: a model with a million tensors has an index of ~100 MB; real ones are
/// under 1 MB.
pub const MAX_INDEX_BYTES: u64 = 128 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("{INDEX_FILE}: {0}")]
    Index(String),
    #[error("the index names shard `{0}`, which is not there")]
    MissingShard(String),
    #[error("shard `{0}` is not named by the index")]
    UnlistedShard(String),
    #[error("shard `{shard}`: {reason}")]
    Shard { shard: String, reason: String },
    #[error("tensor `{tensor}`: the index puts it in shard `{shard}`, which does not hold it")]
    NotInShard { tensor: String, shard: String },
    #[error("tensor `{tensor}` in shard `{shard}` is not in the index")]
    Unindexed { tensor: String, shard: String },
    #[error("tensor `{tensor}` is in shard `{shard}`, but the index puts it in shard `{indexed}`")]
    WrongShard { tensor: String, shard: String, indexed: String },
    #[error("tensor `{tensor}` is in both shard `{first}` and shard `{second}`")]
    TwoShards { tensor: String, first: String, second: String },
}

/// Why `name` cannot be a shard's file name, if it cannot: shards are plain file names (no
/// directories, so an index cannot point outside its directory) ending in `.safetensors`.
pub fn shard_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 255 {
        return Some("a shard's file name must have 1 to 255 bytes".into());
    }
    if name.contains(['/', '\\', '\0']) || name.starts_with('.') {
        return Some(format!("`{name}` is not a plain file name (no directories, not starting with `.`)"));
    }
    if !name.ends_with(".safetensors") {
        return Some(format!("`{name}` does not end in `.safetensors`"));
    }
    None
}

/// The parsed index: which shard holds each tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Tensor name -> shard file name.
    pub weight_map: BTreeMap<String, String>,
}

impl ShardIndex {
    pub fn parse(bytes: &[u8]) -> Result<ShardIndex, ShardError> {
        let index: ShardIndex =
            serde_json::from_slice(bytes).map_err(|e| ShardError::Index(format!("not a safetensors index: {e}")))?;
        if index.weight_map.is_empty() {
            return Err(ShardError::Index("weight_map names no tensor".into()));
        }
        for (tensor, shard) in &index.weight_map {
            if let Some(problem) = shard_name_problem(shard) {
                return Err(ShardError::Index(format!("tensor `{tensor}`: {problem}")));
            }
        }
        Ok(index)
    }

    /// Reads and parses the index file at `path`.
    pub fn read(path: &Path) -> Result<ShardIndex, ShardError> {
        let io = |e: std::io::Error| ShardError::Index(format!("cannot read {}: {e}", path.display()));
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_INDEX_BYTES {
            return Err(ShardError::Index(format!("{len} bytes: more than the {MAX_INDEX_BYTES} an index may have")));
        }
        ShardIndex::parse(&std::fs::read(path).map_err(io)?)
    }

    /// The shard file names, sorted (Hugging Face's `-0000i-of-0000n` names sort in order).
    pub fn shards(&self) -> Vec<&str> {
        self.weight_map.values().map(String::as_str).collect::<BTreeSet<_>>().into_iter().collect()
    }
}

/// One shard: its file name as the index names it, and the open file.
#[derive(Debug)]
pub struct Shard {
    pub name: String,
    pub file: StreamedFile,
}

/// An index and its shards, checked against each other: every shard the index names is there
/// and no other, every tensor is in exactly the shard the index says.
#[derive(Debug)]
pub struct ShardedCheckpoint {
    pub index: ShardIndex,
    /// In the order of [`ShardIndex::shards`].
    pub shards: Vec<Shard>,
}

impl ShardedCheckpoint {
    /// Opens the index at `index_path` and the shards at `paths` (file name -> local path).
    pub fn open(index_path: &Path, paths: &BTreeMap<String, PathBuf>) -> Result<ShardedCheckpoint, ShardError> {
        let index = ShardIndex::read(index_path)?;
        let named = index.shards();
        if let Some(missing) = named.iter().find(|n| !paths.contains_key(**n)) {
            return Err(ShardError::MissingShard(missing.to_string()));
        }
        if let Some(extra) = paths.keys().find(|n| !named.contains(&n.as_str())) {
            return Err(ShardError::UnlistedShard(extra.clone()));
        }
        let shards = named.iter().map(|name| open_shard(name, &paths[*name])).collect::<Result<Vec<_>, _>>()?;
        check_consistent(&index, &shards)?;
        Ok(ShardedCheckpoint { index, shards })
    }

    /// Opens a checkpoint directory: its index and the shards it names, next to it.
    pub fn open_dir(dir: &Path) -> Result<ShardedCheckpoint, ShardError> {
        let index_path = dir.join(INDEX_FILE);
        let index = ShardIndex::read(&index_path)?;
        let mut paths = BTreeMap::new();
        for name in index.shards() {
            let path = dir.join(name);
            if !path.is_file() {
                return Err(ShardError::MissingShard(name.to_string()));
            }
            paths.insert(name.to_string(), path);
        }
        ShardedCheckpoint::open(&index_path, &paths)
    }

    /// Every tensor of every shard, shard by shard, each in file order.
    pub fn tensors(&self) -> impl Iterator<Item = (&Shard, &TensorInfo)> {
        self.shards.iter().flat_map(|s| s.file.tensors.iter().map(move |t| (s, t)))
    }
}

fn open_shard(name: &str, path: &Path) -> Result<Shard, ShardError> {
    let file = StreamedFile::open(path).map_err(|e| ShardError::Shard {
        shard: name.to_string(),
        reason: format!("not a valid safetensors file: {}", strip_path(&e.to_string(), path)),
    })?;
    Ok(Shard { name: name.to_string(), file })
}

/// Error messages of a local file name it by its (server-side, temporary) path: the shard's
/// name already says which file it is.
fn strip_path(message: &str, path: &Path) -> String {
    message.replace(&format!("{}: ", path.display()), "")
}

fn check_consistent(index: &ShardIndex, shards: &[Shard]) -> Result<(), ShardError> {
    // Duplicates first: a tensor in two shards is what went wrong, whatever the index says.
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for shard in shards {
        for t in &shard.file.tensors {
            if let Some(first) = seen.insert(&t.name, &shard.name) {
                return Err(ShardError::TwoShards {
                    tensor: t.name.clone(),
                    first: first.to_string(),
                    second: shard.name.clone(),
                });
            }
        }
    }
    for shard in shards {
        for t in &shard.file.tensors {
            match index.weight_map.get(&t.name) {
                None => return Err(ShardError::Unindexed { tensor: t.name.clone(), shard: shard.name.clone() }),
                Some(indexed) if *indexed != shard.name => {
                    return Err(ShardError::WrongShard {
                        tensor: t.name.clone(),
                        shard: shard.name.clone(),
                        indexed: indexed.clone(),
                    })
                }
                Some(_) => {}
            }
        }
    }
    if let Some((tensor, shard)) = index.weight_map.iter().find(|(t, _)| !seen.contains_key(t.as_str())) {
        return Err(ShardError::NotInShard { tensor: tensor.clone(), shard: shard.clone() });
    }
    Ok(())
}

#[cfg(test)]
#[path = "sharded_tests.rs"]
mod tests;
