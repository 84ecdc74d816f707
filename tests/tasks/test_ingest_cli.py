"""`aevb ingest` / `aevb datasets` through the real CLI entry point: exit codes and output."""

from __future__ import annotations

import argparse
import json

import pytest

from tasks import datasets as ds
from tasks.ingest import (
    add_datasets_arguments,
    add_ingest_arguments,
    format_datasets,
    ingest_from_args,
)

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


def test_own_parsers_wire_options_through(tmp_path) -> None:
    src = tmp_path / "t.csv"
    src.write_text("key,a,b,y\nr1,1,2,0\nr2,3,4,1\nr3,5,6,1\n")
    parser = argparse.ArgumentParser()
    add_ingest_arguments(parser)
    args = parser.parse_args(
        [str(src), "--data-root", str(tmp_path / "r"), "--id-column", "key", "--label-column", "y",
         "--scale", "0.1", "--storage-dtype", "float32", "--valid-fraction", "0", "--test-fraction", "0"]
    )  # fmt: skip
    result = ingest_from_args(args)
    m = ds.load_manifest(str(tmp_path / "r"), "t")
    assert result.name == "t" and m.scale == pytest.approx(0.1) and m.storage_dtype == "float32"
    assert m.value_range == pytest.approx((0.1, 0.6)) and m.rows["train"] == 3
    dparser = argparse.ArgumentParser()
    add_datasets_arguments(dparser)
    text = format_datasets(dparser.parse_args(["--data-root", str(tmp_path / "r"), "list"]))
    assert text.splitlines()[1].split()[:4] == ["t", result.version, "2", "float32"]
