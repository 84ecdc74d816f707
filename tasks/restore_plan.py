"""What restoring a degraded dataset needs before any model is loaded: the method, the degraded,
mask and clean datasets' manifests, the degradation record, and the `DegradationSpec` for a
model's feature shape. Cheap, so the CLI validates with it before a flow starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models import constants as C
from models.errors import ConfigError, DatasetError
from tasks.logs import logger
from tasks.store import datasets
from tasks.store.degradations import KINDS, cli_kind, degradation_kind, degradation_of, make_spec

# CLI method -> models.restoration.Method
METHODS: dict[str, str] = {
    "amortized": "amortized",
    "map": "map",
    "pseudo-gibbs": "pseudo_gibbs",
    "mwg": "mwg",
}
# superres observation noise sigma_y when none is given: the pooled pixels are then fitted to
# ~0.05 of the value range, a little looser than the decoder can match them exactly.
SUPERRES_NOISE_STD = 0.05


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
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.burn_in < self.iterations:
            raise ConfigError(
                f"burn_in={self.burn_in} must lie in [0, iterations={self.iterations})"
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate={self.learning_rate} must be > 0")
        if self.noise_std is not None and not self.noise_std > 0:
            raise ConfigError(f"noise_std={self.noise_std} must be > 0")


def variant(
    method: str,
    kind: str,
    s: RestoreSettings,
    splits: tuple[str, ...] = ("test",),
    mask: str | None = None,
) -> str:
    """The output folder's name: the method, then every setting that changes its result and is not
    the default, e.g. `map`, `map-estimate-noise`, `mwg-iter400-seed3`, `map-steps50-splits-valid-test`
    (kind as in models.degradations). Restorations with other settings never share a folder."""
    d, name = RestoreSettings(), METHODS.get(method, method)
    tokens = [method]

    def add(field: str, token: str) -> None:
        value = getattr(s, field)
        if value != getattr(d, field):
            tokens.append(f"{token}{value:g}" if isinstance(value, float) else f"{token}{value}")

    if name == "map":
        add("map_steps", "steps")
        add("learning_rate", "lr")
        if kind == "gaussian" and s.estimate_noise:
            tokens.append("estimate-noise")
            add("batch_size", "batch")  # the estimated level is shared by a batch
        elif kind in ("gaussian", "superres"):
            add("noise_std", "sigma")
    elif name in ("pseudo_gibbs", "mwg"):
        add("iterations", "iter")
        add("burn_in", "burn")
        add("seed", "seed")
        add("batch_size", "batch")  # each batch's chains get the seed (seed, batch number)
    if tuple(splits) != (C.TEST,):
        tokens.append("splits-" + "-".join(splits))
    if mask is not None:
        tokens.append(f"mask-{mask}")
    return "-".join(tokens)


def check_method(method: str, kind: str | None = None) -> str:
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not known; choose one of {', '.join(METHODS)}")
    if kind is not None and METHODS[method] in ("pseudo_gibbs", "mwg") and kind != "inpaint":
        raise ConfigError(
            f"method={method!r} applies to inpainting only; use amortized or map for "
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
                f"kind={kind!r}: dataset {dataset!r} was made by `aevb corrupt` with kind="
                f"{cli_kind(record['kind'])!r}; drop `kind` (it is read from the manifest)"
            )
        kind = record["kind"]
    elif kind is None:
        raise ConfigError(
            f"`kind`: dataset {dataset!r} was not made by `aevb corrupt`, so say how it is "
            f"degraded: kind={'|'.join(KINDS)}"
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
            raise ConfigError(f"`mask`: inpainting {dataset!r} needs a mask dataset (1 = observed)")
    clean = None
    if record is not None:
        ref = src["clean"]
        try:
            clean = datasets.load_manifest(root, ref["name"], ref["version"])
        except DatasetError:
            logger().warning("restore: clean reference %s@%s is gone; no PSNR", *ref.values())
    return {
        "root": root,
        "degraded": degraded,
        "record": record,
        "kind": kind,
        "mask": mask_m,
        "clean": clean,
    }


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
        kind,
        feature_shape,
        value_range,
        noise_std=noise,
        amount=rec.get("amount"),
        factor=rec.get("factor", 2),
        block=rec.get("block", 0),
    )
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
