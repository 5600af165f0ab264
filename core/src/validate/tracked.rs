//! A tracked run's spec: the `[pruning]` (and `name`, `[export]`) a training loop outside the
//! service prunes with (the `prune` Python package). The service validates it exactly as a
//! job's, in a job whose model is the weights the loop uploads when it finishes.

use super::{parse_json, parse_toml, validate, FieldError, SpecErrors};
use crate::job::Job;
use crate::options::Structure;
use crate::spec::{JobSpec, ModelSpec, PruningSpec, TrainingSpec};

/// What needs the service's own loop or a model graph it knows, refused with the reason: a
/// loop outside prunes tensor by tensor.
pub fn outside_service_loop(p: &PruningSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if p.budget.is_some() {
        errors.push(FieldError::new(
            "pruning.budget",
            "a budget measures validation accuracy tensor by tensor inside the service's training loop; \
             the package prunes inside yours: give the schedule's final sparsities (a sensitivity job in \
             the service suggests them as overrides)",
        ));
    }
    if p.structure == Structure::Channel.as_str() {
        errors.push(FieldError::new(
            "pruning.structure",
            "channel pruning follows a model's layer graph (which tensors carry each channel), which only \
             the service knows for its built-in models; the package prunes tensor by tensor: use \
             \"element\" with element, block or m-by-n masks",
        ));
    }
    if !p.method.is_empty() && p.method != "magnitude" {
        errors.push(FieldError::new(
            "pruning.method",
            "calibrated methods (wanda, sparsegpt) prune a language model layer by layer in the service \
             (docs/language-models.md); a training loop prunes by magnitude",
        ));
    }
    errors
}

/// A tracked run's document (TOML, or JSON when it starts with `{`), which has no `[model]`:
/// read as a job document with an empty one, so that every other field is parsed and reported
/// as a job's, with the user's own line numbers (TOML gets the table appended at its end).
pub fn parse_tracked(text: &str) -> Result<JobSpec, SpecErrors> {
    if text.trim_start().starts_with('{') {
        let mut doc: serde_json::Value = match serde_json::from_str(text) {
            Ok(doc) => doc,
            Err(_) => return parse_json(text),
        };
        if let Some(table) = doc.as_object_mut() {
            table.entry("model").or_insert_with(|| serde_json::json!({}));
        }
        return parse_json(&doc.to_string());
    }
    let has_model = text.parse::<toml::Table>().map(|t| t.contains_key("model"));
    match has_model {
        Ok(false) => parse_toml(&format!("{text}\n[model]\n")),
        _ => parse_toml(text),
    }
}

/// `spec` with `model` set to the uploaded weights `blob` (`sha256:...`) and one-shot training:
/// the job a tracked run's export runs as.
pub fn with_model(spec: &JobSpec, blob: &str) -> JobSpec {
    JobSpec {
        model: ModelSpec { blob: Some(blob.to_string()), ..ModelSpec::default() },
        training: TrainingSpec { epochs: 0, ..spec.training.clone() },
        ..spec.clone()
    }
}

/// A stand-in for the weights, so the rest is checked by [`validate`] with its own field paths.
const STAND_IN_BLOB: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Validates a tracked run's spec: only `name`, `pruning` and `export` may be set (the model,
/// data and training are the loop's own), and they follow every rule a job's do.
pub fn tracked(spec: &JobSpec) -> Result<Job, SpecErrors> {
    let mut errors = Vec::new();
    let own = |field: &str| {
        FieldError::new(
            field,
            "a tracked run's model, data and training are the loop's own: give only name, pruning and export",
        )
    };
    if spec.model != ModelSpec::default() {
        errors.push(own("model"));
    }
    if spec.data.is_some() {
        errors.push(own("data"));
    }
    if spec.training != TrainingSpec::default() {
        errors.push(own("training"));
    }
    for (field, set) in [
        ("sensitivity", spec.sensitivity.is_some()),
        ("calibration", spec.calibration.is_some()),
        ("evaluation", spec.evaluation.is_some()),
    ] {
        if set {
            errors.push(FieldError::new(field, "needs the service's own run of the model; not part of a tracked run"));
        }
    }
    errors.extend(outside_service_loop(&spec.pruning));
    let checked = validate(&with_model(spec, STAND_IN_BLOB));
    match checked {
        Ok(job) if errors.is_empty() => Ok(job),
        Ok(_) => Err(SpecErrors(errors)),
        Err(SpecErrors(more)) => {
            errors.extend(more);
            Err(SpecErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> JobSpec {
        parse_tracked(text).expect("parses")
    }

    #[test]
    fn pruning_and_export_only() {
        let s = spec(
            "name = \"loop\"\n[pruning]\nschedule = { kind = \"polynomial_decay\", initial_sparsity = 0.1, \
             final_sparsity = 0.8, begin_step = 0, end_step = 100, frequency = 10 }\n\
             [export]\nsparse_format = \"bitmask\"\n",
        );
        let job = tracked(&s).expect("valid");
        assert_eq!(job.training.epochs, 0);
        let exported = with_model(&s, "sha256:ab");
        assert_eq!(exported.model.blob.as_deref(), Some("sha256:ab"));
        assert_eq!(exported.pruning, s.pruning);
    }

    #[test]
    fn documents_without_a_model_parse() {
        let toml = "name = \"loop\"\n[pruning]\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.5 }\n";
        assert_eq!(parse_tracked(toml).unwrap().name.as_deref(), Some("loop"));
        let json = r#"{"pruning": {"schedule": {"kind": "constant_sparsity", "target_sparsity": 0.5}}}"#;
        assert!(tracked(&parse_tracked(json).unwrap()).is_ok());
        // The user's own errors keep their lines.
        let err = parse_tracked("[pruning]\nshedule = 1\n").unwrap_err().to_string();
        assert!(err.contains("pruning.shedule") && err.contains("line 2"), "{err}");
        // A [model] given is read (and then refused by `tracked`).
        let with_model = parse_tracked("[model]\nfile = \"m.pt\"\n[pruning]\n").unwrap_err().to_string();
        assert!(with_model.contains("pruning"), "{with_model}");
    }

    #[test]
    fn refuses_the_loops_own_sections_and_service_only_pruning() {
        let s = spec(
            "[model]\nfile = \"m.pt\"\n[training]\nepochs = 3\n[pruning]\nstructure = \"channel\"\n\
             schedule = { kind = \"constant_sparsity\", target_sparsity = 2.0 }\n",
        );
        let fields: Vec<String> = tracked(&s).unwrap_err().0.into_iter().map(|e| e.field).collect();
        for f in ["model", "training", "pruning.structure", "pruning.schedule.target_sparsity"] {
            assert!(fields.iter().any(|g| g == f), "{f} missing from {fields:?}");
        }
    }
}
