//! Element bytes of the float dtypes a state dict holds, as the f32 values masks rank, and the
//! masking of those bytes in place, with libtorch's `w *= mask` semantics.

use safetensors::Dtype;

/// Whether libtorch calls this dtype floating (the tensors the engine may prune).
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// The dtypes `engine::tensors` maps to libtorch kinds: a state dict with any other is refused
/// with the message the libtorch path gives.
pub fn is_supported(dtype: Dtype) -> bool {
    is_float(dtype) || matches!(dtype, Dtype::BOOL | Dtype::U8 | Dtype::I8 | Dtype::I16 | Dtype::I32 | Dtype::I64)
}

/// The f32 value of every element of a float tensor (exact for f16 and bf16; f64 rounds to
/// nearest even, as libtorch's `to_kind(Float)`). `None` if some element is NaN or infinite in
/// its own dtype.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let values: Vec<f32> = match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::BF16 => {
            bytes.chunks_exact(2).map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)).collect()
        }
        Dtype::F16 => {
            bytes.chunks_exact(2).map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect()
        }
        Dtype::F64 => {
            let wide = bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("chunks of 8")));
            let mut out = Vec::with_capacity(bytes.len() / 8);
            for v in wide {
                if !v.is_finite() {
                    return None;
                }
                out.push(v as f32);
            }
            return Some(out);
        }
        _ => return Some(Vec::new()),
    };
    values.iter().all(|v| v.is_finite()).then_some(values)
}

/// `w *= mask` on the raw little-endian bytes of a float tensor: a dropped element becomes a
/// zero of its own sign (as `w * 0.0` does), a kept one is untouched.
pub fn apply_mask(bytes: &mut [u8], size: usize, mask: &[f32]) {
    for (element, &m) in bytes.chunks_exact_mut(size).zip(mask) {
        if m == 0.0 {
            let (top, rest) = element.split_last_mut().expect("elements have bytes");
            *top &= 0x80;
            rest.fill(0);
        }
    }
}

/// Non-zero elements, as `count_nonzero` counts them: -0.0 is zero for floats.
pub fn count_nonzero(dtype: Dtype, bytes: &[u8]) -> u64 {
    let size = (dtype.bitsize() / 8).max(1);
    let float = is_float(dtype);
    bytes
        .chunks_exact(size)
        .filter(|e| match e.split_last() {
            Some((&top, rest)) if float => top & 0x7f != 0 || rest.iter().any(|&b| b != 0),
            _ => e.iter().any(|&b| b != 0),
        })
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_types_convert_exactly_and_mask_to_signed_zero() {
        let bf: Vec<u8> = [1.5f32, -2.0, 0.0].iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
        assert_eq!(to_f32(Dtype::BF16, &bf).unwrap(), vec![1.5, -2.0, 0.0]);
        let hf: Vec<u8> =
            [0.5f32, -3.25].iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect();
        assert_eq!(to_f32(Dtype::F16, &hf).unwrap(), vec![0.5, -3.25]);
        let mut f: Vec<u8> = [1.0f32, -2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        apply_mask(&mut f, 4, &[0.0, 0.0, 1.0]);
        let back: Vec<u32> = f.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(back, vec![0, (-0.0f32).to_bits(), 3.0f32.to_bits()]);
        assert_eq!(count_nonzero(Dtype::F32, &f), 1);
        assert_eq!(count_nonzero(Dtype::I64, &[0, 0, 0, 0, 0, 0, 0, 0x80]), 1);
    }

    #[test]
    fn non_finite_values_are_refused() {
        let inf: Vec<u8> = [1.0f32, f32::INFINITY].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(to_f32(Dtype::F32, &inf).is_none());
        let big = f64::MAX.to_le_bytes();
        assert_eq!(to_f32(Dtype::F64, &big).unwrap(), vec![f32::INFINITY], "finite in f64, as libtorch checks");
        let nan = f64::NAN.to_le_bytes();
        assert!(to_f32(Dtype::F64, &nan).is_none());
    }
}
