//! Every job file in `examples/` parses, validates, and draws no schedule warning: the examples
//! are what users copy, so a schedule that silently never reaches its final sparsity there
//! would teach the wrong thing. Needs no server (the end-to-end runs are in `tests/`).

use std::path::{Path, PathBuf};

use prune_core::validate::{steps_per_epoch, warnings};

/// Samples in the builtin `digits` data (scikit-learn's 8x8 digits).
const DIGITS_SAMPLES: f64 = 1797.0;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_validates_without_warnings() {
    let files = examples();
    assert!(files.len() >= 10, "expected the ten use-case examples, found {files:?}");
    for file in files {
        let spec = prune_client::jobfile::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let data = spec.data.as_ref().unwrap_or_else(|| panic!("{}: no [data]", file.display()));
        assert_eq!(data.builtin.as_deref(), Some("digits"), "{}: examples run on the builtin digits", file.display());
        // The engine holds out the last floor(N * split) samples, as Keras does.
        let train = (DIGITS_SAMPLES * (1.0 - data.validation_split)).floor() as i64;
        let total_steps = steps_per_epoch(train, spec.training.batch_size) * spec.training.epochs;
        // The demo's 40 epochs (2040 steps of a small MLP) are the longest: a few seconds.
        assert!(
            total_steps > 0 && total_steps <= 2500,
            "{}: {total_steps} steps is not a quick example",
            file.display()
        );
        let found = warnings(&spec, Some(total_steps));
        assert!(found.is_empty(), "{}: {found:?}", file.display());
    }
}

/// The language-model examples (`examples/llm/`) parse, validate and draw no warning; their
/// model directory is made by `scripts/setup-smollm2.sh`, so only the shipped texts are checked
/// to exist here.
#[test]
fn language_model_examples_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/llm");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let file = entry.unwrap().path();
        if file.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        count += 1;
        let spec = prune_client::jobfile::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let job = prune_core::validate::validate(&spec).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(job.pruning.criterion.is_calibrated(), "{}", file.display());
        let found = warnings(&spec, None);
        assert!(found.is_empty(), "{}: {found:?}", file.display());
        for text in [spec.calibration.and_then(|c| c.text), spec.evaluation.and_then(|e| e.text)].into_iter().flatten()
        {
            assert!(dir.join(&text).is_file(), "{}: {text} is not shipped", file.display());
        }
    }
    assert!(count >= 2, "expected the language-model examples in {}", dir.display());
}
