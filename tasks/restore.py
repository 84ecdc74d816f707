"""Restore stage: marginal inference of x with a registry model as the prior over x.

`restore_dataset(model_uri, "digits-inpaint", "map")` streams a degraded dataset (made by
`aevb corrupt`, which records the degradation and the clean reference; or any dataset with
``kind=`` given) through `models.restoration.Restorer` batch by batch and publishes the restored
table (layout and schema: tasks/store/tables.py). The table's folder is named by the method and
every non-default setting that changes its result (`tasks.restore_plan.variant`: `map`,
`map-estimate-noise`, `mwg-iter400`, ...), so restorations with other settings never overwrite each
other. With a clean reference it scores every row: PSNR (dB, peak = the clean value range) and
MSE, averaged over rows per split, beside strong model-free baselines
(models/restoration_baselines.py: median and adaptive median filters, Wiener, nearest/harmonic/
biharmonic fill, bilinear/bicubic upsampling), the best of them and the honest margin
(tasks/restore_scores.py; negative where a baseline wins). The numbers are returned, printed by
the CLI, stored in the manifest and logged to the model's MLflow run as
`<split>_restore_<kind>_<variant>_<quantity>`; a before/after PNG (degraded | restored | clean) and
one of the best baseline go beside the table and into the run. Metropolis-within-Gibbs with a low
acceptance rate warns (log line, printed, MLflow tag).

`decode_latents(model_uri, TABLE)` decodes an exported latent table's z_mean rows back to data
space (x = E[x | z]) as a restored table under `.../from-latents/`, so exported codes are directly
usable by a downstream denoising job. Restoration is idempotent (same model version, dataset
version and settings -> no-op); memory is bounded by one batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from models import constants as C
from models.errors import ConfigError, ModelError
from tasks import plots, restore_scores, tracking
from tasks.logs import ProgressLogger, logger
from tasks.restore_plan import METHODS, RestoreSettings, build_spec, plan, variant
from tasks.store import datasets, fs, publish, readers, tables
from tasks.store.degradations import cli_kind


@dataclass(frozen=True)
class RestoreOutput:
    path: str
    rows: int
    method: str
    kind: str
    model_uri: str
    model_version: int | None
    dataset: str
    dataset_version: str
    created: bool
    metrics: dict[str, float] = field(default_factory=dict)
    baseline: str | None = None  # the best baseline (highest PSNR)
    diagnostics: dict[str, float] = field(default_factory=dict)
    picture: str | None = None  # before/after PNG beside the table
    picture_artifact: str | None = None  # the same PNG in the model's MLflow run
    baselines: list[str] = field(default_factory=list)  # every baseline scored, in table order
    warnings: list[str] = field(default_factory=list)
    baseline_picture: str | None = None  # degraded | best baseline | clean, beside the table

    @classmethod
    def of(cls, manifest: dict[str, Any], created: bool, out: dict[str, Any]) -> RestoreOutput:
        """From a published table's manifest and the request's fields (``out``)."""
        keys = ("metrics", "baseline", "diagnostics", "baselines")
        extra = {k: manifest[k] for k in keys if k in manifest}
        warnings = restore_scores.warnings_of(manifest.get("diagnostics", {}), out["method"])
        return cls(rows=manifest["rows"], created=created, warnings=warnings, **extra, **out)


def load_model(model_uri: str) -> tuple[tracking.ResolvedModel, Any]:
    from models.saved import load_vae

    resolved = tracking.resolve_model(model_uri)
    return resolved, load_vae(resolved.saved_model_dir)


def restore_dataset(
    model_uri: str,
    dataset: str,
    method: str = "map",
    data_root: str | None = None,
    version: str | None = None,
    splits: tuple[str, ...] = (C.TEST,),
    settings: RestoreSettings | None = None,
    kind: str | None = None,
    mask: str | None = None,
    log_to_mlflow: bool = True,
) -> RestoreOutput:
    """Restore ``splits`` of a degraded dataset with ``method`` and publish the restored table."""
    s = settings or RestoreSettings()
    p = plan(dataset, method, data_root, version, kind, mask)
    for split in splits:
        readers.check_split(split)
    resolved = tracking.resolve_model(model_uri)
    name, mversion = model_key(resolved)
    degraded, kind = p["degraded"], p["kind"]
    folder = variant(method, kind, s, tuple(splits), mask)
    final = tables.restored_table_path(p["root"], degraded.name, name, mversion, folder)
    # With the model version fixed, these determine the spec and hence the table.
    key = {
        "dataset_version": degraded.version,
        "splits": list(splits),
        "method": method,
        "kind": kind,
        "settings": _jsonable(s),
        "mask": p["mask"] and p["mask"].version,
        "scoring": restore_scores.SCORING_VERSION,  # tables scored by older baselines are redone
    }
    out = {"path": final, "method": method, "kind": cli_kind(kind), "model_uri": model_uri,
           "model_version": resolved.version, "dataset": degraded.name,
           "dataset_version": degraded.version}  # fmt: skip
    done = _published(final, key)
    if done:
        publish.sweep(final)  # stages of killed restorations go even when nothing is to do
        logger().info("restore: %s already holds this restoration; nothing to do", final)
        pictures = {k: picture_path(final, k) for k in ("picture", "baseline_picture")}
        result = RestoreOutput.of(
            done, False, {**out, **{k: v if fs.exists(v) else None for k, v in pictures.items()}}
        )
        restore_scores.log_warnings(result.warnings)
        return result
    from models.restoration import Restorer
    from models.saved import load_vae

    vae = load_vae(resolved.saved_model_dir)
    spec = build_spec(p, vae.config.feature_shape, vae.config.likelihood, s)
    restorer = Restorer(
        vae,
        spec,
        map_steps=s.map_steps,
        learning_rate=s.learning_rate,
        iterations=s.iterations,
        burn_in=s.burn_in,
    )
    clean = p["clean"] and {"name": p["clean"].name, "version": p["clean"].version}
    provenance = {
        "model_uri": model_uri,
        "model_name": name,
        "model_version": resolved.version,
        "run_id": resolved.run_id,
        "dataset": degraded.name,
        "key": key,
        "spec": _jsonable(spec),
        "clean": clean,
        "schema_version": tables.SCHEMA_VERSION,
    }
    schema = tables.restored_schema(spec.input_dim, provenance)
    sample: dict[str, list[np.ndarray]] = {}
    fill = _restore_fill(p, spec, restorer, METHODS[method], splits, s, schema, sample)
    doc = tables.publish_table(final, _manifest_of(schema, fill))
    logger().info("restore: wrote %d rows to %s %s", doc["rows"], final, doc["metrics"])
    run_id = resolved.run_id if log_to_mlflow else None
    return _report(RestoreOutput.of(doc, True, out), sample, p, spec, folder, run_id)


def _report(result: RestoreOutput, sample, p, spec, folder: str, run_id) -> RestoreOutput:
    """Warn, log metrics and tags to the model's run, draw the before/after pictures."""
    restore_scores.log_warnings(result.warnings)
    if run_id:
        restore_scores.log_to_run(run_id, result, f"restore_{p['kind']}_{folder}".replace("-", "_"))
    picture, artifact = before_after_picture(result.path, sample, p, spec, folder, run_id)
    extra = {"picture": picture, "picture_artifact": artifact}
    if result.baseline is not None:
        rows = _baseline_rows(sample, spec, result.baseline)
        drawn = before_after_picture(result.path, rows, p, spec, folder, run_id, result.baseline)
        extra["baseline_picture"] = drawn[0]
    return dataclasses.replace(result, **extra)


PICTURE_ROWS = 8


def picture_path(final: str, which: str = "picture") -> str:
    """The before/after PNG (``which="picture"``) or the best baseline's (``"baseline_picture"``)
    beside the restored table (the table folder holds Parquet only)."""
    return f"{final}.before-after.png" if which == "picture" else f"{final}.baseline.png"


def _baseline_rows(sample, spec, name: str) -> dict[str, list[np.ndarray]]:
    """The picture's rows with the best baseline's restoration in place of the model's."""
    from models.restoration_baselines import baselines

    if not sample.get("restored"):
        return {}
    y = np.concatenate(sample["degraded"])
    mask = np.concatenate(sample["mask"]) if sample.get("mask") else None
    return {**sample, "restored": [baselines(spec)[name](y, mask)]}


def before_after_picture(
    final, sample, p, spec, label, run_id, baseline: str | None = None
) -> tuple[str | None, str | None]:
    """Draw the first rows (degraded | restored | clean; restored by ``baseline`` when given),
    publish the PNG beside the table and log it to the model's MLflow run under
    restore/<degraded dataset>/; (path, artifact URI)."""
    if not sample.get("restored"):
        return None, None
    degraded, restored = (np.concatenate(sample[k]) for k in ("degraded", "restored"))
    clean = np.concatenate(sample["clean"]) if sample.get("clean") else None
    mask = np.concatenate(sample["mask"]) if sample.get("mask") else None
    path = picture_path(final, "baseline_picture" if baseline else "picture")
    name = f"{label}.baseline.png" if baseline else f"{label}.png"
    title = f"baseline: {baseline}" if baseline else label
    artifact = None
    with tempfile.TemporaryDirectory(prefix="aevb-restore-") as tmp:
        local = os.path.join(tmp, name)
        shapes = (p["degraded"].feature_shape, spec.feature_shape)
        plots.plot_restoration(degraded, restored, clean, *shapes, local, title, mask=mask)
        with open(local, "rb") as fh:
            publish.write_atomic(path, fh.read())
        if run_id:
            folder = f"restore/{p['degraded'].name}"
            tracking.log_artifact(run_id, local, folder)
            artifact = f"runs:/{run_id}/{folder}/{name}"
    logger().info("restore: %s picture %s", "baseline" if baseline else "before/after", path)
    return path, artifact


def _restore_fill(p, spec, restorer, method, splits, s, schema, sample) -> Callable:
    import tensorflow as tf

    from models.restoration_baselines import baselines

    fns = baselines(spec)

    def keep_for_picture(y, x, clean, mask) -> None:
        room = PICTURE_ROWS - sum(len(a) for a in sample.get("restored", []))
        for key, rows in (("degraded", y), ("restored", x), ("clean", clean), ("mask", mask)):
            if room > 0 and rows is not None:
                sample.setdefault(key, []).append(np.asarray(rows[:room]))

    def fill(open_part) -> dict[str, Any]:
        rows, metrics, diag, batch_no = 0, {}, {}, 0
        total = sum(p["degraded"].rows.get(split, 0) for split in splits)
        progress = ProgressLogger(total, f"restore[{method}] {p['degraded'].name}")
        for split in splits:
            scores = restore_scores.SplitScores(list(fns), spec.peak)
            n_split = 0
            with open_part(split) as writer:
                for ids, y, labels, (mask, clean) in readers.iter_aligned(
                    p["root"], p["degraded"], [p["mask"], p["clean"]], split, s.batch_size
                ):
                    if mask is not None:
                        mask = mask.astype(np.float32)
                    x, d = restorer.restore(method, y, mask, tf.constant([s.seed, batch_no]))
                    batch_no += 1
                    for k, v in d.items():
                        diag.setdefault(k, []).append(v)
                    writer.write_table(tables.restored_batch(schema, ids, split, labels, x.numpy()))
                    keep_for_picture(y, x.numpy(), clean, mask)
                    progress.add(len(ids))
                    if clean is not None:
                        scores.add(x.numpy(), {k: f(y, mask) for k, f in fns.items()}, clean)
                    n_split += len(ids)
            rows += n_split
            metrics.update(scores.metrics(split))
        return {
            "rows": rows,
            "metrics": metrics,
            "baseline": restore_scores.best_baseline(metrics, list(fns)),
            "baselines": list(fns) if metrics else [],
            "diagnostics": {k: float(np.mean(v)) for k, v in diag.items()},
        }

    return fill


def _published(final: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The published table's manifest when it was written with the same ``key`` (else None)."""
    import json

    doc = tables.read_manifest(final)
    if doc and doc.get("key") == json.loads(json.dumps(key)):
        return doc
    return None


def _manifest_of(schema, fill) -> Callable[[str], dict[str, Any]]:
    """A `tables.publish_table` filler: ``fill(open_part)`` writes the parts (``open_part(split)``
    gives a ParquetWriter into the stage) and returns what the manifest adds to the provenance."""
    import json

    def run(stage: str) -> dict[str, Any]:
        def open_part(split: str):
            return fs.parquet_writer(fs.join(stage, f"part-{split}-00000.parquet"), schema)

        doc = json.loads(schema.metadata[tables.RESTORED_METADATA_KEY])
        doc.update(fill(open_part), columns=schema.names)
        return doc

    return run


def model_key(resolved: tracking.ResolvedModel) -> tuple[str, int | str]:
    if resolved.name is None and resolved.run_id is None:
        raise ModelError(
            f"model_uri={resolved.uri!r}: use models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    name = resolved.name or "unregistered"
    return name, resolved.version if resolved.version is not None else resolved.run_id


def _jsonable(obj: Any) -> Any:
    import dataclasses
    import json

    doc = dataclasses.asdict(obj)
    return json.loads(json.dumps(doc, default=lambda v: list(v) if isinstance(v, tuple) else v))


FROM_LATENTS = "from-latents"


def decode_latents(
    model_uri: str, table: str, data_root: str | None = None, batch_size: int = 2000
) -> RestoreOutput:
    """Decode a latent table's z_mean rows with the registry model: x = E[x | z] per row."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1")
    root = datasets.resolve_data_root(data_root)
    parts, manifest = tables.latent_parts(table)
    resolved, vae = load_model(model_uri)
    name, mversion = model_key(resolved)
    dataset = manifest.get("dataset") or "table-" + hashlib.sha256(table.encode()).hexdigest()[:8]
    datasets.validate_name(dataset)  # it names the output folder: never a path
    final = tables.restored_table_path(root, dataset, name, mversion, FROM_LATENTS)
    key = {
        "table": table,
        "parts": [fs.basename(f) for f in parts],
        "mtimes": [fs.mtime(f) for f in parts],
        "table_manifest": {k: manifest.get(k) for k in ("model_version", "dataset_version")},
    }
    out = {"path": final, "method": FROM_LATENTS, "kind": FROM_LATENTS, "model_uri": model_uri,
           "model_version": resolved.version, "dataset": dataset,
           "dataset_version": str(manifest.get("dataset_version", ""))}  # fmt: skip
    done = _published(final, key)
    if done:
        return RestoreOutput.of(done, False, out)
    exported_by = (manifest.get("model_name"), manifest.get("model_version"))
    if manifest and exported_by != (name, resolved.version):
        logger().warning(
            "restore: %s was exported by %s v%s, decoding with %s v%s: codes of another model "
            "version mean other images",
            table,
            *exported_by,
            name,
            resolved.version,
        )
    import tensorflow as tf

    decode = tf.function(vae.decode_mean, jit_compile=True, reduce_retracing=True, autograph=False)
    provenance = {
        "model_uri": model_uri,
        "model_name": name,
        "model_version": resolved.version,
        "run_id": resolved.run_id,
        "dataset": dataset,
        "key": key,
        "schema_version": tables.SCHEMA_VERSION,
    }
    schema = tables.restored_schema(vae.config.input_dim, provenance)

    def fill(open_part) -> dict[str, Any]:
        writers, rows = {}, 0
        try:
            for split, ids, labels, z in tables.iter_latents(
                parts, vae.config.latent_dim, batch_size
            ):
                if split not in writers:
                    writers[split] = open_part(split)
                x = decode(tf.constant(z)).numpy()
                writers[split].write_table(tables.restored_batch(schema, ids, split, labels, x))
                rows += len(z)
        finally:
            for w in writers.values():
                w.close()
        return {"rows": rows}

    doc = tables.publish_table(final, _manifest_of(schema, fill))
    logger().info("restore: decoded %d latent rows to %s", doc["rows"], final)
    return RestoreOutput.of(doc, True, out)


restore_task = task(restore_dataset, name="restore", cache_policy=NO_CACHE)
decode_latents_task = task(decode_latents, name="restore-from-latents", cache_policy=NO_CACHE)
