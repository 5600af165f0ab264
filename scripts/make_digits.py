"""Regenerates data/digits.safetensors from scikit-learn's bundled 8x8 digits (run once; the
file is committed so that builds and tests need no scikit-learn).

x: uint8 [1797, 64], pixel values 0..16 (the engine scales them to [0, 1] as x / 16);
y: int64 [1797], class ids 0..9. Shuffled once (numpy seed 0): scikit-learn ships the samples
grouped by writer, so a Keras-style "last fraction" validation split would hold out only the
last writers; after the shuffle the tail split is representative, as a shuffled split is.
"""
import sys

import numpy as np
from safetensors.numpy import save_file
from sklearn.datasets import load_digits

out = sys.argv[1] if len(sys.argv) > 1 else "data/digits.safetensors"
digits = load_digits()
x = digits.data.astype(np.uint8)
assert (x == digits.data).all() and x.max() == 16
y = digits.target.astype(np.int64)
order = np.random.RandomState(0).permutation(len(y))
x, y = x[order], y[order]
save_file({"x": np.ascontiguousarray(x), "y": y}, out, metadata={"source": "sklearn.datasets.load_digits"})
print(f"wrote {out}: x {x.shape} y {y.shape}")
