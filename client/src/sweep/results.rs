//! What each job of a sweep reached, as rows, as `sweep.csv`, and as plot points; and how
//! the sweep's files are written (atomically: a reader never sees half a file).

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::error::{ClientError, Result};
use crate::plot::Point;
use crate::types::{JobInfo, JobState, Report};
use crate::Client;

/// The first line of `sweep.csv`.
pub const CSV_HEADER: &str = "sparsity,validation_accuracy,artifact_bytes,inference_ms,job_id,state";

/// One job of a sweep after it ended. The measurements are `None` for a job that did not
/// succeed (and accuracy for an `mse` job, inference for a model with no forward pass).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub sparsity: f64,
    /// `Report.final_val_accuracy`: the final stripped model's validation accuracy, in `[0, 1]`.
    pub validation_accuracy: Option<f64>,
    /// `Report.artifact_bytes` of the job's first export format: the file(s) as served.
    pub artifact_bytes: Option<u64>,
    /// `Report.inference`'s `pruned_ms` at batch size 1.
    pub inference_ms: Option<f64>,
    pub job_id: String,
    pub state: JobState,
}

impl Row {
    /// The row of `job` (in its final state); `report` is its GetReport when it SUCCEEDED.
    pub fn new(sparsity: f64, job: &JobInfo, report: Option<&Report>, format: &str) -> Row {
        Row {
            sparsity,
            validation_accuracy: report.and_then(|r| r.final_val_accuracy),
            artifact_bytes: report.and_then(|r| r.artifact_bytes.get(format).copied()),
            inference_ms: report.and_then(|r| r.inference.iter().find(|t| t.batch_size == 1)).map(|t| t.pruned_ms),
            job_id: job.id.clone(),
            state: job.state,
        }
    }

    /// Its point on the plot: only a job with both an accuracy and a size has one.
    pub fn point(&self) -> Option<Point> {
        Some(Point {
            sparsity: self.sparsity,
            artifact_bytes: self.artifact_bytes?,
            accuracy: self.validation_accuracy?,
        })
    }
}

/// `sweep.csv`: [`CSV_HEADER`], then one line per row; unknown values are empty cells.
pub fn to_csv(rows: &[Row]) -> String {
    let cell = |v: Option<String>| v.unwrap_or_default();
    let mut out = format!("{CSV_HEADER}\n");
    for r in rows {
        // Ids (`job-` + hex) and state names never need quoting.
        out += &format!(
            "{},{},{},{},{},{}\n",
            r.sparsity,
            cell(r.validation_accuracy.map(|a| a.to_string())),
            cell(r.artifact_bytes.map(|b| b.to_string())),
            cell(r.inference_ms.map(|m| m.to_string())),
            r.job_id,
            r.state
        );
    }
    out
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let io = |e| ClientError::io(path, e);
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

impl Client {
    /// The row of a finished job: its state from GetJob and, when it SUCCEEDED, its
    /// measurements from GetReport. `format` picks the artifact whose size counts.
    pub async fn sweep_row(&self, sparsity: f64, job_id: &str, format: &str) -> Result<Row> {
        let job = self.get_job(job_id).await?;
        let report = if job.state == JobState::Succeeded { Some(self.report(job_id).await?) } else { None };
        Ok(Row::new(sparsity, &job, report.as_ref(), format))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prune_core::domain::InferenceTiming;
    use prune_proto as pb;

    fn job(id: &str, state: pb::JobState) -> JobInfo {
        JobInfo::try_from(pb::Job { id: id.into(), state: state as i32, ..Default::default() }).unwrap()
    }

    fn report() -> Report {
        let timing =
            |batch_size, pruned_ms| InferenceTiming { batch_size, dense_ms: 1.0, pruned_ms, speedup: 1.0, runs: 20 };
        Report {
            tensors: vec![],
            dense_bytes: 10_000,
            gzip_dense_bytes: 9_000,
            artifact_bytes: [("safetensors".to_string(), 4321), ("torchscript".to_string(), 9999)].into(),
            final_val_accuracy: Some(0.9375),
            final_val_loss: Some(0.2),
            dense_val_accuracy: Some(0.95),
            steps: 100,
            inference: vec![timing(32, 0.9), timing(1, 0.125)],
            inference_note: None,
            channels: None,
            ..Default::default()
        }
    }

    #[test]
    fn rows_take_accuracy_bytes_and_batch_one_latency_from_the_report() {
        let row = Row::new(0.8, &job("job-1", pb::JobState::Succeeded), Some(&report()), "safetensors");
        assert_eq!(row.validation_accuracy, Some(0.9375));
        assert_eq!(row.artifact_bytes, Some(4321));
        assert_eq!(row.inference_ms, Some(0.125));
        assert_eq!(row.point(), Some(Point { sparsity: 0.8, artifact_bytes: 4321, accuracy: 0.9375 }));
        let ts = Row::new(0.8, &job("job-1", pb::JobState::Succeeded), Some(&report()), "torchscript");
        assert_eq!(ts.artifact_bytes, Some(9999));
        let failed = Row::new(0.95, &job("job-2", pb::JobState::Failed), None, "safetensors");
        assert_eq!((failed.validation_accuracy, failed.artifact_bytes, failed.inference_ms), (None, None, None));
        assert_eq!(failed.point(), None);
    }

    #[test]
    fn csv_has_the_header_and_empty_cells_for_unknowns() {
        let rows = [
            Row::new(0.8, &job("job-1", pb::JobState::Succeeded), Some(&report()), "safetensors"),
            Row::new(0.95, &job("job-2", pb::JobState::Cancelled), None, "safetensors"),
        ];
        assert_eq!(
            to_csv(&rows),
            "sparsity,validation_accuracy,artifact_bytes,inference_ms,job_id,state\n\
             0.8,0.9375,4321,0.125,job-1,SUCCEEDED\n\
             0.95,,,,job-2,CANCELLED\n"
        );
    }

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.csv");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomic(&dir.path().join("missing/sweep.csv"), b"x").is_err());
    }
}
