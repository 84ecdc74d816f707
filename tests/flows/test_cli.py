"""The CLI contract: every verb has --help, user errors exit 2 with one line, --version works."""

from __future__ import annotations

import pytest

from flows.cli import VERBS, main


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert f"usage: aevb {verb}" in capsys.readouterr().out


def test_building_the_parser_imports_nothing_heavy():
    """`aevb --help` must stay quick: no verb module imports a heavy library at the top."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; from flows import cli; cli.build_parser(); "
        "print(sorted(m for m in ('mlflow', 'tensorflow', 'pyarrow', 'prefect', 'pandas', 'numpy')"
        " if m in sys.modules))"
    )
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=repo, env={**os.environ, "PYTHONPATH": repo})  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("aevb-pipeline ")


def test_unknown_config_key_is_one_line_exit_2(capsys, data_root):
    rc = main(["train", "--dataset", "digits", "--data-root", data_root, "train.epoch=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "unknown key(s) ['epoch'] in [train]" in err[0] and "epochs" in err[0]


def test_missing_dataset_is_one_line_exit_2(capsys, data_root):  # fails before any flow starts
    rc = main(["train", "--dataset", "nosuch", "--data-root", data_root])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "nosuch" in err[0] and "aevb ingest" in err[0]


def test_stray_argument_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["models", "list", "--bogus"])
    assert exc.value.code == 2


def test_user_error_inside_a_flow_prints_one_line_and_no_traceback(
    prefect_harness, capfd, mlflow_store, data_root
):
    assert main(["ingest", "digits", "--data-root", data_root]) == 0
    capfd.readouterr()
    rc = main(
        [
            "export",
            "--model",
            "models:/nosuch@champion",
            "--dataset",
            "digits",
            "--data-root",
            data_root,
        ]
    )
    captured = capfd.readouterr()
    assert rc == 2
    # No frames of our code: Prefect's traceback for the failed task was filtered out.
    assert (
        'File "/' not in captured.err + captured.out or "tasks/" not in captured.err + captured.out
    )
    errors = [line for line in captured.err.splitlines() if line.startswith("aevb export: error:")]
    assert len(errors) == 1 and "nosuch" in errors[0]


def test_task_messages_name_parameters_and_the_cli_says_them_as_flags():
    from flows import cli

    parser = cli._verb_parser(cli.build_parser(), "export")
    said = cli.parameters_as_flags(
        "batch_size=0 must be > 0; model_uri='m' unknown; `samples` too; "
        "train.batch_size=3 and the user's 'batch_size=7' stay",
        parser,
    )
    assert said == (
        "--batch-size=0 must be > 0; --model='m' unknown; `--samples` too; "
        "train.batch_size=3 and the user's 'batch_size=7' stay"
    )
    # a parameter the verb has no flag for is left alone
    assert cli.parameters_as_flags("kind='x'", parser) == "kind='x'"


def test_a_task_error_reaches_the_user_with_the_verbs_flag(capsys, data_root):
    rc = main(["export", "--model", "models:/x@champion", "--dataset", "d",
               "--data-root", data_root, "--batch-size", "0"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["aevb export: error: --batch-size=0 must be an integer > 0"]
