"""The `aevb` command line: one verb per stage plus the pipeline.

Exit codes (docs/design.md): 0 success; 2 with a one-line message for user errors (`PipelineError`, bad
arguments); 1 with a traceback for internal errors. Heavy imports (Prefect, TF, MLflow) happen only
inside the verb that needs them, so `aevb --help` is quick.

Order of work for a verb (`main`): parse the arguments (a bad one is one line, no usage dump), check
the environment settings, run the verb's ``check(args)`` (its settings, then data, then stores:
nothing is written and no server is started before it passes), start Prefect's temporary API
server if the verb runs flows and no PREFECT_API_URL is set (flows/prefect_api.py: it dies with
this process, however the process dies; it starts in the background while the verb imports
Prefect, MLflow and TensorFlow, and the first Prefect client waits for it), run the verb, then
stop the server and release the downloaded models this command held (tasks/model_cache.py), on
success and on error alike.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from flows.settings import QUIET, apply_cli_env_defaults, quiet_user_error_tracebacks

# Telemetry off, quiet TF and MLflow, Prefect's start-up timeout: `import flows` applied them
# already (flows/settings.py), for the CLI and for flows started from Python alike.

# What TensorFlow's C++ core writes to stderr while it loads, before its log level applies (or,
# for cuInit, as an ERROR): noise on a machine without an NVIDIA driver. Nothing forces the CPU:
# with a GPU and its driver present, cuInit errors are real and stay visible.
_NVIDIA_DRIVER = os.path.exists("/proc/driver/nvidia/version")
_TF_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|cudart_stub\.cc.*Could not find cuda drivers|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning: Could not find TensorRT|oneDNN custom operations are on"
    r"|cpu_feature_guard\.cc|rebuild TensorFlow with the appropriate compiler flags"
    + ("" if _NVIDIA_DRIVER else r"|failed call to cuInit")
)


@contextlib.contextmanager
def _tensorflow_startup_filtered() -> Iterator[None]:
    """Send fd 2 to a temp file while TF loads; then replay every line that is not start-up noise
    (lines other threads wrote meanwhile are kept, only delayed)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [
                ln
                for ln in tmp.read().splitlines(True)
                if not _TF_STARTUP_NOISE.search(ln.decode("utf-8", "replace"))
            ]
            if kept:
                os.write(2, b"".join(kept))


def device_line(tf: Any) -> str:
    """Our one line saying where TensorFlow computes."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = []
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            names.append(details.get("device_name") or gpu.name.removeprefix("/physical_device:"))
        return f"aevb: TensorFlow {tf.__version__} on GPU ({', '.join(names)})"
    why = (
        "this TensorFlow build has no CUDA"
        if not tf.test.is_built_with_cuda()
        else ("no NVIDIA driver found" if not _NVIDIA_DRIVER else "no GPU visible to CUDA")
    )
    return f"aevb: TensorFlow {tf.__version__} on CPU ({os.cpu_count()} cores; {why})"


class _OnImport(importlib.abc.MetaPathFinder):
    """Runs ``load(exec_module, module)`` in place of the module's own loading when ``name`` is
    first imported (by whichever verb needs it), so light verbs never pay for it."""

    def __init__(self, name: str, load: Callable[[Callable, Any], None]):
        self.name, self.load = name, load

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module
            spec.loader.exec_module = lambda module: self.load(exec_module, module)
        return spec


def _load_tensorflow(exec_module: Callable, module: Any) -> None:
    """TF with its start-up noise filtered and its Python loggers at errors, then our line."""
    with _tensorflow_startup_filtered() if QUIET else contextlib.nullcontext():
        exec_module(module)
        line = device_line(module)
    if QUIET:  # absl/TF Python warnings (retracing, SavedModel custom gradients)
        for logger_name in ("absl", "tensorflow"):
            logging.getLogger(logger_name).setLevel(logging.ERROR)
    print(line, file=sys.stderr, flush=True)


def _load_prefect(exec_module: Callable, module: Any) -> None:
    exec_module(module)  # prefect.main configures Prefect's logging: only now are there handlers
    _quiet_prefect_console()
    quiet_user_error_tracebacks()  # (called from main() too, before Prefect has configured them)


def _set_up_console() -> None:
    """Install the import hooks (or apply them at once to what is already imported)."""
    for name, load in (("tensorflow", _load_tensorflow), ("prefect.main", _load_prefect)):
        if name in sys.modules:
            if name == "prefect.main":
                _quiet_prefect_console()
        elif not any(isinstance(f, _OnImport) and f.name == name for f in sys.meta_path):
            sys.meta_path.insert(0, _OnImport(name, load))


class _OnlyOurInfoLines(logging.Filter):
    """Prefect's console: drop Prefect's own INFO lines ("Beginning flow run", "Finished in state
    Completed()", the temporary server's start/stop); keep ours (logged through Prefect's run
    logger from tasks/ and flows/) and every WARNING or worse. The Prefect API/UI still gets all."""

    def __init__(self, package_dir: str):
        super().__init__()
        self.package_dir = package_dir + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.startswith(self.package_dir)


def _quiet_prefect_console() -> None:
    if not QUIET:
        return
    import prefect
    from prefect.logging.handlers import PrefectConsoleHandler

    names = [n for n in logging.Logger.manager.loggerDict if n.split(".")[0] == "prefect"]
    for name in ["", *names]:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _OnlyOurInfoLines) for f in handler.filters
            ):
                handler.addFilter(_OnlyOurInfoLines(os.path.dirname(prefect.__file__)))


# verb -> module under flows/commands/ exposing `add_parser(subparsers)`; each sets `func`.
VERBS = (
    "ingest",
    "datasets",
    "train",
    "evaluate",
    "models",
    "export",
    "score",
    "sample",
    "corrupt",
    "restore",
    "pipeline",
    "lock",
    "serve",
    "deploy",
    "reproduce",
    "config",
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
    apply_cli_env_defaults()
    _set_up_console()
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
    from flows.prefect_api import make_prefect_home, serving

    check_environment()
    check: Callable[[argparse.Namespace], Any] | None = getattr(args, "check", None)
    func: Callable[[argparse.Namespace, Any], int] = args.func
    runs_flows = bool(getattr(args, "runs_flows", False))
    try:
        if runs_flows:  # before the checks import Prefect, which makes only the last folder
            make_prefect_home()
        checked = check(args) if check is not None else None
        with serving(runs_flows) as server:
            if runs_flows:
                quiet_user_error_tracebacks()
            if server is not None and getattr(args, "needs_tensorflow", False):
                # The verb's flow always needs TensorFlow (+ TFP, ~5 s): import it while the
                # temporary server is still starting on the other core, not after waiting for it.
                import models.vae  # noqa: F401
            return int(func(args, checked) or 0)
    finally:
        if "tasks.model_cache" in sys.modules:
            from tasks import model_cache

            model_cache.release_all()


def entry() -> None:
    """The `aevb` console script (and `python -m flows.cli`): `main`, then exit without the
    interpreter's teardown.

    Tearing down a process that imported TensorFlow, MLflow and Prefect (module finalisers,
    garbage collection of their objects) takes ~1.5 s of CPU after the work is done. So this does
    what Python's exit does first, in its order: join the non-daemon threads (running the hooks
    that stop thread pools), run every `atexit` handler, newest first (MLflow's and Prefect's
    flushes, a sitecustomize's or coverage's handler registered at start-up), flush the standard
    streams; then it ends the process with `main`'s exit code, skipping only the teardown. On an
    interpreter without those two CPython hooks, or when `main` raises, Python's normal exit runs.
    """
    code = main()
    join_threads = getattr(threading, "_shutdown", None)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if join_threads is None or run_exit_handlers is None:
        sys.exit(code)
    join_threads()
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
