"""`train.precision`: where the networks' matrix products run in bfloat16, and nothing else does.

    float32          every op in float32 (the default)
    mixed_bfloat16   the dense layers' matmuls take bfloat16 inputs and weights (cast from the
                     float32 variables) and their result is cast back to float32 at once; the
                     bias, activations, log p(x|z), KL, the ELBO and every reduction, the
                     gradients' accumulation into the float32 variables, the optimiser's slots
                     and the checkpoints stay float32

The products accumulate in float32 (checked here for XLA's and Eigen's CPU kernels by
tests/models/test_precision.py, on a sum that bfloat16 accumulation gets wrong; oneDNN and
cuBLAS document float32 accumulation for bfloat16 GEMMs); only their inputs and result are
rounded to bfloat16's 8 significant bits. It pays off where the hardware multiplies bfloat16 natively: CPUs
with AMX-BF16 or AVX512-BF16, and GPUs; elsewhere the casts make the step slower
(bench/precision.py measures both and the log p(x) it costs).

The policy is read when a step is traced: `Trainer` and `Evaluator` (models/training.py) trace
their steps inside `compute_dtype(config.precision)`, and layers call `matmul`. A SavedModel is
traced outside it, so exported models compute in float32.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import tensorflow as tf

PRECISIONS = ("float32", "mixed_bfloat16")
_DTYPES = {"float32": None, "mixed_bfloat16": tf.bfloat16}
_local = threading.local()


@contextlib.contextmanager
def compute_dtype(precision: str) -> Iterator[None]:
    """Within the block (this thread, at trace time), `matmul` multiplies in ``precision``."""
    if precision not in _DTYPES:
        raise ValueError(f"precision={precision!r}; choose one of {', '.join(PRECISIONS)}")
    previous = getattr(_local, "dtype", None)
    _local.dtype = _DTYPES[precision]
    try:
        yield
    finally:
        _local.dtype = previous


def matmul(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """x @ w; in a mixed_bfloat16 block with bfloat16 inputs, the result cast back to x's dtype."""
    dtype = getattr(_local, "dtype", None)
    if dtype is None:
        return tf.matmul(x, w)
    return tf.cast(tf.matmul(tf.cast(x, dtype), tf.cast(w, dtype)), x.dtype)


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bfloat16_hardware() -> str | None:
    """What multiplies bfloat16 natively here ("GPU", "amx_bf16", "avx512_bf16"), else None."""
    if tf.config.list_physical_devices("GPU"):
        return "GPU"
    flags = cpu_flags()
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)


__all__ = ["PRECISIONS", "bfloat16_hardware", "compute_dtype", "cpu_flags", "matmul"]
