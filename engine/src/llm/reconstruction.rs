//! The relative reconstruction error of one pruned Linear on its calibration inputs,
//! `||W X - Ŵ X||² / ||W X||²`, from the Gram matrix `G = sum over tokens of x xᵀ` instead of
//! the inputs themselves: `||A X||² = tr(A G Aᵀ)`, and any positive scale of `G` cancels, so the
//! SparseGPT Hessian (`2/n * G`) serves as it is.

use tch::{Kind, Tensor};

use super::torch_message;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReconstructionError {
    #[error("weights of shapes {dense:?} and {pruned:?} with a Gram matrix of shape {gram:?}: expected [out, in] twice and [in, in]")]
    Shape { dense: Vec<i64>, pruned: Vec<i64>, gram: Vec<i64> },
    /// `W X = 0` on the calibration inputs: the ratio has no meaning.
    #[error("the dense Linear's output on the calibration inputs is zero")]
    ZeroDenseOutput,
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<tch::TchError> for ReconstructionError {
    fn from(e: tch::TchError) -> Self {
        ReconstructionError::Torch(torch_message(e))
    }
}

/// `tr(ΔW G ΔWᵀ) / tr(W G Wᵀ)` with `ΔW = dense - pruned`, computed in f64 (the f32 weights and
/// Gram matrix are widened first, so the difference and the sums do not lose digits).
pub fn relative_reconstruction_error(
    dense: &Tensor,
    pruned: &Tensor,
    gram: &Tensor,
) -> Result<f64, ReconstructionError> {
    let (d, p, g) = (dense.size(), pruned.size(), gram.size());
    if d.len() != 2 || p != d || g != [d[1], d[1]] {
        return Err(ReconstructionError::Shape { dense: d, pruned: p, gram: g });
    }
    let g = gram.f_to_kind(Kind::Double)?;
    let dense = dense.f_to_kind(Kind::Double)?;
    let delta = dense.f_sub(&pruned.f_to_kind(Kind::Double)?)?;
    // tr(A G Aᵀ) = sum over (row, column) of (A G) ∘ A: no [out, out] product needed.
    let energy = |a: &Tensor| -> Result<f64, ReconstructionError> {
        Ok(f64::try_from(a.f_matmul(&g)?.f_mul(a)?.f_sum(Kind::Double)?)?)
    };
    let denominator = energy(&dense)?;
    if denominator <= 0.0 {
        return Err(ReconstructionError::ZeroDenseOutput);
    }
    // Rounding can leave a tiny negative where the error is zero.
    Ok(energy(&delta)?.max(0.0) / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::HessianStats;

    #[test]
    fn equals_the_direct_computation_with_the_inputs() {
        tch::manual_seed(11);
        let opts = (Kind::Float, tch::Device::Cpu);
        let w = Tensor::randn([5, 12], opts);
        let pruned = &w * Tensor::rand([5, 12], opts).gt(0.5).to_kind(Kind::Float);
        let windows = Tensor::randn([3, 7, 12], opts);
        let mut stats = HessianStats::new(12);
        for i in 0..3 {
            stats.add_batch(&windows.get(i)).unwrap();
        }
        let x = windows.reshape([-1, 12]).to_kind(Kind::Double);
        let out = |a: &Tensor| x.matmul(&a.to_kind(Kind::Double).tr());
        let direct = f64::try_from((out(&w) - out(&pruned)).square().sum(Kind::Double)).unwrap()
            / f64::try_from(out(&w).square().sum(Kind::Double)).unwrap();
        let from_hessian = relative_reconstruction_error(&w, &pruned, stats.hessian()).unwrap();
        assert!((from_hessian - direct).abs() <= 1e-5 * direct, "{from_hessian} vs {direct}");
        assert!(direct > 0.05, "the test must prune something that matters: {direct}");
        assert_eq!(relative_reconstruction_error(&w, &w, stats.hessian()).unwrap(), 0.0);
    }

    #[test]
    fn zero_output_and_bad_shapes_are_errors() {
        let opts = (Kind::Float, tch::Device::Cpu);
        let w = Tensor::ones([2, 3], opts);
        let zero_gram = Tensor::zeros([3, 3], opts);
        assert_eq!(relative_reconstruction_error(&w, &w, &zero_gram), Err(ReconstructionError::ZeroDenseOutput));
        let gram = Tensor::eye(4, opts);
        assert!(matches!(relative_reconstruction_error(&w, &w, &gram), Err(ReconstructionError::Shape { .. })));
    }
}
