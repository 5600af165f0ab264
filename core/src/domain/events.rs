use serde::{Deserialize, Deserializer, Serialize};

use super::{ArtifactFile, MetricPoint, Report, TensorSparsity};

/// What a running job reports, in order. The worker sends these as JSON lines to the server.
///
/// JSON has no NaN: serde_json writes a non-finite float as `null`, which is read back as NaN
/// here (a one-shot job's progress has no loss).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Sent once the model and data are loaded (also after a resume).
    Started {
        total_steps: i64,
        steps_per_epoch: i64,
        epochs: i64,
        start_step: i64,
        pruned: Vec<String>,
        /// What the worker decided that the user should know (e.g. `auto` found no GPU): added
        /// to the job's warnings.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// Training progress; sent at most a few times a second and at every mask update.
    Progress {
        step: i64,
        total_steps: i64,
        epoch: i64,
        #[serde(deserialize_with = "nan_if_null")]
        loss: f64,
        #[serde(deserialize_with = "nan_if_null")]
        accuracy: f64,
        sparsity: Vec<TensorSparsity>,
    },
    /// A batch of time-series points (mask updates, epoch ends, checkpoints). Values are finite.
    Metrics { points: Vec<MetricPoint> },
    /// A checkpoint is complete in the file store under `key` and can be recorded.
    Checkpoint { key: String, step: i64, epoch: i64, sha256: String, bytes: u64 },
}

impl Event {
    /// [`Event::Started`] of a one-shot job (`epochs = 0`): no steps.
    pub fn started_one_shot(pruned: Vec<String>, warnings: Vec<String>) -> Event {
        Event::Started { total_steps: 0, steps_per_epoch: 0, epochs: 0, start_step: 0, pruned, warnings }
    }
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Why a job stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// Cancelled: stop as soon as possible, no checkpoint needed.
    Cancel,
    /// Shutdown: write a checkpoint at the current step, then stop.
    Checkpoint,
}

/// A finished job: its artifacts (in the file store) and its report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOutcome {
    pub artifacts: Vec<ArtifactFile>,
    pub report: Report,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_without_a_loss_round_trips_as_nan() {
        let progress =
            Event::Progress { step: 0, total_steps: 0, epoch: 0, loss: f64::NAN, accuracy: 0.5, sparsity: vec![] };
        let line = serde_json::to_string(&progress).unwrap();
        let Event::Progress { loss, accuracy, .. } = serde_json::from_str(&line).unwrap() else { panic!("{line}") };
        assert!(loss.is_nan());
        assert_eq!(accuracy, 0.5);
    }
}
