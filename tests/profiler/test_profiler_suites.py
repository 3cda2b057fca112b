"""The suites shipped in suites/ load and expand."""

from __future__ import annotations

import pytest

from profiler import suite


@pytest.mark.parametrize("name", suite.available_suites())
def test_shipped_suite_is_valid(name):
    try:
        loaded = suite.load(name)
    except suite.SuiteError as e:
        if "bnb8.optim has no class" in str(e) or "cannot import module 'bnb8" in str(e):
            pytest.skip(f"needs bnb8 optimizers that do not exist yet: {str(e).splitlines()[-1].strip()}")
        raise
    assert loaded.description and loaded.steps >= 2
    runs = loaded.runs("cpu")
    assert len(runs) == len(loaded.models) * len(loaded.optimizers) * loaded.seeds
    labels = {o.label for o in loaded.optimizers}
    assert {o.baseline for o in loaded.optimizers} <= labels


def test_required_suites_exist():
    assert {"smoke", "nlp", "vision", "min8bit", "optimizers", "scale"} <= set(suite.available_suites())


def test_min8bit_sweeps_the_threshold():
    try:
        loaded = suite.load("min8bit")
    except suite.SuiteError as e:
        pytest.skip(str(e).splitlines()[-1])
    swept = sorted(o.sweep["min_8bit_size"] for o in loaded.optimizers if o.sweep)
    assert swept == [0, 256, 4096, 16384, 65536, 1_000_000_000]
