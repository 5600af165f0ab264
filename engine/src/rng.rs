//! Randomness as a pure function of (seed, epoch, step), so a resumed job replays exactly the
//! batches and dropout masks an uninterrupted run would have used.

/// SplitMix64: tiny, fast, and good enough to derive seeds and shuffle indices.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0), without modulo bias worth caring about for shuffling.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }
}

/// A seed derived from the job seed and a purpose-specific counter, e.g. (seed, "dropout", step).
pub fn derive(seed: u64, stream: u64, counter: u64) -> u64 {
    let mut r = SplitMix64::new(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let a = r.next_u64();
    SplitMix64::new(a ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

pub const STREAM_SHUFFLE: u64 = 1;
pub const STREAM_STEP: u64 = 2;
pub const STREAM_INIT: u64 = 3;
pub const STREAM_SYNTHETIC: u64 = 4;

/// The order of training samples in `epoch` (Fisher-Yates), the same on every resume.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<i64> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    let mut r = SplitMix64::new(derive(seed, STREAM_SHUFFLE, epoch));
    for i in (1..n).rev() {
        let j = r.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    order
}

/// libtorch's generator takes an i64 seed.
pub fn torch_seed(seed: u64, stream: u64, counter: u64) -> i64 {
    (derive(seed, stream, counter) >> 1) as i64
}

/// libtorch's global generator is shared by this crate's unit tests, which run on parallel
/// threads: a test that seeds it or draws from it holds this lock, so another test's draws
/// cannot land between its seed and its draws.
#[cfg(test)]
pub(crate) fn global_generator_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_depends_on_epoch() {
        let a = epoch_permutation(1000, 7, 0);
        let b = epoch_permutation(1000, 7, 1);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, b);
        assert_eq!(a, epoch_permutation(1000, 7, 0));
    }
}
