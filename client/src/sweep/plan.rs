//! What a sweep submits: the job file's spec once per final sparsity, each with its own name,
//! the sweep's label and an idempotency key that depends only on what the job is, so running
//! the same sweep again re-attaches to its jobs instead of making new ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prune_core::schedule::Schedule;
use prune_core::validate::{self, SpecErrors};
use prune_core::JobSpec;
use sha2::{Digest, Sha256};

use crate::client::SubmitOptions;

/// The label every job of a sweep carries: `sweep=<id>` (see [`sweep_id`]).
pub const LABEL_KEY: &str = "sweep";

/// A `--sparsities` list that cannot be swept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SparsitiesError {
    #[error("no sparsity given: expected a comma-separated list such as 0.5,0.7,0.9")]
    Empty,
    #[error("an empty item in `{0}`: expected a comma-separated list such as 0.5,0.7,0.9")]
    EmptyItem(String),
    #[error("`{0}` is not a number")]
    NotANumber(String),
    #[error("sparsity {0} is not in [0, 1)")]
    OutOfRange(String),
    #[error("sparsity {0} is given twice")]
    Duplicate(String),
}

/// One job of a sweep, ready for CreateJob.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedJob {
    pub sparsity: f64,
    pub spec: JobSpec,
    /// The `sweep` label and the deterministic request id.
    pub options: SubmitOptions,
}

/// A derived spec that does not validate (a name made too long by its suffix, say): one
/// `FILE (sparsity S): field: reason` line per problem.
#[derive(Debug, thiserror::Error)]
#[error("{}", errors.0.iter().map(|e| format!("{} (sparsity {sparsity}): {e}", path.display())).collect::<Vec<_>>().join("\n"))]
pub struct DerivedSpecError {
    pub path: PathBuf,
    pub sparsity: f64,
    pub errors: SpecErrors,
}

/// Parses `0.5,0.7,0.9`: every item a number in `[0, 1)`, at least one, none twice. Returns
/// them in ascending order (the order of the CSV's rows).
pub fn parse_sparsities(text: &str) -> Result<Vec<f64>, SparsitiesError> {
    if text.trim().is_empty() {
        return Err(SparsitiesError::Empty);
    }
    let mut values: Vec<(f64, &str)> = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(SparsitiesError::EmptyItem(text.to_string()));
        }
        let value: f64 = item.parse().map_err(|_| SparsitiesError::NotANumber(item.to_string()))?;
        // NaN fails `contains` too.
        if !(0.0..1.0).contains(&value) {
            return Err(SparsitiesError::OutOfRange(item.to_string()));
        }
        if let Some((_, first)) = values.iter().find(|(v, _)| *v == value) {
            let both = if *first == item { item.to_string() } else { format!("{value} ({first} and {item})") };
            return Err(SparsitiesError::Duplicate(both));
        }
        values.push((value, item));
    }
    let mut sparsities: Vec<f64> = values.into_iter().map(|(v, _)| v).collect();
    sparsities.sort_by(f64::total_cmp);
    Ok(sparsities)
}

/// The job's name without the sparsity: the file's `name`, else the job file's stem.
pub fn base_name(spec: &JobSpec, job_file: &Path) -> String {
    spec.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| stem(job_file))
}

/// What the plot's title calls the model: the job's name, else the model file's name, else the
/// job file's stem.
pub fn model_title(spec: &JobSpec, job_file: &Path) -> String {
    let model_file = spec.model.file.as_deref().or(spec.model.dir.as_deref()).map(|p| stem_or_name(Path::new(p)));
    spec.name.clone().filter(|n| !n.is_empty()).or(model_file).unwrap_or_else(|| stem(job_file))
}

/// `<base>-s<sparsity>`, the sparsity as given (shortest form: `0.5`, `0.95`).
pub fn job_name(base: &str, sparsity: f64) -> String {
    format!("{base}-s{sparsity}")
}

/// The job file's spec for one final sparsity: the schedule's final sparsity replaced (an
/// override's own schedule is kept: it is that tensor's own choice) and the name suffixed.
pub fn derive(spec: &JobSpec, base: &str, sparsity: f64) -> JobSpec {
    let mut derived = spec.clone();
    derived.pruning.schedule = spec.pruning.schedule.with_final_sparsity(sparsity);
    derived.name = Some(job_name(base, sparsity));
    derived
}

/// Derives every job and validates it as `prunectl submit` would, before anything is sent.
pub fn check(spec: &JobSpec, job_file: &Path, sparsities: &[f64]) -> Result<(), DerivedSpecError> {
    let base = base_name(spec, job_file);
    for &sparsity in sparsities {
        validate::validate(&derive(spec, &base, sparsity)).map_err(|errors| DerivedSpecError {
            path: job_file.to_path_buf(),
            sparsity,
            errors,
        })?;
    }
    Ok(())
}

/// Things worth saying about a sweep that still runs: a `polynomial_decay` whose
/// `initial_sparsity` is above a swept sparsity decays downwards to it.
pub fn warnings(spec: &JobSpec, sparsities: &[f64]) -> Vec<String> {
    let Schedule::PolynomialDecay { initial_sparsity, .. } = spec.pruning.schedule else { return Vec::new() };
    sparsities
        .iter()
        .filter(|&&s| s < initial_sparsity)
        .map(|s| {
            format!(
                "sparsity {s} is below the schedule's initial_sparsity {initial_sparsity}: that job starts at \
                 {initial_sparsity} and decays to {s}"
            )
        })
        .collect()
}

/// The sweep's id, the value of its `sweep` label: 16 hex digits of the SHA-256 of the spec as
/// submitted (local files already replaced by their blob ids), so the same job file over the
/// same files is the same sweep whichever sparsities are run.
pub fn sweep_id(resolved: &JobSpec) -> String {
    hex::encode(&Sha256::digest(spec_json(resolved).as_bytes())[..8])
}

/// The jobs to submit for a spec whose local files are uploaded (blob ids only).
pub fn plan(resolved: &JobSpec, base: &str, sparsities: &[f64]) -> Vec<PlannedJob> {
    let labels = BTreeMap::from([(LABEL_KEY.to_string(), sweep_id(resolved))]);
    sparsities
        .iter()
        .map(|&sparsity| {
            let spec = derive(resolved, base, sparsity);
            let request_id = request_id(&spec, &labels);
            PlannedJob {
                sparsity,
                spec,
                options: SubmitOptions { labels: labels.clone(), priority: 0, request_id: Some(request_id) },
            }
        })
        .collect()
}

/// `sweep-` and 32 hex digits of the SHA-256 of everything the CreateJob request carries (spec
/// and labels): the server answers a repeated request id with the job it made the first time,
/// and a different request under the same id would be refused, so the id covers it all.
pub fn request_id(spec: &JobSpec, labels: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(spec_json(spec).as_bytes());
    hasher.update(b"\n");
    hasher.update(serde_json::to_string(labels).expect("labels serialise").as_bytes());
    format!("sweep-{}", hex::encode(&hasher.finalize()[..16]))
}

/// The spec exactly as `Client::submit_with` sends it (serde's field order is fixed).
fn spec_json(spec: &JobSpec) -> String {
    serde_json::to_string(spec).expect("a JobSpec always serialises")
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sweep".into())
}

/// `model.pt` -> `model.pt`, `llama-shards/` -> `llama-shards`.
fn stem_or_name(path: &Path) -> String {
    path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = r#"
        name = "digits"
        [model]
        sequential = [{ type = "linear", in = 64, out = 10 }]
        [data]
        builtin = "digits"
        [training]
        epochs = 1
        [pruning]
        schedule = { kind = "polynomial_decay", initial_sparsity = 0.2, final_sparsity = 0.8, begin_step = 0, end_step = 50, frequency = 10 }
        [[pruning.overrides]]
        match = "^0\\.bias$"
        schedule = { kind = "constant_sparsity", target_sparsity = 0.3 }
    "#;

    fn spec(text: &str) -> JobSpec {
        validate::parse_toml(text).unwrap()
    }

    #[test]
    fn sparsities_parse_sorted_and_bad_ones_are_named() {
        assert_eq!(parse_sparsities("0.9, 0.5,0.7").unwrap(), [0.5, 0.7, 0.9]);
        assert_eq!(parse_sparsities("0").unwrap(), [0.0]);
        assert_eq!(parse_sparsities(""), Err(SparsitiesError::Empty));
        assert_eq!(parse_sparsities("  "), Err(SparsitiesError::Empty));
        assert_eq!(parse_sparsities("0.5,,0.7"), Err(SparsitiesError::EmptyItem("0.5,,0.7".into())));
        assert_eq!(parse_sparsities("0.5,abc"), Err(SparsitiesError::NotANumber("abc".into())));
        assert_eq!(parse_sparsities("1.0"), Err(SparsitiesError::OutOfRange("1.0".into())));
        assert_eq!(parse_sparsities("-0.1"), Err(SparsitiesError::OutOfRange("-0.1".into())));
        assert_eq!(parse_sparsities("NaN"), Err(SparsitiesError::OutOfRange("NaN".into())));
        assert_eq!(parse_sparsities("0.5,0.7,0.5"), Err(SparsitiesError::Duplicate("0.5".into())));
        let err = parse_sparsities("0.5,0.50").unwrap_err().to_string();
        assert_eq!(err, "sparsity 0.5 (0.5 and 0.50) is given twice");
        assert_eq!(SparsitiesError::OutOfRange("1.0".into()).to_string(), "sparsity 1.0 is not in [0, 1)");
    }

    #[test]
    fn only_the_top_level_final_sparsity_and_the_name_change() {
        let base = spec(JOB);
        let derived = derive(&base, "digits", 0.95);
        assert_eq!(derived.name.as_deref(), Some("digits-s0.95"));
        assert_eq!(derived.pruning.schedule.final_sparsity(), 0.95f32);
        match derived.pruning.schedule {
            Schedule::PolynomialDecay { initial_sparsity, final_sparsity, begin_step, end_step, frequency, power } => {
                assert_eq!((initial_sparsity, final_sparsity), (0.2, 0.95));
                assert_eq!((begin_step, end_step, frequency, power), (0, 50, 10, 3.0));
            }
            other => panic!("{other:?}"),
        }
        // The override keeps its own schedule; nothing else moves.
        assert_eq!(derived.pruning.overrides, base.pruning.overrides);
        assert_eq!(derived.training, base.training);
        assert_eq!(derived.data, base.data);
        let constant = Schedule::ConstantSparsity { target_sparsity: 0.5, begin_step: 3, end_step: 90, frequency: 7 }
            .with_final_sparsity(0.7);
        assert_eq!(
            constant,
            Schedule::ConstantSparsity { target_sparsity: 0.7, begin_step: 3, end_step: 90, frequency: 7 }
        );
    }

    #[test]
    fn names_fall_back_to_the_file_stem() {
        let mut unnamed = spec(JOB);
        unnamed.name = None;
        assert_eq!(base_name(&unnamed, Path::new("jobs/mlp.toml")), "mlp");
        assert_eq!(base_name(&spec(JOB), Path::new("jobs/mlp.toml")), "digits");
        assert_eq!(job_name("mlp", 0.0), "mlp-s0");
        unnamed.model.sequential = None;
        unnamed.model.file = Some("models/net.pt".into());
        assert_eq!(model_title(&unnamed, Path::new("mlp.toml")), "net.pt");
        assert_eq!(model_title(&spec(JOB), Path::new("mlp.toml")), "digits");
    }

    #[test]
    fn request_ids_are_stable_distinct_and_valid() {
        let base = spec(JOB);
        let first = plan(&base, "digits", &[0.5, 0.9]);
        let again = plan(&base, "digits", &[0.9]);
        assert_eq!(first.len(), 2);
        // The same job in another sweep run: the same key and label.
        assert_eq!(first[1].options.request_id, again[0].options.request_id);
        assert_eq!(first[1].options.labels, again[0].options.labels);
        assert_ne!(first[0].options.request_id, first[1].options.request_id);
        let id = first[0].options.request_id.clone().unwrap();
        // The server's rule: at most 128 of `A-Za-z0-9-_.:`.
        assert!(id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)), "{id}");
        let label = &first[0].options.labels[LABEL_KEY];
        assert_eq!(label.len(), 16);
        // Another job file (here: another seed) is another sweep.
        let mut other = base.clone();
        other.training.seed = 1;
        let other = plan(&other, "digits", &[0.5]);
        assert_ne!(other[0].options.request_id, first[0].options.request_id);
        assert_ne!(other[0].options.labels[LABEL_KEY], *label);
    }

    #[test]
    fn derived_specs_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("long.toml");
        let mut long = spec(JOB);
        long.name = Some("n".repeat(254));
        let err = check(&long, &job, &[0.5, 0.95]).unwrap_err();
        assert_eq!(err.sparsity, 0.5);
        let text = err.to_string();
        assert!(text.starts_with(&format!("{} (sparsity 0.5): name: ", job.display())), "{text}");
        assert!(check(&spec(JOB), &job, &[0.5, 0.95]).is_ok());
    }

    #[test]
    fn a_sparsity_below_the_initial_one_is_warned_about() {
        let warnings = warnings(&spec(JOB), &[0.1, 0.5]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("sparsity 0.1 is below"), "{warnings:?}");
    }
}
