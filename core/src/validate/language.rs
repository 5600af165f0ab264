//! The language-model sections: `[calibration]`, `[evaluation]`, `model.files`, and what a
//! calibrated `pruning.method` needs of the rest of the job (docs/language-models.md).

use super::check::{is_blob_id, Errors};
use crate::job::{Calibration, Criterion, Evaluation, TokenSource};
use crate::spec::{CalibrationSpec, EvaluationSpec, JobSpec, ModelSpec, CONFIG_FILE};

/// Most calibration windows accepted.
pub const MAX_CALIBRATION_SAMPLES: i64 = 1 << 20;
/// Longest window accepted (the model's own limit is checked when its config is read).
pub const MAX_SEQ_LEN: i64 = 1 << 20;

/// Whether the job's model is (or, on the client, may be) a Hugging Face language model
/// directory: `model.dir` before upload, `model.files` with a `config.json` after.
fn is_language_model(model: &ModelSpec) -> bool {
    model.dir.is_some() || model.has_config()
}

/// The cross-section rules of a calibrated criterion and of `[evaluation]`, and the typed
/// sections.
pub(super) fn check_language(
    e: &mut Errors,
    spec: &JobSpec,
    criterion: Option<Criterion>,
) -> (Option<Calibration>, Option<Evaluation>) {
    check_model_files(e, &spec.model);
    if spec.model.has_config() {
        e.check(spec.training.epochs == 0, "training.epochs", || {
            format!(
                "a language model (model.files has {CONFIG_FILE}) is pruned one-shot: set epochs = 0 (got {})",
                spec.training.epochs
            )
        });
    }
    let calibrated = criterion.filter(Criterion::is_calibrated);
    if let Some(c) = calibrated {
        let name = c.name();
        e.check(spec.training.epochs == 0, "training.epochs", || {
            format!("pruning.method = \"{name}\" prunes one-shot: set epochs = 0 (got {})", spec.training.epochs)
        });
        e.check(spec.calibration.is_some(), "calibration", || {
            format!(
                "pruning.method = \"{name}\" needs a [calibration] table: text = \"FILE.txt\" or tokens = \"FILE.safetensors\""
            )
        });
        e.check(is_language_model(&spec.model), "model", || {
            format!("pruning.method = \"{name}\" prunes a Hugging Face language model: set model.dir to a directory with {CONFIG_FILE}")
        });
        e.check(spec.sensitivity.is_none(), "sensitivity", || {
            format!("a sensitivity analysis is not available with pruning.method = \"{name}\"")
        });
    }
    let calibration = spec.calibration.as_ref().and_then(|c| check_calibration(e, c));
    let evaluation = spec.evaluation.as_ref().and_then(|x| {
        e.check(is_language_model(&spec.model), "evaluation", || {
            format!("perplexity needs a Hugging Face language model: set model.dir to a directory with {CONFIG_FILE}")
        });
        let default_len = spec.calibration.as_ref().map_or(2048, |c| c.seq_len);
        check_evaluation(e, x, default_len)
    });
    // Calibration that no criterion reads is dropped (`warnings` says so).
    (calibration.filter(|_| calibrated.is_some()), evaluation)
}

fn file_field(e: &mut Errors, field: &str, value: &str) {
    e.check(!value.is_empty(), field, || "must not be empty".to_string());
    if value.starts_with("sha256:") {
        e.check(is_blob_id(value), field, || {
            format!("`{value}` is not a blob id: expected `sha256:` followed by 64 lowercase hex digits")
        });
    }
}

fn check_calibration(e: &mut Errors, c: &CalibrationSpec) -> Option<Calibration> {
    let source = match (&c.text, &c.tokens) {
        (Some(_), Some(_)) => {
            e.push("calibration", "exactly one of calibration.text, calibration.tokens may be set (found both)");
            None
        }
        (None, None) => {
            e.push("calibration", "one of calibration.text, calibration.tokens must be set");
            None
        }
        (Some(text), None) => {
            file_field(e, "calibration.text", text);
            Some(TokenSource::Text(text.clone()))
        }
        (None, Some(tokens)) => {
            file_field(e, "calibration.tokens", tokens);
            Some(TokenSource::Tokens(tokens.clone()))
        }
    };
    let samples = within(e, "calibration.samples", c.samples, MAX_CALIBRATION_SAMPLES);
    let seq_len = within(e, "calibration.seq_len", c.seq_len, MAX_SEQ_LEN);
    Some(Calibration { source: source?, samples: samples?, seq_len: seq_len?, seed: c.seed })
}

fn check_evaluation(e: &mut Errors, x: &EvaluationSpec, default_len: i64) -> Option<Evaluation> {
    let text = match &x.text {
        Some(text) => {
            file_field(e, "evaluation.text", text);
            Some(text.clone())
        }
        None => {
            e.push("evaluation.text", "the text whose perplexity is measured must be set");
            None
        }
    };
    let seq_len = within(e, "evaluation.seq_len", x.seq_len.unwrap_or(default_len), MAX_SEQ_LEN);
    let max_windows = match x.max_windows {
        Some(n) => Some(within(e, "evaluation.max_windows", n, i64::from(u32::MAX))?),
        None => None,
    };
    Some(Evaluation { text: text?, seq_len: seq_len?, max_windows })
}

/// `value` in `1..=max` as a count.
fn within(e: &mut Errors, field: &str, value: i64, max: i64) -> Option<usize> {
    let ok = (1..=max).contains(&value);
    e.check(ok, field, || format!("must be between 1 and {max} (got {value})"));
    ok.then_some(value as usize)
}

/// `model.files`: plain file names to blob ids, beside the weights they describe.
fn check_model_files(e: &mut Errors, model: &ModelSpec) {
    let Some(files) = &model.files else { return };
    e.check(model.blob.is_some() || model.index.is_some(), "model.files", || {
        "a model directory's files go with its weights: model.blob (one model.safetensors) or model.index (shards)"
            .to_string()
    });
    for (name, blob) in files {
        let field = format!("model.files.{name}");
        e.check(is_plain_file_name(name), field.clone(), || {
            "must be a file name of the model directory (no `/`, not starting with `.`)".to_string()
        });
        e.check(is_blob_id(blob), field, || {
            format!("`{blob}` is not a blob id: expected `sha256:` followed by 64 lowercase hex digits")
        });
    }
}

/// A name that stays inside the directory it is written to.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0'])
}
