//! safetensors files as raw named tensors: reading (strictly, as untrusted bytes) and writing
//! (deterministically), with the [`TensorData`] and [`FormatError`] types that the bitmask
//! packing (`bitmask`) and the engine build on.
//!
//! Every inconsistency is a [`FormatError`] naming the tensor, never a panic, and no allocation
//! is larger than a small multiple of the input.

use std::collections::{BTreeMap, HashMap, HashSet};

use safetensors::{Dtype, SafeTensors};

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

pub(crate) fn tensor_error(name: &str, reason: impl Into<String>) -> FormatError {
    FormatError::Tensor { name: name.to_string(), reason: reason.into() }
}

impl TensorData {
    /// A tensor whose byte length is checked against its dtype and shape.
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Result<Self, FormatError> {
        let tensor = TensorData { name: name.into(), dtype, shape, data };
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
                format!("{} elements of {} do not fill whole bytes", bits / self.dtype.bitsize(), self.dtype),
            ));
        }
        Ok(bits / 8)
    }

    pub(crate) fn check_len(&self) -> Result<(), FormatError> {
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

pub(crate) fn numel(shape: &[usize]) -> Option<usize> {
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
            let data = body
                .get(start..end)
                .ok_or_else(|| tensor_error(&name, format!("data offsets [{start}, {end}) lie outside the file")))?;
            Ok(TensorData { name, dtype: info.dtype, shape: info.shape.clone(), data: data.to_vec() })
        })
        .collect::<Result<Vec<_>, FormatError>>()?;
    Ok((tensors, metadata.metadata().clone()))
}

/// Fails on the first key a JSON object header repeats (tensor names, `__metadata__`).
pub(crate) fn check_unique_keys(header: &[u8]) -> Result<(), FormatError> {
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
        .map_err(|e| FormatError::Safetensors(safetensors::SafeTensorError::InvalidHeaderDeserialization(e)))?;
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
pub fn write_safetensors(tensors: &[TensorData], metadata: Option<Metadata>) -> Result<Vec<u8>, FormatError> {
    check_unique_names(tensors)?;
    for t in tensors {
        t.check_len()?;
    }
    let mut metadata: BTreeMap<String, String> = metadata.unwrap_or_default().into_iter().collect();
    metadata.entry("format".into()).or_insert_with(|| "pt".into());

    let mut ordered: Vec<&TensorData> = tensors.iter().collect();
    ordered.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));

    let mut header = header_json(&ordered, &metadata);
    if header.len() > MAX_HEADER_LEN {
        return Err(FormatError::Safetensors(safetensors::SafeTensorError::HeaderTooLarge));
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

pub(crate) fn check_unique_names(tensors: &[TensorData]) -> Result<(), FormatError> {
    let mut seen = HashSet::with_capacity(tensors.len());
    match tensors.iter().find(|t| !seen.insert(t.name.as_str())) {
        Some(t) => Err(tensor_error(&t.name, "appears more than once")),
        None => Ok(()),
    }
}
