use super::*;

/// SmolLM2-135M's config as transformers 4.57 saves it (trimmed of fields not read).
const SMOLLM2: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 576, "intermediate_size": 1536, "max_position_embeddings": 8192, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
  "rms_norm_eps": 9.999999747378752e-06, "rope_scaling": null, "rope_theta": 100000.0,
  "tie_word_embeddings": true, "vocab_size": 49152, "torch_dtype": "float32"
}"#;

fn with(base: &str, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
    edit(v.as_object_mut().unwrap());
    v.to_string()
}

fn err(json: &str) -> String {
    LlmConfig::from_json(json).unwrap_err().to_string()
}

#[test]
fn smollm2_parses_into_types() {
    let c = LlmConfig::from_json(SMOLLM2).unwrap();
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!((c.hidden_size, c.intermediate_size, c.num_hidden_layers), (576, 1536, 30));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (9, 3, 64));
    assert_eq!((c.vocab_size, c.max_position_embeddings), (49152, 8192));
    assert_eq!(c.rms_norm_eps, 9.999999747378752e-06);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.rope_scaling, RopeScaling::None);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.biases, Biases { qkv: false, o: false, mlp: false });
    assert_eq!(c.max_seq_len(), 8192);
    assert_eq!(c.linear_shape(Linear::K), (192, 576));
    assert_eq!(c.linear_shape(Linear::Down), (576, 1536));
}

#[test]
fn defaults_follow_transformers() {
    let minimal = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}"#;
    let c = LlmConfig::from_json(minimal).unwrap();
    assert_eq!((c.num_key_value_heads, c.head_dim), (4, 16));
    assert_eq!((c.max_position_embeddings, c.rms_norm_eps, c.rope_theta), (2048, 1e-6, 10000.0));
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.sliding_window, None);
}

#[test]
fn llama3_and_linear_rope_scaling() {
    let llama3 = with(SMOLLM2, |m| {
        m.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        );
    });
    assert_eq!(
        LlmConfig::from_json(&llama3).unwrap().rope_scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0
        }
    );
    let linear = with(SMOLLM2, |m| {
        m.insert("rope_scaling".into(), serde_json::json!({"type": "linear", "factor": 2.0}));
    });
    assert_eq!(LlmConfig::from_json(&linear).unwrap().rope_scaling, RopeScaling::Linear { factor: 2.0 });
    let default = with(SMOLLM2, |m| {
        m.insert("rope_scaling".into(), serde_json::json!({"rope_type": "default"}));
    });
    assert_eq!(LlmConfig::from_json(&default).unwrap().rope_scaling, RopeScaling::None);
}

#[test]
fn unsupported_values_name_the_file_and_field() {
    let gpt2 = with(SMOLLM2, |m| {
        m.insert("architectures".into(), serde_json::json!(["GPT2LMHeadModel"]));
    });
    assert_eq!(
        err(&gpt2),
        "config.json: architectures: `GPT2LMHeadModel` is not supported \
         (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"
    );
    let yarn = with(SMOLLM2, |m| {
        m.insert("rope_scaling".into(), serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
    });
    assert_eq!(
        err(&yarn),
        "config.json: rope_scaling: rope_type `yarn` is not supported (supported: default, linear, llama3)"
    );
    let gelu = with(SMOLLM2, |m| {
        m.insert("hidden_act".into(), "gelu".into());
    });
    assert_eq!(err(&gelu), "config.json: hidden_act: `gelu` is not supported (supported: silu)");
    let kv = with(SMOLLM2, |m| {
        m.insert("num_key_value_heads".into(), 4.into());
    });
    assert_eq!(err(&kv), "config.json: num_key_value_heads: 4 does not divide num_attention_heads (9)");
    let missing = with(SMOLLM2, |m| {
        m.remove("hidden_size");
    });
    assert_eq!(err(&missing), "config.json: hidden_size: missing");
    let typed = with(SMOLLM2, |m| {
        m.insert("vocab_size".into(), "many".into());
    });
    assert!(err(&typed).starts_with("config.json: vocab_size: invalid type"), "{}", err(&typed));
    let no_arch = with(SMOLLM2, |m| {
        m.remove("architectures");
    });
    assert!(err(&no_arch).starts_with("config.json: architectures: missing"));
    let llama3 = with(SMOLLM2, |m| {
        m.insert("rope_scaling".into(), serde_json::json!({"rope_type": "llama3", "factor": 8.0}));
    });
    assert_eq!(err(&llama3), "config.json: rope_scaling: low_freq_factor is missing or not a number");
    assert!(err("{").starts_with("config.json: "));
}

#[test]
fn biases_and_windows_per_architecture() {
    let llama = with(SMOLLM2, |m| {
        m.insert("attention_bias".into(), true.into());
        m.insert("mlp_bias".into(), true.into());
    });
    assert_eq!(LlmConfig::from_json(&llama).unwrap().biases, Biases { qkv: true, o: true, mlp: true });

    let mistral = with(SMOLLM2, |m| {
        m.insert("architectures".into(), serde_json::json!(["MistralForCausalLM"]));
        m.insert("sliding_window".into(), 4096.into());
    });
    let c = LlmConfig::from_json(&mistral).unwrap();
    assert_eq!(c.architecture, Architecture::Mistral);
    assert_eq!(c.biases, Biases { qkv: false, o: false, mlp: false });
    assert_eq!((c.sliding_window, c.max_seq_len()), (Some(4096), 4096));

    let qwen = |use_window: bool| {
        with(SMOLLM2, |m| {
            m.insert("architectures".into(), serde_json::json!(["Qwen2ForCausalLM"]));
            m.insert("sliding_window".into(), 1024.into());
            m.insert("use_sliding_window".into(), use_window.into());
        })
    };
    let c = LlmConfig::from_json(&qwen(false)).unwrap();
    assert_eq!(c.biases, Biases { qkv: true, o: false, mlp: false });
    assert_eq!((c.sliding_window, c.max_seq_len()), (None, 8192));
    assert_eq!(LlmConfig::from_json(&qwen(true)).unwrap().max_seq_len(), 1024);
}

#[test]
fn layer_tensor_names() {
    let c = LlmConfig::from_json(SMOLLM2).unwrap();
    assert_eq!(
        c.linear_weight_names(3),
        [
            "model.layers.3.self_attn.q_proj.weight",
            "model.layers.3.self_attn.k_proj.weight",
            "model.layers.3.self_attn.v_proj.weight",
            "model.layers.3.self_attn.o_proj.weight",
            "model.layers.3.mlp.gate_proj.weight",
            "model.layers.3.mlp.up_proj.weight",
            "model.layers.3.mlp.down_proj.weight",
        ]
    );
    assert_eq!(c.all_linear_weight_names().len(), 30 * 7);
    let qwen = with(SMOLLM2, |m| {
        m.insert("architectures".into(), serde_json::json!(["Qwen2ForCausalLM"]));
    });
    let names: Vec<String> = LlmConfig::from_json(&qwen).unwrap().layer_tensors().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 2 + 7 + 3);
    assert!(names.contains(&"self_attn.v_proj.bias".to_string()));
    assert!(!names.contains(&"self_attn.o_proj.bias".to_string()));
}
