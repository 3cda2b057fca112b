"""Shared test setup: device parametrization and skipping of tests whose hardware is absent."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (runs in `make gpu-check`)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def run_under_isa(isa: str, script: str, data, tmp_path) -> dict:
    """Saves ``data``, runs ``script`` (argv: input path, output path) in a fresh interpreter whose CPU
    kernels are forced to ``isa`` (BNB8_CPU_ISA), and returns what it saved. Skips the test when this
    CPU cannot give a second variant to compare with."""
    import bnb8

    torch.save(data, tmp_path / "in.pt")
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
        env=dict(os.environ, BNB8_CPU_ISA=isa),
        check=True,
    )
    other = torch.load(tmp_path / "out.pt")
    if other["isa"] != isa or bnb8._C.cpu_isa() == isa:
        pytest.skip(f"this CPU runs {bnb8._C.cpu_isa()}: {isa} is not a second variant to compare with")
    return other
