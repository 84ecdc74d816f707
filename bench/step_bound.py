"""The compiled AEVB training step against the matmul bound of the machine it runs on.

The bound is the time of the step's matrix products alone: the forward, weight-gradient and
input-gradient GEMMs of every dense layer, with the step's shapes (the first layer's input
gradient is not needed, so it is not counted). It is measured here, three ways, and the fastest
counts: one XLA computation with the GEMMs independent of each other, one with them chained as
in back-propagation, and the chain through TensorFlow's own kernels. A step can only reach it if
everything besides the GEMMs (activations, log p(x|z), KL, the optimiser update, the NaN guard)
were free.

Then the step (`models.training.Trainer.update`) and variants, each measured on its own: its
parts (loss and gradients only; with the NaN/Inf guard), the step as it was before the fused
Bernoulli log-likelihood (tfd.Bernoulli's generic log_prob), an alternative guarded Adam update
that was tried and rejected, and last the product's step as it is now. The optimiser update is
TensorFlow's fused ResourceApplyAdam / ResourceApplyAdagradV2 per variable (XLA lowers each into
three loop fusions: m, v and the variable). All rows are timed in interleaved windows (A B C ...
A B C ...) so a change in the machine's load hits them alike; the table gives the median and
min-max of the windows in CPU microseconds per example of this process (all threads; the
machine is shared, so CPU time is the figure to compare) and in wall-clock microseconds.

    .venv/bin/python bench/step_bound.py                     # batch 100 and 1000, Adam
    .venv/bin/python bench/step_bound.py --batches 100 --optimizer adagrad --windows 15
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
import types
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.machine import describe_machine, load  # noqa: E402
from models import objectives  # noqa: E402
from models.config import ModelConfig, TrainConfig  # noqa: E402
from models.optim import all_finite  # noqa: E402
from models.training import Trainer  # noqa: E402
from models.vae import VAE  # noqa: E402

NUM_TRAIN = 60_000
MODEL = ModelConfig(feature_shape=(784,), latent_dim=20, hidden_sizes=(500,), activation="tanh")


# ----------------------------------------------------------------------------- the matmul bound


def layer_shapes(model: ModelConfig) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every dense layer, encoder then decoder."""
    d, k, h = model.input_dim, model.latent_dim, model.hidden_sizes
    out = 2 * d if model.likelihood == "gaussian" else d
    enc = list(zip((d, *h), (*h, 2 * k), strict=True))
    dec = list(zip((k, *reversed(h)), (*reversed(h), out), strict=True))
    return enc + dec


def matmul_flops_per_example(model: ModelConfig) -> int:
    """2 x multiply-adds of the GEMMs the bound times, per example."""
    shapes = layer_shapes(model)
    macs = sum(a * b for a, b in shapes)
    return 2 * (3 * macs - shapes[0][0] * shapes[0][1])


def gemm_functions(model: ModelConfig, batch: int) -> dict[str, Callable[[], tf.Tensor]]:
    """The bound's three implementations; each call runs every GEMM of one step once."""
    rng = np.random.default_rng(0)
    shapes = layer_shapes(model)

    def normal(*shape: int, scale: float = 1.0) -> tf.Tensor:
        return tf.constant((rng.standard_normal(shape) * scale).astype(np.float32))

    weights = [normal(a, b, scale=a**-0.5) for a, b in shapes]
    acts = [normal(batch, a) for a, _ in shapes]  # the input of each layer
    grads = [normal(batch, b) for _, b in shapes]  # the gradient at each layer's output

    def independent() -> list[tf.Tensor]:
        out = []
        for i, (w, a, g) in enumerate(zip(weights, acts, grads, strict=True)):
            out += [a @ w, tf.matmul(a, g, transpose_a=True)]
            if i:
                out.append(tf.matmul(g, w, transpose_b=True))
        return out

    def chained() -> list[tf.Tensor]:
        """Forward through the layers, then back: each GEMM waits for the one before it."""
        a, inputs = acts[0], []
        for w, (_, b) in zip(weights, shapes, strict=True):
            inputs.append(a)
            a = a @ w
            k = model.latent_dim
            if b == 2 * k and len(inputs) == len(model.hidden_sizes) + 1:
                a = a[:, :k]  # the encoder's [mean, log var] -> z
        g, out = grads[-1], [a]  # the last layer's output, so no GEMM is dead code
        for i in reversed(range(len(weights))):
            out.append(tf.matmul(inputs[i], g, transpose_a=True))
            if i:
                g = tf.matmul(g, weights[i], transpose_b=True)
                if g.shape[1] != shapes[i - 1][1]:
                    g = tf.concat([g, g], axis=1)  # z's gradient -> [mean, log var]'s
        return out

    return {
        "XLA, independent GEMMs": tf.function(independent, jit_compile=True),
        "XLA, chained GEMMs": tf.function(chained, jit_compile=True),
        "TF kernels, chained": tf.function(chained, jit_compile=False),
    }


# ----------------------------------------------------------------------------- step variants


def tfd_log_likelihood(likelihood, x):
    """The generic path the step used before: tfd.Independent(tfd.Bernoulli).log_prob."""
    return likelihood.log_prob(x)


def select_update(self, grads, variables, loss, then=None):
    """A rejected alternative to `Optimizer.apply_if_finite` for Adam: the same arithmetic as
    XLA's lowering of ResourceApplyAdam, written out, with tf.where keeping the old values on
    NaN/Inf instead of a tf.cond around the update (so XLA could fuse across it)."""
    ok = all_finite(loss, grads)
    one, t = tf.constant(1.0), tf.cast(self.iterations + 1, tf.float32)
    b1, b2, eps = (tf.constant(v) for v in (self.beta_1, self.beta_2, self.epsilon))
    alpha = self.learning_rate * tf.sqrt(one - tf.pow(b2, t)) / (one - tf.pow(b1, t))
    for g, var, m, v in zip(self._with_decay(grads, variables), variables, self.m, self.v, strict=True):  # fmt: skip
        m_t = m + (g - m) * (one - b1)
        v_t = v + (tf.square(g) - v) * (one - b2)
        new = var - m_t * alpha / (tf.sqrt(v_t) + eps)
        m.assign(tf.where(ok, m_t, m))
        v.assign(tf.where(ok, v_t, v))
        var.assign(tf.where(ok, new, var))
    self.iterations.assign_add(tf.cast(ok, tf.int64))
    if then is not None:
        then()
    return ok


def make_step(train: TrainConfig, *, fused_log_lik: bool = True, upto: str = "update") -> Callable:
    """A compiled step: the product's `Trainer.update` (``upto="update"``), its parts, or a variant.

    ``upto``: "backward" (loss and gradients only), "guard" (+ the NaN/Inf check), "update" (the
    product's step), "select" (`select_update` instead of the guarded update).
    """
    trainer = Trainer(VAE(MODEL, seed=0), train, NUM_TRAIN)
    if upto == "select":
        trainer.optimizer.apply_if_finite = types.MethodType(select_update, trainer.optimizer)
    now = objectives.log_likelihood

    def parts(x: tf.Tensor):
        with tf.GradientTape() as tape:
            bound = objectives.elbo(trainer.model, x, tf.constant([0, 1]), "B", 1)
            loss = -tf.reduce_mean(bound.elbo)
        grads = tape.gradient(loss, trainer.variables)
        return grads if upto == "backward" else all_finite(loss, grads)

    step = trainer.update if upto in ("update", "select") else tf.function(parts, jit_compile=True)

    def update(x: tf.Tensor) -> tf.Tensor:
        objectives.log_likelihood = now if fused_log_lik else tfd_log_likelihood
        try:  # traced on the first call: the patch decides what is compiled
            return step(x)
        finally:
            objectives.log_likelihood = now

    return update


def step_variants(train: TrainConfig) -> dict[str, Callable]:
    rows = {
        "loss + gradients only": make_step(train, upto="backward"),
        "+ NaN/Inf guard (no update)": make_step(train, upto="guard"),
        "before: tfd log p(x|z) (the step as it was)": make_step(train, fused_log_lik=False),
    }
    if train.optimizer == "adam":
        rows["alternative: Adam by tf.where, no tf.cond"] = make_step(train, upto="select")
    rows["now: fused log p(x|z) = the product's step"] = make_step(train)
    return rows


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Samples:
    cpu_us: list[float] = dataclasses.field(default_factory=list)  # per example
    wall_us: list[float] = dataclasses.field(default_factory=list)

    def median(self, kind: str = "cpu_us") -> float:
        return statistics.median(getattr(self, kind))


def window(fn: Callable, batches: list[tf.Tensor] | None, steps: int) -> tuple[float, float]:
    """(CPU s, wall s) of ``steps`` calls, synchronised on the last result."""
    t, c = time.perf_counter(), time.process_time()
    out = None
    for i in range(steps):
        out = fn() if batches is None else fn(batches[i % len(batches)])
    for leaf in tf.nest.flatten(out):
        leaf.numpy()
    return time.process_time() - c, time.perf_counter() - t


def measure(rows: dict[str, tuple[Callable, bool]], batch: int, steps: int, windows: int, data):
    samples = {name: Samples() for name in rows}
    for fn, takes_data in rows.values():  # compile + warm up
        window(fn, data if takes_data else None, 3)
    for _ in range(windows):
        for name, (fn, takes_data) in rows.items():
            cpu, wall = window(fn, data if takes_data else None, steps)
            samples[name].cpu_us.append(cpu / (steps * batch) * 1e6)
            samples[name].wall_us.append(wall / (steps * batch) * 1e6)
    return samples


def report(batch: int, train: TrainConfig, steps: int, windows: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    data = [
        tf.constant((rng.random((batch, MODEL.input_dim)) < 0.3).astype(np.float32))
        for _ in range(8)
    ]
    bound_fns = gemm_functions(MODEL, batch)
    rows = {f"matmul bound: {k}": (f, False) for k, f in bound_fns.items()}
    rows.update({f"step: {k}": (f, True) for k, f in step_variants(train).items()})
    load_before = load()
    samples = measure(rows, batch, steps, windows, data)
    bound_rows = [k for k in rows if k.startswith("matmul")]
    bound_cpu = min(samples[k].median() for k in bound_rows)
    bound_wall = min(samples[k].median("wall_us") for k in bound_rows)
    flops = matmul_flops_per_example(MODEL)
    print(
        f"\nbatch {batch}: {train.optimizer}, {windows} interleaved windows of {steps} steps; "
        f"load average {load_before} -> {load()}; {flops / 1e6:.2f} MFLOP of GEMMs per example"
    )
    print(
        f"  {'':<46} {'CPU us/ex':>9} {'(min-max)':>15} {'wall us/ex':>10} "
        f"{'bound/step CPU':>14} {'wall':>6}"
    )
    for name, s in samples.items():
        cpu, wall = s.median(), s.median("wall_us")
        frac = "" if name in bound_rows else f"{bound_cpu / cpu:>14.0%} {bound_wall / wall:>6.0%}"
        print(
            f"  {name:<46} {cpu:>9.1f} {f'({min(s.cpu_us):.1f}-{max(s.cpu_us):.1f})':>15} "
            f"{wall:>10.1f} {frac}"
        )
    product = samples[list(rows)[-1]]
    print(
        f"  bound = fastest of the three: {bound_cpu:.1f} CPU us/ex "
        f"({flops / bound_cpu / 1e3:.1f} GFLOP per CPU-second), {bound_wall:.1f} wall us/ex; "
        f"the step is at {bound_cpu / product.median():.0%} of it by CPU time, "
        f"{bound_wall / product.median('wall_us'):.0%} by wall clock"
    )
    return {"bound": bound_cpu, "step": product.median()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--optimizer", choices=("adam", "adagrad"), default="adam")
    ap.add_argument("--windows", type=int, default=9)
    ap.add_argument("--examples", type=int, default=6000, help="examples per window")
    args = ap.parse_args()
    print(describe_machine())
    print(
        f"model {MODEL.input_dim}-500-{MODEL.latent_dim}-500-{MODEL.input_dim} tanh, Bernoulli, "
        "estimator B, L = 1, XLA step"
    )
    for batch in args.batches:
        train = TrainConfig(optimizer=args.optimizer, batch_size=batch)
        report(batch, train, max(args.examples // batch, 3), args.windows)


if __name__ == "__main__":
    main()
