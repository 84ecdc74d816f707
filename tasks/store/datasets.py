"""The dataset layout: names, versions, the manifest and CURRENT (DESIGN "Parquet dataset").

    <root>/datasets/<name>/CURRENT                        the current version id
    <root>/datasets/<name>/<version>.manifest.json        written after the folder: complete
    <root>/datasets/<name>/<version>/split=<s>/part-*.parquet   columns id, x, label

A published version folder holds Parquet files only, so every engine reads it by path or by a
recursive glob (`split` comes back as a hive partition column). `version` is a content hash (16
hex digits), so writing identical data again is a no-op. Model inputs are `stored value * scale`.
Versions written by earlier releases kept `manifest.json` inside the folder: they stay readable,
and the next write to the same dataset moves their manifests beside their folders.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass

from models.errors import DatasetError
from tasks.store import fs, publish
from tasks.store.roots import resolve_data_root

SCHEMA_VERSION = 1
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VERSION_PATTERN = re.compile(r"[0-9a-f]{16}")
STORAGE_DTYPES = ("uint8", "float32")
MANIFEST_SUFFIX = ".manifest.json"
LEGACY_MANIFEST = "manifest.json"  # inside the version folder (releases before the beside layout)
CURRENT = "CURRENT"
# Likelihoods whose support is [0, 1] (models/config.py `Likelihood`).
UNIT_INTERVAL_LIKELIHOODS = ("bernoulli", "continuous_bernoulli")


def validate_name(name: str) -> str:
    """Dataset names match ``[a-z0-9][a-z0-9._-]{0,63}`` (docs/design.md); raise DatasetError otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name.startswith(".."):
        raise DatasetError(
            f"invalid dataset name {name!r}: use 1-64 characters from a-z, 0-9, '.', '_', '-' "
            "starting with a letter or digit (e.g. my-digits)"
        )
    return name


def validate_version(version: str, name: str = "") -> str:
    """Versions are content hashes of 16 hex digits; anything else (a path) is refused."""
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        of = f" of dataset {name!r}" if name else ""
        raise DatasetError(
            f"invalid dataset version {version!r}{of}: a version is the 16-hex-digit content hash "
            "shown by `aevb datasets show NAME` (or CURRENT for the current one)"
        )
    return version


@dataclass(frozen=True)
class DatasetManifest:
    """What ``<version>.manifest.json`` holds. Model input = stored value * ``scale``."""

    name: str
    version: str
    created_at: str
    source: dict
    feature_shape: tuple[int, ...]
    storage_dtype: str
    scale: float
    value_range: tuple[float, float]
    rows: dict[str, int]
    split_seed: int
    schema_version: int = SCHEMA_VERSION
    label_names: tuple[str, ...] = ()

    @property
    def input_dim(self) -> int:
        return math.prod(self.feature_shape)

    def to_json(self) -> str:
        doc = dataclasses.asdict(self)
        doc["input_transform"] = f"model_input = float32(x) * {self.scale!r}"
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> DatasetManifest:
        try:
            doc = json.loads(text)
            fields = {f.name for f in dataclasses.fields(cls)}
            kwargs = {k: v for k, v in doc.items() if k in fields}
            kwargs["feature_shape"] = tuple(int(d) for d in kwargs["feature_shape"])
            kwargs["value_range"] = tuple(float(v) for v in kwargs["value_range"])
            kwargs["label_names"] = tuple(kwargs.get("label_names", ()))
            kwargs["rows"] = {s: int(n) for s, n in kwargs["rows"].items()}
            return cls(**kwargs)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DatasetError(
                f"{where}: unreadable dataset manifest ({exc}); re-ingest the dataset"
            ) from exc


# ----------------------------------------------------------------------------- layout


def datasets_dir(data_root: str | None) -> str:
    return fs.join(resolve_data_root(data_root), "datasets")


def dataset_dir(data_root: str | None, name: str) -> str:
    return fs.join(datasets_dir(data_root), validate_name(name))


def version_dir(data_root: str | None, name: str, version: str) -> str:
    return fs.join(dataset_dir(data_root, name), validate_version(version, name))


def manifest_path(data_root: str | None, name: str, version: str) -> str:
    return fs.join(dataset_dir(data_root, name), validate_version(version, name) + MANIFEST_SUFFIX)


def _manifest_text(root: str, name: str, version: str) -> tuple[str | None, str]:
    """(text, where) of a version's manifest: beside the folder, else inside (older layout)."""
    beside = manifest_path(root, name, version)
    text = fs.read_text(beside)
    if text is not None:
        return text, beside
    inside = fs.join(version_dir(root, name, version), LEGACY_MANIFEST)
    return fs.read_text(inside), inside


def current_version(data_root: str | None, name: str) -> str | None:
    """The version ``CURRENT`` names, or None when the dataset does not exist."""
    path = fs.join(dataset_dir(data_root, name), CURRENT)
    text = fs.read_text(path)
    if not text:
        return None
    version = text.strip()
    try:
        return validate_version(version, name)
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}; re-ingest the dataset to rewrite it") from exc


def missing_dataset_error(root: str, name: str) -> DatasetError:
    return DatasetError(
        f"dataset {name!r} not found under {fs.join(root, 'datasets')}; create it with "
        f"`aevb ingest SOURCE --name {name}` (built-in sources: digits, mnist-5k, fashion-mnist)"
    )


def load_manifest(data_root: str | None, name: str, version: str | None = None) -> DatasetManifest:
    """Manifest of ``version`` (None or "CURRENT" -> the current one); DatasetError if missing."""
    root = resolve_data_root(data_root)
    validate_name(name)
    if version in (None, "", "CURRENT", "current"):
        version = current_version(root, name)
        if version is None:
            raise missing_dataset_error(root, name)
    validate_version(version, name)
    text, where = _manifest_text(root, name, version)
    if text is None:
        available = ", ".join(list_versions(root, name))
        if not available:
            raise missing_dataset_error(root, name)
        raise DatasetError(
            f"dataset {name!r} has no version {version!r} (available: {available}); "
            f"see `aevb datasets show {name}`"
        )
    return DatasetManifest.from_json(text, where)


def list_versions(data_root: str | None, name: str) -> list[str]:
    """Complete versions of ``name`` (those with a manifest), oldest first."""
    root = resolve_data_root(data_root)
    base = dataset_dir(root, name)
    found = set()
    for entry, is_dir in fs.entries(base):
        if not is_dir and entry.endswith(MANIFEST_SUFFIX):
            found.add(entry[: -len(MANIFEST_SUFFIX)])
        elif is_dir and VERSION_PATTERN.fullmatch(entry):
            if fs.exists(fs.join(base, entry, LEGACY_MANIFEST)):
                found.add(entry)
    versions = [v for v in found if VERSION_PATTERN.fullmatch(v)]
    manifests = [load_manifest(root, name, v) for v in versions]
    return [m.version for m in sorted(manifests, key=lambda m: (m.created_at, m.version))]


def list_datasets(data_root: str | None) -> list[DatasetManifest]:
    """The current version's manifest of every dataset under the root, sorted by name."""
    root = resolve_data_root(data_root)
    out = []
    for name in fs.list_dirs(datasets_dir(root)):
        if NAME_PATTERN.fullmatch(name) and current_version(root, name):
            out.append(load_manifest(root, name))
    return out


def is_complete(data_root: str | None, name: str, version: str) -> bool:
    return _manifest_text(resolve_data_root(data_root), name, version)[0] is not None


def set_current(data_root: str | None, name: str, version: str) -> bool:
    """Point CURRENT at an existing complete version (atomic replace); False if it already did."""
    root = resolve_data_root(data_root)
    if not is_complete(root, name, version):
        raise DatasetError(f"dataset {name!r} has no complete version {version!r}")
    if current_version(root, name) == version:
        return False
    publish.write_text_atomic(fs.join(dataset_dir(root, name), CURRENT), version + "\n")
    return True


def upgrade_layout(data_root: str | None, name: str) -> list[str]:
    """Move manifests of older releases out of their version folders (beside them, first);
    returns the versions moved. Afterwards every version folder holds Parquet files only."""
    root = resolve_data_root(data_root)
    base = dataset_dir(root, name)
    moved = []
    for entry in fs.list_dirs(base):
        inside = fs.join(base, entry, LEGACY_MANIFEST) if VERSION_PATTERN.fullmatch(entry) else ""
        text = fs.read_text(inside) if inside else None
        if text is None:
            continue
        beside = manifest_path(root, name, entry)
        if fs.read_text(beside) is None:
            publish.write_text_atomic(beside, text)
        fs.remove(inside)
        moved.append(entry)
    return moved


def check_model_inputs(manifest: DatasetManifest, likelihood: str) -> None:
    """Raise DatasetError when ``likelihood`` needs inputs in [0, 1] and the dataset's are not."""
    lo, hi = manifest.value_range
    if likelihood in UNIT_INTERVAL_LIKELIHOODS and (lo < 0.0 or hi > 1.0):
        raise DatasetError(
            f"dataset {manifest.name!r} version {manifest.version}: model inputs span [{lo:g}, {hi:g}] "
            f"but likelihood {likelihood!r} needs values in [0, 1]; re-ingest with a scale that "
            "maps the data into [0, 1] or train with model.likelihood='gaussian'"
        )


def check_trainable(manifest: DatasetManifest, batch_size: int) -> None:
    """DatasetError when the dataset is too small to train on: one full batch of train rows
    (``train.batch_size``) and at least one validation row (early stopping, the resume score)."""
    where = f"dataset {manifest.name!r} version {manifest.version}"
    n_train, n_valid = manifest.rows.get("train", 0), manifest.rows.get("valid", 0)
    if n_train < batch_size:
        raise DatasetError(
            f"{where} has {n_train} train rows, fewer than one batch "
            f"(train.batch_size={batch_size}): training needs at least {batch_size}; lower "
            "train.batch_size or ingest more rows"
        )
    if n_valid < 1:
        raise DatasetError(
            f"{where} has an empty valid split; training needs at least 1 validation row: "
            "re-ingest with a valid fraction > 0 (e.g. --valid-fraction 0.1) and enough rows"
        )
