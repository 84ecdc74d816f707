"""Restore stage: marginal inference of x with a registry model as the prior over x.

`restore_dataset(model_uri, "digits-inpaint", "map")` streams a degraded dataset (made by
`aevb corrupt`, which records the degradation and the clean reference; or any dataset with
``kind=`` given) through `models.restoration.Restorer` batch by batch and publishes the restored
table (layout and schema: tasks/restore_io.py). With a clean reference it scores every row:
PSNR (dB, peak = the clean value range) and MSE, averaged over rows per split, beside a baseline
that needs no model - the degraded input itself (denoise, salt-pepper), mean imputation from the
batch's observed entries (inpaint) or nearest-neighbour upsampling (superres). The numbers are
returned, printed by the CLI, stored in the manifest and logged to the model's MLflow run as
`<split>_restore_<kind>_<method>_{psnr,mse,baseline_psnr,baseline_mse}`.

Decoding latent tables (`--from-latents`) lives in tasks/restore_latents.py. Restoration is
idempotent (same model version, dataset version and settings -> no-op); memory is
bounded by one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from models import constants as C
from models.errors import ConfigError, DatasetError, ModelError
from tasks import datasets, restore_io, tracking
from tasks.corrupt import KINDS, cli_kind, degradation_kind, degradation_of, make_spec
from tasks.logs import logger

# CLI method -> models.restoration.Method
METHODS: dict[str, str] = {
    "amortized": "amortized", "map": "map", "pseudo-gibbs": "pseudo_gibbs", "mwg": "mwg",
}  # fmt: skip
QUANTITIES = ("psnr", "mse", "baseline_psnr", "baseline_mse")
# superres observation noise sigma_y when none is given: the pooled pixels are then fitted to
# ~0.05 of the value range, a little looser than the decoder can match them exactly.
SUPERRES_NOISE_STD = 0.05
BASELINES = {"gaussian": "noisy input", "salt_pepper": "corrupted input",
             "inpaint": "mean imputation", "superres": "nearest-neighbour upsampling"}  # fmt: skip


@dataclass(frozen=True)
class RestoreSettings:
    """Knobs of the restoration methods (models.restoration.Restorer) and of the noise model."""

    batch_size: int = 500
    map_steps: int = 200
    learning_rate: float = 0.05
    iterations: int = 200
    burn_in: int = 50
    noise_std: float | None = None  # denoise: known level; superres: sigma_y
    estimate_noise: bool = False  # denoise: ignore the recorded level, estimate it jointly
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "map_steps", "iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 1")
        if not 0 <= self.burn_in < self.iterations:
            raise ConfigError(f"--burn-in={self.burn_in} must lie in [0, --iterations)")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate={self.learning_rate} must be > 0")
        if self.noise_std is not None and not self.noise_std > 0:
            raise ConfigError(f"--noise-std={self.noise_std} must be > 0")


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
    baseline: str | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)


def check_method(method: str, kind: str | None = None) -> str:
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not known; choose one of {', '.join(METHODS)}")
    if kind is not None and METHODS[method] in ("pseudo_gibbs", "mwg") and kind != "inpaint":
        raise ConfigError(
            f"--method {method} applies to inpainting only; use amortized or map for "
            f"{cli_kind(kind)}"
        )
    return METHODS[method]


def plan(
    dataset: str,
    method: str,
    data_root: str | None = None,
    version: str | None = None,
    kind: str | None = None,
    mask: str | None = None,
) -> dict[str, Any]:
    """Validate the inputs that need no model (cheap; the CLI calls it before starting a flow):
    {degraded, record, kind, mask, clean} manifests and the degradation record."""
    check_method(method)
    root = datasets.resolve_data_root(data_root)
    degraded = datasets.load_manifest(root, dataset, version)
    record = degradation_of(degraded)
    if record is not None:
        if kind is not None and degradation_kind(kind) != record["kind"]:
            raise ConfigError(
                f"--kind {kind}: dataset {dataset!r} was made by `aevb corrupt --kind "
                f"{cli_kind(record['kind'])}`; drop --kind (it is read from the manifest)"
            )
        kind = record["kind"]
    elif kind is None:
        raise ConfigError(
            f"--kind: dataset {dataset!r} was not made by `aevb corrupt`, so say how it is "
            f"degraded: --kind {'|'.join(KINDS)}"
        )
    kind = degradation_kind(kind)
    check_method(method, kind)
    src = degraded.source or {}
    mask_ref = src.get("mask") if record else None
    mask_m = None
    if kind == "inpaint":
        if mask is not None:
            mask_m = datasets.load_manifest(root, mask)
        elif mask_ref:
            mask_m = datasets.load_manifest(root, mask_ref["name"], mask_ref["version"])
        else:
            raise ConfigError(f"--mask: inpainting {dataset!r} needs a mask dataset (1 = observed)")
    clean = None
    if record is not None:
        ref = src["clean"]
        try:
            clean = datasets.load_manifest(root, ref["name"], ref["version"])
        except DatasetError:
            logger().warning("restore: clean reference %s@%s is gone; no PSNR", *ref.values())
    return {"root": root, "degraded": degraded, "record": record, "kind": kind, "mask": mask_m,
            "clean": clean}  # fmt: skip


def build_spec(
    p: dict[str, Any], feature_shape: tuple[int, ...], likelihood: str, s: RestoreSettings
):
    """The DegradationSpec for the model's feature shape; checks the degraded shape against it."""
    rec, degraded, kind = p["record"] or {}, p["degraded"], p["kind"]
    if rec:
        value_range = (rec["low"], rec["high"])
    elif likelihood in datasets.UNIT_INTERVAL_LIKELIHOODS:
        value_range = (0.0, 1.0)
    else:
        value_range = degraded.value_range
    noise = s.noise_std
    if kind == "gaussian":
        noise = None if s.estimate_noise else (noise or rec.get("noise_std"))
    elif kind == "superres":
        noise = noise or SUPERRES_NOISE_STD
    spec = make_spec(
        kind, feature_shape, value_range, noise_std=noise, amount=rec.get("amount"),
        factor=rec.get("factor", 2), block=rec.get("block", 0),
    )  # fmt: skip
    if tuple(degraded.feature_shape) != spec.observed_shape:
        raise DatasetError(
            f"dataset {degraded.name!r}: feature_shape {list(degraded.feature_shape)} does not "
            f"match the model's: {cli_kind(kind)} of feature_shape {list(feature_shape)} gives "
            f"{list(spec.observed_shape)}; use a model trained on the clean dataset"
        )
    for role in ("mask", "clean"):
        m = p[role]
        if m is not None and tuple(m.feature_shape) != tuple(feature_shape):
            raise DatasetError(
                f"{role} dataset {m.name!r}: feature_shape {list(m.feature_shape)} does not match "
                f"the model's {list(feature_shape)}"
            )
    return spec


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
        datasets.split_files(p["root"], p["degraded"].name, p["degraded"].version, split)
    resolved = tracking.resolve_model(model_uri)
    name, mversion = model_key(resolved)
    degraded, kind = p["degraded"], p["kind"]
    final = restore_io.restored_table_path(p["root"], degraded.name, name, mversion, method)
    # With the model version fixed, these determine the spec and hence the table.
    key = {
        "dataset_version": degraded.version,
        "splits": list(splits),
        "method": method,
        "kind": kind,
        "settings": _jsonable(s),
        "mask": p["mask"] and p["mask"].version,
    }
    out = dict(path=final, method=method, kind=cli_kind(kind), model_uri=model_uri,
               model_version=resolved.version, dataset=degraded.name,
               dataset_version=degraded.version)  # fmt: skip
    done = restore_io.existing_manifest(final, key)
    if done:
        logger().info("restore: %s already holds this restoration; nothing to do", final)
        return RestoreOutput(
            rows=done["rows"],
            created=False,
            metrics=done["metrics"],
            baseline=done["baseline"],
            diagnostics=done["diagnostics"],
            **out,
        )
    from models.restoration import Restorer
    from models.saved import load_vae

    vae = load_vae(resolved.saved_model_dir)
    spec = build_spec(p, vae.config.feature_shape, vae.config.likelihood, s)
    restorer = Restorer(
        vae, spec, map_steps=s.map_steps, learning_rate=s.learning_rate,
        iterations=s.iterations, burn_in=s.burn_in,
    )  # fmt: skip
    clean = p["clean"] and {"name": p["clean"].name, "version": p["clean"].version}
    provenance = {
        "model_uri": model_uri, "model_name": name, "model_version": resolved.version,
        "run_id": resolved.run_id, "dataset": degraded.name, "key": key, "spec": _jsonable(spec),
        "clean": clean, "schema_version": restore_io.SCHEMA_VERSION,
    }  # fmt: skip
    schema = restore_io.restored_schema(spec.input_dim, provenance)
    fill = _restore_fill(p, spec, restorer, METHODS[method], splits, s, schema)
    doc = restore_io.publish_table(final, schema, fill)
    if log_to_mlflow and resolved.run_id and doc["metrics"]:
        tracking.log_metrics(resolved.run_id, mlflow_metrics(doc["metrics"], kind, method))
    logger().info("restore: wrote %d rows to %s %s", doc["rows"], final, doc["metrics"])
    return RestoreOutput(
        rows=doc["rows"],
        created=True,
        metrics=doc["metrics"],
        baseline=doc["baseline"],
        diagnostics=doc["diagnostics"],
        **out,
    )


def _restore_fill(p, spec, restorer, method, splits, s, schema) -> Callable:
    import tensorflow as tf

    from models.restoration import mean_impute, mse, psnr, upsample_nearest

    def baseline(y, mask):
        if spec.kind == "inpaint":
            return mean_impute(y, mask)
        if spec.kind == "superres":
            return upsample_nearest(y, spec.feature_shape, spec.factor)
        return y

    def fill(open_part) -> dict[str, Any]:
        rows, metrics, diag, batch_no = 0, {}, {}, 0
        for split in splits:
            sums = np.zeros(4)
            n_split = 0
            with open_part(split) as writer:
                for ids, y, labels, (mask, clean) in restore_io.lockstep(
                    p["root"], p["degraded"], [p["mask"], p["clean"]], split, s.batch_size
                ):
                    if mask is not None:
                        mask = mask.astype(np.float32)
                    x, d = restorer.restore(method, y, mask, tf.constant([s.seed, batch_no]))
                    batch_no += 1
                    for k, v in d.items():
                        diag.setdefault(k, []).append(v)
                    writer.write_table(
                        restore_io.batch_table(schema, ids, split, labels, x.numpy())
                    )
                    if clean is not None:
                        b = baseline(tf.constant(y), mask)
                        for i, (a, fn) in enumerate(((x, psnr), (x, mse), (b, psnr), (b, mse))):
                            kw = {"peak": spec.peak} if fn is psnr else {}
                            sums[i] += float(tf.reduce_sum(fn(a, clean, **kw)))
                    n_split += len(ids)
            rows += n_split
            if p["clean"] is not None and n_split:
                for name, total in zip(QUANTITIES, sums, strict=True):
                    metrics[f"{split}_{name}"] = float(total / n_split)
        return {"rows": rows, "metrics": metrics,
                "baseline": BASELINES[spec.kind] if metrics else None,
                "diagnostics": {k: float(np.mean(v)) for k, v in diag.items()}}  # fmt: skip

    return fill


def model_key(resolved: tracking.ResolvedModel) -> tuple[str, int | str]:
    if resolved.name is None and resolved.run_id is None:
        raise ModelError(f"--model {resolved.uri}: use models:/NAME@ALIAS or models:/NAME/VERSION")
    name = resolved.name or "unregistered"
    return name, resolved.version if resolved.version is not None else resolved.run_id


def _jsonable(obj: Any) -> Any:
    import dataclasses
    import json

    doc = dataclasses.asdict(obj)
    return json.loads(json.dumps(doc, default=lambda v: list(v) if isinstance(v, tuple) else v))


def mlflow_metrics(metrics: dict[str, float], kind: str, method: str) -> dict[str, float]:
    """`<split>_<q>` -> `<split>_restore_<kind>_<method>_<q>` (kind/method in model names)."""
    out = {}
    for key, value in metrics.items():
        split, quantity = key.split("_", 1)
        out[C.metric_key(split, f"restore_{kind}_{METHODS[method]}_{quantity}")] = value
    return out


restore_task = task(restore_dataset, name="restore", cache_policy=NO_CACHE)
