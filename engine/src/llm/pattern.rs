//! Which weights of a Linear a calibration method prunes: a fraction of each row (Wanda) or block
//! (SparseGPT), or N of every M consecutive input columns of each row.

use tch::Tensor;

/// The sparsity pattern of one Linear's `[out, in]` weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// Prune `int(count * sparsity)` scores per row (Wanda) or per column block (SparseGPT,
    /// which prunes one more where there are no ties: see `sparsegpt.rs`). `0 <= sparsity < 1`.
    Unstructured { sparsity: f64 },
    /// Prune `n` of every `m` consecutive input columns of each row, `1 <= n < m`, groups aligned
    /// at column 0. The references' `prune_n` / `prune_m` (`prunen` / `prunem`).
    NOfM { n: i64, m: i64 },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatternError {
    #[error("sparsity {0} is outside [0, 1)")]
    Sparsity(f64),
    #[error("{n}:{m} pattern: need 1 <= n < m (n pruned of every m)")]
    Group { n: i64, m: i64 },
    #[error("{n}:{m} pattern: m = {m} does not divide the input width {columns}")]
    Width { n: i64, m: i64, columns: i64 },
}

impl Pattern {
    /// The job spec's `m_by_n = [m, n]` (core/src/mask.rs `m_by_n_mask`: `m` zeros in every `n`
    /// consecutive input-channel values, so `[2, 4]` is 2:4) as `NOfM { n: m, m: n }`: the
    /// references' "prune n of m". The letters swap; the meaning does not.
    pub fn from_m_by_n(m_by_n: [i64; 2]) -> Self {
        let [zeros, group] = m_by_n;
        Pattern::NOfM { n: zeros, m: group }
    }

    /// Checks the pattern against a Linear's input width.
    pub fn check(&self, columns: i64) -> Result<(), PatternError> {
        match *self {
            Pattern::Unstructured { sparsity } => {
                // The reference indexes `sort(...)[int(numel * sparsity)]`: 1.0 is out of range.
                if !(0.0..1.0).contains(&sparsity) {
                    return Err(PatternError::Sparsity(sparsity));
                }
            }
            Pattern::NOfM { n, m } => {
                if n < 1 || n >= m {
                    return Err(PatternError::Group { n, m });
                }
                if columns % m != 0 {
                    return Err(PatternError::Width { n, m, columns });
                }
            }
        }
        Ok(())
    }
}

/// `int(count * sparsity)` as Python computes it: the product in f64, truncated toward zero.
pub(crate) fn prune_count(count: i64, sparsity: f64) -> i64 {
    (count as f64 * sparsity) as i64
}

/// Indices (along the last dimension) of the `n` lowest scores of every row of `scores`.
///
/// The references call `torch.topk(scores, n, largest=False)`, whose choice among equal scores
/// is unspecified. Our tie rule: a stable ascending sort, so among equal scores the **lower column
/// index is pruned first** (the same rule as Wanda's unstructured sort). Where no tie straddles
/// the n-th lowest score, this is exactly the set topk returns; the Python transcriptions use
/// this rule and count the groups where topk picked differently.
pub(crate) fn lowest_n(scores: &Tensor, n: i64) -> Tensor {
    let (_, order) = scores.sort_stable(true, -1, false);
    order.narrow(-1, 0, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m_by_n_maps_zeros_then_group() {
        assert_eq!(Pattern::from_m_by_n([2, 4]), Pattern::NOfM { n: 2, m: 4 });
        assert_eq!(Pattern::from_m_by_n([4, 8]), Pattern::NOfM { n: 4, m: 8 });
    }

    #[test]
    fn check_rejects_bad_patterns() {
        assert!(Pattern::Unstructured { sparsity: 0.5 }.check(7).is_ok());
        assert_eq!(Pattern::Unstructured { sparsity: 1.0 }.check(8), Err(PatternError::Sparsity(1.0)));
        assert_eq!(Pattern::NOfM { n: 4, m: 4 }.check(8), Err(PatternError::Group { n: 4, m: 4 }));
        assert_eq!(Pattern::NOfM { n: 2, m: 4 }.check(6), Err(PatternError::Width { n: 2, m: 4, columns: 6 }));
        assert!(Pattern::NOfM { n: 2, m: 4 }.check(8).is_ok());
    }

    #[test]
    fn prune_count_truncates_like_python_int() {
        assert_eq!(prune_count(7, 0.5), 3);
        assert_eq!(prune_count(10, 0.3), 3); // 10 * 0.3 = 3.0000000000000004
        assert_eq!(prune_count(100, 0.29), 28); // 100 * 0.29 = 28.999999999999996
    }

    #[test]
    fn lowest_n_prunes_the_lower_index_among_ties() {
        let scores = Tensor::from_slice(&[1.0f32, 0.5, 0.5, 0.5, 3.0, 2.0, 1.0, 0.0]).reshape([2, 4]);
        let picked = lowest_n(&scores, 2);
        assert_eq!(Vec::<i64>::try_from(picked.flatten(0, -1)).unwrap(), vec![1, 2, 3, 2]);
    }
}
