"""The suites shipped in suites/ load and expand."""

from __future__ import annotations

import pytest

from profiler import suite


@pytest.mark.parametrize("name", suite.available_suites())
def test_shipped_suite_is_valid(name):
    loaded = suite.load(name)
    assert loaded.description and loaded.steps >= 2
    runs = loaded.runs("cpu")
    assert len(runs) == len(loaded.models) * len(loaded.optimizers) * loaded.seeds
    labels = {o.label for o in loaded.optimizers}
    assert {o.baseline for o in loaded.optimizers} <= labels


def test_required_suites_exist():
    assert {"smoke", "nlp", "vision", "min8bit", "optimizers", "scale"} <= set(suite.available_suites())


def test_min8bit_sweeps_the_threshold():
    loaded = suite.load("min8bit")
    swept = sorted(o.sweep["min_8bit_size"] for o in loaded.optimizers if o.sweep)
    assert swept == [0, 256, 4096, 16384, 65536, 1_000_000_000]
