"""The `aevb` command line: one verb per stage plus the pipeline.

Exit codes (docs/design.md): 0 success; 2 with a one-line message for user errors (`PipelineError`, bad
arguments); 1 with a traceback for internal errors. Heavy imports (Prefect, TF, MLflow) happen only
inside the verb that needs them, so `aevb --help` is quick.

Order of work for a verb (`main`): parse the arguments (a bad one is one line, no usage dump), check
the environment settings, run the verb's ``check(args)`` (its settings, then data, then stores:
nothing is written and no server is started before it passes), start Prefect's temporary API
server if the verb runs flows and no PREFECT_API_URL is set (flows/prefect_api.py: it dies with
this process, however the process dies), run the verb, then stop the server and release the
downloaded models this command held (tasks/model_cache.py), on success and on error alike.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

# Offline machine, and nobody wants telemetry from a batch job: set before prefect/mlflow import.
for _k, _v in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}.items():
    os.environ.setdefault(_k, _v)

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
    "lock",
    "serve",
    "reproduce",
)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("aevb-pipeline")
    except PackageNotFoundError:
        return "0+unknown"


def _error_names() -> tuple[str, ...]:
    from models.errors import PipelineError

    found, todo = [], [PipelineError]
    while todo:
        cls = todo.pop()
        found.append(cls.__name__)
        todo.extend(cls.__subclasses__())
    return tuple(found)


class _DropPipelineErrorTracebacks(logging.Filter):
    """Prefect logs a user error up to four times (task failed, task state, flow exception, flow
    state), with tracebacks; on the console the CLI's one line is enough. The records still reach
    Prefect's API log handler, so the UI keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        from models.errors import PipelineError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PipelineError):
            return False
        if not record.name.startswith("prefect"):
            return True
        message = record.getMessage()
        return not any(f"{n}(" in message or f"{n}: " in message for n in _error_names())


_DROP = _DropPipelineErrorTracebacks()


def _quiet_user_error_tracebacks() -> None:
    """Attach the filter to every handler Prefect configured (filters on loggers miss propagation)."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # `import prefect` alone does not configure its handlers
    drop = _DROP
    names = [
        n for n in logging.Logger.manager.loggerDict if n == "prefect" or n.startswith("prefect.")
    ]
    for name in ["", *names]:
        for handler in logging.getLogger(name).handlers:
            if drop not in handler.filters:
                handler.addFilter(drop)


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


class OneLineParser(argparse.ArgumentParser):
    """Argument errors in one line, `aevb <verb>: error: ...` (no usage dump), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    from models.errors import PipelineError

    try:
        return run_verb(args)
    except PipelineError as exc:
        message = parameters_as_flags(str(exc), _verb_parser(parser, args.verb))
        message = " ".join(message.split())  # one line, whatever a library put in it
        print(f"aevb {args.verb}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"aevb {args.verb}: interrupted; completed work is kept and a rerun resumes",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:  # `aevb datasets list | head -1`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run_verb(args: argparse.Namespace) -> int:
    """Check, then (with a temporary Prefect API if the verb runs flows) run; always clean up."""
    from flows.config_sources import check_environment
    from flows.prefect_api import serving

    check_environment()
    check: Callable[[argparse.Namespace], Any] | None = getattr(args, "check", None)
    func: Callable[[argparse.Namespace, Any], int] = args.func
    try:
        checked = check(args) if check is not None else None
        runs_flows = bool(getattr(args, "runs_flows", False))
        with serving(runs_flows):
            if runs_flows:
                _quiet_user_error_tracebacks()
            return int(func(args, checked) or 0)
    finally:
        if "tasks.model_cache" in sys.modules:
            from tasks import model_cache

            model_cache.release_all()


if __name__ == "__main__":
    sys.exit(main())
