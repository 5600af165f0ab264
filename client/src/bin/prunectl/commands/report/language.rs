//! The part of `prunectl report` a language model adds: method, model, calibration, perplexity
//! before and after, memory and time, and where pruning hurt (each Linear's reconstruction
//! error: the worst ones, and the mean per kind of Linear).

use std::fmt::Write as _;

use prune_client::{LanguageModelReport, LinearError};

use crate::output::{bytes, table};

/// Linears listed one by one: enough to spot the layer that hurts, short enough to read.
const WORST: usize = 10;

/// The decoder's Linears in the order a layer runs them (Llama family names).
const KINDS: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

pub fn language_section(lm: &LanguageModelReport) -> String {
    let mut facts: Vec<(&str, String)> = vec![
        ("method", lm.method.clone()),
        ("architecture", format!("{}, {} decoder layers", lm.architecture, lm.layers)),
    ];
    let calibration = if lm.calibration_samples == 0 {
        "none (magnitude reads no inputs)".to_string()
    } else {
        format!("{} x {} tokens", lm.calibration_samples, lm.calibration_seq_len)
    };
    facts.push(("calibration", calibration));
    if let Some(p) = &lm.perplexity {
        let change = if p.dense > 0.0 { format!(", {:.2}x", p.pruned / p.dense) } else { String::new() };
        facts.push((
            "perplexity",
            format!("{:.2} -> {:.2}{change} ({} windows of {} tokens)", p.dense, p.pruned, p.windows, p.seq_len),
        ));
    }
    facts.push(("peak memory", mib(lm.peak_memory_bytes)));
    facts.push(("prune time", format!("{:.1} s", lm.prune_seconds)));
    facts.extend(lm.warnings.iter().map(|w| ("warning", w.clone())));
    let width = facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::from("language model\n");
    for (key, value) in facts {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    if !lm.reconstruction.is_empty() {
        out.push('\n');
        out.push_str(&reconstruction(&lm.reconstruction));
    }
    out
}

/// `900.0 MiB (943718400 B)`: memory is compared against MiB budgets, so always in MiB.
fn mib(n: u64) -> String {
    let exact = if n < 1 << 20 { format!(" ({})", bytes(n)) } else { String::new() };
    format!("{:.1} MiB{exact}", n as f64 / f64::from(1u32 << 20))
}

/// The worst Linears by relative error, then the mean error of each kind of Linear.
fn reconstruction(errors: &[LinearError]) -> String {
    let mut worst: Vec<&LinearError> = errors.iter().collect();
    // Descending; a NaN (total_cmp's largest) is the worst of all.
    worst.sort_by(|a, b| b.relative_error.total_cmp(&a.relative_error));
    let rows: Vec<Vec<String>> = worst
        .iter()
        .take(WORST)
        .map(|e| vec![e.tensor.clone(), e.layer.to_string(), format!("{:.4}", e.relative_error)])
        .collect();
    let shown = rows.len();
    let mut out = format!(
        "reconstruction error ||WX - ŴX||² / ||WX||² on the calibration inputs: the {shown} worst of {} Linears\n",
        errors.len()
    );
    out.push_str(&table(&["TENSOR", "LAYER", "RELATIVE ERROR"], &rows));
    let rows: Vec<Vec<String>> =
        by_kind(errors).into_iter().map(|(kind, n, mean)| vec![kind, n.to_string(), format!("{mean:.4}")]).collect();
    out.push('\n');
    out.push_str(&table(&["KIND", "LINEARS", "MEAN RELATIVE ERROR"], &rows));
    out
}

/// (kind, count, mean error): q/k/v/o/gate/up/down in that order, then any other kind in the
/// order first seen.
fn by_kind(errors: &[LinearError]) -> Vec<(String, usize, f64)> {
    let mut kinds: Vec<(String, usize, f64)> = Vec::new();
    for e in errors {
        let kind = kind_of(&e.tensor);
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, n, sum)) => {
                *n += 1;
                *sum += e.relative_error;
            }
            None => kinds.push((kind, 1, e.relative_error)),
        }
    }
    let rank = |k: &str| KINDS.iter().position(|known| *known == k).unwrap_or(KINDS.len());
    // A stable sort keeps the unknown kinds in the order first seen.
    kinds.sort_by_key(|(k, _, _)| rank(k));
    kinds.into_iter().map(|(k, n, sum)| (k, n, sum / n as f64)).collect()
}

/// `model.layers.3.self_attn.q_proj.weight` -> `q`; another module's name as it is
/// (`model.layers.3.mlp.fc1.weight` -> `fc1`).
fn kind_of(tensor: &str) -> String {
    let module = tensor.strip_suffix(".weight").unwrap_or(tensor);
    let last = module.rsplit('.').next().unwrap_or(module);
    last.strip_suffix("_proj").unwrap_or(last).to_string()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use prune_client::Perplexity;

    fn error(layer: u64, kind: &str, relative_error: f64) -> LinearError {
        let block = if ["gate", "up", "down"].contains(&kind) { "mlp" } else { "self_attn" };
        LinearError { tensor: format!("model.layers.{layer}.{block}.{kind}_proj.weight"), layer, relative_error }
    }

    /// Two Llama decoder layers pruned by SparseGPT, with perplexity.
    pub(in super::super) fn report() -> LanguageModelReport {
        let mut reconstruction = Vec::new();
        for layer in 0..2u64 {
            for (i, kind) in KINDS.iter().enumerate() {
                reconstruction.push(error(layer, kind, (layer * 7 + i as u64) as f64 / 100.0));
            }
        }
        LanguageModelReport {
            method: "sparsegpt".into(),
            architecture: "LlamaForCausalLM".into(),
            layers: 2,
            calibration_samples: 32,
            calibration_seq_len: 256,
            perplexity: Some(Perplexity { dense: 24.1, pruned: 42.2, seq_len: 256, windows: 17 }),
            reconstruction,
            peak_memory_bytes: 900 << 20,
            prune_seconds: 61.54,
            warnings: vec!["layer 1: mlp.down_proj's Hessian needed more dampening".into()],
        }
    }

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no line starting {start:?} in\n{text}"))
    }

    #[test]
    fn the_section_gives_the_run_and_the_worst_linears() {
        let text = language_section(&report());
        assert!(text.starts_with("language model\n"), "{text}");
        assert_eq!(line(&text, "method"), "method        sparsegpt");
        assert_eq!(line(&text, "architecture"), "architecture  LlamaForCausalLM, 2 decoder layers");
        assert_eq!(line(&text, "calibration"), "calibration   32 x 256 tokens");
        assert_eq!(line(&text, "perplexity"), "perplexity    24.10 -> 42.20, 1.75x (17 windows of 256 tokens)");
        assert_eq!(line(&text, "peak memory"), "peak memory   900.0 MiB");
        assert_eq!(line(&text, "prune time"), "prune time    61.5 s");
        assert_eq!(line(&text, "warning"), "warning       layer 1: mlp.down_proj's Hessian needed more dampening");
        assert!(text.contains("the 10 worst of 14 Linears\n"), "{text}");
        let worst: Vec<Vec<&str>> =
            text.lines().filter(|l| l.starts_with("model.layers.")).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(worst.len(), 10);
        assert_eq!(worst[0], ["model.layers.1.mlp.down_proj.weight", "1", "0.1300"]);
        assert_eq!(worst[9], ["model.layers.0.mlp.gate_proj.weight", "0", "0.0400"]);
        // Mean per kind, in the order a layer runs them: q is (0.00 + 0.07) / 2.
        let kinds: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("KIND"))
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(kinds.len(), 7, "{text}");
        assert_eq!(kinds[0], ["q", "2", "0.0350"]);
        assert_eq!(kinds[6], ["down", "2", "0.0950"]);
    }

    #[test]
    fn magnitude_without_evaluation_says_so_and_lists_no_errors() {
        let lm = LanguageModelReport {
            method: "magnitude".into(),
            calibration_samples: 0,
            calibration_seq_len: 0,
            perplexity: None,
            reconstruction: vec![],
            warnings: vec![],
            peak_memory_bytes: 4096,
            ..report()
        };
        let text = language_section(&lm);
        assert_eq!(line(&text, "calibration"), "calibration   none (magnitude reads no inputs)");
        assert_eq!(line(&text, "peak memory"), "peak memory   0.0 MiB (4.0 KiB)");
        assert!(!text.contains("perplexity") && !text.contains("warning") && !text.contains("KIND"), "{text}");
    }

    #[test]
    fn kinds_are_named_by_module() {
        assert_eq!(kind_of("model.layers.0.mlp.gate_proj.weight"), "gate");
        assert_eq!(kind_of("model.layers.0.mlp.fc1.weight"), "fc1");
        let errors =
            [LinearError { tensor: "lm_head.weight".into(), layer: 0, relative_error: 0.5 }, error(0, "down", 0.25)];
        let kinds: Vec<String> = by_kind(&errors).into_iter().map(|(k, _, _)| k).collect();
        assert_eq!(kinds, ["down", "lm_head"]);
    }
}
