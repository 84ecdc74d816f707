"""tasks/sources/gz.py against the standard library's gzip: the same bytes for one member, several
members and zero padding, and an error from `ERRORS` for truncated or corrupt data, with ISA-L
(the default) and with the zlib fallback; `numbered_ids` against the f-string it replaces."""

from __future__ import annotations

import gzip
import os

import pytest

from tasks.sources import gz
from tasks.sources.base import numbered_ids

PAYLOAD = os.urandom(50_000) + bytes(200_000)  # incompressible and very compressible parts
BACKENDS = {"default": gz.decompress, "zlib fallback": gz.zlib_decompress}


def test_isal_is_the_default_backend():
    assert gz.BACKEND == "isal", "isal is a dependency: the fast inflate should be in use"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "raw",
    [
        gzip.compress(PAYLOAD),
        gzip.compress(PAYLOAD[:1000]) + gzip.compress(PAYLOAD[1000:]),
        gzip.compress(PAYLOAD) + bytes(16),
        gzip.compress(b""),
    ],
    ids=["one-member", "two-members", "zero-padding", "empty"],
)
def test_same_bytes_as_the_standard_library(backend, raw):
    assert BACKENDS[backend](raw) == gzip.decompress(raw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_and_corrupt_data_raise_one_of_the_declared_errors(backend):
    good = gzip.compress(PAYLOAD)
    flipped = bytearray(good)
    flipped[-6] ^= 0xFF  # the stored CRC-32: the payload inflates, the check must fail
    for bad in (good[:-100], good[:30] + b"\xff" * 60 + good[90:], bytes(flipped)):
        with pytest.raises(gz.ERRORS):
            BACKENDS[backend](bad)


@pytest.mark.parametrize(
    ("prefix", "n", "width"), [("", 0, 1), ("", 12, 1), ("t10k-", 3, 5), ("row-", 100_001, 5)]
)
def test_numbered_ids_are_the_formatted_row_numbers(prefix, n, width):
    ids = numbered_ids(prefix, n, width)
    assert ids.dtype == object and all(type(i) is str for i in ids[:3])
    assert ids.tolist() == [f"{prefix}{i:0{width}d}" for i in range(n)]
