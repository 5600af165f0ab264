//! Element-wise masking of one tensor's raw bytes a chunk of values at a time, so that neither
//! an f32 copy of the whole tensor nor its whole mask is ever held: a big half-precision tensor
//! costs its own bytes plus a few MiB, instead of 3x its size more.
//!
//! Exact-k within the tensor is [`GlobalSelection`] over the tensor's chunks (two histogram
//! passes, then each chunk decided in order): the same selection `element_mask` makes over the
//! whole, ties to the lower flat index, since the chunks in order are the tensor in order.

use prune_core::mask::GlobalSelection;
use safetensors::Dtype;

use super::values;

/// Values per chunk: 4 MiB of f32 and 4 MiB of mask.
pub const CHUNK: usize = 1 << 20;

/// Calls `visit` with the f32 values of `data` (a float tensor's bytes), `chunk` values at a
/// time, in order. `None` if some value is NaN or infinite.
pub fn each_chunk(dtype: Dtype, data: &[u8], chunk: usize, mut visit: impl FnMut(&[f32])) -> Option<()> {
    let size = dtype.bitsize() / 8;
    for bytes in data.chunks(chunk * size) {
        visit(&values::to_f32(dtype, bytes)?);
    }
    Some(())
}

/// Masks `data` in place with `decide`, which is given each chunk's f32 values in order and
/// returns that chunk's mask. Returns how many values were kept; `None` on a NaN or infinity
/// (`data` may then be partly masked: the caller fails the job).
pub fn mask_in_place(
    dtype: Dtype,
    data: &mut [u8],
    chunk: usize,
    mut decide: impl FnMut(&[f32]) -> Vec<f32>,
) -> Option<usize> {
    let size = dtype.bitsize() / 8;
    let mut kept = 0;
    for bytes in data.chunks_mut(chunk * size) {
        let mask = decide(&values::to_f32(dtype, bytes)?);
        kept += mask.iter().filter(|&&m| m != 0.0).count();
        values::apply_mask(bytes, size, &mask);
    }
    Some(kept)
}

/// `element_mask(values, sparsity)` applied to `data` in place, chunk by chunk. Returns the
/// kept count; `None` on a NaN or infinity.
pub fn element_wise(dtype: Dtype, data: &mut [u8], sparsity: f32, chunk: usize) -> Option<usize> {
    let total = data.len() / (dtype.bitsize() / 8);
    let mut selection =
        GlobalSelection::find(total, sparsity, |visit| each_chunk(dtype, data, chunk, visit).ok_or(())).ok()?;
    mask_in_place(dtype, data, chunk, |values| selection.next_mask(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prune_core::mask;

    fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
        match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::BF16 => values.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
            Dtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn chunked_element_masks_equal_the_whole_tensor_mask_with_ties() {
        // 13 magnitudes (exact in every dtype), both signs: ties everywhere, across chunks.
        let values: Vec<f32> = (0..1000).map(|i| ((i * 7919 % 27) as f32 - 13.0) * 0.25).collect();
        for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
            for sparsity in [0.0, 0.3, 0.5, 0.77, 0.999, 1.0] {
                let whole = mask::element_mask(&values, sparsity);
                let mut expected = encode(dtype, &values);
                values::apply_mask(&mut expected, dtype.bitsize() / 8, &whole);
                for chunk in [1, 7, 64, 999, 1000, 4096] {
                    let mut data = encode(dtype, &values);
                    let kept = element_wise(dtype, &mut data, sparsity, chunk).unwrap();
                    assert_eq!(data, expected, "{dtype:?} sparsity {sparsity} chunk {chunk}");
                    assert_eq!(kept, whole.iter().filter(|&&m| m != 0.0).count());
                }
            }
        }
    }

    #[test]
    fn a_nan_in_any_chunk_is_refused() {
        let mut values = vec![1.0f32; 100];
        values[77] = f32::NAN;
        let mut data = encode(Dtype::F32, &values);
        assert_eq!(element_wise(Dtype::F32, &mut data, 0.5, 10), None);
        assert_eq!(each_chunk(Dtype::F32, &data, 10, |_| {}), None);
    }
}
