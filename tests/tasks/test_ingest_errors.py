"""Bad input: one clear line naming the file and the fix, a DatasetError, and nothing written.

(The CLI maps PipelineError to exit code 2; the last test checks that through `aevb ingest` when
the CLI is wired.)
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from models.errors import DatasetError, PipelineError
from tasks.ingest import ingest
from tasks.sources.idx import write_idx
from tasks.store import datasets as ds
from tasks.store.writer import DatasetWriter


def _write(path, content: bytes | str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode) as fh:
        fh.write(content)
    return str(path)


def _idx_pair(src, n_images: int, n_labels: int) -> str:
    os.makedirs(src, exist_ok=True)
    write_idx(os.path.join(src, "train-images-idx3-ubyte"), np.zeros((n_images, 3, 3), np.uint8))
    write_idx(os.path.join(src, "train-labels-idx1-ubyte"), np.zeros(n_labels, np.uint8))
    return str(src)


def _truncated_idx(src) -> str:
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 4, 4)
    return _write(src / "train-images-idx3-ubyte", header + bytes(100))


def _images(src, sizes: list[tuple[int, int]]) -> str:
    os.makedirs(src, exist_ok=True)
    for i, size in enumerate(sizes):
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(src / f"{i}.png")
    return str(src)


def _bad_image(src) -> str:
    _images(src, [(4, 4)])
    _write(src / "broken.png", b"\x89PNG not really")
    return str(src)


# (case id, builder(tmp source dir) -> source path, ingest options, expected message regex)
CASES: list[tuple[str, Callable, dict, str]] = [
    (
        "missing-file",
        lambda s: str(s / "nope.csv"),
        {},
        r"'.*nope.csv' is neither a built-in .* nor an existing file or folder; check the path",
    ),
    (
        "unknown-format",
        lambda s: _write(s / "notes.txt", "hello"),
        {},
        r"notes.txt: unknown format; supported: IDX .*; or pass `format`",
    ),
    (
        "idx-bad-magic",
        lambda s: _write(s / "train-images-idx3-ubyte", b"\x12\x34\x08\x03" + bytes(20)),
        {},
        r"bad IDX magic 12340803; expected 0000",
    ),
    (
        "idx-truncated",
        _truncated_idx,
        {},
        r"truncated IDX payload: header says shape \[10, 4, 4\] \(160 bytes\) but 100 bytes follow",
    ),
    (
        "idx-count-mismatch",
        lambda s: _idx_pair(s / "idx", 5, 4),
        {},
        r"4 labels \(shape \[4\]\) for 5 images in .*train-images-idx3-ubyte",
    ),
    (
        "idx-corrupt-gzip",
        lambda s: _write(s / "train-images-idx3-ubyte.gz", gzip.compress(bytes(64))[:20]),
        {},
        r"truncated or corrupt gzip data",
    ),
    (
        "csv-ragged",
        lambda s: _write(s / "r.csv", "a,b\n1,2\n3,4,5\n"),
        {},
        r"r.csv: ragged CSV: line 3 has 3 fields but the header has 2; fix that row",
    ),
    (
        "csv-non-numeric",
        lambda s: _write(s / "n.csv", "a,b\n1,2\n3,oops\n"),
        {},
        r"n.csv: column 'b' holds non-numeric value 'oops'; features must be numbers",
    ),
    (
        "csv-missing-column",
        lambda s: _write(s / "m.csv", "a,b\n1,2\n"),
        {"label_column": "lbl"},
        r"m.csv: column 'lbl' not found; available columns: a, b",
    ),
    (
        "csv-empty-cell",
        lambda s: _write(s / "e.csv", "a,b\n1,2\n3,\n"),
        {},
        r"e.csv: column 'b' has an empty cell at data row 1",
    ),
    (
        "csv-nan",
        lambda s: _write(s / "nan.csv", "a,b\n1,2\n3,nan\n"),
        {},
        r"nan.csv: row 1 holds NaN or Inf; clean or drop such rows first",
    ),
    (
        "npz-inf",
        lambda s: (np.savez(s / "i.npz", x=np.array([[0.0, np.inf]])), str(s / "i.npz"))[1],
        {},
        r"i.npz: row 0 holds NaN or Inf",
    ),
    (
        "csv-empty",
        lambda s: _write(s / "z.csv", ""),
        {},
        r"z.csv: input is empty \(no header, no rows\)",
    ),
    (
        "csv-header-only",
        lambda s: _write(s / "h.csv", "a,b\n"),
        {},
        r"h.csv: input is empty \(a header but no rows\)",
    ),
    (
        "npz-empty",
        lambda s: (np.savez(s / "e.npz", x=np.zeros((0, 3))), str(s / "e.npz"))[1],
        {},
        r"e.npz: input is empty \(found array of shape \(0, 3\)\)",
    ),
    (
        "npz-no-x",
        lambda s: (np.savez(s / "k.npz", data=np.zeros((2, 3))), str(s / "k.npz"))[1],
        {},
        r"k.npz: NPZ has no array 'x' \(found: data\)",
    ),
    (
        "npz-object-array",
        lambda s: (np.savez(s / "o.npz", x=np.array([{"a": 1}], dtype=object)), str(s / "o.npz"))[
            1
        ],
        {},
        r"o.npz: unreadable NPZ .*object arrays are refused",
    ),
    (
        "images-differing-sizes",
        lambda s: _images(s / "img", [(4, 4), (4, 4), (5, 4)]),
        {},
        r"images differ in size: 0.png is 4x4 but 2.png is 5x4; resize them",
    ),
    (
        "images-unreadable",
        lambda s: _bad_image(s / "img"),
        {},
        r"broken.png: unreadable image .*; replace or remove the file",
    ),
    (
        "duplicate-ids",
        lambda s: _write(s / "d.csv", "id,a\nr1,1\nr2,2\nr1,3\n"),
        {"id_column": "id"},
        r"d.csv: ids must be unique but 1 repeat \(e.g. 'r1'\); fix the id column",
    ),
    (
        "invalid-name",
        lambda s: _write(s / "ok.csv", "a\n1\n"),
        {"name": "Bad Name"},
        r"invalid dataset name 'Bad Name': use 1-64 characters",
    ),
    (
        "bad-fractions",
        lambda s: _write(s / "ok.csv", "a\n1\n"),
        {"valid_fraction": 0.6, "test_fraction": 0.5},
        r"valid_fraction \+ test_fraction = 1.1 leaves no training rows",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_writes_nothing(tmp_path, case) -> None:
    _, build, options, pattern = case
    source = build(_mkdir(tmp_path / "src"))
    root = tmp_path / "root"
    options = dict(options)
    name = options.pop("name", "bad")
    with pytest.raises(PipelineError, match=pattern) as info:
        ingest(source, name, str(root), **options)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    assert not root.exists() or not any(p.is_file() for p in root.rglob("*")), (
        "something was written"
    )


def _mkdir(path):
    os.makedirs(path, exist_ok=True)
    return path


def test_empty_image_folder(tmp_path) -> None:
    _mkdir(tmp_path / "img")
    with pytest.raises(DatasetError, match="no PNG/JPEG images found; input is empty"):
        ingest(str(tmp_path / "img"), "x", str(tmp_path / "root"), format="images")


def test_values_outside_unit_interval_are_caught_before_training(tmp_path) -> None:
    csv = _write(tmp_path / "wide.csv", "a,b\n-2.5,0.5\n1.0,4.0\n0.0,0.0\n")
    root = str(tmp_path / "root")
    ingest(csv, "wide", root, valid_fraction=0, test_fraction=0)
    manifest = ds.load_manifest(root, "wide")
    assert manifest.value_range == (-2.5, 4.0)
    with pytest.raises(
        DatasetError, match=r"wide.*inputs span \[-2.5, 4\] but likelihood 'bernoulli' needs"
    ):
        ds.check_model_inputs(manifest, "bernoulli")
    ds.check_model_inputs(manifest, "gaussian")


def test_failure_after_staging_started_leaves_nothing(tmp_path, monkeypatch) -> None:
    """A write that fails mid-way (NaN in a later chunk) removes its staging folder."""
    root = str(tmp_path / "root")
    writer = DatasetWriter(
        root, "half", feature_shape=(2,), storage_dtype="float32", scale=1.0, split_seed=0, source={},
        row_group_rows=1,
    )  # fmt: skip
    with pytest.raises(DatasetError, match="row id 'b' holds NaN"), writer:
        writer.write("train", ["a"], np.float32([[0, 1]]), None)
        writer.write("train", ["b"], np.float32([[np.nan, 1]]), None)
    assert not [p for p in (tmp_path / "root").rglob("*") if p.is_file()]
