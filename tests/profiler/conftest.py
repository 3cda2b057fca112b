"""Shared fixtures: tiny suites that train in about a second per row on a CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, Path(__file__).resolve().parent):  # the profiler package; profiler_fake_optimizers
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

TINY_SUITE = """
description = "tiny test suite"
steps = 6
warmup = 1
baseline = "adamw"

[[models]]
name = "mlp"
width = 0.25
batch_size = 8

[[models]]
name = "gpt"
width = 0.25
batch_size = 4
seq_len = 16

[[optimizers]]
name = "adamw"
class = "torch.optim.AdamW"
kwargs = { lr = 1e-3 }

[[optimizers]]
name = "adamw-again"
class = "torch.optim.AdamW"
kwargs = { lr = 1e-3 }

[[optimizers]]
name = "sgd"
class = "torch.optim.SGD"
kwargs = { lr = 0.05, momentum = 0.9 }
"""


@pytest.fixture(scope="session")
def tiny_suite_text() -> str:
    return TINY_SUITE


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished run of the tiny suite, shared by the report and CLI tests (read-only)."""
    from profiler.cli import main

    root = tmp_path_factory.mktemp("tiny")
    suite_path = root / "tiny.toml"
    suite_path.write_text(TINY_SUITE)
    assert (
        main(["run", str(suite_path), "--device", "cpu", "--threads", "1", "--out", str(root / "reports")])
        == 0
    )
    (run_dir,) = (root / "reports" / "tiny").iterdir()
    return run_dir
