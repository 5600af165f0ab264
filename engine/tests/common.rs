//! Shared test helpers: jobs from TOML, a sink that stops at a step, artifact reading.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use prune_core::validate;
use prune_core::JobSpec;
use prune_engine::{ArtifactFile, EngineError, Event, EventSink, JobInputs, Output, StopFlag, StopReason};

pub fn spec(toml: &str) -> JobSpec {
    let spec = validate::parse_toml(toml).unwrap_or_else(|e| panic!("bad test spec: {e}"));
    validate::validate(&spec).unwrap_or_else(|e| panic!("invalid test spec: {e}"));
    spec
}

/// Where [`inputs`] put an artifact (the engine names it by store key).
pub fn artifact_path(dir: &Path, artifact: &ArtifactFile) -> PathBuf {
    inputs(dir).artifacts.path(&artifact.key).expect("artifact keys are under the job's prefix")
}

pub fn inputs(dir: &Path) -> JobInputs {
    JobInputs {
        model_file: None,
        model_shards: None,
        weights_file: None,
        data_file: None,
        checkpoints: Output { dir: dir.join("checkpoints"), key_prefix: "checkpoints/job/".into() },
        artifacts: Output { dir: dir.join("artifacts"), key_prefix: "artifacts/job/".into() },
        resume_from: None,
        threads: 1,
        model_files: Default::default(),
        calibration_file: None,
        evaluation_file: None,
        store: None,
        masks_applied: false,
    }
}

/// Records events and requests a stop once a checkpoint at or after `stop_at` is written.
pub struct StoppingSink {
    /// The directory given to [`inputs`].
    pub dir: PathBuf,
    pub events: Vec<Event>,
    pub stop_at: i64,
    pub stop: StopFlag,
}

impl EventSink for StoppingSink {
    fn emit(&mut self, event: Event) -> Result<(), EngineError> {
        if let Event::Checkpoint { step, .. } = &event {
            if *step >= self.stop_at {
                self.stop.request(StopReason::Cancel);
            }
        }
        self.events.push(event);
        Ok(())
    }
}

impl StoppingSink {
    pub fn last_checkpoint(&self) -> Option<(i64, PathBuf)> {
        self.events.iter().rev().find_map(|e| match e {
            Event::Checkpoint { step, key, .. } => Some((*step, inputs_dir_checkpoint(&self.dir, key))),
            _ => None,
        })
    }
}

fn inputs_dir_checkpoint(dir: &Path, key: &str) -> PathBuf {
    inputs(dir).checkpoints.path(key).expect("checkpoint keys are under the job's prefix")
}

pub fn venv_python() -> PathBuf {
    let venv = std::env::var("PRUNE_VENV").expect("PRUNE_VENV is set by `make test` (scripts/libtorch-env.sh)");
    Path::new(&venv).join("bin/python")
}

/// libtorch's RNG and thread count are process-wide (the server gives each job its own
/// process); tests in one binary run their jobs one at a time for the same reason.
pub fn one_job_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
