"""Sample stage: generation from a registry model, x ~ p(z) p(x|z), as a table and pictures.

    <root>/samples/<registered-name>/v<model-version>/seed<S>-n<N>[-draws]/
        samples.parquet   id, z_0..z_{k-1} (float32), x_mean (D float32) = E[x|z],
                          and with draws x_draw (D float32) ~ p(x|z)
        grid.png          the first 64 decoder means (images; per-feature profiles otherwise)
        grid_draws.png    the same for the draws (with draws only)
        manifold.png      2-D latent spaces only: E[x|z] on z = Phi^-1(u), u on an even n x n grid
                          of (0, 1)^2, Phi the standard normal CDF (the paper's Fig. 4)
    <...>/seed<S>-n<N>[-draws].manifest.json   provenance, settings, files, value ranges

z ~ N(0, I) comes from numpy's PCG64 seeded by ``seed`` (so the first rows of a larger N are the
rows of a smaller one); draws use TF's stateless sampler keyed by (seed, batch). Same model
version, settings and seed -> the same bytes; another seed -> other samples (the manifold picture
is a fixed grid of z: it depends on the model and manifold_size only). Values are in model
space (what the decoder's likelihood is defined on). The folder is published atomically
(tasks/store/publish.py) and logged to the model's MLflow run under
`samples/seed<S>-n<N>[-draws]/`; the same settings again are a no-op.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from models.config import SampleConfig
from tasks import plots, tracking
from tasks.logs import logger
from tasks.store import datasets, fs, publish, tables

DECODE_BATCH = 1000
ARTIFACT_DIR = "samples"
TABLE_FILE = "samples.parquet"
KEY_FIELDS = ("num_samples", "seed", "draws", "manifold_size")


@dataclass(frozen=True)
class SampleOutput:
    path: str
    rows: int
    files: tuple[str, ...]
    model_uri: str
    model_version: int | None
    run_id: str | None
    artifact_path: str | None  # where the files are in the MLflow run; None without a run
    created: bool


def sample_tag(num_samples: int, seed: int, draws: bool) -> str:
    return f"seed{seed}-n{num_samples}{'-draws' if draws else ''}"


def generate(vae, num_samples: int, seed: int, draws: bool):
    """(z [N, k], E[x|z] [N, D], x ~ p(x|z) [N, D] or None), decoded in batches."""
    import tensorflow as tf

    z = np.random.default_rng(seed).standard_normal((num_samples, vae.config.latent_dim))
    z = z.astype(np.float32)
    means, drawn = [], []
    for b, start in enumerate(range(0, num_samples, DECODE_BATCH)):
        zb = tf.constant(z[start : start + DECODE_BATCH])
        likelihood = vae.likelihood(zb)
        means.append(likelihood.mean().numpy())
        if draws:
            drawn.append(likelihood.sample(seed=tf.constant([seed, b + 1], tf.int32)).numpy())
    return z, np.concatenate(means), np.concatenate(drawn) if draws else None


def write_files(
    vae, out_dir: str, num_samples: int, seed: int, draws: bool, manifold_size: int, meta: dict
) -> dict[str, Any]:
    """Write the table and the pictures into the local folder ``out_dir``; returns the ranges."""
    import tensorflow as tf

    shape = vae.config.feature_shape
    z, x_mean, x_draw = generate(vae, num_samples, seed, draws)
    schema = tables.samples_schema(z.shape[1], x_mean.shape[1], draws, meta)
    fs.write_parquet(tables.samples_table(schema, z, x_mean, x_draw), f"{out_dir}/{TABLE_FILE}")
    plots.plot_samples(x_mean, shape, f"{out_dir}/grid.png", title="E[x|z], z ~ p(z)")
    ranges = {"x_mean": [float(x_mean.min()), float(x_mean.max())]}
    if x_draw is not None:
        plots.plot_samples(x_draw, shape, f"{out_dir}/grid_draws.png", title="x ~ p(x|z)")
        ranges["x_draw"] = [float(x_draw.min()), float(x_draw.max())]
    if z.shape[1] == 2:
        grid = tf.constant(plots.manifold_latents(manifold_size))
        decoded = vae.decode_mean(grid).numpy()
        plots.plot_manifold(decoded, manifold_size, shape, f"{out_dir}/manifold.png")
    return ranges


def sample_model(
    model_uri: str,
    num_samples: int = 64,
    seed: int = 0,
    draws: bool = False,
    manifold_size: int = 20,
    data_root: str | None = None,
    log_to_mlflow: bool = True,
) -> SampleOutput:
    """Draw ``num_samples`` z ~ p(z), decode them, publish the folder and log it to MLflow."""
    SampleConfig(num_samples, seed, draws, manifold_size)  # validates: "sample.<field>=..."
    root = datasets.resolve_data_root(data_root)
    resolved = tracking.resolve_model(model_uri)
    name = resolved.name or "unregistered"
    number = resolved.version if resolved.version is not None else (resolved.run_id or "0")
    tag = sample_tag(num_samples, seed, draws)
    final = tables.samples_path(root, name, number, tag)
    key = {"num_samples": num_samples, "seed": seed, "draws": draws, "manifold_size": manifold_size}
    artifact_path = f"{ARTIFACT_DIR}/{tag}" if resolved.run_id and log_to_mlflow else None
    publish.recover(final)
    existing = tables.read_manifest(final)
    if existing and {k: existing.get(k) for k in KEY_FIELDS} == key:
        logger().info("sample: %s already holds these samples", final)
        return SampleOutput(
            final,
            num_samples,
            tuple(existing["files"]),
            model_uri,
            resolved.version,
            resolved.run_id,
            artifact_path,
            False,
        )

    from models.saved import load_vae

    vae = load_vae(resolved.saved_model_dir)
    meta = {
        "model_uri": model_uri,
        "model_name": name,
        "model_version": resolved.version,
        "run_id": resolved.run_id,
        "likelihood": vae.config.likelihood,
        **key,
    }
    with tempfile.TemporaryDirectory(prefix="aevb-sample-") as tmp:
        ranges = write_files(vae, tmp, num_samples, seed, draws, manifold_size, meta)
        files = tuple(sorted(os.listdir(tmp)))

        def fill(stage: str) -> dict[str, Any]:
            for f in files:
                with open(os.path.join(tmp, f), "rb") as fh:
                    fs.write_bytes(fs.join(stage, f), fh.read())
            return {**meta, "rows": num_samples, "files": list(files), "value_range": ranges}

        tables.publish_table(final, fill)
        if artifact_path is not None:
            tracking.log_artifacts(resolved.run_id, tmp, artifact_path)
    logger().info("sample: wrote %d samples to %s", num_samples, final)
    return SampleOutput(
        final, num_samples, files, model_uri, resolved.version, resolved.run_id, artifact_path, True
    )


def read_samples(path: str) -> dict[str, Any]:
    """The sample table of a folder written by `sample_model`: z [N, k], x_mean (, x_draw) [N, D]."""
    table = fs.read_parquet(fs.join(path, TABLE_FILE))
    k = sum(n.startswith("z_") for n in table.column_names)
    out = {"z": np.stack([table.column(f"z_{i}").to_numpy() for i in range(k)], axis=1)}
    for name in ("x_mean", "x_draw"):
        if name in table.column_names:
            dim = table.schema.field(name).type.list_size
            out[name] = tables.decode_x(table.column(name), "float32", dim)
    out["meta"] = json.loads(table.schema.metadata[b"aevb.samples"])
    return out


sample_task = task(sample_model, name="sample", cache_policy=NO_CACHE)
