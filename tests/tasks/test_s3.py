"""Remote data roots: the whole store over s3:// against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import DatasetError
from tasks import datasets as ds
from tasks.ingest import ingest

pytestmark = pytest.mark.slow  # server start + TF import + many small HTTP round trips: ~25 s


@pytest.fixture(scope="module")
def s3_root():
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
        }.items():  # fmt: skip
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("aevb-test")
        yield "s3://aevb-test/team/data"
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_ingest_read_and_stream_over_s3(s3_root: str, tmp_path) -> None:
    result = ingest("digits", "digits", s3_root)
    assert result.created and result.path == f"{s3_root}/datasets/digits/{result.version}"
    assert not ingest("digits", "digits", s3_root).created  # identical content: no-op

    local = str(tmp_path / "local")
    ingest("digits", "digits", local)
    assert ds.current_version(s3_root, "digits") == ds.current_version(local, "digits")
    for split in ("train", "test"):
        remote_split, local_split = (
            ds.read_split(s3_root, "digits", None, split),
            ds.read_split(local, "digits", None, split),
        )
        for a, b in zip(remote_split, local_split, strict=True):
            np.testing.assert_array_equal(a, b)

    streamed = np.concatenate([b[1] for b in ds.iter_batches(s3_root, "digits", None, "valid", 64)])
    np.testing.assert_array_equal(streamed, ds.read_split(local, "digits", None, "valid")[1])
    tf_batches = ds.make_tf_dataset(s3_root, "digits", None, "test", 50, in_memory=False)
    np.testing.assert_array_equal(
        np.concatenate([b.numpy() for b in tf_batches]),
        ds.read_split(local, "digits", None, "test")[1],
    )
    assert [m.name for m in ds.list_datasets(s3_root)] == ["digits"]


def test_new_version_and_current_over_s3(s3_root: str) -> None:
    first = ingest("digits", "d2", s3_root)
    second = ingest("digits", "d2", s3_root, split_seed=7)
    assert second.created and second.version != first.version
    assert ds.current_version(s3_root, "d2") == second.version
    assert set(ds.list_versions(s3_root, "d2")) == {first.version, second.version}
    assert (
        ds.load_manifest(s3_root, "d2", first.version).split_seed == 0
    )  # old versions stay readable


def test_errors_over_s3_write_nothing(s3_root: str, tmp_path) -> None:
    import s3fs

    with pytest.raises(DatasetError, match="not found under s3://aevb-test/team/data/datasets"):
        ds.load_manifest(s3_root, "absent")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,x\n")
    with pytest.raises(DatasetError, match="non-numeric"):
        ingest(str(bad), "bad", s3_root)
    assert not s3fs.S3FileSystem().exists("aevb-test/team/data/datasets/bad")
