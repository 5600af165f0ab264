//! compressed-tensors "sparse-bitmask" packing over safetensors (`spec/pruning-semantics.md`,
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

use std::collections::{BTreeMap, HashMap, HashSet};

use safetensors::{Dtype, SafeTensors};

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

/// Header size the safetensors readers accept (100 MB).
pub(crate) const MAX_HEADER_LEN: usize = 100_000_000;

/// A safetensors file's `__metadata__`: free-form string pairs.
pub type Metadata = HashMap<String, String>;

/// One named tensor: raw little-endian, row-major bytes, as safetensors stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Why a safetensors file, or a packed weight in it, cannot be read, packed or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a valid safetensors file: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    #[error("tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },
    #[error("packed weight `{module}`: {reason}")]
    Packed { module: String, reason: String },
}

fn tensor_error(name: &str, reason: impl Into<String>) -> FormatError {
    FormatError::Tensor {
        name: name.to_string(),
        reason: reason.into(),
    }
}

fn packed_error(module: &str, reason: impl Into<String>) -> FormatError {
    FormatError::Packed {
        module: module.to_string(),
        reason: reason.into(),
    }
}

impl TensorData {
    /// A tensor whose byte length is checked against its dtype and shape.
    pub fn new(
        name: impl Into<String>,
        dtype: Dtype,
        shape: Vec<usize>,
        data: Vec<u8>,
    ) -> Result<Self, FormatError> {
        let tensor = TensorData {
            name: name.into(),
            dtype,
            shape,
            data,
        };
        tensor.check_len()?;
        Ok(tensor)
    }

    /// Number of elements, `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        numel(&self.shape)
    }

    /// The byte length that dtype and shape call for.
    fn expected_len(&self) -> Result<usize, FormatError> {
        let bits = self
            .numel()
            .and_then(|n| n.checked_mul(self.dtype.bitsize()))
            .ok_or_else(|| tensor_error(&self.name, format!("shape {:?} overflows", self.shape)))?;
        if bits % 8 != 0 {
            return Err(tensor_error(
                &self.name,
                format!(
                    "{} elements of {} do not fill whole bytes",
                    bits / self.dtype.bitsize(),
                    self.dtype
                ),
            ));
        }
        Ok(bits / 8)
    }

    fn check_len(&self) -> Result<(), FormatError> {
        let expected = self.expected_len()?;
        if self.data.len() != expected {
            return Err(tensor_error(
                &self.name,
                format!(
                    "has {} data bytes, but dtype {} and shape {:?} need {expected}",
                    self.data.len(),
                    self.dtype,
                    self.shape
                ),
            ));
        }
        Ok(())
    }
}

fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

// ---------------------------------------------------------------------------------------------
// safetensors files
// ---------------------------------------------------------------------------------------------

/// Reads every tensor of a safetensors file, in file order, and its `__metadata__`.
///
/// The safetensors crate validates the header against the buffer (offsets contiguous, sizes
/// matching dtype and shape, no bytes left over), so a lying header is an error, not a panic.
/// A name the header lists twice is an error too: the crate would silently keep one of them.
pub fn read_safetensors(bytes: &[u8]) -> Result<(Vec<TensorData>, Option<Metadata>), FormatError> {
    let (header_len, metadata) = SafeTensors::read_metadata(bytes)?;
    // `read_metadata` has checked that these bytes exist and are a UTF-8 JSON object.
    check_unique_keys(&bytes[8..8 + header_len])?;
    let body = &bytes[8 + header_len..];
    let infos = metadata.tensors();
    let tensors = metadata
        .offset_keys()
        .into_iter()
        .map(|name| {
            let info = infos[&name];
            let (start, end) = info.data_offsets;
            let data = body.get(start..end).ok_or_else(|| {
                tensor_error(
                    &name,
                    format!("data offsets [{start}, {end}) lie outside the file"),
                )
            })?;
            Ok(TensorData {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                data: data.to_vec(),
            })
        })
        .collect::<Result<Vec<_>, FormatError>>()?;
    Ok((tensors, metadata.metadata().clone()))
}

/// Fails on the first key a JSON object header repeats (tensor names, `__metadata__`).
fn check_unique_keys(header: &[u8]) -> Result<(), FormatError> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    /// Visits the top-level object, skipping values, and returns its first repeated key.
    struct FirstRepeat;

    impl<'de> Visitor<'de> for FirstRepeat {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Ok(Some(key));
                }
            }
            Ok(None)
        }
    }

    let repeated = serde_json::Deserializer::from_slice(header)
        .deserialize_map(FirstRepeat)
        .map_err(|e| {
            FormatError::Safetensors(safetensors::SafeTensorError::InvalidHeaderDeserialization(
                e,
            ))
        })?;
    match repeated {
        Some(name) => Err(tensor_error(&name, "appears more than once in the header")),
        None => Ok(()),
    }
}

/// Writes a safetensors file with `{"format": "pt"}` added to `metadata` (as
/// `safetensors.torch.save_file` does, so PyTorch tooling recognises it).
///
/// The bytes are deterministic: tensors are laid out as the safetensors crate lays them out
/// (by decreasing dtype alignment, then name) and metadata keys are sorted; the crate itself
/// writes metadata in `HashMap` order, which changes from run to run.
pub fn write_safetensors(
    tensors: &[TensorData],
    metadata: Option<Metadata>,
) -> Result<Vec<u8>, FormatError> {
    check_unique_names(tensors)?;
    for t in tensors {
        t.check_len()?;
    }
    let mut metadata: BTreeMap<String, String> = metadata.unwrap_or_default().into_iter().collect();
    metadata
        .entry("format".into())
        .or_insert_with(|| "pt".into());

    let mut ordered: Vec<&TensorData> = tensors.iter().collect();
    ordered.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));

    let mut header = header_json(&ordered, &metadata);
    if header.len() > MAX_HEADER_LEN {
        return Err(FormatError::Safetensors(
            safetensors::SafeTensorError::HeaderTooLarge,
        ));
    }
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    header.resize(header.len().next_multiple_of(8), b' ');

    let body_len: usize = tensors.iter().map(|t| t.data.len()).sum();
    let mut out = Vec::with_capacity(8 + header.len() + body_len);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    for t in ordered {
        out.extend(&t.data);
    }
    Ok(out)
}

/// The JSON header: `__metadata__` first, then each tensor's dtype, shape and data offsets.
fn header_json(ordered: &[&TensorData], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut entries = vec![format!("\"__metadata__\":{}", json(metadata))];
    let mut offset = 0;
    for t in ordered {
        let end = offset + t.data.len();
        entries.push(format!(
            "{}:{{\"dtype\":{},\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            json(&t.name),
            json(&t.dtype),
            json(&t.shape)
        ));
        offset = end;
    }
    format!("{{{}}}", entries.join(",")).into_bytes()
}

/// Serialises a value whose serialisation cannot fail (strings, maps of strings, numbers).
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("strings and numbers always serialise")
}

fn check_unique_names(tensors: &[TensorData]) -> Result<(), FormatError> {
    let mut seen = HashSet::with_capacity(tensors.len());
    match tensors.iter().find(|t| !seen.insert(t.name.as_str())) {
        Some(t) => Err(tensor_error(&t.name, "appears more than once")),
        None => Ok(()),
    }
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
            F16 | BF16 | F32 | F64 | F8_E4M3 | F8_E5M2 => Some(ZeroTest::SignedParts {
                part: dtype.bitsize() / 8,
            }),
            C64 => Some(ZeroTest::SignedParts { part: 4 }),
            BOOL | U8 | I8 | U16 | I16 | U32 | I32 | U64 | I64 | F8_E4M3FNUZ | F8_E5M2FNUZ => {
                Some(ZeroTest::AllBytes)
            }
            _ => None,
        }
    }

    fn is_zero(self, element: &[u8]) -> bool {
        match self {
            ZeroTest::AllBytes => element.iter().all(|&b| b == 0),
            ZeroTest::SignedParts { part } => {
                element.chunks_exact(part).all(|p| match p.split_last() {
                    Some((&top, rest)) => top & 0x7f == 0 && rest.iter().all(|&b| b == 0),
                    None => true,
                })
            }
        }
    }
}

/// The element size of a dtype that can be packed, or why it cannot.
fn packable_element(name: &str, dtype: Dtype) -> Result<(ZeroTest, usize), FormatError> {
    ZeroTest::of(dtype)
        .map(|test| (test, dtype.bitsize() / 8))
        .ok_or_else(|| {
            tensor_error(
                name,
                format!("dtype {dtype} cannot be bitmask-packed (no whole-byte zero value)"),
            )
        })
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
/// shape like `[huge, 0]` would be absurdly large.
pub fn pack(tensors: &[TensorData]) -> Result<Vec<TensorData>, FormatError> {
    check_unique_names(tensors)?;
    let mut out = Vec::with_capacity(tensors.len() + 3 * tensors.len());
    for t in tensors {
        t.check_len()?;
        match packed_module(t) {
            Some(module) => out.extend(pack_weight(module, t)?),
            None => {
                check_not_a_part_name(t)?;
                out.push(t.clone());
            }
        }
    }
    // A packed part may collide with a tensor kept as it was (`a.weight` next to `a.shape`
    // is caught above; this catches the rest).
    check_unique_names(&out)?;
    Ok(out)
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
    let rows =
        Rows::of(&weight.shape).ok_or_else(|| tensor_error(&weight.name, "shape overflows"))?;
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
        TensorData {
            name: part_name(module, COMPRESSED),
            dtype: weight.dtype,
            shape: vec![nnz],
            data: compressed,
        },
        TensorData {
            name: part_name(module, BITMASK),
            dtype: Dtype::U8,
            shape: mask_shape,
            data: bitmask,
        },
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
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8")))
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
        let missing: Vec<String> = found
            .iter()
            .filter(|(_, t)| t.is_none())
            .map(|(p, _)| format!("`{}`", part_name(module, p)))
            .collect();
        if !missing.is_empty() {
            return Err(packed_error(
                module,
                format!("missing {}", missing.join(", ")),
            ));
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
    let rows = Rows::of(&dense_shape)
        .ok_or_else(|| packed_error(module, format!("dense shape {dense_shape:?} overflows")))?;
    let lead = &dense_shape[..dense_shape.len() - 1];
    let mut mask_shape = lead.to_vec();
    mask_shape.push(rows.mask_bytes());
    expect_layout(module, bitmask, Dtype::U8, &mask_shape)?;
    expect_layout(module, row_offsets, Dtype::I64, lead)?;
    let (_, size) = packable_element(&compressed.name, compressed.dtype)?;
    if compressed.shape.len() != 1 {
        return Err(packed_error(
            module,
            format!(
                "`{}` must be 1-D, not shape {:?}",
                compressed.name, compressed.shape
            ),
        ));
    }
    check_row_offsets(module, bitmask, row_offsets, compressed.shape[0], rows)?;

    let mut dense = vec![0u8; rows.count * rows.len * size];
    let mut values = compressed.data.chunks_exact(size);
    for r in 0..rows.count {
        let mask_row = &bitmask.data[r * rows.mask_bytes()..(r + 1) * rows.mask_bytes()];
        for c in (0..rows.len).filter(|&c| mask_row[c / 8] & (1 << (c % 8)) != 0) {
            // The counts were checked against `compressed`'s length above.
            let value = values
                .next()
                .ok_or_else(|| packed_error(module, "ran out of compressed values"))?;
            let at = (r * rows.len + c) * size;
            dense[at..at + size].copy_from_slice(value);
        }
    }
    Ok(TensorData {
        name: part_name(module, "weight"),
        dtype: compressed.dtype,
        shape: dense_shape,
        data: dense,
    })
}

/// The dense shape stored in `<module>.shape`: i64, 1-D, at least one non-negative dimension.
fn read_dense_shape(module: &str, shape: &TensorData) -> Result<Vec<usize>, FormatError> {
    if shape.dtype != Dtype::I64 || shape.shape.len() != 1 || shape.shape[0] == 0 {
        return Err(packed_error(
            module,
            format!(
                "`{}` must be a non-empty 1-D I64 tensor, not {} {:?}",
                shape.name, shape.dtype, shape.shape
            ),
        ));
    }
    i64_values(&shape.data)
        .map(|d| {
            usize::try_from(d).map_err(|_| {
                packed_error(
                    module,
                    format!("`{}` holds a negative dimension {d}", shape.name),
                )
            })
        })
        .collect()
}

fn expect_layout(
    module: &str,
    t: &TensorData,
    dtype: Dtype,
    shape: &[usize],
) -> Result<(), FormatError> {
    if t.dtype != dtype || t.shape != shape {
        return Err(packed_error(
            module,
            format!(
                "`{}` is {} {:?}, but the dense shape needs {dtype} {shape:?}",
                t.name, t.dtype, t.shape
            ),
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
                    format!(
                        "row {r} of `{}` has bits set past the row's end",
                        bitmask.name
                    ),
                ));
            }
        }
        nnz += mask_row
            .iter()
            .map(|b| b.count_ones() as usize)
            .sum::<usize>();
    }
    if nnz != values {
        return Err(packed_error(
            module,
            format!(
                "the bitmask marks {nnz} non-zeros, but `{}` holds {values} values",
                part_name(module, COMPRESSED)
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Whole files
// ---------------------------------------------------------------------------------------------

/// Packs a dense safetensors file, marking it `sparsity_format = sparse-bitmask`.
pub fn pack_safetensors(bytes: &[u8]) -> Result<Vec<u8>, FormatError> {
    let (tensors, metadata) = read_safetensors(bytes)?;
    let mut metadata = metadata.unwrap_or_default();
    metadata.insert(SPARSITY_FORMAT_KEY.into(), SPARSE_BITMASK.into());
    write_safetensors(&pack(&tensors)?, Some(metadata))
}

/// Unpacks a bitmask-packed safetensors file into a plain dense one (`prunectl unpack`).
pub fn unpack_safetensors(bytes: &[u8]) -> Result<Vec<u8>, FormatError> {
    let (tensors, metadata) = read_safetensors(bytes)?;
    let mut metadata = metadata.unwrap_or_default();
    metadata.remove(SPARSITY_FORMAT_KEY);
    write_safetensors(&unpack(&tensors)?, Some(metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f32_tensor(name: &str, shape: &[usize], values: &[f32]) -> TensorData {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorData::new(name, Dtype::F32, shape.to_vec(), data).unwrap()
    }

    fn by_name<'a>(tensors: &'a [TensorData], name: &str) -> &'a TensorData {
        tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// A 2x10 weight worked by hand:
    /// row 0 = [0, 1, 0, 0, 0, 0, 0, 0, 2, -0.0] -> bits 1 and 8 -> bytes [0b0000_0010, 0b0000_0001]
    /// row 1 = [3, 0, 0, 4, 0, 0, 0, 0, 0, 5]    -> bits 0, 3, 9 -> bytes [0b0000_1001, 0b0000_0010]
    fn hand_weight() -> TensorData {
        #[rustfmt::skip]
        let values = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, -0.0,
                      3.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0];
        f32_tensor("0.weight", &[2, 10], &values)
    }

    #[test]
    fn packs_hand_worked_example_exactly() {
        let bias = f32_tensor("0.bias", &[2], &[0.5, 0.0]);
        let packed = pack(&[hand_weight(), bias.clone()]).unwrap();
        let names: Vec<&str> = packed.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "0.shape",
                "0.compressed",
                "0.bitmask",
                "0.row_offsets",
                "0.bias"
            ]
        );

        let bitmask = by_name(&packed, "0.bitmask");
        assert_eq!(
            (bitmask.dtype, bitmask.shape.clone()),
            (Dtype::U8, vec![2, 2])
        );
        assert_eq!(
            bitmask.data,
            [0b0000_0010, 0b0000_0001, 0b0000_1001, 0b0000_0010]
        );

        let compressed = by_name(&packed, "0.compressed");
        assert_eq!(
            (compressed.dtype, compressed.shape.clone()),
            (Dtype::F32, vec![5])
        );
        assert_eq!(
            compressed,
            &f32_tensor("0.compressed", &[5], &[1.0, 2.0, 3.0, 4.0, 5.0])
        );

        let shape = by_name(&packed, "0.shape");
        assert_eq!(
            (shape.dtype, shape.shape.clone(), shape.data.clone()),
            (Dtype::I64, vec![2], i64_bytes(&[2, 10]))
        );

        let offsets = by_name(&packed, "0.row_offsets");
        assert_eq!(
            (offsets.dtype, offsets.shape.clone(), offsets.data.clone()),
            (Dtype::I64, vec![2], i64_bytes(&[0, 2]))
        );

        assert_eq!(
            by_name(&packed, "0.bias"),
            &bias,
            "rank-1 tensors stay as they are"
        );
    }

    #[test]
    fn writes_hand_worked_file_byte_for_byte() {
        let packed = pack(&[hand_weight()]).unwrap();
        let metadata =
            HashMap::from([(SPARSITY_FORMAT_KEY.to_string(), SPARSE_BITMASK.to_string())]);
        let file = write_safetensors(&packed, Some(metadata)).unwrap();
        let header = concat!(
            r#"{"__metadata__":{"format":"pt","sparsity_format":"sparse-bitmask"},"#,
            r#""0.row_offsets":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"#,
            r#""0.shape":{"dtype":"I64","shape":[2],"data_offsets":[16,32]},"#,
            r#""0.compressed":{"dtype":"F32","shape":[5],"data_offsets":[32,52]},"#,
            r#""0.bitmask":{"dtype":"U8","shape":[2,2],"data_offsets":[52,56]}}"#
        );
        let padded = header.len().next_multiple_of(8);
        let mut expected = (padded as u64).to_le_bytes().to_vec();
        expected.extend(header.as_bytes());
        expected.resize(8 + padded, b' ');
        expected.extend(i64_bytes(&[0, 2]));
        expected.extend(i64_bytes(&[2, 10]));
        expected.extend(
            [1.0f32, 2.0, 3.0, 4.0, 5.0]
                .iter()
                .flat_map(|v| v.to_le_bytes()),
        );
        expected.extend([0b0000_0010, 0b0000_0001, 0b0000_1001, 0b0000_0010]);
        assert_eq!(
            String::from_utf8_lossy(&file[8..8 + padded]),
            String::from_utf8_lossy(&expected[8..8 + padded])
        );
        assert_eq!(file, expected);
    }

    #[test]
    fn unpacks_hand_worked_example() {
        let mut dense = hand_weight();
        let unpacked = unpack(&pack(&[dense.clone()]).unwrap()).unwrap();
        dense.data[9 * 4..10 * 4].copy_from_slice(&0.0f32.to_le_bytes()); // -0.0 comes back as +0.0
        assert_eq!(unpacked, [dense]);
    }

    #[test]
    fn writer_matches_the_safetensors_crate() {
        let tensors = [
            hand_weight(),
            f32_tensor("a.bias", &[3], &[1.0, 2.0, 3.0]),
            TensorData::new("steps", Dtype::I64, vec![1], i64_bytes(&[7])).unwrap(),
            TensorData::new("m", Dtype::U8, vec![3], vec![1, 2, 3]).unwrap(),
        ];
        let ours = write_safetensors(&tensors, None).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                        .unwrap(),
                )
            })
            .collect();
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        assert_eq!(ours, safetensors::serialize(views, Some(metadata)).unwrap());
    }

    #[test]
    fn file_round_trip_keeps_metadata_and_marks_packing() {
        let dense = write_safetensors(
            &[hand_weight()],
            Some(HashMap::from([("note".into(), "x".into())])),
        )
        .unwrap();
        let packed = pack_safetensors(&dense).unwrap();
        let (_, metadata) = read_safetensors(&packed).unwrap();
        let metadata = metadata.unwrap();
        assert_eq!(metadata[SPARSITY_FORMAT_KEY], SPARSE_BITMASK);
        assert_eq!(
            (metadata["format"].as_str(), metadata["note"].as_str()),
            ("pt", "x")
        );
        let unpacked = unpack_safetensors(&packed).unwrap();
        let (tensors, metadata) = read_safetensors(&unpacked).unwrap();
        assert!(!metadata.unwrap().contains_key(SPARSITY_FORMAT_KEY));
        assert_eq!(tensors, unpack(&pack(&[hand_weight()]).unwrap()).unwrap());
    }

    #[test]
    fn leaves_non_weights_alone() {
        let tensors = [
            f32_tensor("weight", &[1, 2], &[1.0, 0.0]), // no module prefix
            f32_tensor("0.weight_orig", &[1, 2], &[1.0, 0.0]), // not `.weight`
            f32_tensor("1.weight", &[2], &[1.0, 0.0]),  // rank 1
            f32_tensor("2.weight", &[0, 4], &[]),       // empty
        ];
        assert_eq!(pack(&tensors).unwrap(), tensors);
    }

    #[test]
    fn packs_other_dtypes_keeping_them() {
        // bf16 -0.0 is 0x8000; f16 1.0 is 0x3c00; f64 uses eight bytes.
        let bf16 = TensorData::new(
            "b.weight",
            Dtype::BF16,
            vec![1, 3],
            vec![0x00, 0x80, 0x80, 0x3f, 0, 0],
        )
        .unwrap();
        let f16 = TensorData::new(
            "h.weight",
            Dtype::F16,
            vec![1, 2],
            vec![0x00, 0x3c, 0x00, 0x00],
        )
        .unwrap();
        let f64s = TensorData::new(
            "d.weight",
            Dtype::F64,
            vec![1, 2],
            [0.0f64, -2.5]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
        .unwrap();
        let packed = pack(&[bf16, f16, f64s]).unwrap();
        assert_eq!(by_name(&packed, "b.compressed").data, [0x80, 0x3f]);
        assert_eq!(by_name(&packed, "b.bitmask").data, [0b010]);
        assert_eq!(
            (
                by_name(&packed, "h.compressed").dtype,
                by_name(&packed, "h.bitmask").data.clone()
            ),
            (Dtype::F16, vec![0b01])
        );
        assert_eq!(
            by_name(&packed, "d.compressed").data,
            (-2.5f64).to_le_bytes()
        );
    }

    #[test]
    fn refuses_names_compressed_tensors_would_misread() {
        let err = pack(&[hand_weight(), f32_tensor("0.shape", &[1], &[1.0])])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`0.shape`") && err.contains("compressed-tensors reads"),
            "{err}"
        );
        let err = pack(&[hand_weight(), hand_weight()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than once"), "{err}");
    }

    #[test]
    fn refuses_unpackable_dtype() {
        let e8m0 =
            TensorData::new("q.weight", Dtype::F8_E8M0, vec![2, 2], vec![1, 2, 3, 4]).unwrap();
        let err = pack(&[e8m0]).unwrap_err().to_string();
        assert!(
            err.contains("`q.weight`") && err.contains("F8_E8M0"),
            "{err}"
        );
    }

    #[test]
    fn rejects_data_of_the_wrong_length() {
        let err = TensorData::new("x", Dtype::F32, vec![2, 2], vec![0; 15])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`x`") && err.contains("15 data bytes") && err.contains("need 16"),
            "{err}"
        );
    }

    /// Packs the hand example, lets `corrupt` damage it, and returns the unpack error.
    fn unpack_error(corrupt: impl FnOnce(&mut Vec<TensorData>)) -> String {
        let mut packed = pack(&[hand_weight()]).unwrap();
        corrupt(&mut packed);
        unpack(&packed).unwrap_err().to_string()
    }

    fn part<'a>(tensors: &'a mut [TensorData], name: &str) -> &'a mut TensorData {
        tensors.iter_mut().find(|t| t.name == name).unwrap()
    }

    #[test]
    fn unpack_rejects_missing_parts() {
        let err =
            unpack_error(|p| p.retain(|t| t.name != "0.bitmask" && t.name != "0.row_offsets"));
        assert!(
            err.contains("packed weight `0`")
                && err.contains("missing `0.bitmask`, `0.row_offsets`"),
            "{err}"
        );
    }

    #[test]
    fn unpack_rejects_bitmask_of_wrong_shape() {
        let err = unpack_error(|p| {
            let b = part(p, "0.bitmask");
            b.shape = vec![4, 1];
        });
        assert!(
            err.contains("`0.bitmask` is U8 [4, 1]") && err.contains("[2, 2]"),
            "{err}"
        );
    }

    #[test]
    fn unpack_rejects_wrong_offsets() {
        let err = unpack_error(|p| part(p, "0.row_offsets").data = i64_bytes(&[0, 3]));
        assert!(
            err.contains("row 1 starts at offset 3") && err.contains("at 2"),
            "{err}"
        );
    }

    #[test]
    fn unpack_rejects_value_count_mismatch() {
        let err = unpack_error(|p| {
            let c = part(p, "0.compressed");
            c.shape = vec![4];
            c.data.truncate(16);
        });
        assert!(
            err.contains("marks 5 non-zeros") && err.contains("holds 4 values"),
            "{err}"
        );
    }

    #[test]
    fn unpack_rejects_padding_bits() {
        let err = unpack_error(|p| part(p, "0.bitmask").data[1] |= 0b1000_0000);
        assert!(err.contains("past the row's end"), "{err}");
    }

    #[test]
    fn unpack_rejects_bad_dense_shape() {
        let err = unpack_error(|p| part(p, "0.shape").data = i64_bytes(&[2, -10]));
        assert!(err.contains("negative dimension -10"), "{err}");
        let err = unpack_error(|p| {
            let s = part(p, "0.shape");
            s.dtype = Dtype::I32;
            s.shape = vec![4];
        });
        assert!(
            err.contains("`0.shape` must be a non-empty 1-D I64 tensor"),
            "{err}"
        );
        let err = unpack_error(|p| part(p, "0.shape").data = i64_bytes(&[i64::MAX, 4]));
        assert!(err.contains("overflows"), "{err}");
    }

    #[test]
    fn unpack_rejects_collision_with_existing_weight() {
        let err = unpack_error(|p| p.push(hand_weight()));
        assert!(
            err.contains("`0.weight`") && err.contains("more than once"),
            "{err}"
        );
    }

    #[test]
    fn read_rejects_garbage_and_truncation() {
        let file = write_safetensors(&[hand_weight()], None).unwrap();
        assert!(read_safetensors(&file[..file.len() - 1]).is_err());
        assert!(read_safetensors(&file[..5]).is_err());
        assert!(read_safetensors(b"").is_err());
        let mut lying = file.clone();
        lying[0] = 0xff; // header length past the end of the file
        assert!(read_safetensors(&lying).is_err());
    }

    /// A random sparse tensor of rank 2..=4 in one of the float dtypes the engine exports.
    fn sparse_tensor() -> impl Strategy<Value = TensorData> {
        let dtypes = prop_oneof![
            Just(Dtype::F32),
            Just(Dtype::F16),
            Just(Dtype::BF16),
            Just(Dtype::F64)
        ];
        (
            prop::collection::vec(1usize..=11, 2..=4),
            dtypes,
            0.0f64..=1.0,
        )
            .prop_flat_map(|(shape, dtype, density)| {
                let n: usize = shape.iter().product();
                let size = dtype.bitsize() / 8;
                let element = prop::collection::vec(any::<u8>(), size);
                let keep = prop::bool::weighted(density);
                prop::collection::vec((keep, element), n).prop_map(move |elements| {
                    let data = elements
                        .into_iter()
                        .flat_map(|(keep, e)| if keep { e } else { vec![0; size] })
                        .collect();
                    TensorData::new("layer.weight", dtype, shape.clone(), data).unwrap()
                })
            })
    }

    /// The tensor as unpacking returns it: every zero (including -0.0) as all-zero bytes.
    fn canonical_zeros(t: &TensorData) -> TensorData {
        let (zero, size) = packable_element(&t.name, t.dtype).unwrap();
        let data = t
            .data
            .chunks_exact(size)
            .flat_map(|e| {
                if zero.is_zero(e) {
                    vec![0; size]
                } else {
                    e.to_vec()
                }
            })
            .collect();
        TensorData { data, ..t.clone() }
    }

    proptest! {
        #[test]
        fn pack_round_trips_through_a_file(weight in sparse_tensor()) {
            let bias = f32_tensor("layer.bias", &[2], &[1.0, -0.0]);
            let file = write_safetensors(&pack(&[weight.clone(), bias.clone()]).unwrap(), None).unwrap();
            let (read, _) = read_safetensors(&file).unwrap();
            let unpacked = unpack(&read).unwrap();
            prop_assert_eq!(by_name(&unpacked, "layer.weight"), &canonical_zeros(&weight));
            prop_assert_eq!(by_name(&unpacked, "layer.bias"), &bias);
        }

        #[test]
        fn packed_sizes_follow_the_layout(weight in sparse_tensor()) {
            let packed = pack(std::slice::from_ref(&weight)).unwrap();
            let (zero, size) = packable_element(&weight.name, weight.dtype).unwrap();
            let nnz = weight.data.chunks_exact(size).filter(|e| !zero.is_zero(e)).count();
            let bitmask = by_name(&packed, "layer.bitmask");
            prop_assert_eq!(bitmask.data.iter().map(|b| b.count_ones() as usize).sum::<usize>(), nnz);
            prop_assert_eq!(by_name(&packed, "layer.compressed").shape.clone(), vec![nnz]);
            let last = *weight.shape.last().unwrap();
            prop_assert_eq!(*bitmask.shape.last().unwrap(), last.div_ceil(8));
            prop_assert_eq!(&by_name(&packed, "layer.row_offsets").shape[..], &weight.shape[..weight.shape.len() - 1]);
        }

        #[test]
        fn writing_is_deterministic(weight in sparse_tensor()) {
            let packed = pack(&[weight]).unwrap();
            let mut reversed = packed.clone();
            reversed.reverse();
            let metadata = || Some(HashMap::from([("b".to_string(), "1".to_string()), ("a".to_string(), "2".to_string())]));
            prop_assert_eq!(write_safetensors(&packed, metadata()).unwrap(), write_safetensors(&reversed, metadata()).unwrap());
        }

        #[test]
        fn reading_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = read_safetensors(&bytes);
            let _ = unpack_safetensors(&bytes);
        }

        #[test]
        fn corrupting_a_packed_file_never_panics(flip in 0usize..10_000, value in any::<u8>()) {
            let file = write_safetensors(&pack(&[hand_weight()]).unwrap(), None).unwrap();
            let mut bad = file.clone();
            let at = flip % bad.len();
            bad[at] = value;
            let _ = unpack_safetensors(&bad);
        }
    }
}
