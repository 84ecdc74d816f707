"""What users actually run: `aevb train` (the CLI, in a subprocess) against a Keras `fit` baseline
of the same model on the same rows, interleaved A B A B (numbers, not a test).

Both train 784-500-20-500-784 tanh with a Bernoulli decoder, batch 100, Adam 1e-3, for --epochs
epochs with a validation pass each epoch (bench/keras_fit.py is the baseline). Setup, once: a
temporary data root, MLflow store and Prefect home, and `aevb ingest` of the source
(Fashion-MNIST from Debian's IDX files, or --source mnist-5k|digits). Then --warmup short
pairs (not reported) and --pairs measured pairs, each command a fresh process.

For every run the benchmark timestamps each output line as it arrives and, at every epoch-end
line, reads the CPU time of the whole process tree (the command, its Prefect server, every
child; psutil). Reported per command: the steady rate (examples/s over the epochs after the
first, which compiles), CPU microseconds per example over those epochs and over the whole run
(RUSAGE_CHILDREN), the wall time and the load average; per pair the Keras/aevb ratios, and
their medians against the target (the real loop >= 1.3x Keras fit by CPU per example and by the
median per-pair wall ratio). The machine may be shared: read the CPU figures first.

Phase breakdown: `aevb train` runs with bench/phases/ on PYTHONPATH, whose sitecustomize times
the outermost imports by package, Prefect's temporary server start, the MLflow adapter, data
reading, the training loop and saving, by wrapping those functions (the product holds no
instrumentation); first-epoch vs steady epochs come from the epoch lines. Keras times its own
phases.

    .venv/bin/python bench/commands.py [--source fashion-mnist --path DIR] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import psutil

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)

from bench.machine import describe_machine, load  # noqa: E402

BIN = os.path.dirname(sys.executable)
AEVB_EPOCH = re.compile(r"epoch (\d+)/\d+ ")
KERAS_EPOCH = re.compile(r"^aevb-bench epoch (\d+)")
MODEL_ARGS = ["model.activation=tanh", "model.hidden_sizes=[500]", "model.latent_dim=20"]
TRAIN_ARGS = ["train.batch_size=100", "train.optimizer=adam", "train.learning_rate=0.001"]


@dataclass
class Run:
    command: str
    rows: int
    wall: float = 0.0
    cpu: float = 0.0  # whole process tree, RUSAGE_CHILDREN
    epochs: list[tuple[float, float]] = field(
        default_factory=list
    )  # (seconds since start, tree CPU)
    phases: dict[str, float] = field(default_factory=dict)
    loop: dict[str, float] = field(default_factory=dict)  # aevb: seconds per steady epoch, by part
    load: tuple[str, str] = ("", "")
    tail: list[str] = field(default_factory=list)

    @property
    def intervals(self) -> list[tuple[float, float]]:
        """(wall, CPU) of each epoch after the first: the steady loop."""
        e = self.epochs
        return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(e[:-1], e[1:], strict=True)]

    @property
    def steady_rate(self) -> float:
        return statistics.median(self.rows / w for w, _ in self.intervals)

    @property
    def steady_cpu_us(self) -> float:
        (_, c0), (_, c1) = self.epochs[0], self.epochs[-1]
        return (c1 - c0) / (self.rows * (len(self.epochs) - 1)) * 1e6

    @property
    def total_cpu_us(self) -> float:
        return self.cpu / (self.rows * len(self.epochs)) * 1e6


def tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds of ``proc`` and every descendant (live ones, and reaped children of each)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def run(command: str, argv: list[str], env: dict, rows: int, epoch_re: re.Pattern) -> Run:
    result = Run(command, rows, load=(load(), ""))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    ps = psutil.Process(proc.pid)
    for line in proc.stdout:
        result.tail = (result.tail + [line.rstrip()])[-40:]
        match = epoch_re.search(line)
        if match:
            result.epochs.append((time.monotonic() - start, tree_cpu(ps)))
    proc.wait()
    result.wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.load = (result.load[0], load())
    if proc.returncode != 0 or len(result.epochs) < 2:
        raise RuntimeError(f"{command} failed (exit {proc.returncode}):\n" + "\n".join(result.tail))
    return result


class Bench:
    def __init__(self, work: str, source: str, path: str | None, epochs: int):
        self.work, self.epochs = work, epochs
        self.root = os.path.join(work, "data")
        self.env = {
            **os.environ,
            "AEVB_DATA_ROOT": self.root,
            "AEVB_MLFLOW_DIR": os.path.join(work, "mlflow"),
            "PREFECT_HOME": os.path.join(work, "prefect"),
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.env.pop("PREFECT_API_URL", None)
        argv = [os.path.join(BIN, "aevb"), "ingest", source, "--name", "bench"]
        if path:
            argv += ["--path", path]
        t = time.monotonic()
        subprocess.run(argv, env=self.env, check=True, capture_output=True, text=True)
        print(f"setup: `aevb ingest {source}` took {time.monotonic() - t:.0f} s wall")
        from tasks.store.datasets import load_manifest

        self.rows = load_manifest(self.root, "bench").rows["train"]

    def aevb(self, epochs: int, i: int) -> Run:
        out = os.path.join(self.work, f"phases-{i}.json")
        env = {
            **self.env,
            "PYTHONPATH": os.pathsep.join([os.path.join(BENCH, "phases"), REPO]),
            "AEVB_BENCH_PHASES": out,
        }
        argv = [os.path.join(BIN, "aevb"), "train", "--dataset", "bench", "--force"]
        argv += [*MODEL_ARGS, *TRAIN_ARGS, f"train.epochs={epochs}", "train.patience=0"]
        r = run("aevb train", argv, env, self.rows, AEVB_EPOCH)
        with open(out) as fh:
            doc = json.load(fh)
        r.phases = aevb_phases(doc, r)
        return r

    def keras(self, epochs: int, i: int) -> Run:
        out = os.path.join(self.work, f"keras-{i}.json")
        script = os.path.join(BENCH, "keras_fit.py")
        argv = [sys.executable, script, self.root, "bench", str(epochs), out]
        r = run("keras fit", argv, self.env, self.rows, KERAS_EPOCH)
        with open(out) as fh:
            phases = json.load(fh)["phases"]
        r.phases = split_training(phases, r)
        return r


def split_training(phases: dict[str, float], r: Run) -> dict[str, float]:
    """Replace "training" by its first epoch (compile included) and the steady epochs."""
    phases = dict(phases)
    training = phases.pop("training", 0.0)
    steady = r.epochs[-1][0] - r.epochs[0][0]
    phases["training: epoch 1 (incl. compile)"] = max(training - steady, 0.0)
    phases["training: steady epochs"] = steady
    return phases


def steady_epoch(doc: dict) -> dict[str, float]:
    """Median seconds per epoch after the first of the loop's parts (from the calls' durations)."""
    calls, out = doc["calls"], {}
    for key, durations in sorted(calls.items()):
        phase, _, function = key.partition("|")
        if phase.startswith("training: ") and phase != "training: loop" and len(durations) > 1:
            out[phase.removeprefix("training: ")] = statistics.median(durations[1:])
            if phase == "training: train_epoch":
                out["train_epoch of epoch 1 (XLA compile)"] = durations[0]
        elif phase == "MLflow" and function == "log_metrics" and len(durations) > 1:
            out["MLflow log_metrics"] = statistics.median(durations[1:])
    return out


def aevb_phases(doc: dict, r: Run) -> dict[str, float]:
    r.loop = steady_epoch(doc)
    phases = dict(doc["phases"])
    phases["exit: Prefect server stop, atexit handlers"] = doc["after_last_phase"]
    phases["interpreter start-up (before any import)"] = doc["process_start_to_sitecustomize"]
    rest = r.wall - doc["sitecustomize_to_exit"] - doc["process_start_to_sitecustomize"]
    phases["interpreter teardown (after atexit)"] = max(rest, 0.0)
    phases["other (CLI, config, Prefect flow/task engine)"] = r.wall - sum(phases.values())
    if doc["missing_hooks"]:
        print(f"  note: hooks not found (renamed?): {doc['missing_hooks']}")
    return phases


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def report(runs: dict[str, list[Run]]) -> None:
    print("\nper command (median (min-max) over runs):")
    head = (
        f"  {'command':<11}{'steady ex/s':>24}{'steady CPU us/ex':>22}{'whole-run CPU us/ex':>24}"
    )
    print(f"{head}{'wall s':>18}  load average at start -> end of each run")
    for name, rs in runs.items():
        print(
            f"  {name:<11}{spread([r.steady_rate for r in rs]):>24}"
            f"{spread([r.steady_cpu_us for r in rs], '{:.1f}'):>22}"
            f"{spread([r.total_cpu_us for r in rs], '{:.1f}'):>24}"
            f"{spread([r.wall for r in rs], '{:.0f}'):>18}  "
            + ", ".join(f"{a} -> {b}" for a, b in (r.load for r in rs))
        )
    pairs = list(zip(runs["aevb train"], runs["keras fit"], strict=True))
    cpu = [k.steady_cpu_us / a.steady_cpu_us for a, k in pairs]
    wall = [a.steady_rate / k.steady_rate for a, k in pairs]
    whole = [k.total_cpu_us / a.total_cpu_us for a, k in pairs]
    print("per pair, Keras fit / aevb train (> 1: aevb is cheaper or faster):")
    print(f"  steady CPU per example: {', '.join(f'{v:.2f}' for v in cpu)}; median {statistics.median(cpu):.2f} (target >= 1.3)")  # fmt: skip
    print(f"  steady wall rate (aevb/keras): {', '.join(f'{v:.2f}' for v in wall)}; median {statistics.median(wall):.2f} (target >= 1.3)")  # fmt: skip
    print(f"  whole-run CPU per example (fixed costs included): {', '.join(f'{v:.2f}' for v in whole)}")  # fmt: skip
    for name, rs in runs.items():
        print(f"\nphases of `{name}` (median seconds over runs, share of the median wall):")
        wall_med = statistics.median(r.wall for r in rs)
        for phase in rs[0].phases:
            sec = statistics.median(r.phases.get(phase, 0.0) for r in rs)
            print(f"  {phase:<48}{sec:>8.1f} s {sec / wall_med:>6.0%}")
        print(f"  {'total wall':<48}{wall_med:>8.1f} s")
        if rs[0].loop:
            epoch = statistics.median(w for r in rs for w, _ in r.intervals)
            print(f"  a steady epoch of `{name}` ({epoch:.1f} s between epoch lines, median):")
            for part in rs[0].loop:
                sec = statistics.median(r.loop.get(part, 0.0) for r in rs)
                print(f"    {part:<46}{sec:>8.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="fashion-mnist", choices=("fashion-mnist", "mnist-5k", "digits"))  # fmt: skip
    ap.add_argument("--path", help="folder of the Fashion-MNIST IDX files (default: Debian's)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="unreported pairs of 2 epochs first")
    args = ap.parse_args()
    print(describe_machine())
    with tempfile.TemporaryDirectory(prefix="aevb-bench-commands-") as work:
        bench = Bench(work, args.source, args.path, args.epochs)
        print(f"{bench.rows:,} training rows, {args.epochs} epochs, batch 100; A B A B ...")
        for i in range(args.warmup):
            bench.aevb(2, -1 - i), bench.keras(2, -1 - i)
        runs: dict[str, list[Run]] = {"aevb train": [], "keras fit": []}
        for i in range(args.pairs):
            for name, fn in (("aevb train", bench.aevb), ("keras fit", bench.keras)):
                r = fn(args.epochs, i)
                runs[name].append(r)
                print(
                    f"  pair {i + 1} {name:<10}: {r.wall:6.0f} s wall, steady {r.steady_rate:,.0f} "
                    f"ex/s, {r.steady_cpu_us:.1f} CPU us/ex; load {r.load[0]} -> {r.load[1]}",
                    flush=True,
                )
        report(runs)


if __name__ == "__main__":
    main()
