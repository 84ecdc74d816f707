"""`aevb ingest` / `aevb datasets` through the real CLI entry point: exit codes and output."""

from __future__ import annotations

import json

import pytest

from tasks.store import datasets as ds

cli = pytest.importorskip("flows.cli")


def test_bad_input_exits_2_with_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,4,5\n")
    code = cli.main(["ingest", str(bad), "--name", "bad", "--data-root", str(tmp_path / "root")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert (
        err.startswith("aevb ingest: error: ") and "ragged CSV: line 3" in err and "\n" not in err
    )
    assert not (tmp_path / "root" / "datasets" / "bad").exists()


def test_ingest_then_list_and_show(tmp_path, capsys) -> None:
    root = str(tmp_path / "root")
    assert (
        cli.main(["ingest", "digits", "--name", "dg", "--data-root", root, "--split-seed", "3"])
        == 0
    )
    capsys.readouterr()
    assert cli.main(["datasets", "list", "--data-root", root]) == 0
    listing = capsys.readouterr().out
    version = ds.current_version(root, "dg")
    assert "dg" in listing and version in listing and "8x8" in listing
    assert cli.main(["datasets", "show", "dg", "--data-root", root]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == version and shown["split_seed"] == 3
    assert shown["versions"] == [f"{version} (CURRENT)"]
    assert cli.main(["datasets", "show", "nope", "--data-root", root]) == 2


def test_reader_options_are_wired_through(tmp_path, capsys) -> None:
    src = tmp_path / "t.csv"
    src.write_text("key,a,b,y\nr1,1,2,0\nr2,3,4,1\nr3,5,6,1\n")
    root = str(tmp_path / "r")
    argv = [str(src), "--data-root", root, "--id-column", "key", "--label-column", "y",
            "--scale", "0.1", "--storage-dtype", "float32", "--valid-fraction", "0",
            "--test-fraction", "0"]  # fmt: skip
    assert cli.main(["ingest", *argv]) == 0
    m = ds.load_manifest(root, "t")
    assert m.scale == pytest.approx(0.1) and m.storage_dtype == "float32"
    assert m.value_range == pytest.approx((0.1, 0.6)) and m.rows["train"] == 3
    capsys.readouterr()
    assert cli.main(["datasets", "list", "--data-root", root]) == 0
    line = capsys.readouterr().out.splitlines()[1].split()
    assert line[:4] == ["t", m.version, "2", "float32"]
