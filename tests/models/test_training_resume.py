"""A training process killed with SIGKILL mid-epoch resumes from its last checkpoint.

Three subprocesses (each imports TensorFlow, hence `slow`): an uninterrupted run, a run killed in
the middle of epoch 3, and the same command started again, which must resume at epoch 2, finish
with the epoch count intact and end with weights bit-identical to the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "_resume_worker.py")
EPOCHS = 4


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> None:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def load(prefix: str) -> tuple[list[np.ndarray], dict]:
    with np.load(prefix + ".npz", allow_pickle=False) as data:
        arrays = [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]
    with open(prefix + ".json") as fh:
        return arrays, json.load(fh)


@pytest.mark.slow
def test_sigkilled_run_resumes_and_matches_an_uninterrupted_run(tmp_path):
    ref_ckpt, ckpt, marker = tmp_path / "ref", tmp_path / "ckpt", tmp_path / "hung"
    reference = start(str(ref_ckpt), str(tmp_path / "ref"), str(EPOCHS))
    victim = start(str(ckpt), str(tmp_path / "victim"), str(EPOCHS), "3", "4", str(marker))
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the worker never reached epoch 3"
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "victim.npz").exists()
    with open(ckpt / "checkpoint") as fh:
        assert (
            'model_checkpoint_path: "ckpt-2"' in fh.read()
        )  # epochs 1-2 saved, nothing of epoch 3

    resumed = start(str(ckpt), str(tmp_path / "resumed"), str(EPOCHS))
    finish(resumed)
    finish(reference)
    ref_weights, ref_result = load(str(tmp_path / "ref"))
    weights, result = load(str(tmp_path / "resumed"))
    assert result["resumed_from_epoch"] == 2 and ref_result["resumed_from_epoch"] == 0
    assert result["epochs_completed"] == EPOCHS
    assert [h["epoch"] for h in result["history"]] == [1.0, 2.0, 3.0, 4.0]
    timing = "examples_per_second"
    assert [{k: v for k, v in h.items() if k != timing} for h in result["history"]] == [
        {k: v for k, v in h.items() if k != timing} for h in ref_result["history"]
    ]
    assert (result["best_epoch"], result["best_valid_elbo"]) == (
        ref_result["best_epoch"],
        ref_result["best_valid_elbo"],
    )
    assert len(weights) == len(ref_weights) == 8
    for a, b in zip(weights, ref_weights, strict=True):
        np.testing.assert_array_equal(a, b)
