"""Data-parallel training (models/distributed.py): TF_CONFIG parsing, the all-reduced update, and
two real worker processes on 127.0.0.1 against the single-process trainer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.distributed import ClusterInfo, cluster_info, make_strategy, worker_checkpoint_dir
from models.errors import ConfigError

WORKER = Path(__file__).with_name("distributed_worker.py")
REPO = WORKER.parent.parent.parent


def _tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def test_cluster_info_reads_tf_config():
    assert cluster_info({}) == ClusterInfo(1, "worker", 0)
    info = cluster_info({"TF_CONFIG": _tf_config([1111, 2222, 3333], 2)})
    assert info == ClusterInfo(3, "worker", 2) and not info.is_chief
    assert cluster_info({"TF_CONFIG": _tf_config([1111, 2222], 0)}).is_chief


@pytest.mark.parametrize(
    "raw, match",
    [
        ("{not json", "TF_CONFIG=.*not valid"),
        ('{"cluster": {"worker": ["a:1"]}}', "TF_CONFIG=.*not valid"),
        ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "found 0 worker"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "task.type='ps'"),
    ],
)
def test_bad_tf_config_is_a_config_error(raw, match):
    with pytest.raises(ConfigError, match=match):
        cluster_info({"TF_CONFIG": raw})


def test_unknown_strategy_is_a_config_error():
    with pytest.raises(ConfigError, match="strategy='ring'.*multi_worker"):
        make_strategy("ring")


def test_worker_checkpoint_dirs_do_not_collide():
    chief, other = ClusterInfo(2, "worker", 0), ClusterInfo(2, "worker", 1)
    assert worker_checkpoint_dir("/ck", chief) == "/ck"
    assert worker_checkpoint_dir("/ck", other) == os.path.join("/ck", "worker-1")


def test_default_strategy_step_sums_the_bound_with_the_replica_seed():
    """One update under the default strategy: the metric sums equal the bound computed by hand
    with seed fold_in([seed, 0], replica 0) on the weights before the step, and weights move."""
    import tensorflow as tf

    from models.config import ModelConfig, TrainConfig
    from models.distributed import DistributedTrainer
    from models.objectives import elbo
    from models.vae import VAE

    x = (np.random.default_rng(0).uniform(size=(8, 6)) < 0.5).astype("float32")
    model = VAE(ModelConfig(feature_shape=(6,), latent_dim=2, hidden_sizes=(8,)), seed=1)
    trainer = DistributedTrainer(
        model, TrainConfig(seed=4, jit_compile=False), 8, tf.distribute.get_strategy()
    )
    seed = tf.random.experimental.stateless_fold_in(tf.constant([4, 0], tf.int32), 0)
    expected = elbo(model, tf.constant(x), seed, "B", 1)
    before = [v.numpy().copy() for v in model.trainable_variables]
    trainer.sums.reset()
    assert bool(trainer.update(tf.constant(x)))
    sums = trainer.sums.total.numpy()
    np.testing.assert_allclose(sums[0], expected.elbo.numpy().sum(), rtol=1e-5)
    np.testing.assert_allclose(sums[1], expected.kl.numpy().sum(), rtol=1e-5)
    assert sums[3] == 8 and int(trainer.state.step.numpy()) == 1
    assert any(
        not np.allclose(b, v.numpy())
        for b, v in zip(before, model.trainable_variables, strict=True)
    )


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(out: Path, mode: str, tf_config: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), "--mode", mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> None:
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            assert p.returncode == 0, out[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _load(out: Path) -> tuple[list[np.ndarray], list[float]]:
    with np.load(out / "weights.npz") as w:
        weights = [w[k] for k in sorted(w.files, key=lambda k: int(k.split("_")[1]))]
    history = json.loads((out / "history.json").read_text())
    return weights, [h["train_elbo"] for h in history]


@pytest.mark.slow
def test_two_workers_agree_and_match_the_single_process_run(tmp_path):
    ports = _free_ports(2)
    workers = [_start(tmp_path / f"w{i}", "multi_worker", _tf_config(ports, i)) for i in range(2)]
    _finish(workers)
    _finish([_start(tmp_path / "single", "single"), _start(tmp_path / "mirrored", "mirrored")])

    (w0, loss0), (w1, loss1) = _load(tmp_path / "w0"), _load(tmp_path / "w1")
    single_w, single_loss = _load(tmp_path / "single")
    mirrored_w, mirrored_loss = _load(tmp_path / "mirrored")
    # Same all-reduced update on the same initial weights: the workers' copies are identical.
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)
    assert loss0 == loss1
    # Two local replicas with the same global batch and replica seeds take the same steps.
    for a, b in zip(w0, mirrored_w, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mirrored_loss, loss0, rtol=0, atol=1e-4)
    # Against the plain trainer only the noise draws differ: the bound per epoch is close, and much
    # closer than the distance training travelled.
    assert len(loss0) == len(single_loss) == 3
    assert single_loss[-1] - single_loss[0] > 0.15 and loss0[-1] - loss0[0] > 0.15
    np.testing.assert_allclose(loss0, single_loss, rtol=0, atol=0.05)
    assert (
        max(float(np.abs(a - b).max()) for a, b in zip(w0, single_w, strict=True)) > 0
    )  # really two runs


def test_train_strategy_is_validated():
    from models.config import TrainConfig

    assert TrainConfig().strategy == "default"
    assert TrainConfig(strategy="multi_worker").strategy == "multi_worker"
    with pytest.raises(ConfigError, match=r"train.strategy='ring' is not allowed.*'multi_worker'"):
        TrainConfig(strategy="ring")
    with pytest.raises(ConfigError, match=r"train.strategy='mirrored' trains train.theta='map'"):
        TrainConfig(strategy="mirrored", theta="full_vb")


def test_multi_worker_without_tf_config_says_how_to_set_it(monkeypatch):
    from models.distributed import strategy_for

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=r"train.strategy='multi_worker' needs the TF_CONFIG"):
        strategy_for("multi_worker")


def test_run_keys_of_default_strategy_runs_are_unchanged():
    """The new setting at its default leaves existing checkpoint folders (run keys) valid."""
    import dataclasses
    import hashlib

    from models.config import ModelConfig, TrainConfig, to_dict
    from tasks.train import run_key

    model, train = ModelConfig(), TrainConfig()
    old = {k: v for k, v in to_dict(train).items() if k != "strategy"}
    blob = json.dumps(
        {"model": to_dict(model), "train": old, "dataset": "d", "version": "v"}, sort_keys=True
    )
    assert run_key(model, train, "d", "v") == hashlib.sha256(blob.encode()).hexdigest()[:16]
    other = dataclasses.replace(train, strategy="multi_worker")
    assert run_key(model, other, "d", "v") != run_key(model, train, "d", "v")


def test_handshake_agrees_with_itself_and_carries_the_chief_value():
    """One process (default strategy, one replica): the token agrees and the chief's value
    comes back. Disagreement needs two workers: the loopback CLI test covers it."""
    import tensorflow as tf

    from models.distributed import handshake

    strategy = tf.distribute.get_strategy()
    assert handshake(strategy, "run-key|epoch=3", 1.0) == (True, 1.0)
    assert handshake(strategy, "run-key|epoch=3", 0.0) == (True, 0.0)
