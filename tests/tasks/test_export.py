"""Export: the latent table of a registry model (trained here through train -> evaluate -> register).

Checks what a downstream job relies on: a row per input with the dataset's ids, values equal to
the encoder's, provenance, pandas/polars/duckdb readability, posterior samples, idempotence, and
atomic publication (SIGKILL in a subprocess; fallback swap interrupted in process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from models import constants as C

LATENT_DIM = 3
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """digits ingested, a tiny model trained, evaluated and registered as aevb-digits@champion."""
    from models.config import ModelConfig, TrainConfig
    from tasks.evaluate import evaluate
    from tasks.ingest import ingest
    from tasks.register import register
    from tasks.train import train

    tmp = tmp_path_factory.mktemp("export")
    old = os.environ.get("AEVB_MLFLOW_DIR")
    os.environ["AEVB_MLFLOW_DIR"] = str(tmp / "mlflow")
    root = str(tmp / "data")
    ds = ingest("digits", "digits", root)
    model = ModelConfig(latent_dim=LATENT_DIM, hidden_sizes=(32,))
    out = train("digits", model, TrainConfig(epochs=2, batch_size=200), root)
    ev = evaluate(out.saved_model_dir, "digits", None, root, num_samples=8, run_id=out.run_id)
    reg = register(
        out.run_id, out.saved_model_dir, "digits", ds.version, ev.log_marginal_likelihood,
        data_root=root, eval_num_samples=8,
    )  # fmt: skip
    yield {"root": root, "uri": f"models:/{reg.name}@champion", "saved": out.saved_model_dir,
           "version": reg.version, "run_id": out.run_id, "dataset_version": ds.version}  # fmt: skip
    if old is None:
        os.environ.pop("AEVB_MLFLOW_DIR", None)
    else:
        os.environ["AEVB_MLFLOW_DIR"] = old


@pytest.fixture(scope="module")
def exported(registered):
    from tasks.export import export_latents

    out = export_latents(registered["uri"], "digits", registered["root"], batch_size=500)
    return out


def _read(path: str):
    return pq.read_table(path, ignore_prefixes=["manifest", ".", "_"]).to_pandas()


def test_rows_and_ids_match_the_dataset_split_by_split(registered, exported):
    from tasks.store import readers

    df = _read(exported.path)
    assert exported.created and exported.rows == len(df) == 1797
    for split in C.SPLITS:
        ids, _, labels = readers.read_split(registered["root"], "digits", None, split)
        part = df[df[C.COL_SPLIT] == split]
        assert list(part[C.COL_ID]) == list(ids)  # same rows, same stored order
        np.testing.assert_array_equal(part[C.COL_LABEL].to_numpy(), labels)


def test_values_equal_the_encoder_outputs(registered, exported):
    from models.saved import load_vae
    from tasks.store import readers

    df = _read(exported.path).set_index(C.COL_ID)
    ids, x, _ = readers.read_split(registered["root"], "digits", None, C.VALID)
    mean, std = load_vae(registered["saved"]).posterior_params(x)
    for prefix, want in ((C.Z_MEAN_PREFIX, mean), (C.Z_STD_PREFIX, std)):
        cols = [f"{prefix}{i}" for i in range(LATENT_DIM)]
        assert all(df[c].dtype == np.float32 for c in cols)
        np.testing.assert_allclose(df.loc[list(ids), cols].to_numpy(), want, rtol=1e-5, atol=1e-6)


def test_export_logs_progress_per_part_with_rows_rate_and_eta(registered, caplog, monkeypatch):
    from tasks.export import export_latents
    from tasks.ingest import ingest

    ingest("digits", "digits-p", registered["root"])  # its own table: the module's stays as is
    monkeypatch.setenv("AEVB_PROGRESS_SECONDS", "0")  # a line per batch
    with caplog.at_level("INFO"):
        out = export_latents(
            registered["uri"], "digits-p", registered["root"], splits=("test",), batch_size=64
        )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("export digits-p")]
    assert [ln.split(": ")[1].split(" rows")[0] for ln in lines] == ["64/180", "128/180", "180/180"]
    assert all("rows/s" in ln and "ETA" in ln and "part-test-00000" in ln for ln in lines)
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("export: wrote")]
    assert len(done) == 1 and done[0].startswith(f"export: wrote 180 rows to {out.path} in ")
    assert done[0].endswith("rows/s)")


def test_provenance_in_manifest_and_parquet_metadata(registered, exported):
    manifest = json.loads(Path(f"{exported.path}.manifest.json").read_text())
    meta = json.loads(
        pq.read_schema(Path(exported.path) / "part-train-00000.parquet").metadata[
            b"aevb.provenance"
        ]
    )
    for doc in (manifest, meta):
        assert (
            doc["model_uri"] == registered["uri"] and doc["model_version"] == registered["version"]
        )
        assert doc["run_id"] == registered["run_id"]
        assert (
            doc["dataset"] == "digits" and doc["dataset_version"] == registered["dataset_version"]
        )
    assert manifest["rows"] == 1797
    assert Path(exported.path).parts[-4:] == ("latents", "digits", "aevb-digits", "v1")


def test_pandas_polars_and_duckdb_read_it(registered, exported):
    import duckdb
    import polars as pl

    pdf = _read(exported.path)
    glob = str(Path(exported.path) / "part-*.parquet")
    pldf = pl.read_parquet(glob)
    assert pldf.height == len(pdf) and pldf.columns == list(pdf.columns)
    assert pldf.schema["z_mean_0"] == pl.Float32
    row = pdf.iloc[1234]
    got = duckdb.execute(
        f"SELECT split, z_mean_0, z_std_2 FROM read_parquet('{glob}') WHERE id = ?", [row[C.COL_ID]]
    ).fetchall()
    assert got == [
        (row[C.COL_SPLIT], pytest.approx(row["z_mean_0"]), pytest.approx(row["z_std_2"]))
    ]


def test_same_model_and_dataset_version_is_a_no_op(registered, exported):
    from tasks.export import export_latents

    part = Path(exported.path) / "part-test-00000.parquet"
    before = part.stat().st_mtime_ns
    again = export_latents(registered["uri"], "digits", registered["root"], batch_size=64)
    assert not again.created and again.rows == exported.rows and again.path == exported.path
    assert part.stat().st_mtime_ns == before


def test_posterior_samples_are_draws_from_q_and_independent_of_batch_size(registered, tmp_path):
    from tasks.export import export_latents
    from tasks.store.tables import SAMPLES_COLUMN

    a = export_latents(
        registered["uri"], "digits", registered["root"], splits=("test",), samples=50, seed=3
    )
    df = _read(a.path)
    z = np.stack([np.stack(r) for r in df[SAMPLES_COLUMN]])  # [N, K, k]
    assert z.shape == (len(df), 50, LATENT_DIM) and z.dtype == np.float32
    mean = df[[f"z_mean_{i}" for i in range(LATENT_DIM)]].to_numpy()[:, None, :]
    std = df[[f"z_std_{i}" for i in range(LATENT_DIM)]].to_numpy()[:, None, :]
    eps = (z - mean) / std  # standard normal if z ~ q(z|x)
    n = eps.size
    assert abs(eps.mean()) < 4 / np.sqrt(n) and abs(eps.std() - 1) < 4 / np.sqrt(2 * n)
    snapshot = z.copy()
    # Different splits/samples replace the table; the draws do not depend on the batch size.
    export_latents(registered["uri"], "digits", registered["root"], splits=("test",), samples=50,
                   seed=4)  # fmt: skip
    b = export_latents(
        registered["uri"], "digits", registered["root"], splits=("test",), samples=50, seed=3,
        batch_size=37,
    )  # fmt: skip
    assert b.created
    z_b = np.stack([np.stack(r) for r in _read(b.path)[SAMPLES_COLUMN]])
    np.testing.assert_allclose(z_b, snapshot, rtol=1e-5, atol=1e-5)  # same eps; matmul rounding
    import duckdb

    glob = str(Path(b.path) / "part-*.parquet")
    first = duckdb.execute(f"SELECT z_samples[1][1] FROM read_parquet('{glob}') LIMIT 1").fetchone()
    assert first[0] == pytest.approx(float(snapshot[0, 0, 0]))
    # Back to the plain table for the other tests of this module.
    export_latents(registered["uri"], "digits", registered["root"], batch_size=500)


def test_fallback_swap_interrupted_between_renames_is_repaired(registered, monkeypatch):
    """Without renameat2 the swap is two renames; a crash between them strands the previous
    table aside, and the next export puts it back before deciding anything."""
    from tasks import export as E
    from tasks.store import publish

    path = Path(E.export_latents(registered["uri"], "digits", registered["root"]).path)
    before = Path(f"{path}.manifest.json").read_text()

    class Crash(Exception):
        pass

    def crash(point):
        if point == "publish_between_renames":
            raise Crash

    monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    monkeypatch.setattr(publish, "fault_point", crash)
    with pytest.raises(Crash):
        E.export_latents(registered["uri"], "digits", registered["root"], splits=("test",))
    assert not path.exists() and any(p.name.startswith(".v1.old-") for p in path.parent.iterdir())
    again = E.export_latents(registered["uri"], "digits", registered["root"])
    assert not again.created and Path(f"{path}.manifest.json").read_text() == before


def _export_in_subprocess(registered, kill_at: str, splits: str) -> int:
    code = (
        "import sys; from tasks.export import export_latents; "
        f"export_latents({registered['uri']!r}, 'digits', {registered['root']!r}, "
        f"splits=tuple({splits!r}.split(',')), batch_size=100)"
    )
    env = {**os.environ, "AEVB_TEST_KILL_AT": kill_at, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=300).returncode


@pytest.mark.slow
def test_sigkill_leaves_nothing_half_written_and_keeps_the_previous_table(registered, tmp_path):
    from tasks.export import export_latents

    path = Path(export_latents(registered["uri"], "digits", registered["root"]).path)
    before = Path(f"{path}.manifest.json").read_text()
    # A replacing export killed after its first batch, then one killed just before the swap.
    for point in ("export_mid_write", "table_before_publish"):
        assert _export_in_subprocess(registered, point, "train,test") == -9
        assert Path(f"{path}.manifest.json").read_text() == before
        assert sorted(p.name for p in path.iterdir()) == sorted(
            [f"part-{s}-00000.parquet" for s in C.SPLITS]
        )
    hidden = [p.name for p in path.parent.iterdir() if p.name not in ("v1", "v1.manifest.json")]
    assert hidden and all(name.startswith(".v1.staging-") for name in hidden)  # invisible leftovers
    # A first export killed mid-write leaves no table at all under its visible name.
    first = path.parent
    os.rename(path, tmp_path / "v1-saved")
    os.rename(f"{path}.manifest.json", tmp_path / "v1-saved.manifest.json")
    assert _export_in_subprocess(registered, "export_mid_write", "test") == -9
    assert [p.name for p in first.iterdir() if not p.name.startswith(".")] == []
    os.rename(tmp_path / "v1-saved", path)
    os.rename(tmp_path / "v1-saved.manifest.json", f"{path}.manifest.json")
