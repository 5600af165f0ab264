//! `element_mask` (radix select) against tfmot's method (full sort of |w|, threshold at the
//! k-th value, keep |w| >= threshold) on a seeded 4096x4096 normal tensor at sparsity 0.8.
//!
//! Run: `cargo bench -p prune-core --bench mask_select`. Target: radix select <= 0.1 s.

use prune_core::mask::{element_mask, keep_count};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SIDE: usize = 4096;
const SPARSITY: f32 = 0.8;
const RUNS: usize = 5;

/// splitmix64: a tiny, seedable, good-enough generator (no dependency needed).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so `ln` below is finite.
    fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Two standard normals by Box-Muller.
    fn next_normal_pair(&mut self) -> [f64; 2] {
        let radius = (-2.0 * self.next_unit().ln()).sqrt();
        let angle = std::f64::consts::TAU * self.next_unit();
        [radius * angle.cos(), radius * angle.sin()]
    }
}

fn normal_weights(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..n.div_ceil(2)).flat_map(|_| rng.next_normal_pair()).take(n).map(|x| (0.05 * x) as f32).collect()
}

/// What tfmot does: sort |w| descending, take the k-th value as threshold, keep |w| >= it.
fn full_sort_mask(w: &[f32], sparsity: f32) -> Vec<f32> {
    let k = keep_count(w.len(), sparsity);
    let mut magnitudes: Vec<f32> = w.iter().map(|x| x.abs()).collect();
    magnitudes.sort_unstable_by(|a, b| b.total_cmp(a));
    let threshold = magnitudes[k - 1];
    w.iter().map(|x| if x.abs() >= threshold { 1.0 } else { 0.0 }).collect()
}

/// Best wall time of `RUNS` calls, with the last result.
fn best_of<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..RUNS {
        let start = Instant::now();
        let result = black_box(f());
        best = best.min(start.elapsed());
        out = Some(result);
    }
    (best, out.expect("RUNS > 0"))
}

fn main() {
    let w = normal_weights(SIDE * SIDE, 0x5eed);
    let (radix_time, radix) = best_of(|| element_mask(black_box(&w), SPARSITY));
    let (sort_time, sorted) = best_of(|| full_sort_mask(black_box(&w), SPARSITY));
    // The floor under any mask function: first-touch page faults on a fresh n-element output.
    let (output_time, _) = best_of(|| vec![1.0f32; black_box(w.len())]);

    let k = keep_count(w.len(), SPARSITY);
    let kept = |m: &[f32]| m.iter().filter(|&&v| v == 1.0).count();
    let differ = radix.iter().zip(&sorted).filter(|(a, b)| a != b).count();
    println!(
        "mask {SIDE}x{SIDE} @{SPARSITY:.2}: radix-select {:.3} s | full sort {:.3} s | speedup {:.0}x",
        radix_time.as_secs_f64(),
        sort_time.as_secs_f64(),
        sort_time.as_secs_f64() / radix_time.as_secs_f64(),
    );
    println!(
        "  k = {k}; kept: radix-select {} (exact k), full sort {} (keeps ties); masks differ in {differ} elements",
        kept(&radix),
        kept(&sorted),
    );
    println!(
        "  floor: allocating and writing a fresh {SIDE}x{SIDE} f32 output alone takes {:.3} s",
        output_time.as_secs_f64()
    );
}
