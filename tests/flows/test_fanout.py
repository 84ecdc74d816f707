"""Fan-out of sharded ingest and export on Prefect's task runners (tasks/runners.py).

`ingest` of several shards and `export_latents` run their shard/part loop inline or submit one task
per shard/part (``shard_task`` / ``part_task``); the same inputs go through the default thread
pool, prefect-dask's DaskTaskRunner with a LocalCluster, and (slow) a real `dask scheduler` +
`dask worker` started here as subprocesses on 127.0.0.1. The written Parquet must be identical to
the inline run, and to the `ingest` of the concatenated input.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from models import constants as C
from models.errors import DatasetError
from tests.helpers import env, free_port

REPO = Path(__file__).resolve().parents[2]
D = 16  # 4x4 features
SHARD_LABELS = (
    ("a", "b"),
    ("b", "c"),
    ("c",),
)  # per-shard label sets differ: codes must be re-done


def _write_csv(path: Path, ids: list[str], x: np.ndarray, labels: list[str]) -> None:
    head = ["id", "label", *(f"f{j}" for j in range(D))]
    lines = [",".join(head)]
    lines += [
        ",".join([i, lab, *map(str, row)]) for i, lab, row in zip(ids, labels, x, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    """Three CSV shards (ids unique across shards, string labels) and their concatenation."""
    tmp = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    all_ids, all_x, all_labels, paths = [], [], [], []
    for s, names in enumerate(SHARD_LABELS):
        n = 40 + 10 * s
        ids = [f"s{s}-{i}" for i in range(n)]
        x = rng.integers(0, 256, (n, D))
        labels = [names[i % len(names)] for i in range(n)]
        _write_csv(tmp / f"part-{s}.csv", ids, x, labels)
        paths.append(str(tmp / f"part-{s}.csv"))
        all_ids += ids
        all_x.append(x)
        all_labels += labels
    _write_csv(tmp / "all.csv", all_ids, np.concatenate(all_x), all_labels)
    return {"paths": paths, "all": str(tmp / "all.csv"), "tmp": tmp}


OPTIONS = {"id_column": "id", "label_column": "label"}


def _on_runner(fn, kind: str = "threads", address: str | None = None):
    """``fn`` as a Prefect flow whose tasks run on a fresh runner of ``kind``."""
    from prefect import flow

    from tasks.runners import make_task_runner

    return flow(fn, name=f"fanout-{fn.__name__}", task_runner=make_task_runner(kind, address))


def _ingest_shards(paths: list[str], name: str, root: str, options: dict, prefix_ids=False):
    from tasks.ingest import ingest, stage_shard_task

    return ingest(paths, name, root, prefix_ids=prefix_ids, shard_task=stage_shard_task, **options)


def _ingest(shards: dict, root: Path, kind: str, address: str | None = None):
    return _on_runner(_ingest_shards, kind, address)(shards["paths"], "sharded", str(root), OPTIONS)


def _dataset(root: Path, version: str) -> dict:
    folder = root / "datasets" / "sharded" / version
    return {s: pq.read_table(folder / f"split={s}") for s in C.SPLITS}


def _assert_same_dataset(a: dict, b: dict) -> None:
    for split in C.SPLITS:
        assert a[split].num_rows > 0
        assert a[split].equals(b[split]), f"split {split} differs"


@pytest.fixture(scope="module")
def ingested_threads(prefect_harness, shards):
    root = shards["tmp"] / "root-threads"
    return root, _ingest(shards, root, "threads")


def test_sharded_ingest_equals_ingest_of_the_concatenated_input(shards, ingested_threads) -> None:
    from tasks.ingest import ingest
    from tasks.store.datasets import load_manifest

    root, result = ingested_threads
    whole = ingest(shards["all"], "sharded", str(shards["tmp"] / "root-whole"), **OPTIONS)
    assert result.created and result.version == whole.version  # the content hash agrees
    _assert_same_dataset(_dataset(root, result.version), _dataset(shards["tmp"] / "root-whole",
                                                                  whole.version))  # fmt: skip
    m = load_manifest(str(root), "sharded")
    assert list(m.label_names) == ["a", "b", "c"] and sum(m.rows.values()) == 40 + 50 + 60
    assert not [p for p in (root / "datasets" / "sharded").iterdir() if p.name.startswith(".")]


def test_inline_sharded_ingest_equals_the_task_per_shard_one(shards, ingested_threads) -> None:
    from tasks.ingest import ingest

    root_t, threads = ingested_threads
    root = shards["tmp"] / "root-inline"
    inline = ingest(shards["paths"], "sharded", str(root), **OPTIONS)
    assert inline.version == threads.version
    _assert_same_dataset(_dataset(root, inline.version), _dataset(root_t, threads.version))


def test_sharded_ingest_on_a_dask_local_cluster_is_identical(shards, ingested_threads) -> None:
    root_t, threads = ingested_threads
    root = shards["tmp"] / "root-dask-local"
    dask = _ingest(shards, root, "dask")
    assert dask.version == threads.version
    _assert_same_dataset(_dataset(root, dask.version), _dataset(root_t, threads.version))


def test_ids_repeated_across_shards_are_refused_unless_prefixed(prefect_harness, tmp_path) -> None:
    x = np.arange(3 * D).reshape(3, D) % 7
    for s in range(2):
        _write_csv(tmp_path / f"p{s}.csv", ["0", "1", "2"], x, ["a", "b", "a"])
    paths = [str(tmp_path / "p0.csv"), str(tmp_path / "p1.csv")]
    run = _on_runner(_ingest_shards)
    with pytest.raises(DatasetError, match=r"row id '0' of shard .*p1.csv' also appears in shard"):
        run(paths, "dups", str(tmp_path / "root"), OPTIONS)
    assert not (tmp_path / "root" / "datasets" / "dups").exists() or not [
        p for p in (tmp_path / "root" / "datasets" / "dups").iterdir()
    ]  # nothing written, staging removed
    ok = run(paths, "dups", str(tmp_path / "root"), OPTIONS, prefix_ids=True)
    ids = pq.read_table(Path(ok.path) / "split=train").column(C.COL_ID).to_pylist()
    assert all(i.startswith(("p0.csv/", "p1.csv/")) for i in ids)


def test_shards_stored_differently_are_refused(prefect_harness, tmp_path) -> None:
    ints = np.arange(2 * D).reshape(2, D) % 200  # auto: uint8, scale 1/255
    _write_csv(tmp_path / "p0.csv", ["a0", "a1"], ints, ["x", "y"])
    _write_csv(tmp_path / "p1.csv", ["b0", "b1"], ints + 0.5, ["x", "y"])  # auto: float32, scale 1
    run = _on_runner(_ingest_shards)
    paths = [str(tmp_path / "p0.csv"), str(tmp_path / "p1.csv")]
    with pytest.raises(DatasetError, match=r"p1.csv' has storage_dtype='float32' but .*'uint8'"):
        run(paths, "mixed", str(tmp_path / "r"), OPTIONS)
    agreed = {**OPTIONS, "storage_dtype": "float32", "scale": 1.0}
    # 4 rows: fractions of 1/4 give each split a row (0.1 would leave valid and test empty)
    ok = run(paths, "mixed", str(tmp_path / "r"), {**agreed, "valid_fraction": 0.25,
                                                    "test_fraction": 0.25})  # fmt: skip
    assert ok.created


# ----------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def model_env(prefect_harness, shards):
    """A multi-part dataset (rows_per_file=16) and an untrained model registered as champion."""
    from tasks import tracking
    from tasks.register import register
    from tasks.store.writer import DatasetWriter
    from tests.tasks._mlflow_helpers import save_untrained_model

    tmp = shards["tmp"]
    old = os.environ.get("AEVB_MLFLOW_DIR")
    os.environ["AEVB_MLFLOW_DIR"] = str(tmp / "mlflow")
    root = str(tmp / "root-export")
    rng = np.random.default_rng(1)
    writer = DatasetWriter(root, "parts", feature_shape=(4, 4), storage_dtype="uint8", scale=1.0,
                           split_seed=0, source={"kind": "test", "uri": "memory://parts",
                                                 "sha256": ""}, rows_per_file=16)  # fmt: skip
    with writer:
        for split, n in ((C.TRAIN, 50), (C.VALID, 20), (C.TEST, 33)):
            x = (rng.random((n, D)) < 0.4).astype(np.uint8)
            writer.write(split, [f"{split}-{i}" for i in range(n)], x, rng.integers(0, 3, n))
        version = writer.commit().version
    saved = save_untrained_model(str(tmp / "model"), latent_dim=3, seed=4)
    run_id = tracking.start_run("aevb-parts", "fanout")
    tracking.end_run(run_id)
    reg = register(run_id, saved, "parts", version, -50.0, data_root=root, eval_num_samples=8)
    yield {"root": root, "uri": f"models:/{reg.name}@champion", "version": version}
    if old is None:
        os.environ.pop("AEVB_MLFLOW_DIR", None)
    else:
        os.environ["AEVB_MLFLOW_DIR"] = old


def _export_parts(uri: str, dataset: str, root: str, batch_size: int):
    from tasks.export import encode_part_task, export_latents

    return export_latents(uri, dataset, root, batch_size=batch_size, part_task=encode_part_task)


def _take_table(path: str) -> tuple:
    """(table, {file: bytes}) of a published latent table, then remove it (and its manifest) so
    the next export writes the same model version from scratch."""
    table = pq.read_table(path)
    files = {f: (Path(path) / f).read_bytes() for f in sorted(os.listdir(path))}
    shutil.rmtree(path)
    os.remove(f"{path}.manifest.json")
    return table, files


def _export(env: dict, kind: str, address: str | None = None):
    """The part-per-task export on ``kind``; returns (output, table, {file: bytes})."""
    out = _on_runner(_export_parts, kind, address)(env["uri"], "parts", env["root"], 7)
    return (out, *_take_table(out.path))


@pytest.fixture(scope="module")
def exported_threads(model_env):
    return _export(model_env, "threads")


def test_task_per_part_export_is_byte_identical_to_the_inline_export(model_env, exported_threads):
    """`aevb export` (parts inline) and the pipeline's export (one task per part) are the same
    function: the published files are byte for byte the same."""
    from tasks.export import export_latents

    out, table, files = exported_threads
    assert out.created and out.rows == 50 + 20 + 33
    # one part per (split, dataset part): 4 + 2 + 3 parts of <= 16 rows
    assert list(files) == [
        *(f"part-test-{i:05d}.parquet" for i in range(3)),
        *(f"part-train-{i:05d}.parquet" for i in range(4)),
        *(f"part-valid-{i:05d}.parquet" for i in range(2)),
    ]
    single = export_latents(model_env["uri"], "parts", model_env["root"], batch_size=7)
    reference, reference_files = _take_table(single.path)
    assert table.num_rows == reference.num_rows == single.rows
    assert reference_files == files


def test_sharded_export_on_a_dask_local_cluster_is_identical(model_env, exported_threads) -> None:
    _, threads, files_t = exported_threads
    out, dask, files = _export(model_env, "dask")
    assert out.rows == threads.num_rows and files == files_t
    assert dask.equals(threads)


def test_export_in_a_flow_takes_the_pipeline_retry_policy(model_env, exported_threads,
                                                          monkeypatch) -> None:  # fmt: skip
    """How the pipeline calls it: inside its own flow, per-part tasks wrapped with the stage
    retry policy; one injected transient error is retried and the table is unchanged."""
    from prefect import flow

    import tasks.export as export
    from tasks.runners import with_io_retries

    real, calls = export.make_encoder, []

    def flaky(saved_model_dir: str):
        calls.append(saved_model_dir)
        if len(calls) == 1:
            raise ConnectionError("connection reset by peer (injected)")
        return real(saved_model_dir)

    monkeypatch.setattr(export, "make_encoder", flaky)

    @flow(name="pipeline-like")
    def pipeline_like():
        return export.export_latents(
            model_env["uri"], "parts", model_env["root"], batch_size=7,
            part_task=with_io_retries(export.encode_part_task, 1, 0.0),
        )  # fmt: skip

    out = pipeline_like()
    table, files = _take_table(out.path)
    assert len(calls) == 9 + 1 and table.equals(exported_threads[1])
    assert files == exported_threads[2]


# ----------------------------------------------------------------------------- real cluster
@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """`dask scheduler` + one `dask worker` (1 thread) as subprocesses on 127.0.0.1."""
    from distributed import Client

    tmp = tmp_path_factory.mktemp("dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    bin_dir = Path(sys.executable).parent
    common = ["--no-dashboard"]
    procs = [
        subprocess.Popen(
            [
                str(bin_dir / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *common,
            ],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "scheduler.log", "w"),
        )  # fmt: skip
    ]
    try:
        procs.append(
            subprocess.Popen(
                [
                    str(bin_dir / "dask"),
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--host",
                    "127.0.0.1",
                    "--local-directory",
                    str(tmp / "worker"),
                    *common,
                ],
                cwd=tmp,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp / "worker.log", "w"),
            )  # fmt: skip
        )
        start = time.monotonic()
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=90)
            startup = time.monotonic() - start
            yield {"address": address, "client": client, "startup_seconds": startup}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_real_dask_cluster_ingest_and_export_are_identical(
    dask_cluster, shards, ingested_threads, model_env, exported_threads
) -> None:
    address, client = dask_cluster["address"], dask_cluster["client"]
    root_t, threads = ingested_threads
    root = shards["tmp"] / "root-dask-cluster"
    result = _ingest(shards, root, "dask", address)
    assert result.version == threads.version
    _assert_same_dataset(_dataset(root, result.version), _dataset(root_t, threads.version))

    out, table, files = _export(model_env, "dask", address)
    assert table.equals(exported_threads[1]) and files == exported_threads[2]

    def worker_state() -> dict:
        import os as _os
        import sys as _sys

        compiled = _sys.modules.get("tasks.compiled")
        return {
            "pid": _os.getpid(),
            "read_csv": "tasks.sources.tabular" in _sys.modules,
            "encoders": len(compiled._ENCODERS) if compiled else 0,
        }

    (state,) = client.run(worker_state).values()
    # the shards were parsed and the parts encoded in the worker process, not in this one
    assert state["pid"] != os.getpid() and state["read_csv"] and state["encoders"] == 1


@pytest.mark.slow
def test_pipeline_with_sharded_input_on_the_dask_runner(shards, ingested_threads, tmp_path):
    """`aevb pipeline` with data.shards and pipeline.task_runner=dask: the shards become one
    dataset (same content as the sharded ingest on threads, ids prefixed by file), a model is
    trained and registered, and the exported table has one row per input row."""
    from flows.config import load_config
    from flows.pipeline import pipeline_flow
    from tasks.store.tables import latent_table_path

    root = str(tmp_path / "data")
    with env(MLFLOW_TRACKING_URI=None, AEVB_MLFLOW_DIR=str(tmp_path / "mlflow")):
        config = load_config(overrides=[
            f"data.shards={shards['paths']!r}", "data.name='sharded'", f"data.data_root={root!r}",
            "pipeline.task_runner='dask'", "train.epochs=1", "train.jit_compile=false",
            "model.hidden_sizes=[8]", "model.latent_dim=2", "evaluate.num_samples=4",
            "train.batch_size=20", 'data.options={id_column="id", label_column="label"}',
        ])  # fmt: skip
        s = pipeline_flow(config)
    assert s.model_name == "aevb-sharded" and s.model_version == 1 and s.promoted
    table = pq.read_table(latent_table_path(root, "sharded", "aevb-sharded", 1))
    ids = sorted(table.column(C.COL_ID).to_pylist())
    want = sorted(f"part-{s}.csv/s{s}-{i}" for s in range(3) for i in range(40 + 10 * s))
    assert ids == want
