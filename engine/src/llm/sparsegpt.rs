//! SparseGPT for one Linear (IST-DASLab/sparsegpt `sparsegpt.py`, `SparseGPT.fasterprune`),
//! transcribed op for op in f32 so that the result agrees with the reference to rounding:
//! dead inputs, damping, the upper Cholesky factor of the inverse Hessian, masks chosen per
//! block of `block_size` columns, column-by-column error propagation inside a block and the lazy
//! update of the columns after it.

use tch::{Kind, Tensor};

use super::pattern::{lowest_n, prune_count, Pattern, PatternError};
use super::torch_message;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SparseGptError {
    #[error("weight of shape {weight:?} and Hessian of shape {hessian:?}: expected [out, in] and [in, in]")]
    Shape { weight: Vec<i64>, hessian: Vec<i64> },
    #[error("{0} holds NaN or infinite values")]
    NonFinite(&'static str),
    #[error("block_size {0} must be at least 1")]
    BlockSize(i64),
    #[error("{n}:{m} pattern: m = {m} must divide block_size {block_size} (groups must not straddle blocks)")]
    GroupStraddlesBlock { n: i64, m: i64, block_size: i64 },
    #[error("dampening {0} must be finite and >= 0")]
    Dampening(f64),
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<tch::TchError> for SparseGptError {
    fn from(e: tch::TchError) -> Self {
        SparseGptError::Torch(torch_message(e))
    }
}

/// What [`sparsegpt_prune`] made of one Linear.
#[derive(Debug)]
pub struct SparseGptOutcome {
    /// The updated weight, `[out, in]` f32; every pruned entry is exactly 0 (and so is every
    /// column of a dead input, whether the mask keeps it or not, as in the reference).
    pub weight: Tensor,
    /// `[out, in]` bool, `true` = kept: the complement of the reference's `mask1` blocks.
    pub mask: Tensor,
    /// Set when the damped Hessian could not be inverted and the identity was used instead.
    pub warning: Option<String>,
}

/// The message of the identity fallback, llm-compressor's warning reworded for our fields.
pub const CHOLESKY_FALLBACK: &str = "failed to invert the Hessian (not positive definite after dampening): \
     pruned by magnitude with an identity Hessian instead; consider a larger dampening or more \
     calibration samples";

/// Prunes `weight` (`[out, in]`) with the Hessian `hessian` (`[in, in]`, the raw accumulation of
/// [`super::HessianStats`]: this function works on a copy, so the caller may keep it for the
/// reconstruction error).
///
/// * Dead inputs (`H_jj == 0`): `H_jj = 1` and `W[:, j] = 0`.
/// * Damping: `H += dampening * mean(diag(H)) * I`, then
///   `Hinv = cholesky(cholesky_inverse(cholesky(H)), upper=True)`.
/// * Unstructured, per block: `tmp = W1^2 / diag(Hinv1)^2`, `thresh` = the element at
///   `int(numel * sparsity)` of the sorted `tmp`, prune `tmp <= thresh` (like the reference, one
///   more than `numel * sparsity` when there are no ties, and at least one per block).
/// * `NOfM { n, m }`: at every m-th column of a block, the `n` lowest `tmp` of each row among the
///   next `m` columns, computed on the weights as updated so far; ties prune the lower column
///   first (`pattern::lowest_n`). `m` must divide `in` and `block_size`.
///
/// **When Cholesky fails** (either factorisation reports a non-positive pivot, or the inverse is
/// not finite), we follow llm-compressor (`sparsegpt_sparsify`): `Hinv = I`, which makes this
/// Linear's pruning magnitude-like with no error compensation, and the outcome carries
/// [`CHOLESKY_FALLBACK`] as a warning. (The IST-DASLab reference would raise instead; a
/// non-finite inverse there would silently spread NaN through the weights.)
///
/// NaN or infinite values in the weight or the Hessian are an error (the caller names the layer).
pub fn sparsegpt_prune(
    weight: &Tensor,
    hessian: &Tensor,
    pattern: Pattern,
    block_size: i64,
    dampening: f64,
) -> Result<SparseGptOutcome, SparseGptError> {
    let (shape, h_shape) = (weight.size(), hessian.size());
    if shape.len() != 2 || h_shape != [shape[1], shape[1]] {
        return Err(SparseGptError::Shape { weight: shape, hessian: h_shape });
    }
    let (rows, columns) = (shape[0], shape[1]);
    pattern.check(columns)?;
    if block_size < 1 {
        return Err(SparseGptError::BlockSize(block_size));
    }
    if let Pattern::NOfM { n, m } = pattern {
        if block_size % m != 0 {
            return Err(SparseGptError::GroupStraddlesBlock { n, m, block_size });
        }
    }
    if !dampening.is_finite() || dampening < 0.0 {
        return Err(SparseGptError::Dampening(dampening));
    }
    for (name, t) in [("weight", weight), ("Hessian", hessian)] {
        if !bool::try_from(t.f_isfinite()?.f_all()?)? {
            return Err(SparseGptError::NonFinite(name));
        }
    }

    // Copies: `W = layer.weight.data.clone().float()`; `H` is consumed by the reference.
    let mut w = weight.f_to_dtype(Kind::Float, false, true)?;
    let mut h = hessian.f_to_dtype(Kind::Float, false, true)?;
    let dead = h.f_diag(0)?.f_eq(0.0)?;
    let _ = h.f_diagonal(0, 0, 1)?.f_masked_fill_(&dead, 1.0)?;
    let _ = w.f_masked_fill_(&dead.f_unsqueeze(0)?, 0.0)?;
    let (hinv, warning) = match inverse_factor(&mut h, dampening)? {
        Some(hinv) => (hinv, None),
        None => (Tensor::f_eye(columns, (Kind::Float, w.device()))?, Some(CHOLESKY_FALLBACK.to_string())),
    };

    let kept = Tensor::f_ones([rows, columns], (Kind::Bool, w.device()))?;
    for i1 in (0..columns).step_by(block_size as usize) {
        let count = block_size.min(columns - i1);
        let hinv1 = hinv.f_narrow(0, i1, count)?.f_narrow(1, i1, count)?;
        let (q1, neg_err1, pruned1) = prune_block(&w.f_narrow(1, i1, count)?, &hinv1, pattern)?;
        w.f_narrow(1, i1, count)?.f_copy_(&q1)?;
        let _ = kept.f_narrow(1, i1, count)?.f_masked_fill_(&pruned1, 0)?;
        let i2 = i1 + count;
        if i2 < columns {
            // `W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])`, the lazy update of later columns, as
            // `+= (-Err1) @ Hinv`: negating a factor negates the product exactly.
            let update = neg_err1.f_matmul(&hinv.f_narrow(0, i1, count)?.f_narrow(1, i2, columns - i2)?)?;
            let _ = w.f_narrow(1, i2, columns - i2)?.f_add_(&update)?;
        }
    }
    Ok(SparseGptOutcome { weight: w, mask: kept, warning })
}

/// Damps `h` in place and returns `cholesky(cholesky_inverse(cholesky(h)), upper=True)`, or
/// `None` where a factorisation fails or the inverse is not finite.
fn inverse_factor(h: &mut Tensor, dampening: f64) -> Result<Option<Tensor>, SparseGptError> {
    // `damp = percdamp * torch.mean(torch.diag(H)); H[diag, diag] += damp`: a 0-dim f32 tensor
    // added to each diagonal element, as the reference does.
    let damp = h.f_diag(0)?.f_mean(None::<Kind>)?.f_mul_scalar(dampening)?;
    let _ = h.f_diagonal(0, 0, 1)?.f_add_(&damp)?;
    let (lower, info) = h.f_linalg_cholesky_ex(false, false)?;
    if i64::try_from(&info)? != 0 {
        return Ok(None);
    }
    let inverse = lower.f_cholesky_inverse(false)?;
    if !bool::try_from(inverse.f_isfinite()?.f_all()?)? {
        return Ok(None);
    }
    let (upper, info) = inverse.f_linalg_cholesky_ex(true, false)?;
    Ok((i64::try_from(&info)? == 0).then_some(upper))
}

/// One block of columns: returns `Q1` (the block's new weights), `-Err1` (the negated scaled
/// errors that the lazy update spreads to later columns) and the block's pruned mask.
fn prune_block(w_block: &Tensor, hinv1: &Tensor, pattern: Pattern) -> Result<(Tensor, Tensor, Tensor), SparseGptError> {
    let count = w_block.size()[1];
    let w1 = w_block.f_to_dtype(Kind::Float, false, true)?; // `W1 = W[:, i1:i2].clone()`
    let q1 = w1.f_zeros_like()?;
    let neg_err1 = w1.f_zeros_like()?;
    // `diag(Hinv1).reshape((1, -1)) ** 2`, the denominator of every `tmp`.
    let diag_sq = hinv1.f_diag(0)?.f_reshape([1, -1])?.f_pow_tensor_scalar(2)?;
    let pruned1 = match pattern {
        Pattern::Unstructured { sparsity } => {
            let tmp = w1.f_pow_tensor_scalar(2)?.f_div(&diag_sq)?;
            // `torch.sort(tmp.flatten())[0][k]` is the (k+1)-th smallest value: kthvalue finds
            // the same value without sorting the block.
            let k = prune_count(tmp.numel() as i64, sparsity);
            let (thresh, _) = tmp.f_flatten(0, -1)?.f_kthvalue(k + 1, 0, false)?;
            tmp.f_le_tensor(&thresh)?
        }
        Pattern::NOfM { .. } => w1.f_zeros_like()?.f_to_kind(Kind::Bool)?,
    };
    for i in 0..count {
        if let Pattern::NOfM { n, m } = pattern {
            if i % m == 0 {
                let tmp = w1.f_narrow(1, i, m)?.f_pow_tensor_scalar(2)?.f_div(&diag_sq.f_narrow(1, i, m)?)?;
                let picked = lowest_n(&tmp, n);
                let _ = pruned1.f_narrow(1, i, m)?.f_scatter_value_(1, &picked, 1)?;
            }
        }
        let w = w1.f_select(1, i)?;
        let d = hinv1.f_get(i)?.f_get(i)?;
        // `q = w.clone(); q[mask1[:, i]] = 0`
        let q = w.f_masked_fill(&pruned1.f_select(1, i)?, 0.0)?;
        q1.f_select(1, i)?.f_copy_(&q)?;
        // `err1 = (w - q) / d; W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))`
        // with the error negated, `(q - w) / d` (negation is exact): one in-place rank-1 update
        // (`addr_`: each product rounded once, as by the reference's k = 1 matmul, then one
        // rounded addition, as by its subtraction) gives the same values in one pass over the
        // block instead of a product tensor and a subtraction.
        let neg_err = q.f_sub(&w)?.f_div(&d)?;
        let row = hinv1.f_get(i)?.f_narrow(0, i, count - i)?;
        let _ = w1.f_narrow(1, i, count - i)?.f_addr_(&neg_err, &row)?;
        neg_err1.f_select(1, i)?.f_copy_(&neg_err)?;
    }
    Ok((q1, neg_err1, pruned1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::HessianStats;

    fn random(shape: &[i64], seed: i64) -> Tensor {
        let _rng = crate::rng::global_generator_lock();
        tch::manual_seed(seed);
        Tensor::randn(shape, (Kind::Float, tch::Device::Cpu))
    }

    fn hessian_of(x: &Tensor) -> Tensor {
        let mut stats = HessianStats::new(x.size()[1]);
        stats.add_batch(x).unwrap();
        stats.hessian().copy()
    }

    fn count_true(t: &Tensor) -> i64 {
        i64::try_from(t.to_kind(Kind::Int64).sum(Kind::Int64)).unwrap()
    }

    #[test]
    fn pruned_entries_are_zero_and_kept_ones_compensate() {
        let (w, x) = (random(&[6, 16], 1), random(&[64, 16], 2));
        let h = hessian_of(&x);
        let out = sparsegpt_prune(&w, &h, Pattern::Unstructured { sparsity: 0.5 }, 8, 0.01).unwrap();
        assert!(out.warning.is_none());
        // Two blocks of 6 x 8: int(48 * 0.5) = 24 -> 25 pruned in each (`tmp <= thresh`).
        assert_eq!(count_true(&out.mask.logical_not()), 50);
        assert_eq!(count_true(&out.weight.eq(0.0)), 50);
        // Compensation: better outputs than zeroing the same entries of the original weight.
        let masked = &w * out.mask.to_kind(Kind::Float);
        let dense_out = x.matmul(&w.tr());
        let err = |v: &Tensor| f64::try_from((x.matmul(&v.tr()) - &dense_out).square().sum(Kind::Float)).unwrap();
        assert!(err(&out.weight) < err(&masked), "{} !< {}", err(&out.weight), err(&masked));
    }

    #[test]
    fn n_of_m_prunes_exactly_n_per_group() {
        let (w, x) = (random(&[5, 16], 3), random(&[40, 16], 4));
        let out = sparsegpt_prune(&w, &hessian_of(&x), Pattern::NOfM { n: 2, m: 4 }, 8, 0.01).unwrap();
        let pruned_per_group =
            out.mask.logical_not().to_kind(Kind::Int64).reshape([5, 4, 4]).sum_dim_intlist(2, false, Kind::Int64);
        assert_eq!(count_true(&pruned_per_group.eq(2)), 20);
        let err = sparsegpt_prune(&w, &hessian_of(&x), Pattern::NOfM { n: 2, m: 4 }, 6, 0.01).unwrap_err();
        assert_eq!(err, SparseGptError::GroupStraddlesBlock { n: 2, m: 4, block_size: 6 });
    }

    #[test]
    fn failed_cholesky_falls_back_to_magnitude() {
        // A negative definite "Hessian" with a negative mean diagonal stays indefinite after damping.
        let w = random(&[3, 4], 5);
        let h = Tensor::eye(4, (Kind::Float, tch::Device::Cpu)) * -1.0;
        let out = sparsegpt_prune(&w, &h, Pattern::NOfM { n: 2, m: 4 }, 4, 0.01).unwrap();
        assert_eq!(out.warning.as_deref(), Some(CHOLESKY_FALLBACK));
        // Identity: no compensation, the two smallest |w| of each row go.
        let expected = crate::llm::wanda_mask(
            &w,
            &Tensor::ones([4], (Kind::Float, tch::Device::Cpu)),
            Pattern::NOfM { n: 2, m: 4 },
        )
        .unwrap();
        assert!(out.mask.equal(&expected));
        assert!(out.weight.equal(&(&w * expected.to_kind(Kind::Float))));
    }

    #[test]
    fn dead_inputs_zero_their_columns() {
        let w = random(&[4, 8], 6);
        let x = random(&[32, 8], 7).index_fill(1, &Tensor::from_slice(&[2i64, 5]), 0.0);
        let out = sparsegpt_prune(&w, &hessian_of(&x), Pattern::Unstructured { sparsity: 0.25 }, 8, 0.01).unwrap();
        assert!(out.warning.is_none());
        for c in [2, 5] {
            assert_eq!(count_true(&out.weight.select(1, c).ne(0.0)), 0);
        }
    }

    #[test]
    fn non_finite_inputs_are_errors() {
        let w = random(&[2, 4], 8);
        let h = Tensor::eye(4, (Kind::Float, tch::Device::Cpu)).index_fill(0, &Tensor::from_slice(&[1i64]), f64::NAN);
        let err = sparsegpt_prune(&w, &h, Pattern::Unstructured { sparsity: 0.5 }, 4, 0.01).unwrap_err();
        assert_eq!(err.to_string(), "Hessian holds NaN or infinite values");
    }
}
