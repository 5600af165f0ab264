//! safetensors files one tensor at a time: the header of a file on disk read and checked on its
//! own ([`read_header`]), each tensor's bytes read when needed ([`StreamedFile::read`]), and a
//! file written from tensors whose bytes were spooled elsewhere first ([`header_bytes`]).
//!
//! This is what lets a multi-GB checkpoint be pruned with only a few tensors in memory: reads
//! go through `pread` into owned buffers rather than a memory map, so the pages of tensors
//! already done do not stay resident (and counted in the process's RSS) until the end.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use safetensors::tensor::Metadata as Header;
use safetensors::Dtype;

use crate::tensorfile::{check_unique_keys, tensor_error, FormatError, Metadata, MAX_HEADER_LEN};

/// Where one tensor lies in a file, as its (validated) header says.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute file offset of the first byte.
    pub offset: u64,
    pub len: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An open safetensors file whose header has been checked against the file's length.
#[derive(Debug)]
pub struct StreamedFile {
    pub path: PathBuf,
    file: File,
    /// In file (offset) order: the order PyTorch's `load_file` and the engine list them in.
    pub tensors: Vec<TensorInfo>,
    pub metadata: Option<Metadata>,
}

impl StreamedFile {
    /// Opens `path` and reads only its header.
    pub fn open(path: &Path) -> Result<StreamedFile, FormatError> {
        let io = |e: std::io::Error| tensor_error(&path.display().to_string(), format!("cannot read: {e}"));
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let (tensors, metadata) = read_header(&mut file, len)?;
        Ok(StreamedFile { path: path.to_path_buf(), file, tensors, metadata })
    }

    /// The bytes of one tensor, read from the disk now.
    pub fn read(&self, t: &TensorInfo) -> Result<Vec<u8>, FormatError> {
        let mut data = vec![0u8; t.len];
        self.file
            .read_exact_at(&mut data, t.offset)
            .map_err(|e| tensor_error(&t.name, format!("cannot read its bytes from {}: {e}", self.path.display())))?;
        Ok(data)
    }
}

/// Reads and validates the header of a safetensors stream of `file_len` bytes: offsets
/// contiguous, each tensor's size matching its dtype and shape, the data ending exactly at the
/// end of the file, no name repeated. The reader is left just past the header.
pub fn read_header(reader: &mut impl Read, file_len: u64) -> Result<(Vec<TensorInfo>, Option<Metadata>), FormatError> {
    use safetensors::SafeTensorError as E;
    let mut n = [0u8; 8];
    reader.read_exact(&mut n).map_err(|_| E::HeaderTooSmall)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_LEN as u64 {
        return Err(E::HeaderTooLarge.into());
    }
    if 8 + n > file_len {
        return Err(E::InvalidHeaderLength.into());
    }
    let mut header = vec![0u8; n as usize];
    reader.read_exact(&mut header).map_err(|_| E::InvalidHeaderLength)?;
    std::str::from_utf8(&header).map_err(E::InvalidHeader)?;
    check_unique_keys(&header)?;
    let parsed: Header = serde_json::from_slice(&header).map_err(E::InvalidHeaderDeserialization)?;
    let body = 8 + n;
    if body + parsed.data_len() as u64 != file_len {
        return Err(FormatError::Safetensors(E::MetadataIncompleteBuffer));
    }
    let infos = parsed.tensors();
    let tensors = parsed
        .offset_keys()
        .into_iter()
        .map(|name| {
            let info = infos[&name];
            let (start, end) = info.data_offsets;
            TensorInfo {
                dtype: info.dtype,
                shape: info.shape.clone(),
                offset: body + start as u64,
                len: end - start,
                name,
            }
        })
        .collect();
    Ok((tensors, parsed.metadata().clone()))
}

/// One tensor of a file being written: its bytes follow in the order the entries are given.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub len: u64,
}

/// The first bytes of a safetensors file (length, JSON header padded with spaces to a multiple
/// of 8) whose data is the entries' bytes in the given order. Metadata keys are sorted and
/// `format = pt` is added, as [`crate::tensorfile::write_safetensors`] does.
pub fn header_bytes(entries: &[Entry], metadata: Option<Metadata>) -> Result<Vec<u8>, FormatError> {
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    if let Some(e) = entries.iter().find(|e| !seen.insert(e.name.as_str())) {
        return Err(tensor_error(&e.name, "appears more than once"));
    }
    let mut metadata: BTreeMap<String, String> = metadata.unwrap_or_default().into_iter().collect();
    metadata.entry("format".into()).or_insert_with(|| "pt".into());
    let mut parts = vec![format!("\"__metadata__\":{}", json(&metadata))];
    let mut offset = 0u64;
    for e in entries {
        let end = offset + e.len;
        parts.push(format!(
            "{}:{{\"dtype\":{},\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            json(&e.name),
            json(&e.dtype),
            json(&e.shape)
        ));
        offset = end;
    }
    let mut header = format!("{{{}}}", parts.join(",")).into_bytes();
    if header.len() > MAX_HEADER_LEN {
        return Err(FormatError::Safetensors(safetensors::SafeTensorError::HeaderTooLarge));
    }
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len());
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(header);
    Ok(out)
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("strings and numbers always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensorfile::{read_safetensors, write_safetensors, TensorData};

    fn sample() -> Vec<u8> {
        let a = TensorData::new("a", Dtype::F32, vec![2], [1f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect());
        let b = TensorData::new("b", Dtype::U8, vec![3], vec![1, 2, 3]);
        write_safetensors(&[a.unwrap(), b.unwrap()], None).unwrap()
    }

    #[test]
    fn header_lists_tensors_in_offset_order_with_absolute_offsets() {
        let bytes = sample();
        let (tensors, metadata) = read_header(&mut &bytes[..], bytes.len() as u64).unwrap();
        let (whole, _) = read_safetensors(&bytes).unwrap();
        assert_eq!(tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        for (info, t) in tensors.iter().zip(&whole) {
            let at = info.offset as usize;
            assert_eq!(&bytes[at..at + info.len], &t.data[..]);
        }
        assert_eq!(metadata.unwrap()["format"], "pt");
    }

    #[test]
    fn a_header_that_lies_about_sizes_is_an_error() {
        let bytes = sample();
        // Truncated body, and a body with a byte too many.
        assert!(read_header(&mut &bytes[..], bytes.len() as u64 - 1).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_header(&mut &longer[..], longer.len() as u64).is_err());
        // A shape that does not match the offsets.
        let text = String::from_utf8_lossy(&bytes).replace("\"shape\":[3]", "\"shape\":[4]");
        assert!(read_header(&mut text.as_bytes(), text.len() as u64).is_err());
        assert!(read_header(&mut &b"garbage!"[..], 8).is_err());
    }

    #[test]
    fn written_header_reads_back_with_the_data() {
        let entries = vec![
            Entry { name: "x".into(), dtype: Dtype::I64, shape: vec![1], len: 8 },
            Entry { name: "w".into(), dtype: Dtype::BF16, shape: vec![2, 2], len: 8 },
        ];
        let mut file = header_bytes(&entries, None).unwrap();
        assert_eq!((file.len() - 8) % 8, 0);
        file.extend(7i64.to_le_bytes());
        file.extend([1u8; 8]);
        let (tensors, _) = read_safetensors(&file).unwrap();
        assert_eq!(tensors[0].name, "x");
        assert_eq!(tensors[1].shape, vec![2, 2]);
        let twice = vec![entries[0].clone(), entries[0].clone()];
        assert!(header_bytes(&twice, None).is_err());
    }
}
