"""How an ingested source is divided into train / valid / test, and whether it is big enough.

`assign_splits` gives each split its rows in a seeded random order (rows a source marks test, such
as IDX t10k files, stay test); `check_split_sizes` refuses a source too small for the splits its
fractions ask for, naming the minimum number of rows, before anything is written.
"""

from __future__ import annotations

import numpy as np

from models.constants import SPLITS, TEST, TRAIN, VALID
from models.errors import ConfigError, DatasetError


def check_fractions(valid_fraction: float, test_fraction: float) -> None:
    for field, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            # (NaN fails `0 <= value` too)
            raise ConfigError(f"{field}={value!r} must be a number in [0, 1)")
    if valid_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"valid_fraction + test_fraction = {valid_fraction + test_fraction:g} leaves no "
            "training rows; make their sum < 1"
        )


def split_sizes(
    n: int, n_fixed_test: int | None, valid_fraction: float, test_fraction: float
) -> dict[str, int]:
    """Rows per split for ``n`` rows (``n_fixed_test``: rows the source itself marks test)."""
    if n_fixed_test is None:
        n_test, n_valid = round(n * test_fraction), round(n * valid_fraction)
    else:
        n_test, n_valid = n_fixed_test, round((n - n_fixed_test) * valid_fraction)
    return {TRAIN: n - n_test - n_valid, VALID: n_valid, TEST: n_test}


def check_split_sizes(
    where: str, n: int, n_fixed_test: int | None, valid_fraction: float, test_fraction: float
) -> None:
    """DatasetError when a split the fractions ask for would be empty, naming the minimum rows.

    Training needs a train row, and a split with a fraction > 0 that rounds to no row at all
    would silently yield an empty split (valid: early stopping on nothing; test: no log p(x)).
    """
    wanted = {TRAIN: 1.0, VALID: valid_fraction, TEST: 0.0 if n_fixed_test else test_fraction}
    sizes = split_sizes(n, n_fixed_test, valid_fraction, test_fraction)
    empty = [s for s in SPLITS if wanted[s] > 0 and sizes[s] < 1]
    if not empty:
        return
    fixed = n_fixed_test or 0
    need = next(
        m for m in range(fixed + 1, fixed + 10_000)
        if all(split_sizes(m, n_fixed_test, valid_fraction, test_fraction)[s] >= 1
               for s in SPLITS if wanted[s] > 0)
    )  # fmt: skip
    raise DatasetError(
        f"{where}: {n} rows are too few for valid_fraction={valid_fraction:g} and "
        f"test_fraction={test_fraction:g}: the {' and '.join(empty)} split"
        f"{'s' if len(empty) > 1 else ''} would be empty; "
        f"it needs at least {need} rows, or set the fraction of an unwanted split to 0"
    )


def assign_splits(
    n: int, fixed: np.ndarray | None, seed: int, valid_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Row indices per split, each in a seeded random order (that order is the stored order).

    Rows the source marks "test" (IDX t10k files) stay test; the rest are divided by the fractions.
    """
    check_fractions(valid_fraction, test_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    if fixed is None:
        n_test = round(n * test_fraction)
        test, pool = perm[:n_test], perm[n_test:]
        n_valid = round(n * valid_fraction)
    else:
        test, pool = perm[fixed[perm] == TEST], perm[fixed[perm] != TEST]
        n_valid = round(len(pool) * valid_fraction)
    return {TRAIN: pool[n_valid:], VALID: pool[:n_valid], TEST: test}
