"""readers.read_ahead: the export's reader thread keeps order, hands errors over, stops early."""

from __future__ import annotations

import threading

import pytest

from tasks.store.readers import read_ahead


def test_yields_every_item_in_order_from_another_thread():
    threads = []

    def items():
        for i in range(50):
            threads.append(threading.current_thread())
            yield i

    assert list(read_ahead(items(), depth=3)) == list(range(50))
    assert threads and all(t is not threading.current_thread() for t in threads)


def test_a_producer_error_reaches_the_consumer_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("part-00003.parquet: corrupt page")

    got = []
    with pytest.raises(ValueError, match="corrupt page"):
        for item in read_ahead(items()):
            got.append(item)
    assert got == [1, 2]


def test_a_consumer_that_stops_early_stops_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    gen = read_ahead(items(), depth=2)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()  # joins the producer thread
    assert not any(t.name == "aevb-read-ahead" for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 2  # what was consumed, queued, and one in flight
