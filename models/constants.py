"""Names shared across layers: metric keys, Parquet column names, split names, the evaluation seed.

Metric keys read `<split>_<quantity>` (docs/design.md "MLflow"). Keeping them here means the training
callback, the MLflow adapter, the gate and the tests can never drift apart.
"""

from __future__ import annotations

from typing import Final

# Splits
TRAIN: Final = "train"
VALID: Final = "valid"
TEST: Final = "test"
SPLITS: Final = (TRAIN, VALID, TEST)

# Parquet dataset columns
COL_ID: Final = "id"
COL_X: Final = "x"
COL_LABEL: Final = "label"
COL_SPLIT: Final = "split"
Z_MEAN_PREFIX: Final = "z_mean_"
Z_STD_PREFIX: Final = "z_std_"

# Metric keys (per epoch during training, per split at evaluation)
TRAIN_ELBO: Final = "train_elbo"
TRAIN_KL: Final = "train_kl"
TRAIN_RECONSTRUCTION: Final = "train_reconstruction"
TRAIN_KL_THETA: Final = "train_kl_theta"  # full VB (App. F): KL(q(theta) || p(theta))
VALID_ELBO: Final = "valid_elbo"
VALID_KL: Final = "valid_kl"
VALID_RECONSTRUCTION: Final = "valid_reconstruction"
EXAMPLES_PER_SECOND: Final = "examples_per_second"
TEST_ELBO: Final = "test_elbo"
TEST_KL: Final = "test_kl"
TEST_RECONSTRUCTION: Final = "test_reconstruction"
TEST_LOG_MARGINAL_LIKELIHOOD: Final = "test_log_marginal_likelihood"
TEST_LOG_MARGINAL_LIKELIHOOD_STDERR: Final = "test_log_marginal_likelihood_stderr"
TEST_ACTIVE_UNITS: Final = "test_active_units"
TEST_BITS_PER_DIM: Final = "test_bits_per_dim"

# Evaluation noise uses the stateless seeds [train.seed + EVAL_SEED_OFFSET, batch index]: the same
# draws every epoch, and a stream apart from the training steps' [train.seed, step].
# `models.config.EVAL_SEED_ROOM` keeps train.seed + EVAL_SEED_OFFSET inside int32.
EVAL_SEED_OFFSET: Final = 7919


def metric_key(split: str, quantity: str) -> str:
    """`<split>_<quantity>`, e.g. metric_key("valid", "log_marginal_likelihood")."""
    return f"{split}_{quantity}"
