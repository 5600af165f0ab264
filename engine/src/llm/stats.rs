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
/// `check`: whether to refuse non-finite values (a pass over the input).
fn as_columns(inp: &Tensor, columns: i64, check: bool) -> Result<(i64, Tensor), StatsError> {
    let shape = inp.size();
    let ok = matches!(shape.len(), 2 | 3) && shape.last() == Some(&columns);
    if !ok {
        return Err(StatsError::Shape { shape, columns });
    }
    if check {
        finite(inp)?;
    }
    let batch = if shape.len() == 2 { 1 } else { shape[0] };
    Ok((batch, inp.f_reshape([-1, columns])?.f_tr()?))
}

fn finite(t: &Tensor) -> Result<(), StatsError> {
    if bool::try_from(t.f_isfinite()?.f_all()?)? {
        Ok(())
    } else {
        Err(StatsError::NonFinite)
    }
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
        let (batch, x) = as_columns(inp, self.scaler_row.size()[0], true)?;
        self.add(batch, &x)
    }

    /// [`WandaStats::add_batch`] of each window of `[windows, L, in]` in turn, the values not
    /// checked: a non-finite input makes the statistic non-finite, which [`WandaStats::check`]
    /// finds at the end in one look at `[in]` values instead of one at every input.
    pub fn add_windows(&mut self, inp: &Tensor) -> Result<(), StatsError> {
        let columns = self.scaler_row.size()[0];
        let shape = inp.size();
        if shape.len() != 3 || shape[2] != columns {
            return Err(StatsError::Shape { shape, columns });
        }
        for w in 0..shape[0] {
            let (batch, x) = as_columns(&inp.f_get(w)?, columns, false)?;
            self.add(batch, &x)?;
        }
        Ok(())
    }

    fn add(&mut self, batch: i64, x: &Tensor) -> Result<(), StatsError> {
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

    /// Whether the statistic is finite: every input added was (or its square overflowed f32).
    pub fn check(&self) -> Result<(), StatsError> {
        finite(&self.scaler_row)
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
        self.add(inp, true)
    }

    /// [`HessianStats::add_batch`] without looking at the values: a non-finite input makes
    /// the Hessian non-finite, which [`HessianStats::check`] finds once at the end.
    pub fn add_batch_unchecked(&mut self, inp: &Tensor) -> Result<(), StatsError> {
        self.add(inp, false)
    }

    fn add(&mut self, inp: &Tensor, check: bool) -> Result<(), StatsError> {
        let (batch, x) = as_columns(inp, self.hessian.size()[0], check)?;
        let keep = self.nsamples as f64 / (self.nsamples + batch) as f64;
        let _ = self.hessian.f_mul_scalar_(keep)?;
        self.nsamples += batch;
        // `math.sqrt(2 / n) * inp.float()`: the scale in f64, rounded to f32 by libtorch.
        let scale = (2.0 / self.nsamples as f64).sqrt();
        let x = x.f_to_kind(Kind::Float)?.f_mul_scalar(scale)?;
        let _ = self.hessian.f_add_(&x.f_matmul(&x.f_tr()?)?)?;
        Ok(())
    }

    /// Whether the Hessian is finite: every input added was (or its products did not overflow).
    pub fn check(&self) -> Result<(), StatsError> {
        finite(&self.hessian)
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

/// The Gram matrix `G = sum over tokens of x xᵀ` of a Linear's calibration inputs, for the
/// reconstruction error alone (any positive scale cancels there), so it is accumulated a batch of
/// windows at a time in one product. Window by window, as SparseGPT's Hessian must be (the
/// reference's running average), each `[in, L] x [L, in]` product rewrote the whole `in x in`
/// matrix for only L tokens: for down_proj's 1536 inputs that took 2.5 times as long.
#[derive(Debug)]
pub struct GramStats {
    gram: Tensor,
    tokens: i64,
}

impl GramStats {
    /// A zero `[columns, columns]` Gram matrix (f32, CPU).
    pub fn new(columns: i64) -> Self {
        GramStats { gram: Tensor::zeros([columns, columns], (Kind::Float, tch::Device::Cpu)), tokens: 0 }
    }

    /// Adds every token of `inp`, `[L, in]` or `[batch, L, in]`. Its values are not checked
    /// (the pass checks them with the Wanda statistics of the same inputs): non-finite ones make
    /// the reconstruction error an error.
    pub fn add_batch(&mut self, inp: &Tensor) -> Result<(), StatsError> {
        let (_, x) = as_columns(inp, self.gram.size()[0], false)?;
        let x = x.f_to_kind(Kind::Float)?;
        let _ = self.gram.f_addmm_(&x, &x.f_tr()?)?;
        self.tokens += x.size()[1];
        Ok(())
    }

    /// The accumulated Gram matrix, `[in, in]` f32.
    pub fn gram(&self) -> &Tensor {
        &self.gram
    }

    /// The number of tokens added so far.
    pub fn tokens(&self) -> i64 {
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(windows: i64, tokens: i64, columns: i64) -> Tensor {
        let _rng = crate::rng::global_generator_lock();
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
    fn gram_is_x_xt_over_all_tokens_whatever_the_batches() {
        let x = x(4, 5, 3);
        let mut stats = GramStats::new(3);
        stats.add_batch(&x.narrow(0, 0, 3)).unwrap();
        stats.add_batch(&x.get(3)).unwrap();
        assert_eq!(stats.tokens(), 20);
        let flat = x.reshape([-1, 3]).to_kind(Kind::Double);
        let direct = flat.tr().matmul(&flat).to_kind(Kind::Float);
        assert!(stats.gram().allclose(&direct, 1e-5, 1e-5, false));
        let mut bad = GramStats::new(4);
        assert!(matches!(bad.add_batch(&x), Err(StatsError::Shape { .. })));
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
        // Unchecked, a non-finite input shows in the statistic.
        let windows = Tensor::cat(&[nan.unsqueeze(0), Tensor::ones([1, 1, 4], (Kind::Float, tch::Device::Cpu))], 0);
        stats.add_windows(&windows).unwrap();
        assert_eq!(stats.check(), Err(StatsError::NonFinite));
        hessian.add_batch_unchecked(&inf).unwrap();
        assert_eq!(hessian.check(), Err(StatsError::NonFinite));
        let mut fine = WandaStats::new(4);
        fine.add_windows(&Tensor::ones([2, 3, 4], (Kind::Float, tch::Device::Cpu))).unwrap();
        assert_eq!(fine.check(), Ok(()));
    }
}
