"""Shared helpers for the MLflow/registry/plot tests: tiny seeded datasets and saved models.

Not a test module (leading underscore); imported by tests/tasks/test_{tracking,register,plots,...}.
"""

from __future__ import annotations

import os

import numpy as np

from models import constants as C

SPLIT_ROWS = {C.TRAIN: 120, C.VALID: 40, C.TEST: 40}


def write_dataset(
    root: str,
    name: str,
    feature_shape: tuple[int, ...] = (4, 4),
    seed: int = 0,
    rows: dict[str, int] | None = None,
    num_classes: int = 3,
) -> str:
    """Binary [0, 1] uint8 data with labels, written as one dataset version; returns the version."""
    from tasks.store.writer import DatasetWriter

    rng = np.random.default_rng(seed)
    d = int(np.prod(feature_shape))
    writer = DatasetWriter(
        root,
        name,
        feature_shape=feature_shape,
        storage_dtype="uint8",
        scale=1.0,
        split_seed=seed,
        source={"kind": "test", "uri": f"memory://{name}/{seed}", "sha256": ""},
    )
    with writer:
        for split, n in (rows or SPLIT_ROWS).items():
            labels = rng.integers(0, num_classes, n)
            # class-dependent Bernoulli means so that the data has structure to learn
            means = 0.15 + 0.7 * (np.arange(d)[None, :] % num_classes == labels[:, None])
            x = (rng.random((n, d)) < means).astype(np.uint8)
            writer.write(split, [f"{split}-{seed}-{i}" for i in range(n)], x, labels)
        return writer.commit().version


def save_untrained_model(
    path: str, feature_shape: tuple[int, ...] = (4, 4), latent_dim: int = 2, seed: int = 0
) -> str:
    """A randomly initialised VAE saved as an aevb SavedModel (enough for registry/serving tests)."""
    from models.config import ModelConfig
    from models.saved import save_model
    from models.vae import VAE

    config = ModelConfig(feature_shape=feature_shape, latent_dim=latent_dim, hidden_sizes=(32,))
    return save_model(VAE(config, seed=seed), os.fspath(path))
