"""The `aevb` command line: one verb per stage plus the pipeline.

Exit codes (docs/design.md): 0 success; 2 with a one-line message for user errors (`PipelineError`, bad
arguments); 1 with a traceback for internal errors. Heavy imports (Prefect, TF, MLflow) happen only
inside the verb that needs them, so `aevb --help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable

from flows.settings import quiet_user_error_tracebacks

# Telemetry off, quiet TF, Prefect's start-up timeout: `import flows` applied them already
# (flows/settings.py), for the CLI and for flows started from Python alike.

# verb -> module under flows/commands/ exposing `add_parser(subparsers)`; each sets `func`.
VERBS = (
    "ingest",
    "datasets",
    "train",
    "evaluate",
    "models",
    "export",
    "corrupt",
    "restore",
    "pipeline",
    "serve",
    "deploy",
    "reproduce",
)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("aevb-pipeline")
    except PackageNotFoundError:
        return "0+unknown"


# Task parameters whose flag is spelled differently from the parameter.
PARAMETER_FLAGS = {"model_uri": "--model", "table": "--from-latents"}


def parameters_as_flags(message: str, parser: argparse.ArgumentParser | None) -> str:
    """Task messages name parameters (`batch_size=0`, `` `mask` ``); say them as the verb's flags.

    Only the two spellings tasks use are rewritten, ``name=`` and a back-quoted ``name``, and only
    for parameters the verb has a flag for, so prose and config keys (``train.epochs=``) stay.
    """
    if parser is None:
        return message
    flags = dict(PARAMETER_FLAGS)
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs:
            flags[action.dest] = longs[0]
    flags = {k: v for k, v in flags.items() if v in parser._option_string_actions}
    for param, flag in sorted(flags.items(), key=lambda kv: -len(kv[0])):
        message = re.sub(rf"(?<![\w.{{'\"-]){param}=", f"{flag}=", message)
        message = message.replace(f"`{param}`", f"`{flag}`")
    return message


def _verb_parser(parser: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(verb)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aevb",
        description="Auto-Encoding Variational Bayes pipeline "
        "(Kingma & Welling, 2013): ingest, train, evaluate, register, export, restore, reproduce.",
    )
    parser.add_argument("--version", action="version", version=f"aevb-pipeline {version()}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        importlib.import_module(f"flows.commands.{verb}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse cannot take positionals after options once a positional was consumed, so KEY=VALUE
    # overrides may stand anywhere: collect them from the leftovers.
    args, extra = parser.parse_known_args(argv)
    overrides = [t for t in extra if "=" in t and not t.startswith("-")]
    unknown = [t for t in extra if t not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        args.overrides = list(args.overrides or []) + overrides
    quiet_user_error_tracebacks()
    from models.errors import PipelineError

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except PipelineError as exc:
        message = parameters_as_flags(str(exc), _verb_parser(parser, args.verb))
        print(f"aevb {args.verb}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"aevb {args.verb}: interrupted; completed work is kept and a rerun resumes",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
