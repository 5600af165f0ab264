//! Language models through the real service: `prunectl submit` of a Hugging Face directory
//! (a tiny random Llama made by tests/python/llama_reference.py) with Wanda, the report's
//! perplexity, `prunectl download JOB -o DIR/` as a directory that transformers loads and
//! generates with; a worker that dies after a layer resumes at the next one and writes the same
//! bytes as an uninterrupted job; an architecture the engine lacks is refused at submit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prune_tests::{path_str, python, run_python, CliHarness, Server};
use tokio::process::Command;

const CALL: Duration = Duration::from_secs(300);

/// The tiny model directories (llama, mistral, qwen2) under `dir`.
async fn tiny_models(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/llama_reference.py");
    let out = Command::new(python())
        .arg(&script)
        .arg("tiny")
        .arg(dir)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .await
        .expect("run llama_reference.py");
    assert!(out.status.success(), "llama_reference.py: {}", String::from_utf8_lossy(&out.stderr));
    dir.to_path_buf()
}

fn repo_file(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path).canonicalize().unwrap().display().to_string()
}

fn job_file(dir: &Path, name: &str, model: &Path, method: &str) -> PathBuf {
    let toml = format!(
        r#"
name = "{name}"
[model]
dir = "{model}"
[training]
epochs = 0
[pruning]
method = "{method}"
schedule = {{ kind = "constant_sparsity", target_sparsity = 0.5 }}
[calibration]
text = "{calibration}"
samples = 8
seq_len = 32
seed = 1
[evaluation]
text = "{evaluation}"
seq_len = 32
max_windows = 6
[export]
formats = ["safetensors"]
compression = "none"
"#,
        model = model.display(),
        calibration = repo_file("data/text/calibration.txt"),
        evaluation = repo_file("data/text/evaluation.txt"),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pruned_language_model_downloads_as_a_directory_transformers_generates_with() {
    let h = CliHarness::start(CALL).await;
    let models = tiny_models(&h.file("models")).await;
    let job = job_file(h.dir.path(), "tiny-wanda", &models.join("llama"), "wanda");
    let id = h.submit(&job).await;
    h.wait_succeeded(&id).await;

    let report = h.ok(&["report", &id, "--json"]).await.json();
    let lm = &report["language_model"];
    assert_eq!(lm["method"], "wanda", "{report}");
    assert_eq!(lm["layers"], 3);
    let (dense, pruned) = (lm["perplexity"]["dense"].as_f64().unwrap(), lm["perplexity"]["pruned"].as_f64().unwrap());
    assert!(dense > 1.0 && pruned > 1.0 && dense != pruned, "{lm}");
    assert_eq!(lm["reconstruction"].as_array().unwrap().len(), 3 * 7);
    let text = h.ok(&["report", &id]).await.stdout;
    assert!(text.to_lowercase().contains("perplexity"), "{text}");

    let out = h.file("pruned");
    h.ok(&["download", &id, "-o", &format!("{}/", out.display())]).await;
    for file in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(out.join(file).is_file(), "{file} missing from the downloaded directory");
    }
    let printed = run_python(
        r#"
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(d)
ids = tok("the licence", return_tensors="pt")["input_ids"]
out = model.generate(ids, max_new_tokens=5, do_sample=False)
assert out.shape[1] == ids.shape[1] + 5, out.shape
w = model.model.layers[1].mlp.down_proj.weight
print((w == 0).float().mean().item(), (model.model.embed_tokens.weight == 0).float().mean().item())
"#,
        &[path_str(&out)],
    )
    .await;
    let values: Vec<f64> = printed.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert!((values[0] - 0.5).abs() < 0.01, "down_proj sparsity {printed}");
    assert_eq!(values[1], 0.0, "embeddings are not pruned");

    // The reconstruction errors as a PNG.
    let png = h.file("reconstruction.png");
    h.ok(&["download", &id, "--format", "reconstruction_plot", "-o", path_str(&png)]).await;
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
}

/// The artifact's sha256 of a finished job, by file name.
async fn artifact_sha(h: &CliHarness, id: &str, name: &str) -> String {
    let info = h.ok(&["status", id, "--json"]).await;
    let job = info.json();
    let artifacts = job["artifacts"].as_array().unwrap_or_else(|| panic!("no artifacts in {job}"));
    let a = artifacts
        .iter()
        .find(|a| a["file_name"].as_str().is_some_and(|f| f.starts_with(name)))
        .unwrap_or_else(|| panic!("no {name} in {job}"));
    a["sha256"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_after_a_layer_resumes_at_the_next_with_the_same_bytes() {
    let whole = CliHarness::start(CALL).await;
    let models = tiny_models(&whole.file("models")).await;
    let job = job_file(whole.dir.path(), "tiny-sparsegpt", &models.join("qwen2"), "sparsegpt");
    let id = whole.submit(&job).await;
    whole.wait_succeeded(&id).await;
    let want = artifact_sha(&whole, &id, "model-00001").await;

    // Every worker of this server aborts right after layer 1's checkpoint, once per attempt
    // that reaches it: the second attempt starts at layer 2 (a new store prefix, the first
    // attempt's layer file fetched from the store).
    let dir = tempfile::tempdir().unwrap();
    let env = [("PRUNE_TEST_CRASH_AFTER_LAYER".to_string(), "1".to_string())];
    let server = Server::start_with_env(&prune_tests::binary("prune-server"), &dir.path().join("var"), &[], &env).await;
    let addr = format!("http://{}", server.addr);
    let run = prune_tests::prunectl_at(&addr, &["submit", path_str(&job), "--wait", "--json"], CALL).await;
    assert!(run.ok(), "{}\n{}\n{}", run.stdout, run.stderr, server.log());
    let resumed_id = run.json_lines().iter().find_map(|l| l["id"].as_str().map(String::from)).unwrap();
    let info = prune_tests::prunectl_at(&addr, &["status", &resumed_id, "--json"], CALL).await.json();
    let attempts = info["attempt_history"].as_array().map_or(0, Vec::len);
    assert!(attempts >= 2, "the job should have been resumed: {info}\n{}", server.log());
    assert!(server.log().contains("aborting after layer 1"), "{}", server.log());
    let artifacts = info["artifacts"].as_array().unwrap();
    let got = artifacts.iter().find(|a| a["file_name"].as_str().unwrap().starts_with("model-00001")).unwrap();
    assert_eq!(got["sha256"].as_str().unwrap(), want, "resumed artifact differs from the uninterrupted one");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_architecture_the_engine_lacks_is_refused_at_submit() {
    let h = CliHarness::start(CALL).await;
    let models = tiny_models(&h.file("models")).await;
    let model = models.join("llama");
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    std::fs::write(model.join("config.json"), config.replace("LlamaForCausalLM", "GPT2LMHeadModel")).unwrap();
    let job = job_file(h.dir.path(), "gpt2", &model, "wanda");
    let run = h.prunectl(&["submit", path_str(&job)]).await;
    assert!(!run.ok());
    assert!(run.stderr.contains("config.json") && run.stderr.contains("GPT2LMHeadModel"), "{}", run.stderr);
}
