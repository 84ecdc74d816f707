"""Worker process for tests/models/test_distributed.py: train a tiny VAE and dump weights + losses.

    python tests/models/distributed_worker.py OUT_DIR --mode single|multi_worker|mirrored

`multi_worker` reads TF_CONFIG (set by the test); `single` uses the plain `models.training.fit`
with the same global batch, data order and config, as the reference. Data: a seeded binary
matrix with a low-rank structure, so the bound improves quickly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

ROWS, DIM, BATCH, EPOCHS = 480, 16, 48, 3


def make_data():
    import numpy as np

    rng = np.random.default_rng(7)
    z = rng.normal(size=(ROWS, 2))
    w = rng.normal(size=(2, DIM)) * 2.0
    p = 1.0 / (1.0 + np.exp(-(z @ w)))
    return (rng.uniform(size=p.shape) < p).astype("float32")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--mode", choices=("single", "multi_worker", "mirrored"), required=True)
    args = parser.parse_args()

    from models import distributed

    devices = distributed.split_local_cpu(2) if args.mode == "mirrored" else None
    # Strategies must exist before any other TF op of the process.
    strategy = None if args.mode == "single" else distributed.make_strategy(args.mode, devices)

    import numpy as np
    import tensorflow as tf

    from models.config import ModelConfig, TrainConfig
    from models.training import fit
    from models.vae import VAE

    x = make_data()
    model = VAE(ModelConfig(feature_shape=(DIM,), latent_dim=2, hidden_sizes=(32,)), seed=3)
    config = TrainConfig(
        epochs=EPOCHS, batch_size=BATCH, learning_rate=1e-2, patience=0, seed=5, jit_compile=False
    )

    def make_train_data(epoch: int) -> tf.data.Dataset:
        order = np.random.default_rng(epoch).permutation(ROWS)
        return tf.data.Dataset.from_tensor_slices(x[order]).batch(BATCH)

    if strategy is None:
        result = fit(model, make_train_data, None, ROWS, config)
    else:
        result = distributed.fit_distributed(model, make_train_data, None, ROWS, config, strategy)
    os.makedirs(args.out, exist_ok=True)
    np.savez(
        os.path.join(args.out, "weights.npz"),
        *[v.numpy() for v in model.trainable_variables],
    )
    with open(os.path.join(args.out, "history.json"), "w") as fh:
        json.dump(result.history, fh)


if __name__ == "__main__":
    main()
