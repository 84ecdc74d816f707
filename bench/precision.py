"""train.precision: float32 against mixed_bfloat16, speed and the log p(x) it costs (numbers only).

The same model (784-500-20-500-784 tanh, Bernoulli, batch 100, Adam, XLA step) trained from the
same initialisation on the same shuffled batches of Fashion-MNIST (ingested from the IDX files
into a temporary store; synthetic images when they are absent) for --epochs epochs in each
precision, the two alternating epoch by epoch so a change in the machine's load hits both. Per
precision: the steady epochs' CPU microseconds per example and examples/s (the first epoch
compiles and is left out), then the test log p(x) by importance sampling (K = --samples, float32
evaluation as `aevb evaluate` does) on --test-rows test rows, the same rows and seeds for both.
Prints the speed-up, the log p(x) difference with its standard error (paired over test rows),
and what the hardware offers for bfloat16 (models/precision.py `bfloat16_hardware`).

    .venv/bin/python bench/precision.py [--source DIR] [--epochs 10] [--samples 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.ingest_throughput import fashion_source  # noqa: E402
from bench.machine import describe_machine, load  # noqa: E402
from models.config import ModelConfig, TrainConfig  # noqa: E402
from models.marginal import evaluate_dataset  # noqa: E402
from models.precision import bfloat16_hardware  # noqa: E402
from models.training import Trainer, train_epoch  # noqa: E402
from models.vae import VAE  # noqa: E402
from tasks.ingest import ingest  # noqa: E402
from tasks.store.datasets import load_manifest  # noqa: E402
from tasks.store.readers import read_split  # noqa: E402
from tasks.store.streaming import make_tf_dataset  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", help="folder with Fashion-MNIST's IDX.gz files")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--samples", type=int, default=1000, help="importance samples per test row")
    ap.add_argument("--test-rows", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=0, help="batches per epoch (default: all)")
    args = ap.parse_args()
    print(describe_machine())
    hardware = bfloat16_hardware()
    print(f"bfloat16 hardware: {hardware or 'none (no GPU, no AMX-BF16/AVX512-BF16): emulated'}")
    with tempfile.TemporaryDirectory(prefix="aevb-bench-precision-") as work:
        folder, what = fashion_source(work, args.source)
        root = os.path.join(work, "data")
        ingest(folder, "fashion", root)
        manifest = load_manifest(root, "fashion")
        rows = manifest.rows["train"]
        model_cfg = ModelConfig(feature_shape=tuple(manifest.feature_shape), activation="tanh")
        print(f"{what}: {rows:,} training rows, {args.epochs} epochs each, batch 100")
        trainers = {
            p: Trainer(VAE(model_cfg, seed=0), TrainConfig(precision=p), rows) for p in PRECISIONS
        }
        cpu_us: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        rate: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for epoch in range(1, args.epochs + 1):
            for p, trainer in trainers.items():
                data = make_tf_dataset(
                    root, "fashion", None, "train", 100, shuffle=True, epoch=epoch
                )
                data = data.take(args.batches) if args.batches else data
                c = time.process_time()
                metrics = train_epoch(trainer, data, epoch)
                seen = min(rows, 100 * args.batches) if args.batches else rows
                if epoch > 1:  # the first epoch compiles
                    cpu_us[p].append((time.process_time() - c) / seen * 1e6)
                    rate[p].append(metrics["examples_per_second"])
            print(f"  epoch {epoch}: load average {load()}", flush=True)
        _, x_test, _ = read_split(root, "fashion", None, "test")
        x_test = x_test[: args.test_rows]
        log_px = {}
        for p, trainer in trainers.items():
            batches = tf.data.Dataset.from_tensor_slices(x_test).batch(100)
            result = evaluate_dataset(trainer.model, batches, num_samples=args.samples, seed=1)
            log_px[p] = np.asarray(result.log_marginal)
        report(cpu_us, rate, log_px, args)


def report(cpu_us, rate, log_px, args) -> None:
    print(f"\nsteady epochs (2..{args.epochs}), median (min-max); load average now {load()}")
    for p in PRECISIONS:
        print(
            f"  {p:<15} {statistics.median(cpu_us[p]):6.1f} CPU us/ex "
            f"({min(cpu_us[p]):.1f}-{max(cpu_us[p]):.1f}), {statistics.median(rate[p]):7,.0f} ex/s; "
            f"test log p(x) {log_px[p].mean():.3f} nats (K = {args.samples}, {len(log_px[p])} rows)"
        )
    f32, bf16 = PRECISIONS
    speed_cpu = statistics.median(cpu_us[f32]) / statistics.median(cpu_us[bf16])
    speed_wall = statistics.median(rate[bf16]) / statistics.median(rate[f32])
    diff = log_px[bf16] - log_px[f32]
    stderr = diff.std(ddof=1) / np.sqrt(len(diff))
    print(
        f"  mixed_bfloat16 speed-up: {speed_cpu:.2f}x by CPU per example, {speed_wall:.2f}x by "
        f"wall; log p(x) difference (bf16 - float32): {diff.mean():+.3f} +- {stderr:.3f} nats "
        f"after {args.epochs} equal epochs"
    )
    loses = max(-diff.mean(), 0.0)
    verdict = "could be" if loses < 0.5 and speed_cpu > 1 else "stays float32: it is not"
    print(
        f"  default {verdict} faster and within 0.5 nat here "
        f"(loss {loses:.3f} nat, speed-up {speed_cpu:.2f}x)"
    )


if __name__ == "__main__":
    main()
