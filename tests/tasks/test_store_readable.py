"""Every Parquet folder the stores publish opens as is: by folder path and by recursive glob, in
pandas, pyarrow (read_table and pyarrow.dataset), polars and duckdb. A published folder holds
Parquet files only; its manifest sits beside it (tasks/store/)."""

from __future__ import annotations

import os

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from models import constants as C
from tasks.ingest import ingest
from tasks.store import datasets as ds
from tasks.store import tables


def _only_parquet(folder: str) -> list[str]:
    files = [
        os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs
    ]
    assert files and all(f.endswith(".parquet") for f in files), files
    return files


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, tuple[str, int]]:
    """A dataset version, a latent table and a restored table, each published by the store."""
    root = str(tmp_path_factory.mktemp("root"))
    result = ingest("digits", "digits", root)
    rng = np.random.default_rng(0)
    n, k, d = 30, 3, 64

    def latent_fill(stage: str) -> dict:
        schema = tables.latent_schema(k, provenance={"dataset": "digits"})
        for split in C.SPLITS:
            with tables_writer(stage, f"part-{split}-00000.parquet", schema) as w:
                z = rng.normal(size=(n, k)).astype(np.float32)
                w.write_table(tables.latent_batch(schema, [f"{split}-{i}" for i in range(n)],
                                                  split, np.arange(n) % 3, z, np.exp(z)))  # fmt: skip
        return {"rows": 3 * n}

    def restored_fill(stage: str) -> dict:
        schema = tables.restored_schema(d, {"dataset": "digits"})
        with tables_writer(stage, "part-test-00000.parquet", schema) as w:
            x = rng.random((n, d)).astype(np.float32)
            w.write_table(tables.restored_batch(schema, [f"t-{i}" for i in range(n)], "test",
                                                np.full(n, -1), x))  # fmt: skip
        return {"rows": n}

    latent = tables.latent_table_path(root, "digits", "aevb-digits", 1)
    restored = tables.restored_table_path(root, "digits", "aevb-digits", 1, "map")
    tables.publish_table(latent, latent_fill)
    tables.publish_table(restored, restored_fill)
    return {
        "dataset": (ds.version_dir(root, "digits", result.version), 1797),
        "latent": (latent, 3 * n),
        "restored": (restored, n),
    }


def tables_writer(stage: str, name: str, schema):
    from tasks.store import fs

    return fs.parquet_writer(fs.join(stage, name), schema)


@pytest.mark.parametrize("kind", ["dataset", "latent", "restored"])
def test_the_folder_holds_parquet_only_and_its_manifest_sits_beside_it(folders, kind) -> None:
    folder, _ = folders[kind]
    _only_parquet(folder)
    assert os.path.isfile(f"{folder}.manifest.json")


@pytest.mark.parametrize("kind", ["dataset", "latent", "restored"])
def test_every_engine_reads_the_folder_as_is(folders, kind) -> None:
    folder, rows = folders[kind]
    frames = {
        "pandas": pd.read_parquet(folder),
        "pyarrow": pq.read_table(folder).to_pandas(),
        "pyarrow.dataset": pads.dataset(folder, partitioning="hive").to_table().to_pandas(),
        "polars": pl.read_parquet(folder).to_pandas(),
        "polars glob": pl.scan_parquet(f"{folder}/**/*.parquet", hive_partitioning=True)
        .collect()
        .to_pandas(),
        "duckdb": duckdb.connect()
        .sql(f"SELECT * FROM read_parquet('{folder}/**', hive_partitioning=true)")
        .df(),
    }
    for engine, df in frames.items():
        assert len(df) == rows, f"{engine} read {len(df)} rows of {kind}, expected {rows}"
        assert C.COL_ID in df.columns and df[C.COL_ID].is_unique, engine
        assert C.COL_SPLIT in df.columns, f"{engine}: no split column in {kind}"
    # A plain recursive glob reads every row too (split is then only in the folder names).
    assert pl.scan_parquet(f"{folder}/**/*.parquet").collect().height == rows


def test_dataset_split_is_a_hive_partition(folders) -> None:
    folder, _ = folders["dataset"]
    df = pd.read_parquet(folder)
    assert sorted(df[C.COL_SPLIT].astype(str).unique()) == sorted(C.SPLITS)
    counts = (
        duckdb.connect()
        .sql(
            f"SELECT split, count(*) AS n FROM read_parquet('{folder}/**', hive_partitioning=true) "
            "GROUP BY split ORDER BY split"
        )
        .fetchall()
    )
    assert dict(counts) == {C.TEST: 180, C.TRAIN: 1437, C.VALID: 180}


def test_a_version_of_the_older_layout_stays_readable_and_is_moved_on_write(tmp_path) -> None:
    """Releases before the manifest moved kept `<version>/manifest.json`: still readable, and the
    next write to the dataset moves the manifest beside the folder."""
    root = str(tmp_path)
    first = ingest("digits", "old", root)
    folder = ds.version_dir(root, "old", first.version)
    os.rename(f"{folder}.manifest.json", os.path.join(folder, "manifest.json"))  # the old layout
    assert ds.load_manifest(root, "old").version == first.version
    assert ds.list_versions(root, "old") == [first.version]
    ingest("digits", "old", root, split_seed=5)  # any write to the dataset
    assert os.path.isfile(f"{folder}.manifest.json")
    _only_parquet(folder)
    assert len(pd.read_parquet(folder)) == 1797
