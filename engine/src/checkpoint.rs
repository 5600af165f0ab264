//! Checkpoints: everything needed for a bitwise-identical resume (weights, masks, optimizer
//! state, step, epoch, position in the epoch, and for TorchScript the module with its buffers),
//! written atomically: temp file, fsync, rename, fsync the directory.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use prune_core::files::write_atomically;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::analysis::budget::Plan;
use crate::{tensors, EngineError};

/// How many checkpoint files a job keeps: the newest, plus fallbacks in case it is corrupt.
const KEEP: usize = 3;
const FORMAT: u32 = 1;

/// The loop position and running totals, stored in the checkpoint's metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Batches trained so far (tfmot's step counter).
    pub step: i64,
    pub epoch: i64,
    /// The next batch to train within `epoch`.
    pub batch: i64,
    pub optim_steps: i64,
    /// Running loss and accuracy of the current epoch.
    pub loss_sum: f64,
    pub correct: f64,
    pub seen: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format: u32,
    state: TrainState,
    params: Vec<String>,
    masks: Vec<String>,
    /// Buffer names (BatchNorm statistics) in the model's order; absent in checkpoints of
    /// models without any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    buffers: Vec<String>,
    /// A budget's plan, once decided (absent before and in jobs without a budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plan: Option<Plan>,
}

pub struct Saved {
    pub state: TrainState,
    /// Parameters in the model's order, by name.
    pub params: Vec<(String, Tensor)>,
    /// Buffers in the model's order, by name (BatchNorm's running statistics change every
    /// training step, so a bitwise resume needs them).
    pub buffers: Vec<(String, Tensor)>,
    /// Masks in target order.
    pub masks: Vec<Tensor>,
    pub optim: Vec<(String, Tensor)>,
    /// The TorchScript module itself (keeps buffers such as BatchNorm statistics).
    pub script: Option<Vec<u8>>,
    /// A budget's plan, once decided at the first pruning step.
    pub plan: Option<Plan>,
}

pub struct Written {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
}

pub fn write(dir: &Path, saved: &Saved) -> Result<Written, EngineError> {
    let err = |e: std::io::Error| EngineError::Checkpoint(format!("cannot write checkpoint in {}: {e}", dir.display()));
    fs::create_dir_all(dir).map_err(err)?;
    let meta = Meta {
        format: FORMAT,
        state: saved.state,
        params: saved.params.iter().map(|(n, _)| n.clone()).collect(),
        masks: (0..saved.masks.len()).map(|i| format!("mask.{i}")).collect(),
        buffers: saved.buffers.iter().map(|(n, _)| n.clone()).collect(),
        plan: saved.plan.clone(),
    };
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (i, (_, t)) in saved.params.iter().enumerate() {
        named.push((format!("param.{i}"), t.shallow_clone()));
    }
    for (i, m) in saved.masks.iter().enumerate() {
        named.push((format!("mask.{i}"), m.shallow_clone()));
    }
    for (i, (_, t)) in saved.buffers.iter().enumerate() {
        named.push((format!("buffer.{i}"), t.shallow_clone()));
    }
    named.extend(saved.optim.iter().map(|(n, t)| (n.clone(), t.shallow_clone())));
    if let Some(script) = &saved.script {
        named.push(("torchscript".into(), Tensor::from_slice(script)));
    }
    let metadata =
        HashMap::from([("prune_checkpoint".to_string(), serde_json::to_string(&meta).expect("meta serialises"))]);
    let bytes = tensors::write(&named, metadata)?;
    let path = dir.join(format!("step-{:010}.ckpt", saved.state.step));
    let disk_full = injected_disk_full();
    write_atomically(&path, |f| {
        if disk_full {
            f.write_all(&bytes[..bytes.len() / 2])?;
            return Err(std::io::Error::from_raw_os_error(ENOSPC));
        }
        f.write_all(&bytes)
    })
    .map_err(err)?;
    prune_old(dir);
    Ok(Written { path, sha256: hex::encode(Sha256::digest(&bytes)), bytes: bytes.len() as u64 })
}

/// TEST HOOK, for the fault tests (`tests/faults.rs`) only; never set it in production.
/// `PRUNE_TEST_FAIL_CHECKPOINT_WRITE=<n>` makes the n-th checkpoint write of this process
/// (counting from 1) fail as a full disk would: part of the temporary file is written, then
/// the write fails with ENOSPC (`io::ErrorKind::StorageFull`). The server passes its
/// environment on to its worker processes, so setting it on the server reaches every worker.
pub const TEST_FAIL_WRITE_ENV: &str = "PRUNE_TEST_FAIL_CHECKPOINT_WRITE";

/// Checkpoint writes attempted by this process (for the test hook above).
static CHECKPOINT_WRITES: AtomicU64 = AtomicU64::new(0);

/// Whether the test hook asks this checkpoint write to fail.
fn injected_disk_full() -> bool {
    let n = CHECKPOINT_WRITES.fetch_add(1, Ordering::Relaxed) + 1;
    std::env::var(TEST_FAIL_WRITE_ENV).ok().and_then(|v| v.trim().parse::<u64>().ok()) == Some(n)
}

/// ENOSPC on Linux: what `write(2)` reports on a full disk.
const ENOSPC: i32 = 28;

fn prune_old(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut ckpts: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .collect();
    ckpts.sort();
    let excess = ckpts.len().saturating_sub(KEEP);
    for old in &ckpts[..excess] {
        let _ = fs::remove_file(old);
    }
}

pub fn read(path: &Path) -> Result<Saved, EngineError> {
    let bad = |what: String| EngineError::Checkpoint(format!("{}: {what}", path.display()));
    let bytes = fs::read(path).map_err(|e| bad(e.to_string()))?;
    let (named, metadata) = tensors::read(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta: Meta = metadata
        .get("prune_checkpoint")
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(|| bad("not a prune checkpoint".into()))?;
    if meta.format != FORMAT {
        return Err(bad(format!("checkpoint format {} (this build reads {FORMAT})", meta.format)));
    }
    let mut by_name: HashMap<String, Tensor> = named.into_iter().collect();
    let mut take = |n: &str| by_name.remove(n).ok_or_else(|| bad(format!("missing tensor {n}")));
    let params = meta
        .params
        .iter()
        .enumerate()
        .map(|(i, name)| Ok((name.clone(), take(&format!("param.{i}"))?)))
        .collect::<Result<Vec<_>, EngineError>>()?;
    let masks = meta.masks.iter().map(|n| take(n)).collect::<Result<Vec<_>, _>>()?;
    let buffers = meta
        .buffers
        .iter()
        .enumerate()
        .map(|(i, name)| Ok((name.clone(), take(&format!("buffer.{i}"))?)))
        .collect::<Result<Vec<_>, EngineError>>()?;
    let script = match by_name.remove("torchscript") {
        Some(t) => Some(Vec::<u8>::try_from(&t.to_kind(Kind::Uint8))?),
        None => None,
    };
    let optim = by_name.into_iter().filter(|(n, _)| n.starts_with("optim.")).collect();
    Ok(Saved { state: meta.state, params, buffers, masks, optim, script, plan: meta.plan })
}
