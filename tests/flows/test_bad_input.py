"""Every user error is refused before anything is written (docs/design.md "Bad input").

A table of malformed inputs across every verb (sources, configs, overrides, model URIs, names,
versions, environment settings), each through the real CLI in-process: exit 2, exactly one
stderr line `aevb <verb>: error: ...` naming what is wrong, no traceback, and nothing added under
the data root, the MLflow store or TMPDIR. These all fail in the verb's `check` - before a Prefect
server or flow starts (asserted) - so the table runs in seconds.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest

from flows import cli
from tasks.sources.idx import write_idx

MODEL = "models:/nosuch@champion"


def _tree(*folders: Path) -> set[str]:
    """Every path (files and folders) under the folders."""
    return {str(p) for f in folders if f.exists() for p in f.rglob("*")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data root with datasets, an initialised MLflow store, sources with every defect, and a
    private TMPDIR; the environment points at them for the whole module."""
    from tasks import tracking
    from tasks.ingest import ingest

    base = tmp_path_factory.mktemp("bad-input")
    root, store, tmp, src = base / "data", base / "mlflow", base / "tmp", base / "src"
    for folder in (root, store, tmp, src):
        folder.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AEVB_DATA_ROOT", str(root))
        mp.setenv("AEVB_MLFLOW_DIR", str(store))
        mp.setenv("AEVB_MODEL_CACHE", str(base / "cache"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TMPDIR", str(tmp))
        mp.setattr(tempfile, "tempdir", str(tmp))
        ingest("digits", "digits", str(root))
        rng = np.random.default_rng(0)
        np.savez(src / "tiny.npz", x=rng.integers(0, 2, (5, 4), dtype=np.uint8))
        ingest(str(src / "tiny.npz"), "tiny", str(root), valid_fraction=0, test_fraction=0)
        np.savez(src / "novalid.npz", x=rng.integers(0, 2, (300, 4), dtype=np.uint8))
        ingest(str(src / "novalid.npz"), "novalid", str(root), valid_fraction=0)
        tracking.list_registered_models()  # creates the SQLite store once, before the snapshot
        _sources(src)
        yield {"root": root, "store": store, "tmp": tmp, "src": src, "mp": mp}


def _sources(src: Path) -> None:
    os.mkfifo(src / "fifo.csv")
    (src / "img-fifo").mkdir()
    os.mkfifo(src / "img-fifo" / "a.png")
    (src / "img-socket").mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(src / "img-socket" / "b.png"))
    (src / "img-link").mkdir()
    (src / "img-link" / "c.png").symlink_to("/etc/hostname")
    (src / "garbage.csv").write_bytes(np.random.default_rng(1).bytes(4000))
    (src / "latin1.csv").write_bytes("a,b\n1,caf\xe9\n".encode("latin-1"))
    (src / "ok.csv").write_text("a,b\n1,2\n3,4\n5,6\n7,8\n9,10\n11,12\n")
    write_idx(str(src / "m-images-idx3-ubyte"), np.zeros((5, 3, 3), np.uint8))
    write_idx(str(src / "m-labels-idx1-ubyte"), np.zeros(4, np.uint8))
    (src / "magic-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04" + bytes(40))
    (src / "notutf8.toml").write_bytes(b"[train]\nepochs = 3 # \xff\xfe\n")
    (src / "broken.toml").write_text("[train\nepochs = 3\n")
    os.mkfifo(src / "fifo.toml")
    (src / "hostile").mkdir()
    (src / "hostile" / "part-test-00000.parquet").write_bytes(b"PAR1")
    (src / "hostile.manifest.json").write_text(json.dumps({"dataset": "../../escape"}))


# (id, argv, regex the one error line must match after `aevb <verb>: error: `, extra env)
CASES = [
    # --- ingest: sources
    ("ingest-missing", ["ingest", "{src}/nope.csv"], r"'.*nope.csv' is neither a built-in", {}),
    ("ingest-fifo", ["ingest", "{src}/fifo.csv"], r"fifo.csv' is a FIFO \(named pipe\)", {}),
    ("ingest-device", ["ingest", "/dev/zero", "--name", "z"], r"'/dev/zero' is a character device", {}),
    ("ingest-folder-fifo", ["ingest", "{src}/img-fifo"], r"'a.png' in source folder .* is a FIFO", {}),
    ("ingest-folder-socket", ["ingest", "{src}/img-socket"], r"'b.png' in source folder .* is a socket", {}),
    ("ingest-folder-link-out", ["ingest", "{src}/img-link"], r"'c.png' is a symlink to .*outside the folder", {}),
    ("ingest-binary-csv", ["ingest", "{src}/garbage.csv"], r"garbage.csv: not UTF-8 text", {}),
    ("ingest-latin1-csv", ["ingest", "{src}/latin1.csv"], r"latin1.csv: not UTF-8 text .* at byte 9", {}),
    ("ingest-idx-count", ["ingest", "{src}/m-images-idx3-ubyte"], r"4 labels \(shape \[4\]\) for 5 images", {}),
    ("ingest-idx-magic", ["ingest", "{src}/magic-images-idx3-ubyte"], r"bad IDX magic 01020304", {}),
    ("ingest-labels-fifo", ["ingest", "{src}/m-images-idx3-ubyte", "--labels-file", "{src}/fifo.csv"],
     r"labels file .*fifo.csv' is a FIFO", {}),
    ("ingest-option-not-for-format", ["ingest", "{src}/ok.csv", "--labels-file", "{src}/ok.csv"],
     r"option 'labels_file' does not apply to csv sources", {}),
    # --- ingest: arguments
    ("ingest-scale-nan", ["ingest", "{src}/ok.csv", "--scale", "nan"], r"argument --scale: 'nan' is not a finite number", {}),
    ("ingest-scale-negative", ["ingest", "{src}/ok.csv", "--scale", "-1"], r"--scale=-1.0 must be a finite number > 0", {}),
    ("ingest-fraction-range", ["ingest", "{src}/ok.csv", "--valid-fraction", "1.5"], r"--valid-fraction=1.5 must be a number in \[0, 1\)", {}),
    ("ingest-fraction-inf", ["ingest", "{src}/ok.csv", "--test-fraction", "inf"], r"argument --test-fraction: 'inf' is not a finite", {}),
    ("ingest-bad-name", ["ingest", "{src}/ok.csv", "--name", "Bad Name"], r"invalid dataset name 'Bad Name'", {}),
    ("ingest-name-traversal", ["ingest", "{src}/ok.csv", "--name", "../escape"], r"invalid dataset name '../escape'", {}),
    ("ingest-split-seed", ["ingest", "{src}/ok.csv", "--split-seed", "-1"], r"--split-seed=-1 must be an integer >= 0", {}),
    ("ingest-bad-format", ["ingest", "{src}/ok.csv", "--format", "xls"], r"argument --format: invalid choice: 'xls'", {}),
    # --- train: settings before data, data before stores
    ("train-missing-dataset", ["train", "--dataset", "nosuch"], r"dataset 'nosuch' not found under .*aevb ingest", {}),
    ("train-name-traversal", ["train", "--dataset", "../../x"], r"invalid dataset name '../../x'", {}),
    ("train-version-traversal", ["train", "--dataset", "digits", "--version", "../../../outside"],
     r"invalid dataset version '../../../outside' of dataset 'digits'", {}),
    ("train-nan-before-missing", ["train", "--dataset", "nosuch", "train.learning_rate=nan"],
     r"train.learning_rate=nan must be a finite number", {}),
    ("train-inf-before-missing", ["train", "--dataset", "nosuch", "train.learning_rate=inf"],
     r"train.learning_rate=inf must be a finite number", {}),
    ("train-lock-timeout-nan", ["train", "--dataset", "nosuch", "pipeline.lock_timeout_seconds=nan"],
     r"pipeline.lock_timeout_seconds=nan must be a finite number >= 1", {}),
    ("train-weight-decay-inf", ["train", "--dataset", "digits", "train.weight_decay=-inf"],
     r"train.weight_decay=-inf must be a finite number", {}),
    ("train-epochs-string", ["train", "--dataset", "digits", 'train.epochs="5"'], r"train.epochs='5' must be an integer", {}),
    ("train-hidden-floats", ["train", "--dataset", "digits", "model.hidden_sizes=[1.5]"],
     r"model.hidden_sizes=\[1.5\] must be a list of positive integers", {}),
    ("train-unknown-key", ["train", "--dataset", "digits", "train.epoch=3"], r"unknown key\(s\) \['epoch'\] in \[train\]", {}),
    ("train-config-not-utf8", ["train", "--dataset", "digits", "--config", "{src}/notutf8.toml"],
     r"--config .*notutf8.toml: not UTF-8 text \(byte 21\)", {}),
    ("train-config-fifo", ["train", "--dataset", "digits", "--config", "{src}/fifo.toml"],
     r"fifo.toml: not a regular file", {}),
    ("train-config-invalid", ["train", "--dataset", "digits", "--config", "{src}/broken.toml"],
     r"broken.toml: not valid TOML", {}),
    ("train-config-missing", ["train", "--dataset", "digits", "--config", "{src}/none.toml"],
     r"none.toml: file not found", {}),
    ("train-too-small-for-a-batch", ["train", "--dataset", "tiny"],
     r"'tiny' .* has 5 train rows, fewer than one batch \(train.batch_size=100\)", {}),
    ("train-empty-valid", ["train", "--dataset", "novalid"], r"'novalid' .* has an empty valid split", {}),
    # --- evaluate
    ("evaluate-bad-uri", ["evaluate", "--model", "bogus", "--dataset", "digits"], r"--model='bogus': use models:/NAME@ALIAS", {}),
    ("evaluate-unknown-model", ["evaluate", "--model", MODEL, "--dataset", "digits"],
     r"--model='models:/nosuch@champion': no such registered model version", {}),
    ("evaluate-unknown-split", ["evaluate", "--model", MODEL, "--dataset", "digits", "--split", "bogus"],
     r"argument --split: invalid choice: 'bogus'", {}),
    ("evaluate-empty-split", ["evaluate", "--model", MODEL, "--dataset", "novalid", "--split", "valid"],
     r"'novalid' version \w+ has no valid rows", {}),
    ("evaluate-version-traversal", ["evaluate", "--model", MODEL, "--dataset", "digits", "--version", "../.."],
     r"invalid dataset version '../..'", {}),
    ("evaluate-k-zero", ["evaluate", "--model", MODEL, "--dataset", "digits", "-k", "0"], r"-k/--num-samples=0 must be an integer >= 1", {}),
    ("evaluate-method", ["evaluate", "--model", MODEL, "--dataset", "digits", "--method", "mc"], r"--method 'mc' is not allowed", {}),
    # --- export
    ("export-unknown-split", ["export", "--model", MODEL, "--dataset", "digits", "--splits", "bogus"], r"unknown split 'bogus'", {}),
    ("export-batch-zero", ["export", "--model", MODEL, "--dataset", "digits", "--batch-size", "0"], r"--batch-size=0 must be an integer > 0", {}),
    ("export-uri-traversal", ["export", "--model", "models:/../../x@champion", "--dataset", "digits"],
     r"--model='models:/../../x@champion': use models:/NAME@ALIAS", {}),
    ("export-run-uri-traversal", ["export", "--model", "runs:/abc/../../x", "--dataset", "digits"],
     r"--model='runs:/abc/../../x': use", {}),
    ("export-missing-dataset", ["export", "--model", MODEL, "--dataset", "nosuch"], r"dataset 'nosuch' not found", {}),
    ("export-cache-env", ["export", "--model", MODEL, "--dataset", "digits"], r"AEVB_MODEL_CACHE_MB='lots' must be an integer >= 0",
     {"AEVB_MODEL_CACHE_MB": "lots"}),
    ("export-lease-env", ["export", "--model", MODEL, "--dataset", "digits"], r"AEVB_STAGING_LEASE_SECONDS='nan' must be a finite number",
     {"AEVB_STAGING_LEASE_SECONDS": "nan"}),
    # --- corrupt
    ("corrupt-kind", ["corrupt", "digits", "--kind", "blur"], r"kind='blur' is not known", {}),
    ("corrupt-noise-nan", ["corrupt", "digits", "--kind", "denoise", "--noise-std", "nan"], r"argument --noise-std: 'nan' is not a finite", {}),
    ("corrupt-amount", ["corrupt", "digits", "--kind", "inpaint", "--amount", "1.5"], r"--amount=1.5 must lie in \(0, 1\)", {}),
    ("corrupt-name-traversal", ["corrupt", "digits", "--kind", "denoise", "--name", "../evil"], r"invalid dataset name '../evil'", {}),
    ("corrupt-version", ["corrupt", "digits", "--kind", "denoise", "--version", "zz"], r"invalid dataset version 'zz'", {}),
    ("corrupt-superres-factor", ["corrupt", "digits", "--kind", "superres", "--factor", "3"], r"factor", {}),
    # --- restore
    ("restore-both", ["restore", "--model", MODEL, "--dataset", "digits", "--from-latents", "x"], r"give exactly one of --dataset", {}),
    ("restore-no-table", ["restore", "--model", MODEL, "--from-latents", "{src}/none"], r"latent table .*none: not found", {}),
    ("restore-hostile-manifest", ["restore", "--model", MODEL, "--from-latents", "{src}/hostile"],
     r"its manifest's dataset: invalid dataset name '../../escape'", {}),
    ("restore-mask-traversal", ["restore", "--model", MODEL, "--dataset", "digits", "--kind", "inpaint", "--mask", "../x"],
     r"invalid dataset name '../x'", {}),
    ("restore-lr-nan", ["restore", "--model", MODEL, "--dataset", "digits", "--learning-rate", "nan"], r"argument --learning-rate: 'nan'", {}),
    ("restore-version-traversal", ["restore", "--model", MODEL, "--dataset", "digits", "--version", "../../x"], r"invalid dataset version", {}),
    # --- pipeline
    ("pipeline-name-traversal", ["pipeline", "data.name='../x'"], r"data.name: invalid dataset name '../x'", {}),
    ("pipeline-model-name", ["pipeline", "register.model_name='a/b'"], r"register.model_name='a/b': use 1-100 characters", {}),
    ("pipeline-option-type", ["pipeline", '--name', 'd2', 'data.options={scale="abc"}'],
     r"data.options.scale='abc' must be a finite number > 0", {}),
    ("pipeline-option-unknown", ["pipeline", 'data.options={bogus=1}'], r"data.options.bogus=1 is not a reader option", {}),
    ("pipeline-fifo-source", ["pipeline", "{src}/fifo.csv", "--name", "f"], r"fifo.csv' is a FIFO", {}),
    ("pipeline-fraction-nan", ["pipeline", "data.valid_fraction=nan"], r"data.valid_fraction=nan must be a number in \[0, 1\)", {}),
    ("pipeline-retry-inf", ["pipeline", "pipeline.retry_delay_seconds=inf"], r"pipeline.retry_delay_seconds=inf must be a finite", {}),
    ("pipeline-no-valid-split", ["pipeline", "data.valid_fraction=0"], r"data.valid_fraction=0 leaves no validation split", {}),
    ("pipeline-no-test-split", ["pipeline", "data.test_fraction=0"], r"evaluate.split='test' but data.test_fraction=0", {}),
    # --- score, sample
    ("score-bad-uri", ["score", "--model", "bogus", "--dataset", "digits"], r"--model='bogus': use models:/NAME@ALIAS", {}),
    ("score-missing-dataset", ["score", "--model", MODEL, "--dataset", "nosuch"], r"dataset 'nosuch' not found", {}),
    ("score-k-negative", ["score", "--model", MODEL, "--dataset", "digits", "--log-px-samples", "-1"],
     r"--log-px-samples=-1 must be an integer >= 0", {}),
    ("score-unknown-split", ["score", "--model", MODEL, "--dataset", "digits", "--splits", "bogus"],
     r"--splits=\['bogus'\]; choose from train, valid, test", {}),
    ("score-unknown-model", ["score", "--model", MODEL, "--dataset", "digits"], r"no such registered model version", {}),
    ("sample-bad-uri", ["sample", "--model", "runs:/abc/../../x"], r"--model='runs:/abc/../../x': use", {}),
    ("sample-zero", ["sample", "--model", MODEL, "-n", "0"], r"--num-samples=0 must be an integer in \[1, 100,000\]", {}),
    ("sample-manifold", ["sample", "--model", MODEL, "--manifold-size", "1000"], r"--manifold-size=1000 must be an integer in \[2, 50\]", {}),
    # --- datasets, models, config, lock, serve, deploy, reproduce
    ("config-preset", ["config", "show", "--preset", "nope"], r"--preset='nope' is not allowed; choose one of", {}),
    ("lock-release-no-model", ["lock", "release"], r"give the MODEL whose lock to free", {}),
    ("deploy-interval-nan", ["deploy", "--interval", "nan"], r"argument --interval: 'nan' is not a finite", {}),
    ("deploy-bad-cron", ["deploy", "--cron", "bogus"], r"--cron 'bogus' is not a valid schedule: has 1 field", {}),
    ("datasets-name-traversal", ["datasets", "show", "../.."], r"invalid dataset name '../..'", {}),
    ("datasets-version-traversal", ["datasets", "show", "digits", "--version", "../.."], r"invalid dataset version '../..'", {}),
    ("datasets-no-name", ["datasets", "show"], r"needs a dataset NAME", {}),
    ("models-no-name", ["models", "show"], r"give the registered model NAME", {}),
    ("serve-interval-nan", ["serve", "--interval", "nan"], r"argument --interval: 'nan' is not a finite", {}),
    ("reproduce-seed", ["reproduce", "--seed", "x"], r"reproduce --seed='x' must be an integer", {}),
    ("reproduce-override-nan", ["reproduce", "fig2_budgets=nan"], r"fig2_budgets", {}),
    ("prefect-home-uncreatable", ["ingest", "digits"], r"PREFECT_HOME=/proc/aevb-nope/prefect: cannot create it",
     {"PREFECT_HOME": "/proc/aevb-nope/prefect"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "pattern", "env"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_input_is_one_line_exit_2_and_writes_nothing(
    world, capsys, monkeypatch, argv, pattern, env
):
    import flows.prefect_api

    started = []
    real_serving = flows.prefect_api.serving

    def no_flows_yet(needed: bool = True):
        if needed:
            started.append(needed)
        return real_serving(False)

    monkeypatch.setattr(flows.prefect_api, "serving", no_flows_yet)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    watched = (world["root"], world["store"], world["tmp"], world["src"])
    before = _tree(*watched)
    argv = [a.replace("{src}", str(world["src"])) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err
    lines = err.splitlines()
    verb = argv[0]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"aevb {verb}: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err
    assert _tree(*watched) == before, "something was written"
    assert started == [], "a Prefect server was started before the error was found"


def test_the_table_covers_every_verb_and_forty_inputs():
    assert len(CASES) >= 40
    assert {c[1][0] for c in CASES} == set(cli.VERBS)
