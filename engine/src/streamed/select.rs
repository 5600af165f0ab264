//! Which tensors of a state dict are pruned, and how: [`Selector`] over the names, dtypes and
//! shapes of a safetensors header (the rules `masking::select_targets` applies to a loaded
//! model), so that no tensor needs loading to decide. `tests/streamed.rs` checks both paths agree.

use prune_core::job::Pruning;
use prune_core::tensorstream::TensorInfo;

use super::values::is_float;
pub use crate::masking::Rule;
use crate::masking::Selector;
use crate::EngineError;

/// One entry per tensor, in order: its rule when it is pruned.
pub fn select(spec: &Pruning, tensors: &[TensorInfo]) -> Result<Vec<Option<Rule>>, EngineError> {
    let selector = Selector::new(spec)?;
    tensors.iter().map(|t| selector.rule(&t.name, &t.shape, is_float(t.dtype))).collect()
}
