//! Calibration statistics of one Linear's input, accumulated window by window with the
//! references' running averages, in f32 and in their order of operations, so the accumulated
//! tensors equal theirs bit for bit (same libtorch ops on the same values).
//!
//! Both references are fed one calibration window at a time (`inps[j].unsqueeze(0)`), so their
//! sample count `nsamples` counts **windows** (the batch dimension), not tokens: the Wanda
//! statistic is `sum over tokens of x_j^2 / windows` and the Hessian `2/windows * X Xᵀ`.

use tch::{Kind, Tensor};

use super::torch_message;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    #[error("calibration input of shape {shape:?}: expected [tokens, {columns}] or [batch, tokens, {columns}]")]
    Shape { shape: Vec<i64>, columns: i64 },
    #[error("calibration input holds NaN or infinite values")]
    NonFinite,
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<tch::TchError> for StatsError {
    fn from(e: tch::TchError) -> Self {
        StatsError::Torch(torch_message(e))
    }
}

/// The input as the references see it: `[L, in]` becomes `[1, L, in]`; the batch size is the
/// sample count it adds; the tokens are flattened and transposed to `[in, tokens]`.
fn as_columns(inp: &Tensor, columns: i64) -> Result<(i64, Tensor), StatsError> {
    let shape = inp.size();
    let ok = matches!(shape.len(), 2 | 3) && shape.last() == Some(&columns);
    if !ok {
        return Err(StatsError::Shape { shape, columns });
    }
    if !bool::try_from(inp.f_isfinite()?.f_all()?)? {
        return Err(StatsError::NonFinite);
    }
    let batch = if shape.len() == 2 { 1 } else { shape[0] };
    Ok((batch, inp.f_reshape([-1, columns])?.f_tr()?))
}

/// Wanda's per-column statistic (locuslab/wanda `lib/layerwrapper.py`, `WrappedGPT.add_batch`):
/// `scaler_row *= n/(n+b); n += b; scaler_row += ||x_j||_2^2 / n`.
#[derive(Debug)]
pub struct WandaStats {
    scaler_row: Tensor,
    nsamples: i64,
}

impl WandaStats {
    /// Zero statistics for a Linear with `columns` inputs (f32, CPU).
    pub fn new(columns: i64) -> Self {
        WandaStats { scaler_row: Tensor::zeros([columns], (Kind::Float, tch::Device::Cpu)), nsamples: 0 }
    }

    /// Adds one batch of inputs, `[L, in]` or `[batch, L, in]` (the pipeline: one window each).
    pub fn add_batch(&mut self, inp: &Tensor) -> Result<(), StatsError> {
        let (batch, x) = as_columns(inp, self.scaler_row.size()[0])?;
        // Python: `self.nsamples / (self.nsamples + tmp)`, a double; libtorch rounds it to f32.
        let keep = self.nsamples as f64 / (self.nsamples + batch) as f64;
        let _ = self.scaler_row.f_mul_scalar_(keep)?;
        self.nsamples += batch;
        let x = x.f_to_kind(Kind::Float)?;
        // `torch.norm(inp, p=2, dim=1) ** 2 / n`: the norm (vector_norm), then its square (not
        // a sum of squares, which rounds differently), then the division by the integer count.
        let norm = x.f_norm_scalaropt_dim(2.0, [1], false)?;
        let add = norm.f_pow_tensor_scalar(2)?.f_div_scalar(self.nsamples)?;
        let _ = self.scaler_row.f_add_(&add)?;
        Ok(())
    }

    /// The accumulated statistic, `[in]` f32.
    pub fn scaler_row(&self) -> &Tensor {
        &self.scaler_row
    }

    /// The number of samples (windows) added so far.
    pub fn nsamples(&self) -> i64 {
        self.nsamples
    }
}

/// SparseGPT's Hessian (IST-DASLab/sparsegpt `sparsegpt.py`, `SparseGPT.add_batch`):
/// `H *= n/(n+b); n += b; x = sqrt(2/n) * x; H += x @ xᵀ`. Also the Gram matrix that
/// `reconstruction.rs` needs (any positive scale cancels there).
#[derive(Debug)]
pub struct HessianStats {
    hessian: Tensor,
    nsamples: i64,
}

impl HessianStats {
    /// A zero `[columns, columns]` Hessian (f32, CPU).
    pub fn new(columns: i64) -> Self {
        HessianStats { hessian: Tensor::zeros([columns, columns], (Kind::Float, tch::Device::Cpu)), nsamples: 0 }
    }

    /// Adds one batch of inputs, `[L, in]` or `[batch, L, in]` (the pipeline: one window each).
    pub fn add_batch(&mut self, inp: &Tensor) -> Result<(), StatsError> {
        let (batch, x) = as_columns(inp, self.hessian.size()[0])?;
        let keep = self.nsamples as f64 / (self.nsamples + batch) as f64;
        let _ = self.hessian.f_mul_scalar_(keep)?;
        self.nsamples += batch;
        // `math.sqrt(2 / n) * inp.float()`: the scale in f64, rounded to f32 by libtorch.
        let scale = (2.0 / self.nsamples as f64).sqrt();
        let x = x.f_to_kind(Kind::Float)?.f_mul_scalar(scale)?;
        let _ = self.hessian.f_add_(&x.f_matmul(&x.f_tr()?)?)?;
        Ok(())
    }

    /// The accumulated Hessian, `[in, in]` f32.
    pub fn hessian(&self) -> &Tensor {
        &self.hessian
    }

    /// The number of samples (windows) added so far.
    pub fn nsamples(&self) -> i64 {
        self.nsamples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(windows: i64, tokens: i64, columns: i64) -> Tensor {
        tch::manual_seed(7);
        Tensor::randn([windows, tokens, columns], (Kind::Float, tch::Device::Cpu))
    }

    #[test]
    fn wanda_stat_is_the_mean_over_windows_of_column_sums_of_squares() {
        let x = x(3, 5, 4);
        let mut stats = WandaStats::new(4);
        for w in 0..3 {
            stats.add_batch(&x.get(w)).unwrap();
        }
        assert_eq!(stats.nsamples(), 3);
        let direct = x.square().sum_dim_intlist(&[0i64, 1][..], false, Kind::Float) / 3.0;
        assert!(stats.scaler_row().allclose(&direct, 1e-5, 1e-6, false));
    }

    #[test]
    fn hessian_is_two_over_windows_times_x_xt() {
        let x = x(2, 6, 3);
        let mut stats = HessianStats::new(3);
        stats.add_batch(&x.get(0).unsqueeze(0)).unwrap();
        stats.add_batch(&x.get(1)).unwrap();
        assert_eq!(stats.nsamples(), 2);
        let flat = x.reshape([-1, 3]);
        let direct = flat.tr().matmul(&flat) * (2.0 / 2.0);
        assert!(stats.hessian().allclose(&direct, 1e-5, 1e-5, false));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut stats = WandaStats::new(4);
        let wrong = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu));
        assert_eq!(stats.add_batch(&wrong), Err(StatsError::Shape { shape: vec![2, 3], columns: 4 }));
        let nan = Tensor::from_slice(&[1.0f32, f32::NAN, 0.0, 2.0]).reshape([1, 4]);
        assert_eq!(stats.add_batch(&nan), Err(StatsError::NonFinite));
        let mut hessian = HessianStats::new(4);
        let inf = Tensor::from_slice(&[1.0f32, f32::INFINITY, 0.0, 2.0]).reshape([1, 4]);
        assert_eq!(hessian.add_batch(&inf), Err(StatsError::NonFinite));
        assert_eq!(stats.nsamples() + hessian.nsamples(), 0);
    }
}
