//! engine/src/llm against the Python transcriptions of the reference implementations
//! (tests/python/wanda_reference.py, tests/python/sparsegpt_reference.py): the same random
//! Linear and calibration windows go through both, and the statistics, masks and weights must
//! agree (Wanda: bit for bit; SparseGPT: masks identical, weights within 1e-5 of max |W|).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::venv_python;
use prune_engine::llm::{
    relative_reconstruction_error, sparsegpt_prune, wanda_mask, HessianStats, Pattern, WandaStats,
};
use tch::{Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

/// One Linear and its calibration inputs.
struct Case {
    name: &'static str,
    weight: Tensor,
    /// `[windows, L, in]`, fed to both sides one window at a time.
    x: Tensor,
}

impl Case {
    fn random(name: &'static str, seed: i64, rows: i64, columns: i64, windows: i64, tokens: i64) -> Self {
        tch::manual_seed(seed);
        let weight = Tensor::randn([rows, columns], CPU);
        // Correlated inputs with unequal column scales, like a layer's activations.
        let mix = Tensor::randn([columns, columns], CPU) / (columns as f64).sqrt();
        let scales = Tensor::rand([columns], CPU) * 3.0 + 0.1;
        let x = (Tensor::randn([windows, tokens, columns], CPU).matmul(&mix) * scales).contiguous();
        Case { name, weight, x }
    }

    fn columns(&self) -> i64 {
        self.weight.size()[1]
    }
}

fn reference_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python").join(name)
}

/// Runs `script linear IN OUT ARGS` in the venv and reads what it wrote.
fn reference(script: &str, case: &Case, args: &[String]) -> HashMap<String, Tensor> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    Tensor::write_safetensors(&[("weight", &case.weight), ("x", &case.x)], &input).unwrap();
    let out = Command::new(venv_python())
        .arg(reference_script(script))
        .args(["linear".as_ref(), input.as_os_str(), output.as_os_str()])
        .args(args)
        .args(["--threads", "1"])
        .output()
        .expect("run the venv's python");
    assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    Tensor::read_safetensors(&output).unwrap().into_iter().collect()
}

fn pattern_args(pattern: Pattern) -> Vec<String> {
    match pattern {
        Pattern::Unstructured { sparsity } => vec!["--sparsity".into(), sparsity.to_string()],
        Pattern::NOfM { n, m } => vec!["--nm".into(), n.to_string(), m.to_string()],
    }
}

fn scalar(t: &Tensor) -> i64 {
    i64::try_from(t.to_kind(Kind::Int64).sum(Kind::Int64)).unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    f64::try_from(t.abs().max()).unwrap()
}

fn wanda_stats(case: &Case) -> WandaStats {
    let mut stats = WandaStats::new(case.columns());
    for w in 0..case.x.size()[0] {
        stats.add_batch(&case.x.get(w)).unwrap();
    }
    stats
}

fn hessian_stats(case: &Case) -> HessianStats {
    let mut stats = HessianStats::new(case.columns());
    for w in 0..case.x.size()[0] {
        stats.add_batch(&case.x.get(w).unsqueeze(0)).unwrap();
    }
    stats
}

/// Wanda: statistic, mask and pruned weight bit for bit. Returns the reference's topk
/// disagreement count (groups where torch.topk chose another set than the tie rule).
fn check_wanda(case: &Case, pattern: Pattern) -> i64 {
    let label = format!("{} {pattern:?}", case.name);
    let theirs = reference("wanda_reference.py", case, &pattern_args(pattern));
    let stats = wanda_stats(case);
    assert!(stats.scaler_row().equal(&theirs["scaler_row"]), "{label}: Wanda statistic differs");
    let kept = wanda_mask(&case.weight, stats.scaler_row(), pattern).unwrap();
    let their_kept = theirs["kept"].to_kind(Kind::Bool);
    assert!(kept.equal(&their_kept), "{label}: Wanda masks differ in {} places", scalar(&kept.ne_tensor(&their_kept)));
    let pruned = case.weight.masked_fill(&kept.logical_not(), 0.0);
    assert!(pruned.equal(&theirs["weight"]), "{label}: Wanda weights differ");
    let sparsity = 1.0 - scalar(&kept) as f64 / kept.numel() as f64;
    let topk = scalar(&theirs["topk_disagreements"]);
    println!("wanda     {label}: identical; sparsity {sparsity:.4}, topk disagreements {topk}");
    topk
}

/// SparseGPT: Hessian (reported: bit-identical or by how much), masks identical, weights within
/// 1e-5 of the original max |W|. Returns our outcome's warning and the reference's fallback flag.
fn check_sparsegpt(case: &Case, pattern: Pattern, block_size: i64, dampening: f64) -> (Option<String>, bool) {
    let label = format!("{} {pattern:?} block {block_size} damp {dampening}", case.name);
    let mut args = pattern_args(pattern);
    args.extend(["--blocksize".into(), block_size.to_string(), "--percdamp".into(), dampening.to_string()]);
    let theirs = reference("sparsegpt_reference.py", case, &args);
    let stats = hessian_stats(case);
    let h_diff = max_abs(&(stats.hessian() - &theirs["hessian"])) / max_abs(&theirs["hessian"]).max(f64::MIN_POSITIVE);
    assert!(h_diff <= 1e-6, "{label}: Hessians differ by {h_diff:e} of max |H|");
    let outcome = sparsegpt_prune(&case.weight, stats.hessian(), pattern, block_size, dampening).unwrap();
    let their_kept = theirs["kept"].to_kind(Kind::Bool);
    assert!(
        outcome.mask.equal(&their_kept),
        "{label}: SparseGPT masks differ in {} places",
        scalar(&outcome.mask.ne_tensor(&their_kept))
    );
    let w_diff = max_abs(&(&outcome.weight - &theirs["weight"])) / max_abs(&case.weight);
    assert!(w_diff <= 1e-5, "{label}: SparseGPT weights differ by {w_diff:e} of max |W|");
    let pruned_nonzero = scalar(&outcome.weight.masked_select(&outcome.mask.logical_not()).ne(0.0));
    assert_eq!(pruned_nonzero, 0, "{label}: pruned entries must be exactly 0");
    let fallback = scalar(&theirs["fallback"]) == 1;
    let error = relative_reconstruction_error(&case.weight, &outcome.weight, stats.hessian()).unwrap();
    println!(
        "sparsegpt {label}: masks identical, weights within {w_diff:.1e} of max|W|, Hessian {}, \
         reconstruction error {error:.4}, topk disagreements {}",
        if h_diff == 0.0 { "bit-identical".to_string() } else { format!("within {h_diff:.1e}") },
        scalar(&theirs["topk_disagreements"])
    );
    (outcome.warning, fallback)
}

fn cases() -> Vec<Case> {
    vec![
        // Fewer tokens (3 x 8) than inputs: a singular Hessian that only damping makes definite.
        Case::random("16x64 3x8 tokens", 1, 16, 64, 3, 8),
        // 200 inputs: blocks of 128 and 72.
        Case::random("24x200 4x32 tokens", 2, 24, 200, 4, 32),
        Case::random("40x96 2x64 tokens", 3, 40, 96, 2, 64),
    ]
}

const PATTERNS: [Pattern; 3] =
    [Pattern::Unstructured { sparsity: 0.5 }, Pattern::NOfM { n: 2, m: 4 }, Pattern::NOfM { n: 4, m: 8 }];

#[test]
fn wanda_equals_the_reference_bit_for_bit() {
    tch::set_num_threads(1);
    for case in cases() {
        for pattern in PATTERNS {
            // Random scores have no ties, where topk and the tie rule must choose alike.
            assert_eq!(check_wanda(&case, pattern), 0, "{}: torch.topk disagreed without ties", case.name);
        }
    }
}

#[test]
fn wanda_ties_follow_the_documented_rule() {
    tch::set_num_threads(1);
    // Equal inputs for every column and weights on a coarse grid: scores tie everywhere.
    tch::manual_seed(4);
    let weight = (Tensor::randn([12, 32], CPU) * 2.0).round() / 2.0;
    let case = Case { name: "ties 12x32", weight, x: Tensor::ones([2, 8, 32], CPU) };
    let mut disagreements = 0;
    for pattern in PATTERNS.into_iter().chain([Pattern::Unstructured { sparsity: 0.3 }]) {
        disagreements += check_wanda(&case, pattern);
    }
    println!("torch.topk chose another set than the tie rule in {disagreements} groups");
}

#[test]
fn sparsegpt_equals_the_reference() {
    tch::set_num_threads(1);
    for case in cases() {
        for pattern in PATTERNS {
            for block_size in [128, 32] {
                let (warning, fallback) = check_sparsegpt(&case, pattern, block_size, 0.01);
                assert!(warning.is_none() && !fallback, "{}: unexpected Cholesky fallback", case.name);
            }
        }
    }
}

#[test]
fn sparsegpt_cholesky_failure_falls_back_like_llm_compressor() {
    tch::set_num_threads(1);
    // Identical inputs in every column make H rank one; without dampening Cholesky fails.
    tch::manual_seed(5);
    let case = Case { name: "rank-one H", weight: Tensor::randn([8, 32], CPU), x: Tensor::ones([2, 8, 32], CPU) };
    for pattern in [Pattern::Unstructured { sparsity: 0.5 }, Pattern::NOfM { n: 2, m: 4 }] {
        let (warning, fallback) = check_sparsegpt(&case, pattern, 16, 0.0);
        assert!(fallback, "the reference transcription must have fallen back");
        assert!(warning.is_some_and(|w| w.contains("identity Hessian")), "our outcome must carry the warning");
    }
}

#[test]
fn dead_inputs_match_the_reference() {
    tch::set_num_threads(1);
    let mut case = Case::random("dead inputs 16x48", 6, 16, 48, 3, 16);
    let dead = Tensor::from_slice(&[0i64, 7, 30, 47]);
    case.x = case.x.index_fill(2, &dead, 0.0);
    for pattern in PATTERNS {
        check_wanda(&case, pattern);
        let (warning, _) = check_sparsegpt(&case, pattern, 16, 0.01);
        assert!(warning.is_none());
        let stats = hessian_stats(&case);
        let outcome = sparsegpt_prune(&case.weight, stats.hessian(), pattern, 16, 0.01).unwrap();
        assert_eq!(scalar(&outcome.weight.index_select(1, &dead).ne(0.0)), 0, "dead columns must be zero");
    }
}
