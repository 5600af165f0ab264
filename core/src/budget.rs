//! How a budget (`pruning.budget`) turns a sensitivity analysis into per-tensor sparsities:
//! greedy by cost per weight removed. Pure arithmetic, so it is tested without a model.
//!
//! Each tensor has a curve: the cost (accuracy lost, or loss gained under mse) of pruning it
//! alone to each level, one-shot. Raising a tensor one level removes `numel x (next - current)`
//! weights at the cost difference; [`greedy_order`] lists every such step, cheapest per weight
//! first, each tensor's levels in order. A plan is a walk along that order ([`plan`]): to meet
//! `max_bytes` every step is taken until the estimated size fits; an accuracy budget then takes
//! further steps while the summed costs stay within it, passing over (and freezing) a tensor
//! whose next step would exceed it.

/// One tensor's measured costs, levels ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub numel: u64,
    /// `(sparsity, cost)`; the cost is made non-decreasing and >= 0 before use (a level that
    /// happened to score better than a lower one costs what the lower one does).
    pub points: Vec<(f64, f64)>,
}

/// Raise tensor `tensor` to its level `level` (an index into its curve's points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub tensor: usize,
    pub level: usize,
}

/// A curve's costs, non-decreasing and clamped at 0.
fn monotone(points: &[(f64, f64)]) -> Vec<f64> {
    let mut highest = 0.0f64;
    points
        .iter()
        .map(|&(_, c)| {
            highest = highest.max(if c.is_nan() { f64::INFINITY } else { c });
            highest
        })
        .collect()
}

/// Every step of every curve, cheapest per weight removed first; each tensor's steps in level
/// order (a tensor's next step is a candidate only once its previous one is listed). Ties go to
/// the tensor listed first.
pub fn greedy_order(curves: &[Curve]) -> Vec<Step> {
    let costs: Vec<Vec<f64>> = curves.iter().map(|c| monotone(&c.points)).collect();
    let mut next = vec![0usize; curves.len()];
    let mut order = Vec::new();
    loop {
        let candidate = |t: usize| -> Option<(f64, usize)> {
            let curve = &curves[t];
            let level = next[t];
            let &(sparsity, _) = curve.points.get(level)?;
            let (from_sparsity, from_cost) = match level {
                0 => (0.0, 0.0),
                _ => (curve.points[level - 1].0, costs[t][level - 1]),
            };
            let removed = (sparsity - from_sparsity).max(1e-12) * curve.numel.max(1) as f64;
            Some(((costs[t][level] - from_cost) / removed, t))
        };
        let best = (0..curves.len()).filter_map(candidate).min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let Some((_, t)) = best else { return order };
        order.push(Step { tensor: t, level: next[t] });
        next[t] += 1;
    }
}

/// The bounds a plan keeps to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub max_bytes: Option<u64>,
    /// The most summed cost (accuracy drop) allowed.
    pub max_cost: Option<f64>,
}

/// Per-tensor sparsities (0 where untouched) from walking `order` (see the module docs);
/// `bytes` estimates the artifact size of a set of sparsities.
pub fn plan(curves: &[Curve], order: &[Step], bounds: Bounds, bytes: impl Fn(&[f64]) -> u64) -> Vec<f64> {
    let costs: Vec<Vec<f64>> = curves.iter().map(|c| monotone(&c.points)).collect();
    let mut sparsity = vec![0.0; curves.len()];
    let mut level: Vec<Option<usize>> = vec![None; curves.len()];
    let mut frozen = vec![false; curves.len()];
    let mut spent = 0.0;
    let fits = |s: &[f64]| bounds.max_bytes.is_none_or(|max| bytes(s) <= max);
    for &Step { tensor: t, level: l } in order {
        let size_met = fits(&sparsity);
        if size_met && bounds.max_cost.is_none() {
            break;
        }
        if frozen[t] || level[t].is_some_and(|have| have >= l) {
            continue;
        }
        let step_cost = costs[t][l] - level[t].map_or(0.0, |have| costs[t][have]);
        if size_met {
            let max_cost = bounds.max_cost.unwrap_or(f64::INFINITY);
            if spent + step_cost > max_cost {
                frozen[t] = true;
                continue;
            }
        }
        spent += step_cost;
        level[t] = Some(l);
        sparsity[t] = curves[t].points[l].0;
    }
    sparsity
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(numel: u64, points: &[(f64, f64)]) -> Curve {
        Curve { numel, points: points.to_vec() }
    }

    #[test]
    fn cheapest_per_weight_first_and_levels_in_order() {
        // Tensor 0 is robust, tensor 1 breaks early; tensor 1 is also small.
        let curves = [curve(1000, &[(0.5, 0.0), (0.9, 0.01)]), curve(100, &[(0.5, 0.05), (0.9, 0.5)])];
        let order = greedy_order(&curves);
        assert_eq!(
            order,
            [
                Step { tensor: 0, level: 0 },
                Step { tensor: 0, level: 1 },
                Step { tensor: 1, level: 0 },
                Step { tensor: 1, level: 1 }
            ]
        );
    }

    #[test]
    fn a_better_score_at_a_higher_level_costs_what_the_lower_one_did() {
        assert_eq!(monotone(&[(0.5, 0.02), (0.7, -0.01), (0.9, 0.05)]), [0.02, 0.02, 0.05]);
        assert_eq!(monotone(&[(0.5, -0.1)]), [0.0]);
    }

    #[test]
    fn a_size_budget_takes_steps_until_the_estimate_fits() {
        let curves = [curve(1000, &[(0.5, 0.0), (0.9, 0.01)]), curve(1000, &[(0.5, 0.02), (0.9, 0.3)])];
        let order = greedy_order(&curves);
        // Bytes: 4 per kept weight.
        let bytes = |s: &[f64]| s.iter().map(|&s| ((1.0 - s) * 1000.0 * 4.0) as u64).sum::<u64>();
        let bounds = |max_bytes| Bounds { max_bytes: Some(max_bytes), max_cost: None };
        assert_eq!(plan(&curves, &order, bounds(8000), bytes), [0.0, 0.0]);
        assert_eq!(plan(&curves, &order, bounds(6000), bytes), [0.5, 0.0]);
        assert_eq!(plan(&curves, &order, bounds(4400), bytes), [0.9, 0.0]);
        assert_eq!(plan(&curves, &order, bounds(2400), bytes), [0.9, 0.5]);
        // Unreachable: everything at its top level.
        assert_eq!(plan(&curves, &order, bounds(10), bytes), [0.9, 0.9]);
    }

    #[test]
    fn an_accuracy_budget_skips_a_step_too_costly_and_freezes_that_tensor() {
        let curves = [
            curve(1000, &[(0.5, 0.0), (0.9, 0.03)]),
            curve(1000, &[(0.5, 0.004), (0.9, 0.006)]),
            curve(500, &[(0.5, 0.001), (0.9, 0.002)]),
        ];
        let order = greedy_order(&curves);
        let none = |_: &[f64]| 0;
        let planned = plan(&curves, &order, Bounds { max_bytes: None, max_cost: Some(0.01) }, none);
        // Tensor 0's 0.9 costs 0.03 alone: frozen at 0.5; the others fit (0.006 + 0.002).
        assert_eq!(planned, [0.5, 0.9, 0.9]);
        let tight = plan(&curves, &order, Bounds { max_bytes: None, max_cost: Some(0.0) }, none);
        assert_eq!(tight, [0.5, 0.0, 0.0]);
    }

    #[test]
    fn size_comes_first_then_accuracy() {
        let curves = [curve(1000, &[(0.5, 0.02), (0.9, 0.05)]), curve(1000, &[(0.5, 0.001), (0.9, 0.002)])];
        let order = greedy_order(&curves);
        let bytes = |s: &[f64]| s.iter().map(|&s| ((1.0 - s) * 1000.0 * 4.0) as u64).sum::<u64>();
        // 2400 bytes needs tensor 0 at 0.5 despite its cost above the accuracy budget.
        let planned = plan(&curves, &order, Bounds { max_bytes: Some(2400), max_cost: Some(0.01) }, bytes);
        assert_eq!(planned, [0.5, 0.9]);
    }
}
