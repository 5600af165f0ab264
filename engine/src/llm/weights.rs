//! A Hugging Face checkpoint read one tensor at a time: either one `model.safetensors` or an
//! index with its shards. Only the headers are read when it is opened; [`Checkpoint::load`]
//! reads one tensor's bytes, so a decoder can be walked with one layer in memory.

use std::collections::HashMap;
use std::path::Path;

use prune_core::sharded::{ShardedCheckpoint, INDEX_FILE};
use prune_core::tensorstream::{StreamedFile, TensorInfo};
use safetensors::Dtype;
use tch::{Kind, Tensor};

use crate::EngineError;

/// The single-file name small models are published with.
pub const SINGLE_FILE: &str = "model.safetensors";

#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<StreamedFile>,
    /// Tensor name -> (index into `files`, index into that file's `tensors`).
    by_name: HashMap<String, (usize, usize)>,
}

impl Checkpoint {
    /// Opens a directory holding `model.safetensors.index.json` and its shards, or else
    /// `model.safetensors`.
    pub fn open_dir(dir: &Path) -> Result<Checkpoint, EngineError> {
        if dir.join(INDEX_FILE).is_file() {
            let sharded = ShardedCheckpoint::open_dir(dir).map_err(|e| EngineError::Model(e.to_string()))?;
            return Ok(Checkpoint::from_sharded(sharded));
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Checkpoint::from_file(&single);
        }
        Err(EngineError::Model(format!("{} holds neither {INDEX_FILE} nor {SINGLE_FILE}", dir.display())))
    }

    /// One safetensors file holding the whole model.
    pub fn from_file(path: &Path) -> Result<Checkpoint, EngineError> {
        let file = StreamedFile::open(path).map_err(|e| EngineError::Model(format!("{}: {e}", path.display())))?;
        Ok(Checkpoint::new(vec![file]))
    }

    /// An index and its shards, already checked against each other.
    pub fn from_sharded(sharded: ShardedCheckpoint) -> Checkpoint {
        Checkpoint::new(sharded.shards.into_iter().map(|s| s.file).collect())
    }

    fn new(files: Vec<StreamedFile>) -> Checkpoint {
        let mut by_name = HashMap::new();
        for (f, file) in files.iter().enumerate() {
            for (t, info) in file.tensors.iter().enumerate() {
                by_name.insert(info.name.clone(), (f, t));
            }
        }
        Checkpoint { files, by_name }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Where a tensor lies (dtype, shape), without reading it.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&(f, t)| &self.files[f].tensors[t])
    }

    /// Every tensor name, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// One tensor, read from disk now, as f32 on the CPU (f16 and bf16 convert exactly).
    pub fn load(&self, name: &str) -> Result<Tensor, EngineError> {
        let &(f, t) = self
            .by_name
            .get(name)
            .ok_or_else(|| EngineError::Model(format!("the checkpoint has no tensor `{name}`")))?;
        let file = &self.files[f];
        let info = &file.tensors[t];
        let kind = match info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
            Dtype::F64 => Kind::Double,
            other => {
                return Err(EngineError::Model(format!(
                    "tensor `{name}` is {other:?}; a language model's weights must be F32, BF16, F16 or F64"
                )))
            }
        };
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let tensor = read_into_tensor(file, info, &shape, kind)?;
        Ok(if kind == Kind::Float { tensor } else { tensor.f_to_kind(Kind::Float)? })
    }

    /// [`Checkpoint::load`], checking the shape the config implies.
    pub fn load_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor, EngineError> {
        if let Some(info) = self.info(name) {
            if info.shape != shape {
                return Err(EngineError::Model(format!(
                    "tensor `{name}` has shape {:?}; config.json implies {shape:?}",
                    info.shape
                )));
            }
        }
        self.load(name)
    }
}

/// The tensor's bytes read from the file straight into a new tensor's memory: reading them into
/// a buffer first and copying that doubled the peak of the largest tensor (the 49152 x 576
/// embedding of SmolLM2: 113 MB, read for the embedding and again for the head).
fn read_into_tensor(file: &StreamedFile, info: &TensorInfo, shape: &[i64], kind: Kind) -> Result<Tensor, EngineError> {
    use std::os::unix::fs::FileExt;
    let tensor = Tensor::f_empty(shape, (kind, tch::Device::Cpu))?;
    let len = tensor.numel() * kind.elt_size_in_bytes();
    if len != info.len {
        return Err(EngineError::Model(format!("tensor `{}`: {} bytes for shape {shape:?}", info.name, info.len)));
    }
    if len > 0 {
        // SAFETY: a new, contiguous CPU tensor owns `len` bytes at its data pointer, and nothing
        // else refers to them until this function returns it.
        let bytes = unsafe { std::slice::from_raw_parts_mut(tensor.data_ptr() as *mut u8, len) };
        std::fs::File::open(&file.path).and_then(|f| f.read_exact_at(bytes, info.offset)).map_err(|e| {
            EngineError::Model(format!("tensor `{}`: cannot read it from {}: {e}", info.name, file.path.display()))
        })?;
    }
    Ok(tensor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) {
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn loads_bf16_and_f32_as_f32_and_names_missing_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let bf: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
        let f: Vec<u8> = [0.25f32, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        write(
            &dir.path().join(SINGLE_FILE),
            vec![("a", Dtype::BF16, vec![2], bf), ("b", Dtype::F32, vec![1, 3], f), ("c", Dtype::I64, vec![0], vec![])],
        );
        let ckpt = Checkpoint::open_dir(dir.path()).unwrap();
        let a = ckpt.load("a").unwrap();
        assert_eq!(a.kind(), Kind::Float);
        assert_eq!(Vec::<f32>::try_from(&a).unwrap(), [1.5, -2.0]);
        let b = ckpt.load_shaped("b", &[1, 3]).unwrap();
        assert_eq!(b.size(), [1, 3]);
        assert_eq!(Vec::<f32>::try_from(b.flatten(0, -1)).unwrap(), [0.25, 3.0, 4.0]);
        assert_eq!(ckpt.load("nope").unwrap_err().to_string(), "model: the checkpoint has no tensor `nope`");
        assert!(ckpt.load("c").unwrap_err().to_string().contains("tensor `c` is I64"));
        assert!(ckpt.load_shaped("b", &[3]).unwrap_err().to_string().contains("config.json implies [3]"));
        let empty = tempfile::tempdir().unwrap();
        assert!(Checkpoint::open_dir(empty.path()).unwrap_err().to_string().contains("holds neither"));
    }

    #[test]
    fn reads_an_index_and_its_shards() {
        let dir = tempfile::tempdir().unwrap();
        let one = |v: f32| v.to_le_bytes().to_vec();
        write(&dir.path().join("model-00001-of-00002.safetensors"), vec![("x", Dtype::F32, vec![1], one(1.0))]);
        write(&dir.path().join("model-00002-of-00002.safetensors"), vec![("y", Dtype::F32, vec![1], one(2.0))]);
        std::fs::write(
            dir.path().join(INDEX_FILE),
            r#"{"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let ckpt = Checkpoint::open_dir(dir.path()).unwrap();
        assert_eq!(ckpt.load("y").unwrap().double_value(&[0]), 2.0);
        assert_eq!(ckpt.load("x").unwrap().double_value(&[0]), 1.0);
    }
}
