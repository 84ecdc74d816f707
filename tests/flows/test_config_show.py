"""Every option is discoverable: `aevb config show` lists every key of every typed config class
with type, default, allowed values and meaning; every verb's --help shows its defaults."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from flows import config as F
from flows.cli import VERBS, build_parser, main
from flows.config_docs import COMMON_KEYS, describe, docstring_table
from models import config as M
from models import constants as C


def _show(capsys, *args: str) -> str:
    assert main(["config", "show", *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("section", sorted(F.SECTIONS))
def test_every_field_of_every_section_has_a_documented_line(section, capsys):
    cls = F.SECTIONS[section]
    table = docstring_table(cls)
    out = _show(capsys)
    block = out.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
    for key in F.valid_keys(section):
        meaning, _ = table.get(key, ("", ""))
        assert meaning, f"{cls.__name__}.{key} has no line in its docstring's Keys: table"
        assert f"  {key} = " in block, f"[{section}] {key} missing from `aevb config show`"
        assert meaning.split()[0] in block
    assert set(table) <= {f.name for f in dataclasses.fields(cls)}, "docs of fields that are gone"


def test_the_defaults_types_and_choices_are_the_dataclasses_own(capsys):
    docs = {d.dotted: d for _, _, keys in describe() for d in keys}
    assert docs["train.epochs"].default == str(M.TrainConfig().epochs)
    assert docs["train.epochs"].type == "int" and docs["train.epochs"].allowed == ">= 1"
    assert (
        docs["model.likelihood"].allowed == 'one of "bernoulli", "gaussian", "continuous_bernoulli"'
    )
    assert docs["evaluate.num_samples"].default == "5000"
    assert docs["register.model_name"].default == "(unset)"
    assert docs["data.prefix_shard_ids"].allowed == "true, false"
    assert docs["export.splits"].default == '["train", "valid", "test"]'
    out = _show(capsys)
    assert 'estimator = "B"' in out and 'one of "A", "B", "iwae"' in out
    assert "AEVB_" not in out or "where data and stores go" in out


def test_literal_choices_agree_with_the_validators():
    hints = typing.get_type_hints
    assert typing.get_args(hints(F.EvaluateSection)["split"]) == C.SPLITS
    assert typing.get_args(typing.get_args(hints(F.ExportSection)["splits"])[0]) == C.SPLITS
    from tasks.runners import RUNNER_KINDS

    assert typing.get_args(hints(F.PipelineSection)["task_runner"]) == RUNNER_KINDS
    assert typing.get_args(hints(F.PipelineConfig)["preset"]) == tuple(M.PRESETS)
    from flows.commands.config import PRESETS

    assert PRESETS == tuple(M.PRESETS)


def test_a_preset_shows_its_own_defaults_and_marks_what_it_changes(capsys):
    out = _show(capsys, "--preset", "paper")
    assert '*optimizer = "adagrad"' in out and "*learning_rate = 0.02" in out
    assert '*activation = "tanh"' in out
    assert " epochs = 20" in out  # unchanged by the preset: not marked
    assert 'preset "paper"' in out


def test_an_unknown_preset_is_one_line_exit_2(capsys):
    assert main(["config", "show", "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "preset='nope'" in err[0] and "'paper'" in err[0]


def test_show_ends_with_where_data_and_stores_go(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("AEVB_DATA_ROOT", str(tmp_path / "d"))
    out = _show(capsys)
    tail = out.split("where data and stores go", 1)[1]
    assert f"data root      {tmp_path / 'd'}  ($AEVB_DATA_ROOT)" in tail
    assert "MLflow store" in tail and "Prefect API" in tail


def _verb_parsers() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no verbs")


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_option_with_a_default_says_it_in_help(verb):
    parser = _verb_parsers()[verb]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.default in (None, False, argparse.SUPPRESS) and action.default != 0:
            continue
        if isinstance(action.default, bool) or not (action.option_strings or action.nargs == "?"):
            continue
        text = formatter._get_help_string(action) if action.help else ""
        assert "default" in text, f"aevb {verb} {action.option_strings or action.dest}: {text!r}"


@pytest.mark.parametrize("verb", ["train", "pipeline", "serve"])
def test_train_and_pipeline_help_point_to_config_show_and_list_the_most_used_keys(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    out = capsys.readouterr().out
    assert "aevb config show" in out
    for key in COMMON_KEYS:
        assert f"  {key}=" in out, key
    assert "train.epochs=20 " in out and "evaluate.num_samples=5000 " in out
    assert "[A, B, iwae]" in out and "[adam, adagrad]" in out


def test_evaluate_help_says_k_defaults_to_5000(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "(default: 5000)" in capsys.readouterr().out
