"""Benchmark: importance samples per second for log p(x) at the paper architecture (issue 5).

    python bench/eval_throughput.py                 # steady state on 500 points, K=5000, extrapolated
    python bench/eval_throughput.py --full          # the real thing: 10,000 points x K=5000
    python bench/eval_throughput.py --sweep         # batch size x chunk rows x XLA grid (short runs)
    python bench/eval_throughput.py --ais           # AIS seconds per point (16 chains x 1000 steps)

A randomly initialised 784-500-20-500-784 tanh VAE with a Bernoulli decoder (the paper's MNIST
model) on synthetic binary data: throughput does not depend on the weights or the data values.
Target on a 2-core machine: K=5000 on 10,000 points in <= 10 min, i.e. >= 85,000 samples/s.
Prints numbers only; nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models.config import ModelConfig  # noqa: E402
from models.marginal import TARGET_CHUNK_ROWS, DatasetEvaluator, evaluate_dataset  # noqa: E402
from models.vae import VAE  # noqa: E402

D, H, K_LATENT = 784, 500, 20
# Multiply-adds per importance sample: decoder 20->500->784 (the encoder runs once per point).
FLOPS_PER_SAMPLE = 2 * (K_LATENT * H + H * D)


def paper_vae() -> VAE:
    config = ModelConfig(
        feature_shape=(28, 28),
        latent_dim=K_LATENT,
        hidden_sizes=(H,),
        activation="tanh",
        likelihood="bernoulli",
        init="paper",
    )
    return VAE(config, seed=0)


def synthetic_data(rows: int) -> np.ndarray:
    return (np.random.default_rng(0).random((rows, D)) < 0.13).astype(
        np.float32
    )  # MNIST-like sparsity


def batches(x: np.ndarray, batch_size: int):
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(args: argparse.Namespace) -> None:
    model = paper_vae()
    points = 10_000 if args.full else args.points
    x = synthetic_data(points)
    chunk = max(1, args.chunk_rows // args.batch_size)
    # Warm-up (tracing / XLA compilation) on one batch, excluded from the timing.
    evaluate_dataset(
        model,
        [x[: args.batch_size]],
        num_samples=min(args.k, 2 * chunk),
        seed=1,
        chunk_size=chunk,
        jit_compile=args.jit,
    )
    last = [time.perf_counter()]

    def progress(done: int) -> None:
        if args.full and time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"  {done}/{points} points", flush=True)

    load_before, cpu_start = os.getloadavg()[0], time.process_time()
    result = evaluate_dataset(
        model,
        batches(x, args.batch_size),
        num_samples=args.k,
        seed=0,
        chunk_size=chunk,
        jit_compile=args.jit,
        progress=progress,
    )
    cpu_seconds = time.process_time() - cpu_start
    rate = points * args.k / result.seconds
    print(
        f"points={points} K={args.k} batch={args.batch_size} chunk={chunk} (rows/step={chunk * args.batch_size}) "
        f"xla={args.jit} threads={args.threads or 'default'}"
    )
    print(f"  wall time            {result.seconds:8.1f} s")
    print(f"  importance samples/s {rate:12,.0f}   (target >= 85,000)")
    print(
        f"  10,000 pts x K=5000  {10_000 * 5000 / rate / 60:8.1f} min (extrapolated; target <= 10)"
    )
    print(
        f"  per CPU-second       {points * args.k / cpu_seconds:12,.0f}   (CPU used {cpu_seconds / result.seconds:.2f} cores "
        f"on average; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    print(
        f"  decoder GFLOP/s      {rate * FLOPS_PER_SAMPLE / 1e9:8.1f}   ({FLOPS_PER_SAMPLE / 1e6:.2f} MFLOP/sample)"
    )
    print(f"  peak RSS             {peak_rss_mb():8.0f} MB")
    print(
        f"  mean log p(x)        {result.summary()['log_marginal_likelihood']:10.2f} (random weights; not a result)"
    )


def time_config(
    model: VAE, x: np.ndarray, batch_size: int, rows: int, jit: bool, seconds: float
) -> tuple[float, float]:
    """(samples per wall-clock second, samples per CPU second of this process)."""
    evaluator = DatasetEvaluator(model, jit_compile=jit)
    xb = tf.constant(x[:batch_size])
    chunk = max(1, rows // batch_size)
    seed = tf.constant([0, 0])
    evaluator.evaluate_batch(xb, 2 * chunk, seed, chunk)  # compile
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        evaluator.evaluate_batch(xb, 4 * chunk, seed, chunk)
        done += 4 * chunk * batch_size
    return done / (time.perf_counter() - start), done / (time.process_time() - cpu)


def sweep(args: argparse.Namespace) -> None:
    model = paper_vae()
    x = synthetic_data(1000)
    print(
        "samples/s: wall clock; per CPU-s: per second of this process's CPU time (robust to other load)"
    )
    print(f"{'xla':>5} {'batch':>6} {'rows/step':>10} {'samples/s':>12} {'per CPU-s':>12}")
    for jit in (False, True):
        for batch_size in (50, 100, 500):
            for rows in (2500, 5000, 10000, 20000):
                rate, per_cpu = time_config(model, x, batch_size, rows, jit, args.seconds)
                print(
                    f"{jit!s:>5} {batch_size:>6} {rows:>10} {rate:12,.0f} {per_cpu:12,.0f}",
                    flush=True,
                )


def ais_cost(args: argparse.Namespace) -> None:
    """Seconds per point for AIS (and the App. D estimator at a 5-d latent) at the paper architecture."""
    from models.ais import ais_log_marginal

    model = paper_vae()
    x = tf.constant(synthetic_data(args.ais_points))
    seed = tf.constant([0, 0])
    for jit in (False, True):
        ais_log_marginal(
            model, x, seed, num_chains=args.ais_chains, num_steps=2, jit_compile=jit
        )  # compile
        start, cpu = time.perf_counter(), time.process_time()
        r = ais_log_marginal(
            model,
            x,
            seed,
            num_chains=args.ais_chains,
            num_steps=args.ais_steps,
            num_leapfrog_steps=10,
            jit_compile=jit,
        )
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(
            f"AIS xla={jit} points={args.ais_points} chains={args.ais_chains} steps={args.ais_steps} leapfrog=10: "
            f"{wall:.1f} s wall ({wall / args.ais_points:.2f} s/point, {cpu / args.ais_points:.2f} CPU-s/point), "
            f"acceptance {float(tf.reduce_mean(r.acceptance_rate)):.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=500, help="test points to time (default 500)")
    parser.add_argument(
        "--full", action="store_true", help="time all 10,000 points (about 10 minutes)"
    )
    parser.add_argument("-k", "--k", type=int, default=5000, help="importance samples per point")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--chunk-rows", type=int, default=TARGET_CHUNK_ROWS, help="samples x points per step"
    )
    parser.add_argument(
        "--no-jit", dest="jit", action="store_false", help="plain tf.function, no XLA"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="TF intra-op threads (0: TF default)"
    )
    parser.add_argument(
        "--sweep", action="store_true", help="grid over batch size, rows per step and XLA"
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="time per sweep cell")
    parser.add_argument("--ais", action="store_true", help="time AIS instead (seconds per point)")
    parser.add_argument("--ais-points", type=int, default=10)
    parser.add_argument("--ais-chains", type=int, default=16)
    parser.add_argument("--ais-steps", type=int, default=1000)
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.ais:
        ais_cost(args)
    elif args.sweep:
        sweep(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
