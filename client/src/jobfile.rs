//! Job files: parsed and validated locally (so mistakes are reported before anything is
//! uploaded), and their local paths uploaded and replaced by blob ids.
//!
//! Paths in a job file are relative to the file's own directory, not to wherever `prunectl`
//! runs, so that a job file and its model can be moved (or referenced from scripts) together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use prune_core::sharded::{ShardedCheckpoint, INDEX_FILE};
use prune_core::validate::{self, is_blob_id};
use prune_core::JobSpec;
use serde::Serialize;

use crate::error::{ClientError, Result};
use crate::model_dir::{self, DirWeights, ModelDir, SINGLE_FILE};
use crate::types::JobInfo;
use crate::upload::Uploaded;
use crate::Client;

/// What [`Client::submit_file`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Submitted {
    pub job: JobInfo,
    pub uploads: Vec<Uploaded>,
}

/// Shards uploaded at once: enough to keep a fast link busy while one shard is hashed.
const PARALLEL_UPLOADS: usize = 4;

/// Reads, parses and validates a job file. Errors name the file and every bad field, e.g.
/// `job.toml: pruning.schedule.end_step: ...`.
pub fn load(path: &Path) -> Result<JobSpec> {
    let text = std::fs::read_to_string(path).map_err(|e| ClientError::io(path, e))?;
    let spec_error = |errors| ClientError::Spec { path: path.to_path_buf(), errors };
    let spec = validate::parse_toml(&text).map_err(spec_error)?;
    validate::validate(&spec).map_err(spec_error)?;
    Ok(spec)
}

/// The directory a job file's relative paths start from.
pub fn base_dir(job_file: &Path) -> &Path {
    match job_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

impl Client {
    /// Uploads the local files `spec` names (`model.file`, `model.weights`, `model.dir`,
    /// `data.file`, `calibration.text` / `calibration.tokens`, `evaluation.text`; paths relative
    /// to `base_dir`) and rewrites the spec to refer to the blobs instead. Checks them all first
    /// ([`check_local_files`]): nothing is uploaded for a job whose files do not fit it.
    pub async fn upload_job_files(&self, spec: &mut JobSpec, base_dir: &Path) -> Result<Vec<Uploaded>> {
        let model_dir = check_local_files(spec, base_dir)?;
        let mut uploads = Vec::new();
        if let Some(file) = spec.model.file.take() {
            let uploaded = self.upload_file(&base_dir.join(file)).await?;
            spec.model.blob = Some(uploaded.id.clone());
            uploads.push(uploaded);
        }
        // `weights` is a path on the client and a blob id on the server.
        if let Some(weights) = spec.model.weights.as_mut().filter(|w| !is_blob_id(w)) {
            let uploaded = self.upload_file(&base_dir.join(&*weights)).await?;
            *weights = uploaded.id.clone();
            uploads.push(uploaded);
        }
        if let Some(found) = model_dir {
            spec.model.dir = None;
            match found.weights {
                DirWeights::Sharded => {
                    let (index, shards) = self.upload_checkpoint_dir(&found.path, &mut uploads).await?;
                    spec.model.index = Some(index);
                    spec.model.shards = Some(shards);
                }
                DirWeights::Single => {
                    let uploaded = self.upload_file(&found.path.join(SINGLE_FILE)).await?;
                    spec.model.blob = Some(uploaded.id.clone());
                    uploads.push(uploaded);
                }
            }
            if !found.files.is_empty() {
                let files = self.upload_named(&found.path, found.files, &mut uploads).await?;
                spec.model.files.get_or_insert_default().extend(files);
            }
        }
        if let Some(data) = spec.data.as_mut() {
            if let Some(file) = data.file.take() {
                let uploaded = self.upload_file(&base_dir.join(file)).await?;
                data.blob = Some(uploaded.id.clone());
                uploads.push(uploaded);
            }
        }
        // Texts and token files: paths on the client, blob ids on the server, like `weights`.
        let calibration = spec.calibration.as_mut();
        let (text, tokens) = calibration.map(|c| (c.text.as_mut(), c.tokens.as_mut())).unwrap_or_default();
        let evaluation = spec.evaluation.as_mut().and_then(|e| e.text.as_mut());
        for value in [text, tokens, evaluation].into_iter().flatten().filter(|v| !is_blob_id(v)) {
            let uploaded = self.upload_file(&base_dir.join(&*value)).await?;
            *value = uploaded.id.clone();
            uploads.push(uploaded);
        }
        Ok(uploads)
    }

    /// Uploads `dir`'s files `names`, a few at a time, each as its own blob: file name -> blob id.
    async fn upload_named(
        &self,
        dir: &Path,
        names: Vec<String>,
        uploads: &mut Vec<Uploaded>,
    ) -> Result<BTreeMap<String, String>> {
        let uploading = names.iter().map(|name| {
            let path = dir.join(name);
            async move { self.upload_file(&path).await }
        });
        let done: Vec<Uploaded> = futures::stream::iter(uploading).buffered(PARALLEL_UPLOADS).try_collect().await?;
        let ids = names.into_iter().zip(&done).map(|(name, u)| (name, u.id.clone())).collect();
        uploads.extend(done);
        Ok(ids)
    }

    /// Checks a sharded checkpoint directory (index against every shard's header, nothing
    /// uploaded if it is broken), then uploads the index and the shards, a few at a time, each
    /// as its own blob (skipped when the server has it, resumed when cut off). Returns the
    /// index's blob id and the shards' (file name -> blob id).
    pub async fn upload_checkpoint_dir(
        &self,
        dir: &Path,
        uploads: &mut Vec<Uploaded>,
    ) -> Result<(String, BTreeMap<String, String>)> {
        let owned = dir.to_path_buf();
        let names = tokio::task::spawn_blocking(move || {
            ShardedCheckpoint::open_dir(&owned).map(|c| c.shards.into_iter().map(|s| s.name).collect::<Vec<_>>())
        })
        .await
        .map_err(|e| ClientError::io(dir, std::io::Error::other(e)))?
        .map_err(|e| ClientError::Format { path: dir.to_path_buf(), reason: e.to_string() })?;
        let index = self.upload_file(&dir.join(INDEX_FILE)).await?;
        let index_id = index.id.clone();
        uploads.push(index);
        let ids = self.upload_named(dir, names, uploads).await?;
        Ok((index_id, ids))
    }

    /// `prunectl submit`: load and validate the job file, upload what it refers to, create the
    /// job.
    pub async fn submit_file(&self, job_file: &Path) -> Result<Submitted> {
        let mut spec = load(job_file)?;
        let uploads = self.upload_job_files(&mut spec, base_dir(job_file)).await?;
        let job = self.submit(&spec).await?;
        Ok(Submitted { job, uploads })
    }
}

/// Checks what a job's local files must be before any is uploaded: every path names a file,
/// and a `model.dir` holds weights (an index or one `model.safetensors`) and, where the job needs
/// them, a `config.json` (calibrated `pruning.method`, `[evaluation]`) and a `tokenizer.json`
/// (`calibration.text`, `evaluation.text`). Returns the directory's upload plan. Every problem
/// is reported at once, by field, naming the path.
pub fn check_local_files(spec: &JobSpec, base_dir: &Path) -> Result<Option<ModelDir>> {
    let names = match spec.model.dir.as_deref() {
        Some(dir) => {
            let dir = base_dir.join(dir);
            Some(model_dir::list_dir(&dir).map_err(|e| ClientError::io(dir, e))?)
        }
        None => None,
    };
    let is_file = |p: &Path| match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err("not a file".to_string()),
        Err(e) => Err(e.to_string()),
    };
    model_dir::plan(spec, base_dir, names.as_ref(), is_file).map_err(ClientError::LocalFiles)
}

/// The local files (and a model directory) a validated job file refers to, resolved against
/// its directory: what `submit` will upload. Lets callers check or list them without a server.
pub fn local_files(spec: &JobSpec, job_file: &Path) -> Vec<PathBuf> {
    let dir = base_dir(job_file);
    let fields = model_dir::local_file_fields(spec);
    // The job file's order: the model (file or directory, weights), the data, the texts.
    let file = fields.iter().filter(|(f, _)| *f == "model.file").map(|(_, p)| *p);
    let others = fields.iter().filter(|(f, _)| *f != "model.file").map(|(_, p)| *p);
    file.chain(spec.model.dir.as_deref()).chain(others).map(|p| dir.join(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
        [model]
        sequential = [{ type = "linear", in = 64, out = 10 }]
        weights = "init.safetensors"
        [data]
        file = "../data/train.safetensors"
        validation_split = 0.1
        [training]
        epochs = 1
        [pruning]
        schedule = { kind = "constant_sparsity", target_sparsity = 0.5 }
    "#;

    #[test]
    fn paths_are_relative_to_the_job_file() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("jobs/job.toml");
        std::fs::create_dir_all(job.parent().unwrap()).unwrap();
        std::fs::write(&job, VALID).unwrap();
        let spec = validate::parse_toml(VALID).unwrap();
        let files = local_files(&spec, &job);
        let jobs = dir.path().join("jobs");
        assert_eq!(files, [jobs.join("init.safetensors"), jobs.join("../data/train.safetensors")]);
        assert_eq!(base_dir(Path::new("job.toml")), Path::new("."));
    }

    #[test]
    fn a_language_model_directory_is_checked_before_anything_is_uploaded() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job.toml");
        let text = r#"
            [model]
            dir = "smollm"
            [training]
            epochs = 0
            [pruning]
            schedule = { kind = "constant_sparsity", target_sparsity = 0.5 }
            method = "wanda"
            [calibration]
            text = "texts/calib.txt"
            [evaluation]
            text = "texts/eval.txt"
        "#;
        std::fs::write(&job, text).unwrap();
        let spec = load(&job).unwrap();
        let texts = dir.path().join("texts");
        assert_eq!(
            local_files(&spec, &job),
            [dir.path().join("smollm"), texts.join("calib.txt"), texts.join("eval.txt")]
        );
        // No directory yet: the one error names it.
        let err = check_local_files(&spec, dir.path()).unwrap_err().to_string();
        assert!(err.starts_with(&dir.path().join("smollm").display().to_string()), "{err}");

        let model = dir.path().join("smollm");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::create_dir_all(&texts).unwrap();
        std::fs::write(model.join("model.safetensors"), b"x").unwrap();
        std::fs::write(texts.join("calib.txt"), b"some text").unwrap();
        let err = check_local_files(&spec, dir.path()).unwrap_err();
        let lines: Vec<String> = err.to_string().lines().map(String::from).collect();
        assert!(matches!(err, ClientError::LocalFiles(_)));
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(lines[0].starts_with("evaluation.text: ") && lines[0].contains("eval.txt"), "{lines:?}");
        assert!(lines[1].starts_with("pruning.method: "), "{lines:?}");
        assert!(lines[3].starts_with("calibration.text: text without a tokenizer"), "{lines:?}");

        for name in ["config.json", "tokenizer.json", "generation_config.json"] {
            std::fs::write(model.join(name), b"{}").unwrap();
        }
        std::fs::write(texts.join("eval.txt"), b"more text").unwrap();
        let plan = check_local_files(&spec, dir.path()).unwrap().unwrap();
        assert_eq!(plan.weights, DirWeights::Single);
        assert_eq!(plan.files, ["config.json", "generation_config.json", "tokenizer.json"]);
    }

    #[test]
    fn invalid_fields_are_reported_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("bad.toml");
        let text = VALID.replace(r#"{ kind = "constant_sparsity", target_sparsity = 0.5 }"#, r#"{ kind = "polynomial_decay", initial_sparsity = 0.5, final_sparsity = 0.8, begin_step = 10, end_step = 5 }"#);
        std::fs::write(&job, text).unwrap();
        let err = load(&job).unwrap_err().to_string();
        let prefix = format!("{}: pruning.schedule.end_step: ", job.display());
        assert!(err.lines().any(|l| l.starts_with(&prefix)), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("broken.toml");
        std::fs::write(&job, "[model\n").unwrap();
        let err = load(&job).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: ", job.display())), "{err}");
    }
}
