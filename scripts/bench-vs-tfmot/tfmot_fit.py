"""tfmot's side of `make bench-vs-tfmot`: the seed job as a Keras user writes it with
tensorflow-model-optimization 0.8.1 (prune_low_magnitude on the whole model, PolynomialDecay,
UpdatePruningStep), timed around `model.fit` only: data loading, model building and TensorFlow's
import are not counted. Prints one JSON line."""
import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tfmot 0.8.1 needs Keras 2 (tf-keras)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

data = load_file(sys.argv[1])
epochs, batch = int(sys.argv[2]), int(sys.argv[3])
x = np.transpose(data["x"], (0, 2, 3, 1))  # NCHW -> NHWC, Keras' layout
y = data["y"]
train_n = int(len(x) * 0.9)
steps = epochs * -(-train_n // batch)

keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.layers.InputLayer(input_shape=(28, 28, 1)),
    keras.layers.Conv2D(12, 3, activation="relu"),
    keras.layers.MaxPooling2D(2),
    keras.layers.Flatten(),
    keras.layers.Dense(10),
])
schedule = tfmot.sparsity.keras.PolynomialDecay(
    initial_sparsity=0.5, final_sparsity=0.8, begin_step=0, end_step=steps, frequency=100)
pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
pruned.compile(optimizer=keras.optimizers.Adam(1e-3),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
start = time.perf_counter()
hist = pruned.fit(x, y, batch_size=batch, epochs=epochs, validation_split=0.1, verbose=0,
                  callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
seconds = time.perf_counter() - start
stripped = tfmot.sparsity.keras.strip_pruning(pruned)
kernel = stripped.layers[-1].get_weights()[0]
print(json.dumps({"seconds": seconds, "val_accuracy": float(hist.history["val_accuracy"][-1]),
                  "dense_kernel_sparsity": float((kernel == 0).mean()), "steps": steps}))
