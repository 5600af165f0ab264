//! The language-model job end to end in the engine, on tiny random Llama (GQA, llama3 RoPE,
//! tied embeddings, f32), Mistral (bf16) and Qwen2 (q/k/v biases, sharded) directories made by
//! tests/python/llama_reference.py:
//! * Wanda's masks are the ones tests/python/wanda_reference.py's transcription of locuslab/wanda's
//!   sequential `prune_wanda` computes, bit for bit; SparseGPT's weights are within 1e-5 (of the
//!   largest weight) of tests/python/sparsegpt_reference.py's `llama_sequential`, masks equal;
//!   unstructured 50% and 2:4;
//! * a job stopped after a layer and resumed from that layer's state writes the same bytes;
//! * the report has both perplexities and one reconstruction error per pruned Linear;
//! * bad input is refused naming the field.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::{inputs, one_job_at_a_time, spec, venv_python, StoppingSink};
use prune_engine::{run_job, EngineError, JobInputs, JobOutcome, ShardFiles, StopFlag, VecSink};
use tch::{Kind, Tensor};

const SEQ_LEN: i64 = 24;
const WINDOWS: i64 = 6;

fn python(script: &str, args: &[&str]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python").join(script);
    let out = Command::new(venv_python())
        .arg(&path)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run the venv's python");
    assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The tiny model directories (made once per test binary) and the calibration tokens.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        python("llama_reference.py", &["tiny", dir.path().to_str().unwrap()]);
        tch::manual_seed(3);
        let ids = Tensor::randint(320, [WINDOWS, SEQ_LEN], (Kind::Int64, tch::Device::Cpu));
        Tensor::write_safetensors(&[("input_ids", &ids)], dir.path().join("tokens.safetensors")).unwrap();
        dir
    })
    .path()
}

/// The engine's inputs for model `name` (its files as the worker would give them).
fn model_inputs(dir: &Path, name: &str) -> JobInputs {
    let model = fixtures().join(name);
    let mut i = inputs(dir);
    let index = model.join("model.safetensors.index.json");
    if index.is_file() {
        let index_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        let shards = index_json["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_string())
            .map(|name| (name.clone(), model.join(name)))
            .collect();
        i.model_shards = Some(ShardFiles { index, shards });
    } else {
        i.model_file = Some(model.join("model.safetensors"));
    }
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        if model.join(file).is_file() {
            i.model_files.insert(file.to_string(), model.join(file));
        }
    }
    i.calibration_file = Some(fixtures().join("tokens.safetensors"));
    i.evaluation_file = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/text/evaluation.txt"));
    i
}

const BLOB: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn job_toml(method: &str, pattern: &str, extra: &str) -> String {
    format!(
        r#"
[model]
blob = "{BLOB}"
files = {{ "config.json" = "{BLOB}", "tokenizer.json" = "{BLOB}" }}
[training]
epochs = 0
[pruning]
method = "{method}"
schedule = {{ kind = "constant_sparsity", target_sparsity = 0.5 }}
{pattern}
[calibration]
tokens = "{BLOB}"
samples = {WINDOWS}
seq_len = {SEQ_LEN}
[evaluation]
text = "{BLOB}"
seq_len = {SEQ_LEN}
max_windows = 4
[export]
compression = "none"
{extra}
"#
    )
}

fn run(toml: &str, inputs: &JobInputs) -> Result<JobOutcome, EngineError> {
    let mut sink = VecSink::default();
    run_job(&spec(toml), inputs, &mut sink, &StopFlag::default())
}

/// Every tensor of the job's safetensors artifacts, by name (f32).
fn artifact_tensors(inputs: &JobInputs, outcome: &JobOutcome) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for a in outcome.artifacts.iter().filter(|a| a.format == "safetensors" && a.key.ends_with(".safetensors")) {
        let path = inputs.artifacts.path(&a.key).unwrap();
        for (name, t) in Tensor::read_safetensors(&path).unwrap() {
            out.insert(name, t.to_kind(Kind::Float));
        }
    }
    out
}

fn reference(script: &str, model: &str, pattern_args: &[&str], out: &Path) -> HashMap<String, Tensor> {
    let dir = fixtures();
    let mut args = vec![
        "model",
        dir.join(model).to_str().unwrap().to_string().leak() as &str,
        dir.join("tokens.safetensors").to_str().unwrap().to_string().leak(),
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(pattern_args);
    python(script, &args);
    Tensor::read_safetensors(out).unwrap().into_iter().collect()
}

fn decoder_linears(tensors: &HashMap<String, Tensor>) -> Vec<String> {
    let mut names: Vec<String> =
        tensors.keys().filter(|n| n.starts_with("model.layers.") && n.ends_with("_proj.weight")).cloned().collect();
    names.sort();
    names
}

/// The report's reconstruction error of every pruned Linear against the reference pass's,
/// computed there directly from the inputs in f64 (ours come from output sums and a Gram
/// matrix, a Hessian or the kept inputs, by site and method).
fn compare_errors(outcome: &JobOutcome, theirs: &HashMap<String, Tensor>, what: &str) {
    let lm = outcome.report.language_model.as_ref().expect("a language-model report");
    assert_eq!(lm.reconstruction.len(), decoder_linears(theirs).len(), "{what}: one error per pruned Linear");
    for ours in &lm.reconstruction {
        let expected = theirs[&format!("reconstruction_error.{}", ours.tensor)].double_value(&[]);
        let error = ours.relative_error;
        assert!((error - expected).abs() <= 1e-4 * expected, "{what}: {} error {error} vs {expected}", ours.tensor);
    }
}

/// Compares our pruned decoder Linears with a reference state dict: masks equal, values within
/// `tolerance` of the largest weight.
fn compare(ours: &HashMap<String, Tensor>, theirs: &HashMap<String, Tensor>, tolerance: f64, what: &str) {
    let names = decoder_linears(theirs);
    assert!(!names.is_empty());
    for name in names {
        let (a, b) = (&ours[&name], &theirs[&name].to_kind(Kind::Float));
        let (ka, kb) = (a.ne(0.0), b.ne(0.0));
        let differ = i64::try_from(ka.ne_tensor(&kb).sum(Kind::Int64)).unwrap();
        assert_eq!(differ, 0, "{what}: {name}: {differ} mask entries differ from the reference");
        let scale = b.abs().max().double_value(&[]);
        let diff = (a - b).abs().max().double_value(&[]) / scale;
        assert!(diff <= tolerance, "{what}: {name}: max |ours - reference| / max |w| = {diff:e}");
        let sparsity = 1.0 - f64::try_from(ka.to_kind(Kind::Float).mean(Kind::Float)).unwrap();
        assert!((0.49..=0.52).contains(&sparsity), "{what}: {name}: sparsity {sparsity}");
    }
}

#[test]
fn wanda_masks_equal_the_reference_sequential_pass() {
    let _one = one_job_at_a_time();
    for (pattern, args) in [("", vec!["--sparsity", "0.5"]), ("m_by_n = [2, 4]", vec!["--nm", "2", "4"])] {
        for model in ["llama", "mistral", "qwen2"] {
            let dir = tempfile::tempdir().unwrap();
            let inputs = model_inputs(dir.path(), model);
            let outcome = run(&job_toml("wanda", pattern, ""), &inputs).unwrap();
            let theirs = reference("wanda_reference.py", model, &args, &dir.path().join("reference.safetensors"));
            // bf16 weights: ours are cast back to bf16 on export, the reference keeps f32.
            let tolerance = if model == "mistral" { 1e-2 } else { 0.0 };
            let what = format!("wanda {model} {pattern}");
            compare(&artifact_tensors(&inputs, &outcome), &theirs, tolerance, &what);
            compare_errors(&outcome, &theirs, &what);
        }
    }
}

/// A selection without q, k and v: o_proj's inputs are then the same in the dense and the
/// pruned layer (its error comes from comparing outputs), the MLP's are not.
#[test]
fn wanda_on_part_of_each_layer_equals_the_reference() {
    let _one = one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let inputs = model_inputs(dir.path(), "llama");
    let outcome = run(&job_toml("wanda", r#"include = ["o_proj", "mlp\\."]"#, ""), &inputs).unwrap();
    let theirs = reference(
        "wanda_reference.py",
        "llama",
        &["--sparsity", "0.5", "--only", r"o_proj|mlp\."],
        &dir.path().join("reference.safetensors"),
    );
    let ours = artifact_tensors(&inputs, &outcome);
    for name in decoder_linears(&theirs).iter().filter(|n| n.contains("_attn.") && !n.contains("o_proj")) {
        assert!(ours[name].equal(&theirs[name].to_kind(Kind::Float)), "{name} was not to be pruned");
    }
    let pruned: HashMap<String, Tensor> = theirs
        .iter()
        .filter(|(n, _)| !n.contains("_attn.") || n.contains("o_proj") || !n.ends_with("_proj.weight"))
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    compare(&ours, &pruned, 0.0, "wanda o_proj + mlp");
    compare_errors(&outcome, &pruned, "wanda o_proj + mlp");
}

#[test]
fn sparsegpt_weights_match_the_reference_sequential_pass() {
    let _one = one_job_at_a_time();
    for (pattern, args) in [("", vec!["--sparsity", "0.5"]), ("m_by_n = [2, 4]", vec!["--nm", "2", "4"])] {
        for model in ["llama", "qwen2"] {
            let dir = tempfile::tempdir().unwrap();
            let inputs = model_inputs(dir.path(), model);
            let outcome = run(&job_toml("sparsegpt", pattern, ""), &inputs).unwrap();
            let theirs = reference("sparsegpt_reference.py", model, &args, &dir.path().join("reference.safetensors"));
            let what = format!("sparsegpt {model} {pattern}");
            compare(&artifact_tensors(&inputs, &outcome), &theirs, 1e-5, &what);
            compare_errors(&outcome, &theirs, &what);
        }
    }
}

#[test]
fn report_has_perplexities_errors_and_the_hugging_face_files() {
    let _one = one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let inputs = model_inputs(dir.path(), "qwen2");
    let outcome = run(&job_toml("sparsegpt", "", ""), &inputs).unwrap();
    let lm = outcome.report.language_model.as_ref().expect("a language-model report");
    assert_eq!((lm.method.as_str(), lm.architecture.as_str(), lm.layers), ("sparsegpt", "Qwen2ForCausalLM", 2));
    assert_eq!((lm.calibration_samples, lm.calibration_seq_len), (WINDOWS as u64, SEQ_LEN as u64));
    let ppl = lm.perplexity.expect("perplexity");
    assert!(ppl.dense.is_finite() && ppl.pruned.is_finite() && ppl.dense > 1.0, "{ppl:?}");
    assert_ne!(ppl.dense, ppl.pruned);
    assert_eq!((ppl.seq_len, ppl.windows), (SEQ_LEN as u64, 4));
    assert_eq!(lm.reconstruction.len(), 2 * 7);
    assert!(
        lm.reconstruction.iter().all(|r| r.relative_error > 0.0 && r.relative_error < 1.0),
        "{:?}",
        lm.reconstruction
    );
    assert!(lm.peak_memory_bytes > 0 && lm.prune_seconds > 0.0);
    let names: Vec<&str> = outcome.artifacts.iter().map(|a| a.key.rsplit('/').next().unwrap()).collect();
    for expected in ["model.safetensors.index.json", "config.json", "tokenizer.json", "reconstruction.png"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    // The config is the model's own, every key kept.
    let config = inputs.artifacts.dir.join("config.json");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "Qwen2ForCausalLM");
    // Embeddings, norms and biases are not pruned by default.
    let tensors = artifact_tensors(&inputs, &outcome);
    assert!(outcome.report.tensors.iter().filter(|t| t.pruned).all(|t| t.name.ends_with("_proj.weight")));
    let embed = &tensors["model.embed_tokens.weight"];
    assert_eq!(i64::try_from(embed.eq(0.0).sum(Kind::Int64)).unwrap(), 0);
}

#[test]
fn a_stopped_job_resumes_at_its_layer_with_the_same_bytes() {
    let _one = one_job_at_a_time();
    let toml = job_toml("sparsegpt", "m_by_n = [2, 4]", "");
    let whole_dir = tempfile::tempdir().unwrap();
    let whole_inputs = model_inputs(whole_dir.path(), "llama");
    let whole = run(&toml, &whole_inputs).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let first = model_inputs(dir.path(), "llama");
    let stop = StopFlag::default();
    let mut sink = StoppingSink { dir: dir.path().to_path_buf(), events: vec![], stop_at: 1, stop: stop.clone() };
    let stopped = run_job(&spec(&toml), &first, &mut sink, &stop);
    assert!(matches!(stopped, Err(EngineError::Stopped { step: 1, .. })), "{stopped:?}");
    let (step, state) = sink.last_checkpoint().expect("a checkpoint after layer 0");
    assert_eq!(step, 1);
    let mut second = model_inputs(dir.path(), "llama");
    second.resume_from = Some(state);
    second.artifacts.dir = dir.path().join("artifacts-2");
    let resumed = run(&toml, &second).unwrap();

    let bytes = |inputs: &JobInputs, outcome: &JobOutcome, name: &str| -> Vec<u8> {
        let a = outcome.artifacts.iter().find(|a| a.key.ends_with(name)).unwrap();
        std::fs::read(inputs.artifacts.path(&a.key).unwrap()).unwrap()
    };
    assert!(bytes(&whole_inputs, &whole, "model.safetensors") == bytes(&second, &resumed, "model.safetensors"));
    let (a, b) = (whole.report.language_model.unwrap(), resumed.report.language_model.unwrap());
    assert_eq!(a.reconstruction, b.reconstruction);
    assert_eq!(a.perplexity.map(|p| (p.dense, p.pruned)), b.perplexity.map(|p| (p.dense, p.pruned)));
}

#[test]
fn bad_input_names_the_field() {
    let _one = one_job_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let inputs = model_inputs(dir.path(), "llama");
    let error = |toml: String, inputs: &JobInputs| run(&toml, inputs).expect_err("refused").to_string();
    // 64 inputs are not groups of 7.
    let e = error(job_toml("wanda", "m_by_n = [3, 7]", ""), &inputs);
    assert!(e.contains("pruning.m_by_n") && e.contains("does not divide"), "{e}");
    // Longer than the model's 256 positions.
    let e = error(
        job_toml("wanda", "", "").replace(&format!("seq_len = {SEQ_LEN}\n[evaluation]"), "seq_len = 300\n[evaluation]"),
        &inputs,
    );
    assert!(e.contains("calibration.seq_len: 300"), "{e}");
    // An architecture the engine does not implement.
    let config_dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(fixtures().join("llama/config.json")).unwrap();
    let gpt2 = config.replace("LlamaForCausalLM", "GPT2LMHeadModel");
    std::fs::write(config_dir.path().join("config.json"), gpt2).unwrap();
    let mut other = model_inputs(dir.path(), "llama");
    other.model_files.insert("config.json".into(), config_dir.path().join("config.json"));
    let e = error(job_toml("wanda", "", ""), &other);
    assert!(e.contains("config.json") && e.contains("GPT2LMHeadModel"), "{e}");
    // Text without a tokenizer.
    let mut no_tokenizer = model_inputs(dir.path(), "llama");
    no_tokenizer.model_files.remove("tokenizer.json");
    let e = error(job_toml("wanda", "", ""), &no_tokenizer);
    assert!(e.contains("evaluation.text") && e.contains("tokenizer.json"), "{e}");
    // Calibration tokens outside the vocabulary.
    let ids = Tensor::full([WINDOWS, SEQ_LEN], 5000, (Kind::Int64, tch::Device::Cpu));
    let tokens = dir.path().join("big.safetensors");
    Tensor::write_safetensors(&[("input_ids", &ids)], &tokens).unwrap();
    let mut big = model_inputs(dir.path(), "llama");
    big.calibration_file = Some(tokens);
    let e = error(job_toml("wanda", "", ""), &big);
    assert!(e.contains("vocabulary"), "{e}");
    // NaN in the activations: layer 1's input norm poisons its q/k/v inputs; the error names
    // the layer and the Linears, for both methods (their statistics are checked once, at the end).
    let mut tensors: Vec<(String, Tensor)> = match (&inputs.model_file, &inputs.model_shards) {
        (Some(file), _) => Tensor::read_safetensors(file).unwrap(),
        (None, Some(sharded)) => sharded.shards.values().flat_map(|f| Tensor::read_safetensors(f).unwrap()).collect(),
        (None, None) => unreachable!("the fixture has weights"),
    };
    for (name, t) in &mut tensors {
        if name == "model.layers.1.input_layernorm.weight" {
            *t = t.full_like(f64::NAN);
        }
    }
    let poisoned_file = dir.path().join("poisoned.safetensors");
    Tensor::write_safetensors(&tensors.iter().map(|(n, t)| (n.as_str(), t)).collect::<Vec<_>>(), &poisoned_file)
        .unwrap();
    let mut poisoned = model_inputs(dir.path(), "llama");
    (poisoned.model_file, poisoned.model_shards) = (Some(poisoned_file), None);
    for method in ["wanda", "sparsegpt"] {
        let e = error(job_toml(method, "", ""), &poisoned);
        assert!(
            e.contains("model.layers.1") && e.contains("self_attn.q_proj") && e.contains("NaN or infinite"),
            "{method}: {e}"
        );
    }
}
