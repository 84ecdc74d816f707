"""Ingest and input-pipeline benchmark: prints numbers, asserts nothing.

1. Fashion-MNIST IDX -> Parquet dataset, MB/s of decoded pixels (70,000 x 784 uint8 = 54.9 MB),
   against pyarrow alone doing the same from the same .gz files (gunzip -> arrays -> one
   pq.write_table) in the store's layout and in the fastest-writing one (bench/storage_layouts.py
   compares every layout). Uses --source DIR, else /usr/share/datasets/fashion-mnist when
   present, else synthetic IDX files of the same size.
2. One shuffled training epoch through make_tf_dataset, examples/s: streaming vs in-memory.
3. Peak RSS (ru_maxrss) of a fresh process streaming one shuffled epoch of a synthetic
   1,000,000 x 784 uint8 dataset vs a 60,000-row one (same code path, in_memory=False).

Usage: python bench/ingest_throughput.py [--source DIR] [--workdir DIR] [--big-rows 1000000]
       [--repeats 3] [--skip-rss]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from bench.machine import describe_machine, load  # noqa: E402
from tasks.ingest import ingest  # noqa: E402
from tasks.sources.builtin import FASHION_MNIST_DIR  # noqa: E402
from tasks.sources.idx import write_idx  # noqa: E402
from tasks.store import datasets as ds  # noqa: E402
from tasks.store import streaming  # noqa: E402
from tasks.store.writer import DatasetWriter  # noqa: E402

PIXELS = 28 * 28


def synthetic_images(n: int, seed: int) -> np.ndarray:
    """Fashion-MNIST-like uint8 images: a bright blob on a zero background (about half zeros)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    out = np.empty((n, 28, 28), np.uint8)
    for start in range(0, n, 10_000):
        m = min(10_000, n - start)
        cy, cx = rng.uniform(10, 18, (2, m, 1, 1))
        ry, rx = rng.uniform(6, 12, (2, m, 1, 1))
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        texture = rng.integers(60, 256, (m, 28, 28))
        out[start : start + m] = np.where(inside, texture, 0)
    return out


def fashion_source(workdir: str, source: str | None = None) -> tuple[str, str]:
    for folder in (source, FASHION_MNIST_DIR):
        if folder and os.path.isfile(os.path.join(folder, "train-images-idx3-ubyte.gz")):
            return folder, f"real Fashion-MNIST ({folder})"
    folder = os.path.join(workdir, "fashion-synthetic")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        rng = np.random.default_rng(0)
        for prefix, n in (("train", 60_000), ("t10k", 10_000)):
            write_idx(
                os.path.join(folder, f"{prefix}-images-idx3-ubyte"),
                synthetic_images(n, len(prefix)),
            )
            write_idx(
                os.path.join(folder, f"{prefix}-labels-idx1-ubyte"),
                rng.integers(0, 10, n).astype(np.uint8),
            )
            for kind in ("images-idx3", "labels-idx1"):  # gzip like the distributed files
                raw = os.path.join(folder, f"{prefix}-{kind}-ubyte")
                with open(raw, "rb") as src, gzip.open(raw + ".gz", "wb", compresslevel=6) as dst:
                    shutil.copyfileobj(src, dst)
                os.remove(raw)
    return folder, "synthetic Fashion-MNIST-sized IDX (real files not installed)"


def _timed(fn) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def bench_ingest(workdir: str, repeats: int, source: str | None) -> str:
    """The product's ingest vs pyarrow alone on the same files, interleaved A B C A B C ..."""
    from bench.storage_layouts import LAYOUTS, NOW, pyarrow_from_gz

    folder, what = fashion_source(workdir, source)
    mb = 70_000 * PIXELS / 1e6
    fastest = LAYOUTS[-1]  # uncompressed binary: the cheapest write measured
    ingest(folder, "warm-up", os.path.join(workdir, "warm"))  # imports, file digests cached
    runs: dict[str, list[tuple[float, float]]] = {"aevb": [], "now": [], "fastest": []}
    for r in range(repeats):
        root = os.path.join(workdir, f"ingest-root-{r}")
        shutil.rmtree(root, ignore_errors=True)
        runs["aevb"].append(_timed(lambda root=root: ingest(folder, "fashion", root)))
        for key, layout in (("now", NOW), ("fastest", fastest)):
            path = os.path.join(workdir, f"pyarrow-{key}.parquet")
            runs[key].append(_timed(lambda layout=layout, path=path: pyarrow_from_gz(folder, layout, path)))  # fmt: skip
    med = {k: (np.median([w for w, _ in v]), np.median([c for _, c in v])) for k, v in runs.items()}
    print(
        f"[1] IDX.gz -> Parquet ({what}): {mb:.1f} MB of pixels; median of {repeats}; "
        f"load average {load()}"
    )
    rows = (
        ("aevb ingest (gunzip, checks, split, hash, write, publish)", "aevb"),
        (f"pyarrow alone, {NOW.name}", "now"),
        (f"pyarrow alone, {fastest.name}", "fastest"),
    )
    for label, key in rows:
        wall, cpu = med[key]
        print(
            f"    {label:<58} wall {wall:5.2f} s = {mb / wall:4.0f} MB/s; "
            f"CPU {cpu:5.2f} s = {mb / cpu:4.0f} MB per CPU-s"
        )
    for key in ("now", "fastest"):
        print(
            f"    aevb ingest / pyarrow alone ({key} layout): "
            f"{med[key][1] / med['aevb'][1]:.0%} by CPU, {med[key][0] / med['aevb'][0]:.0%} "
            "by wall (target >= 80%)"
        )
    return os.path.join(workdir, "ingest-root-0")


def paper_sized_step():
    """A compiled forward+backward pass of a 784-500-20(x2)-500-784 MLP: the paper's model cost."""
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(0)
    shapes = [(784, 500), (500, 40), (20, 500), (500, 784)]
    ws = [tf.Variable(rng.normal(s, stddev=0.01)) for s in shapes]

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            h = tf.tanh(x @ ws[0])
            z = (h @ ws[1])[:, :20]
            logits = tf.tanh(z @ ws[2]) @ ws[3]
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits))
        for w, g in zip(ws, tape.gradient(loss, ws), strict=True):
            w.assign_sub(0.01 * g)
        return loss

    return step


def epoch_rate(
    root: str, name: str, in_memory: bool, step=None, epochs: int = 3, batch: int = 100
) -> tuple[float, float]:
    """(examples/s, CPU-s per epoch) of the best of ``epochs`` shuffled epochs (first = warm-up)."""
    best = (0.0, 0.0)
    for epoch in range(epochs):
        d = streaming.make_tf_dataset(
            root, name, None, "train", batch, shuffle=True, seed=0, epoch=epoch, in_memory=in_memory
        )
        t, c, n = time.perf_counter(), time.process_time(), 0
        for b in d:
            n += int(b.shape[0])
            if step is not None:
                step(b)
        rate = n / (time.perf_counter() - t)
        best = max(best, (rate, time.process_time() - c))
    return best


def bench_streaming(root: str) -> None:
    rows = ds.load_manifest(root, "fashion").rows["train"]
    print(
        f"[2] one shuffled epoch, {rows} x 784, batch 100 (float32 model inputs out of tf.data); "
        f"load average {load()}"
    )
    mem, mem_cpu = epoch_rate(root, "fashion", in_memory=True)
    stream, stream_cpu = epoch_rate(root, "fashion", in_memory=False)
    print(
        f"    input pipeline alone: in-memory {mem:,.0f} ex/s ({mem_cpu:.2f} CPU-s/epoch); "
        f"streaming {stream:,.0f} ex/s ({stream_cpu:.2f} CPU-s/epoch) = {stream / mem:.0%}"
    )
    step = paper_sized_step()
    mem, _ = epoch_rate(root, "fashion", in_memory=True, step=step)
    stream, _ = epoch_rate(root, "fashion", in_memory=False, step=step)
    print(
        f"    feeding a paper-sized train step: in-memory {mem:,.0f} ex/s; streaming {stream:,.0f} ex/s "
        f"= {stream / mem:.0%} of in-memory (target >= 90%: within 10%)"
    )


def write_big(root: str, name: str, rows: int) -> None:
    """A synthetic rows x 784 uint8 dataset written chunk by chunk (never all in memory)."""
    if ds.current_version(root, name):
        return
    writer = DatasetWriter(
        root, name, feature_shape=(28, 28), storage_dtype="uint8", scale=1 / 255, split_seed=0,
        source={"kind": "synthetic", "rows": rows},
    )  # fmt: skip
    with writer:
        for start in range(0, rows, 20_000):
            m = min(20_000, rows - start)
            ids = [f"s{k:07d}" for k in range(start, start + m)]
            writer.write("train", ids, synthetic_images(m, start), None)
        writer.commit()


RSS_CHILD = """
import os, resource, sys, time, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, {repo!r})
from tasks.store import datasets as ds  # noqa: E402
from tasks.store import streaming
from tasks.store.writer import DatasetWriter
import tensorflow as tf
d = streaming.make_tf_dataset({root!r}, {name!r}, None, "train", 100, shuffle=True, in_memory=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t, n = time.perf_counter(), 0
for b in d:
    n += int(b.shape[0])
elapsed = time.perf_counter() - t
print(json.dumps({{"rows": n, "seconds": elapsed, "rss_before_kb": before,
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def bench_rss(workdir: str, big_rows: int) -> None:
    root = os.path.join(workdir, "rss-root")
    t = time.perf_counter()
    for name, rows in (("small", 60_000), ("big", big_rows)):
        write_big(root, name, rows)
    print(
        f"[3] peak RSS streaming one shuffled epoch (datasets written chunked in {time.perf_counter() - t:.0f} s)"
    )
    results = {}
    for name in ("small", "big"):
        code = RSS_CHILD.format(repo=REPO, root=root, name=name)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        results[name] = r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"    {r['rows']:>9,} rows: peak RSS {r['peak_rss_kb'] / 1024:.0f} MB "
            f"(after TF import + pipeline build {r['rss_before_kb'] / 1024:.0f} MB), "
            f"{r['rows'] / r['seconds']:,.0f} ex/s"
        )
    ratio = results["big"]["peak_rss_kb"] / results["small"]["peak_rss_kb"]
    print(f"    big/small peak RSS = {ratio:.3f} (target <= 1.10)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", help="keep generated files here (default: a temp dir, removed)"
    )
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--source", help="folder with Fashion-MNIST's IDX.gz files")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="aevb-bench-ingest-")
    print(describe_machine())
    os.makedirs(workdir, exist_ok=True)
    try:
        root = bench_ingest(workdir, args.repeats, args.source)
        bench_streaming(root)
        if not args.skip_rss:
            bench_rss(workdir, args.big_rows)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
