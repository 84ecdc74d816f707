"""MLP vs convolutional VAE on Fashion-MNIST: test log p(x) after equal epochs and after equal
wall time, and training examples/s of each (numbers, not a test).

Data: the official split of Fashion-MNIST's IDX files (Debian's `dataset-fashion-mnist`, or
``--data DIR``), read by the project's IDX reader: 60,000 train / 10,000 test rows, binarised once
(x = [pixel/255 > u], u ~ U(0, 1), seed 0) so the Bernoulli decoder's log p(x) is a proper
discrete log-likelihood. Models: the defaults a user gets, latent_dim 20, Adam 1e-3, batch 100:

    mlp   784-500-(20+20) / 20-500-784                      model.architecture = "mlp"
    conv  2 stride-2 3x3 convs (32, 64) -> 500 -> heads,    model.architecture = "conv"
          mirrored by 500 -> 7x7x64 -> transposed convs (32, 1)

Protocol: train the conv model for ``--epochs`` epochs; its training wall time is T. Train the MLP
for the same epochs (first score), then on until its training clock reaches T (second score;
evaluation time is not on the clock). Scores: log p(x) by importance sampling
(models/marginal.py, the evaluate stage's estimator) with K samples on the first ``--test-rows``
test rows, the same rows and seed for every model, plus the paired difference conv - mlp.
Examples/s: training examples per second of training wall time (the compiled update, tf.data
feeding from memory). The machine may be shared: the load average is printed with each phase.

    .venv/bin/python bench/conv_vs_mlp.py                              # full: hours on 2 CPUs
    .venv/bin/python bench/conv_vs_mlp.py --epochs 3 --test-rows 500   # reduced
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models.config import ModelConfig, TrainConfig  # noqa: E402
from models.marginal import evaluate_dataset  # noqa: E402
from models.training import Trainer  # noqa: E402
from models.vae import VAE  # noqa: E402
from tasks.sources.builtin import FASHION_MNIST_DIR, load_fashion_mnist_source  # noqa: E402

CHECK_EVERY = 20  # steps between looks at the clock when training to a time budget


def load(folder: str, test_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(train [60000, 784], test [test_rows, 784]) float32 in {0, 1}, binarised once by seed 0."""
    data = load_fashion_mnist_source(folder)
    x = data.x.reshape(len(data.x), -1).astype(np.float32) / 255.0
    x = (x > np.random.default_rng(0).random(x.shape, dtype=np.float32)).astype(np.float32)
    is_test = data.fixed_split == "test"
    return x[~is_test], x[is_test][:test_rows]


def model_config(arch: str) -> ModelConfig:
    return ModelConfig(feature_shape=(28, 28), latent_dim=20, architecture=arch)


class Run:
    """One model, its trainer and its training clock (seconds spent in updates only)."""

    def __init__(self, arch: str, x_train: np.ndarray, batch: int, jit: bool):
        self.arch, self.batch = arch, batch
        self.vae = VAE(model_config(arch), seed=0)
        config = TrainConfig(batch_size=batch, jit_compile=jit)
        self.trainer = Trainer(self.vae, config, len(x_train))
        self.params = sum(int(np.prod(v.shape)) for v in self.vae.trainable_variables)
        xs = tf.constant(x_train)
        self.data = (
            tf.data.Dataset.range(len(x_train))
            .shuffle(len(x_train), seed=0, reshuffle_each_iteration=True)
            .batch(batch, drop_remainder=True)
            .map(lambda idx: tf.gather(xs, idx))
            .prefetch(2)
        )
        self.steps_per_epoch = len(x_train) // batch
        self.seconds, self.steps = 0.0, 0
        self.trainer.update(next(iter(self.data)))  # compile (not on the clock, not counted)

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch

    def train(self, epochs: int | None = None, until_seconds: float | None = None) -> None:
        """Whole epochs, or until the training clock reaches ``until_seconds``."""
        done = 0
        while epochs is None or done < epochs:
            it = iter(self.data)
            start = time.perf_counter()
            for i, batch in enumerate(it):
                ok = self.trainer.update(batch)
                self.steps += 1
                if i % CHECK_EVERY == 0 and until_seconds is not None:
                    bool(ok)  # wait for the step
                    if self.seconds + time.perf_counter() - start >= until_seconds:
                        break
            if not bool(ok):
                raise RuntimeError(f"{self.arch}: a non-finite update at step {self.steps}")
            self.seconds += time.perf_counter() - start
            done += 1
            if until_seconds is not None and self.seconds >= until_seconds:
                return

    @property
    def examples_per_second(self) -> float:
        return self.steps * self.batch / max(self.seconds, 1e-9)


def score(run: Run, x_test: np.ndarray, k: int) -> dict[str, float | np.ndarray]:
    start = time.perf_counter()
    batches = [x_test[i : i + 100] for i in range(0, len(x_test), 100)]
    result = evaluate_dataset(run.vae, batches, k, seed=0)
    seconds = time.perf_counter() - start
    lml = result.log_marginal
    return {
        "per_row": lml,
        "log_px": float(lml.mean()),
        "stderr": float(lml.std(ddof=1) / math.sqrt(len(lml))),
        "elbo": float(result.elbo_b.mean()),
        "is_rate": len(lml) * k / seconds,
    }


def clock(run: Run) -> tuple[float, float, float]:
    """(epochs, training seconds, examples/s) of ``run`` now."""
    return run.epochs, run.seconds, run.examples_per_second


def line(label: str, at: tuple[float, float, float], s: dict) -> str:
    epochs, seconds, rate = at
    return (
        f"{label:<24} {epochs:>6.2f} {seconds:>8.0f} {rate:>9,.0f} "
        f"{s['log_px']:>10.2f} {s['stderr']:>6.2f} {s['elbo']:>9.2f} {s['is_rate']:>11,.0f}"
    )


def paired(a: dict, b: dict) -> str:
    d = b["per_row"] - a["per_row"]
    return f"{d.mean():+.2f} +- {d.std(ddof=1) / math.sqrt(len(d)):.2f} nats"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=FASHION_MNIST_DIR, help="folder of the four IDX files")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--test-rows", type=int, default=10_000)
    ap.add_argument("-k", "--num-samples", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--no-jit", action="store_true", help="train without XLA (both models)")
    args = ap.parse_args()
    x_train, x_test = load(args.data, args.test_rows)
    jit = not args.no_jit
    print(
        f"cpus={os.cpu_count()} tensorflow {tf.__version__}; train {x_train.shape}, "
        f"test rows {len(x_test)}, K={args.num_samples}, XLA={jit}"
    )
    print(f"load average at start: {os.getloadavg()}")
    conv, mlp = Run("conv", x_train, args.batch, jit), Run("mlp", x_train, args.batch, jit)
    print(f"parameters: mlp {mlp.params:,}, conv {conv.params:,}")
    conv.train(epochs=args.epochs)
    print(f"conv trained {args.epochs} epochs in {conv.seconds:.0f} s; load {os.getloadavg()}")
    mlp.train(epochs=args.epochs)
    print(f"mlp trained {args.epochs} epochs in {mlp.seconds:.0f} s; load {os.getloadavg()}")
    mlp_epochs = clock(mlp)
    s_conv = score(conv, x_test, args.num_samples)
    s_mlp_epochs = score(mlp, x_test, args.num_samples)
    print(f"scored both; load {os.getloadavg()}")
    mlp.train(until_seconds=conv.seconds)
    print(
        f"mlp trained on to {mlp.seconds:.0f} s ({mlp.epochs:.2f} epochs); load {os.getloadavg()}"
    )
    s_mlp_time = score(mlp, x_test, args.num_samples)
    print(
        f"\n{'model (budget)':<24} {'epochs':>6} {'train s':>8} {'ex/s':>9} "
        f"{'log p(x)':>10} {'+-':>6} {'ELBO':>9} {'IS samp/s':>11}"
    )
    print(line(f"mlp  ({args.epochs} epochs)", mlp_epochs, s_mlp_epochs))
    print(line(f"conv ({args.epochs} epochs = T)", clock(conv), s_conv))
    print(line(f"mlp  (T = {conv.seconds:.0f} s)", clock(mlp), s_mlp_time))
    print(
        f"\nconv - mlp, same test rows: equal epochs {paired(s_mlp_epochs, s_conv)}; "
        f"equal wall time {paired(s_mlp_time, s_conv)}"
    )
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
