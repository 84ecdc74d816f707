"""The saved VAE's compiled functions that export and score stream rows through, built once per
model folder and process (Prefect tasks on the same worker share them): the encoder
(x -> z_mean, z_std) and the `Scorer` (per-row `elbo` and importance-sampled `log_px`)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

_ENCODERS: dict[str, Callable] = {}
_SCORERS: dict[str, Scorer] = {}
_LOCK = threading.Lock()


def make_encoder(saved_model_dir: str) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """x float32 [B, D] -> (z_mean, z_std) numpy: the saved VAE's encoder, compiled once per
    model folder and process (tasks on the same worker reuse it)."""
    with _LOCK:
        if saved_model_dir not in _ENCODERS:
            import tensorflow as tf

            from models.saved import load_vae

            vae = load_vae(saved_model_dir)
            fn = tf.function(
                vae.posterior_params, jit_compile=True, reduce_retracing=True, autograph=False
            )

            def encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                mean, std = fn(tf.constant(x, tf.float32))
                return mean.numpy(), std.numpy()

            _ENCODERS[saved_model_dir] = encode
        return _ENCODERS[saved_model_dir]


class Scorer:
    """The saved VAE's per-row scores, compiled once per model folder and process."""

    def __init__(self, saved_model_dir: str):
        import tensorflow as tf

        self.saved_model_dir = saved_model_dir
        from models.marginal import DatasetEvaluator, elbo_from_noise
        from models.saved import load_vae

        vae = load_vae(saved_model_dir)
        self._tf, self.vae = tf, vae

        def elbo(x, mean, std, eps):
            return elbo_from_noise(vae, x, mean, std, eps)

        self._elbo = tf.function(elbo, jit_compile=True, reduce_retracing=True, autograph=False)
        self._evaluator = DatasetEvaluator(vae)

    def elbo(self, x: np.ndarray, mean: np.ndarray, std: np.ndarray, eps: np.ndarray) -> np.ndarray:
        tf = self._tf
        args = (tf.constant(a, tf.float32) for a in (x, mean, std, eps))
        return self._elbo(*args).numpy().astype(np.float64)

    def log_px(self, x: np.ndarray, num_samples: int, seed: list[int]) -> np.ndarray:
        from models.marginal import TARGET_CHUNK_ROWS

        tf = self._tf
        key = tf.constant([seed[0], 0], tf.int32)
        for part in seed[1:]:
            key = tf.random.experimental.stateless_fold_in(key, part)
        # Pad to a power of two rows: a part's last, shorter batch then reuses a compiled step
        # instead of tracing and compiling one per row count.
        rows = len(x)
        padded = np.zeros((1 << max(rows - 1, 0).bit_length(), x.shape[1]), np.float32)
        padded[:rows] = x
        chunk = max(1, min(num_samples, TARGET_CHUNK_ROWS // len(padded)))
        out = self._evaluator.evaluate_batch(tf.constant(padded), num_samples, key, chunk)
        return out["log_marginal"][:rows].astype(np.float64)


def make_scorer(saved_model_dir: str) -> Scorer:
    with _LOCK:
        if saved_model_dir not in _SCORERS:
            _SCORERS[saved_model_dir] = Scorer(saved_model_dir)
        return _SCORERS[saved_model_dir]
