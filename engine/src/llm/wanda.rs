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
            if k == 0 {
                return Ok(kept);
            }
            // The first k of a stable ascending sort, without sorting (half the time): every
            // score below the k-th smallest, then as many of those equal to it as are still
            // needed, lowest columns first.
            let (thresh, _) = metric.f_kthvalue(k, 1, true)?;
            // Usually the k-th smallest score is unique in its row: then exactly the scores up to
            // it are pruned (one comparison instead of the tie bookkeeping below).
            let at_most = metric.f_le_tensor(&thresh)?;
            let counts = at_most.f_sum_dim_intlist(1, false, Kind::Int64)?;
            if bool::try_from(counts.f_eq(k)?.f_all()?)? {
                return Ok(at_most.f_logical_not()?);
            }
            let below = metric.f_lt_tensor(&thresh)?;
            let tied = metric.f_eq_tensor(&thresh)?;
            let needed = below.f_sum_dim_intlist(1, true, Kind::Int64)?.f_neg()?.f_add_scalar(k)?;
            let tied_rank = tied.f_cumsum(1, Kind::Int64)?;
            let pruned = below.f_logical_or(&tied.f_logical_and(&tied_rank.f_le_tensor(&needed)?)?)?;
            Ok(pruned.f_logical_not()?)
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
    fn unstructured_equals_the_first_k_of_a_stable_sort() {
        let _rng = crate::rng::global_generator_lock();
        tch::manual_seed(5);
        // Few distinct values: many ties around every row's threshold (the tie bookkeeping);
        // continuous values: unique thresholds (the one-comparison path); and both in one matrix.
        let opts = (Kind::Float, tch::Device::Cpu);
        let tied = Tensor::randint(4, [40, 30], opts);
        let distinct = Tensor::randn([40, 30], opts);
        let mixed = Tensor::cat(&[distinct.narrow(0, 0, 20), tied.narrow(0, 0, 20)], 0);
        for (w, sparsity) in [&tied, &distinct, &mixed].into_iter().flat_map(|w| [0.1, 0.5, 0.9].map(|s| (w, s))) {
            let s = Tensor::randint_low(1, 3, [30], opts);
            let k = prune_count(30, sparsity);
            let metric = w.abs() * s.sqrt().reshape([1, -1]);
            let (_, order) = metric.sort_stable(true, 1, false);
            let expected =
                Tensor::ones([40, 30], (Kind::Bool, tch::Device::Cpu)).scatter_value(1, &order.narrow(1, 0, k), 0);
            let mask = wanda_mask(w, &s, Pattern::Unstructured { sparsity }).unwrap();
            assert!(mask.equal(&expected), "sparsity {sparsity}");
        }
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
