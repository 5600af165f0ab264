//! Every case of `tests/golden/masks.json` (produced by tfmot 0.8.1, converted to PyTorch layout)
//! must give exactly the expected mask.

use prune_core::mask::{block_mask, element_mask, m_by_n_mask, Pooling};
use serde_json::Value;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden/masks.json");

/// One golden case, parsed from JSON.
struct Case {
    name: String,
    shape: Vec<usize>,
    weights: Vec<f32>,
    sparsity: f32,
    block: [usize; 2],
    pooling: Pooling,
    m_by_n: Option<[usize; 2]>,
    mask: Vec<f32>,
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("unsigned integer") as usize).collect()
}

/// Numbers are written as f64 that round-trip exactly to the f32 tfmot used.
fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn pair(v: &Value) -> [usize; 2] {
    let p = usizes(v);
    assert_eq!(p.len(), 2, "expected a pair, got {p:?}");
    [p[0], p[1]]
}

impl Case {
    fn parse(v: &Value) -> Case {
        let pooling = match v["block_pooling"].as_str() {
            Some("avg") => Pooling::Avg,
            Some("max") => Pooling::Max,
            other => panic!("unknown block_pooling {other:?}"),
        };
        Case {
            name: v["name"].as_str().unwrap_or("<unnamed>").to_string(),
            shape: usizes(&v["shape"]),
            weights: f32s(&v["weights"]),
            sparsity: v["sparsity"].as_f64().expect("sparsity") as f32,
            block: pair(&v["block_size"]),
            pooling,
            m_by_n: (!v["m_by_n"].is_null()).then(|| pair(&v["m_by_n"])),
            mask: f32s(&v["mask"]),
        }
    }

    /// The mask this crate computes for the case, dispatched the way the engine does.
    fn compute(&self) -> Vec<f32> {
        if let Some([m, n]) = self.m_by_n {
            return m_by_n_mask(&self.weights, &self.shape, m, n);
        }
        if self.block == [1, 1] {
            return element_mask(&self.weights, self.sparsity);
        }
        assert_eq!(self.shape.len(), 2, "{}: block masks are 2-D only", self.name);
        block_mask(&self.weights, self.shape[0], self.shape[1], self.block, self.pooling, self.sparsity)
    }
}

fn load_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(GOLDEN).unwrap_or_else(|e| panic!("reading {GOLDEN}: {e}"));
    let doc: Value = serde_json::from_str(&text).expect("masks.json is JSON");
    doc["cases"].as_array().expect("a `cases` array").iter().map(Case::parse).collect()
}

#[test]
fn every_golden_mask_matches_tfmot() {
    let cases = load_cases();
    assert!(cases.len() >= 60, "expected the full golden set, found {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        assert_eq!(case.weights.len(), case.shape.iter().product::<usize>(), "{}: weights vs shape", case.name);
        let got = case.compute();
        let wrong = got.iter().zip(&case.mask).filter(|(g, e)| g != e).count();
        if got.len() != case.mask.len() || wrong > 0 {
            failures.push(format!("{} {:?}: {wrong} of {} elements differ", case.name, case.shape, case.mask.len()));
        }
    }
    assert!(failures.is_empty(), "golden mismatches:\n{}", failures.join("\n"));
}

#[test]
fn golden_set_covers_every_mask_kind() {
    let cases = load_cases();
    assert!(cases.iter().any(|c| c.m_by_n.is_none() && c.block == [1, 1]), "element-wise");
    assert!(cases.iter().any(|c| c.block != [1, 1] && c.pooling == Pooling::Avg), "avg blocks");
    assert!(cases.iter().any(|c| c.block != [1, 1] && c.pooling == Pooling::Max), "max blocks");
    assert!(cases.iter().any(|c| c.m_by_n.is_some() && c.shape.len() == 4), "conv m-by-n");
    // A padded trailing group: `in` not a multiple of n.
    assert!(cases.iter().any(|c| matches!(c.m_by_n, Some([_, n]) if c.shape[1] % n != 0)), "padded m-by-n group");
}
