"""tf.data readers: order, coverage, determinism per (seed, epoch), bounded look-ahead."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.store import datasets as ds
from tasks.store import readers, streaming
from tasks.store.writer import DatasetWriter

N = 1000


def _row_index(x: np.ndarray) -> np.ndarray:
    """Recover the row number each model-space row encodes (see the fixture)."""
    raw = np.rint(x * 255).astype(np.int64)
    return raw[:, 0] + 256 * raw[:, 1]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """1000 rows in 4 part files of 4 row groups each; row i stores (i % 256, i // 256, 7)."""
    root = str(tmp_path_factory.mktemp("stream"))
    i = np.arange(N)
    x = np.stack([i % 256, i // 256, np.full(N, 7)], axis=1).astype(np.uint8)
    writer = DatasetWriter(
        root, "rows", feature_shape=(3,), storage_dtype="uint8", scale=1 / 255, split_seed=0,
        source={"kind": "test"}, row_group_rows=64, rows_per_file=256,
    )  # fmt: skip
    with writer:
        for start in range(0, N, 100):
            sl = slice(start, start + 100)
            writer.write("train", [f"r{k}" for k in i[sl]], x[sl], i[sl] % 10)
        writer.commit()
    return root


def _collect(dataset) -> np.ndarray:
    return np.concatenate([b.numpy() for b in dataset])


def test_layout_has_several_files_and_row_groups(root: str) -> None:
    files = readers.split_files(root, "rows", ds.current_version(root, "rows"), "train")
    assert len(files) == 4
    assert len(streaming._row_groups(files)) == 16


@pytest.mark.parametrize("in_memory", [True, False])
def test_unshuffled_batches_equal_read_split(root: str, in_memory: bool) -> None:
    ref = readers.read_split(root, "rows", None, "train")[1]
    batches = [
        b.numpy()
        for b in streaming.make_tf_dataset(root, "rows", None, "train", 300, in_memory=in_memory)
    ]
    assert [len(b) for b in batches] == [300, 300, 300, 100]
    got = np.concatenate(batches)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(_row_index(got), np.arange(N))


@pytest.mark.parametrize("in_memory", [True, False])
def test_shuffle_is_a_permutation_deterministic_per_seed_and_epoch(
    root: str, in_memory: bool
) -> None:
    def run(seed: int, epoch: int) -> np.ndarray:
        d = streaming.make_tf_dataset(
            root, "rows", None, "train", 128, shuffle=True, seed=seed, epoch=epoch,
            shuffle_buffer=300, in_memory=in_memory,
        )  # fmt: skip
        return _row_index(_collect(d))

    a = run(0, 0)
    np.testing.assert_array_equal(np.sort(a), np.arange(N))  # every row exactly once
    np.testing.assert_array_equal(a, run(0, 0))
    assert not np.array_equal(a, run(0, 1)) and not np.array_equal(a, run(1, 0))
    assert not np.array_equal(a, np.arange(N))
    # Rows travel far: the first batch draws from several row groups (64 rows each).
    assert len(np.unique(a[:128] // 64)) >= 3


@pytest.mark.parametrize("in_memory", [True, False])
def test_drop_remainder(root: str, in_memory: bool) -> None:
    d = streaming.make_tf_dataset(
        root, "rows", None, "train", 300, shuffle=True, drop_remainder=True, in_memory=in_memory
    )
    sizes = [int(b.shape[0]) for b in d]
    assert sizes == [300, 300, 300]
    assert d.element_spec.shape.as_list() == [300, 3]


def test_streaming_look_ahead_is_bounded_by_the_buffer() -> None:
    """The shuffler pulls at most buffer + one chunk of rows before handing out a block."""
    pulled = []

    def chunks():
        for k in range(100):
            pulled.append(k)
            yield np.full((50, 2), k, np.uint8)

    gen = streaming._pools(chunks(), 32, rng=np.random.default_rng(0), pool_rows=400)
    first = next(gen)
    assert len(pulled) * 50 <= 400 + 50 and len(first) % 32 == 0 and len(first) >= 400 - 32
    blocks = [first, *gen]
    assert all(len(b) <= 400 + 50 + 32 for b in blocks)
    assert sum(len(b) for b in blocks) == 100 * 50


def test_a_dataset_iterated_twice_repeats_its_order(root: str) -> None:
    for in_memory in (True, False):
        d = streaming.make_tf_dataset(
            root, "rows", None, "train", 100, shuffle=True, seed=3, in_memory=in_memory
        )
        np.testing.assert_array_equal(_collect(d), _collect(d))


def test_float32_storage_streams_unchanged(tmp_path) -> None:
    root = str(tmp_path)
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    with DatasetWriter(
        root, "f", feature_shape=(4,), storage_dtype="float32", scale=1.0, split_seed=0, source={},
        row_group_rows=8,
    ) as writer:  # fmt: skip
        writer.write("valid", [str(k) for k in range(50)], x, None)
        writer.commit()
    got = _collect(streaming.make_tf_dataset(root, "f", None, "valid", 16, in_memory=False))
    np.testing.assert_array_equal(got, x)
    assert readers.read_split(root, "f", None, "valid")[2].tolist() == [-1] * 50  # null labels
    for in_memory in (True, False):  # an empty split yields no batches
        assert (
            list(streaming.make_tf_dataset(root, "f", None, "train", 16, in_memory=in_memory)) == []
        )
