//! A sensitivity analysis's own artifacts, next to the model's: the plot (`sensitivity_plot`,
//! `sensitivity.png`) and the suggested overrides (`suggested_overrides`,
//! `suggested_overrides.toml`). Both are stored as they are (compression `none`): a PNG is
//! compressed already and the TOML is a few hundred bytes.

use std::io::Write;

use prune_core::domain::ArtifactFile;
use prune_core::files::write_atomically;
use prune_plot::sensitivity::{self, Measure, Series};
use sha2::{Digest, Sha256};

use super::Analysis;
use crate::inputs::Output;
use crate::EngineError;

/// The artifact formats (download names) of the two files.
pub const PLOT_FORMAT: &str = "sensitivity_plot";
pub const OVERRIDES_FORMAT: &str = "suggested_overrides";

/// Draws the plot titled after the job and writes both files into `out`.
pub fn write(
    analysis: &Analysis,
    title: &str,
    overrides: &str,
    out: &Output,
) -> Result<Vec<ArtifactFile>, EngineError> {
    let measure = if analysis.dense_accuracy.is_some() { Measure::Accuracy } else { Measure::Loss };
    let mut series: Vec<Series> = Vec::new();
    for p in &analysis.points {
        let value = match measure {
            Measure::Accuracy => p.accuracy.unwrap_or(f64::NAN),
            Measure::Loss => p.loss,
        };
        match series.last_mut() {
            Some(s) if s.tensor == p.tensor => s.points.push((p.sparsity, value)),
            _ => series.push(Series { tensor: p.tensor.clone(), points: vec![(p.sparsity, value)] }),
        }
    }
    let dense = analysis.dense_accuracy.or(Some(analysis.dense_loss).filter(|_| measure == Measure::Loss));
    let png = sensitivity::png(&format!("{title}: sensitivity per tensor"), measure, dense, &series)
        .map_err(|e| EngineError::Export(e.to_string()))?;
    Ok(vec![
        file(out, PLOT_FORMAT, "sensitivity.png", &png)?,
        file(out, OVERRIDES_FORMAT, "suggested_overrides.toml", overrides.as_bytes())?,
    ])
}

/// Writes `bytes` as artifact `name` of `format`, uncompressed.
pub(crate) fn file(out: &Output, format: &str, name: &str, bytes: &[u8]) -> Result<ArtifactFile, EngineError> {
    let path = out.dir.join(name);
    std::fs::create_dir_all(&out.dir)
        .and_then(|()| write_atomically(&path, |f| f.write_all(bytes)))
        .map_err(|e| EngineError::Export(format!("cannot write {}: {e}", path.display())))?;
    Ok(ArtifactFile {
        format: format.into(),
        key: out.key(&path),
        compression: "none".into(),
        sparse_format: "dense".into(),
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    })
}
