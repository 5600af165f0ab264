//! Writes the seed corpora under `fuzz/corpus/<target>/` (run from `fuzz/`:
//! `cargo run --example seed_corpus`): the repo's example job files (as TOML and as their JSON
//! form), small safetensors files written with prune-core's own writer (dense, packed, every
//! packable dtype, metadata, empty and zero-size tensors, a few rows of `data/digits.safetensors`),
//! and those files compressed with each codec.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use prune_core::bitmask::{pack_safetensors, read_safetensors, write_safetensors, TensorData};
use prune_core::compress::{compress, Compression};
use prune_core::validate;
use safetensors::Dtype;

fn out_dir(target: &str) -> PathBuf {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn tensor(name: &str, dtype: Dtype, shape: &[usize], data: Vec<u8>) -> TensorData {
    TensorData::new(name, dtype, shape.to_vec(), data).unwrap()
}

fn main() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    // Job specs.
    let (toml_dir, json_dir) = (out_dir("spec_toml"), out_dir("spec_json"));
    let mut examples: Vec<PathBuf> = fs::read_dir(repo.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    examples.sort();
    for path in &examples {
        let text = fs::read_to_string(path).unwrap();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        fs::write(toml_dir.join(format!("{stem}.toml")), &text).unwrap();
        let spec = validate::parse_toml(&text).unwrap();
        fs::write(json_dir.join(format!("{stem}.json")), serde_json::to_string_pretty(&spec).unwrap()).unwrap();
    }

    // safetensors files.
    let weight = tensor(
        "0.weight",
        Dtype::F32,
        &[2, 10],
        f32s(&[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, -0.0, 3.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0]),
    );
    let bias = tensor("0.bias", Dtype::F32, &[2], f32s(&[0.5, 0.0]));
    let meta = || Some(HashMap::from([("note".to_string(), "seed".to_string())]));
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), write_safetensors(&[], None).unwrap()),
        ("dense".into(), write_safetensors(&[weight.clone(), bias.clone()], meta()).unwrap()),
        (
            "dtypes".into(),
            write_safetensors(
                &[
                    tensor("h.weight", Dtype::F16, &[1, 2], vec![0x00, 0x3c, 0x00, 0x80]),
                    tensor("b.weight", Dtype::BF16, &[1, 3], vec![0x00, 0x80, 0x80, 0x3f, 0, 0]),
                    tensor(
                        "d.weight",
                        Dtype::F64,
                        &[1, 2],
                        [0.0f64, -2.5].iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ),
                    tensor("i.weight", Dtype::I8, &[2, 2], vec![0, 1, 0xff, 0]),
                    tensor("u.weight", Dtype::U8, &[3, 1, 2], vec![0, 1, 2, 0, 0, 9]),
                    tensor("e.weight", Dtype::F8_E4M3, &[1, 4], vec![0x80, 0, 0x38, 0]),
                    tensor("steps", Dtype::I64, &[1], 7i64.to_le_bytes().to_vec()),
                    tensor("flag", Dtype::BOOL, &[2], vec![1, 0]),
                ],
                None,
            )
            .unwrap(),
        ),
        (
            "zero_size".into(),
            write_safetensors(
                &[tensor("2.weight", Dtype::F32, &[0, 4], vec![]), tensor("s", Dtype::F32, &[], f32s(&[1.5]))],
                None,
            )
            .unwrap(),
        ),
    ];
    // A few rows of every tensor of the shipped digits data set.
    let digits = fs::read(repo.join("data/digits.safetensors")).unwrap();
    let (tensors, metadata) = read_safetensors(&digits).unwrap();
    let small: Vec<TensorData> = tensors
        .into_iter()
        .map(|t| {
            let rows = t.shape.first().copied().unwrap_or(1).min(3);
            let row_bytes = if t.shape.is_empty() { t.data.len() } else { t.data.len() / t.shape[0].max(1) };
            let mut shape = t.shape.clone();
            if let Some(first) = shape.first_mut() {
                *first = rows;
            }
            TensorData::new(t.name, t.dtype, shape, t.data[..rows * row_bytes].to_vec()).unwrap()
        })
        .collect();
    files.push(("digits_rows".into(), write_safetensors(&small, metadata).unwrap()));
    let packed: Vec<(String, Vec<u8>)> = files
        .iter()
        .filter_map(|(name, bytes)| Some((format!("{name}_packed"), pack_safetensors(bytes).ok()?)))
        .collect();
    files.extend(packed);

    let st_dir = out_dir("safetensors_read");
    let z_dir = out_dir("decompress");
    for (name, bytes) in &files {
        fs::write(st_dir.join(format!("{name}.safetensors")), bytes).unwrap();
        for c in Compression::ALL {
            fs::write(z_dir.join(format!("{name}.safetensors{}", c.extension())), compress(bytes, c).unwrap()).unwrap();
        }
    }
    println!(
        "wrote {} spec seeds (TOML and JSON each) and {} safetensors seeds (x{} codecs)",
        examples.len(),
        files.len(),
        Compression::ALL.len()
    );
}
