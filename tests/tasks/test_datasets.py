"""The dataset store: layout, manifest, versioning, readers, model-input checks (tasks/store/)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_digits

from models.constants import COL_ID, COL_LABEL, COL_X, SPLITS
from models.errors import DatasetError
from tasks.ingest import ingest
from tasks.store import datasets as ds
from tasks.store import readers, roots


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("root"))
    ingest("digits", data_root=root)
    return root


def test_layout_and_manifest_follow_the_contract(digits_root: str) -> None:
    base = os.path.join(digits_root, "datasets", "digits")
    version = open(os.path.join(base, "CURRENT")).read().strip()
    # The manifest sits beside the version folder, which holds Parquet files only.
    doc = json.load(open(os.path.join(base, f"{version}.manifest.json")))
    found = sorted(os.path.relpath(os.path.join(d, f), os.path.join(base, version))
                   for d, _, files in os.walk(os.path.join(base, version)) for f in files)  # fmt: skip
    assert found and all(f.endswith(".parquet") and f.startswith("split=") for f in found)
    assert doc["version"] == version and doc["name"] == "digits"
    assert doc["feature_shape"] == [8, 8] and doc["storage_dtype"] == "uint8"
    assert doc["scale"] == pytest.approx(1 / 16) and doc["value_range"] == [0.0, 1.0]
    assert doc["rows"] == {"train": 1437, "valid": 180, "test": 180}
    assert doc["source"]["kind"] == "digits" and len(doc["source"]["sha256"]) == 64
    assert doc["split_seed"] == 0 and doc["schema_version"] == 1
    for split in SPLITS:
        parts = sorted(os.listdir(os.path.join(base, version, f"split={split}")))
        assert parts and all(p.startswith("part-") and p.endswith(".parquet") for p in parts)
    schema = pq.read_schema(os.path.join(base, version, "split=train", "part-00000.parquet"))
    assert schema.field(COL_ID).type == pa.string()
    assert schema.field(COL_X).type == pa.binary(64)  # uint8 rows: one binary value each
    assert schema.field(COL_LABEL).type == pa.int64()


def test_splits_partition_the_source_and_round_trip_exactly(digits_root: str) -> None:
    bunch = load_digits()
    seen = {}
    for split in SPLITS:
        ids, x, labels = readers.read_split(digits_root, "digits", None, split)
        assert x.dtype == np.float32 and x.shape == (len(ids), 64) and labels.dtype == np.int64
        for i, row, label in zip(ids, x, labels, strict=True):
            seen[i] = split
            k = int(i.split("-")[1])
            np.testing.assert_array_equal(row, (bunch.data[k] / 16).astype(np.float32))
            assert label == bunch.target[k]
    assert len(seen) == 1797  # every row exactly once across the splits


def test_iter_batches_streams_the_same_rows_in_order(digits_root: str) -> None:
    ids, x, labels = readers.read_split(digits_root, "digits", None, "train")
    batches = list(readers.iter_batches(digits_root, "digits", None, "train", batch_size=100))
    assert [len(b[0]) for b in batches] == [100] * 14 + [37]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), ids)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[2] for b in batches]), labels)


def test_reingest_is_a_noop_and_other_seed_a_new_version(digits_root: str) -> None:
    first = ds.load_manifest(digits_root, "digits")
    again = ingest("digits", data_root=digits_root)
    assert not again.created and again.version == first.version
    other = ingest("digits", "digits-s1", digits_root, split_seed=1)
    assert other.created and other.version != first.version
    assert [m.name for m in ds.list_datasets(digits_root)] == ["digits", "digits-s1"]


def test_missing_dataset_says_how_to_ingest(tmp_path) -> None:
    with pytest.raises(DatasetError, match=r"not found .*aevb ingest SOURCE --name nope"):
        ds.load_manifest(str(tmp_path), "nope")


def test_unknown_version_lists_the_available_ones(digits_root: str) -> None:
    current = ds.current_version(digits_root, "digits")
    with pytest.raises(
        DatasetError, match=f"no version '00000000deadbeef' \\(available: {current}\\)"
    ):
        ds.load_manifest(digits_root, "digits", "00000000deadbeef")


@pytest.mark.parametrize("version", ["../..", "..", "../../../outside", "abc", "/etc", "v1"])
def test_versions_are_content_hashes_never_paths(digits_root: str, version: str) -> None:
    with pytest.raises(DatasetError, match="invalid dataset version"):
        ds.load_manifest(digits_root, "digits", version)
    with pytest.raises(DatasetError, match="invalid dataset version"):
        readers.read_split(digits_root, "digits", version, "test")


@pytest.mark.parametrize("name", ["", "Upper", "-lead", "a/b", "..", "x" * 65, "sp ace"])
def test_invalid_names_are_refused(tmp_path, name: str) -> None:
    with pytest.raises(DatasetError, match="invalid dataset name"):
        ingest("digits", name, str(tmp_path))
    assert not (tmp_path / "datasets").exists() or not any((tmp_path / "datasets").iterdir())


def test_data_root_resolution(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AEVB_DATA_ROOT", str(tmp_path / "env"))
    assert ds.resolve_data_root(None) == str(tmp_path / "env")
    assert ds.resolve_data_root(str(tmp_path / "arg")) == str(tmp_path / "arg")
    assert ds.resolve_data_root("s3://bucket/prefix/") == "s3://bucket/prefix"
    monkeypatch.delenv("AEVB_DATA_ROOT")
    assert ds.resolve_data_root(None) == roots.default_data_root()
    assert roots.default_data_root().endswith(os.sep + "data")


def test_check_model_inputs_guards_unit_interval_likelihoods(digits_root: str) -> None:
    manifest = ds.load_manifest(digits_root, "digits")
    ds.check_model_inputs(manifest, "bernoulli")  # [0, 1]: fine
    wide = ds.DatasetManifest(**{**manifest.__dict__, "value_range": (-0.5, 3.0)})
    ds.check_model_inputs(wide, "gaussian")
    for likelihood in ("bernoulli", "continuous_bernoulli"):
        with pytest.raises(
            DatasetError, match=r"span \[-0.5, 3\] but likelihood .* needs values in \[0, 1\]"
        ):
            ds.check_model_inputs(wide, likelihood)
