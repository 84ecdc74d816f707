"""GPU-ready: nothing pins work to the CPU, so TensorFlow's default placement puts training,
evaluation and export on a GPU when it sees one (no flag). This machine has no GPU; the checks are
that no source hides a device, visibility or XLA flag, and that the compiled steps carry no device
of their own."""

from __future__ import annotations

import re
from pathlib import Path

import tensorflow as tf

from models.config import ModelConfig, TrainConfig
from models.training import Trainer
from models.vae import VAE

REPO = Path(__file__).resolve().parents[1]
# What would force the CPU (or hide a GPU): device scopes, visibility, XLA/TF flags, env vars.
FORCING = re.compile(
    r"CUDA_VISIBLE_DEVICES|tf\.device\(|set_visible_devices|set_logical_device_configuration|"
    r"XLA_FLAGS|TF_XLA_FLAGS|TF_FORCE_GPU|['\"]/[\w:/]*(?:CPU|cpu):\d",
)
# The one opt-in exception: splitting the host CPU into logical devices for MirroredStrategy
# replicas, which only a caller that asks for CPU replicas runs.
ALLOWED = {("models/distributed.py", "split_local_cpu")}


def _product_sources() -> list[Path]:
    files = [REPO / "Makefile", REPO / "pyproject.toml"]
    for package in ("models", "tasks", "flows"):
        files += sorted((REPO / package).rglob("*.py"))
    return files


def test_no_source_forces_the_cpu_or_hides_a_gpu() -> None:
    offences = []
    for path in _product_sources():
        rel = str(path.relative_to(REPO))
        function = ""
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if match := re.match(r"\s*def (\w+)", line):
                function = match.group(1)
            if FORCING.search(line) and (rel, function) not in ALLOWED:
                offences.append(f"{rel}:{n}: {line.strip()}")
    assert not offences, "device pinned or hidden:\n" + "\n".join(offences)


def test_the_compiled_train_and_evaluation_steps_carry_no_device() -> None:
    cfg = ModelConfig(feature_shape=(12,), latent_dim=2, hidden_sizes=(8,))
    trainer = Trainer(VAE(cfg, seed=0), TrainConfig(batch_size=4), 40)
    spec = tf.TensorSpec([4, 12])
    graphs = [
        trainer.update.get_concrete_function(spec).graph,
        trainer._evaluator._step.get_concrete_function(spec, tf.TensorSpec([2], tf.int32)).graph,
    ]
    pinned = [op.name for g in graphs for op in g.get_operations() if op.device]
    assert not pinned, f"ops with an explicit device: {pinned[:5]}"
