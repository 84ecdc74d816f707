"""Export stage: posterior inference of z for every row -> a wide latent feature table.

    <root>/latents/<dataset>/<registered-name>/v<model-version>/part-<split>-<NNNNN>.parquet
    <root>/latents/<dataset>/<registered-name>/v<model-version>.manifest.json

One output part per dataset part file (`NNNNN` is the input part's index), written by
`encode_part`; `export_latents` runs that part loop inline, or submits one Prefect task per part
(``part_task``, e.g. on a Dask cluster) - the same function either way, so the tables are
byte-identical. Columns and codecs: tasks/store/tables.py; with ``samples=K > 0`` a `z_samples`
column holds K draws z ~ q(z|x) per row, seeded by (seed, split, part) so they do not depend on
the batch size or the runner. Publication is atomic (tasks/store/publish.py) and idempotent: the
same model version, dataset version, splits, samples, seed, elbo and log_px_samples again is a
no-op. Memory: one batch.

Anomaly scores, per row (`score_rows`): `elbo`, estimator B with L = 1 (analytic KL, one draw of
z whose noise is seeded by (seed, split, part), so it does not depend on the batch size either;
``elbo=False`` leaves it out: a table of codes only, which skips the decoder pass that costs as
much as the encoder at the paper architecture), and with ``log_px_samples=K > 0`` `log_px`, the
importance-sampled log p(x) of models/marginal.py with K samples (seeded by (seed, split, part,
batch index)). Low values = rows the model finds
unlikely. `score_dataset` (`aevb score`) writes the same table for any dataset version under
`<root>/scores/<dataset>/<registered-name>/v<model-version>/<dataset-version>/`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from models import constants as C
from models.errors import ConfigError, DatasetError
from tasks import scoring, tracking
from tasks.compiled import Scorer, make_encoder, make_scorer
from tasks.logs import ProgressLogger, logger
from tasks.store import datasets, fs, publish, readers, tables

# What decides a table's content besides the model version.
KEY_FIELDS = (
    "dataset_version",
    "splits",
    "samples",
    "sample_seed",
    "log_px_samples",
    "schema_version",
    "elbo",
)
# What a manifest written before a key existed held: every such table had the elbo column.
KEY_DEFAULTS: dict[str, Any] = {"elbo": True}


@dataclass(frozen=True)
class ExportOutput:
    path: str
    rows: int
    model_uri: str
    model_version: int | None
    dataset_version: str
    created: bool


def score_rows(
    scorer: Scorer,
    x: np.ndarray,
    z_mean: np.ndarray,
    z_std: np.ndarray,
    noise: np.random.Generator,
    log_px_samples: int,
    seed: list[int],
    elbo: bool = True,
) -> dict[str, np.ndarray]:
    """The score columns of one batch (`tables.score_columns`): elbo (when ``elbo``), and log_px
    when K > 0."""
    scores = {}
    if elbo:
        eps = noise.standard_normal((1, *z_mean.shape), np.float32)
        scores[tables.ELBO_COLUMN] = scorer.elbo(x, z_mean, z_std, eps)
    if log_px_samples:
        scores[tables.LOG_PX_COLUMN] = scorer.log_px(x, log_px_samples, seed)
    return scores


def discrete_scores(
    scorer: Scorer, x, codes, manifest, noise, log_px_samples: int, seed: list, elbo: bool = True
):
    """`score_rows` on x as the model sees it (dequantized / binarized with a fixed seed, like
    evaluate; ``codes``: (z_mean, z_std) of x), as numbers about the stored data (models/discrete)."""
    from models.discrete import transform_rows

    transform = scoring.model_transform(scorer.vae, manifest)
    if transform.kind != "none":
        x = transform_rows(transform, x, *seed)
        codes = make_encoder(scorer.saved_model_dir)(x)
    scores = score_rows(scorer, x, *codes, noise, log_px_samples, seed, elbo)
    return {k: v + transform.offset(manifest.input_dim) for k, v in scores.items()}


def encode_part(
    saved_model_dir: str,
    part: str,
    out: str,
    split: str,
    manifest_json: str,
    provenance_json: str,
    batch_size: int,
    seed: list[int],
    stage_name: str = "export",
) -> int:
    """Task body: encode one dataset part file into one latent part file; returns its rows.

    ``seed`` = [seed, split index, part index] keys the z samples and the scores of this part;
    ``stage_name`` (export or score) starts its progress lines.
    """
    manifest = datasets.DatasetManifest.from_json(manifest_json, part)
    provenance = json.loads(provenance_json)
    latent_dim, samples = provenance["latent_dim"], provenance["samples"]
    log_px_samples, elbo = provenance.get("log_px_samples", 0), provenance.get("elbo", True)
    scores = tables.score_columns(log_px_samples, elbo)
    schema = tables.latent_schema(latent_dim, samples, provenance, scores)
    encode = make_encoder(saved_model_dir)
    scorer = make_scorer(saved_model_dir) if scores else None  # codes only: no decoder at all
    rng, noise = np.random.default_rng(seed), np.random.default_rng([*seed, 1])
    rows = 0
    with fs.open_parquet(part) as pf, fs.parquet_writer(out, schema) as writer:
        label = f"{stage_name} {manifest.name} {fs.basename(out).removesuffix('.parquet')}"
        progress = ProgressLogger(pf.metadata.num_rows, label, artifact=False)

        def decoded():  # on the read-ahead thread: Parquet decode overlaps the encoder
            for rb in pf.iter_batches(batch_size=batch_size):
                x = tables.decode_x(rb.column(C.COL_X), manifest.storage_dtype, manifest.input_dim)
                yield rb, readers.to_model_space(x, manifest.scale)

        for b, (rb, x) in enumerate(readers.read_ahead(decoded())):
            z_mean, z_std = encode(x)
            z = None
            if samples:
                eps = rng.standard_normal((len(x), samples, latent_dim), np.float32)
                z = z_mean[:, None, :] + z_std[:, None, :] * eps
            codes, key = (z_mean, z_std), [*seed, b]
            row_scores = (
                discrete_scores(scorer, x, codes, manifest, noise, log_px_samples, key, elbo)
                if scorer is not None
                else {}
            )
            ids, labels = rb.column(C.COL_ID), rb.column(C.COL_LABEL)
            batch = tables.latent_batch(schema, ids, split, labels, z_mean, z_std, z, row_scores)
            writer.write_table(batch)
            rows += len(x)
            progress(rows)
            publish.fault_point("export_mid_write")
    return rows


encode_part_task = task(encode_part, name="export-part", cache_policy=NO_CACHE)


def check_export_args(
    splits: tuple[str, ...],
    batch_size: int,
    samples: int,
    log_px_samples: int = 0,
    elbo: bool = True,
) -> None:
    for split in splits:
        readers.check_split(split)
    if not splits:
        raise ConfigError("splits is empty; export at least one of train, valid, test")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size={batch_size!r} must be an integer > 0")
    for name, value in (("samples", samples), ("log_px_samples", log_px_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name}={value!r} must be an integer >= 0 (0: off)")
    if not isinstance(elbo, bool):
        raise ConfigError(f"elbo={elbo!r} must be true or false")


def _part_calls(
    root: str,
    manifest: datasets.DatasetManifest,
    splits: tuple[str, ...],
    saved_model_dir: str,
    provenance: dict[str, Any],
    batch_size: int,
    seed: int,
    stage_name: str,
) -> list[tuple[str, dict[str, Any]]]:
    """(output file name, `encode_part` arguments) for every (split, dataset part file)."""
    calls = []
    for s_index, split in enumerate(splits):
        files = readers.split_files(root, manifest.name, manifest.version, split)
        for p_index, part in enumerate(files):
            args = dict(
                saved_model_dir=saved_model_dir, part=part, split=split,
                manifest_json=manifest.to_json(), provenance_json=json.dumps(provenance),
                batch_size=batch_size, seed=[seed, s_index, p_index], stage_name=stage_name,
            )  # fmt: skip
            calls.append((f"part-{split}-{p_index:05d}.parquet", args))
    return calls


def export_latents(
    model_uri: str,
    dataset: str,
    data_root: str | None = None,
    version: str | None = None,
    splits: tuple[str, ...] = C.SPLITS,
    batch_size: int = 2000,
    samples: int = 0,
    seed: int = 0,
    part_task: Task | None = None,
    log_px_samples: int = 0,
    scores_table: bool = False,
    elbo: bool = True,
) -> ExportOutput:
    """Encode every row of ``splits`` with the registry model and publish the latent table.

    ``part_task``: a Prefect task of `encode_part` to submit once per part (call inside a flow);
    None runs the parts inline. ``log_px_samples=K > 0`` adds the `log_px` column (IS with K
    samples); ``elbo=False`` leaves out the `elbo` column (codes only: no decoder pass).
    ``scores_table``: publish under scores/ per dataset version (`score_dataset`).
    """
    splits = tuple(splits)
    check_export_args(splits, batch_size, samples, log_px_samples, elbo)
    if scores_table and not elbo:
        raise ConfigError("a score table always has the elbo column; use export for codes only")
    root = datasets.resolve_data_root(data_root)
    manifest = datasets.load_manifest(root, dataset, version)
    resolved = tracking.resolve_model(model_uri)
    model_name = resolved.name or "unregistered"
    model_version = resolved.version if resolved.version is not None else (resolved.run_id or "0")
    final = tables.output_table_path(root, manifest, model_name, model_version, scores_table)
    stage_name = "score" if scores_table else "export"
    key = {
        "dataset_version": manifest.version,
        "splits": list(splits),
        "samples": samples,
        "sample_seed": seed,  # the z samples and the scores' noise
        "log_px_samples": log_px_samples,
        "schema_version": tables.LATENT_SCHEMA_VERSION,
        "elbo": elbo,
    }
    publish.sweep(final)  # a stranded previous table back; stages of killed exports gone
    existing = tables.read_manifest(final)
    if existing and {k: existing.get(k, KEY_DEFAULTS.get(k)) for k in KEY_FIELDS} == key:
        logger().info("%s: %s already holds this model and dataset version", stage_name, final)
        rows = int(existing["rows"])
        return ExportOutput(final, rows, model_uri, resolved.version, manifest.version, False)
    latent_dim = check_model_fits(resolved.saved_model_dir, manifest, model_uri)  # TF: not on no-op
    provenance = {
        "model_uri": model_uri,
        "model_name": model_name,
        "model_version": resolved.version,
        "run_id": resolved.run_id,
        "dataset": manifest.name,
        "latent_dim": latent_dim,
        "score_kind": scoring.model_facts(resolved.saved_model_dir, manifest.name, manifest).kind,
        **key,
    }
    calls = _part_calls(
        root, manifest, splits, resolved.saved_model_dir, provenance, batch_size, seed, stage_name
    )

    def fill(stage: str) -> dict[str, Any]:
        if part_task is None:
            counts = [encode_part(out=fs.join(stage, name), **c) for name, c in calls]
        else:
            futures = [part_task.submit(out=fs.join(stage, name), **c) for name, c in calls]
            wait(futures)
            counts = [f.result() for f in futures]
        scores = tables.score_columns(log_px_samples, elbo)
        columns = tables.latent_schema(provenance["latent_dim"], samples, scores=scores).names
        return {**provenance, "rows": sum(counts), "columns": columns}

    start = time.perf_counter()
    doc = tables.publish_table(final, fill)
    rows, seconds = doc["rows"], time.perf_counter() - start
    log_line = "%s: wrote %d rows to %s in %.1f s (%.0f rows/s)"
    logger().info(log_line, stage_name, rows, final, seconds, rows / max(seconds, 1e-9))
    return ExportOutput(final, rows, model_uri, resolved.version, manifest.version, True)


def check_model_fits(saved_model_dir: str, manifest: datasets.DatasetManifest, uri: str) -> int:
    """Refuse a dataset whose rows the model cannot read (other D, values outside the
    likelihood's support); returns the model's latent_dim."""
    from models.saved import read_config

    config = read_config(saved_model_dir)[0]
    if config.input_dim != manifest.input_dim:
        raise DatasetError(
            f"dataset {manifest.name!r} version {manifest.version}: rows have feature_shape "
            f"{list(manifest.feature_shape)} ({manifest.input_dim} values) but model_uri={uri!r} "
            f"reads {list(config.feature_shape)} ({config.input_dim}); use a model trained on "
            "data of this shape"
        )
    datasets.check_model_inputs(manifest, config.likelihood)
    return config.latent_dim


DEFAULT_SCORE_LOG_PX_SAMPLES = 1000


def score_dataset(
    model_uri: str,
    dataset: str,
    data_root: str | None = None,
    version: str | None = None,
    splits: tuple[str, ...] = C.SPLITS,
    batch_size: int = 2000,
    log_px_samples: int = DEFAULT_SCORE_LOG_PX_SAMPLES,
    seed: int = 0,
    part_task: Task | None = None,
) -> ExportOutput:
    """Score any dataset version (e.g. a new batch) with a registry model: the latent table with
    `elbo` and `log_px` at `<root>/scores/<dataset>/<model>/v<N>/<dataset-version>/`."""
    return export_latents(
        model_uri,
        dataset,
        data_root,
        version,
        splits,
        batch_size,
        0,
        seed,
        part_task,
        log_px_samples=log_px_samples,
        scores_table=True,
    )


export_task = task(export_latents, name="export", cache_policy=NO_CACHE)
score_task = task(score_dataset, name="score", cache_policy=NO_CACHE)
