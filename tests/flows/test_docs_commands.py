"""CLI = docs: every `aevb ...` command line in a fenced code block of README.md and docs/*.md.

Each line is parsed by the real CLI (`flows.cli.main` with its argparse parser and its
KEY=VALUE handling; only the verb's work is replaced), so a flag the CLI does not accept (the old
`aevb export --samples K`) fails here. The cheap lines are also *run* on tiny data (digits and a
one-epoch model trained by `tasks.train`, registered as aevb-digits v1..v3, champion = v3).

How a doc line becomes a command (the placeholder mechanism, also described in README.md):
- `$ ` prompts, `VAR=value` prefixes (the environment of that command) and a `.venv/bin/` path
  are dropped; backslash continuations are joined; `# comments` go; `a ; b` are two commands;
- an optional group `[--flag VALUE]` is included (so its flags are checked too);
- `...` stands for "any other arguments" and is dropped; `<run id>` becomes the run id of the
  trained model, a bare `K` (a sample count) becomes 100 and a bare `V` (a version) CURRENT;
- lines whose first words end with ':' are printed output (`aevb train: error: ...`), not commands.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shlex
from pathlib import Path

import pytest

from flows import cli

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [
    "README.md",
    *sorted(os.path.relpath(p, REPO) for p in glob.glob(str(REPO / "docs/*.md"))),
]
FENCE = re.compile(r"^[ \t]*```([^\n`]*)\n(.*?)^[ \t]*```", re.S | re.M)
SKIP_LANGUAGES = {"python", "toml", "json", "yaml", "ini"}
PLACEHOLDER_RUN_ID = "RUNID"
TOKEN_PLACEHOLDERS = {"K": "100", "V": "CURRENT"}
# `aevb ...`, maybe after VAR=value / VAR='...' assignments and a path (.venv/bin/aevb)
COMMAND_START = re.compile(r"([A-Z_][A-Z0-9_]*=('[^']*'|\S+)\s+)*(\S*/)?aevb\s")


@dataclasses.dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    text: str  # the command as written (one of a line's `;`-separated commands)
    argv: tuple[str, ...]  # after `aevb`, placeholders still in (see `argv_for`)
    env: tuple[tuple[str, str], ...]

    @property
    def verb(self) -> str:
        return self.argv[0] if self.argv else ""

    def argv_for(self, run_id: str) -> list[str]:
        return [a.replace(PLACEHOLDER_RUN_ID, run_id) for a in self.argv]


def _logical_lines(block: str, first_line: int):
    """(line number, text) with backslash continuations joined."""
    buf, start = "", first_line
    for offset, raw in enumerate(block.split("\n")):
        if not buf:
            start = first_line + offset
        buf = f"{buf} {raw.strip()}" if buf else raw.strip()
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
            continue
        if buf:
            yield start, buf
        buf = ""


def _command(where: str, text: str) -> DocCommand | None:
    text = re.sub(r"^\$\s+", "", text.strip())
    text = text.replace("<run id>", PLACEHOLDER_RUN_ID)
    text = re.sub(r"\[(--[^\]]*)\]", r"\1", text)  # optional groups: check their flags too
    if not COMMAND_START.match(text):
        return None
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError as exc:
        raise ValueError(f"{where}: {text!r} is not a shell command line ({exc})") from exc
    env = []
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        key, value = tokens.pop(0).split("=", 1)
        env.append((key, value))
    if not tokens or os.path.basename(tokens[0]) != "aevb":
        return None
    if any(t.endswith(":") for t in tokens[1:3]):  # printed output, not a command
        return None
    argv = tuple(TOKEN_PLACEHOLDERS.get(t, t) for t in tokens[1:] if t != "...")
    return DocCommand(where, text, argv, tuple(env))


def doc_commands() -> list[DocCommand]:
    found = []
    for rel in DOC_FILES:
        text = (REPO / rel).read_text()
        for m in FENCE.finditer(text):
            if m.group(1).strip().lower() in SKIP_LANGUAGES:
                continue
            first = text.count("\n", 0, m.start(2)) + 1
            for lineno, line in _logical_lines(m.group(2), first):
                for part in re.split(r"\s;\s", line):
                    cmd = _command(f"{rel}:{lineno}", part)
                    if cmd is not None:
                        found.append(cmd)
    return found


COMMANDS = doc_commands()


def parse_only(argv: list[str], monkeypatch: pytest.MonkeyPatch):
    """What `aevb ARGV` parses to through the real `cli.main` (exit code, namespace): the verb's
    check and run are not called."""
    seen = []
    monkeypatch.setattr(cli, "run_verb", lambda args: seen.append(args) or 0)
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse errors and --help
        rc = exc.code
    return rc, (seen[0] if seen else None)


def test_the_extractor_finds_the_documented_commands():
    """Could fail: an extractor that finds nothing would make the parse test vacuous."""
    texts = [c.text for c in COMMANDS]
    assert len(COMMANDS) >= 50, texts
    verbs = {c.verb for c in COMMANDS}
    assert {"ingest", "datasets", "pipeline", "evaluate", "export", "restore"} <= verbs
    assert any(c.verb == "datasets" and c.argv[1:] == ("show", "digits") for c in COMMANDS)
    assert not any("error:" in t or "finished:" in t for t in texts)
    multi = [c for c in COMMANDS if c.env]
    assert multi and all(dict(c.env).get("TF_CONFIG", "").startswith("{") for c in multi)


def test_a_flag_the_cli_does_not_have_is_refused(monkeypatch, capsys):
    """The drift this file guards against (the README once showed an export flag the CLI did not
    have): a documented line with a flag the verb lacks fails the parse."""
    line = "aevb export --model models:/aevb-digits@champion --dataset digits --z-draws K"
    rc, args = parse_only(list(_command("x", line).argv), monkeypatch)
    assert rc == 2 and args is None
    assert "unrecognized arguments: --z-draws 100" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.where for c in COMMANDS])
def test_every_documented_command_parses(cmd, monkeypatch, capsys):
    rc, args = parse_only(cmd.argv_for("0123456789abcdef0123456789abcdef"), monkeypatch)
    assert rc == 0, f"{cmd.where}: `{cmd.text}` -> {capsys.readouterr().err.strip()}"
    assert args is not None and args.verb == cmd.verb


# ----------------------------------------------------------------------------- real runs
# What the fixture provides: the datasets and model URIs a documented line may name.
DATASETS = {"digits", "digits-inpaint", "digits-denoise", "incoming"}
MODELS = {
    "models:/aevb-digits@champion",
    "models:/aevb-digits/3",
    f"runs:/{PLACEHOLDER_RUN_ID}/model",
}
HEAVY_VERBS = {  # covered by their own tests; here they are parse-checked only
    "pipeline": "trains and registers",
    "train": "trains",
    "serve": "needs a Prefect server",
    "deploy": "needs a Prefect server and a work pool",
    "reproduce": "minutes of experiments",
}


def _flag(argv: tuple[str, ...], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def not_run_because(cmd: DocCommand) -> str | None:
    """Why a documented line is only parse-checked (None: it is run for real)."""
    argv = cmd.argv
    if cmd.env:
        return "needs a TF cluster (TF_CONFIG)"
    if cmd.verb in HEAVY_VERBS:
        return HEAVY_VERBS[cmd.verb]
    if any("s3://" in a for a in argv):
        return "needs an object store"
    if cmd.verb in ("ingest", "corrupt") and argv[1] != "digits":
        return f"needs the source {argv[1]}"
    dataset, model = _flag(argv, "--dataset"), _flag(argv, "--model")
    if dataset is not None and dataset not in DATASETS:
        return f"needs the dataset {dataset}"
    if model is not None and model not in MODELS:
        return f"needs the model {model}"
    if argv[:2] == ("lock", "release"):
        return "needs a held retrain lock (tests/flows/test_lock.py)"
    if _flag(argv, "--method") in ("hmc", "ais", "mwg"):
        return "minutes of MCMC (tests/tasks cover the method)"
    return None


RUNNABLE = [c for c in COMMANDS if not_run_because(c) is None]


@pytest.fixture(scope="module")
def docs_world(tmp_path_factory, prefect_harness):
    """Stores in a temp folder (cwd too, so relative paths in the docs land there): digits,
    its inpaint/denoise copies, digits again as `incoming`, a one-epoch model trained by
    `tasks.train` and registered as aevb-digits v1..v3 (champion: v1), and its latent table."""
    from models.config import ModelConfig, TrainConfig
    from tasks import tracking
    from tasks.corrupt import corrupt_dataset
    from tasks.ingest import ingest
    from tasks.train import train

    base = tmp_path_factory.mktemp("docs-commands")
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in (("AEVB_DATA_ROOT", "data"), ("AEVB_MLFLOW_DIR", "mlflow"),
                         ("AEVB_MODEL_CACHE", "cache"), ("AEVB_CHECKPOINT_DIR", "ckpt")):  # fmt: skip
            mp.setenv(var, str(base / sub))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(base)
        root = str(base / "data")
        ingest("digits", "digits", root)
        ingest("digits", "incoming", root)
        corrupt_dataset("digits", "inpaint", data_root=root)
        corrupt_dataset("digits", "denoise", data_root=root)
        out = train(
            "digits",
            ModelConfig(latent_dim=2, hidden_sizes=(16,)),
            TrainConfig(epochs=1, batch_size=100),
            data_root=root,
        )
        for _ in range(3):
            tracking.register_model(
                tracking.logged_model_uri(out.run_id), "aevb-digits", out.run_id
            )
        tracking.set_alias("aevb-digits", "champion", 1)
        assert (
            cli.main(["export", "--model", "models:/aevb-digits@champion", "--dataset", "digits"])
            == 0
        )
        yield {"base": base, "run_id": out.run_id}


@pytest.mark.slow
@pytest.mark.parametrize("cmd", RUNNABLE, ids=[c.where for c in RUNNABLE])
def test_documented_command_runs(cmd, docs_world, capsys):
    rc = cli.main(cmd.argv_for(docs_world["run_id"]))
    assert rc == 0, f"{cmd.where}: `{cmd.text}` -> {capsys.readouterr().err.strip()[-2000:]}"


def test_a_representative_subset_runs_for_real():
    """Could fail: the real runs must cover the cheap verbs, the runs:/ form among them."""
    verbs = {c.verb for c in RUNNABLE}
    assert {
        "ingest",
        "datasets",
        "corrupt",
        "evaluate",
        "export",
        "score",
        "restore",
        "lock",
    } <= verbs
    assert sum(c.verb in ("evaluate", "export", "score", "restore") for c in RUNNABLE) >= 5
