//! Magnitude masks (element-wise, block, m-by-n, global), as `docs/pruning-semantics.md` pins them.
//!
//! Every mask keeps **exactly** `k` entries and breaks ties by position (lower index kept), where
//! tfmot keeps everything tied with the k-th value. On tie-free input the two agree.
//!
//! Ranking is done on bit patterns: for a non-NaN `f32`, `|w|` orders exactly like the `u32`
//! `w.to_bits() & 0x7fff_ffff`, so selection is an exact radix select over integer keys (two
//! passes over the data, see `top_k_masks`) instead of tfmot's full sort. NaN keys lie above
//! +inf, so a NaN weight ranks as the largest magnitude and is kept: a mask never hides a
//! diverged weight.

/// How a block's `|w|` values are pooled into one score: the job spec's `pruning.block_pooling`.
pub use crate::options::BlockPooling as Pooling;

/// tfmot: k = max(round_half_even(f32(n) * (1 - s)), 1) with (1 - s) computed in f32; s = 0 keeps all n.
///
/// The product is taken in f32 as tfmot does, so for n above 2^24 it is rounded like tfmot's.
/// The result never exceeds `n` (an empty tensor keeps 0; a negative or NaN sparsity, which
/// validation rejects, cannot ask for more than everything).
pub fn keep_count(n: usize, sparsity: f32) -> usize {
    if sparsity == 0.0 {
        // f32(n) is inexact above 2^24; "keep everything" must stay exact.
        return n;
    }
    let k = (n as f32 * (1.0 - sparsity)).round_ties_even();
    // `as` saturates and maps NaN to 0, so this cannot panic.
    (k as usize).max(1).min(n)
}

/// Element-wise magnitude mask: exactly keep_count(n, s) ones at the largest |w|; ties broken by lower flat index kept. Returns 0.0/1.0 values, same length as w.
pub fn element_mask(w: &[f32], sparsity: f32) -> Vec<f32> {
    top_k_masks(&[w], keep_count(w.len(), sparsity)).pop().unwrap_or_default()
}

/// Block mask over a 2-D weight of shape [rows, cols] (row-major): pool |w| over non-overlapping [br, bc] blocks aligned at index 0 (a trailing partial block pools only its real elements; Avg = mean over real elements, computed in f32 as sum/count, Max = max), keep exactly keep_count(num_blocks, s) blocks (ties: lower block index in row-major block order), expand to elements.
///
/// Requires `w.len() == rows * cols`. A zero block dimension is treated as 1.
pub fn block_mask(w: &[f32], rows: usize, cols: usize, block: [usize; 2], pooling: Pooling, sparsity: f32) -> Vec<f32> {
    debug_assert_eq!(w.len(), rows * cols, "weight length does not match its shape");
    let grid = BlockGrid::new(rows, cols, block);
    let block_keep = element_mask(&grid.pool(w, pooling), sparsity);
    grid.block_of_each_element().map(|b| block_keep[b]).collect()
}

/// m zeros in every group of n consecutive values along the input-channel dimension (dim 1).
///
/// `shape` is `[out, in, rest...]`; groups run along `in` for each fixed `(out, rest...)`
/// position, i.e. over the weight viewed as `permute(0, 2, 3, .., 1).reshape(-1, in)`. A trailing
/// short group is padded with zeros that always lose, so it keeps `min(n - m, real)` elements.
/// Within a group the `n - m` largest `|w|` are kept, ties to the lower index. The golden
/// vectors confirm the padded-group rule (`[8, 18]` at 2:4 keeps both values of each last pair).
///
/// Requires `m < n` (validated by the caller; `m >= n` prunes everything) and
/// `w.len() == product(shape)`. A rank-1 shape is read as one row `[1, len]`, rank 0 as `[1, 1]`.
pub fn m_by_n_mask(w: &[f32], shape: &[usize], m: usize, n: usize) -> Vec<f32> {
    let (outer, channels, inner) = channel_layout(shape);
    debug_assert_eq!(w.len(), outer * channels * inner, "weight length does not match its shape");
    let group_len = n.max(1);
    let keep_per_group = group_len.saturating_sub(m);
    let mut mask = vec![0.0; w.len()];
    let mut group = Vec::with_capacity(group_len);
    for o in 0..outer {
        for r in 0..inner {
            let flat = |c: usize| (o * channels + c) * inner + r;
            for start in (0..channels).step_by(group_len) {
                group.clear();
                group.extend((start..channels.min(start + group_len)).map(flat));
                keep_largest_in_group(w, &mut group, keep_per_group, &mut mask);
            }
        }
    }
    mask
}

/// Global scope: one threshold over all tensors together: exactly keep_count(sum of lens, s) kept overall; ties broken by lower position in the concatenation (tensor order, then flat index). Returns one mask per tensor.
pub fn global_masks(tensors: &[&[f32]], sparsity: f32) -> Vec<Vec<f32>> {
    top_k_masks(tensors, keep_count(total_len(tensors), sparsity))
}

/// [`global_masks`] for tensors too big to hold together: the same exact-k selection (ties to
/// the lower position in tensor order, then flat index), found in two reading passes that keep
/// nothing but two 64 Ki-entry histograms, then applied one tensor at a time, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalSelection {
    /// Every value kept (`Some(true)`) or none (`Some(false)`): no threshold needed.
    all: Option<bool>,
    /// The k-th largest magnitude key: keys above it are kept, keys equal to it while ties last.
    threshold: u32,
    ties_left: usize,
}

impl GlobalSelection {
    /// `each_pass(visit)` must call `visit` with every tensor's values, in the same order, each
    /// time it is called (twice at most); `total` is their summed length.
    pub fn find<E>(
        total: usize,
        sparsity: f32,
        mut each_pass: impl FnMut(&mut dyn FnMut(&[f32])) -> Result<(), E>,
    ) -> Result<GlobalSelection, E> {
        let k = keep_count(total, sparsity);
        if k == 0 || k >= total {
            return Ok(GlobalSelection { all: Some(k > 0), threshold: 0, ties_left: 0 });
        }
        let mut high_hist = vec![0usize; DIGIT_BUCKETS];
        each_pass(&mut |values: &[f32]| values.iter().for_each(|&x| high_hist[high_digit(x) as usize] += 1))?;
        let (high, above_high) = bucket_of_kth_largest(&high_hist, k);
        let mut low_hist = vec![0usize; DIGIT_BUCKETS];
        each_pass(&mut |values: &[f32]| {
            for &x in values {
                if high_digit(x) == high {
                    low_hist[(magnitude_key(x) & DIGIT_MASK) as usize] += 1;
                }
            }
        })?;
        let (low, above_low) = bucket_of_kth_largest(&low_hist, k - above_high);
        Ok(GlobalSelection { all: None, threshold: (high << DIGIT_BITS) | low, ties_left: k - above_high - above_low })
    }

    /// The mask of the next tensor in order.
    pub fn next_mask(&mut self, values: &[f32]) -> Vec<f32> {
        if let Some(all) = self.all {
            return vec![as_mask_value(all); values.len()];
        }
        values
            .iter()
            .map(|&x| {
                let key = magnitude_key(x);
                let kept_tie = key == self.threshold && self.ties_left > 0;
                self.ties_left -= usize::from(kept_tie);
                as_mask_value(key > self.threshold || kept_tie)
            })
            .collect()
    }
}

/// 1 - mean(mask): the sparsity reported for a mask (as tfmot's PruningSummaries).
///
/// An empty mask prunes nothing and reports 0.
pub fn mask_sparsity(mask: &[f32]) -> f64 {
    if mask.is_empty() {
        return 0.0;
    }
    let kept: f64 = mask.iter().map(|&v| f64::from(v)).sum();
    1.0 - kept / mask.len() as f64
}

/// The ranking key of `|x|`: its bit pattern without the sign, which orders like `|x|` for all
/// non-NaN values (and puts NaN above +inf). `-0.0` and `0.0` get the same key.
#[inline]
fn magnitude_key(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// The radix bucket of `|x|` in the first pass: the high 16 bits of its key.
#[inline]
fn high_digit(x: f32) -> u32 {
    magnitude_key(x) >> DIGIT_BITS
}

#[inline]
fn as_mask_value(keep: bool) -> f32 {
    if keep {
        1.0
    } else {
        0.0
    }
}

/// A radix digit: keys are selected 16 bits at a time, high half first.
const DIGIT_BITS: u32 = 16;
const DIGIT_BUCKETS: usize = 1 << DIGIT_BITS;
const DIGIT_MASK: u32 = (1 << DIGIT_BITS) - 1;

/// Exact top-`k` over the magnitudes of `parts` read as one sequence (one tensor, pooled block
/// scores, or several tensors in order), ties to the lower position; one 0/1 mask per part.
///
/// Radix select with two passes over the data. A histogram of the keys' high 16 bits finds the
/// bucket `high` that holds the k-th largest key. One pass then writes the masks, deciding every
/// value outside that bucket on the spot and listing the values inside it. Only the listed
/// values (a fraction of a percent of n on real weights) are ranked by their low 16 bits and
/// decided, in sequence order so that the tie budget goes to the lowest positions.
///
/// The list costs 8 bytes per value in the bucket: all n for degenerate input such as an
/// all-zero tensor, which is still linear time.
fn top_k_masks(parts: &[&[f32]], k: usize) -> Vec<Vec<f32>> {
    if k == 0 || k >= total_len(parts) {
        return parts.iter().map(|p| vec![as_mask_value(k > 0); p.len()]).collect();
    }
    let high_hist = histogram(parts.iter().flat_map(|p| p.iter()).map(|&x| high_digit(x)));
    let (high, above_high) = bucket_of_kth_largest(&high_hist, k);
    let (mut masks, bucket) = decide_outside_bucket(parts, high, high_hist[high as usize]);

    let bucket_keys = || bucket.by_part(parts).flat_map(|(part, idx)| idx.iter().map(|&i| magnitude_key(part[i])));
    let low_hist = histogram(bucket_keys().map(|key| key & DIGIT_MASK));
    let (low, above_low) = bucket_of_kth_largest(&low_hist, k - above_high);
    let threshold = (high << DIGIT_BITS) | low;
    let mut ties_left = k - above_high - above_low;
    for ((part, idx), mask) in bucket.by_part(parts).zip(&mut masks) {
        for &i in idx {
            let key = magnitude_key(part[i]);
            let kept_tie = key == threshold && ties_left > 0;
            ties_left -= usize::from(kept_tie);
            mask[i] = as_mask_value(key > threshold || kept_tie);
        }
    }
    masks
}

/// The values left undecided by the first pass (those in the threshold's high bucket), as
/// indices into their parts: part `p` owns `indices[ends[p - 1]..ends[p]]`. One flat list of
/// exactly the bucket's size rather than a list per part, so many small tensors cost nothing.
struct Bucket {
    indices: Vec<usize>,
    ends: Vec<usize>,
}

impl Bucket {
    /// Each part with the indices of its values in the bucket, in sequence order.
    fn by_part<'a>(&'a self, parts: &'a [&'a [f32]]) -> impl Iterator<Item = (&'a [f32], &'a [usize])> + 'a {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        let slices = starts.zip(&self.ends).map(|(start, &end)| &self.indices[start..end]);
        parts.iter().copied().zip(slices)
    }
}

/// Values per chunk of the deciding pass: small enough that a chunk read twice stays in L1.
const CHUNK: usize = 4096;

/// The masks of `parts` with every value whose high digit is above `high` kept and every value
/// below it dropped; the `bucket_len` values with high digit `high` are left at 0 and listed.
///
/// Each chunk is read twice, by a branch-free loop that writes the mask (it vectorizes) and by
/// a loop that lists the bucket's values from L1: together about three times faster than one
/// loop doing both, whose rare `push` keeps it scalar.
fn decide_outside_bucket(parts: &[&[f32]], high: u32, bucket_len: usize) -> (Vec<Vec<f32>>, Bucket) {
    let mut bucket = Bucket { indices: Vec::with_capacity(bucket_len), ends: Vec::with_capacity(parts.len()) };
    let masks = parts
        .iter()
        .map(|part| {
            let mut mask = vec![0.0; part.len()];
            let chunks = part.chunks(CHUNK).zip(mask.chunks_mut(CHUNK));
            for (start, (values, decided)) in (0..).step_by(CHUNK).zip(chunks) {
                for (d, &x) in decided.iter_mut().zip(values) {
                    *d = as_mask_value(high_digit(x) > high);
                }
                let in_bucket = values.iter().enumerate().filter(|&(_, &x)| high_digit(x) == high);
                bucket.indices.extend(in_bucket.map(|(j, _)| start + j));
            }
            bucket.ends.push(bucket.indices.len());
            mask
        })
        .collect();
    (masks, bucket)
}

fn total_len(parts: &[&[f32]]) -> usize {
    parts.iter().map(|p| p.len()).sum()
}

/// Counts digits (each below `DIGIT_BUCKETS`).
fn histogram(digits: impl Iterator<Item = u32>) -> Vec<usize> {
    let mut hist = vec![0usize; DIGIT_BUCKETS];
    digits.for_each(|d| hist[d as usize] += 1);
    hist
}

/// Walks a histogram from its largest bucket down and returns the bucket that holds the `k`-th
/// largest key (1-based) together with the number of keys in the buckets above it.
fn bucket_of_kth_largest(hist: &[usize], k: usize) -> (u32, usize) {
    let mut above = 0;
    for (bucket, &count) in hist.iter().enumerate().rev() {
        if above + count >= k {
            return (bucket as u32, above);
        }
        above += count;
    }
    // Only reached if the histogram holds fewer than k keys, which `top_k_masks` rules out.
    (0, above)
}

/// The block tiling of a `[rows, cols]` matrix: blocks aligned at index 0, the last block row
/// and column possibly partial, numbered in row-major block order.
struct BlockGrid {
    rows: usize,
    block_rows: usize,
    grid_cols: usize,
    /// The block column of each matrix column (precomputed: no division per element).
    block_col: Vec<usize>,
}

impl BlockGrid {
    /// A zero block dimension is treated as 1.
    fn new(rows: usize, cols: usize, block: [usize; 2]) -> BlockGrid {
        let [block_rows, block_cols] = block.map(|b| b.max(1));
        let block_col = (0..cols).map(|c| c / block_cols).collect();
        BlockGrid { rows, block_rows, grid_cols: cols.div_ceil(block_cols), block_col }
    }

    fn num_blocks(&self) -> usize {
        self.rows.div_ceil(self.block_rows) * self.grid_cols
    }

    /// The block index of every element, in row-major element order.
    fn block_of_each_element(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rows).flat_map(move |r| {
            let first_block = (r / self.block_rows) * self.grid_cols;
            self.block_col.iter().map(move |&c| first_block + c)
        })
    }

    /// One score per block from `|w|` of its real elements. Avg sums in f32 in row-major order
    /// within the block, then divides by the real element count.
    fn pool(&self, w: &[f32], pooling: Pooling) -> Vec<f32> {
        let mut acc = vec![0.0f32; self.num_blocks()];
        let mut counts = vec![0u32; acc.len()];
        for (b, &x) in self.block_of_each_element().zip(w) {
            acc[b] = match pooling {
                Pooling::Avg => acc[b] + x.abs(),
                // Max over keys (not f32::max) so that NaN wins, as in the element ranking.
                Pooling::Max => f32::from_bits(magnitude_key(acc[b]).max(magnitude_key(x))),
            };
            counts[b] += 1;
        }
        if pooling == Pooling::Avg {
            for (sum, &count) in acc.iter_mut().zip(&counts) {
                *sum /= count as f32;
            }
        }
        acc
    }
}

/// `(outer, channels, inner)` for an m-by-n layout `[out, in, rest...]`: element `(o, c, r)`
/// lies at `(o * channels + c) * inner + r`.
fn channel_layout(shape: &[usize]) -> (usize, usize, usize) {
    match shape {
        [] => (1, 1, 1),
        [len] => (1, *len, 1),
        [out, channels, rest @ ..] => (*out, *channels, rest.iter().product()),
    }
}

/// Marks the `keep` largest `|w|` among the flat indices in `group` (given in channel order, so
/// ties go to the lower channel). A short group simply has fewer candidates: its zero padding
/// never wins.
fn keep_largest_in_group(w: &[f32], group: &mut [usize], keep: usize, mask: &mut [f32]) {
    if keep < group.len() {
        // Stable sort: equal magnitudes stay in channel order.
        group.sort_by_key(|&i| std::cmp::Reverse(magnitude_key(w[i])));
    }
    for &i in group.iter().take(keep) {
        mask[i] = 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ones(mask: &[f32]) -> Vec<usize> {
        mask.iter().enumerate().filter(|(_, &v)| v == 1.0).map(|(i, _)| i).collect()
    }

    #[test]
    fn keep_count_follows_tfmot_rounding() {
        assert_eq!(keep_count(10, 0.0), 10);
        assert_eq!(keep_count(10, 0.5), 5);
        assert_eq!(keep_count(10, 0.999), 1, "at least one is kept");
        assert_eq!(keep_count(10, 0.25), 8, "7.5 rounds half to even");
        assert_eq!(keep_count(10, 0.75), 2, "2.5 rounds half to even");
        assert_eq!(keep_count(2112, 0.999), 2);
        assert_eq!(keep_count(0, 0.5), 0);
        assert_eq!(keep_count(0, 0.0), 0);
        assert_eq!(keep_count((1 << 24) + 1, 0.0), (1 << 24) + 1, "s = 0 is exact past 2^24");
    }

    #[test]
    fn keep_count_never_exceeds_n_nor_panics_on_bad_sparsity() {
        assert_eq!(keep_count(10, -0.5), 10);
        assert_eq!(keep_count(10, f32::NAN), 1);
        assert_eq!(keep_count(10, 1.0), 1);
    }

    #[test]
    fn element_mask_keeps_largest_magnitudes() {
        let w = [0.1, -0.9, 0.3, 0.0, -0.5, 0.2];
        assert_eq!(ones(&element_mask(&w, 0.5)), vec![1, 2, 4]);
    }

    #[test]
    fn element_mask_breaks_ties_by_lower_index() {
        let w = [1.0, -1.0, 0.5, 1.0, 1.0];
        // k = 2 of four tied 1.0s: the first two.
        assert_eq!(ones(&element_mask(&w, 0.6)), vec![0, 1]);
        // Negative zero ties with zero.
        let z = [0.0, -0.0, 0.0, -0.0];
        assert_eq!(ones(&element_mask(&z, 0.5)), vec![0, 1]);
        // All values in one radix bucket (an all-zero tensor): the first k.
        assert_eq!(ones(&element_mask(&[0.0; 1000], 0.99)), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn element_mask_ties_across_the_low_digit() {
        // Keys that share the high 16 bits but differ in the low 16 bits.
        let a = f32::from_bits(0x3f80_0001);
        let b = f32::from_bits(0x3f80_0002);
        let w = [a, b, a, b, 1.0];
        // k = 3: both b's, then the first a.
        assert_eq!(ones(&element_mask(&w, 0.4)), vec![0, 1, 3]);
    }

    #[test]
    fn element_mask_matches_a_sort_across_chunks() {
        // Several deciding-pass chunks, with many ties whose order crosses chunk boundaries.
        let w: Vec<f32> = (0..3 * CHUNK + 5).map(|i| ((i * 7919) % 1000) as f32 * 0.25 - 100.0).collect();
        let mut order: Vec<usize> = (0..w.len()).collect();
        order.sort_by(|&a, &b| w[b].abs().total_cmp(&w[a].abs()).then(a.cmp(&b)));
        for sparsity in [0.3, 0.8, 0.99] {
            let mut expected: Vec<usize> = order[..keep_count(w.len(), sparsity)].to_vec();
            expected.sort();
            assert_eq!(ones(&element_mask(&w, sparsity)), expected, "sparsity {sparsity}");
        }
    }

    #[test]
    fn element_mask_edge_cases() {
        assert!(element_mask(&[], 0.5).is_empty());
        assert_eq!(element_mask(&[-3.0], 0.9), vec![1.0]);
        assert_eq!(element_mask(&[0.0, 0.0], 0.0), vec![1.0, 1.0]);
        // NaN ranks above everything, inf next.
        let w = [1.0, f32::NAN, f32::INFINITY, -f32::NAN];
        assert_eq!(ones(&element_mask(&w, 0.5)), vec![1, 3]);
    }

    #[test]
    fn block_mask_avg_and_max_pooling() {
        // 2x4 in [1, 2] blocks: block scores avg = [0.5, 2.0, 1.5, 0.05], max = [0.9, 2.0, 3.0, 0.1].
        let w = [0.1, -0.9, 2.0, 2.0, 0.0, 3.0, 0.1, 0.0];
        let avg = block_mask(&w, 2, 4, [1, 2], Pooling::Avg, 0.5);
        assert_eq!(avg, vec![0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        let max = block_mask(&w, 2, 4, [1, 2], Pooling::Max, 0.75);
        assert_eq!(max, vec![0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn block_mask_partial_blocks_pool_only_real_elements() {
        // 1x3 in [1, 2] blocks: block 0 = {1.0, 1.0} (avg 1.0), block 1 = {1.5} (avg 1.5).
        let w = [1.0, 1.0, 1.5];
        assert_eq!(block_mask(&w, 1, 3, [1, 2], Pooling::Avg, 0.5), vec![0.0, 0.0, 1.0]);
        // 3x1 in [2, 1] blocks, tie between {2, 0} (avg 1) and {1}: lower block wins.
        let v = [2.0, 0.0, 1.0];
        assert_eq!(block_mask(&v, 3, 1, [2, 1], Pooling::Avg, 0.5), vec![1.0, 1.0, 0.0]);
    }

    #[test]
    fn m_by_n_rank2_keeps_two_of_four_with_padded_tail() {
        // in = 6: one full group of 4 and a trailing group of 2 real values.
        let w = [0.1, 0.4, -0.3, 0.2, 0.05, -0.01, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        let mask = m_by_n_mask(&w, &[2, 6], 2, 4);
        assert_eq!(ones(&mask), vec![1, 2, 4, 5, 6, 7, 10, 11]);
    }

    #[test]
    fn m_by_n_conv_groups_run_along_input_channels() {
        // [out=1, in=4, kh=1, kw=2]: element (c, r) at c * 2 + r. Channel groups per r:
        // r = 0 -> [1, 4, 3, 2] keeps channels 1, 2; r = 1 -> [8, 5, 6, 7] keeps channels 0, 3.
        let w = [1.0, 8.0, 4.0, 5.0, 3.0, 6.0, 2.0, 7.0];
        let mask = m_by_n_mask(&w, &[1, 4, 1, 2], 2, 4);
        assert_eq!(ones(&mask), vec![1, 2, 4, 7]);
    }

    #[test]
    fn m_by_n_ties_keep_lower_channel() {
        let w = [0.5, -0.5, 0.5, 0.5];
        assert_eq!(ones(&m_by_n_mask(&w, &[1, 4], 2, 4)), vec![0, 1]);
    }

    #[test]
    fn global_masks_rank_across_tensors() {
        let small = [0.1, -0.2, 0.0];
        let big = [5.0, -4.0];
        let masks = global_masks(&[&small, &big], 0.6);
        assert_eq!(masks, vec![vec![0.0; 3], vec![1.0, 1.0]]);
        // Ties spend the budget on the earlier tensor first.
        let masks = global_masks(&[&[1.0, 1.0], &[1.0, 1.0]], 0.25);
        assert_eq!(masks, vec![vec![1.0, 1.0], vec![1.0, 0.0]]);
    }

    fn streamed_global(parts: &[&[f32]], sparsity: f32) -> Vec<Vec<f32>> {
        let total = total_len(parts);
        let mut passes = 0;
        let mut selection = GlobalSelection::find(total, sparsity, |visit| {
            passes += 1;
            parts.iter().for_each(|p| visit(p));
            Ok::<_, ()>(())
        })
        .unwrap();
        assert!(passes <= 2);
        parts.iter().map(|p| selection.next_mask(p)).collect()
    }

    #[test]
    fn streamed_global_selection_equals_global_masks() {
        let tie = f32::from_bits(0x0001_0003);
        let cases: Vec<Vec<Vec<f32>>> = vec![
            vec![vec![0.1, -0.2, 0.0], vec![5.0, -4.0]],
            vec![vec![1.0, 1.0], vec![1.0, 1.0]],
            vec![vec![0.0, tie], vec![tie, tie, 9.0], vec![]],
            vec![vec![0.0; 700], vec![-0.0; 300]],
            (0..4)
                .map(|p| (0..3 * CHUNK + p).map(|i| ((i * 7919 + p) % 1000) as f32 * 0.25 - 100.0).collect())
                .collect(),
        ];
        for parts in &cases {
            let slices: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
            for sparsity in [0.0, 0.25, 0.5, 0.8, 0.99, 1.0] {
                assert_eq!(streamed_global(&slices, sparsity), global_masks(&slices, sparsity), "{sparsity}");
            }
        }
        assert_eq!(streamed_global(&[], 0.5), Vec::<Vec<f32>>::new());
    }

    #[test]
    fn mask_sparsity_is_one_minus_mean() {
        assert_eq!(mask_sparsity(&[1.0, 0.0, 0.0, 0.0]), 0.75);
        assert_eq!(mask_sparsity(&[1.0; 3]), 0.0);
        assert_eq!(mask_sparsity(&[]), 0.0);
    }

    #[test]
    fn radix_select_decides_within_the_threshold_bucket() {
        // Three keys share the high digit 0x0001 and one of them the full key 0x0001_0003.
        let values = [5u32, 0x0001_0003, 0x0001_0001, 7, 0x0001_0003, 0x0002_0000].map(f32::from_bits);
        assert_eq!(ones(&top_k_masks(&[&values], 2)[0]), vec![1, 5]);
        assert_eq!(ones(&top_k_masks(&[&values], 3)[0]), vec![1, 4, 5]);
        assert_eq!(ones(&top_k_masks(&[&values], 4)[0]), vec![1, 2, 4, 5]);
        // Below the bucket: the low keys are ranked in the first pass alone.
        assert_eq!(ones(&top_k_masks(&[&values], 5)[0]), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn radix_select_spends_ties_in_sequence_order_across_parts() {
        let tie = f32::from_bits(0x0001_0003);
        let (a, b) = ([0.0, tie], [tie, tie, 9.0]);
        let masks = top_k_masks(&[&a, &b], 3);
        assert_eq!(masks, vec![vec![0.0, 1.0], vec![1.0, 0.0, 1.0]]);
        assert_eq!(top_k_masks(&[&a, &b], 0), vec![vec![0.0; 2], vec![0.0; 3]]);
        assert_eq!(top_k_masks(&[&a, &b], 9), vec![vec![1.0; 2], vec![1.0; 3]]);
        assert_eq!(top_k_masks(&[], 1), Vec::<Vec<f32>>::new());
    }
}
