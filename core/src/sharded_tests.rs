use super::*;
use crate::tensorfile::{write_safetensors, TensorData};
use safetensors::Dtype;

fn tensor(name: &str, n: usize) -> TensorData {
    let data = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    TensorData::new(name, Dtype::F32, vec![n], data).unwrap()
}

/// Writes shards (file name -> tensor names) and an index naming `index` (tensor -> shard).
fn write_dir(dir: &Path, shards: &[(&str, &[&str])], index: &[(&str, &str)]) {
    for (file, names) in shards {
        let tensors: Vec<TensorData> = names.iter().map(|n| tensor(n, 4)).collect();
        std::fs::write(dir.join(file), write_safetensors(&tensors, None).unwrap()).unwrap();
    }
    let weight_map: BTreeMap<String, String> = index.iter().map(|(t, s)| (t.to_string(), s.to_string())).collect();
    let json = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(dir.join(INDEX_FILE), json.to_string()).unwrap();
}

const A: &str = "model-00001-of-00002.safetensors";
const B: &str = "model-00002-of-00002.safetensors";

fn good(dir: &Path) {
    write_dir(
        dir,
        &[(A, &["a.weight", "a.bias"]), (B, &["b.weight"])],
        &[("a.weight", A), ("a.bias", A), ("b.weight", B)],
    );
}

fn open_err(dir: &Path) -> String {
    ShardedCheckpoint::open_dir(dir).unwrap_err().to_string()
}

#[test]
fn a_consistent_directory_opens_with_its_tensors_in_shard_order() {
    let dir = tempfile::tempdir().unwrap();
    good(dir.path());
    let checkpoint = ShardedCheckpoint::open_dir(dir.path()).unwrap();
    assert_eq!(checkpoint.shards.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), [A, B]);
    let names: Vec<(&str, &str)> = checkpoint.tensors().map(|(s, t)| (s.name.as_str(), t.name.as_str())).collect();
    // File order within a shard (write_safetensors puts a.bias first).
    assert_eq!(names, [(A, "a.bias"), (A, "a.weight"), (B, "b.weight")]);
}

#[test]
fn an_index_naming_a_missing_shard_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    good(dir.path());
    std::fs::remove_file(dir.path().join(B)).unwrap();
    assert_eq!(open_err(dir.path()), format!("the index names shard `{B}`, which is not there"));
}

#[test]
fn a_shard_the_index_does_not_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    good(dir.path());
    let mut paths: BTreeMap<String, PathBuf> = [A, B].iter().map(|n| (n.to_string(), dir.path().join(n))).collect();
    paths.insert("extra.safetensors".into(), dir.path().join(A));
    let err = ShardedCheckpoint::open(&dir.path().join(INDEX_FILE), &paths).unwrap_err();
    assert_eq!(err, ShardError::UnlistedShard("extra.safetensors".into()));
}

#[test]
fn a_tensor_in_two_shards_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    // Whatever else the index gets wrong, the duplicate is what is reported.
    write_dir(dir.path(), &[(A, &["a.weight"]), (B, &["a.weight", "b.weight"])], &[("a.weight", B), ("b.weight", A)]);
    assert_eq!(open_err(dir.path()), format!("tensor `a.weight` is in both shard `{A}` and shard `{B}`"));
}

#[test]
fn tensors_the_index_misplaces_or_omits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), &[(A, &["a.weight"]), (B, &["b.weight"])], &[("a.weight", B), ("b.weight", A)]);
    assert_eq!(
        open_err(dir.path()),
        format!("tensor `a.weight` is in shard `{A}`, but the index puts it in shard `{B}`")
    );
    write_dir(dir.path(), &[(A, &["a.weight"]), (B, &["b.weight", "c"])], &[("a.weight", A), ("b.weight", B)]);
    assert_eq!(open_err(dir.path()), format!("tensor `c` in shard `{B}` is not in the index"));
    write_dir(dir.path(), &[(A, &["a.weight"]), (B, &["b.weight"])], &[("a.weight", A), ("b.weight", B), ("d", B)]);
    assert_eq!(open_err(dir.path()), format!("tensor `d`: the index puts it in shard `{B}`, which does not hold it"));
}

#[test]
fn a_shard_that_is_not_safetensors_or_lies_about_its_sizes_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    good(dir.path());
    std::fs::write(dir.path().join(B), b"PK\x03\x04 a zip file, not safetensors").unwrap();
    let err = open_err(dir.path());
    assert!(err.starts_with(&format!("shard `{B}`: not a valid safetensors file: ")), "{err}");
    good(dir.path());
    // The header promises more bytes than the file has.
    let bytes = std::fs::read(dir.path().join(A)).unwrap();
    std::fs::write(dir.path().join(A), &bytes[..bytes.len() - 4]).unwrap();
    let err = open_err(dir.path());
    assert!(err.starts_with(&format!("shard `{A}`: not a valid safetensors file: ")), "{err}");
    assert!(!err.contains(&dir.path().display().to_string()), "the shard's name, not its local path: {err}");
}

#[test]
fn malformed_indexes_are_refused() {
    for (text, expected) in [
        ("{", "not a safetensors index"),
        (r#"{"weight_map": {}}"#, "weight_map names no tensor"),
        (r#"{"weight_map": {"a": "../outside.safetensors"}}"#, "is not a plain file name"),
        (r#"{"weight_map": {"a": "model.bin"}}"#, "does not end in `.safetensors`"),
        (r#"{"weight_map": {"a": 3}}"#, "not a safetensors index"),
    ] {
        let err = ShardIndex::parse(text.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with(INDEX_FILE) && err.contains(expected), "{text}: {err}");
    }
}
