//! What `prunectl submit` finds in a job's local files before uploading any of them: the
//! Hugging Face model directory of `model.dir` (a sharded checkpoint or one
//! `model.safetensors`, and with a `config.json` its companion files), and whether the job's
//! language-model sections can work with it. Every problem is reported at once, by field,
//! naming the path, so that nothing is uploaded for a job the server would refuse.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prune_core::options::Criterion;
use prune_core::sharded::INDEX_FILE;
use prune_core::spec::{CONFIG_FILE, TOKENIZER_FILE};
use prune_core::validate::{is_blob_id, FieldError, SpecErrors};
use prune_core::JobSpec;

/// The one weights file of an unsharded Hugging Face directory.
pub const SINGLE_FILE: &str = "model.safetensors";

/// How a model directory holds its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirWeights {
    /// `model.safetensors.index.json` and the shards it names (uploaded as `model.index` and
    /// `model.shards`).
    Sharded,
    /// One `model.safetensors` (uploaded as `model.blob`).
    Single,
}

/// A model directory as `prunectl submit` will upload it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDir {
    pub path: PathBuf,
    pub weights: DirWeights,
    /// The companion files uploaded into `model.files`, by name, sorted: empty unless the
    /// directory has a `config.json` (without one it is a plain checkpoint, as before).
    pub files: Vec<String>,
}

/// Whether a directory entry is a companion file of a language model: its configs and
/// tokenizer (every `*.json` but the shard index, which travels as `model.index`), SentencePiece
/// and tiktoken vocabularies, merges and vocab lists (`*.txt`), chat templates (`*.jinja`).
pub fn is_companion_file(name: &str) -> bool {
    if name.starts_with('.') || name == INDEX_FILE {
        return false;
    }
    name == "tokenizer.model" || [".json", ".txt", ".tiktoken", ".jinja"].iter().any(|ext| name.ends_with(ext))
}

/// The regular, non-hidden files of a directory, by name (symlinks followed, as in the Hugging
/// Face cache's snapshot directories). Names that are not UTF-8 are skipped: no spec can name them.
pub fn list_dir(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        if !name.starts_with('.') && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            names.insert(name);
        }
    }
    Ok(names)
}

/// The checks of the job's local files, and its model directory's plan. `names` is the model
/// directory's listing ([`list_dir`]) when the spec has `model.dir`; `is_file` says why a local
/// path is not a file it can read, if it is not (a parameter so the rules are testable without
/// files).
pub fn plan(
    spec: &JobSpec,
    base_dir: &Path,
    names: Option<&BTreeSet<String>>,
    is_file: impl Fn(&Path) -> Result<(), String>,
) -> Result<Option<ModelDir>, SpecErrors> {
    let mut errors = Vec::new();
    for (field, value) in local_file_fields(spec) {
        let path = base_dir.join(value);
        if let Err(reason) = is_file(&path) {
            errors.push(FieldError::new(field, format!("{}: {reason}", path.display())));
        }
    }
    let model_dir = match (spec.model.dir.as_deref(), names) {
        (Some(dir), Some(names)) => model_dir_plan(spec, &base_dir.join(dir), names, &mut errors),
        _ => None,
    };
    if errors.is_empty() {
        Ok(model_dir)
    } else {
        Err(SpecErrors(errors))
    }
}

/// The fields whose value is a path on this machine (a value that is already a blob id is
/// not), `model.dir` aside.
pub fn local_file_fields(spec: &JobSpec) -> Vec<(&'static str, &str)> {
    let calibration = spec.calibration.as_ref();
    let paths: [(&'static str, Option<&str>); 6] = [
        ("model.file", spec.model.file.as_deref()),
        ("model.weights", spec.model.weights.as_deref()),
        ("data.file", spec.data.as_ref().and_then(|d| d.file.as_deref())),
        ("calibration.text", calibration.and_then(|c| c.text.as_deref())),
        ("calibration.tokens", calibration.and_then(|c| c.tokens.as_deref())),
        ("evaluation.text", spec.evaluation.as_ref().and_then(|e| e.text.as_deref())),
    ];
    paths.into_iter().filter_map(|(field, value)| Some((field, value?))).filter(|(_, v)| !is_blob_id(v)).collect()
}

fn model_dir_plan(
    spec: &JobSpec,
    dir: &Path,
    names: &BTreeSet<String>,
    errors: &mut Vec<FieldError>,
) -> Option<ModelDir> {
    let shown = dir.display();
    let has = |name: &str| names.contains(name);
    let weights = if has(INDEX_FILE) {
        Some(DirWeights::Sharded)
    } else if has(SINGLE_FILE) {
        Some(DirWeights::Single)
    } else {
        errors.push(FieldError::new(
            "model.dir",
            format!("{shown} holds neither {INDEX_FILE} (a sharded checkpoint) nor {SINGLE_FILE}"),
        ));
        None
    };
    let config = has(CONFIG_FILE);
    let calibrated = spec.pruning.method.parse::<Criterion>().ok().filter(|c| *c != Criterion::Magnitude);
    if let (Some(method), false) = (calibrated, config) {
        errors.push(FieldError::new(
            "pruning.method",
            format!("pruning.method = \"{method}\" prunes a language model: {shown} has no {CONFIG_FILE}"),
        ));
    }
    if spec.evaluation.is_some() && !config {
        errors.push(FieldError::new(
            "evaluation",
            format!("perplexity needs a language model: {shown} has no {CONFIG_FILE}"),
        ));
    }
    if !has(TOKENIZER_FILE) {
        let texts = [
            ("calibration.text", spec.calibration.as_ref().is_some_and(|c| c.text.is_some())),
            ("evaluation.text", spec.evaluation.as_ref().is_some_and(|e| e.text.is_some())),
        ];
        for (field, _) in texts.into_iter().filter(|(_, set)| *set) {
            let instead = if field == "calibration.text" { " (or give token ids as calibration.tokens)" } else { "" };
            errors.push(FieldError::new(
                field,
                format!("text without a tokenizer: {shown} has no {TOKENIZER_FILE}{instead}"),
            ));
        }
    }
    // The server's rule for a model with a config.json, checked here so that a checkpoint of
    // many GB is not uploaded for nothing.
    if config && spec.training.epochs != 0 {
        errors.push(FieldError::new(
            "training.epochs",
            format!(
                "a language model ({shown} has {CONFIG_FILE}) is pruned one-shot: set epochs = 0 (got {})",
                spec.training.epochs
            ),
        ));
    }
    let files = if config { names.iter().filter(|n| is_companion_file(n)).cloned().collect() } else { Vec::new() };
    Some(ModelDir { path: dir.to_path_buf(), weights: weights?, files })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prune_core::validate::parse_toml;

    const SCHEDULE: &str = "[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n";

    fn spec(extra: &str) -> JobSpec {
        let text = format!("[model]\ndir = \"lm\"\n[training]\nepochs = 0\n{SCHEDULE}{extra}");
        parse_toml(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
    }

    const WANDA: &str = "method = \"wanda\"\n[calibration]\ntext = \"calib.txt\"\n[evaluation]\ntext = \"eval.txt\"\n";

    fn files(dir: &Path, names: &[&str]) {
        for name in names {
            std::fs::write(dir.join(name), b"{}").unwrap();
        }
    }

    fn fields(errors: SpecErrors) -> Vec<String> {
        errors.0.into_iter().map(|e| e.field).collect()
    }

    fn all_files(_: &Path) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn a_single_file_language_model_uploads_its_weights_and_companion_files() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("lm");
        std::fs::create_dir_all(dir.join("onnx.json")).unwrap();
        files(
            &dir,
            &[
                "model.safetensors",
                "config.json",
                "generation_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.json",
                "merges.txt",
                "tokenizer.model",
                "chat_template.jinja",
                "qwen.tiktoken",
                "README.md",
                ".gitattributes",
                ".hidden.json",
                "model.gguf",
            ],
        );
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.join("config.json"), dir.join("linked.json")).unwrap();
        let names = list_dir(&dir).unwrap();
        assert!(!names.contains("onnx.json") && !names.contains(".gitattributes"), "{names:?}");
        let spec = spec(WANDA);
        let plan = plan(&spec, base.path(), Some(&names), all_files).unwrap().unwrap();
        assert_eq!(plan.path, dir);
        assert_eq!(plan.weights, DirWeights::Single);
        let mut expected = vec![
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "merges.txt",
            "qwen.tiktoken",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "vocab.json",
        ];
        if cfg!(unix) {
            expected.push("linked.json");
        }
        expected.sort();
        assert_eq!(plan.files, expected);
    }

    /// Without a config.json a directory is a plain checkpoint, as before: its weights only.
    #[test]
    fn a_sharded_directory_without_config_uploads_only_its_checkpoint() {
        let names: BTreeSet<String> =
            [INDEX_FILE, "model-00001-of-00002.safetensors", SINGLE_FILE, "tokenizer.json", "notes.txt"]
                .map(String::from)
                .into();
        let plan = plan(&spec(""), Path::new("jobs"), Some(&names), all_files).unwrap().unwrap();
        assert_eq!(plan.weights, DirWeights::Sharded, "the index wins over a stray model.safetensors");
        assert!(plan.files.is_empty(), "{:?}", plan.files);
        assert!(!is_companion_file(INDEX_FILE) && is_companion_file("config.json"));
    }

    #[test]
    fn problems_are_reported_at_once_by_field_naming_the_path() {
        let names: BTreeSet<String> = ["README.md"].map(String::from).into();
        let spec = spec(&WANDA.replace("wanda", "sparsegpt"));
        let missing = |p: &Path| if p.ends_with("calib.txt") { Err("No such file".to_string()) } else { Ok(()) };
        let errors = plan(&spec, Path::new("jobs"), Some(&names), missing).unwrap_err();
        assert_eq!(
            fields(errors.clone()),
            ["calibration.text", "model.dir", "pruning.method", "evaluation", "calibration.text", "evaluation.text"]
        );
        let dir = Path::new("jobs").join("lm").display().to_string();
        let reasons: Vec<&str> = errors.0.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons[0], format!("{}: No such file", Path::new("jobs").join("calib.txt").display()));
        assert!(reasons[1..].iter().all(|r| r.contains(&dir)), "{reasons:?}");
        assert!(reasons[2].contains("sparsegpt") && reasons[2].contains("config.json"), "{}", reasons[2]);
        assert!(reasons[4].starts_with("text without a tokenizer") && reasons[4].contains("calibration.tokens"));
        assert!(reasons[5].starts_with("text without a tokenizer"), "{}", reasons[5]);
    }

    #[test]
    fn token_ids_need_no_tokenizer_and_a_config_needs_one_shot() {
        let names: BTreeSet<String> = [SINGLE_FILE, "config.json"].map(String::from).into();
        let tokens = "method = \"wanda\"\n[calibration]\ntokens = \"ids.safetensors\"\n";
        let plan = plan(&spec(tokens), Path::new("."), Some(&names), all_files).unwrap().unwrap();
        assert_eq!(plan.files, ["config.json"]);

        let mut trained = spec("");
        trained.training.epochs = 3;
        let errors = self::plan(&trained, Path::new("."), Some(&names), all_files).unwrap_err();
        assert_eq!(fields(errors.clone()), ["training.epochs"]);
        assert!(errors.0[0].reason.contains("got 3"), "{}", errors.0[0].reason);
    }

    #[test]
    fn blob_ids_are_not_local_files() {
        let blob = format!("sha256:{}", "a".repeat(64));
        let spec = spec(&format!("[calibration]\ntokens = \"{blob}\"\n[evaluation]\ntext = \"eval.txt\"\n"));
        assert_eq!(local_file_fields(&spec), [("evaluation.text", "eval.txt")]);
    }
}
