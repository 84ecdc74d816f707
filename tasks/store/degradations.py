"""Degraded datasets: the kinds of degradation and what a degraded dataset's manifest records.

`aevb corrupt` (tasks/corrupt.py) writes degraded copies; `aevb restore` (tasks/restore.py) reads
their records to know the degradation and the clean reference. The record lives in the degraded
manifest's `source`: {"kind": "corrupt", "clean": {name, version}, "mask": {name, version},
"degradation": {kind, noise_std, amount, factor, block, low, high, seed}}.
"""

from __future__ import annotations

from typing import Any

from models.errors import ConfigError
from tasks.store.datasets import DatasetManifest

SOURCE_KIND = "corrupt"
MASK_SUFFIX = ".mask"
# CLI kind -> models.degradations.Degradation
KINDS: dict[str, str] = {
    "denoise": "gaussian",
    "salt-pepper": "salt_pepper",
    "inpaint": "inpaint",
    "superres": "superres",
}
DEFAULT_AMOUNT = {"salt_pepper": 0.1, "inpaint": 0.5}


def degradation_kind(kind: str) -> str:
    """CLI kind (or the model's own name) -> the `models.degradations` degradation name."""
    if kind in KINDS.values():
        return kind
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} is not known; choose one of {', '.join(KINDS)}")
    return KINDS[kind]


def cli_kind(degradation: str) -> str:
    return {v: k for k, v in KINDS.items()}[degradation]


def make_spec(
    kind: str,
    feature_shape: tuple[int, ...],
    value_range: tuple[float, float],
    *,
    noise_std: float | None = None,
    amount: float | None = None,
    factor: int = 2,
    block: int = 0,
) -> Any:
    """The `DegradationSpec` of a kind, with this stage's defaults filled in."""
    from models.degradation_spec import DegradationSpec

    kind = degradation_kind(kind)
    lo, hi = value_range
    if hi <= lo:  # a constant dataset: any positive peak keeps PSNR defined
        hi = lo + 1.0
    if block and kind != "inpaint":
        raise ConfigError(f"`block` applies to kind='inpaint' only, not {cli_kind(kind)!r}")
    return DegradationSpec(
        kind,
        feature_shape,
        noise_std=noise_std,
        factor=factor,
        block=block,
        low=lo,
        high=hi,
        amount=DEFAULT_AMOUNT.get(kind, 0.5) if amount is None else amount,
    )


def degradation_record(spec: Any, seed: int) -> dict[str, Any]:
    """What a degraded manifest stores about its degradation (enough to rebuild the spec)."""
    fields = ("kind", "noise_std", "amount", "factor", "block", "low", "high")
    return {**{f: getattr(spec, f) for f in fields}, "seed": seed}


def degradation_of(manifest: DatasetManifest) -> dict[str, Any] | None:
    """The degradation record of a dataset written by `corrupt_dataset` (None otherwise)."""
    src = manifest.source or {}
    if src.get("kind") != SOURCE_KIND or src.get("role") == "mask":
        return None
    return dict(src["degradation"])
