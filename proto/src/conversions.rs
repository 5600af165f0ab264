//! Conversions between the domain types of `prune_core::domain` and the generated messages,
//! written once here, next to the generated code (as qdrant's `lib/api` does): the server and
//! every Rust client use these.

use prune_core::domain::{
    BudgetReport, ChannelReport, ChosenSparsity, InferenceTiming, JobKind, JobState, LanguageModelReport,
    LayerChannels, LinearError, MetricPoint, Perplexity, Report, SensitivityPoint, TensorReport, TensorSparsity,
};

use crate as pb;

/// A proto value the domain has no place for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("job state {0} is not a state a job can be in")]
    JobState(i32),
}

impl From<JobState> for pb::JobState {
    fn from(state: JobState) -> Self {
        match state {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        }
    }
}

impl TryFrom<pb::JobState> for JobState {
    type Error = ConversionError;
    fn try_from(state: pb::JobState) -> Result<Self, ConversionError> {
        match state {
            pb::JobState::Queued => Ok(JobState::Queued),
            pb::JobState::Running => Ok(JobState::Running),
            pb::JobState::Succeeded => Ok(JobState::Succeeded),
            pb::JobState::Failed => Ok(JobState::Failed),
            pb::JobState::Cancelled => Ok(JobState::Cancelled),
            pb::JobState::StateUnspecified => Err(ConversionError::JobState(state as i32)),
        }
    }
}

/// A `JobState` enum value as it arrives on the wire; STATE_UNSPECIFIED and unknown values are
/// errors.
pub fn job_state(value: i32) -> Result<JobState, ConversionError> {
    pb::JobState::try_from(value).map_err(|_| ConversionError::JobState(value))?.try_into()
}

impl From<JobKind> for pb::JobKind {
    fn from(kind: JobKind) -> Self {
        match kind {
            JobKind::Service => pb::JobKind::Service,
            JobKind::Tracked => pb::JobKind::Tracked,
        }
    }
}

/// A `JobKind` as it arrives on the wire: JOB_KIND_UNSPECIFIED (jobs from servers before kinds
/// existed) and unknown values read as SERVICE.
pub fn job_kind(value: i32) -> JobKind {
    match pb::JobKind::try_from(value) {
        Ok(pb::JobKind::Tracked) => JobKind::Tracked,
        _ => JobKind::Service,
    }
}

impl From<&TensorSparsity> for pb::TensorSparsity {
    fn from(t: &TensorSparsity) -> Self {
        pb::TensorSparsity { name: t.name.clone(), sparsity: t.sparsity }
    }
}

impl From<pb::TensorSparsity> for TensorSparsity {
    fn from(t: pb::TensorSparsity) -> Self {
        TensorSparsity { name: t.name, sparsity: t.sparsity }
    }
}

impl From<MetricPoint> for pb::MetricPoint {
    fn from(p: MetricPoint) -> Self {
        pb::MetricPoint { step: p.step, name: p.name, value: p.value }
    }
}

impl From<pb::MetricPoint> for MetricPoint {
    fn from(p: pb::MetricPoint) -> Self {
        MetricPoint { step: p.step, name: p.name, value: p.value }
    }
}

impl From<&TensorReport> for pb::TensorReport {
    fn from(t: &TensorReport) -> Self {
        pb::TensorReport {
            name: t.name.clone(),
            shape: t.shape.clone(),
            pruned: t.pruned,
            numel: t.numel,
            nonzero: t.nonzero,
            sparsity: t.sparsity,
        }
    }
}

impl From<pb::TensorReport> for TensorReport {
    fn from(t: pb::TensorReport) -> Self {
        TensorReport {
            name: t.name,
            shape: t.shape,
            pruned: t.pruned,
            numel: t.numel,
            nonzero: t.nonzero,
            sparsity: t.sparsity,
        }
    }
}

impl From<&LayerChannels> for pb::LayerChannels {
    fn from(l: &LayerChannels) -> Self {
        pb::LayerChannels {
            layer: l.layer.clone(),
            kind: l.kind.clone(),
            shape_before: l.shape_before.clone(),
            shape_after: l.shape_after.clone(),
            removed: l.removed.clone(),
        }
    }
}

impl From<pb::LayerChannels> for LayerChannels {
    fn from(l: pb::LayerChannels) -> Self {
        LayerChannels {
            layer: l.layer,
            kind: l.kind,
            shape_before: l.shape_before,
            shape_after: l.shape_after,
            removed: l.removed,
        }
    }
}

impl From<&ChannelReport> for pb::ChannelReport {
    fn from(c: &ChannelReport) -> Self {
        pb::ChannelReport {
            layers: c.layers.iter().map(Into::into).collect(),
            params_before: c.params_before,
            params_after: c.params_after,
            flops_before: c.flops_before,
            flops_after: c.flops_after,
            slim: c.slim,
            note: c.note.clone().unwrap_or_default(),
        }
    }
}

impl From<pb::ChannelReport> for ChannelReport {
    fn from(c: pb::ChannelReport) -> Self {
        ChannelReport {
            layers: c.layers.into_iter().map(Into::into).collect(),
            params_before: c.params_before,
            params_after: c.params_after,
            flops_before: c.flops_before,
            flops_after: c.flops_after,
            slim: c.slim,
            note: (!c.note.is_empty()).then_some(c.note),
        }
    }
}

impl From<&Report> for pb::Report {
    fn from(r: &Report) -> Self {
        pb::Report {
            tensors: r.tensors.iter().map(Into::into).collect(),
            dense_bytes: r.dense_bytes,
            gzip_dense_bytes: r.gzip_dense_bytes,
            artifact_bytes: r.artifact_bytes.clone().into_iter().collect(),
            final_val_accuracy: r.final_val_accuracy,
            final_val_loss: r.final_val_loss,
            dense_val_accuracy: r.dense_val_accuracy,
            steps: r.steps,
            json: serde_json::to_string(r).expect("reports serialise"),
            // gzip output is never empty, so 0 can only mean "not measured".
            gzip_dense_measured: r.gzip_dense_bytes > 0,
            inference: r.inference.iter().map(Into::into).collect(),
            inference_note: r.inference_note.clone().unwrap_or_default(),
            channels: r.channels.as_deref().map(Into::into),
            sensitivity: r.sensitivity.iter().map(Into::into).collect(),
            suggested_overrides: r.suggested_overrides.clone().unwrap_or_default(),
            budget: r.budget.as_deref().map(Into::into),
            language_model: r.language_model.as_deref().map(Into::into),
            kept_dense: r.kept_dense.clone(),
        }
    }
}

impl From<pb::Report> for Report {
    fn from(r: pb::Report) -> Self {
        Report {
            tensors: r.tensors.into_iter().map(Into::into).collect(),
            dense_bytes: r.dense_bytes,
            gzip_dense_bytes: r.gzip_dense_bytes,
            artifact_bytes: r.artifact_bytes.into_iter().collect(),
            final_val_accuracy: r.final_val_accuracy,
            final_val_loss: r.final_val_loss,
            dense_val_accuracy: r.dense_val_accuracy,
            steps: r.steps,
            inference: r.inference.into_iter().map(Into::into).collect(),
            inference_note: (!r.inference_note.is_empty()).then_some(r.inference_note),
            channels: r.channels.map(|c| Box::new(c.into())),
            sensitivity: r.sensitivity.into_iter().map(Into::into).collect(),
            suggested_overrides: (!r.suggested_overrides.is_empty()).then_some(r.suggested_overrides),
            budget: r.budget.map(|b| Box::new(b.into())),
            language_model: r.language_model.map(|l| Box::new(l.into())),
            kept_dense: r.kept_dense,
        }
    }
}

impl From<&SensitivityPoint> for pb::SensitivityPoint {
    fn from(p: &SensitivityPoint) -> Self {
        pb::SensitivityPoint {
            tensor: p.tensor.clone(),
            sparsity: p.sparsity,
            accuracy: p.accuracy,
            loss: p.loss,
            params_removed: p.params_removed,
        }
    }
}

impl From<pb::SensitivityPoint> for SensitivityPoint {
    fn from(p: pb::SensitivityPoint) -> Self {
        SensitivityPoint {
            tensor: p.tensor,
            sparsity: p.sparsity,
            accuracy: p.accuracy,
            loss: p.loss,
            params_removed: p.params_removed,
        }
    }
}

impl From<&BudgetReport> for pb::BudgetReport {
    fn from(b: &BudgetReport) -> Self {
        pb::BudgetReport {
            max_bytes: b.max_bytes,
            max_accuracy_drop: b.max_accuracy_drop,
            chosen: b
                .chosen
                .iter()
                .map(|c| pb::ChosenSparsity { tensor: c.tensor.clone(), planned: c.planned, sparsity: c.sparsity })
                .collect(),
            format: b.format.clone(),
            artifact_bytes: b.artifact_bytes,
            dense_accuracy: b.dense_accuracy,
            accuracy: b.accuracy,
            dense_loss: b.dense_loss,
            further_steps: b.further_steps,
            notes: b.notes.clone(),
        }
    }
}

impl From<pb::BudgetReport> for BudgetReport {
    fn from(b: pb::BudgetReport) -> Self {
        BudgetReport {
            max_bytes: b.max_bytes,
            max_accuracy_drop: b.max_accuracy_drop,
            chosen: b
                .chosen
                .into_iter()
                .map(|c| ChosenSparsity { tensor: c.tensor, planned: c.planned, sparsity: c.sparsity })
                .collect(),
            format: b.format,
            artifact_bytes: b.artifact_bytes,
            dense_accuracy: b.dense_accuracy,
            accuracy: b.accuracy,
            dense_loss: b.dense_loss,
            further_steps: b.further_steps,
            notes: b.notes,
        }
    }
}

impl From<&LanguageModelReport> for pb::LanguageModelReport {
    fn from(l: &LanguageModelReport) -> Self {
        pb::LanguageModelReport {
            method: l.method.clone(),
            architecture: l.architecture.clone(),
            layers: l.layers,
            calibration_samples: l.calibration_samples,
            calibration_seq_len: l.calibration_seq_len,
            perplexity: l.perplexity.map(|p| pb::Perplexity {
                dense: p.dense,
                pruned: p.pruned,
                seq_len: p.seq_len,
                windows: p.windows,
            }),
            reconstruction: l
                .reconstruction
                .iter()
                .map(|e| pb::LinearError { tensor: e.tensor.clone(), layer: e.layer, relative_error: e.relative_error })
                .collect(),
            peak_memory_bytes: l.peak_memory_bytes,
            prune_seconds: l.prune_seconds,
            warnings: l.warnings.clone(),
        }
    }
}

impl From<pb::LanguageModelReport> for LanguageModelReport {
    fn from(l: pb::LanguageModelReport) -> Self {
        LanguageModelReport {
            method: l.method,
            architecture: l.architecture,
            layers: l.layers,
            calibration_samples: l.calibration_samples,
            calibration_seq_len: l.calibration_seq_len,
            perplexity: l.perplexity.map(|p| Perplexity {
                dense: p.dense,
                pruned: p.pruned,
                seq_len: p.seq_len,
                windows: p.windows,
            }),
            reconstruction: l
                .reconstruction
                .into_iter()
                .map(|e| LinearError { tensor: e.tensor, layer: e.layer, relative_error: e.relative_error })
                .collect(),
            peak_memory_bytes: l.peak_memory_bytes,
            prune_seconds: l.prune_seconds,
            warnings: l.warnings,
        }
    }
}

impl From<&InferenceTiming> for pb::InferenceTiming {
    fn from(t: &InferenceTiming) -> Self {
        pb::InferenceTiming {
            batch_size: t.batch_size,
            dense_ms: t.dense_ms,
            pruned_ms: t.pruned_ms,
            speedup: t.speedup,
            runs: t.runs,
        }
    }
}

impl From<pb::InferenceTiming> for InferenceTiming {
    fn from(t: pb::InferenceTiming) -> Self {
        InferenceTiming {
            batch_size: t.batch_size,
            dense_ms: t.dense_ms,
            pruned_ms: t.pruned_ms,
            speedup: t.speedup,
            runs: t.runs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_unspecified_is_an_error() {
        for state in JobState::ALL {
            assert_eq!(job_state(pb::JobState::from(state) as i32), Ok(state));
        }
        assert_eq!(job_state(0), Err(ConversionError::JobState(0)));
        assert!(job_state(99).is_err());
        assert_eq!(pb::JobState::Queued.as_str_name(), "QUEUED");
    }

    #[test]
    fn reports_round_trip_and_carry_their_json() {
        let report = Report {
            tensors: vec![TensorReport {
                name: "0.weight".into(),
                shape: vec![2, 3],
                pruned: true,
                numel: 6,
                nonzero: 3,
                sparsity: 0.5,
            }],
            dense_bytes: 100,
            gzip_dense_bytes: 60,
            artifact_bytes: [("safetensors".to_string(), 40)].into(),
            final_val_accuracy: Some(0.9),
            final_val_loss: None,
            dense_val_accuracy: Some(0.95),
            steps: 12,
            inference: vec![InferenceTiming { batch_size: 32, dense_ms: 0.5, pruned_ms: 0.25, speedup: 2.0, runs: 20 }],
            inference_note: None,
            channels: Some(Box::new(ChannelReport {
                layers: vec![LayerChannels {
                    layer: "0".into(),
                    kind: "conv2d".into(),
                    shape_before: vec![8, 1, 3, 3],
                    shape_after: vec![4, 1, 3, 3],
                    removed: vec![0, 2, 5, 7],
                }],
                params_before: 100,
                params_after: 40,
                flops_before: Some(1000),
                flops_after: None,
                slim: true,
                note: None,
            })),
            sensitivity: vec![SensitivityPoint {
                tensor: "0.weight".into(),
                sparsity: 0.5,
                accuracy: None,
                loss: 0.7,
                params_removed: 3,
            }],
            suggested_overrides: Some("[[pruning.overrides]]\n".into()),
            budget: Some(Box::new(BudgetReport {
                max_bytes: Some(5000),
                max_accuracy_drop: None,
                chosen: vec![ChosenSparsity { tensor: "0.weight".into(), planned: 0.8, sparsity: 0.85 }],
                format: "safetensors".into(),
                artifact_bytes: 4900,
                dense_accuracy: Some(0.97),
                accuracy: Some(0.95),
                dense_loss: Some(0.3),
                further_steps: 1,
                notes: vec!["pruned further".into()],
            })),
            language_model: Some(Box::new(language_model())),
            kept_dense: vec!["embed.weight".into()],
        };
        let message = pb::Report::from(&report);
        assert_eq!(serde_json::from_str::<Report>(&message.json).unwrap(), report);
        assert_eq!(Report::from(message), report);
    }

    fn language_model() -> LanguageModelReport {
        LanguageModelReport {
            method: "sparsegpt".into(),
            architecture: "LlamaForCausalLM".into(),
            layers: 30,
            calibration_samples: 32,
            calibration_seq_len: 256,
            perplexity: Some(Perplexity { dense: 24.1, pruned: 42.5, seq_len: 256, windows: 17 }),
            reconstruction: vec![
                LinearError { tensor: "model.layers.0.self_attn.q_proj.weight".into(), layer: 0, relative_error: 0.02 },
                LinearError { tensor: "model.layers.1.mlp.down_proj.weight".into(), layer: 1, relative_error: 0.31 },
            ],
            peak_memory_bytes: 900 << 20,
            prune_seconds: 61.5,
            warnings: vec!["layer 3: Hessian dampened further".into()],
        }
    }

    /// Unset in the domain is unset on the wire (no empty message that reads as a report), and
    /// a report without perplexity or errors (magnitude, no `[evaluation]`) survives too.
    #[test]
    fn language_model_reports_round_trip() {
        let full = language_model();
        assert_eq!(LanguageModelReport::from(pb::LanguageModelReport::from(&full)), full);
        let bare = LanguageModelReport { perplexity: None, reconstruction: vec![], warnings: vec![], ..full };
        let message = pb::LanguageModelReport::from(&bare);
        assert!(message.perplexity.is_none() && message.reconstruction.is_empty());
        assert_eq!(LanguageModelReport::from(message), bare);
        assert!(pb::Report::from(&Report::default()).language_model.is_none());
    }
}
