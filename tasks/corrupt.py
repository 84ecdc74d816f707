"""Corrupt stage: degraded copies of a dataset, so restoration can be measured against the truth.

`corrupt_dataset("digits", "inpaint")` writes, through the dataset store (atomic, versioned):

    <root>/datasets/digits-inpaint/<version>/       y = degrade(x): same ids, splits, labels and
                                                   stored order; float32 in model space (scale 1);
                                                   superres features are [H/s, W/s(, C)]
    <root>/datasets/digits-inpaint.mask/<version>/  inpaint only: uint8 mask, 1 = observed

Kinds (`kind`): denoise (additive Gaussian noise, `noise_std`), salt-pepper (a fraction `amount`
of entries set to the value range's low/high), inpaint (random pixels missing w.p. `amount`, or one
`block` x `block` hole per image), superres (average pooling by `factor`).

The clean reference is the source dataset version itself (versions are immutable): the degraded
manifest's `source` records {"kind": "corrupt", "clean": {name, version}, "mask": {name, version},
"degradation": {kind, noise_std, amount, factor, block, low, high, seed}}; `aevb restore` reads it
to know the degradation and to score against the clean rows. Random draws are keyed by (seed,
chunk index) with fixed-size chunks, so the same inputs give the same versions (a rerun is a no-op).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from models import constants as C
from models.errors import DatasetError
from tasks.logs import logger
from tasks.store import datasets, readers, tables
from tasks.store.degradations import (
    MASK_SUFFIX,
    SOURCE_KIND,
    cli_kind,
    degradation_kind,
    degradation_record,
    make_spec,
)
from tasks.store.writer import DatasetWriter

CHUNK_ROWS = 4096  # the degradation's random draws are keyed by (seed, chunk index)


@dataclass(frozen=True)
class CorruptOutput:
    name: str
    version: str
    path: str
    created: bool
    clean: dict[str, str]
    mask: dict[str, str] | None
    degradation: dict[str, Any]


def corrupt_dataset(
    dataset: str,
    kind: str,
    name: str | None = None,
    data_root: str | None = None,
    version: str | None = None,
    *,
    noise_std: float = 0.2,
    amount: float | None = None,
    factor: int = 2,
    block: int = 0,
    seed: int = 0,
) -> CorruptOutput:
    """Degrade every split of ``dataset`` and store the result as dataset ``name``."""
    kind = degradation_kind(kind)
    root = datasets.resolve_data_root(data_root)
    clean = datasets.load_manifest(root, dataset, version)
    name = datasets.validate_name(name or f"{clean.name}-{cli_kind(kind)}")
    if name == clean.name or name == clean.name + MASK_SUFFIX:
        raise DatasetError(f"name={name!r}: choose a name other than the clean dataset's")
    spec = make_spec(
        kind,
        clean.feature_shape,
        clean.value_range,
        noise_std=noise_std if kind == "gaussian" else None,
        amount=amount,
        factor=factor,
        block=block,
    )
    record = degradation_record(spec, seed)
    clean_ref = {"name": clean.name, "version": clean.version}
    source = {
        "kind": SOURCE_KIND,
        "uri": f"aevb-corrupt://{clean.name}/{clean.version}",
        "sha256": "",
        "clean": clean_ref,
        "mask": None,
        "degradation": record,
    }
    y_writer = _writer(root, name, clean, spec.observed_shape, "float32", source)
    m_writer = None
    if kind == "inpaint":
        m_source = {"kind": SOURCE_KIND, "role": "mask", "clean": clean_ref, "degradation": record}
        m_writer = _writer(root, name + MASK_SUFFIX, clean, spec.feature_shape, "uint8", m_source)
    try:
        for split, ids, y, mask, labels in _degraded(root, clean, spec, seed):
            y_writer.write(split, ids, y, labels)
            if m_writer is not None:
                m_writer.write(split, ids, (mask > 0).astype(np.uint8), labels)
        mask_ref = None
        if m_writer is not None:
            m = m_writer.commit()
            mask_ref = {"name": m.name, "version": m.version}
            y_writer.source = {**source, "mask": mask_ref}  # the manifest is written at commit
        result = y_writer.commit()
    except BaseException:
        y_writer.abort()
        if m_writer is not None:
            m_writer.abort()
        raise
    logger().info(
        "corrupt: %s (%s) -> %s version %s%s",
        clean.name,
        cli_kind(kind),
        name,
        result.version,
        "" if result.created else " (unchanged)",
    )
    return CorruptOutput(
        name, result.version, result.path, result.created, clean_ref, mask_ref, record
    )


def _degraded(
    root: str, clean: datasets.DatasetManifest, spec: Any, seed: int
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray | None, np.ma.MaskedArray]]:
    """(split, ids, y [B, D'], mask [B, D] or None, labels) in stored order, chunk by chunk."""
    import tensorflow as tf

    from models.degradations import degrade

    chunk = 0
    for split in C.SPLITS:
        for ids, x, labels in readers.iter_batches(
            root, clean.name, clean.version, split, CHUNK_ROWS
        ):
            y, mask = degrade(spec, x, tf.constant([seed, chunk], tf.int32))
            chunk += 1
            labels = np.ma.masked_equal(labels, tables.NULL_LABEL)
            yield split, ids, y.numpy(), None if mask is None else mask.numpy(), labels


def _writer(root, name, clean, shape, dtype, source) -> DatasetWriter:
    return DatasetWriter(
        root,
        name,
        feature_shape=shape,
        storage_dtype=dtype,
        scale=1.0,
        split_seed=clean.split_seed,
        source=source,
        label_names=clean.label_names,
    )


corrupt_task = task(corrupt_dataset, name="corrupt", cache_policy=NO_CACHE)
