//! Sharded checkpoints end to end (issue 18), with the real `prunectl` and `prune-server`: a
//! Hugging Face style directory (index + three shards of f32, bf16 and f16 tensors) pruned with
//! global scope gives, shard for shard, exactly the tensors the same checkpoint as one file
//! gives; the packed directory downloads with `-o DIR/`, unpacks shard by shard, and
//! compressed-tensors' `ModelCompressor` decompresses it; the whole export also comes as one tar
//! archive. Broken checkpoints are refused before anything is uploaded (prunectl) or fail the
//! job naming the shard (a raw gRPC client), with nothing served.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use prune_core::bitmask::{read_safetensors, TensorData};
use prune_core::tensorfile::write_safetensors;
use prune_proto as pb;
use prune_tests::{
    create_toml, prunectl_at, run_python, sha256_hex, state, upload, wait_terminal, xorshift, PrunectlRun, Server,
};
use safetensors::Dtype;

const CALL_TIMEOUT: Duration = Duration::from_secs(300);
const SHARDS: [&str; 3] =
    ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"];

/// Deterministic values with many ties (256 magnitudes, both signs).
fn draws(seed: u64, n: usize) -> Vec<u16> {
    xorshift(seed).take(n).map(|x| (x >> 48) as u16).collect()
}

/// Signs and 128 mantissas (exact in bf16 and f16, so many ties within a tensor) in the binade
/// `[2^e, 2^(e+1))`: each pruned tensor gets a binade of its own, so that no two tensors tie
/// and the global ranking cannot depend on the order tensors are visited in.
fn parts(seed: u64, n: usize, e: i32) -> Vec<(bool, i32, u32)> {
    draws(seed, n).iter().map(|&d| (d & 0x8000 != 0, e, u32::from(d % 128))).collect()
}

fn f32_tensor(name: &str, shape: Vec<usize>, seed: u64, e: i32) -> TensorData {
    let data = parts(seed, shape.iter().product(), e)
        .into_iter()
        .flat_map(|(neg, e, m)| {
            let v = 2f32.powi(e) * (1.0 + m as f32 / 128.0);
            (if neg { -v } else { v }).to_le_bytes()
        })
        .collect();
    TensorData::new(name, Dtype::F32, shape, data).unwrap()
}

fn bf16_tensor(name: &str, shape: Vec<usize>, seed: u64, e: i32) -> TensorData {
    let data = parts(seed, shape.iter().product(), e)
        .into_iter()
        .map(|(neg, e, m)| u16::from(neg) << 15 | ((e + 127) as u16) << 7 | m as u16)
        .flat_map(u16::to_le_bytes)
        .collect();
    TensorData::new(name, Dtype::BF16, shape, data).unwrap()
}

fn f16_tensor(name: &str, shape: Vec<usize>, seed: u64, e: i32) -> TensorData {
    let data = parts(seed, shape.iter().product(), e)
        .into_iter()
        .map(|(neg, e, m)| u16::from(neg) << 15 | ((e + 15) as u16) << 10 | (m as u16) << 3)
        .flat_map(u16::to_le_bytes)
        .collect();
    TensorData::new(name, Dtype::F16, shape, data).unwrap()
}

/// The checkpoint's tensors, shard by shard.
fn shard_tensors() -> [Vec<TensorData>; 3] {
    let step = TensorData::new("model.step", Dtype::I64, vec![1], 7i64.to_le_bytes().to_vec()).unwrap();
    [
        vec![
            f32_tensor("model.layers.0.mlp.weight", vec![64, 96], 1, -3),
            f32_tensor("model.layers.0.mlp.bias", vec![64], 2, 0),
        ],
        vec![
            bf16_tensor("model.layers.1.mlp.weight", vec![48, 64], 3, -2),
            f16_tensor("model.embed.weight", vec![100, 32], 4, -1),
        ],
        vec![
            f32_tensor("model.layers.2.mlp.weight", vec![32, 80], 5, 0),
            f32_tensor("model.norm.weight", vec![32], 6, 0),
            step,
        ],
    ]
}

/// Writes `dir/` as Hugging Face does (index + shards) and returns the index's bytes.
fn write_checkpoint(dir: &Path, shards: &[Vec<TensorData>]) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    let mut weight_map = BTreeMap::new();
    let mut total = 0;
    for (name, tensors) in SHARDS.iter().zip(shards) {
        std::fs::write(dir.join(name), write_safetensors(tensors, None).unwrap()).unwrap();
        for t in tensors {
            weight_map.insert(t.name.clone(), name.to_string());
            total += t.data.len();
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map }).to_string();
    std::fs::write(dir.join("model.safetensors.index.json"), &index).unwrap();
    index.into_bytes()
}

const PRUNING: &str = "[training]\nepochs = 0\n[pruning]\nscope = \"global\"\nschedule = { kind = \"constant_sparsity\", target_sparsity = 0.7 }\n[export]\ncompression = \"zstd\"\nsparse_format = \"bitmask\"\n";

struct Harness {
    dir: tempfile::TempDir,
    server: Server,
    addr: String,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("var"), &["--workers", "1", "--threads-per-job", "2"]).await;
        let addr = format!("http://{}", server.addr);
        Harness { dir, server, addr }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    async fn prunectl(&self, args: &[&str]) -> PrunectlRun {
        prunectl_at(&self.addr, args, CALL_TIMEOUT).await
    }

    async fn ok(&self, args: &[&str]) -> PrunectlRun {
        let run = self.prunectl(args).await;
        assert!(
            run.ok(),
            "prunectl {args:?} failed:\n{}\n{}\nserver log:\n{}",
            run.stdout,
            run.stderr,
            self.server.log()
        );
        run
    }

    /// Writes a job file with this `[model]` body, submits it and waits: the job id.
    async fn run_job(&self, name: &str, model: &str) -> String {
        let job = self.path(name);
        std::fs::write(&job, format!("[model]\n{model}\n{PRUNING}")).unwrap();
        let run = self.ok(&["submit", &job, "--wait"]).await;
        assert!(run.stdout.contains("SUCCEEDED"), "{}\n{}", run.stdout, run.stderr);
        run.stdout.lines().next().unwrap().trim().to_string()
    }

    /// `prunectl unpack` of `packed` into a dense file: its tensors by name.
    async fn unpack(&self, packed: &Path) -> BTreeMap<String, TensorData> {
        let dense = format!("{}.dense", packed.display());
        self.ok(&["unpack", packed.to_str().unwrap(), "-o", &dense]).await;
        let (tensors, _) = read_safetensors(&std::fs::read(&dense).unwrap()).unwrap();
        tensors.into_iter().map(|t| (t.name.clone(), t)).collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sharded_checkpoint_prunes_like_one_file_and_comes_back_as_a_checkpoint_directory() {
    let h = Harness::start().await;
    let shards = shard_tensors();
    write_checkpoint(&h.dir.path().join("ckpt"), &shards);
    let all: Vec<TensorData> = shards.iter().flatten().cloned().collect();
    std::fs::write(h.dir.path().join("model.safetensors"), write_safetensors(&all, None).unwrap()).unwrap();

    let sharded = h.run_job("sharded.toml", "dir = \"ckpt/\"").await;
    let single = h.run_job("single.toml", "file = \"model.safetensors\"").await;

    // The one-file job's tensors: what every shard's tensors must equal (global scope ranks
    // all tensors of all shards together).
    let single_packed = h.dir.path().join("single.safetensors");
    h.ok(&["download", &single, "-o", single_packed.to_str().unwrap()]).await;
    let want = h.unpack(&single_packed).await;
    assert_eq!(want.len(), all.len());

    // A file name is refused for an export of several files; a directory gets all of them.
    let refused = h.prunectl(&["download", &sharded, "-o", &h.path("one-file.safetensors")]).await;
    assert!(!refused.ok() && refused.stderr.contains("-o"), "{}", refused.stderr);
    let out = h.dir.path().join("out");
    h.ok(&["download", &sharded, "-o", &format!("{}/", out.display())]).await;
    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut expected: Vec<String> = SHARDS.iter().map(|s| s.to_string()).collect();
    expected.extend(["config.json".to_string(), "model.safetensors.index.json".to_string()]);
    expected.sort();
    assert_eq!(names, expected);

    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    let mut got = BTreeMap::new();
    for (shard, tensors) in SHARDS.iter().zip(&shards) {
        let unpacked = h.unpack(&out.join(shard)).await;
        // Each packed shard holds its input shard's tensors, and the index says so.
        let mut names: Vec<&str> = unpacked.keys().map(String::as_str).collect();
        let mut input: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        names.sort();
        input.sort();
        assert_eq!(names, input, "{shard}");
        let (packed, _) = read_safetensors(&std::fs::read(out.join(shard)).unwrap()).unwrap();
        for t in &packed {
            assert_eq!(index["weight_map"][&t.name], *shard, "index entry of {}", t.name);
        }
        got.extend(unpacked);
    }
    // Global scope prunes the smallest binades first: the largest (layer 2's weight) keeps all
    // its values, and packed it would be larger, so it stays dense like the bias and the norm.
    assert_eq!(
        index["weight_map"].as_object().unwrap().len(),
        4 + 3 * 4,
        "4 kept as they are (layer 2's unpruned weight among them), 3 packed in 4 parts"
    );
    assert_eq!(index["weight_map"]["model.layers.2.mlp.weight"], SHARDS[2], "{index}");
    for (name, tensor) in &want {
        let differs = got[name].data.iter().zip(&tensor.data).position(|(a, b)| a != b);
        assert!(
            got[name].data.len() == tensor.data.len() && differs.is_none(),
            "{name}: the sharded job's tensor differs from the one-file job's (first at byte {differs:?})"
        );
        assert_eq!((got[name].dtype, &got[name].shape), (tensor.dtype, &tensor.shape), "{name}");
    }
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["sparsity_config"]["format"], "sparse-bitmask");

    // compressed-tensors, as its users call it, reads the packed directory back to the dense
    // tensors the one-file job produced.
    let dense = h.dir.path().join("single.safetensors.dense");
    let checked = run_python(COMPRESSED_TENSORS_CHECK, &[out.to_str().unwrap(), dense.to_str().unwrap()]).await;
    assert_eq!(checked.trim(), format!("{} tensors equal", want.len()));

    // Over gRPC the whole export also comes as one tar archive, resumable like any download.
    let mut client = h.server.client().await;
    let job = client.get_job(pb::GetJobRequest { id: sharded.clone() }).await.unwrap().into_inner();
    assert_eq!(job.artifacts.len(), 5);
    let archive = download_all(&mut client, &sharded, "", 0).await;
    let mut members = Vec::new();
    for entry in tar::Archive::new(archive.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        members.push((entry.path().unwrap().display().to_string(), sha256_hex(&data)));
    }
    let listed: Vec<(String, String)> = job.artifacts.iter().map(|a| (a.file_name.clone(), a.sha256.clone())).collect();
    assert_eq!(members, listed, "the archive holds the job's files, in order, byte for byte");
    assert_eq!(download_all(&mut client, &sharded, "", 1000).await, archive[1000..], "resumed archive");
    let index_file = download_all(&mut client, &sharded, "model.safetensors.index.json", 0).await;
    assert_eq!(index_file, std::fs::read(out.join("model.safetensors.index.json")).unwrap());
    let missing = client
        .download_artifact(pb::DownloadArtifactRequest {
            job_id: sharded.clone(),
            file_name: "model.bin".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert!(missing.message().contains("no file `model.bin`"), "{}", missing.message());
}

/// compressed-tensors 0.14.0.1's own reader: its `ModelCompressor` from the directory's
/// `config.json`, its sparsity compressor decompressing every shard the index names.
const COMPRESSED_TENSORS_CHECK: &str = r#"
import json, sys, torch
from safetensors.torch import load_file
from compressed_tensors.compressors import ModelCompressor
out, dense = sys.argv[1], sys.argv[2]
config = json.load(open(out + "/config.json"))["quantization_config"]
compressor = ModelCompressor.from_compression_config(config)
got = {name: t for name, t in compressor.sparsity_compressor.decompress(out)}
want = load_file(dense)
assert sorted(got) == sorted(want), (sorted(got), sorted(want))
for name, t in want.items():
    assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
print(f"{len(want)} tensors equal")
"#;

async fn download_all(client: &mut prune_tests::Client, job: &str, file_name: &str, offset: u64) -> Vec<u8> {
    let request = pb::DownloadArtifactRequest {
        job_id: job.into(),
        format: String::new(),
        read_offset: offset,
        file_name: file_name.into(),
    };
    let mut stream = client.download_artifact(request).await.unwrap().into_inner();
    let mut data = Vec::new();
    let mut size = None;
    while let Some(message) = stream.message().await.unwrap() {
        match message.part {
            Some(pb::download_artifact_response::Part::Info(info)) => size = Some(info.size),
            Some(pb::download_artifact_response::Part::Data(chunk)) => data.extend(chunk),
            None => {}
        }
    }
    assert_eq!(Some(offset + data.len() as u64), size, "the stream ends at the announced size");
    data
}

/// Breaks a checkpoint directory in one way.
type Breaks = fn(&Path);

#[tokio::test(flavor = "multi_thread")]
async fn broken_sharded_checkpoints_are_refused_naming_the_shard_and_tensor() {
    let h = Harness::start().await;
    let job = h.path("job.toml");
    std::fs::write(&job, format!("[model]\ndir = \"ckpt/\"\n{PRUNING}")).unwrap();
    let ckpt = h.dir.path().join("ckpt");
    let mut client = h.server.client().await;

    // Each broken directory: prunectl refuses it before uploading anything.
    let cases: [(&str, Breaks); 4] = [
        ("names shard `model-00003-of-00003.safetensors`, which is not there", |d| {
            std::fs::remove_file(d.join(SHARDS[2])).unwrap()
        }),
        ("tensor `model.norm.weight` is in both shard `model-00002-of-00003.safetensors` and shard", |d| {
            let mut shards = shard_tensors();
            let norm = shards[2][1].clone();
            shards[1].push(norm);
            std::fs::write(d.join(SHARDS[1]), write_safetensors(&shards[1], None).unwrap()).unwrap();
        }),
        ("shard `model-00002-of-00003.safetensors`: not a valid safetensors file", |d| {
            std::fs::write(d.join(SHARDS[1]), b"PK\x03\x04 a zip archive").unwrap()
        }),
        ("shard `model-00001-of-00003.safetensors`: not a valid safetensors file", |d| {
            // The header promises more data than the file has.
            let bytes = std::fs::read(d.join(SHARDS[0])).unwrap();
            std::fs::write(d.join(SHARDS[0]), &bytes[..bytes.len() - 8]).unwrap();
        }),
    ];
    for (message, break_it) in cases {
        let index = write_checkpoint(&ckpt, &shard_tensors());
        break_it(&ckpt);
        let run = h.prunectl(&["submit", &job]).await;
        assert!(!run.ok(), "submitted a broken checkpoint: {}", run.stdout);
        assert!(run.stderr.contains(message), "want {message:?} in:\n{}", run.stderr);
        let id = format!("sha256:{}", sha256_hex(&index));
        let has = client.has_blob(pb::HasBlobRequest { id }).await.unwrap().into_inner();
        assert!(!has.exists && has.uploaded == 0, "nothing is uploaded for a broken checkpoint");
    }

    // A raw gRPC client skips those checks: an index naming a shard the request lacks is
    // INVALID_ARGUMENT at submission...
    let index = write_checkpoint(&ckpt, &shard_tensors());
    let mut blobs = BTreeMap::new();
    for shard in SHARDS {
        blobs.insert(shard, upload(&mut client, &std::fs::read(ckpt.join(shard)).unwrap()).await.unwrap());
    }
    let index_id = upload(&mut client, &index).await.unwrap();
    let spec = |blobs: &BTreeMap<&str, String>, shards: &[&str]| {
        let table: Vec<String> = shards.iter().map(|s| format!("\"{s}\" = \"{}\"", blobs[s])).collect();
        format!("[model]\nindex = \"{index_id}\"\nshards = {{ {} }}\n{PRUNING}", table.join(", "))
    };
    let err = create_toml(&mut client, &spec(&blobs, &SHARDS[..2])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("model.shards") && err.message().contains(SHARDS[2]), "{}", err.message());

    // ... and a shard whose header lies FAILS the job naming it, with nothing served.
    let bytes = std::fs::read(ckpt.join(SHARDS[2])).unwrap();
    blobs.insert(SHARDS[2], upload(&mut client, &bytes[..bytes.len() - 8]).await.unwrap());
    let created = create_toml(&mut client, &spec(&blobs, &SHARDS)).await.unwrap();
    let (done, _) = wait_terminal(&mut client, &created.id, CALL_TIMEOUT).await;
    assert_eq!(state(&done), pb::JobState::Failed, "{done:?}");
    assert!(done.error.contains(&format!("shard `{}`", SHARDS[2])), "{}", done.error);
    assert!(done.artifacts.is_empty());
}
