"""Test log p(x) of every likelihood on one 8-bit (integer-stored) dataset, before and after the
discrete conversion (numbers, not a test).

For each of bernoulli, gaussian and continuous_bernoulli, with the same model, epochs and seed:

- after (the product): `tasks.train.train` + `tasks.evaluate.evaluate` (IS, K samples). The
  continuous decoders train on dequantized inputs and report log P of the stored values
  (log density - D log L) with bits/dim; the Bernoulli decoder is shown with train.binarize none
  (its number is a Bernoulli cross-entropy of the intensities, a kind of its own) and dynamic
  (a log-probability of a fixed binarization);
- before (the protocol this replaces): the same model trained by `models.training.fit` on the
  stored values k / (L - 1) and evaluated by IS on them: a log-density of continuous values.

    .venv/bin/python bench/discrete_likelihoods.py [--source digits|mnist-5k] [--epochs 20] [-k 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))

from bench.machine import load  # noqa: E402


def before(root, manifest, model_cfg, train_cfg, k: int) -> float:
    """Train on the stored values and IS-evaluate them (no dequantization, no conversion)."""
    from models import constants as C
    from models.marginal import evaluate_dataset
    from models.training import fit
    from models.vae import VAE
    from tasks.store.streaming import make_tf_dataset

    name, version = manifest.name, manifest.version
    vae = VAE(model_cfg, seed=train_cfg.seed)

    def data(epoch):
        return make_tf_dataset(root, name, version, C.TRAIN, train_cfg.batch_size, shuffle=True,
                               seed=train_cfg.seed, epoch=epoch)  # fmt: skip

    valid = make_tf_dataset(root, name, version, C.VALID, 1000)
    fit(vae, data, valid, manifest.rows[C.TRAIN], train_cfg)
    test = make_tf_dataset(root, name, version, C.TEST, 500)
    return float(evaluate_dataset(vae, test, k, seed=0).summary()["log_marginal_likelihood"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="digits")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("-k", type=int, default=1000)
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--hidden", type=int, default=200)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="aevb-bench-discrete-")
    os.environ["AEVB_MLFLOW_DIR"] = os.path.join(tmp, "mlflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import flows.settings  # noqa: F401  (process defaults: telemetry off, quiet TF/MLflow)
    from models.config import ModelConfig, TrainConfig
    from tasks.evaluate import evaluate
    from tasks.ingest import ingest
    from tasks.store.datasets import load_manifest
    from tasks.train import train

    root = os.path.join(tmp, "data")
    ingested = ingest(args.source, "bench", root)
    m = load_manifest(root, "bench", ingested.version)
    d = m.input_dim
    print(
        f"dataset {args.source}: D={d}, rows {m.rows}, storage {m.storage_dtype} scale {m.scale:g}"
    )
    print(f"model: latent {args.latent_dim}, hidden [{args.hidden}], {args.epochs} epochs, "
          f"IS K={args.k}; load average at start {load()}")  # fmt: skip
    header = f"{'likelihood':<28}{'kind of number':<30}{'log p(x) nats':>14}{'bits/dim':>10}"
    rows = []
    for likelihood, binarize in (
        ("bernoulli", "none"),
        ("bernoulli", "dynamic"),
        ("gaussian", "none"),
        ("continuous_bernoulli", "none"),
    ):
        start = time.perf_counter()
        model = ModelConfig(latent_dim=args.latent_dim, hidden_sizes=(args.hidden,),
                            likelihood=likelihood)  # fmt: skip
        cfg = TrainConfig(epochs=args.epochs, batch_size=100, patience=0, binarize=binarize)
        out = train("bench", model, cfg, root)
        ev = evaluate(out.saved_model_dir, "bench", m.version, root, "test", args.k)
        label = likelihood if binarize == "none" else f"{likelihood} (binarize dynamic)"
        bpd = "" if ev.bits_per_dim is None else f"{ev.bits_per_dim:.3f}"
        rows.append(f"{label:<28}{ev.score_kind:<30}{ev.log_marginal_likelihood:>14.2f}{bpd:>10}")
        if likelihood != "bernoulli":
            model_d = ModelConfig(feature_shape=m.feature_shape, latent_dim=args.latent_dim,
                                  hidden_sizes=(args.hidden,), likelihood=likelihood)  # fmt: skip
            old = before(root, m, model_d, cfg, args.k)
            kind = f"log-density:{likelihood}"
            rows.append(f"{'  before: ' + likelihood:<28}{kind:<30}{old:>14.2f}{'':>10}")
        print(f"  {label}: {time.perf_counter() - start:.0f} s, load average {load()}", flush=True)
    print(header)
    print("\n".join(rows))
    print(f"load average at end {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
