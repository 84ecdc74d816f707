"""What the anomaly-score columns cost: export with `elbo` (always on) and with `log_px` (IS, K
samples), against the encoder alone (numbers, not a test).

Data: synthetic uint8 28x28 rows (cost does not depend on pixel values). Model: the default MLP
(784-500-20, ReLU) or ``--architecture conv``, initial weights, saved, logged as a pyfunc and
registered in a temporary MLflow store, exactly what `aevb export` / `aevb score` resolve.
Timed on in-memory batches of ``--batch`` rows, each compiled once first: the encoder alone
(what export cost before the scores), the `elbo` column (one more decoder pass), and `log_px`
with K samples; then `export_latents` and `score_dataset` end to end (registry download,
compile, Parquet read and write, atomic publish). Load average before and after.

    .venv/bin/python bench/score_throughput.py
    .venv/bin/python bench/score_throughput.py --rows 5000 -k 1000 --architecture conv
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


def setup(tmp: str, rows: int, architecture: str) -> tuple[str, str, str]:
    """(data root, registry URI, local SavedModel dir)."""
    from models.config import ModelConfig
    from models.saved import save_model
    from models.vae import VAE
    from tasks import tracking
    from tasks.store.writer import DatasetWriter

    root = os.path.join(tmp, "data")
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
        x = rng.integers(0, 256, size=(rows, DIM), dtype=np.uint8)
        w.write("test", [f"r{i:06d}" for i in range(rows)], x, rng.integers(0, 10, rows))
        w.commit()
    vae = VAE(ModelConfig(feature_shape=SHAPE, latent_dim=20, architecture=architecture))
    saved = save_model(vae, os.path.join(tmp, "saved_model"))
    run_id = tracking.start_run("bench", "score-throughput")
    logged = tracking.log_pyfunc_model(run_id, saved, np.zeros((2, DIM), np.float32))
    tracking.register_model(logged, "bench-model", run_id)
    return root, "models:/bench-model/1", saved


def timed(fn, repeats: int = 1) -> float:
    fn()  # compile / warm up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000, help="rows exported / scored end to end")
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("-k", "--num-samples", type=int, default=100, help="K of log_px")
    ap.add_argument("--architecture", default="mlp", choices=("mlp", "conv"))
    args = ap.parse_args()
    print(f"cpus={os.cpu_count()} load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        os.environ["AEVB_MLFLOW_DIR"] = os.path.join(tmp, "mlflow")
        from tasks import export

        root, uri, saved = setup(tmp, args.rows, args.architecture)
        x = (np.random.default_rng(1).random((args.batch, DIM)) < 0.3).astype(np.float32)
        encode, scorer = export.make_encoder(saved), export.make_scorer(saved)
        mean, std = encode(x)
        eps = np.random.default_rng(2).standard_normal((1, *mean.shape), np.float32)
        b = args.batch
        t_enc = timed(lambda: encode(x), 5)
        t_elbo = timed(lambda: scorer.elbo(x, mean, std, eps), 5)
        t_px = timed(lambda: scorer.log_px(x, args.num_samples, [0, 0, 0, 0]))
        print(f"{args.architecture}, in-memory batches of {b} rows:")
        print(f"  encoder alone                  {b / t_enc:>10,.0f} rows/s")
        print(f"  elbo column (+1 decoder pass)  {b / t_elbo:>10,.0f} rows/s")
        print(f"  encoder + elbo                 {b / (t_enc + t_elbo):>10,.0f} rows/s")
        print(
            f"  log_px, K={args.num_samples:<5}             {b / t_px:>10,.0f} rows/s  "
            f"({b * args.num_samples / t_px:,.0f} samples/s)"
        )
        start = time.perf_counter()
        out = export.export_latents(uri, "bench", root, splits=("test",), batch_size=b)
        wall = time.perf_counter() - start
        print(
            f"  export_latents end to end      {out.rows / wall:>10,.0f} rows/s ({out.rows} rows)"
        )
        start = time.perf_counter()
        out = export.score_dataset(
            uri, "bench", root, splits=("test",), batch_size=b, log_px_samples=args.num_samples
        )
        wall = time.perf_counter() - start
        print(f"  score_dataset K={args.num_samples:<5} e2e      {out.rows / wall:>10,.0f} rows/s")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
