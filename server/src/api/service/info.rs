//! GetServerInfo: what this server is, what it can do, and how much disk its data dir uses.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use prune_proto as pb;

use super::Shared;

/// Facts about this node fixed at start-up.
#[derive(Debug, Clone)]
pub struct Facts {
    pub node: String,
    pub database: &'static str,
    pub store: String,
    pub data_dir: PathBuf,
    pub workers: u32,
    pub max_attempts: u32,
    pub max_running_per_tenant: u32,
    pub retention_days: u32,
    /// Filled in once `prune-worker --devices` answers (it loads libtorch: a second or so).
    pub devices: Arc<OnceLock<Vec<String>>>,
}

/// Asks the worker binary which devices jobs can use here, in the background.
pub fn probe_devices(worker_bin: PathBuf, devices: Arc<OnceLock<Vec<String>>>) {
    tokio::spawn(async move {
        let listed = match tokio::process::Command::new(&worker_bin).arg("--devices").output().await {
            Ok(out) if out.status.success() => {
                String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
            }
            Ok(out) => {
                tracing::warn!("{} --devices: {}", worker_bin.display(), out.status);
                vec!["cpu".to_string()]
            }
            Err(e) => {
                tracing::warn!("{} --devices: {e}", worker_bin.display());
                vec!["cpu".to_string()]
            }
        };
        let _ = devices.set(listed);
    });
}

pub async fn server_info(shared: &Shared) -> pb::ServerInfo {
    let facts = &shared.facts;
    let limits = &shared.limits;
    let dir = facts.data_dir.clone();
    let data_dir_bytes = tokio::task::spawn_blocking(move || dir_bytes(&dir)).await.unwrap_or(0);
    pb::ServerInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        api_version: "pruning.v1".to_string(),
        node: facts.node.clone(),
        devices: facts.devices.get().cloned().unwrap_or_else(|| vec!["cpu".to_string()]),
        export_formats: ["safetensors", "torchscript"].map(String::from).to_vec(),
        compressions: ["none", "gzip", "zstd"].map(String::from).to_vec(),
        sparse_formats: ["dense", "bitmask"].map(String::from).to_vec(),
        limits: Some(pb::ServerLimits {
            max_upload_bytes: limits.max_upload_bytes,
            max_spec_bytes: limits.max_spec_bytes as u64,
            max_queued_per_tenant: limits.max_queued_per_tenant,
            max_message_bytes: limits.max_message_bytes,
            max_attempts: facts.max_attempts,
            max_running_per_tenant: facts.max_running_per_tenant,
            retention_days: facts.retention_days,
            tracked_timeout_secs: limits.tracked_timeout_secs,
        }),
        data_dir_bytes,
        database: facts.database.to_string(),
        store: facts.store.clone(),
        workers: facts.workers,
    }
}

/// Bytes of the regular files under `dir` (symbolic links are not followed).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}
