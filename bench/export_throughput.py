"""Export and restoration throughput at the paper architecture on Fashion-MNIST-sized data
(numbers, not a test).

Data: the real Fashion-MNIST training images (60,000 x 28 x 28, via the built-in
`fashion-mnist` source) when Debian's dataset-fashion-mnist package is installed, else synthetic
uint8 images of the same size (throughput does not depend on pixel values; the script says which).
Model: the `paper` preset (784-500-20, tanh) with its initial weights - export and restoration
cost does not depend on the weights - saved, logged as a pyfunc and registered in a temporary
MLflow store, exactly what `aevb export` resolves.

Export: `tasks.export.export_latents` over the whole dataset, timed end to end (registry
download, model load, XLA compile, Parquet read/encode/write, atomic swap) and as the steady
streaming part alone (a second export into a fresh table with the encoder already compiled).
(tasks/export.py decodes Parquet on a read-ahead thread, overlapped with the encoder.)
Restoration: `models.restoration.Restorer` on ``--restore-rows`` rows in batches of 500 per
method (inpaint 50 %: amortized, map with 200 Adam steps, pseudo-gibbs / mwg with 200
iterations; denoise and 2x superres: map), after one warm-up batch that compiles.

    .venv/bin/python bench/export_throughput.py
    .venv/bin/python bench/export_throughput.py --rows 20000 --restore-rows 1000
    .venv/bin/python bench/export_throughput.py --cli --no-restore   # + `aevb export`, ratios

The ratios line divides each export rate by the encoder-only rate (the issue's target: >= 0.5).
By default the export also computes the `elbo` column (one decoder pass per row, as much work
as the encoder at this architecture), so its ceiling is about half the encoder-only rate; the
codes-only table (`export.elbo = false`, `aevb export --no-elbo`) is measured beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

SHAPE, DIM = (28, 28), 784


def make_dataset(root: str, rows: int) -> str:
    """Ingest Fashion-MNIST if installed, else write synthetic rows; returns a description."""
    from tasks.sources.builtin import FASHION_MNIST_DIR
    from tasks.store.writer import DatasetWriter

    if os.path.isdir(FASHION_MNIST_DIR):
        from tasks.ingest import ingest

        ingest("fashion-mnist", "bench", root)
        return f"real Fashion-MNIST from {FASHION_MNIST_DIR}"
    rng = np.random.default_rng(0)
    w = DatasetWriter(
        root,
        "bench",
        feature_shape=SHAPE,
        storage_dtype="uint8",
        scale=1 / 255,
        split_seed=0,
        source={"kind": "synthetic"},
    )
    with w:
        for start in range(0, rows, 10_000):
            n = min(10_000, rows - start)
            x = rng.integers(0, 256, size=(n, DIM), dtype=np.uint8)
            w.write("train", [f"r{start + i:06d}" for i in range(n)], x, rng.integers(0, 10, n))
        w.commit()
    return f"synthetic uint8 {rows} x {DIM} (Fashion-MNIST not installed at {FASHION_MNIST_DIR})"


def register_paper_model(tmp: str) -> tuple[str, object]:
    from models.config import PRESETS, ModelConfig
    from models.saved import save_model
    from models.vae import VAE
    from tasks import tracking

    config = ModelConfig(feature_shape=SHAPE, latent_dim=20, **PRESETS["paper"]["model"])
    vae = VAE(config)
    saved = save_model(vae, os.path.join(tmp, "saved_model"))
    run_id = tracking.start_run("bench", "export-throughput")
    example = np.zeros((2, DIM), np.float32)
    uri = tracking.log_pyfunc_model(run_id, saved, example)
    mv = tracking.register_model(uri, "aevb-bench", run_id)
    return f"models:/aevb-bench/{mv.version}", vae


def _timed(fn):
    """(result, wall seconds, process CPU seconds) of fn()."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def _line(label: str, rows: int, wall: float, cpu: float) -> float:
    """Print one row; returns its wall rate (rows/s)."""
    cores = os.cpu_count() or 1
    print(f"  {label:<58} {rows / wall:10,.0f} rows/s ({wall:6.2f} s wall; "
          f"cpu-bound {rows * cores / cpu:10,.0f} rows/s)")  # fmt: skip
    return rows / wall


def bench_cli(root: str, tmp: str, uri: str, batch: int, rows: int, *extra: str) -> float:
    """`aevb export` as users run it (a fresh process: imports, Prefect's temporary server,
    registry lookup, model download, compile, the stream); --seed 1 makes it a new table."""
    import subprocess

    env = {**os.environ, "PREFECT_HOME": os.path.join(tmp, "prefect")}
    env.pop("PREFECT_API_URL", None)
    aevb = os.path.join(os.path.dirname(sys.executable), "aevb")
    cmd = [aevb, "export", "--model", uri, "--dataset", "bench", "--data-root", root,
           "--batch-size", str(batch), "--seed", "1", *extra]  # fmt: skip
    t = time.perf_counter()
    before = os.times()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - t, os.times()
    if proc.returncode != 0:
        print(f"  aevb export failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return 0.0
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    label = " ".join(("`aevb export", *extra)) + "` (whole command, a fresh process)"
    return _line(label, rows, wall, cpu)


def bench_export(root: str, uri: str, batch: int) -> tuple[int, float, float, float, float]:
    """End to end, then the streaming part alone (read + encode + write, encoder compiled) with
    and without the elbo column, then the encoder alone on in-memory batches (the upper bound);
    returns (rows, end to end, streaming, streaming codes only, encoder only)."""
    import json
    import tempfile

    from models import constants as C
    from tasks import export, tracking
    from tasks.store import datasets, readers

    out, wall, cpu = _timed(lambda: export.export_latents(uri, "bench", root, batch_size=batch))
    print(f"export of {out.rows} rows, batch {batch}:")
    end_to_end = _line(
        "end to end (registry download, XLA compile, read, write)", out.rows, wall, cpu
    )
    saved = tracking.resolve_model(uri).saved_model_dir
    encode = export.make_encoder(saved)
    manifest = datasets.load_manifest(root, "bench")
    _, x, _ = next(readers.iter_batches(root, "bench", manifest.version, C.TRAIN, batch))
    encode(x)  # compile for the full batch shape
    latent_dim = encode(x[:1])[0].shape[1]
    parts = [
        (s, p) for s in C.SPLITS for p in readers.split_files(root, "bench", manifest.version, s)
    ]

    def stream(elbo: bool = True) -> int:
        provenance = json.dumps({"latent_dim": latent_dim, "samples": 0, "elbo": elbo})
        with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
            return sum(
                export.encode_part(saved, part, f"{tmp}/part-{i:05d}.parquet", split,
                                   manifest.to_json(), provenance, batch, [0, 0, i])
                for i, (split, part) in enumerate(parts)
            )  # fmt: skip

    rows, wall, cpu = _timed(stream)
    streaming = _line("streaming: Parquet read + encode + elbo + Parquet write", rows, wall, cpu)
    rows, wall, cpu = _timed(lambda: stream(elbo=False))
    codes = _line("streaming, codes only (export.elbo = false)", rows, wall, cpu)
    n = max(1, rows // len(x))
    _, wall, cpu = _timed(lambda: [encode(x) for _ in range(n)])
    encoder = _line("encoder only (in-memory batches)", n * len(x), wall, cpu)
    scorer = export.make_scorer(saved)
    eps = np.random.default_rng(0).standard_normal((1, len(x), latent_dim), np.float32)
    _, wall, cpu = _timed(lambda: [scorer.elbo(x, *encode(x), eps) for _ in range(n)])
    compute = _line("encoder + elbo column (in-memory batches)", n * len(x), wall, cpu)
    print(
        f"  streaming / (encoder + elbo) {streaming / compute:.2f}: what reading and writing cost"
    )
    print(f"  streaming codes only / encoder {codes / encoder:.2f}: what reading and writing cost")
    return out.rows, end_to_end, streaming, codes, encoder


def bench_restore(vae, x: np.ndarray, batch: int = 500) -> None:
    import tensorflow as tf

    from models.degradations import DegradationSpec, degrade
    from models.restoration import Restorer

    cases = [("inpaint", m) for m in ("amortized", "map", "pseudo_gibbs", "mwg")]
    cases += [("gaussian", "map"), ("superres", "map")]
    print(f"restoration, {len(x)} rows in batches of {batch} (200 MAP steps / chain iterations):")
    for kind, method in cases:
        spec = DegradationSpec(kind, SHAPE, noise_std=0.2 if kind != "inpaint" else None)
        restorer = Restorer(vae, spec)
        batches = []
        for i in range(0, len(x), batch):
            y, mask = degrade(spec, x[i : i + batch], tf.constant([0, i]))
            batches.append((y, mask))
        restorer.restore(method, *batches[0])  # compile
        t, c = time.perf_counter(), time.process_time()
        for i, (y, mask) in enumerate(batches):
            restorer.restore(method, y, mask, tf.constant([1, i]))
        dt = time.perf_counter() - t
        _line(f"{kind} {method}", len(x), dt, time.process_time() - c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=70_000, help="synthetic rows (no Fashion-MNIST)")
    ap.add_argument("--cli", action="store_true", help="also time `aevb export` (a new process)")
    ap.add_argument("--no-restore", action="store_true", help="export only")
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--restore-rows", type=int, default=2000)
    args = ap.parse_args()
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # one Restorer per case retraces by design
    with tempfile.TemporaryDirectory(prefix="aevb-bench-export-") as tmp:
        os.environ["AEVB_MLFLOW_DIR"] = os.path.join(tmp, "mlflow")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        root = os.path.join(tmp, "data")
        print(f"cpus={os.cpu_count()} load average before: {os.getloadavg()}  "
              f"tensorflow {tf.__version__}")  # fmt: skip
        print(f"data: {make_dataset(root, args.rows)}; model: paper preset 784-500-20 tanh")
        uri, vae = register_paper_model(tmp)
        rows, end_to_end, streaming, codes, encoder = bench_export(root, uri, args.batch_size)
        cli = bench_cli(root, tmp, uri, args.batch_size, rows) if args.cli else 0.0
        cli_codes = bench_cli(root, tmp, uri, args.batch_size, rows, "--no-elbo") if args.cli else 0.0  # fmt: skip
        print(f"ratios to the encoder pass alone (target >= 0.50), load {os.getloadavg()}:")
        print(f"  export stage end to end {end_to_end / encoder:.2f}; streaming part "
              f"{streaming / encoder:.2f}; streaming, codes only {codes / encoder:.2f}"
              + (f"; `aevb export` {cli / encoder:.2f}, --no-elbo {cli_codes / encoder:.2f}" if cli else ""))  # fmt: skip
        if args.no_restore:
            return
        rng = np.random.default_rng(1)
        x = (rng.integers(0, 256, size=(args.restore_rows, DIM)) / 255).astype(np.float32)
        bench_restore(vae, x)
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
