"""`aevb corrupt`: degraded copies that keep ids, splits, labels and a link to the clean version;
the degradations match their definitions; reruns are no-ops; bad input writes nothing."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from models import constants as C
from models.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from tasks.ingest import ingest

    root = str(tmp_path_factory.mktemp("corrupt") / "data")
    ingest("digits", "digits", root)
    return root


def _split(root, name, split=C.TEST, version=None):
    from tasks.store import readers

    return readers.read_split(root, name, version, split)


def _listing(root):
    return sorted(os.listdir(os.path.join(root, "datasets")))


def test_inpaint_keeps_rows_and_zeroes_exactly_the_masked_entries(root):
    from tasks.corrupt import corrupt_dataset
    from tasks.store import datasets as ds
    from tasks.store.degradations import degradation_of

    out = corrupt_dataset("digits", "inpaint", data_root=root, amount=0.5, seed=1)
    assert out.name == "digits-inpaint" and out.created
    clean = ds.load_manifest(root, "digits")
    m = ds.load_manifest(root, out.name)
    assert m.source["clean"] == {"name": "digits", "version": clean.version}
    assert m.source["mask"] == out.mask and out.mask["name"] == "digits-inpaint.mask"
    assert degradation_of(m) == {**out.degradation, "kind": "inpaint"}
    assert m.rows == clean.rows and m.feature_shape == clean.feature_shape
    assert m.storage_dtype == "float32" and m.scale == 1.0
    for split in C.SPLITS:
        ids, x, labels = _split(root, "digits", split)
        y_ids, y, y_labels = _split(root, out.name, split)
        k_ids, mask, _ = _split(root, out.mask["name"], split, out.mask["version"])
        assert list(y_ids) == list(ids) == list(k_ids)
        np.testing.assert_array_equal(y_labels, labels)
        assert set(np.unique(mask)) == {0.0, 1.0}
        np.testing.assert_array_equal(y, x * mask)
    _, mask, _ = _split(root, out.mask["name"], C.TRAIN)
    assert abs((1 - mask).mean() - 0.5) < 4 * math.sqrt(0.25 / mask.size)


def test_rerun_is_a_no_op_and_another_seed_is_a_new_version(root):
    from tasks.corrupt import corrupt_dataset

    a = corrupt_dataset("digits", "denoise", data_root=root, noise_std=0.1)
    b = corrupt_dataset("digits", "denoise", data_root=root, noise_std=0.1)
    c = corrupt_dataset("digits", "denoise", data_root=root, noise_std=0.1, seed=7)
    assert a.created and not b.created and a.version == b.version
    assert c.created and c.version != a.version


def test_denoise_adds_noise_of_the_given_level(root):
    from tasks.corrupt import corrupt_dataset

    out = corrupt_dataset("digits", "denoise", "noisy", root, noise_std=0.3, seed=2)
    _, x, _ = _split(root, "digits", C.TRAIN)
    _, y, _ = _split(root, "noisy", C.TRAIN)
    resid = y - x
    # n ~ 92k draws: the sample std's relative error is ~ 1 / sqrt(2n) ~ 0.2 %
    assert resid.std() == pytest.approx(0.3, rel=0.02) and abs(resid.mean()) < 0.01
    assert out.degradation["noise_std"] == 0.3


def test_salt_pepper_sets_the_given_fraction_to_the_value_range_ends(root):
    from tasks.corrupt import corrupt_dataset

    corrupt_dataset("digits", "salt-pepper", "sp", root, amount=0.2, seed=3)
    _, x, _ = _split(root, "digits", C.TRAIN)
    _, y, _ = _split(root, "sp", C.TRAIN)
    changed = y != x
    assert set(np.unique(y[changed])) <= {0.0, 1.0}
    # an entry hit by its own value (0 or 1) is unchanged, so compare with P(hit and value differs)
    p = 0.1 * (x != 0).mean() + 0.1 * (x != 1).mean()
    assert changed.mean() == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / x.size))


def test_superres_is_average_pooling(root):
    from tasks.corrupt import corrupt_dataset
    from tasks.store import datasets as ds

    out = corrupt_dataset("digits", "superres", data_root=root, factor=2)
    assert ds.load_manifest(root, out.name).feature_shape == (4, 4)
    _, x, _ = _split(root, "digits")
    _, y, _ = _split(root, out.name)
    want = x.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16)
    np.testing.assert_allclose(y, want, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"kind": "blur"}, ConfigError, "kind='blur' is not known; choose one of denoise"),
        ({"kind": "superres", "factor": 3}, ConfigError, "factor=3 must be >= 2 and divide"),
        ({"kind": "denoise", "block": 3}, ConfigError, "`block` applies to kind='inpaint' only"),
        ({"kind": "inpaint", "amount": 1.0}, ConfigError, "amount=1.0 must lie in"),
        ({"kind": "inpaint", "name": "digits"}, DatasetError, "other than the clean"),
        ({"kind": "inpaint", "name": "Bad Name"}, DatasetError, "invalid dataset name"),
        ({"kind": "inpaint", "dataset": "nope"}, DatasetError, "dataset 'nope' not found"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(root, kwargs, error, match):
    from tasks.corrupt import corrupt_dataset

    before = _listing(root)
    args = {"dataset": "digits", "data_root": root, **kwargs}
    with pytest.raises(error, match=match):
        corrupt_dataset(**args)
    assert _listing(root) == before


def test_a_failure_mid_write_publishes_nothing(root, monkeypatch):
    import models.degradations as Dg
    from tasks.corrupt import corrupt_dataset
    from tasks.store import datasets as ds

    calls = {"n": 0}
    real = Dg.degrade

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the test split, after train and valid were written
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(Dg, "degrade", flaky)
    with pytest.raises(OSError, match="disk full"):
        corrupt_dataset("digits", "inpaint", "half", root, block=3)
    for name in ("half", "half.mask"):
        assert ds.current_version(root, name) is None
        folder = os.path.join(root, "datasets", name)
        assert not os.path.isdir(folder) or not os.listdir(folder)
