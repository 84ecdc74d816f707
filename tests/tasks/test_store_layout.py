"""The x column's storage layout (tasks/store/tables.py): uint8 rows as fixed_size_binary(D),
float32 rows as fixed_size_list<float32>[D]; datasets written in the earlier list layout for uint8
read the same; the version hash hashes values, not the layout; every engine decodes x with the
line README documents."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.constants import COL_X, SPLITS
from models.errors import DatasetError
from tasks.store import datasets as ds
from tasks.store import readers, streaming, tables
from tasks.store.writer import DatasetWriter

N, SHAPE = 300, (4, 5)
D = 20


def _rows(dtype: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "uint8":
        return rng.integers(0, 256, (N, D)).astype(np.uint8)
    return rng.random((N, D)).astype(np.float32)


def _write(root: str, dtype: str, old_list_layout: bool = False) -> str:
    """Write the same rows; ``old_list_layout`` stores uint8 x as the earlier list<uint8>[D]."""
    x = _rows(dtype)
    writer = DatasetWriter(
        root, "lay", feature_shape=SHAPE, storage_dtype=dtype,
        scale=1 / 255 if dtype == "uint8" else 1.0, split_seed=0, source={"kind": "test"},
        row_group_rows=64, rows_per_file=128,
    )  # fmt: skip
    if old_list_layout:
        index = writer.schema.get_field_index(COL_X)
        old = pa.field(COL_X, pa.list_(pa.uint8(), D), nullable=False)
        writer.schema = writer.schema.set(index, old)
    with writer:
        for split, rows in zip(SPLITS, np.split(np.arange(N), [200, 250]), strict=True):
            writer.write(split, [f"r{i}" for i in rows], x[rows], rows % 3)
        return writer.commit().version


def _x_type(root: str, version: str) -> pa.DataType:
    files = readers.split_files(root, "lay", version, "train")
    assert len(files) == 2  # 200 rows in parts of 128: the readers must cross files
    return pq.read_schema(files[0]).field(COL_X).type


@pytest.mark.parametrize(("dtype", "kind"), [("uint8", pa.binary(D)), ("float32", None)])
def test_uint8_rows_are_one_binary_value_and_float32_rows_a_float_list(tmp_path, dtype, kind):
    version = _write(str(tmp_path), dtype)
    want = kind or pa.list_(pa.float32(), D)
    assert _x_type(str(tmp_path), version) == want
    field = pq.read_schema(readers.split_files(str(tmp_path), "lay", version, "train")[0])
    assert field.field(COL_X).metadata == {tables.X_DTYPE_KEY: dtype.encode()}


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_codec_round_trips_chunked_and_sliced_columns_in_both_layouts(dtype):
    x = _rows(dtype)
    kinds = [tables.x_type(dtype, D), pa.list_(pa.from_numpy_dtype(x.dtype), D)]
    kinds.append(pa.binary(D * x.itemsize))  # binary also carries float32 rows, bytes little-endian
    for kind in kinds:
        column = tables.encode_x(x, kind)
        assert column.type == kind
        np.testing.assert_array_equal(tables.decode_x(column, dtype, D), x)
        chunked = pa.chunked_array([column.slice(0, 7), column.slice(7, 100), column.slice(107)])
        np.testing.assert_array_equal(tables.decode_x(chunked, dtype, D), x)
        np.testing.assert_array_equal(tables.decode_x(column.slice(33, 5), dtype, D), x[33:38])
    assert tables.decode_x(pa.chunked_array([], pa.binary(D)), dtype, D).shape == (0, D)


def test_codec_refuses_rows_that_do_not_fit_and_null_rows():
    with pytest.raises(ValueError, match="does not fill"):
        tables.encode_x(np.zeros((3, D - 1), np.uint8), pa.binary(D))
    with pytest.raises(DatasetError, match="not 20 float32 values"):
        tables.decode_x(tables.encode_x(np.zeros((3, D), np.uint8), pa.binary(D)), "float32", D)
    nulls = pa.array([b"\0" * D, None], pa.binary(D))
    with pytest.raises(DatasetError, match="1 null rows"):
        tables.decode_x(nulls, "uint8", D)


def test_a_dataset_in_the_earlier_list_layout_reads_exactly_as_the_binary_one(tmp_path):
    new_root, old_root = str(tmp_path / "new"), str(tmp_path / "old")
    new, old = _write(new_root, "uint8"), _write(old_root, "uint8", old_list_layout=True)
    assert _x_type(new_root, new) == pa.binary(D)
    assert _x_type(old_root, old) == pa.list_(pa.uint8(), D)
    assert new == old  # the version hashes the values: the layout does not change it
    x = _rows("uint8")
    for split, rows in zip(SPLITS, np.split(np.arange(N), [200, 250]), strict=True):
        want = x[rows].astype(np.float32) * np.float32(1 / 255)  # model input = x * scale
        for root in (new_root, old_root):
            ids, got, labels = readers.read_split(root, "lay", None, split)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(labels, rows % 3)
            streamed = np.concatenate(
                [b[1] for b in readers.iter_batches(root, "lay", None, split, 33)]
            )
            np.testing.assert_array_equal(streamed, want)
            for in_memory in (True, False):
                batches = streaming.make_tf_dataset(
                    root, "lay", None, split, 16, shuffle=True, seed=1, epoch=2,
                    in_memory=in_memory,
                )  # fmt: skip
                got_rows = np.concatenate([b.numpy() for b in batches])
                order = np.lexsort(got_rows.T[::-1])
                np.testing.assert_array_equal(got_rows[order], want[np.lexsort(want.T[::-1])])
    # Re-ingesting the same content into the old-layout root is a no-op: nothing is rewritten.
    assert _write(old_root, "uint8") == old
    assert _x_type(old_root, old) == pa.list_(pa.uint8(), D)
    assert ds.list_versions(old_root, "lay") == [old]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[str, np.ndarray]:
    root = str(tmp_path_factory.mktemp("engines"))
    version = _write(root, "uint8")
    return ds.version_dir(root, "lay", version), _rows("uint8")


def _by_id(ids, x: np.ndarray) -> np.ndarray:
    order = np.argsort([int(str(i)[1:]) for i in ids])
    return x[order]


def test_pandas_decodes_x_with_the_documented_line(folder):
    import pandas as pd

    path, want = folder
    df = pd.read_parquet(path)
    x = np.frombuffer(b"".join(df["x"]), np.uint8).reshape(len(df), -1)  # README's line
    np.testing.assert_array_equal(_by_id(df["id"], x), want)


def test_polars_decodes_x_with_the_documented_line(folder):
    import polars as pl

    path, want = folder
    df = pl.read_parquet(path).with_columns(
        pl.col("x").bin.reinterpret(dtype=pl.Array(pl.UInt8, D))
    )
    assert df.schema["x"] == pl.Array(pl.UInt8, D)
    np.testing.assert_array_equal(_by_id(df["id"].to_list(), df["x"].to_numpy()), want)


def test_duckdb_decodes_x_with_the_documented_lines(folder):
    import duckdb

    path, want = folder
    con = duckdb.connect()
    glob = f"read_parquet('{path}/**/*.parquet', hive_partitioning=true)"
    rows = con.sql(f"SELECT id, x FROM {glob}").fetchnumpy()
    x = np.frombuffer(b"".join(rows["x"]), np.uint8).reshape(len(rows["x"]), -1)  # Python
    np.testing.assert_array_equal(_by_id(rows["id"], x), want)
    sql = con.sql(  # SQL only: x as a list of D UTINYINT
        f"SELECT id, list_transform(range({D}), lambda i: ('0x' || substr(hex(x), 2 * i + 1, 2))"
        f"::UTINYINT) AS pixels FROM {glob}"
    ).fetchall()
    ids, pixels = zip(*sql, strict=True)
    np.testing.assert_array_equal(_by_id(ids, np.array(pixels)), want)


def test_the_version_hash_is_the_sha256_of_the_values_however_they_are_chunked():
    """The formula of every earlier release: per split, sha256 of the ids' UTF-8 lengths (int64
    LE), of their bytes, of x's bytes and of the labels (null = int64 min), then of the meta."""
    import hashlib
    import json

    from tasks.store.writer import ContentHasher, as_labels

    rng = np.random.default_rng(3)
    ids = np.array(["a", "bé", "ünï", 7, "", "x" * 40] * 5, dtype=object)
    x = rng.integers(0, 256, (len(ids), D)).astype(np.uint8)
    labels = np.ma.MaskedArray(np.arange(len(ids)), mask=np.arange(len(ids)) % 4 == 0)
    meta = {"feature_shape": [D], "schema_version": 1}
    want = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for split in SPLITS:
        rows = {"train": slice(0, 18), "valid": slice(0, 0), "test": slice(18, None)}[split]
        encoded = [str(i).encode() for i in ids[rows]]
        for part in (
            np.array([len(e) for e in encoded], "<i8").tobytes(),
            b"".join(encoded),
            x[rows].tobytes(),
            np.ma.filled(labels[rows], np.iinfo(np.int64).min).astype("<i8").tobytes(),
        ):
            want.update(hashlib.sha256(part).digest())
    for cuts in ([18], [5, 11, 18, 19]):  # chunked two ways: the same version
        hasher = ContentHasher()
        bounds = [0, *cuts, len(ids)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            for split, (lo, hi) in (("train", (0, 18)), ("test", (18, len(ids)))):
                s, e = max(a, lo), min(b, hi)
                if s < e:
                    hasher.update(split, ids[s:e], x[s:e], as_labels(labels[s:e], e - s))
        assert hasher.version(meta) == want.hexdigest()[:16]
