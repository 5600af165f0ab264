//! Shared checks for the job-spec targets (included with `#[path]`).

use prune_core::validate::{self, SpecErrors};
use prune_core::JobSpec;

/// What every parsed spec must satisfy: validation and warnings never panic, and a valid spec
/// survives the server's storage round trip (`serde_json::to_string`, then `parse_json`).
pub fn check(parsed: Result<JobSpec, SpecErrors>) {
    let spec = match parsed {
        Ok(spec) => spec,
        Err(SpecErrors(errors)) => {
            assert!(!errors.is_empty(), "a parse error must carry at least one field error");
            for e in &errors {
                assert!(!e.reason.is_empty(), "empty reason for field `{}`", e.field);
                // One line per problem (SpecErrors' Display contract).
                assert!(!e.reason.contains('\n'), "multi-line reason: {:?}", e.reason);
            }
            return;
        }
    };
    match validate::validate(&spec) {
        Err(SpecErrors(errors)) => {
            assert!(!errors.is_empty());
            // The server only asks for warnings on valid specs; with no step count they must
            // still not panic on any spec that parsed.
            let _ = validate::warnings(&spec, None);
        }
        Ok(_) => {
            // As admission does: warnings with and without a (bounded) step count.
            let _ = validate::warnings(&spec, None);
            for total in [0, 1, 7, 1000] {
                let _ = validate::warnings(&spec, Some(total));
            }
            let json = serde_json::to_string(&spec).expect("valid specs serialise");
            let back = validate::parse_json(&json)
                .unwrap_or_else(|e| panic!("a valid spec must read back from its JSON {json}: {e}"));
            // serde_json's default float parser may return a neighbouring f64 (reported; the
            // fix is its `float_roundtrip` feature, see core/tests/fuzz_regressions.rs), so
            // numbers are compared to within a few ULPs and everything else exactly.
            if back != spec {
                let (a, b) = (serde_json::to_value(&back).unwrap(), serde_json::to_value(&spec).unwrap());
                assert!(nearly_equal(&a, &b), "JSON round trip changed the spec: {json}");
            }
            validate::validate(&back).expect("a round-tripped valid spec stays valid");
        }
    }
}

/// Equal JSON values, except that numbers may differ by a few ULPs.
fn nearly_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if x.is_finite() && y.is_finite() && x.signum() == y.signum() => {
                (x.to_bits() as i64 - y.to_bits() as i64).abs() <= 4
            }
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| nearly_equal(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| nearly_equal(v, w)))
        }
        _ => a == b,
    }
}
