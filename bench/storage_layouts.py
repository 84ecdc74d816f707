"""Parquet layouts of the x column, measured (numbers, not a test): which one the store writes.

For Fashion-MNIST (70,000 x 784 uint8, the IDX files of Debian's dataset-fashion-mnist or
--source DIR; synthetic images of the same size when neither is there), each layout is written
with pyarrow as the store writes it (row groups of ~4 MB, a string id and an int64 label beside
x) and timed for: encode (numpy -> Arrow column), write (pq.write_table), file size, read (the
whole file back to a [rows, 784] array), stream (row group by row group, as
tasks/store/streaming.py reads), and what a pandas, polars or duckdb user pays to get the
[rows, 784] array with the line README documents for that layout. Medians of --repeats runs, in
CPU seconds of this process (the machine may be shared) and wall seconds.

    .venv/bin/python bench/storage_layouts.py [--source DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bench.machine import load  # noqa: E402
from tasks.sources.builtin import FASHION_MNIST_DIR  # noqa: E402
from tasks.store import tables  # noqa: E402

D = 784
ROW_GROUP_ROWS = (4 << 20) // D  # the store's ~4 MB of x per row group


@dataclass(frozen=True)
class Layout:
    name: str
    kind: pa.DataType
    options: dict = field(default_factory=dict)


LIST, BINARY = pa.list_(pa.uint8(), D), pa.binary(D)
NO_DICT = {"use_dictionary": ["label"]}
LAYOUTS = [
    Layout("list<uint8> snappy (before)", LIST, {"compression": "snappy", **NO_DICT}),
    Layout("list<uint8> snappy + dictionary", LIST, {"compression": "snappy"}),
    Layout("list<uint8> zstd + dictionary", LIST, {"compression": "zstd"}),
    Layout("binary(784) snappy (now)", BINARY, {"compression": "snappy", **NO_DICT}),
    Layout("binary(784) snappy + dictionary", BINARY, {"compression": "snappy"}),
    Layout("binary(784) zstd", BINARY, {"compression": "zstd", **NO_DICT}),
    Layout("binary(784) uncompressed", BINARY, {"compression": "none", **NO_DICT}),
]
NOW = LAYOUTS[3]


def read_images(folder: str) -> np.ndarray:
    """train + t10k images of an IDX folder as [rows, 784] uint8 (gunzip + the 16-byte header)."""
    parts = []
    for prefix in ("train", "t10k"):
        with open(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), "rb") as fh:
            raw = gzip.decompress(fh.read())
        parts.append(np.frombuffer(raw, np.uint8, offset=16).reshape(-1, D))
    return np.concatenate(parts)


def source_folder(source: str | None, workdir: str) -> tuple[str, str]:
    """(folder with the IDX.gz files, what it is)."""
    folder = source or FASHION_MNIST_DIR
    if os.path.isfile(os.path.join(folder, "train-images-idx3-ubyte.gz")):
        return folder, f"Fashion-MNIST IDX files ({folder})"
    from bench.ingest_throughput import fashion_source

    return fashion_source(workdir)


def write_layout(x: np.ndarray, layout: Layout, path: str) -> None:
    """What the store's writer does for one file: the three columns, then pq.write_table."""
    n = len(x)
    table = pa.table(
        {
            "id": pa.array([f"fashion-{i:05d}" for i in range(n)], pa.string()),
            "x": tables.encode_x(x, layout.kind),
            "label": pa.array(np.arange(n) % 10, pa.int64()),
        }
    )
    pq.write_table(
        table, path, row_group_size=ROW_GROUP_ROWS, write_statistics=["label"], **layout.options
    )


def pyarrow_from_gz(folder: str, layout: Layout, path: str) -> None:
    """pyarrow alone, the reference for ingest: the same .gz files -> arrays -> one Parquet file."""
    write_layout(read_images(folder), layout, path)


def read_all(path: str) -> np.ndarray:
    column = pq.read_table(path, columns=["x"]).column("x")
    return tables.decode_x(column, "uint8", D)


def stream(path: str) -> int:
    pf, rows = pq.ParquetFile(path), 0
    for group in range(pf.num_row_groups):
        batch = pf.read_row_group(group, columns=["x"], use_threads=False)
        rows += len(tables.decode_x(batch.column("x"), "uint8", D))
    return rows


def with_pandas(path: str) -> np.ndarray:
    import pandas as pd

    df = pd.read_parquet(path)
    if pa.types.is_fixed_size_binary(pq.read_schema(path).field("x").type):
        return np.frombuffer(b"".join(df["x"]), np.uint8).reshape(len(df), -1)
    return np.stack(df["x"].to_numpy())


def with_polars(path: str) -> np.ndarray:
    import polars as pl

    df = pl.read_parquet(path)
    if df.schema["x"] == pl.Binary:
        df = df.with_columns(pl.col("x").bin.reinterpret(dtype=pl.Array(pl.UInt8, D)))
    return df["x"].to_numpy()


def with_duckdb(path: str) -> np.ndarray:
    import duckdb

    x = duckdb.connect().sql(f"SELECT x FROM read_parquet('{path}')").fetchnumpy()["x"]
    if len(x) and isinstance(x[0], bytes):
        return np.frombuffer(b"".join(x), np.uint8).reshape(len(x), -1)
    return np.stack(x)


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """(median CPU s, median wall s, last result)."""
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(cpu), statistics.median(wall), out


STEPS = ("write", "read", "stream", "pandas", "polars", "duckdb")


def measure(x: np.ndarray, layout: Layout, workdir: str, repeats: int) -> dict[str, object]:
    path = os.path.join(workdir, f"layout-{LAYOUTS.index(layout)}.parquet")
    out: dict[str, object] = {}
    out["encode"] = timed(lambda: tables.encode_x(x, layout.kind), repeats)[0]
    out["write"] = timed(lambda: write_layout(x, layout, path), repeats)
    out["size"] = os.path.getsize(path)
    for step, fn in (
        ("read", read_all), ("stream", stream), ("pandas", with_pandas),
        ("polars", with_polars), ("duckdb", with_duckdb),
    ):  # fmt: skip
        cpu, wall, got = timed(lambda fn=fn: fn(path), repeats)
        if step != "stream" and not np.array_equal(got, x):
            raise AssertionError(f"{layout.name}: {step} did not give back the written rows")
        out[step] = (cpu, wall)
    return out


def print_table(x: np.ndarray, workdir: str, repeats: int) -> dict[str, dict[str, object]]:
    mb = x.nbytes / 1e6
    print(
        f"{len(x):,} x {D} uint8 = {mb:.1f} MB; median of {repeats}; CPU s (wall s); "
        f"load average {load()}"
    )
    head = "".join(f"{s:>16}" for s in STEPS)
    print(f"  {'layout':<34}{'encode':>7}{head}{'size MB':>9}")
    results = {}
    for layout in LAYOUTS:
        r = results[layout.name] = measure(x, layout, workdir, repeats)
        cells = "".join(f"{r[s][0]:>7.2f} ({r[s][1]:>5.2f})" for s in STEPS)
        print(f"  {layout.name:<34}{r['encode']:>7.3f}{cells}{r['size'] / 1e6:>9.1f}")
    before, now = results[LAYOUTS[0].name], results[NOW.name]
    ratios = ", ".join(f"{s} {before[s][0] / now[s][0]:.1f}x" for s in STEPS)
    print(
        f"  now vs before (CPU): {ratios}; size {now['size'] / before['size']:.0%} of before; "
        f"load average {load()}"
    )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", help=f"folder with the IDX.gz files (default {FASHION_MNIST_DIR})")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="aevb-bench-layouts-") as workdir:
        folder, what = source_folder(args.source, workdir)
        print(f"source: {what}")
        print_table(read_images(folder), workdir, args.repeats)


if __name__ == "__main__":
    main()
