"""The Keras `fit` baseline of bench/commands.py: the same VAE as `aevb train` on the same rows.

784-500-20-500-784 tanh (Glorot init, zero biases, as models/vae.py), Gaussian q(z|x) with the
log-variance soft-clipped as there, Bernoulli decoder from logits, analytic KL (estimator B,
L = 1), Adam 1e-3, batch 100, shuffled each epoch, validation on the valid split at batch 1000,
XLA (jit_compile=True) - written the way a Keras user writes a VAE: a sampling layer that adds
the KL with add_loss and `model.fit`. Reads the dataset's train and valid splits with the
store's reader, so the rows are the ones `aevb train` sees.

    python bench/keras_fit.py DATA_ROOT DATASET EPOCHS OUT_JSON

Prints `aevb-bench epoch N` after each epoch (the benchmark timestamps these lines) and writes
its phase times to OUT_JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

START = time.monotonic()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

from tasks.store.readers import read_split  # noqa: E402

LOG_VAR_MIN, LOG_VAR_MAX = -12.0, 8.0  # models/vae.py
LATENT, HIDDEN = 20, 500


class Sampling(layers.Layer):
    """z = mu + sigma * eps from [mu, raw log var]; adds the batch-mean KL(q || N(0, I))."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = keras.random.SeedGenerator(0)

    def call(self, stats):
        mean, raw = stats[:, :LATENT], stats[:, LATENT:]
        mid, half = (LOG_VAR_MAX + LOG_VAR_MIN) / 2, (LOG_VAR_MAX - LOG_VAR_MIN) / 2
        log_var = mid + half * ops.tanh((raw - mid) / half)
        kl = 0.5 * ops.sum(ops.square(mean) + ops.exp(log_var) - log_var - 1.0, axis=-1)
        self.add_loss(ops.mean(kl))
        eps = keras.random.normal(ops.shape(mean), seed=self.seed)
        return mean + ops.exp(0.5 * log_var) * eps


def bernoulli_nll(x, logits):
    """-log p(x|z) summed over the pixels (Keras averages it over the batch)."""
    return ops.sum(ops.binary_crossentropy(x, logits, from_logits=True), axis=-1)


def build(dim: int) -> keras.Model:
    x = keras.Input((dim,))
    h = layers.Dense(HIDDEN, activation="tanh")(x)
    z = Sampling()(layers.Dense(2 * LATENT)(h))
    logits = layers.Dense(dim)(layers.Dense(HIDDEN, activation="tanh")(z))
    model = keras.Model(x, logits)
    model.compile(keras.optimizers.Adam(1e-3), loss=bernoulli_nll, jit_compile=True)
    return model


class EpochLines(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        print(f"aevb-bench epoch {epoch + 1} loss={logs['loss']:.3f}", flush=True)


def main(root: str, dataset: str, epochs: int, out: str) -> None:
    phases = {"imports": time.monotonic() - START}
    t = time.monotonic()
    _, x, _ = read_split(root, dataset, None, "train")
    _, xv, _ = read_split(root, dataset, None, "valid")
    phases["data"] = time.monotonic() - t
    t = time.monotonic()
    model = build(x.shape[1])
    phases["model build + compile setup"] = time.monotonic() - t
    t = time.monotonic()
    model.fit(
        x, x, batch_size=100, epochs=epochs, shuffle=True, validation_data=(xv, xv),
        validation_batch_size=1000, callbacks=[EpochLines()], verbose=0,
    )  # fmt: skip
    phases["training"] = time.monotonic() - t
    t = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        model.save(os.path.join(tmp, "model.keras"))
    phases["saving"] = time.monotonic() - t
    with open(out, "w") as fh:
        json.dump({"phases": phases, "rows": len(x)}, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
