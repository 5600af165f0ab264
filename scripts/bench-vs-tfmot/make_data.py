"""The seed job's data set, written once per benchmark run: 60,000 samples of 1x28x28 drawn from
N(0, 1), labels argmax(x . W) over 10 classes for a seeded W (the shape of the `synthetic`
built-in). Every contender reads this one file, so they all learn the same task."""
import sys

import numpy as np
from safetensors.numpy import save_file

out, samples = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 60000
rng = np.random.default_rng(0)
x = rng.standard_normal((samples, 1, 28, 28), dtype=np.float32)
w = rng.standard_normal((28 * 28, 10), dtype=np.float32)
y = (x.reshape(samples, -1) @ w).argmax(axis=1).astype(np.int64)
save_file({"x": x, "y": y}, out)
