//! compressed-tensors "sparse-bitmask" packing over safetensors (`docs/pruning-semantics.md`,
//! "Sparse packing").
//!
//! A packed parameter is a `<module>.weight` of rank >= 2, replaced by four tensors named after
//! its module, exactly as compressed-tensors 0.12.2's `BitmaskCompressor` writes them, so that its
//! `decompress(path)` yields the dense state dict:
//! * `<module>.compressed`: 1-D, the non-zero values in row-major order, in the weight's dtype;
//! * `<module>.bitmask`: u8, the weight's shape with the last dimension replaced by
//!   `ceil(last / 8)`, the non-zero mask packed along the last axis, least significant bit first
//!   (numpy `packbits(..., bitorder="little")`);
//! * `<module>.shape`: i64, 1-D, the dense shape;
//! * `<module>.row_offsets`: i64, the weight's shape without its last dimension: where each
//!   last-axis row starts in `compressed`.
//!
//! Everything here works on untrusted bytes (uploads, downloads, `prunectl unpack`): every
//! inconsistency is a [`FormatError`] naming the tensor, never a panic, and no allocation is
//! larger than a small multiple of the input.

use std::collections::HashMap;

use safetensors::Dtype;

pub(crate) use crate::tensorfile::MAX_HEADER_LEN;
use crate::tensorfile::{check_unique_names, numel, tensor_error};
pub use crate::tensorfile::{read_safetensors, write_safetensors, FormatError, Metadata, TensorData};

/// Metadata key that marks a packed file, with the compressed-tensors format name as its value.
pub const SPARSITY_FORMAT_KEY: &str = "sparsity_format";
/// compressed-tensors' name for this layout (`CompressionFormat.sparse_bitmask`).
pub const SPARSE_BITMASK: &str = "sparse-bitmask";

const WEIGHT_SUFFIX: &str = ".weight";
const COMPRESSED: &str = "compressed";
const BITMASK: &str = "bitmask";
const SHAPE: &str = "shape";
const ROW_OFFSETS: &str = "row_offsets";
/// The suffixes compressed-tensors reads as parts of a packed weight.
const PARTS: [&str; 4] = [SHAPE, COMPRESSED, BITMASK, ROW_OFFSETS];

fn packed_error(module: &str, reason: impl Into<String>) -> FormatError {
    FormatError::Packed { module: module.to_string(), reason: reason.into() }
}

// ---------------------------------------------------------------------------------------------
// Element zero tests
// ---------------------------------------------------------------------------------------------

/// How to tell a zero element from its little-endian bytes, matching PyTorch's `tensor != 0`.
#[derive(Debug, Clone, Copy)]
enum ZeroTest {
    /// Integers, bools and the FNUZ floats (whose `0x80` is NaN, not -0): all bytes zero.
    AllBytes,
    /// IEEE-style floats in parts of `part` bytes (two for complex): every part zero once its
    /// sign bit is cleared, so -0.0 counts as zero.
    SignedParts { part: usize },
}

impl ZeroTest {
    /// `None` for dtypes with no whole-byte elements (F4, F6) or no zero value (F8_E8M0).
    fn of(dtype: Dtype) -> Option<ZeroTest> {
        use Dtype::*;
        match dtype {
            F16 | BF16 | F32 | F64 | F8_E4M3 | F8_E5M2 => Some(ZeroTest::SignedParts { part: dtype.bitsize() / 8 }),
            C64 => Some(ZeroTest::SignedParts { part: 4 }),
            BOOL | U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64 | F8_E4M3FNUZ | F8_E5M2FNUZ => Some(ZeroTest::AllBytes),
            _ => None,
        }
    }

    fn is_zero(self, element: &[u8]) -> bool {
        match self {
            ZeroTest::AllBytes => element.iter().all(|&b| b == 0),
            ZeroTest::SignedParts { part } => element.chunks_exact(part).all(|p| match p.split_last() {
                Some((&top, rest)) => top & 0x7f == 0 && rest.iter().all(|&b| b == 0),
                None => true,
            }),
        }
    }
}

/// The element size of a dtype that can be packed, or why it cannot.
fn packable_element(name: &str, dtype: Dtype) -> Result<(ZeroTest, usize), FormatError> {
    ZeroTest::of(dtype)
        .map(|test| (test, dtype.bitsize() / 8))
        .ok_or_else(|| tensor_error(name, format!("dtype {dtype} cannot be bitmask-packed (no whole-byte zero value)")))
}

// ---------------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------------

/// The dense shape split into rows along the last axis.
#[derive(Debug, Clone, Copy)]
struct Rows {
    count: usize,
    len: usize,
}

impl Rows {
    /// `None` for an empty shape or one whose element count overflows.
    fn of(shape: &[usize]) -> Option<Rows> {
        let (&len, lead) = shape.split_last()?;
        let count = numel(lead)?;
        count.checked_mul(len)?;
        Some(Rows { count, len })
    }

    /// Bytes of one packed bitmask row.
    fn mask_bytes(self) -> usize {
        self.len.div_ceil(8)
    }
}

/// Replaces every `<module>.weight` of rank >= 2 with its four packed tensors; other tensors
/// are kept as they are, in order.
///
/// Weights with no elements are kept dense: there is nothing to pack, and the row offsets of a
/// shape like `[huge, 0]` would be absurdly large. So is a weight whose packed parts would take
/// at least its dense bytes (little or no sparsity: a bitmask row costs an eighth of a byte per
/// element plus 8 bytes): compressed-tensors reads a dense weight next to packed ones as it is.
pub fn pack(tensors: &[TensorData]) -> Result<Vec<TensorData>, FormatError> {
    Ok(pack_reporting(tensors)?.0)
}

/// [`pack`], also naming the weights it kept dense because packing would have made them larger.
pub fn pack_reporting(tensors: &[TensorData]) -> Result<(Vec<TensorData>, Vec<String>), FormatError> {
    check_unique_names(tensors)?;
    let mut out = Vec::with_capacity(tensors.len() + 3 * tensors.len());
    let mut kept_dense = Vec::new();
    for t in tensors {
        let parts = pack_one(t.clone())?;
        if parts.len() == 1 && packed_module(t).is_some() {
            kept_dense.push(t.name.clone());
        }
        out.extend(parts);
    }
    // A packed part may collide with a tensor kept as it was (`a.weight` next to `a.shape`
    // is caught above; this catches the rest).
    check_unique_names(&out)?;
    Ok((out, kept_dense))
}

/// [`pack`] for one tensor of a file handled a tensor at a time: its four packed parts, or the
/// tensor itself when it is not a packed weight or packing would not make it smaller (a weight
/// of rank >= 2 that comes back alone was kept dense for that reason). The caller checks that
/// names stay unique across the file.
pub fn pack_one(t: TensorData) -> Result<Vec<TensorData>, FormatError> {
    t.check_len()?;
    if let Some(module) = packed_module(&t) {
        let parts = pack_weight(module, &t)?;
        if parts.iter().map(|p| p.data.len()).sum::<usize>() < t.data.len() {
            return Ok(parts.into());
        }
    }
    check_not_a_part_name(&t)?;
    Ok(vec![t])
}

/// Whether [`pack`] packs `t` when packing makes it smaller: a `<module>.weight` of rank >= 2
/// with elements.
pub fn is_packable(t: &TensorData) -> bool {
    packed_module(t).is_some()
}

/// The module whose weight `t` is, when `t` is packed.
fn packed_module(t: &TensorData) -> Option<&str> {
    let module = t.name.strip_suffix(WEIGHT_SUFFIX)?;
    (!module.is_empty() && t.shape.len() >= 2 && t.numel() != Some(0)).then_some(module)
}

/// A tensor kept dense must not look like a packed part: compressed-tensors would read it as one.
fn check_not_a_part_name(t: &TensorData) -> Result<(), FormatError> {
    match split_part_name(&t.name) {
        Some((_, part)) => Err(tensor_error(
            &t.name,
            format!("its name ends in `.{part}`, which compressed-tensors reads as part of a packed weight; rename it before packing"),
        )),
        None => Ok(()),
    }
}

/// `(module, part)` when `name` is `<module>.<part>` for a packed part.
fn split_part_name(name: &str) -> Option<(&str, &'static str)> {
    let (module, suffix) = name.rsplit_once('.')?;
    let part = PARTS.into_iter().find(|&p| p == suffix)?;
    (!module.is_empty()).then_some((module, part))
}

fn part_name(module: &str, part: &str) -> String {
    format!("{module}.{part}")
}

/// The four packed tensors of one weight, in compressed-tensors' order.
fn pack_weight(module: &str, weight: &TensorData) -> Result<[TensorData; 4], FormatError> {
    let (zero, size) = packable_element(&weight.name, weight.dtype)?;
    let rows = Rows::of(&weight.shape).ok_or_else(|| tensor_error(&weight.name, "shape overflows"))?;
    let mut bitmask = vec![0u8; rows.count * rows.mask_bytes()];
    let mut compressed = Vec::new();
    let mut row_offsets = Vec::with_capacity(rows.count);
    let mut nnz = 0usize;
    for r in 0..rows.count {
        row_offsets.push(nnz as i64);
        let row = &weight.data[r * rows.len * size..(r + 1) * rows.len * size];
        let mask_row = &mut bitmask[r * rows.mask_bytes()..(r + 1) * rows.mask_bytes()];
        for (c, element) in row.chunks_exact(size).enumerate() {
            if !zero.is_zero(element) {
                mask_row[c / 8] |= 1 << (c % 8);
                compressed.extend_from_slice(element);
                nnz += 1;
            }
        }
    }
    let lead = weight.shape[..weight.shape.len() - 1].to_vec();
    let mut mask_shape = lead.clone();
    mask_shape.push(rows.mask_bytes());
    let dense_shape: Vec<i64> = weight.shape.iter().map(|&d| d as i64).collect();
    Ok([
        TensorData {
            name: part_name(module, SHAPE),
            dtype: Dtype::I64,
            shape: vec![dense_shape.len()],
            data: i64_bytes(&dense_shape),
        },
        TensorData { name: part_name(module, COMPRESSED), dtype: weight.dtype, shape: vec![nnz], data: compressed },
        TensorData { name: part_name(module, BITMASK), dtype: Dtype::U8, shape: mask_shape, data: bitmask },
        TensorData {
            name: part_name(module, ROW_OFFSETS),
            dtype: Dtype::I64,
            shape: lead,
            data: i64_bytes(&row_offsets),
        },
    ])
}

fn i64_bytes(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn i64_values(bytes: &[u8]) -> impl Iterator<Item = i64> + '_ {
    bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8")))
}

// ---------------------------------------------------------------------------------------------
// Unpacking
// ---------------------------------------------------------------------------------------------

/// The four parts of one packed weight, as found in a file.
#[derive(Default)]
struct PackedParts<'a> {
    shape: Option<&'a TensorData>,
    compressed: Option<&'a TensorData>,
    bitmask: Option<&'a TensorData>,
    row_offsets: Option<&'a TensorData>,
}

impl<'a> PackedParts<'a> {
    fn slot(&mut self, part: &str) -> &mut Option<&'a TensorData> {
        match part {
            SHAPE => &mut self.shape,
            COMPRESSED => &mut self.compressed,
            BITMASK => &mut self.bitmask,
            _ => &mut self.row_offsets,
        }
    }

    fn require(&self, module: &str) -> Result<[&'a TensorData; 4], FormatError> {
        let found = [
            (SHAPE, self.shape),
            (COMPRESSED, self.compressed),
            (BITMASK, self.bitmask),
            (ROW_OFFSETS, self.row_offsets),
        ];
        let missing: Vec<String> =
            found.iter().filter(|(_, t)| t.is_none()).map(|(p, _)| format!("`{}`", part_name(module, p))).collect();
        if !missing.is_empty() {
            return Err(packed_error(module, format!("missing {}", missing.join(", "))));
        }
        Ok(found.map(|(_, t)| t.expect("checked above")))
    }
}

/// Inverse of [`pack`]: every `<module>.{shape,compressed,bitmask,row_offsets}` group becomes
/// `<module>.weight` again (zeros as +0.0), placed where the group's first part was; other
/// tensors are kept as they are.
pub fn unpack(tensors: &[TensorData]) -> Result<Vec<TensorData>, FormatError> {
    check_unique_names(tensors)?;
    let mut groups: HashMap<&str, PackedParts> = HashMap::new();
    for t in tensors {
        t.check_len()?;
        if let Some((module, part)) = split_part_name(&t.name) {
            *groups.entry(module).or_default().slot(part) = Some(t);
        }
    }
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        match split_part_name(&t.name) {
            None => out.push(t.clone()),
            Some((module, _)) => {
                if let Some(parts) = groups.remove(module) {
                    out.push(unpack_weight(module, &parts)?);
                }
            }
        }
    }
    check_unique_names(&out)?;
    Ok(out)
}

/// Rebuilds one dense weight, checking every part against the dense shape first.
fn unpack_weight(module: &str, parts: &PackedParts) -> Result<TensorData, FormatError> {
    let [shape, compressed, bitmask, row_offsets] = parts.require(module)?;
    let dense_shape = read_dense_shape(module, shape)?;
    let rows =
        Rows::of(&dense_shape).ok_or_else(|| packed_error(module, format!("dense shape {dense_shape:?} overflows")))?;
    let lead = &dense_shape[..dense_shape.len() - 1];
    let mut mask_shape = lead.to_vec();
    mask_shape.push(rows.mask_bytes());
    expect_layout(module, bitmask, Dtype::U8, &mask_shape)?;
    expect_layout(module, row_offsets, Dtype::I64, lead)?;
    let (_, size) = packable_element(&compressed.name, compressed.dtype)?;
    if compressed.shape.len() != 1 {
        return Err(packed_error(
            module,
            format!("`{}` must be 1-D, not shape {:?}", compressed.name, compressed.shape),
        ));
    }
    check_row_offsets(module, bitmask, row_offsets, compressed.shape[0], rows)?;

    let mut dense = vec![0u8; rows.count * rows.len * size];
    let mut values = compressed.data.chunks_exact(size);
    for r in 0..rows.count {
        let mask_row = &bitmask.data[r * rows.mask_bytes()..(r + 1) * rows.mask_bytes()];
        for c in (0..rows.len).filter(|&c| mask_row[c / 8] & (1 << (c % 8)) != 0) {
            // The counts were checked against `compressed`'s length above.
            let value = values.next().ok_or_else(|| packed_error(module, "ran out of compressed values"))?;
            let at = (r * rows.len + c) * size;
            dense[at..at + size].copy_from_slice(value);
        }
    }
    Ok(TensorData { name: part_name(module, "weight"), dtype: compressed.dtype, shape: dense_shape, data: dense })
}

/// The dense shape stored in `<module>.shape`: i64, 1-D, at least one non-negative dimension.
fn read_dense_shape(module: &str, shape: &TensorData) -> Result<Vec<usize>, FormatError> {
    if shape.dtype != Dtype::I64 || shape.shape.len() != 1 || shape.shape[0] == 0 {
        return Err(packed_error(
            module,
            format!("`{}` must be a non-empty 1-D I64 tensor, not {} {:?}", shape.name, shape.dtype, shape.shape),
        ));
    }
    i64_values(&shape.data)
        .map(|d| {
            usize::try_from(d)
                .map_err(|_| packed_error(module, format!("`{}` holds a negative dimension {d}", shape.name)))
        })
        .collect()
}

fn expect_layout(module: &str, t: &TensorData, dtype: Dtype, shape: &[usize]) -> Result<(), FormatError> {
    if t.dtype != dtype || t.shape != shape {
        return Err(packed_error(
            module,
            format!("`{}` is {} {:?}, but the dense shape needs {dtype} {shape:?}", t.name, t.dtype, t.shape),
        ));
    }
    Ok(())
}

/// Checks that each row's offset is the count of set bits before it, that no padding bit past
/// the row's end is set, and that the bits add up to the number of compressed values.
fn check_row_offsets(
    module: &str,
    bitmask: &TensorData,
    row_offsets: &TensorData,
    values: usize,
    rows: Rows,
) -> Result<(), FormatError> {
    let padding = (rows.mask_bytes() * 8 - rows.len) as u32;
    let mut nnz = 0usize;
    for (r, offset) in i64_values(&row_offsets.data).enumerate() {
        if offset != nnz as i64 {
            return Err(packed_error(
                module,
                format!(
                    "row {r} starts at offset {offset} in `{}`, but the bitmask puts it at {nnz}",
                    row_offsets.name
                ),
            ));
        }
        let mask_row = &bitmask.data[r * rows.mask_bytes()..(r + 1) * rows.mask_bytes()];
        if let Some(&last) = mask_row.last() {
            if padding > 0 && last >> (8 - padding) != 0 {
                return Err(packed_error(
                    module,
                    format!("row {r} of `{}` has bits set past the row's end", bitmask.name),
                ));
            }
        }
        nnz += mask_row.iter().map(|b| b.count_ones() as usize).sum::<usize>();
    }
    if nnz != values {
        return Err(packed_error(
            module,
            format!("the bitmask marks {nnz} non-zeros, but `{}` holds {values} values", part_name(module, COMPRESSED)),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Whole files
// ---------------------------------------------------------------------------------------------

/// Packs a dense safetensors file, marking it `sparsity_format = sparse-bitmask`.
pub fn pack_safetensors(bytes: &[u8]) -> Result<Vec<u8>, FormatError> {
    Ok(pack_safetensors_reporting(bytes)?.0)
}

/// [`pack_safetensors`], also naming the weights kept dense ([`pack_reporting`]).
pub fn pack_safetensors_reporting(bytes: &[u8]) -> Result<(Vec<u8>, Vec<String>), FormatError> {
    let (tensors, metadata) = read_safetensors(bytes)?;
    let mut metadata = metadata.unwrap_or_default();
    metadata.insert(SPARSITY_FORMAT_KEY.into(), SPARSE_BITMASK.into());
    let (packed, kept_dense) = pack_reporting(&tensors)?;
    Ok((write_safetensors(&packed, Some(metadata))?, kept_dense))
}

/// Unpacks a bitmask-packed safetensors file into a plain dense one (`prunectl unpack`).
pub fn unpack_safetensors(bytes: &[u8]) -> Result<Vec<u8>, FormatError> {
    let (tensors, metadata) = read_safetensors(bytes)?;
    let mut metadata = metadata.unwrap_or_default();
    metadata.remove(SPARSITY_FORMAT_KEY);
    write_safetensors(&unpack(&tensors)?, Some(metadata))
}

#[cfg(test)]
#[path = "bitmask_tests.rs"]
mod tests;
