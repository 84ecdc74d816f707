"""Phase timer for bench/commands.py: loaded (as `sitecustomize`) only into the `aevb` process the
benchmark starts, which puts this folder on PYTHONPATH and names an output file in
AEVB_BENCH_PHASES. Nothing in the product imports it.

It attributes the process's wall time to phases without changing what runs: imports (by
package), Prefect's temporary server start, the MLflow adapter, data reading, the training loop
(epochs, validation, checkpoints) and saving, by wrapping the functions listed in HOOKS when their
module is imported. Phase totals are exclusive (a phase nested in another is taken out of the
outer one) and kept per thread; every wrapped call's inclusive duration is kept too. At exit it
writes both, and the time from the last hook to exit (the Prefect server stop), as JSON.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import threading
import time

OUT = os.environ.pop("AEVB_BENCH_PHASES", "")  # popped: child processes do not inherit it

# module -> (attribute path, phase); a missing attribute is reported, not fatal.
HOOKS = {
    "prefect.server.api.server": [("SubprocessASGIServer.start", "Prefect server start")],
    # the CLI's own temporary server: started in the background, waited for by the first client
    "flows.prefect_api": [("TemporaryServer.wait_ready", "Prefect server start (waited for)")],
    "tasks.tracking": [("*", "MLflow")],
    "tasks.store.streaming": [("make_tf_dataset", "data")],
    "tasks.store.readers": [("read_split", "data"), ("iter_batches", "data")],
    "models.training": [
        ("run_epochs", "training: loop"),
        ("train_epoch", "training: train_epoch"),
        ("Evaluator.__call__", "training: validation"),
    ],
    "tensorflow.python.checkpoint.checkpoint_management": [
        ("CheckpointManager.save", "training: checkpoint")
    ],
    "models.saved": [("save_model", "saving")],
    "tasks.run_records": [("log_training_plots", "saving")],
}
IMPORT_GROUPS = {
    "tensorflow": "TensorFlow + TFP", "tensorflow_probability": "TensorFlow + TFP",
    "keras": "TensorFlow + TFP", "tf_keras": "TensorFlow + TFP", "prefect": "Prefect",
    "mlflow": "MLflow", "pandas": "pandas", "pyarrow": "pyarrow",
}  # fmt: skip
OWN = ("flows", "tasks", "models", "bench")


def _seconds_since_process_start() -> float:
    """From /proc: how long this process ran before this module was imported (0 if unknown)."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


class Clock:
    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.calls: dict[str, list[float]] = {}  # "<phase>|<function>" -> inclusive seconds
        self.missing: list[str] = []
        self.local = threading.local()
        self.lock = threading.Lock()
        self.last = time.monotonic()

    def _stack(self) -> list:
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        return self.local.stack

    def _add(self, phase: str, seconds: float) -> None:
        with self.lock:
            self.totals[phase] = self.totals.get(phase, 0.0) + seconds

    def enter(self, phase: str) -> None:
        now, stack = time.monotonic(), self._stack()
        if stack:
            outer, since = stack[-1]
            self._add(outer, now - since)
        stack.append([phase, now])

    def leave(self) -> None:
        now, stack = time.monotonic(), self._stack()
        phase, since = stack.pop()
        self._add(phase, now - since)
        if stack:
            stack[-1][1] = now
        self.last = now

    def wrap(self, fn, phase: str):
        key = f"{phase}|{getattr(fn, '__qualname__', fn)}"

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.monotonic()
            self.enter(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()
                with self.lock:
                    self.calls.setdefault(key, []).append(time.monotonic() - start)

        return timed


CLOCK = Clock()


def _hook(module) -> None:
    for path, phase in HOOKS.get(module.__name__, ()):
        if path == "*":
            for name, value in list(vars(module).items()):
                if callable(value) and not name.startswith("_") and getattr(value, "__module__", "") == module.__name__ and not isinstance(value, type):  # fmt: skip
                    setattr(module, name, CLOCK.wrap(value, phase))
            continue
        owner, *rest = path.split(".")
        target = module
        try:
            for part in [owner, *rest][:-1]:
                target = getattr(target, part)
            name = path.split(".")[-1]
            setattr(target, name, CLOCK.wrap(getattr(target, name), phase))
        except AttributeError:
            CLOCK.missing.append(f"{module.__name__}.{path}")


def _install() -> None:
    import _frozen_importlib as bootstrap

    find_and_load = bootstrap._find_and_load

    def timed_find_and_load(name, import_):
        """An import is charged to its package's group, with everything it imports in turn (a
        package's dependencies count as its own); only the project's modules hand nested
        imports on to the package they import."""
        root = name.partition(".")[0]
        group = "import " + IMPORT_GROUPS.get(root, "aevb modules" if root in OWN else "other")
        stack = CLOCK._stack()
        top = stack[-1][0] if stack else ""
        enter = not top.startswith("import ") or (top == "import aevb modules" and group != top)
        if enter:
            CLOCK.enter(group)
        try:
            module = find_and_load(name, import_)
        finally:
            if enter:
                CLOCK.leave()
        if name in HOOKS and module is not None:
            _hook(module)
        return module

    bootstrap._find_and_load = timed_find_and_load
    start = time.monotonic()
    before_hooks = _seconds_since_process_start()

    def dump() -> None:
        end = time.monotonic()
        doc = {
            "phases": CLOCK.totals,
            "calls": CLOCK.calls,
            "after_last_phase": end - CLOCK.last,
            "sitecustomize_to_exit": end - start,
            "process_start_to_sitecustomize": before_hooks,
            "missing_hooks": CLOCK.missing,
        }
        with open(OUT, "w") as fh:
            json.dump(doc, fh)

    atexit.register(dump)


if OUT:
    _install()
