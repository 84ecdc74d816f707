"""Steady-state training throughput of the AEVB step (numbers, not a test).

Synthetic 60,000 x 784 binary data held in memory; batches come from a tf.data pipeline that
shuffles indices and gathers whole batches. For each setting: compile and warm up, then time
``--repeats`` windows of ``--steps`` compiled optimiser steps (batches fetched beforehand) and
print, in examples/s, the median and best window and one pass of the real epoch loop
(`models.training.train_epoch`: tf.data, NaN guard, metrics) over as many steps; the
matmul FLOPs per example (forward + backward; elementwise ops not counted) and the GFLOP/s
achieved at the median; and the process CPU time per example. The machine may be shared, so the
load average is printed before and after, and "cpu-bound ex/s" = cores / CPU-seconds per example:
the rate the step would reach with every core to itself (an upper estimate assuming perfect
parallel scaling; report it beside the wall-clock numbers, never instead of them).

    .venv/bin/python bench/train_throughput.py                    # paper (XLA on/off) + fast
    .venv/bin/python bench/train_throughput.py --settings paper --repeats 7
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models.config import PRESETS, ModelConfig, TrainConfig  # noqa: E402
from models.training import Trainer, train_epoch  # noqa: E402
from models.vae import VAE  # noqa: E402

NUM_TRAIN, DIM = 60_000, 784


def setting(preset: str, jit: bool, batch: int | None = None) -> tuple[ModelConfig, TrainConfig]:
    over = PRESETS[preset]
    model = ModelConfig(feature_shape=(DIM,), latent_dim=20, **over["model"])
    train = dataclasses.replace(TrainConfig(**over["train"]), jit_compile=jit)
    if batch:
        train = dataclasses.replace(train, batch_size=batch)
    return model, train


SETTINGS = {
    "paper": lambda: setting("paper", jit=True),
    "paper-nojit": lambda: setting("paper", jit=False),
    "fast": lambda: setting("fast", jit=True),
    "fast-nojit": lambda: setting("fast", jit=False),
}


def matmul_flops_per_example(model: ModelConfig) -> int:
    """2 * MACs of every dense layer, forward, weight-gradient and input-gradient passes.

    The input gradient of the first encoder layer is not needed (x is data), so it is not counted.
    """
    d, k, h = model.input_dim, model.latent_dim, model.hidden_sizes
    out = 2 * d if model.likelihood == "gaussian" else d
    enc = list(zip((d, *h), (*h, 2 * k), strict=True))
    dec = list(zip((k, *reversed(h)), (*reversed(h), out), strict=True))
    macs = sum(a * b for a, b in enc + dec)
    first_input_grad = d * (h[0] if h else 2 * k)
    return 2 * (3 * macs - first_input_grad)


def run(name: str, x: np.ndarray, steps: int, repeats: int) -> dict[str, float]:
    model_cfg, train_cfg = SETTINGS[name]()
    trainer = Trainer(VAE(model_cfg, seed=0), train_cfg, NUM_TRAIN)
    bs = train_cfg.batch_size
    xs = tf.constant(x)
    # Shuffle indices and gather whole batches: per-row slicing + batching costs more than the step.
    data = (
        tf.data.Dataset.range(NUM_TRAIN)
        .shuffle(NUM_TRAIN, seed=0)
        .batch(bs, drop_remainder=True)
        .map(lambda idx: tf.gather(xs, idx))
        .prefetch(2)
        .repeat()
    )
    it = iter(data)
    warm = tf.data.Dataset.from_tensors(next(it)).repeat(5)
    train_epoch(trainer, warm, 0)  # compile
    rates, cpu_per_example = [], []
    for _ in range(repeats):
        batches = [next(it) for _ in range(steps)]  # fetched first: the window times the step only
        start, cpu_start = time.perf_counter(), time.process_time()
        for b in batches:
            trainer.update(b)
        float(trainer.state.step.numpy())
        rates.append(steps * bs / (time.perf_counter() - start))
        cpu_per_example.append((time.process_time() - cpu_start) / (steps * bs))
    # The same steps through the real epoch loop (tf.data + guard + metrics) once, for comparison.
    loop_rate = train_epoch(trainer, data.take(steps), 1)["examples_per_second"]
    flops = matmul_flops_per_example(model_cfg)
    med = statistics.median(rates)
    return {
        "batch": bs,
        "jit": train_cfg.jit_compile,
        "median": med,
        "best": max(rates),
        "loop": loop_rate,
        "flops": flops,
        "gflops": med * flops / 1e9,
        "cpu_us": statistics.median(cpu_per_example) * 1e6,
        "ceiling": (os.cpu_count() or 1) / statistics.median(cpu_per_example),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["paper", "paper-nojit", "fast", "fast-nojit"],
        choices=sorted(SETTINGS),
    )
    ap.add_argument(
        "--steps", type=int, default=0, help="steps per window (default: 6000 examples)"
    )
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    x = (np.random.default_rng(0).random((NUM_TRAIN, DIM)) < 0.3).astype(np.float32)
    print(
        f"cpus={os.cpu_count()} load average before: {os.getloadavg()}  tensorflow {tf.__version__}"
    )
    header = (
        f"{'setting':<12} {'batch':>5} {'xla':>5} {'median ex/s':>12} {'best ex/s':>10} "
        f"{'loop ex/s':>10} {'MFLOP/ex':>9} {'GFLOP/s':>8} {'cpu us/ex':>10} {'cpu-bound ex/s':>15}"
    )
    print(header)
    for name in args.settings:
        bs = SETTINGS[name]()[1].batch_size
        steps = args.steps or max(6000 // bs, 10)
        r = run(name, x, steps, args.repeats)
        print(
            f"{name:<12} {r['batch']:>5} {str(r['jit']):>5} {r['median']:>12,.0f} {r['best']:>10,.0f} "
            f"{r['loop']:>10,.0f} {r['flops'] / 1e6:>9.2f} {r['gflops']:>8.1f} {r['cpu_us']:>10.1f} "
            f"{r['ceiling']:>15,.0f}",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
