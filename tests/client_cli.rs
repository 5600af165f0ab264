//! End to end: the real `prunectl` against a real `prune-server` on a free port with a
//! temporary data directory, driven exactly as a user or a script would drive them.
//!
//! Both binaries must be built first (`cargo build -p prune-server -p prune-client`, which the
//! Makefile does); they are looked up next to this test executable. The TorchScript test also
//! needs `PRUNE_VENV` (set by `eval "$(scripts/libtorch-env.sh)"`) for PyTorch.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use prune_core::bitmask::{read_safetensors, TensorData};
use prune_tests::{binary, path_str, python, run_python, sha256_hex, CliHarness, PrunectlRun};
use serde_json::Value;
use tokio::process::Command;

/// Longest any one `prunectl` call may take (a `--wait` on the slowest example included).
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Where no server listens: for the commands that must work (or fail) without one.
const NO_SERVER: &str = "http://127.0.0.1:1";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

type Run = PrunectlRun;

/// Runs `prunectl ARGS` against `addr`; killed after [`CALL_TIMEOUT`].
async fn prunectl_at(addr: &str, args: &[&str]) -> Run {
    prune_tests::prunectl_at(addr, args, CALL_TIMEOUT).await
}

/// The CLI harness, with this file's call timeout.
async fn harness() -> CliHarness {
    CliHarness::start(CALL_TIMEOUT).await
}

fn path(p: &Path) -> &str {
    path_str(p)
}

/// Tensors of a safetensors file, by name (file order is an implementation detail).
fn tensors(file: &Path) -> Vec<TensorData> {
    let bytes = std::fs::read(file).unwrap();
    let (mut tensors, _) = read_safetensors(&bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    tensors
}

/// The two files hold the same f32 tensors, value for value. Pruned zeros compare equal
/// whatever their sign: a dense export keeps `-0.0` from `w * mask` where `w < 0`, unpacking
/// writes `+0.0`, and PyTorch treats both alike.
fn assert_same_weights(got: &Path, want: &Path) {
    let (got_tensors, want_tensors) = (tensors(got), tensors(want));
    let names = |t: &[TensorData]| t.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got_tensors), names(&want_tensors), "{} vs {}", got.display(), want.display());
    for (g, w) in got_tensors.iter().zip(&want_tensors) {
        assert_eq!((g.dtype, &g.shape), (w.dtype, &w.shape), "{}", g.name);
        let floats = |t: &TensorData| {
            t.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect::<Vec<_>>()
        };
        let (gv, wv) = (floats(g), floats(w));
        if let Some(i) = (0..gv.len()).find(|&i| gv[i] != wv[i]) {
            panic!("{}[{i}]: {} in {} but {} in {}", g.name, gv[i], got.display(), wv[i], want.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// `submit --wait` of the quickest example, then the JSON shapes of status, list and metrics,
/// cancel, and a TensorBoard export of the metrics.
#[tokio::test(flavor = "multi_thread")]
async fn quick_job_status_list_metrics_tensorboard() {
    let h = harness().await;
    let run = h.ok(&["submit", path(&example("constant_quick.toml")), "--wait"]).await;
    // The id comes first; the watch's plain progress lines follow (stdout is a pipe here).
    let id = run.stdout.lines().next().unwrap().trim().to_string();
    assert!(id.starts_with("job-"), "{}", run.stdout);
    assert!(run.stdout.contains("SUCCEEDED"), "{}", run.stdout);
    // Every line after the id starts with it, and no state line repeats.
    let lines: Vec<&str> = run.stdout.lines().skip(1).collect();
    assert!(lines.iter().all(|l| l.starts_with(&format!("{id} "))), "{}", run.stdout);
    for state in ["RUNNING", "SUCCEEDED"] {
        let said = lines.iter().filter(|l| l.starts_with(&format!("{id} {state}"))).count();
        assert_eq!(said, 1, "one {state} line:\n{}", run.stdout);
    }

    let status = h.ok(&["status", &id, "--json"]).await.json();
    assert_eq!(status["id"], id.as_str());
    assert_eq!(status["state"], "SUCCEEDED");
    assert_eq!(status["total_steps"], 102, "2 epochs of 51 batches: {status}");
    assert_eq!(status["step"], status["total_steps"]);
    assert!(status["error"].is_null(), "{status}");
    assert!(status["warnings"].as_array().is_some_and(|w| w.is_empty()), "{status}");
    let text = h.ok(&["status", &id]).await.stdout;
    assert!(text.contains("SUCCEEDED") && text.contains("102/102"), "{text}");

    // A second job: newest first in the list, and something to cancel.
    let second = h.submit(&example("constant_quick.toml")).await;
    let list = h.ok(&["list", "--json"]).await.json();
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str(), id.as_str()]);
    let text = h.ok(&["list"]).await.stdout;
    assert!(text.starts_with("ID ") && text.lines().next().unwrap().ends_with("LABELS"), "{text}");
    let cancelled = h.ok(&["cancel", &second, "--json"]).await.json();
    assert_eq!(cancelled["id"], second.as_str());
    // Cancelling may race with the job finishing; either way watch's exit status must agree.
    let watch = h.prunectl(&["watch", &second, "--json"]).await;
    let last = watch.json_lines().pop().expect("watch printed the job");
    let state = last["state"].as_str().unwrap();
    assert!(state == "CANCELLED" || state == "SUCCEEDED", "{last}");
    assert_eq!(watch.status.code(), Some(if state == "SUCCEEDED" { 0 } else { 3 }), "{watch:?}");

    let metrics = h.ok(&["metrics", &id, "--json"]).await.json();
    let records = metrics.as_array().unwrap();
    for r in records {
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["step", "name", "value"]), "{r}");
    }
    let names: BTreeSet<&str> = records.iter().map(|r| r["name"].as_str().unwrap()).collect();
    for name in ["sparsity/0.weight", "sparsity/2.weight", "loss", "accuracy", "learning_rate"] {
        assert!(names.contains(name), "no {name} in {names:?}");
    }
    let last_sparsity = records.iter().rfind(|r| r["name"] == "sparsity/0.weight").unwrap();
    assert!((last_sparsity["value"].as_f64().unwrap() - 0.5).abs() < 1e-6, "{last_sparsity}");
    assert!(h.ok(&["metrics", &id]).await.stdout.starts_with("NAME"));

    let tb = h.file("tb");
    h.ok(&["tensorboard", &id, "--logdir", path(&tb)]).await;
    // One run directory per job, named by the job; a second export replaces the first.
    let runs: Vec<PathBuf> = std::fs::read_dir(&tb).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run_dir = runs[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(run_dir.ends_with(&format!("-{id}")), "{run_dir}");
    h.ok(&["tensorboard", &id, "--logdir", path(&tb)]).await;
    let logdir = tb.join(&run_dir);
    let files: Vec<PathBuf> = std::fs::read_dir(&logdir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."));
    let events = prune_client::tensorboard::read_event_file(&files[0]).expect("records parse and CRCs match");
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    let values: Vec<_> = events.iter().filter_map(|e| e.summary.as_ref()).flat_map(|s| &s.value).collect();
    assert_eq!(values.len(), records.len());
    assert!(values.iter().any(|v| v.tag == "sparsity/0.weight" && v.simple_value == Some(0.5)));
}

/// Labels, filters, logs, delete and server info through `prunectl`.
#[tokio::test(flavor = "multi_thread")]
async fn labels_filters_logs_delete_and_info() {
    let h = harness().await;
    let job_file = example("constant_quick.toml");
    let job = path(&job_file);
    let labelled =
        h.ok(&["submit", job, "--label", "team=vision", "--label", "run=a1", "--priority", "5", "--json"]).await;
    let labelled = labelled.json()["id"].as_str().unwrap().to_string();
    let other =
        h.ok(&["submit", job, "--label", "team=audio", "--json"]).await.json()["id"].as_str().unwrap().to_string();
    let run = h.ok(&["watch", &labelled]).await;
    assert!(run.status.success());
    h.ok(&["watch", &other]).await;

    let ids = |run: Run| -> Vec<String> {
        run.json().as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(h.ok(&["list", "--label", "team=vision", "--json"]).await), std::slice::from_ref(&labelled));
    assert_eq!(
        ids(h.ok(&["list", "--label", "team=vision", "--state", "RUNNING", "--json"]).await),
        Vec::<String>::new()
    );
    let both = ids(h.ok(&["list", "--filter", "state = SUCCEEDED", "--json"]).await);
    assert_eq!(both, [other.clone(), labelled.clone()]);
    let status = h.ok(&["status", &labelled, "--json"]).await.json();
    assert_eq!(status["labels"]["team"], "vision");
    assert_eq!(status["priority"], 5);
    assert_eq!(status["attempt_history"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["attempt_history"][0]["outcome"], "succeeded", "{status}");
    let bad = h.prunectl(&["list", "--filter", "colour = red"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stderr.contains("unknown field `colour`") && bad.stderr.contains("[FILTER_INVALID]"), "{}", bad.stderr);

    let logs = h.ok(&["logs", &labelled, "--json"]).await;
    let mut epochs = 0;
    for line in logs.json_lines() {
        assert_eq!(line["attempt"], 1, "{line}");
        let text = line["text"].as_str().unwrap();
        // One line per epoch, with its figures.
        if text.contains("epoch ") && text.contains("(step ") {
            assert!(text.contains("loss ") && text.contains("mean sparsity") && text.ends_with(" s"), "{text}");
            epochs += 1;
        }
    }
    assert_eq!(epochs, 2, "{}", logs.stdout);

    let info = h.ok(&["info", "--json"]).await.json();
    assert_eq!(info["api_version"], "pruning.v1");
    assert!(info["data_dir_bytes"].as_u64().unwrap() > 0, "{info}");
    assert_eq!(info["workers"], 2);
    let text = h.ok(&["info"]).await.stdout;
    assert!(text.contains("exports: safetensors, torchscript; compressions: none, gzip, zstd"), "{text}");

    let deleted = h.ok(&["delete", &other, "--json"]).await.json();
    assert_eq!(deleted["deleted"], true);
    let gone = h.prunectl(&["status", &other]).await;
    assert_eq!(gone.status.code(), Some(1));
    assert!(gone.stderr.contains("not found") && gone.stderr.contains("[JOB_NOT_FOUND]"), "{}", gone.stderr);
    assert!(!h.server.data_dir.join("artifacts").join(&other).exists(), "the deleted job's artifacts are gone");
    // A running job cannot be deleted.
    let long =
        std::fs::read_to_string(example("constant_quick.toml")).unwrap().replace("epochs = 2 ", "epochs = 2000 ");
    std::fs::write(h.file("long.toml"), long).unwrap();
    let running = h.submit(&h.file("long.toml")).await;
    let refused = h.prunectl(&["delete", &running]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        refused.stderr.contains("cancel it first") && refused.stderr.contains("[JOB_ACTIVE]"),
        "{}",
        refused.stderr
    );
    h.ok(&["cancel", &running]).await;
}

/// Every example job file (but the TorchScript one, which needs a model file: see below) runs
/// to SUCCEEDED.
#[tokio::test(flavor = "multi_thread")]
async fn every_example_succeeds() {
    let h = harness().await;
    let mut files: Vec<PathBuf> = std::fs::read_dir(example(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && !p.ends_with("torchscript.toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 9, "{files:?}");
    let mut ids = Vec::new();
    for file in &files {
        ids.push(h.submit(file).await);
    }
    for (file, id) in files.iter().zip(&ids) {
        eprintln!("waiting for {} ({id})", file.display());
        h.wait_succeeded(id).await;
    }
}

/// examples/torchscript.toml with a TorchScript MLP made by PyTorch: the pruned TorchScript
/// download loads back in PyTorch, with its first weight at the schedule's final sparsity.
#[tokio::test(flavor = "multi_thread")]
async fn torchscript_example_round_trips_through_pytorch() {
    let h = harness().await;
    // The job file names `model.pt` relative to itself: copy it next to a fresh model.
    let job = h.file("torchscript.toml");
    std::fs::copy(example("torchscript.toml"), &job).unwrap();
    run_python(
        "import sys, torch\n\
         torch.manual_seed(0)\n\
         m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))\n\
         torch.jit.script(m).save(sys.argv[1])",
        &[path(&h.file("model.pt"))],
    )
    .await;

    let run = h.ok(&["submit", path(&job), "--wait", "--json"]).await;
    let id = run.json_lines()[0]["id"].as_str().unwrap().to_string();
    let pruned = h.file("pruned.pt");
    h.ok(&["download", &id, "--format", "torchscript", "-o", path(&pruned)]).await;

    let out = run_python(
        "import sys, torch\n\
         m = torch.jit.load(sys.argv[1])\n\
         w = m.state_dict()['0.weight']\n\
         assert m(torch.zeros(2, 64)).shape == (2, 10)\n\
         print((w == 0).float().mean().item())",
        &[path(&pruned)],
    )
    .await;
    let sparsity: f64 = out.trim().parse().unwrap();
    assert!((sparsity - 0.8).abs() < 0.01, "0.weight sparsity {sparsity}");
}

/// tests/python/sequential_module.py, the PyTorch module of a `model.sequential`.
fn sequential_module() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/sequential_module.py")
}

/// `sequential_module.py check JOB ARTIFACT`: the artifact loaded with `load_state_dict(strict=True)`
/// into the module of the job's layers (a slim artifact's own), its validation accuracy and shapes.
async fn check_in_pytorch(job: &Path, artifact: &Path) -> Value {
    let out = Command::new(python())
        .arg(sequential_module())
        .args(["check", path(job), path(artifact)])
        .output()
        .await
        .expect("run python");
    assert!(out.status.success(), "PyTorch could not load the artifact:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// examples/resnet_digits.toml (conv, batchnorm, residual blocks, global pooling) through the
/// real server: the report carries inference timings at batch 1 and the training batch size
/// and lists the BatchNorm buffers unpruned, and the artifact loads into the documented PyTorch
/// module with `load_state_dict(strict=True)`, where it scores what the report says.
#[tokio::test(flavor = "multi_thread")]
async fn resnet_example_reports_inference_and_loads_in_pytorch() {
    let h = harness().await;
    let job = example("resnet_digits.toml");
    let run = h.ok(&["submit", path(&job), "--wait", "--json"]).await;
    let id = run.json_lines()[0]["id"].as_str().unwrap().to_string();

    let report = h.ok(&["report", &id, "--json"]).await.json();
    let inference = report["inference"].as_array().unwrap_or_else(|| panic!("no inference: {report}"));
    let sizes: Vec<i64> = inference.iter().map(|t| t["batch_size"].as_i64().unwrap()).collect();
    assert_eq!(sizes, [1, 32], "{report}");
    for t in inference {
        for field in ["dense_ms", "pruned_ms", "speedup"] {
            assert!(t[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {t}");
        }
        assert!(t["runs"].as_u64().is_some_and(|r| r >= 3), "{t}");
    }
    assert!(report.get("inference_note").is_none(), "{report}");
    let tensor = |name: &str| {
        report["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert_eq!(tensor("4.layers.0.weight")["pruned"], true);
    assert_eq!(tensor("6.projection.weight")["pruned"], true);
    assert_eq!(tensor("2.weight")["pruned"], false);
    assert_eq!(tensor("6.layers.4.running_var")["pruned"], false);
    let text = h.ok(&["report", &id]).await.stdout;
    assert!(text.contains("inference, batch 1") && text.contains("inference, batch 32"), "{text}");

    let artifact = h.file("resnet.safetensors");
    h.ok(&["download", &id, "-o", path(&artifact)]).await;
    let checked = check_in_pytorch(&job, &artifact).await;
    let (torch_accuracy, reported) =
        (checked["val_accuracy"].as_f64().unwrap(), report["final_val_accuracy"].as_f64().unwrap());
    // Same weights, same data: at most one of the 180 validation samples may flip on a
    // floating-point near-tie between the two libraries.
    assert!((torch_accuracy - reported).abs() <= 1.0 / 180.0 + 1e-9, "PyTorch {torch_accuracy}, report {reported}");
    assert!(reported > 0.9, "the example trains: {reported}");
    let zeros = checked["zeros"]["4.layers.0.weight"].as_f64().unwrap();
    assert!((zeros - 0.6).abs() < 0.01, "4.layers.0.weight sparsity in PyTorch: {zeros}");
}

/// examples/resnet_digits_channels.toml: the ResNet pruned to 50% of its channels with a slim
/// export, through the real server. The report lists each layer's shapes before and after (the
/// residual sums' convs cut alike, the classifier keeping its 10 outputs) and fewer parameters
/// and FLOPs; the downloaded artifact holds the smaller tensors and loads with
/// `load_state_dict(strict=True)` into the PyTorch module of the layers its metadata names,
/// where it scores what the report says.
#[tokio::test(flavor = "multi_thread")]
async fn channel_pruned_resnet_exports_a_slim_model_pytorch_loads() {
    let h = harness().await;
    let job = example("resnet_digits_channels.toml");
    let run = h.ok(&["submit", path(&job), "--wait", "--json"]).await;
    let id = run.json_lines()[0]["id"].as_str().unwrap().to_string();

    let report = h.ok(&["report", &id, "--json"]).await.json();
    let channels = &report["channels"];
    assert_eq!(channels["slim"], true, "{report}");
    let layer = |name: &str| {
        channels["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["layer"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name}: {report}"))
    };
    let shape =
        |l: &Value, key: &str| -> Vec<i64> { l[key].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect() };
    // 16 channels of the stem and the first block's sum, 16 inside the block, 32 in the second.
    assert_eq!(shape(&layer("1"), "shape_after"), [8, 1, 3, 3]);
    assert_eq!(shape(&layer("4.layers.0"), "shape_after"), [8, 8, 3, 3]);
    assert_eq!(
        layer("1")["removed"],
        layer("4.layers.3")["removed"],
        "a residual sum's two sides lose the same channels"
    );
    assert_eq!(layer("6.layers.3")["removed"], layer("6.projection")["removed"]);
    assert_eq!(shape(&layer("6.projection"), "shape_after"), [16, 8, 1, 1]);
    assert_eq!(shape(&layer("9"), "shape_after"), [10, 16], "the classifier keeps its classes");
    let number = |key: &str| channels[key].as_u64().unwrap_or_else(|| panic!("{key}: {report}"));
    assert!(number("params_after") * 3 < number("params_before"), "{report}");
    assert!(number("flops_after") * 3 < number("flops_before"), "{report}");
    let text = h.ok(&["report", &id]).await.stdout;
    assert!(text.contains("SHAPE AFTER") && text.contains("FLOPs per sample"), "{text}");

    let artifact = h.file("resnet_slim.safetensors");
    h.ok(&["download", &id, "-o", path(&artifact)]).await;
    let checked = check_in_pytorch(&job, &artifact).await;
    assert_eq!(checked["shapes"]["4.layers.0.weight"], serde_json::json!([8, 8, 3, 3]));
    let (torch_accuracy, reported) =
        (checked["val_accuracy"].as_f64().unwrap(), report["final_val_accuracy"].as_f64().unwrap());
    assert!((torch_accuracy - reported).abs() <= 1.0 / 180.0 + 1e-9, "PyTorch {torch_accuracy}, report {reported}");
    assert!(reported > 0.9, "the example trains: {reported}");

    // The traced slim model: torch.jit.load runs it, any batch size, with the same logits.
    let traced = h.file("resnet_slim.pt");
    h.ok(&["download", &id, "--format", "torchscript", "-o", path(&traced)]).await;
    let out = run_python(
        "import sys, json, torch\n\
         sys.path.insert(0, sys.argv[3])\n\
         import sequential_module as sm\n\
         from safetensors import safe_open\n\
         from safetensors.torch import load_file\n\
         with safe_open(sys.argv[2], 'pt') as f: layers = json.loads(f.metadata()['prune.slim_sequential'])\n\
         model = sm.build(layers); model.load_state_dict(load_file(sys.argv[2]), strict=True); model.eval()\n\
         traced = torch.jit.load(sys.argv[1])\n\
         x = torch.rand(37, 64) * 16\n\
         with torch.no_grad(): print(float((traced(x) - model(x)).abs().max()))",
        &[path(&traced), path(&artifact), path(&sequential_module().with_file_name(""))],
    )
    .await;
    let diff: f64 = out.trim().parse().unwrap();
    assert!(diff <= 1e-4, "traced slim model differs from the safetensors one by {diff}");
}

/// A download cut off halfway resumes to the same bytes (sha256-verified), raw or
/// decompressed; `unpack` of the bitmask download equals the dense download of the same
/// training run.
#[tokio::test(flavor = "multi_thread")]
async fn download_resumes_and_unpack_matches_dense() {
    let h = harness().await;
    let packed_job = h.submit(&example("digits_demo.toml")).await;
    // The same job with a dense export: same seed, same training, same weights.
    let dense_file = h.file("digits_dense.toml");
    let text = std::fs::read_to_string(example("digits_demo.toml")).unwrap();
    assert!(text.contains("sparse_format = \"bitmask\""));
    std::fs::write(&dense_file, text.replace("sparse_format = \"bitmask\"", "sparse_format = \"dense\"")).unwrap();
    let dense_job = h.submit(&dense_file).await;
    h.wait_succeeded(&packed_job).await;
    h.wait_succeeded(&dense_job).await;

    // Whole raw download: the served (zstd) bytes, matching the announced sha256.
    let full = h.file("packed.safetensors.zst");
    let done = h.ok(&["download", &packed_job, "-o", path(&full), "--raw", "--json"]).await.json();
    let served = std::fs::read(&full).unwrap();
    assert_eq!(done["artifact"]["sha256"], sha256_hex(&served).as_str());
    assert_eq!(done["artifact"]["compression"], "zstd");
    assert_eq!(done["artifact"]["sparse_format"], "bitmask");
    assert_eq!(done["resumed_from"], 0);
    assert!(!h.file("packed.safetensors.zst.part").exists());

    // Cut off halfway: resume from the .part file, raw and decompressed.
    let half = served.len() / 2;
    let resumed_raw = h.file("resumed.safetensors.zst");
    std::fs::write(h.file("resumed.safetensors.zst.part"), &served[..half]).unwrap();
    let done = h.ok(&["download", &packed_job, "-o", path(&resumed_raw), "--raw", "--json"]).await.json();
    assert_eq!(done["resumed_from"], half as u64);
    assert_eq!(sha256_hex(&std::fs::read(&resumed_raw).unwrap()), sha256_hex(&served));

    let packed = h.file("packed.safetensors");
    std::fs::write(h.file("packed.safetensors.part"), &served[..half]).unwrap();
    let done = h.ok(&["download", &packed_job, "-o", path(&packed), "--json"]).await.json();
    assert_eq!(done["resumed_from"], half as u64);
    assert_eq!(std::fs::read(&packed).unwrap(), prune_core::compress::decompress(&served).unwrap());
    assert!(!h.file("packed.safetensors.part").exists());

    // A stale .part (not a prefix of the artifact) fails verification and is replaced.
    let stale = h.file("stale.safetensors");
    std::fs::write(h.file("stale.safetensors.part"), vec![0u8; half]).unwrap();
    h.ok(&["download", &packed_job, "-o", path(&stale)]).await;
    assert_eq!(std::fs::read(&stale).unwrap(), std::fs::read(&packed).unwrap());

    // unpack (offline) of the decompressed and of the compressed download equals the dense one.
    let dense = h.file("dense.safetensors");
    h.ok(&["download", &dense_job, "-o", path(&dense)]).await;
    assert!(tensors(&packed).iter().any(|t| t.name.ends_with(".bitmask")));
    for input in [&packed, &full] {
        let unpacked = h.file("unpacked.safetensors");
        let run = prunectl_at(NO_SERVER, &["unpack", path(input), "-o", path(&unpacked)]).await;
        assert!(run.status.success(), "unpack needs no server: {run:?}");
        assert_same_weights(&unpacked, &dense);
    }
}

/// `watch` outlives a server restart: it reconnects (saying so), and the stream, which starts
/// with the job's current state, carries on to the job's real end.
#[tokio::test(flavor = "multi_thread")]
async fn watch_reconnects_across_a_server_restart() {
    let h = harness().await;
    // digits_demo for long enough to be caught running (the server resumes it after the restart).
    let long = h.file("long.toml");
    let text = std::fs::read_to_string(example("digits_demo.toml")).unwrap();
    std::fs::write(&long, text.replace("epochs = 12 ", "epochs = 100 ")).unwrap();
    let id = h.submit(&long).await;
    let watch = Command::new(binary("prunectl"))
        .args(["watch", &id, "--json"])
        .env("PRUNE_ADDR", &h.addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    loop {
        let status = h.ok(&["status", &id, "--json"]).await.json();
        assert_ne!(status["state"], "SUCCEEDED", "finished too soon to test a restart");
        if status["step"].as_i64() > Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let CliHarness { server, addr, dir, .. } = h;
    let listen = server.addr.clone();
    assert_eq!(server.terminate(Duration::from_secs(60)).await, Some(0));
    // The same port again (the harness always picks a fresh one), the same data directory.
    let _restarted = Command::new(binary("prune-server"))
        .args(["--listen", &listen, "--workers", "2", "--data-dir"])
        .arg(dir.path().join("var"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let out = tokio::time::timeout(CALL_TIMEOUT, watch.wait_with_output()).await.expect("watch finished").unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "watch failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().any(|e| e["event"] == "reconnecting"), "{stdout}");
    assert_eq!(events.last().unwrap()["state"], "SUCCEEDED", "{stdout}");
    let status = prunectl_at(&addr, &["status", &id, "--json"]).await.json();
    assert_eq!(status["state"], "SUCCEEDED");
}

/// `upload` prints the content's id, sends a multi-chunk file whole, and skips a file the server
/// already has.
#[tokio::test(flavor = "multi_thread")]
async fn upload_is_content_addressed() {
    let h = harness().await;
    let file = h.file("weights.bin");
    let data: Vec<u8> = (0..(5 << 19) + 7).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let id = format!("sha256:{}", sha256_hex(&data));
    assert_eq!(h.ok(&["upload", path(&file)]).await.stdout.trim(), id);
    let again = h.ok(&["upload", path(&file), "--json"]).await.json();
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["size"], data.len() as u64);
    assert_eq!(again["uploaded"], false, "the second upload must be skipped");
}

/// A job file with a bad field is rejected before anything is sent, naming file and field.
#[tokio::test(flavor = "multi_thread")]
async fn bad_job_file_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example("whole_model.toml")).unwrap();
    std::fs::write(&bad, text.replace("end_step = 402", "end_step = 2")).unwrap();
    // No server at all: validation comes first.
    let run = prunectl_at(NO_SERVER, &["submit", path(&bad)]).await;
    assert!(!run.status.success());
    let expected = format!("{}: pruning.schedule.end_step: ", bad.display());
    assert!(run.stderr.contains(&expected), "stderr: {}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    std::fs::write(&bad, text.replace("batch_size = 32", "bacth_size = 32")).unwrap();
    let run = prunectl_at(NO_SERVER, &["submit", path(&bad)]).await;
    assert!(!run.status.success());
    assert!(run.stderr.contains("training.bacth_size"), "stderr: {}", run.stderr);
}

/// Unknown jobs and unreachable servers: non-zero exit and a one-line reason.
#[tokio::test(flavor = "multi_thread")]
async fn errors_are_one_line_reasons() {
    let h = harness().await;
    let never = h.file("never-written");
    for args in [
        &["status", "job-00000000deadbeef"][..],
        &["watch", "job-00000000deadbeef"],
        &["cancel", "job-00000000deadbeef"],
        &["metrics", "job-00000000deadbeef", "--json"],
        &["download", "job-00000000deadbeef", "-o", path(&never)],
    ] {
        let run = h.prunectl(args).await;
        assert_eq!(run.status.code(), Some(1), "{args:?}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("job job-00000000deadbeef not found"), "{args:?}: {}", run.stderr);
    }
    assert!(!never.exists());

    let run = prunectl_at(NO_SERVER, &["list"]).await;
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("cannot connect to http://127.0.0.1:1"), "{}", run.stderr);
}
