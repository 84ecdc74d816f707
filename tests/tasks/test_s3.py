"""Remote data roots: the whole store over s3:// against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import time

import numpy as np
import pytest

from models.errors import DatasetError
from tasks.ingest import ingest
from tasks.store import datasets as ds
from tasks.store import readers, streaming

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
        # moto keeps its buckets in process memory across servers: other modules that import this
        # fixture may have made the bucket already (they write under their own prefixes)
        if not s3fs.S3FileSystem().exists("aevb-test"):
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
            readers.read_split(s3_root, "digits", None, split),
            readers.read_split(local, "digits", None, split),
        )
        for a, b in zip(remote_split, local_split, strict=True):
            np.testing.assert_array_equal(a, b)

    streamed = np.concatenate(
        [b[1] for b in readers.iter_batches(s3_root, "digits", None, "valid", 64)]
    )
    np.testing.assert_array_equal(streamed, readers.read_split(local, "digits", None, "valid")[1])
    tf_batches = streaming.make_tf_dataset(s3_root, "digits", None, "test", 50, in_memory=False)
    np.testing.assert_array_equal(
        np.concatenate([b.numpy() for b in tf_batches]),
        readers.read_split(local, "digits", None, "test")[1],
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


def test_tables_publish_over_s3_with_the_manifest_beside_the_folder(s3_root: str) -> None:
    """Latent and restored tables go through the same store floor on an object store."""
    import pyarrow.dataset as pads

    from models import constants as C
    from tasks.store import fs, tables

    rng = np.random.default_rng(0)
    latent = tables.latent_table_path(s3_root, "digits", "aevb-digits", 1)
    restored = tables.restored_table_path(s3_root, "digits", "aevb-digits", 1, "map")

    def latent_fill(stage: str) -> dict:
        schema = tables.latent_schema(2)
        with fs.parquet_writer(fs.join(stage, "part-test-00000.parquet"), schema) as w:
            z = rng.normal(size=(5, 2)).astype(np.float32)
            w.write_table(tables.latent_batch(schema, list("abcde"), C.TEST, np.arange(5), z, z))
        return {"rows": 5}

    def restored_fill(stage: str) -> dict:
        schema = tables.restored_schema(4, {"dataset": "digits"})
        with fs.parquet_writer(fs.join(stage, "part-test-00000.parquet"), schema) as w:
            x = rng.random((3, 4)).astype(np.float32)
            w.write_table(tables.restored_batch(schema, ["a", "b", "c"], C.TEST, np.arange(3), x))
        return {"rows": 3}

    for folder, fill, rows in ((latent, latent_fill, 5), (restored, restored_fill, 3)):
        doc = tables.publish_table(folder, fill)
        assert tables.read_manifest(folder)["rows"] == doc["rows"] == rows
        assert fs.list_files(folder) == ["part-test-00000.parquet"]
        filesystem, path = fs.filesystem(folder)
        assert pads.dataset(path, filesystem=filesystem).to_table().num_rows == rows
        assert not [n for n, _ in fs.entries(fs.parent(folder)) if ".staging-" in n]


def test_stale_staging_prefixes_on_s3_are_swept_by_owner(s3_root: str, monkeypatch) -> None:
    """A stage whose writer runs on another host is swept once its lease expired; a stage of a
    live process on this host is kept."""
    from tasks.store import fs, publish

    base = fs.join(s3_root, "sweep")
    foreign = fs.join(base, ".v1.staging-otherhost.123.0.cafecafe")
    mine = fs.join(base, f".v1.staging-{publish.owner_token()}")
    for stage in (foreign, mine):
        fs.write_bytes(fs.join(stage, "part-00000.parquet"), b"x")
        fs.write_bytes(stage + publish.LEASE_SUFFIX, str(time.time()).encode())
    publish.sweep(fs.join(base, "v1"))  # the foreign lease is fresh: both stay
    assert fs.exists(fs.join(foreign, "part-00000.parquet"))
    monkeypatch.setattr(publish, "LEASE_SECONDS", 0.0)
    removed = publish.sweep(fs.join(base, "v1"))
    assert removed == [foreign]
    assert not fs.exists(fs.join(foreign, "part-00000.parquet"))
    assert fs.exists(fs.join(mine, "part-00000.parquet"))


def test_a_training_run_records_the_full_s3_uri_of_its_dataset(s3_root: str, tmp_path, monkeypatch):
    """Lineage: the MLflow run names the s3:// dataset version, as a tag and as its input."""
    import json

    from models.config import ModelConfig, TrainConfig
    from tasks import tracking
    from tasks.train import train

    monkeypatch.setenv("AEVB_MLFLOW_DIR", str(tmp_path / "mlflow"))
    monkeypatch.setenv("AEVB_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    version = ingest("digits", "lin", s3_root).version
    config = TrainConfig(epochs=1, batch_size=500, jit_compile=False)
    out = train("lin", ModelConfig(latent_dim=2, hidden_sizes=(8,)), config, s3_root)
    run = tracking.client().get_run(out.run_id)
    assert run.data.tags["aevb.dataset_uri"] == f"{s3_root}/datasets/lin/{version}"
    assert run.data.tags["aevb.data_root"] == s3_root
    [ds] = run.inputs.dataset_inputs
    assert json.loads(ds.dataset.source)["uri"] == f"{s3_root}/datasets/lin/{version}"
