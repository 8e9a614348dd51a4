"""The seed article's word count, as MapReduce, against collections.Counter."""

import collections

import pytest
import wpool

from conftest import kernel

TEXT = """It was the best of times it was the worst of times
it was the age of wisdom it was the age of foolishness
it was the epoch of belief it was the epoch of incredulity""".splitlines()


def test_word_count_mapreduce_equals_counter():
    lines = TEXT * 300
    want = collections.Counter(w.lower() for line in lines for w in line.split())
    got = wpool.mapreduce(kernel("wordcount"), kernel("sum"), lines, processes=2, text=True)
    assert list(got) == sorted(want)  # sorted by key
    assert {k: int(v) for k, v in got.items()} == dict(want)


def test_mapreduce_errors():
    with pytest.raises(wpool.ConfigError):
        wpool.mapreduce(kernel("sum"), kernel("sum"), ["a"])
    with pytest.raises(wpool.KernelNotFound):
        wpool.mapreduce("/nonexistent.wasm", kernel("sum"), ["a"])


def test_bad_timeouts_are_value_errors_everywhere():
    for bad in (-1, 0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            wpool.mapreduce(kernel("wordcount"), kernel("sum"), ["a"], timeout=bad)
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            wpool.Pipeline([kernel("upper")], timeout=bad)
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            wpool.Pool(kernel("upper"), 1, timeout=bad)
