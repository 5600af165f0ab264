//! Wanda's mask for one Linear (locuslab/wanda `lib/prune.py`, `prune_wanda`): score
//! `|W_ij| * sqrt(S_j)` with `S` the input statistic of [`super::WandaStats`], compared within
//! each output row only.

use tch::{Kind, Tensor};

use super::pattern::{lowest_n, prune_count, Pattern, PatternError};
use super::torch_message;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WandaError {
    #[error("weight of shape {weight:?} and statistic of shape {stat:?}: expected [out, in] and [in]")]
    Shape { weight: Vec<i64>, stat: Vec<i64> },
    #[error("{0} holds NaN or infinite values")]
    NonFinite(&'static str),
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<tch::TchError> for WandaError {
    fn from(e: tch::TchError) -> Self {
        WandaError::Torch(torch_message(e))
    }
}

/// The mask Wanda keeps, `[out, in]` bool, `true` = kept (the reference's `W_mask` is the
/// complement: `true` = pruned).
///
/// * Unstructured: per row, a stable ascending sort of the scores; the first
///   `int(in * sparsity)` are pruned, so among equal scores the lower column index goes first.
/// * `NOfM { n, m }`: per row and group of `m` columns (aligned at 0, `m` must divide `in`),
///   the `n` lowest scores are pruned; ties: the lower column index is pruned first (the
///   reference's `topk(largest=False)` leaves ties unspecified; see `pattern::lowest_n`).
pub fn wanda_mask(weight: &Tensor, scaler_row: &Tensor, pattern: Pattern) -> Result<Tensor, WandaError> {
    let (shape, stat_shape) = (weight.size(), scaler_row.size());
    if shape.len() != 2 || stat_shape != [shape[1]] {
        return Err(WandaError::Shape { weight: shape, stat: stat_shape });
    }
    let (rows, columns) = (shape[0], shape[1]);
    pattern.check(columns)?;
    for (name, t) in [("weight", weight), ("Wanda statistic", scaler_row)] {
        if !bool::try_from(t.f_isfinite()?.f_all()?)? {
            return Err(WandaError::NonFinite(name));
        }
    }
    // `torch.abs(W) * torch.sqrt(scaler_row.reshape((1, -1)))`, in f32 like the reference.
    let metric = weight
        .f_to_kind(Kind::Float)?
        .f_abs()?
        .f_mul(&scaler_row.f_to_kind(Kind::Float)?.f_reshape([1, -1])?.f_sqrt()?)?;
    let kept = Tensor::f_ones([rows, columns], (Kind::Bool, weight.device()))?;
    match pattern {
        Pattern::Unstructured { sparsity } => {
            let k = prune_count(columns, sparsity);
            let (_, order) = metric.f_sort_stable(true, 1, false)?;
            Ok(kept.f_scatter_value(1, &order.f_narrow(1, 0, k)?, 0)?)
        }
        Pattern::NOfM { n, m } => {
            // Groups are consecutive columns, so a [rows, in/m, m] view puts each in a last dim.
            let groups = metric.f_reshape([rows, columns / m, m])?;
            let pruned = lowest_n(&groups, n);
            let kept = kept.f_reshape([rows, columns / m, m])?.f_scatter_value(2, &pruned, 0)?;
            Ok(kept.f_reshape([rows, columns])?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(values: &[f32], shape: [i64; 2]) -> Tensor {
        Tensor::from_slice(values).reshape(shape)
    }

    fn kept(mask: &Tensor) -> Vec<i64> {
        Vec::<i64>::try_from(mask.to_kind(Kind::Int64).flatten(0, -1)).unwrap()
    }

    #[test]
    fn unstructured_prunes_the_lowest_scores_of_each_row() {
        // Scores row 0: [1*1, 2*3, 3*0.5, 4*2] = [1, 6, 1.5, 8]; row 1: [4, 0, 0.5, 2].
        let w = t(&[1.0, -2.0, 3.0, 4.0, -4.0, 0.0, 1.0, 1.0], [2, 4]);
        let s = Tensor::from_slice(&[1.0f32, 9.0, 0.25, 4.0]);
        let mask = wanda_mask(&w, &s, Pattern::Unstructured { sparsity: 0.5 }).unwrap();
        assert_eq!(kept(&mask), vec![0, 1, 0, 1, 1, 0, 0, 1]);
    }

    #[test]
    fn unstructured_ties_prune_the_lower_column_first() {
        let w = t(&[1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0], [1, 7]);
        let s = Tensor::ones([7], (Kind::Float, tch::Device::Cpu));
        // int(7 * 0.5) = 3 pruned: the three lowest-indexed of the four tied ones.
        let mask = wanda_mask(&w, &s, Pattern::Unstructured { sparsity: 0.5 }).unwrap();
        assert_eq!(kept(&mask), vec![0, 0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn n_of_m_prunes_n_per_group_with_lower_index_ties() {
        let w = t(&[3.0, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0], [1, 8]);
        let s = Tensor::ones([8], (Kind::Float, tch::Device::Cpu));
        let mask = wanda_mask(&w, &s, Pattern::NOfM { n: 2, m: 4 }).unwrap();
        assert_eq!(kept(&mask), vec![1, 0, 0, 1, 0, 0, 1, 1]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let w = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1, 6]);
        let s = Tensor::ones([6], (Kind::Float, tch::Device::Cpu));
        let err = wanda_mask(&w, &s, Pattern::NOfM { n: 2, m: 4 }).unwrap_err();
        assert_eq!(err, WandaError::Pattern(PatternError::Width { n: 2, m: 4, columns: 6 }));
        let short = Tensor::ones([5], (Kind::Float, tch::Device::Cpu));
        assert!(matches!(
            wanda_mask(&w, &short, Pattern::Unstructured { sparsity: 0.5 }),
            Err(WandaError::Shape { .. })
        ));
        let nan = t(&[1.0, f32::NAN, 3.0, 4.0, 5.0, 6.0], [1, 6]);
        let err = wanda_mask(&nan, &s, Pattern::Unstructured { sparsity: 0.5 }).unwrap_err();
        assert_eq!(err.to_string(), "weight holds NaN or infinite values");
    }
}
