//! Token windows: what calibration and evaluation run the model on.
//!
//! Calibration follows the reference implementations (locuslab/wanda `get_c4`/`get_wikitext2`,
//! IST-DASLab/sparsegpt `datautils.py`): the text is tokenized once into one stream, and each of
//! the `samples` windows starts at a uniformly drawn offset in `[0, tokens - seq_len]`, so windows
//! may overlap (the job's warnings say so when the text is shorter than `samples x seq_len`). The
//! offsets come from SplitMix64 seeded with `calibration.seed` (not Python's `random`: identical
//! calibration across tools goes through `calibration.tokens`). A `tokens` file whose rows are
//! exactly `seq_len` long is used row by row, in order: the first `samples` rows.
//!
//! Evaluation takes the non-overlapping windows `[i * seq_len, (i + 1) * seq_len)` of its text, as
//! wanda's `eval_ppl` does; a shorter tail is left out.

use std::path::Path;

use prune_core::job::{Calibration, Evaluation, TokenSource};
use prune_core::tensorstream::StreamedFile;
use tch::Tensor;

use super::tokenize::Tokenizer;
use crate::rng::SplitMix64;
use crate::EngineError;

/// Windows of token ids, `[windows, seq_len]` int64, and what the user should know about them.
pub struct Windows {
    pub tokens: Tensor,
    pub warnings: Vec<String>,
}

impl Windows {
    pub fn count(&self) -> usize {
        self.tokens.size()[0] as usize
    }
}

fn error(field: &str, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Data(format!("{field}: {reason}"))
}

/// The calibration windows.
pub fn calibration(
    c: &Calibration,
    file: &Path,
    tokenizer: Option<&Path>,
    max_positions: usize,
) -> Result<Windows, EngineError> {
    check_length("calibration.seq_len", c.seq_len, max_positions)?;
    let (field, stream) = match &c.source {
        TokenSource::Text(_) => ("calibration.text", text_stream("calibration.text", file, tokenizer)?),
        TokenSource::Tokens(_) => {
            let (rows, width) = token_rows(file)?;
            if width == c.seq_len {
                if rows.len() / width < c.samples {
                    return Err(error(
                        "calibration.tokens",
                        format!(
                            "{} holds {} windows of {width} tokens, fewer than calibration.samples = {}",
                            file.display(),
                            rows.len() / width,
                            c.samples
                        ),
                    ));
                }
                let tokens = Tensor::from_slice(&rows[..c.samples * width]).view([c.samples as i64, width as i64]);
                return Ok(Windows { tokens, warnings: vec![] });
            }
            ("calibration.tokens", rows)
        }
    };
    draw(field, &stream, c.samples, c.seq_len, c.seed)
}

/// `samples` windows of `seq_len` tokens at seeded random offsets of `stream`.
fn draw(field: &str, stream: &[i64], samples: usize, seq_len: usize, seed: u64) -> Result<Windows, EngineError> {
    if stream.len() < seq_len {
        return Err(error(
            field,
            format!("has {} tokens, fewer than one window of calibration.seq_len = {seq_len}", stream.len()),
        ));
    }
    let mut warnings = vec![];
    if stream.len() < samples * seq_len {
        warnings.push(format!(
            "{field}: {samples} windows of {seq_len} tokens overlap: the text has only {} tokens",
            stream.len()
        ));
    }
    let mut rng = SplitMix64::new(seed);
    let starts = (stream.len() - seq_len + 1) as u64;
    let mut tokens = Vec::with_capacity(samples * seq_len);
    for _ in 0..samples {
        let start = rng.below(starts) as usize;
        tokens.extend_from_slice(&stream[start..start + seq_len]);
    }
    let tokens = Tensor::from_slice(&tokens).view([samples as i64, seq_len as i64]);
    Ok(Windows { tokens, warnings })
}

/// The evaluation windows.
pub fn evaluation(
    x: &Evaluation,
    file: &Path,
    tokenizer: Option<&Path>,
    max_positions: usize,
) -> Result<Windows, EngineError> {
    check_length("evaluation.seq_len", x.seq_len, max_positions)?;
    let stream = text_stream("evaluation.text", file, tokenizer)?;
    let whole = stream.len() / x.seq_len;
    let windows = x.max_windows.map_or(whole, |m| m.min(whole));
    if windows == 0 {
        return Err(error(
            "evaluation.text",
            format!("has {} tokens, fewer than one window of evaluation.seq_len = {}", stream.len(), x.seq_len),
        ));
    }
    let tokens = Tensor::from_slice(&stream[..windows * x.seq_len]).view([windows as i64, x.seq_len as i64]);
    Ok(Windows { tokens, warnings: vec![] })
}

fn check_length(field: &str, seq_len: usize, max_positions: usize) -> Result<(), EngineError> {
    if seq_len > max_positions {
        return Err(EngineError::Spec(format!(
            "{field}: {seq_len} is above the model's longest sequence ({max_positions}: max_position_embeddings, or the sliding window, in config.json)"
        )));
    }
    Ok(())
}

/// The text of `file` as one token stream.
fn text_stream(field: &str, file: &Path, tokenizer: Option<&Path>) -> Result<Vec<i64>, EngineError> {
    let tokenizer = tokenizer.ok_or_else(|| {
        error(field, "text needs the model's tokenizer.json in the model directory (or give calibration.tokens)")
    })?;
    let text = std::fs::read_to_string(file).map_err(|e| error(field, format!("{}: {e}", file.display())))?;
    let tokenizer = Tokenizer::from_file(tokenizer)?;
    tokenizer.encode(&text)
}

/// The int64 `input_ids` [N, L] of a safetensors file, row-major, and L.
fn token_rows(file: &Path) -> Result<(Vec<i64>, usize), EngineError> {
    let field = "calibration.tokens";
    let st = StreamedFile::open(file).map_err(|e| error(field, format!("{}: {e}", file.display())))?;
    let info = st
        .tensors
        .iter()
        .find(|t| t.name == "input_ids")
        .ok_or_else(|| error(field, format!("{} has no tensor `input_ids`", file.display())))?;
    if info.dtype != safetensors::Dtype::I64 || info.shape.len() != 2 || info.shape[1] == 0 {
        return Err(error(
            field,
            format!("`input_ids` must be int64 of shape [N, L] (got {:?} {:?})", info.dtype, info.shape),
        ));
    }
    let bytes = st.read(info).map_err(|e| error(field, e))?;
    let ids: Vec<i64> = bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
    if let Some(bad) = ids.iter().find(|&&id| id < 0) {
        return Err(error(field, format!("`input_ids` holds a negative id ({bad})")));
    }
    Ok((ids, info.shape[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawn_windows_are_seeded_slices_of_the_stream() {
        let stream: Vec<i64> = (0..100).collect();
        let a = draw("calibration.text", &stream, 4, 10, 7).unwrap();
        let b = draw("calibration.text", &stream, 4, 10, 7).unwrap();
        assert_eq!(a.tokens.size(), [4, 10]);
        assert!(a.tokens.equal(&b.tokens));
        for w in 0..4 {
            let row = Vec::<i64>::try_from(a.tokens.get(w)).unwrap();
            assert!(row.windows(2).all(|p| p[1] == p[0] + 1), "{row:?}");
            assert!(row[9] < 100);
        }
        assert!(a.warnings.is_empty());
        assert!(!draw("calibration.text", &stream, 4, 10, 8).unwrap().tokens.equal(&a.tokens));
    }

    #[test]
    fn short_streams_warn_or_fail() {
        let stream: Vec<i64> = (0..25).collect();
        let w = draw("calibration.text", &stream, 4, 10, 0).unwrap();
        assert!(w.warnings[0].contains("overlap"), "{:?}", w.warnings);
        let e = draw("calibration.text", &stream, 1, 26, 0).err().unwrap().to_string();
        assert!(e.contains("fewer than one window"), "{e}");
        let e = check_length("calibration.seq_len", 4096, 2048).unwrap_err().to_string();
        assert!(e.contains("calibration.seq_len: 4096 is above the model's longest sequence (2048"), "{e}");
    }
}
