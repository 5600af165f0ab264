//! Property tests for the mask rules of `docs/pruning-semantics.md`, checked against a plain
//! sort-based reference that ranks by `f32::abs` (not by the bit patterns the crate uses).

use proptest::prelude::*;
use prune_core::mask::{block_mask, element_mask, global_masks, keep_count, m_by_n_mask, mask_sparsity, Pooling};
use std::cmp::Ordering;

/// Weights with many exact ties: a tiny value set (signed zeros included), values that share
/// their high 16 bits and differ only in the low ones, and continuous values.
fn weight() -> impl Strategy<Value = f32> {
    prop_oneof![
        prop::sample::select(vec![0.0f32, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0]),
        (0u32..6).prop_map(|low| f32::from_bits(0x3f80_0000 + low) * if low % 2 == 0 { 1.0 } else { -1.0 }),
        -4.0f32..4.0,
    ]
}

fn weights(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(weight(), 0..max_len)
}

/// Mostly in [0, 1), sometimes exactly 0 (keep all) or close to 1 (keep one).
fn sparsity() -> impl Strategy<Value = f32> {
    prop_oneof![Just(0.0f32), Just(0.999f32), 0.0f32..0.999]
}

/// Descending |w|, ties in position order: the spec's ranking, done the obvious way.
fn by_magnitude_then_index(w: &[f32], a: usize, b: usize) -> Ordering {
    w[b].abs().partial_cmp(&w[a].abs()).unwrap_or(Ordering::Equal).then(a.cmp(&b))
}

/// The exact top-`k` of `w` under the spec's ranking, as a 0/1 mask.
fn reference_top_k(w: &[f32], k: usize) -> Vec<f32> {
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_by(|&a, &b| by_magnitude_then_index(w, a, b));
    let mut mask = vec![0.0; w.len()];
    for &i in order.iter().take(k) {
        mask[i] = 1.0;
    }
    mask
}

fn kept(mask: &[f32]) -> usize {
    mask.iter().filter(|&&v| v == 1.0).count()
}

/// Every kept |w| is >= every dropped |w|.
fn kept_dominate_dropped(w: &[f32], mask: &[f32]) -> bool {
    let magnitudes = |keep: bool| w.iter().zip(mask).filter(move |(_, &m)| (m == 1.0) == keep).map(|(x, _)| x.abs());
    let min_kept = magnitudes(true).fold(f32::INFINITY, f32::min);
    let max_dropped = magnitudes(false).fold(0.0, f32::max);
    min_kept >= max_dropped
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn element_mask_keeps_exactly_k_with_lower_index_ties(w in weights(300), s in sparsity()) {
        let mask = element_mask(&w, s);
        let k = keep_count(w.len(), s);
        prop_assert_eq!(mask.len(), w.len());
        prop_assert!(mask.iter().all(|&v| v == 0.0 || v == 1.0));
        prop_assert_eq!(kept(&mask), k);
        prop_assert!(kept_dominate_dropped(&w, &mask));
        prop_assert_eq!(mask, reference_top_k(&w, k));
    }

    #[test]
    fn keep_count_is_at_least_one_and_zero_sparsity_keeps_all(n in 1usize..100_000, s in 0.0f32..1.0) {
        let k = keep_count(n, s);
        prop_assert!((1..=n).contains(&k));
        prop_assert_eq!(keep_count(n, 0.0), n);
    }

    #[test]
    fn zero_sparsity_keeps_everything(w in weights(200)) {
        prop_assert_eq!(element_mask(&w, 0.0), vec![1.0; w.len()]);
        prop_assert_eq!(mask_sparsity(&element_mask(&w, 0.0)), 0.0);
    }

    #[test]
    fn m_by_n_rank2_keeps_n_minus_m_per_group((shape, w) in shaped(2), (m, n) in m_and_n()) {
        check_m_by_n(&w, &shape, m, n)?;
    }

    #[test]
    fn m_by_n_rank4_keeps_n_minus_m_per_group((shape, w) in shaped(4), (m, n) in m_and_n()) {
        check_m_by_n(&w, &shape, m, n)?;
    }

    #[test]
    fn global_masks_rank_all_tensors_together(
        tensors in prop::collection::vec(weights(60), 1..5),
        s in sparsity(),
    ) {
        let views: Vec<&[f32]> = tensors.iter().map(Vec::as_slice).collect();
        let masks = global_masks(&views, s);
        let all: Vec<f32> = tensors.concat();
        let expected = reference_top_k(&all, keep_count(all.len(), s));
        prop_assert_eq!(masks.iter().map(Vec::len).collect::<Vec<_>>(), tensors.iter().map(Vec::len).collect::<Vec<_>>());
        prop_assert_eq!(masks.concat(), expected);
    }

    #[test]
    fn global_scope_prunes_tiny_tensor_before_big_one(
        tiny in prop::collection::vec(-0.01f32..0.01, 1..50),
        big in prop::collection::vec(prop_oneof![1.0f32..2.0, -2.0f32..-1.0], 1..50),
        s in sparsity(),
    ) {
        let masks = global_masks(&[&tiny, &big], s);
        let k = keep_count(tiny.len() + big.len(), s);
        prop_assert_eq!(kept(&masks[0]) + kept(&masks[1]), k);
        if k <= big.len() {
            prop_assert_eq!(kept(&masks[0]), 0, "tiny tensor must go first");
        } else {
            prop_assert_eq!(kept(&masks[1]), big.len(), "big tensor must be kept whole");
        }
    }

    #[test]
    fn block_masks_are_constant_per_block_and_keep_k_blocks(
        (rows, cols, w) in matrix(),
        block in [1usize..5, 1usize..5],
        pooling in prop_oneof![Just(Pooling::Avg), Just(Pooling::Max)],
        s in sparsity(),
    ) {
        let mask = block_mask(&w, rows, cols, block, pooling, s);
        let blocks = block_members(rows, cols, block);
        let decisions: Vec<f32> = blocks.iter().map(|members| mask[members[0]]).collect();
        for (members, &d) in blocks.iter().zip(&decisions) {
            prop_assert!(members.iter().all(|&i| mask[i] == d), "mask varies inside a block");
        }
        let scores: Vec<f32> = blocks.iter().map(|members| pool(&w, members, pooling)).collect();
        prop_assert_eq!(decisions, reference_top_k(&scores, keep_count(blocks.len(), s)));
    }
}

fn m_and_n() -> impl Strategy<Value = (usize, usize)> {
    (2usize..9).prop_flat_map(|n| (0..n, Just(n)))
}

/// A shape of the given rank (`[out, in, rest...]`, `in` often not a multiple of n) and weights.
fn shaped(rank: usize) -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    prop::collection::vec(1usize..7, rank).prop_flat_map(|shape| {
        let len: usize = shape.iter().product();
        (Just(shape), prop::collection::vec(weight(), len))
    })
}

fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..12, 1usize..12).prop_flat_map(|(r, c)| (Just(r), Just(c), prop::collection::vec(weight(), r * c)))
}

/// Flat indices of each block of a `[rows, cols]` matrix, blocks in row-major order.
fn block_members(rows: usize, cols: usize, [br, bc]: [usize; 2]) -> Vec<Vec<usize>> {
    let mut blocks = Vec::new();
    for r0 in (0..rows).step_by(br) {
        for c0 in (0..cols).step_by(bc) {
            let rows_in = r0..(r0 + br).min(rows);
            blocks.push(rows_in.flat_map(|r| (c0..(c0 + bc).min(cols)).map(move |c| r * cols + c)).collect());
        }
    }
    blocks
}

/// The spec's pooled block score: f32 mean (row-major sum, then divide) or max of |w|.
fn pool(w: &[f32], members: &[usize], pooling: Pooling) -> f32 {
    let magnitudes = members.iter().map(|&i| w[i].abs());
    match pooling {
        Pooling::Avg => magnitudes.sum::<f32>() / members.len() as f32,
        Pooling::Max => magnitudes.fold(0.0, f32::max),
    }
}

/// For every `(out, rest...)` position, each group of n consecutive input channels keeps its
/// `min(n - m, real)` largest |w| (ties to the lower channel), and nothing else is kept.
fn check_m_by_n(w: &[f32], shape: &[usize], m: usize, n: usize) -> Result<(), TestCaseError> {
    let mask = m_by_n_mask(w, shape, m, n);
    prop_assert_eq!(mask.len(), w.len());
    let (out, channels) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let mut total = 0;
    for o in 0..out {
        for r in 0..inner {
            for start in (0..channels).step_by(n) {
                let idx: Vec<usize> =
                    (start..(start + n).min(channels)).map(|c| (o * channels + c) * inner + r).collect();
                let group_w: Vec<f32> = idx.iter().map(|&i| w[i]).collect();
                let group_mask: Vec<f32> = idx.iter().map(|&i| mask[i]).collect();
                let keep = (n - m).min(idx.len());
                if idx.len() == n {
                    prop_assert_eq!(kept(&group_mask), n - m, "full group keeps exactly n - m");
                }
                prop_assert_eq!(group_mask, reference_top_k(&group_w, keep));
                total += keep;
            }
        }
    }
    prop_assert_eq!(kept(&mask), total, "nothing outside the groups is kept");
    Ok(())
}
