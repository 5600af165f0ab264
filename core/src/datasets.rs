//! Facts about the built-in data sets that the server needs without loading them (the engine
//! embeds the data itself).

/// scikit-learn's 8x8 digits (`data/digits.safetensors`): samples in the set.
pub const DIGITS_SAMPLES: i64 = 1797;

/// scikit-learn's 8x8 digits: features per sample (`x` is `[1797, 64]`).
pub const DIGITS_FEATURES: i64 = 64;
