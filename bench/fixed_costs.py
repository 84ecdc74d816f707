"""Fixed costs of the commands users run most (numbers, not a test): `aevb --help`, the light
verbs, and a no-op `aevb pipeline digits` (second run, unchanged data and config).

Setup, once: a temporary AEVB_HOME and PREFECT_HOME (no shared Prefect database, so no other
user's retrain lock) and one real `aevb pipeline digits` with small settings. Then each command
--repeat times, each a fresh process. Per command: median and min-max wall seconds, CPU seconds
of the whole process tree (the command, its Prefect server; RUSAGE_CHILDREN) and, for the no-op
pipeline, whether TensorFlow was imported (its import prints the `aevb: TensorFlow ...` line) and
when its first flow log line came (imports and the Prefect server start overlap before it). The
load average is printed before and after: on a shared machine read the CPU seconds first.

    .venv/bin/python bench/fixed_costs.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)
SMALL = [
    "train.epochs=1",
    "model.hidden_sizes=[64]",
    "model.latent_dim=4",
    "evaluate.num_samples=64",
]
FIRST_FLOW_LINE = re.compile(r"\| INFO .*\[1/5\] ingest")


def run(cmd: list[str], env: dict[str, str]) -> dict:
    start, before = time.perf_counter(), os.times()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first_flow, lines = None, []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if first_flow is None and FIRST_FLOW_LINE.search(line):
            first_flow = time.perf_counter() - start
    proc.wait()
    wall, after = time.perf_counter() - start, os.times()
    cpu = (
        after.children_user - before.children_user + after.children_system - before.children_system
    )
    text = "".join(lines)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return {"wall": wall, "cpu": cpu, "first_flow": first_flow, "tf": "aevb: TensorFlow" in text,
            "skipped": "SKIPPED" in text}  # fmt: skip


def report(label: str, runs: list[dict], target: str = "") -> None:
    walls, cpus = [r["wall"] for r in runs], [r["cpu"] for r in runs]
    extra = ""
    if runs[0]["first_flow"] is not None:
        extra = f"; first flow line at {statistics.median(r['first_flow'] for r in runs):.1f} s"
    if "pipeline" in label:
        extra += f"; TensorFlow imported: {any(r['tf'] for r in runs)}; skipped: {all(r['skipped'] for r in runs)}"
    print(f"  {label:<28} wall {statistics.median(walls):6.2f} s (min {min(walls):.2f}, max "
          f"{max(walls):.2f}); CPU {statistics.median(cpus):6.2f} s{extra}{target}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    aevb = os.path.join(BIN, "aevb")
    print(f"cpus={os.cpu_count()} load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="aevb-bench-fixed-") as tmp:
        keep = ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",)  # raise it on a busy machine
        env = {
            k: v
            for k, v in os.environ.items()
            if k in keep or not k.startswith(("AEVB_", "PREFECT_"))
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(AEVB_HOME=os.path.join(tmp, "home"), PREFECT_HOME=os.path.join(tmp, "prefect"))
        pipeline = [aevb, "pipeline", "digits", *SMALL]
        setup = run(pipeline, env)
        print(
            f"setup: first `aevb pipeline digits` {setup['wall']:.1f} s wall, {setup['cpu']:.1f} s CPU"
        )
        commands = [
            ("aevb --help", [aevb, "--help"], " (target < 1 s idle)"),
            ("aevb datasets list", [aevb, "datasets", "list"], ""),
            ("aevb models list", [aevb, "models", "list"], ""),
            ("aevb config show", [aevb, "config", "show"], ""),
            ("aevb pipeline digits (no-op)", pipeline, " (target < 15 s idle, no TensorFlow)"),
        ]
        results: dict[str, list[dict]] = {label: [] for label, _, _ in commands}
        for _ in range(args.repeat):  # interleaved: load changes hit every command alike
            for label, cmd, _ in commands:
                results[label].append(run(cmd, env))
        print(f"{args.repeat} runs each, fresh processes:")
        for label, _, target in commands:
            report(label, results[label], target)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
