"""Subprocess for tests/models/test_training_resume.py: one training run with a checkpoint dir.

    python tests/models/_resume_worker.py CKPT_DIR OUT_PREFIX EPOCHS [HANG_EPOCH HANG_STEP MARKER]

Trains a tiny VAE on seeded data with the default (XLA-compiled) step. With HANG_*, the data of
epoch HANG_EPOCH stops before its batch HANG_STEP: it writes MARKER and blocks, so the parent can
SIGKILL the process mid-epoch. On success writes OUT_PREFIX.npz (final weights) and OUT_PREFIX.json
(the TrainResult).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models.config import ModelConfig, TrainConfig  # noqa: E402
from models.training import fit  # noqa: E402
from models.vae import VAE  # noqa: E402

D, N, BATCH = 16, 200, 20


def main(argv: list[str]) -> None:
    ckpt_dir, out, epochs = argv[0], argv[1], int(argv[2])
    hang_epoch, hang_step, marker = (
        (int(argv[3]), int(argv[4]), argv[5]) if len(argv) > 3 else (0, 0, "")
    )
    rng = np.random.default_rng(0)
    x = (rng.random((N + 40, D)) < np.linspace(0.1, 0.9, D)).astype(np.float32)
    train, valid = x[:N], x[N:]

    def make_train_data(epoch: int) -> tf.data.Dataset:
        order = np.random.default_rng(epoch).permutation(N)

        def batches():
            for i in range(N // BATCH):
                if epoch == hang_epoch and i + 1 == hang_step:
                    with open(marker, "w") as fh:
                        fh.write(f"epoch {epoch} batch {i + 1}")
                    while True:  # the parent kills us here
                        time.sleep(1)
                yield train[order[i * BATCH : (i + 1) * BATCH]]

        return tf.data.Dataset.from_generator(
            batches, output_signature=tf.TensorSpec([BATCH, D], tf.float32)
        )

    model_cfg = ModelConfig(
        feature_shape=(D,), latent_dim=3, hidden_sizes=(24,), activation="tanh", init="paper"
    )
    train_cfg = dataclasses.replace(
        TrainConfig(),
        epochs=epochs,
        batch_size=BATCH,
        optimizer="adagrad",
        learning_rate=0.05,
        weight_decay=1.0,
        patience=0,
        seed=3,
    )
    model = VAE(model_cfg, seed=1)
    result = fit(
        model,
        make_train_data,
        tf.data.Dataset.from_tensor_slices(valid).batch(20),
        N,
        train_cfg,
        checkpoint_dir=ckpt_dir,
    )
    np.savez(out + ".npz", *[v.numpy() for v in model.trainable_variables])
    with open(out + ".json", "w") as fh:
        json.dump(dataclasses.asdict(result), fh)


if __name__ == "__main__":
    main(sys.argv[1:])
