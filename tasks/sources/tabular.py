"""Tabular sources: CSV (numeric feature columns), NPZ (arrays x, optional y and ids), Parquet.

Feature columns must be numeric with no empty cells; an optional id column must be unique; an
optional label column may hold integers or strings (strings become codes 0..K-1, names kept).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import zipfile
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from models.errors import DatasetError
from tasks.sources.base import SourceData, finish, require_file
from tasks.sources.files import check_path
from tasks.store import tables

_TEXT_PROBE = 1 << 16  # bytes checked for binary data before pyarrow parses the file
_CSV_ERRORS = (
    pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError,
    OSError, EOFError, zlib.error,
)  # fmt: skip


def check_text(path: str) -> None:
    """DatasetError unless the file starts as UTF-8 text (a CSV of binary garbage, or another
    encoding, is refused before pyarrow sees it)."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                head = fh.read(_TEXT_PROBE)
        else:
            with open(path, "rb") as fh:
                head = fh.read(_TEXT_PROBE)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: unreadable ({exc}); re-copy the file") from exc
    where = head.find(b"\0")
    if where < 0:
        try:  # an incomplete character at the end of the probe is fine (final=False)
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError as exc:
            where = exc.start
    if where >= 0:
        raise DatasetError(
            f"{path}: not UTF-8 text (binary data or another encoding at byte {where}); CSV "
            "sources must be UTF-8 text: check the path, or convert it (iconv -t UTF-8)"
        )


def _first_ragged_line(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="", errors="replace") as fh:
        rows = csv.reader(fh)
        width = len(next(rows, []))
        for line, row in enumerate(rows, start=2):
            if len(row) != width:
                return f"line {line} has {len(row)} fields but the header has {width}"
    return "rows have differing numbers of fields"


def _labels(
    path: str, table: pa.Table, column: str | None
) -> tuple[np.ma.MaskedArray | None, tuple]:
    if column is None:
        return None, ()
    col = table.column(column).combine_chunks()
    mask = np.asarray(col.is_null())
    if pa.types.is_integer(col.type) or pa.types.is_null(col.type):
        values = col.fill_null(0).cast(pa.int64()).to_numpy(zero_copy_only=False)
        return np.ma.MaskedArray(values, mask=mask), ()
    if pa.types.is_floating(col.type):
        values = col.fill_null(0).to_numpy(zero_copy_only=False)
        if not (np.mod(values, 1) == 0).all():
            raise DatasetError(
                f"{path}: label column {column!r} holds non-integer numbers; labels are classes"
            )
        return np.ma.MaskedArray(values.astype(np.int64), mask=mask), ()
    names = sorted({str(v) for v in col.drop_null().to_pylist()})
    index = {n: i for i, n in enumerate(names)}
    codes = [index[str(v)] if v is not None else 0 for v in col.to_pylist()]
    return np.ma.MaskedArray(np.asarray(codes, np.int64), mask=mask), tuple(names)


def _ids(path: str, table: pa.Table, column: str | None) -> np.ndarray | None:
    if column is None:
        return None
    col = table.column(column)
    if col.null_count:
        raise DatasetError(
            f"{path}: id column {column!r} has {col.null_count} empty cells; every row needs an id"
        )
    return np.asarray([str(v) for v in col.to_pylist()], dtype=object)


def _require_columns(path: str, table: pa.Table, names: list[str]) -> None:
    missing = [c for c in names if c not in table.column_names]
    if missing:
        raise DatasetError(
            f"{path}: column {missing[0]!r} not found; available columns: {', '.join(table.column_names)}"
        )


def _numeric_matrix(path: str, table: pa.Table, columns: list[str]) -> np.ndarray:
    if not columns:
        raise DatasetError(
            f"{path}: no feature columns left after the id/label columns; input is empty"
        )
    arrays = []
    for name in columns:
        col = table.column(name).combine_chunks()
        if col.null_count and table.num_rows:
            row = int(np.flatnonzero(np.asarray(col.is_null()))[0])
            raise DatasetError(
                f"{path}: column {name!r} has an empty cell at data row {row}; fill or drop it"
            )
        if not (
            pa.types.is_integer(col.type)
            or pa.types.is_floating(col.type)
            or pa.types.is_null(col.type)
        ):
            bad = next(v for v in col.to_pylist() if not _is_number(v))
            raise DatasetError(
                f"{path}: column {name!r} holds non-numeric value {bad!r}; features must be numbers "
                "(name it with `id_column`/`label_column` or list `feature_columns`)"
            )
        arrays.append(col.to_numpy(zero_copy_only=False))
    return np.column_stack(arrays) if arrays else np.empty((table.num_rows, 0))


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def load_csv_source(
    path: str,
    *,
    id_column: str | None = None,
    label_column: str | None = None,
    feature_columns: list[str] | None = None,
    scale: float | None = None,
    storage_dtype: str = "auto",
) -> SourceData:
    """CSV with a header row; features = ``feature_columns`` or every other column."""
    require_file(path, "CSV file")
    check_text(path)
    try:
        table = pacsv.read_csv(
            path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True, null_values=[""])
        )
    except _CSV_ERRORS as exc:
        if "Empty CSV" in str(exc):
            raise DatasetError(
                f"{path}: input is empty (no header, no rows); nothing to ingest"
            ) from exc
        if "Expected" in str(exc) and "columns" in str(exc):
            raise DatasetError(
                f"{path}: ragged CSV: {_first_ragged_line(path)}; fix that row"
            ) from exc
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DatasetError(f"{path}: unreadable CSV ({first}); check the file") from exc
    named = [c for c in (id_column, label_column, *(feature_columns or [])) if c]
    _require_columns(path, table, named)
    if table.num_rows == 0:
        raise DatasetError(f"{path}: input is empty (a header but no rows); nothing to ingest")
    features = feature_columns or [
        c for c in table.column_names if c not in (id_column, label_column)
    ]
    x = _numeric_matrix(path, table, features)
    labels, names = _labels(path, table, label_column)
    opts = {
        "id_column": id_column,
        "label_column": label_column,
        "feature_columns": feature_columns,
        "scale": scale,
    }
    return finish(
        "csv",
        path,
        "",
        x,
        ids=_ids(path, table, id_column),
        labels=labels,
        scale=scale,
        storage_dtype=storage_dtype,
        label_names=names,
        options={k: v for k, v in opts.items() if v is not None},
    )


def load_npz_source(
    path: str, *, scale: float | None = None, storage_dtype: str = "auto"
) -> SourceData:
    """NPZ holding ``x`` [N, ...] and optionally ``y`` [N] (ints) and ``ids`` [N] (strings)."""
    require_file(path, "NPZ file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            if "x" not in keys:
                raise DatasetError(
                    f"{path}: NPZ has no array 'x' (found: {', '.join(keys) or 'none'}); save features as x=..."
                )
            x, y = npz["x"], npz["y"] if "y" in keys else None
            ids = npz["ids"].astype(str).astype(object) if "ids" in keys else None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(
            f"{path}: unreadable NPZ ({str(exc).splitlines()[0]}); object arrays are refused"
        ) from exc
    if x.dtype.kind not in "iuf":
        raise DatasetError(f"{path}: array 'x' has dtype {x.dtype}; features must be numbers")
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    for key, arr in (("y", y), ("ids", ids)):
        if arr is not None and (arr.ndim != 1 or len(arr) != len(x)):
            raise DatasetError(
                f"{path}: array {key!r} has shape {list(arr.shape)}; expected [{len(x)}] to match x"
            )
    if y is not None and (
        y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not (np.mod(y, 1) == 0).all())
    ):
        raise DatasetError(
            f"{path}: array 'y' must hold integer class labels, found dtype {y.dtype}"
        )
    return finish(
        "npz",
        path,
        "",
        x,
        ids=ids,
        labels=None if y is None else y.astype(np.int64),
        scale=scale,
        storage_dtype=storage_dtype,
        options={"scale": scale} if scale is not None else {},
    )


def load_parquet_source(
    path: str,
    *,
    x_column: str | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    feature_columns: list[str] | None = None,
    scale: float | None = None,
    storage_dtype: str = "auto",
) -> SourceData:
    """A Parquet file or folder: features from a list column (``x_column``) or numeric columns.

    Columns named ``id``, ``label`` and a list column ``x`` are used by default when present, so an
    exported split of another dataset re-ingests as is.
    """
    check_path(path, "Parquet source")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise DatasetError(f"{path}: unreadable Parquet ({str(exc).splitlines()[0]})") from exc
    named = [c for c in (x_column, id_column, label_column, *(feature_columns or [])) if c]
    _require_columns(path, table, named)
    cols = table.column_names
    id_column = id_column or ("id" if "id" in cols else None)
    label_column = label_column or ("label" if "label" in cols else None)
    if x_column is None and feature_columns is None and "x" in cols:
        x_column = "x"
    if table.num_rows == 0:
        raise DatasetError(f"{path}: input is empty (no rows); nothing to ingest")
    if x_column is not None:
        x = _list_column(path, table, x_column)
    else:
        features = feature_columns or [c for c in cols if c not in (id_column, label_column)]
        x = _numeric_matrix(path, table, features)
    labels, names = _labels(path, table, label_column)
    opts = {
        "x_column": x_column,
        "id_column": id_column,
        "label_column": label_column,
        "scale": scale,
    }
    return finish(
        "parquet",
        path,
        "",
        x,
        ids=_ids(path, table, id_column),
        labels=labels,
        scale=scale,
        storage_dtype=storage_dtype,
        label_names=names,
        options={k: v for k, v in opts.items() if v is not None},
    )


def _list_column(path: str, table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_binary(col.type) and not col.null_count:
        # A stored dataset's uint8 x (one row's bytes per value; tasks/store/tables.py).
        field = table.schema.field(name)
        dtype = tables.x_dtype(field, col.type.byte_width)
        dim = col.type.byte_width // np.dtype(dtype).itemsize
        return tables.decode_x(col, dtype, dim)
    if not (
        pa.types.is_list(col.type)
        or pa.types.is_large_list(col.type)
        or pa.types.is_fixed_size_list(col.type)
    ):
        raise DatasetError(
            f"{path}: column {name!r} has type {col.type}; `x_column` needs a list column "
            "(or the fixed-size binary x of a stored dataset)"
        )
    if col.null_count:
        raise DatasetError(
            f"{path}: column {name!r} has {col.null_count} null rows; every row needs features"
        )
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(set(lengths.tolist())) > 1:
        raise DatasetError(
            f"{path}: list column {name!r} is ragged (lengths {lengths.min()}..{lengths.max()})"
        )
    values = col.flatten()
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise DatasetError(f"{path}: column {name!r} holds {values.type}; features must be numbers")
    return values.to_numpy(zero_copy_only=False).reshape(len(col), -1)
