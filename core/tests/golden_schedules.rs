//! The schedules against tfmot's own values (`tests/golden/schedules.json`, recorded from
//! tensorflow-model-optimization): `should_prune` must agree at every step and `sparsity` must
//! agree to the bit, since masks at a sparsity one ulp off can keep a different weight count.

use prune_core::Schedule;
use serde::Deserialize;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/golden/schedules.json");

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    kind: String,
    params: serde_json::Map<String, serde_json::Value>,
    /// `[step, should_prune, sparsity]`, the sparsity an f32 printed as the f64 it widens to.
    steps: Vec<(i64, bool, f64)>,
}

impl Case {
    /// The schedule as a job file would spell it: `{"kind": ..., ...params}`.
    fn schedule(&self) -> Schedule {
        let mut table = self.params.clone();
        table.insert("kind".into(), self.kind.clone().into());
        serde_json::from_value(table.into()).unwrap_or_else(|e| panic!("case {} {:?}: {e}", self.kind, self.params))
    }
}

fn golden() -> Golden {
    let text = std::fs::read_to_string(GOLDEN).unwrap_or_else(|e| panic!("reading {GOLDEN}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {GOLDEN}: {e}"))
}

#[test]
fn schedules_match_tfmot_bit_for_bit() {
    let golden = golden();
    assert!(!golden.cases.is_empty(), "no golden cases");
    let mut mismatches = Vec::new();
    for case in &golden.cases {
        let schedule = case.schedule();
        for &(step, should_prune, sparsity) in &case.steps {
            let expected = sparsity as f32;
            let got = schedule.sparsity(step);
            if schedule.should_prune(step) != should_prune || got.to_bits() != expected.to_bits() {
                mismatches.push(format!(
                    "{} {:?} step {step}: should_prune {} (tfmot {should_prune}), sparsity {got:?} (tfmot {expected:?})",
                    case.kind,
                    case.params,
                    schedule.should_prune(step),
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));
}

#[test]
fn golden_covers_both_kinds() {
    let kinds: Vec<String> = golden().cases.iter().map(|c| c.kind.clone()).collect();
    assert!(
        kinds.iter().any(|k| k == "polynomial_decay") && kinds.iter().any(|k| k == "constant_sparsity"),
        "{kinds:?}"
    );
}
