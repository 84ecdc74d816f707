"""What logging the pyfunc model costs a training run (numbers, not a test).

`tasks.train.train` logs the model to its MLflow run (`runs:/<run id>/model`). This trains
digits (the default config, ``--epochs``) in a temporary data root and MLflow store through the
task API (no Prefect server, so the number is not drowned by a server start), then logs the same
SavedModel ``--repeats`` more times to fresh runs, which is exactly the step training added.
Prints the training wall time, the logging times and their share; load average before and after.

    .venv/bin/python bench/train_model_logging.py
    .venv/bin/python bench/train_model_logging.py --epochs 10 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aevb-bench-log-") as tmp:
        os.environ["AEVB_MLFLOW_DIR"] = os.path.join(tmp, "mlflow")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        from models.config import ModelConfig, TrainConfig
        from tasks import run_records, tracking
        from tasks.ingest import ingest
        from tasks.store import datasets
        from tasks.train import train

        root = os.path.join(tmp, "data")
        ingest("digits", "digits", root)
        print(f"load average before: {os.getloadavg()}")
        start = time.perf_counter()
        out = train(
            "digits",
            ModelConfig(),
            TrainConfig(epochs=args.epochs),
            data_root=root,
            checkpoint_root=os.path.join(tmp, "ckpt"),
        )
        total = time.perf_counter() - start
        manifest = datasets.load_manifest(root, "digits")
        seconds = []
        for i in range(args.repeats):
            run_id = tracking.start_run("aevb-bench", f"log-{i}")
            t0 = time.perf_counter()
            run_records.log_model(run_id, out.saved_model_dir, root, manifest)
            seconds.append(time.perf_counter() - t0)
        med = statistics.median(seconds)
        print(f"train(): {total:.1f} s for {args.epochs} epochs, model logging included")
        print(
            f"log_model: median {med:.1f} s over {args.repeats} ({', '.join(f'{s:.1f}' for s in seconds)})"
        )
        print(f"share of train(): {med / total:.0%}")
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
