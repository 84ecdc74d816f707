"""Names and versions are identifiers, never paths: every verb that takes one refuses a value that
would walk out of the data root - on a local root and on an object store (moto's S3 on 127.0.0.1).

A decoy manifest sits where `--version ../..`-style values would land; it must never be read, and
nothing may be written anywhere.
"""

from __future__ import annotations

import json

import pytest

from flows import cli
from tasks.store import fs
from tests.tasks.test_s3 import s3_root  # noqa: F401  (the moto S3 fixture)

DECOY = "DECOY-outside-the-data-root"
MODEL = "models:/nosuch@champion"

# (argv, what the one error line says)
CASES = [
    (["datasets", "show", "../.."], "invalid dataset name '../..'"),
    (["datasets", "show", "digits", "--version", "../../decoy"], "invalid dataset version '../../decoy'"),
    (["ingest", "digits", "--name", "../decoy"], "invalid dataset name '../decoy'"),
    (["train", "--dataset", "../datasets/digits"], "invalid dataset name '../datasets/digits'"),
    (["train", "--dataset", "digits", "--version", "../../../outside"], "invalid dataset version '../../../outside'"),
    (["train", "--dataset", "digits", "--version", "."], "invalid dataset version '.'"),
    (["evaluate", "--model", MODEL, "--dataset", "..", "--split", "test"], "invalid dataset name '..'"),
    (["evaluate", "--model", MODEL, "--dataset", "digits", "--version", "../../decoy"], "invalid dataset version"),
    (["export", "--model", MODEL, "--dataset", "digits/../../x"], "invalid dataset name 'digits/../../x'"),
    (["export", "--model", MODEL, "--dataset", "digits", "--version", "/etc/passwd"], "invalid dataset version '/etc/passwd'"),
    (["export", "--model", "models:/../decoy/1", "--dataset", "digits"], "--model='models:/../decoy/1': use"),
    (["corrupt", "../../decoy", "--kind", "denoise"], "invalid dataset name '../../decoy'"),
    (["corrupt", "digits", "--kind", "denoise", "--version", "../../decoy"], "invalid dataset version"),
    (["corrupt", "digits", "--kind", "denoise", "--name", "../escaped"], "invalid dataset name '../escaped'"),
    (["restore", "--model", MODEL, "--dataset", "../x", "--kind", "denoise"], "invalid dataset name '../x'"),
    (["restore", "--model", MODEL, "--dataset", "digits", "--kind", "denoise", "--version", "../.."], "invalid dataset version"),
    (["restore", "--model", MODEL, "--dataset", "digits", "--kind", "inpaint", "--mask", "../../decoy"], "invalid dataset name '../../decoy'"),
    (["pipeline", "data.name='../../decoy'"], "data.name: invalid dataset name '../../decoy'"),
    (["pipeline", "register.model_name='../../decoy'"], "register.model_name='../../decoy': use"),
]  # fmt: skip


def _decoy_manifest() -> str:
    return json.dumps({"name": DECOY, "version": "0" * 16, "feature_shape": [1], "rows": {}})


def _check(argv: list[str], expected: str, capsys) -> None:
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"aevb {argv[0]}: error: "), err
    assert expected in lines[0], lines[0]
    assert DECOY not in out + err


@pytest.fixture(scope="module")
def local_root(tmp_path_factory):
    from tasks.ingest import ingest

    base = tmp_path_factory.mktemp("traversal")
    root = base / "store" / "data"
    ingest("digits", "digits", str(root))
    for place in (base / "store", root, base):  # where ../.. and friends would land
        (place / "decoy.manifest.json").write_text(_decoy_manifest())
    return str(root)


def _local_tree(root: str) -> set[str]:
    from pathlib import Path

    return {str(p) for p in Path(root).parent.parent.rglob("*")}


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_traversal_is_refused_on_a_local_root(local_root, capsys, monkeypatch, argv, expected):
    monkeypatch.setenv("AEVB_DATA_ROOT", local_root)
    before = _local_tree(local_root)
    _check([*argv, "--data-root", local_root], expected, capsys)
    assert _local_tree(local_root) == before


def _s3_tree(root: str) -> set[str]:
    import s3fs

    bucket_path = root.split("://", 1)[1].split("/", 1)[0]
    return set(s3fs.S3FileSystem().find(bucket_path))


@pytest.fixture(scope="module")
def s3_data(s3_root):  # noqa: F811
    from tasks.ingest import ingest

    root = f"{s3_root}/traversal"
    ingest("digits", "digits", root)
    for place in (s3_root, root, fs.join(root, "datasets")):
        fs.write_bytes(fs.join(place, "decoy.manifest.json"), _decoy_manifest().encode())
    return root


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "expected"), CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_traversal_is_refused_on_an_object_store(s3_data, capsys, monkeypatch, argv, expected):
    monkeypatch.setenv("AEVB_DATA_ROOT", s3_data)
    before = _s3_tree(s3_data)
    _check([*argv, "--data-root", s3_data], expected, capsys)
    assert _s3_tree(s3_data) == before


@pytest.mark.parametrize("root", ["/srv/data", "s3://bucket/prefix"])
@pytest.mark.parametrize(
    "parts",
    [
        ("..", "m", 1),
        ("digits", "../m", 1),
        ("digits", "m", "../1"),
        ("", "m", 1),
        ("a\\b", "m", 1),
    ],
)
def test_table_paths_built_from_names_stay_inside_the_root(root, parts):
    from models.errors import DatasetError
    from tasks.store import tables

    with pytest.raises(DatasetError, match="is not a plain name"):
        tables.latent_table_path(root, *parts)
    with pytest.raises(DatasetError, match="is not a plain name"):
        tables.restored_table_path(root, *parts, "map")
