"""Source readers: every format round-trips into the store; built-ins load (tasks/sources)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models.constants import TEST, TRAIN, VALID
from models.errors import DatasetError
from tasks.ingest import ingest
from tasks.sources import load_source
from tasks.sources.idx import read_idx, write_idx
from tasks.store import datasets as ds
from tasks.store import readers


def _all_rows(root: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = [readers.read_split(root, name, None, s) for s in (TRAIN, VALID, TEST)]
    ids, x, y = (np.concatenate([p[i] for p in parts]) for i in range(3))
    order = np.argsort(ids.astype(str))
    return ids[order], x[order], y[order]


def _idx_folder(path, rng, n_train=50, n_test=20, shape=(4, 5), gz=True) -> dict:
    os.makedirs(path, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        ext = ".gz" if gz else ""
        write_idx(os.path.join(path, f"{prefix}-images-idx3-ubyte{ext}"), x)
        write_idx(os.path.join(path, f"{prefix}-labels-idx1-ubyte{ext}"), y)
        arrays[prefix] = (x, y)
    return arrays


def test_idx_round_trip_all_dtypes(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64):
        a = (rng.normal(size=(3, 2, 4)) * 50).astype(dtype)
        for name in ("a.idx", "a.idx.gz"):
            write_idx(str(tmp_path / name), a)
            back = read_idx(str(tmp_path / name))
            assert back.dtype == a.dtype and back.shape == a.shape
            np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_keeps_train_and_t10k_splits(tmp_path, gz: bool) -> None:
    arrays = _idx_folder(tmp_path / "src", np.random.default_rng(1), gz=gz)
    root = str(tmp_path / "root")
    result = ingest(str(tmp_path / "src"), "mini", root, valid_fraction=0.2)
    m = ds.load_manifest(root, "mini")
    assert result.created and m.feature_shape == (4, 5) and m.storage_dtype == "uint8"
    assert m.scale == pytest.approx(1 / 255) and m.rows == {TRAIN: 40, VALID: 10, TEST: 20}
    ids, x, y = readers.read_split(root, "mini", None, TEST)
    assert all(i.startswith("t10k-") for i in ids)
    k = np.asarray([int(i.split("-")[1]) for i in ids])
    x_ref, y_ref = arrays["t10k"]
    np.testing.assert_array_equal(
        x, x_ref[k].reshape(len(k), -1).astype(np.float32) * np.float32(1 / 255)
    )
    np.testing.assert_array_equal(y, y_ref[k])
    train_ids = readers.read_split(root, "mini", None, TRAIN)[0]
    assert all(i.startswith("train-") for i in train_ids)


def test_single_idx_file_with_explicit_labels_file(tmp_path) -> None:
    x = np.arange(6 * 9, dtype=np.uint8).reshape(6, 3, 3)
    write_idx(str(tmp_path / "imgs.idx"), x)
    write_idx(str(tmp_path / "labs.idx"), np.arange(6, dtype=np.uint8))
    data = load_source(str(tmp_path / "imgs.idx"), labels_file=str(tmp_path / "labs.idx"))
    assert data.feature_shape == (3, 3) and data.fixed_split is None
    np.testing.assert_array_equal(np.ma.getdata(data.labels), np.arange(6))


def test_csv_with_id_and_string_labels(tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("key,a,b,kind\nr1,0.5,1.5,cat\nr2,-1.0,2.0,dog\nr3,0.0,0.25,\n")
    root = str(tmp_path / "root")
    ingest(
        str(path),
        "tab",
        root,
        id_column="key",
        label_column="kind",
        valid_fraction=0,
        test_fraction=0,
    )
    m = ds.load_manifest(root, "tab")
    assert m.storage_dtype == "float32" and m.scale == 1.0 and m.feature_shape == (2,)
    assert m.label_names == ("cat", "dog") and m.value_range == (-1.0, 2.0)
    ids, x, y = _all_rows(root, "tab")
    assert list(ids) == ["r1", "r2", "r3"]
    np.testing.assert_array_equal(x, np.float32([[0.5, 1.5], [-1.0, 2.0], [0.0, 0.25]]))
    np.testing.assert_array_equal(y, [0, 1, -1])  # missing label -> null -> -1


def test_csv_of_whole_numbers_is_stored_as_uint8(tmp_path) -> None:
    path = tmp_path / "px.csv"
    path.write_text("p0,p1,p2\n0,128,255\n1,2,3\n")
    root = str(tmp_path / "root")
    ingest(str(path), "px", root, valid_fraction=0, test_fraction=0)
    m = ds.load_manifest(root, "px")
    assert (
        m.storage_dtype == "uint8"
        and m.scale == pytest.approx(1 / 255)
        and m.value_range == (0.0, 1.0)
    )
    ingest(
        str(path),
        "px16",
        root,
        valid_fraction=0,
        test_fraction=0,
        scale=1 / 300,
        storage_dtype="float32",
    )
    assert ds.load_manifest(root, "px16").storage_dtype == "float32"
    assert ds.load_manifest(root, "px16").value_range[1] == pytest.approx(255 / 300)


def test_npz_keeps_feature_shape_labels_and_ids(tmp_path) -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (12, 2, 3), dtype=np.uint8)
    y = rng.integers(0, 3, 12)
    ids = np.asarray([f"n{i}" for i in range(12)])
    np.savez(tmp_path / "d.npz", x=x, y=y, ids=ids)
    root = str(tmp_path / "root")
    ingest(str(tmp_path / "d.npz"), "npz", root)
    assert ds.load_manifest(root, "npz").feature_shape == (2, 3)
    got_ids, got_x, got_y = _all_rows(root, "npz")
    order = np.argsort(ids)
    assert list(got_ids) == list(ids[order])
    np.testing.assert_array_equal(got_x, x[order].reshape(12, 6) * np.float32(1 / 255))
    np.testing.assert_array_equal(got_y, y[order])


def _save_image(path, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_grayscale_with_subfolder_labels(tmp_path) -> None:
    rng = np.random.default_rng(3)
    pixels = {}
    for label in ("cats", "dogs"):
        for i in range(3):
            a = rng.integers(0, 256, (6, 5), dtype=np.uint8)
            rel = f"{label}/{i}.png"
            _save_image(tmp_path / "img" / rel, a)
            pixels[rel] = a
    root = str(tmp_path / "root")
    ingest(
        str(tmp_path / "img"),
        "pics",
        root,
        labels_from_folders=True,
        valid_fraction=0,
        test_fraction=0,
    )
    m = ds.load_manifest(root, "pics")
    assert m.feature_shape == (5, 6)[::-1] and m.label_names == ("cats", "dogs")
    ids, x, y = _all_rows(root, "pics")
    for i, row, label in zip(ids, x, y, strict=True):
        np.testing.assert_array_equal(row, pixels[i].reshape(-1) * np.float32(1 / 255))
        assert m.label_names[label] == i.split("/")[0]


def test_image_folder_becomes_rgb_when_any_image_has_colour(tmp_path) -> None:
    _save_image(tmp_path / "img" / "a.png", np.full((4, 4), 10, np.uint8))
    _save_image(tmp_path / "img" / "b.jpg", np.full((4, 4, 3), 200, np.uint8))
    data = load_source(str(tmp_path / "img"))
    assert data.feature_shape == (4, 4, 3) and data.options["color"] == "rgb"
    np.testing.assert_array_equal(data.x[0], np.full((4, 4, 3), 10))  # gray replicated to RGB


def test_parquet_list_column_and_reingest_of_a_stored_split(tmp_path) -> None:
    x = np.arange(20, dtype=np.float32).reshape(5, 4) / 20
    table = pa.table(
        {
            "key": [f"k{i}" for i in range(5)],
            "feats": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4),
            "cls": [0, 1, 0, 1, None],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    root = str(tmp_path / "root")
    ingest(
        str(tmp_path / "in.parquet"), "pq", root, x_column="feats", id_column="key",
        label_column="cls", valid_fraction=0, test_fraction=0,
    )  # fmt: skip
    ids, got, y = _all_rows(root, "pq")
    np.testing.assert_array_equal(got, x)
    np.testing.assert_array_equal(y, [0, 1, 0, 1, -1])
    # A stored split folder (columns id, x, label) re-ingests without any mapping.
    ingest("digits", "digits", root)
    m = ds.load_manifest(root, "digits")
    split_dir = os.path.join(root, "datasets", "digits", m.version, "split=test")
    ingest(split_dir, "digits-test", root, scale=1 / 16, valid_fraction=0, test_fraction=0)
    ids2, x2, y2 = readers.read_split(root, "digits-test", None, TRAIN)
    ids1, x1, y1 = readers.read_split(root, "digits", None, TEST)
    o1, o2 = np.argsort(ids1.astype(str)), np.argsort(ids2.astype(str))
    np.testing.assert_array_equal(x1[o1], x2[o2])
    np.testing.assert_array_equal(y1[o1], y2[o2])


def test_mnist_5k_builtin() -> None:
    data = load_source("mnist-5k")
    assert data.x.shape == (5000, 28, 28) and data.x.dtype == np.uint8
    assert data.scale == pytest.approx(1 / 255) and len(data.sha256) == 64
    assert np.bincount(np.ma.getdata(data.labels)).tolist() == [500] * 10


def test_fashion_mnist_builtin_from_a_folder(tmp_path) -> None:
    _idx_folder(tmp_path / "fm", np.random.default_rng(4), shape=(28, 28))
    data = load_source("fashion-mnist", path=str(tmp_path / "fm"))
    assert data.kind == "fashion-mnist" and data.label_names[9] == "ankle boot"
    assert (data.fixed_split == "test").sum() == 20


def test_fashion_mnist_missing_folder_explains_the_debian_package(tmp_path) -> None:
    with pytest.raises(
        DatasetError, match="install Debian's dataset-fashion-mnist package or pass .path."
    ):
        load_source("fashion-mnist", path=str(tmp_path / "absent"))


def test_options_that_do_not_apply_are_refused(tmp_path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)))
    with pytest.raises(DatasetError, match="option 'id_column' does not apply to npz sources"):
        load_source(str(tmp_path / "d.npz"), id_column="id")
