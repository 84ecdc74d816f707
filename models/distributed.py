"""Data-parallel AEVB training with `tf.distribute` (several local devices, or several machines).

With R replicas each holding a shard x^(r) of a global minibatch of M points, replica r computes the
gradient of its summed negative bound; the strategy all-reduces (sums) these over every replica of
every worker and the sum is divided by M:

    g = 1/M sum_r sum_{i in shard r} grad_theta,phi [ -L~(theta, phi; x_i) ]

which is the single-process minibatch gradient of `models.training` (same estimator, same M). Every
worker then applies that same g with its own copy of the optimiser to its own copy of the weights,
starting from the same seeded initialisation, so the copies stay identical without broadcasting
weights. Each replica draws its noise from the stateless seed [train.seed, step] folded with its
replica id, so shards get independent noise and a rerun takes the same steps.

Strategies (`make_strategy`):
- ``multi_worker``: `MultiWorkerMirroredStrategy` from the `TF_CONFIG` environment variable
  (``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}``),
  ring all-reduce over gRPC. Create it before any other TF op of the process.
- ``mirrored``: `MirroredStrategy` over several local devices (GPUs, or logical CPUs).
- ``default``: no distribution (the plain trainer's behaviour).
- ``auto``: ``multi_worker`` when `TF_CONFIG` names more than one worker, ``mirrored`` when more
  than one GPU is visible, else ``default``.

Only the chief (worker 0) should track metrics and save the model; every worker must run the same
number of steps, so all of them iterate the same data pipeline (sharded by the strategy).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import tensorflow as tf

from models.config import TrainConfig
from models.errors import ConfigError
from models.objectives import elbo
from models.precision import compute_dtype
from models.training import EpochCallback, Trainer, TrainResult, run_epochs

StrategyKind = Literal["auto", "default", "mirrored", "multi_worker"]
STRATEGY_KINDS: tuple[str, ...] = ("auto", "default", "mirrored", "multi_worker")


@dataclass(frozen=True)
class ClusterInfo:
    """This process's place in the cluster described by `TF_CONFIG` (one worker when unset)."""

    num_workers: int
    task_type: str
    task_index: int

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0)


def cluster_info(env: Mapping[str, str] | None = None) -> ClusterInfo:
    """Parse `TF_CONFIG`; raise ConfigError naming the variable when it is malformed."""
    raw = (os.environ if env is None else env).get("TF_CONFIG", "").strip()
    if not raw:
        return ClusterInfo(1, "worker", 0)
    try:
        doc = json.loads(raw)
        cluster = doc.get("cluster", {})
        workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        task = doc.get("task", {})
        task_type, task_index = str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"TF_CONFIG={raw[:200]!r} is not valid: expected JSON like "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}'
        ) from exc
    if workers < 1 or task_type not in ("worker", "chief"):
        raise ConfigError(
            f"TF_CONFIG: need cluster.worker addresses and task.type 'worker' or 'chief'; "
            f"found {workers} worker(s) and task.type={task_type!r}"
        )
    return ClusterInfo(workers, task_type, task_index)


def make_strategy(kind: str = "auto", devices: list[str] | None = None) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy for ``kind`` (see the module docstring)."""
    if kind not in STRATEGY_KINDS:
        raise ConfigError(f"strategy={kind!r} is not allowed; choose one of {STRATEGY_KINDS}")
    if kind == "auto":
        if cluster_info().num_workers > 1:
            kind = "multi_worker"
        elif devices or len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "multi_worker":
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if kind == "mirrored":
        # CPU-only replicas need an all-reduce that does not require NCCL.
        return tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    return tf.distribute.get_strategy()


@functools.cache
def strategy_for(kind: str) -> tf.distribute.Strategy:
    """The strategy of ``train.strategy = kind``, one per process (TF allows a single
    MultiWorkerMirroredStrategy per process, created before any other TF op).

    ``multi_worker`` needs `TF_CONFIG` naming at least two workers; creating it waits until every
    worker of the cluster has started. ConfigError (one line, naming the setting) otherwise.
    """
    if kind == "multi_worker" and cluster_info().num_workers < 2:
        raise ConfigError(
            "train.strategy='multi_worker' needs the TF_CONFIG environment variable naming the "
            'cluster, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\' (index 1 on the second machine); '
            "or set train.strategy='default'"
        )
    try:
        return make_strategy(kind)
    except RuntimeError as exc:  # "Collective ops must be configured at program startup"
        raise ConfigError(
            f"train.strategy={kind!r} must be the first TensorFlow work of its process "
            f"({exc}); start it in a new process (`aevb train`, `aevb pipeline`)"
        ) from exc


def _token_digits(token: str) -> list[float]:
    """64 bits of sha256(token) as 16 values in 0..15 (exact in float32 sums and squares)."""
    raw = hashlib.sha256(token.encode()).digest()[:8]
    return [float(n) for b in raw for n in (b >> 4, b & 15)]


def handshake(strategy: tf.distribute.Strategy, token: str, chief_value: float = 0.0):
    """One all-reduce over every replica of every worker: (do all replicas hold the same
    ``token``?, the chief's ``chief_value``). Every worker gets the same answer, so all of them
    take the same decision (train or not, stop with an error) instead of waiting for each other.
    """
    info = cluster_info()
    local = tf.constant(
        [*_token_digits(token), chief_value if info.is_chief else 0.0], dtype=tf.float32
    )

    @tf.function(autograph=False)
    def reduce():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            first = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), tf.float32)
            flag = tf.concat([local[:-1], local[-1:] * first], 0)  # the chief's value counted once
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, [flag, flag * flag])

        return strategy.run(replica_fn)

    sums, squares = (strategy.experimental_local_results(t)[0].numpy() for t in reduce())
    replicas = float(strategy.num_replicas_in_sync)
    same = bool(((sums[:-1] ** 2) == replicas * squares[:-1]).all())  # zero variance: all equal
    return same, float(sums[-1])


def split_local_cpu(num_devices: int) -> list[str]:
    """Split the host CPU into ``num_devices`` logical devices (before any TF op) for MirroredStrategy."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
    )
    return [d.name for d in tf.config.list_logical_devices("CPU")]


class DistributedTrainer(Trainer):
    """`models.training.Trainer` whose update all-reduces the gradients over the strategy's replicas.

    The model and optimiser variables are ordinary per-process variables (create the model outside
    ``strategy.scope()``); only the gradients and the metric sums cross replicas and workers.
    """

    def __init__(
        self, model, config: TrainConfig, num_train: int, strategy: tf.distribute.Strategy
    ):
        self.strategy = strategy
        super().__init__(model, config, num_train)
        # Collective ops cannot live inside an XLA cluster: compile only the per-replica gradient.
        self._replica_grads = tf.function(
            self._replica_grads_impl, jit_compile=config.jit_compile, autograph=False
        )
        self.update = tf.function(self._update, autograph=False)

    def _replica_grads_impl(self, x: tf.Tensor, seed: tf.Tensor):
        cfg = self.config
        with tf.GradientTape() as tape, compute_dtype(cfg.precision):
            bound = elbo(self.model, x, seed, cfg.estimator, cfg.num_samples)
            loss_sum = -tf.reduce_sum(bound.elbo)
        grads = tape.gradient(loss_sum, self.variables)
        parts = (bound.elbo, bound.kl, bound.reconstruction)
        m = tf.cast(tf.shape(x)[0], tf.float32)
        return grads, tf.stack([*(tf.reduce_sum(p) for p in parts), m])

    def _update(self, x) -> tf.Tensor:
        """One synchronous SGVB update on a distributed global batch; False (no update) on NaN/Inf."""
        base_seed = tf.stack([self._seed, tf.cast(self.state.step, tf.int32)])

        def replica_fn(x_local: tf.Tensor):
            ctx = tf.distribute.get_replica_context()
            seed = tf.random.experimental.stateless_fold_in(base_seed, ctx.replica_id_in_sync_group)
            grads, sums = self._replica_grads(x_local, seed)
            # One batched all-reduce (sum) over every replica of every worker.
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, [*grads, sums])

        reduced = self.strategy.run(replica_fn, args=(x,))
        # After the all-reduce every replica holds the same values: take this process's first copy.
        reduced = [self.strategy.experimental_local_results(t)[0] for t in reduced]
        grads, sums = reduced[:-1], reduced[-1]
        m = tf.maximum(sums[3], 1.0)
        grads = [g / m for g in grads]

        def count() -> None:
            self.state.step.assign_add(1)
            self.sums.add(sums[3], sums[0], sums[1], sums[2])

        # sums[0] is the summed bound: NaN/Inf there or in a gradient skips the update.
        return self.optimizer.apply_if_finite(grads, self.variables, sums[0], then=count)


def worker_checkpoint_dir(checkpoint_dir: str, info: ClusterInfo) -> str:
    """The chief checkpoints into ``checkpoint_dir``; other workers into a sub-folder of their own."""
    if info.is_chief:
        return checkpoint_dir
    return os.path.join(checkpoint_dir, f"{info.task_type}-{info.task_index}")


def fit_distributed(
    model,
    make_train_data: Callable[[int], tf.data.Dataset],
    valid_data: tf.data.Dataset | None,
    num_train: int,
    config: TrainConfig,
    strategy: tf.distribute.Strategy,
    checkpoint_dir: str | None = None,
    on_epoch_end: EpochCallback | None = None,
    max_steps_per_epoch: int | None = None,
    agreement: str | None = None,
) -> TrainResult:
    """`models.training.fit` with data-parallel updates; returns with the best weights assigned.

    make_train_data(epoch) returns the epoch's *global* batches ([M, D] float32, same order on every
    worker); the strategy splits each batch across replicas. Validation runs on every worker with
    identical weights, so every worker takes the same early-stopping decision. Checkpoints: see
    `worker_checkpoint_dir`; all workers must resume from the same epoch. ``agreement``: a token
    of what is trained (config, dataset version); at the start of every epoch the workers check
    that they hold the same token and epoch, and all stop with a ConfigError when they do not.
    """
    trainer = DistributedTrainer(model, config, num_train, strategy)
    own_dir = worker_checkpoint_dir(checkpoint_dir, cluster_info()) if checkpoint_dir else None

    def epoch_data(epoch: int):
        if agreement is not None and not handshake(strategy, f"{agreement}|epoch={epoch}")[0]:
            raise ConfigError(
                f"train.strategy: the workers disagree at epoch {epoch} (config, dataset version "
                "or resumed checkpoint): start every worker with the same --config, overrides and "
                "dataset version, and resume all of them or none"
            )
        data = make_train_data(epoch)
        if max_steps_per_epoch is not None:
            data = data.take(max_steps_per_epoch)
        # Every worker reads the same batches and keeps its slice of each (no file-based sharding).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return strategy.experimental_distribute_dataset(data.with_options(options))

    return run_epochs(
        trainer, epoch_data, valid_data, checkpoint_dir, on_epoch_end, save_dir=own_dir
    )


__all__ = [
    "STRATEGY_KINDS",
    "ClusterInfo",
    "DistributedTrainer",
    "cluster_info",
    "fit_distributed",
    "make_strategy",
    "handshake",
    "split_local_cpu",
    "strategy_for",
    "worker_checkpoint_dir",
]
